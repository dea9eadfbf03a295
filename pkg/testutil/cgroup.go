package testutil

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/kmesh-go/kmesh/pkg/probe"
)

// Cgroup is a test-owned cgroup v2 directory.
type Cgroup struct {
	Path string
	fd   int
}

// FD returns an O_DIRECTORY descriptor of the cgroup, valid until cleanup, for
// SysProcAttr.CgroupFD (clone3 CLONE_INTO_CGROUP) and for attaching programs.
func (c *Cgroup) FD() int { return c.fd }

// NewCgroup creates an empty cgroup under the cgroup2 mount (autodetected). On
// cleanup it kills whatever is left in it and removes it.
func NewCgroup(tb testing.TB) *Cgroup {
	tb.Helper()
	root, err := probe.Cgroup2Mount(os.Getenv("KMESH_CGROUP2"))
	if err != nil {
		tb.Fatal(err)
	}
	dir, err := os.MkdirTemp(root, "kmesh-test-")
	if err != nil {
		tb.Fatalf("creating test cgroup: %v", err)
	}
	fd, err := unix.Open(dir, unix.O_DIRECTORY|unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		os.Remove(dir)
		tb.Fatalf("opening test cgroup: %v", err)
	}
	cg := &Cgroup{Path: dir, fd: fd}
	tb.Cleanup(func() {
		unix.Close(fd)
		if err := removeCgroup(dir); err != nil {
			tb.Errorf("removing test cgroup %s: %v", dir, err)
		}
	})
	return cg
}

// Procs lists the pids in the cgroup.
func (c *Cgroup) Procs() ([]int, error) { return readPids(filepath.Join(c.Path, "cgroup.procs")) }

func removeCgroup(dir string) error {
	deadline := time.Now().Add(5 * time.Second)
	for {
		err := os.Remove(dir)
		if err == nil || errors.Is(err, os.ErrNotExist) {
			return nil
		}
		if time.Now().After(deadline) {
			return err
		}
		// cgroup.kill (5.14+) takes the whole subtree; fall back to signalling pids.
		if os.WriteFile(filepath.Join(dir, "cgroup.kill"), []byte("1"), 0) != nil {
			pids, _ := readPids(filepath.Join(dir, "cgroup.procs"))
			for _, p := range pids {
				unix.Kill(p, unix.SIGKILL)
			}
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func readPids(path string) ([]int, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var pids []int
	for _, f := range strings.Fields(string(bytes.TrimSpace(b))) {
		p, err := strconv.Atoi(f)
		if err != nil {
			return nil, fmt.Errorf("parsing %s: %w", path, err)
		}
		pids = append(pids, p)
	}
	return pids, nil
}

// Child creates a sub-cgroup of c named name (plus a random suffix); it is
// removed on cleanup, before c. Tests use it for a cgroup tree under one
// attach point (e.g. enrolled and unenrolled siblings).
func (c *Cgroup) Child(tb testing.TB, name string) *Cgroup {
	tb.Helper()
	dir := filepath.Join(c.Path, UniqueName(name))
	if err := os.Mkdir(dir, 0o755); err != nil {
		tb.Fatalf("creating child cgroup: %v", err)
	}
	fd, err := unix.Open(dir, unix.O_DIRECTORY|unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		os.Remove(dir)
		tb.Fatalf("opening child cgroup: %v", err)
	}
	tb.Cleanup(func() {
		unix.Close(fd)
		if err := removeCgroup(dir); err != nil {
			tb.Errorf("removing child cgroup %s: %v", dir, err)
		}
	})
	return &Cgroup{Path: dir, fd: fd}
}
