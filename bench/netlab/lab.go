// Package netlab builds the benchmark's network on one host: named network
// namespaces ("pods" and "nodes") joined by a bridge that lives in its own
// namespace, and processes started inside them. Everything it creates is
// registered for cleanup, removed by Lab.Close (also after a failure or an
// interrupt), and named after the owning process, so a later run can remove
// what a killed run left behind without touching a parallel run's namespaces.
package netlab

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// NamePrefix starts the name of every namespace and work directory a lab
// creates; the owner's pid follows ("kmb-4242-client").
const NamePrefix = "kmb-"

// CommandTimeout bounds every setup command (ip, taskset checks).
const CommandTimeout = 30 * time.Second

// Lab owns the namespaces, processes and files of one benchmark run.
type Lab struct {
	// Dir is the run's scratch directory (generated configs, process logs).
	Dir string
	// Cgroup is the lab's cgroup v2 directory ("" without cgroup v2). Every
	// process the lab starts goes into it (or a child), so its cpu.stat is
	// the CPU of the benchmark's own processes.
	Cgroup string
	prefix string

	mu       sync.Mutex
	cleanups []cleanup
	closed   bool
}

type cleanup struct {
	what string
	fn   func() error
}

// New creates a lab with a fresh scratch directory under the system temp dir.
func New() (*Lab, error) {
	prefix := fmt.Sprintf("%s%d-", NamePrefix, os.Getpid())
	dir, err := os.MkdirTemp("", prefix)
	if err != nil {
		return nil, err
	}
	l := &Lab{Dir: dir, prefix: prefix}
	l.Defer("remove "+dir, func() error { return os.RemoveAll(dir) })
	if root, err := cgroup2Root(); err == nil {
		cg := filepath.Join(root, strings.TrimSuffix(prefix, "-"))
		if err := l.newCgroup(cg); err != nil {
			l.Close()
			return nil, fmt.Errorf("lab cgroup: %w", err)
		}
		l.Cgroup = cg
	}
	return l, nil
}

// Defer registers fn to run at Close, before everything registered earlier.
func (l *Lab) Defer(what string, fn func() error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.cleanups = append(l.cleanups, cleanup{what, fn})
}

// Close undoes everything in reverse order and reports what could not be
// undone. It is safe to call more than once.
func (l *Lab) Close() error {
	l.mu.Lock()
	cs := l.cleanups
	l.cleanups = nil
	l.closed = true
	l.mu.Unlock()
	var errs []error
	for i := len(cs) - 1; i >= 0; i-- {
		if err := cs[i].fn(); err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", cs[i].what, err))
		}
	}
	return errors.Join(errs...)
}

// Name returns the lab-unique name for role, e.g. "kmb-4242-client".
func (l *Lab) Name(role string) string { return l.prefix + role }

// run executes a setup command with CommandTimeout.
func run(name string, args ...string) error {
	ctx, cancel := context.WithTimeout(context.Background(), CommandTimeout)
	defer cancel()
	out, err := exec.CommandContext(ctx, name, args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}

// DeadOwner reports whether name ("kmb-<pid>-...") belongs to a lab whose
// owning process no longer exists.
func DeadOwner(name string) bool {
	m := staleName.FindStringSubmatch(name)
	if m == nil {
		return false
	}
	pid, err := strconv.Atoi(m[1])
	if err != nil || pid == os.Getpid() {
		return false
	}
	return errors.Is(syscall.Kill(pid, 0), syscall.ESRCH)
}

var staleName = regexp.MustCompile(`^` + regexp.QuoteMeta(NamePrefix) + `([0-9]+)-`)

// SweepStale removes namespaces, cgroups and scratch directories left by labs whose
// owning process no longer exists (a run killed with SIGKILL). Labs of live
// processes, including parallel runs, are left alone. It returns what it removed.
func SweepStale() ([]string, error) {
	var removed []string
	var errs []error
	dead := DeadOwner
	if ents, err := os.ReadDir("/run/netns"); err == nil {
		for _, e := range ents {
			if dead(e.Name()) {
				if err := run("ip", "netns", "del", e.Name()); err != nil {
					errs = append(errs, err)
					continue
				}
				removed = append(removed, "netns "+e.Name())
			}
		}
	}
	if root, err := cgroup2Root(); err == nil {
		if ents, err := os.ReadDir(root); err == nil {
			for _, e := range ents {
				if e.IsDir() && dead(e.Name()+"-") {
					p := filepath.Join(root, e.Name())
					if err := removeCgroup(p); err != nil {
						errs = append(errs, err)
						continue
					}
					removed = append(removed, "cgroup "+p)
				}
			}
		}
	}
	tmp := os.TempDir()
	if ents, err := os.ReadDir(tmp); err == nil {
		for _, e := range ents {
			if e.IsDir() && dead(e.Name()) {
				p := filepath.Join(tmp, e.Name())
				if err := os.RemoveAll(p); err != nil {
					errs = append(errs, err)
					continue
				}
				removed = append(removed, "dir "+p)
			}
		}
	}
	return removed, errors.Join(errs...)
}

// SaveLogs copies every *.log file of the scratch directory (process output,
// proxy error logs) into dst, keeping relative paths, so a failure can be
// diagnosed after Close removed the lab. At most maxBytes per file are kept
// (the end of the file).
func (l *Lab) SaveLogs(dst string, maxBytes int64) ([]string, error) {
	var saved []string
	err := filepath.WalkDir(l.Dir, func(path string, d os.DirEntry, err error) error {
		if err != nil || d.IsDir() || !strings.HasSuffix(path, ".log") {
			return err
		}
		rel, err := filepath.Rel(l.Dir, path)
		if err != nil {
			return err
		}
		out := filepath.Join(dst, rel)
		if err := os.MkdirAll(filepath.Dir(out), 0o755); err != nil {
			return err
		}
		b, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		if int64(len(b)) > maxBytes {
			b = b[int64(len(b))-maxBytes:]
		}
		if err := os.WriteFile(out, b, 0o644); err != nil {
			return err
		}
		saved = append(saved, out)
		return nil
	})
	return saved, err
}
