package controlplane

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/fsnotify/fsnotify"
)

// Watch reloads the config file whenever it changes, until ctx ends. The
// directory is watched, not the file: editors and Kubernetes ConfigMaps
// replace files by rename, which a watch on the file itself would lose. A
// reload whose contents did not change is skipped; a bad file is logged with
// file, line and field, and the last good config keeps serving.
func (s *Server) Watch(ctx context.Context) error {
	w, err := fsnotify.NewWatcher()
	if err != nil {
		return fmt.Errorf("watching %s: %w", s.opts.ConfigFile, err)
	}
	defer w.Close()
	file, err := filepath.Abs(s.opts.ConfigFile)
	if err != nil {
		return err
	}
	if err := w.Add(filepath.Dir(file)); err != nil {
		return fmt.Errorf("watching %s: %w", filepath.Dir(file), err)
	}
	last, _ := os.ReadFile(file)
	var timer <-chan time.Time
	for {
		select {
		case <-ctx.Done():
			return nil
		case ev, ok := <-w.Events:
			if !ok {
				return nil
			}
			// Any event in the directory may be a symlink swap (..data in a
			// ConfigMap mount); the content comparison below filters noise.
			if filepath.Clean(ev.Name) == file || filepath.Base(ev.Name) == "..data" {
				timer = time.After(s.opts.Debounce)
			}
		case err, ok := <-w.Errors:
			if !ok {
				return nil
			}
			s.log.Warn("config watch error", "err", err)
		case <-timer:
			timer = nil
			cur, err := os.ReadFile(file)
			if err != nil {
				s.log.Error("config file unreadable; the last good config keeps serving", "file", file, "err", err)
				continue
			}
			if bytes.Equal(cur, last) {
				continue
			}
			last = cur
			cfg, err := Load(s.opts.ConfigFile, cur)
			if err == nil {
				err = s.SetConfig(cfg)
			}
			if err != nil {
				s.Stats.Rejected.Add(1)
				s.log.Error("config rejected; the last good config keeps serving", "err", err)
				continue
			}
			s.log.Info("config reloaded", "file", file)
		}
	}
}
