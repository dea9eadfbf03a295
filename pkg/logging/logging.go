// Package logging gives each kmeshd component a named slog.Logger whose level
// can be read and changed at runtime (kmeshctl log --set xds:debug), without
// restarting the daemon.
package logging

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"sort"
	"strings"
	"sync"
)

// Registry owns the named loggers. The zero value is not usable; use New.
type Registry struct {
	mu     sync.Mutex
	out    io.Writer
	json   bool
	def    slog.Level
	levels map[string]*slog.LevelVar
}

// Options configures a Registry. The zero value logs text at info to nowhere;
// set Output.
type Options struct {
	Output io.Writer
	JSON   bool       // JSON lines instead of text
	Level  slog.Level // initial level of every logger
}

// New returns a registry.
func New(o Options) *Registry {
	if o.Output == nil {
		o.Output = io.Discard
	}
	return &Registry{out: o.Output, json: o.JSON, def: o.Level, levels: map[string]*slog.LevelVar{}}
}

// Logger returns the logger for a component, creating it at the registry's
// default level. Every record carries scope=<name>.
func (r *Registry) Logger(name string) *slog.Logger {
	r.mu.Lock()
	lv := r.levels[name]
	if lv == nil {
		lv = new(slog.LevelVar)
		lv.Set(r.def)
		r.levels[name] = lv
	}
	r.mu.Unlock()
	opts := &slog.HandlerOptions{Level: lv}
	var h slog.Handler
	if r.json {
		h = slog.NewJSONHandler(r.out, opts)
	} else {
		h = slog.NewTextHandler(r.out, opts)
	}
	return slog.New(h).With("scope", name)
}

// Levels returns every logger's level by name.
func (r *Registry) Levels() map[string]string {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make(map[string]string, len(r.levels))
	for n, lv := range r.levels {
		out[n] = strings.ToLower(lv.Level().String())
	}
	return out
}

// Names returns the logger names, sorted.
func (r *Registry) Names() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	names := make([]string, 0, len(r.levels))
	for n := range r.levels {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

// SetLevel changes one logger's level, or every logger's with name "*".
func (r *Registry) SetLevel(name, level string) error {
	lvl, err := ParseLevel(level)
	if err != nil {
		return err
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if name == "*" {
		for _, lv := range r.levels {
			lv.Set(lvl)
		}
		r.def = lvl
		return nil
	}
	lv := r.levels[name]
	if lv == nil {
		names := make([]string, 0, len(r.levels))
		for n := range r.levels {
			names = append(names, n)
		}
		sort.Strings(names)
		return fmt.Errorf("no logger named %q (known: %s, or * for all)", name, strings.Join(names, ", "))
	}
	lv.Set(lvl)
	return nil
}

// ParseLevel accepts debug, info, warn(ing), error (any case).
func ParseLevel(s string) (slog.Level, error) {
	var l slog.Level
	switch strings.ToLower(strings.TrimSpace(s)) {
	case "warning":
		s = "warn"
	}
	if err := l.UnmarshalText([]byte(s)); err != nil {
		return 0, fmt.Errorf("unknown log level %q (want debug, info, warn or error)", s)
	}
	return l, nil
}

// Enabled reports whether the named logger would log at level.
func (r *Registry) Enabled(name string, level slog.Level) bool {
	return r.Logger(name).Enabled(context.Background(), level)
}
