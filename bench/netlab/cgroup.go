package netlab

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/kmesh-go/kmesh/pkg/probe"
)

// newCgroup creates dir under the cgroup2 mount and registers its removal
// (after the lab's processes have been stopped, since cleanups run in reverse).
func (l *Lab) newCgroup(dir string) error {
	if err := os.Mkdir(dir, 0o755); err != nil {
		return err
	}
	l.Defer("remove cgroup "+dir, func() error { return removeCgroup(dir) })
	return nil
}

// SubCgroup creates a child of the lab cgroup (for a scenario that attaches
// BPF programs to its own cgroup) and returns its path. Processes in it still
// count towards the lab's CPU.
func (l *Lab) SubCgroup(name string) (string, error) {
	if l.Cgroup == "" {
		return "", errors.New("no cgroup v2 mount: cannot create a cgroup")
	}
	dir := filepath.Join(l.Cgroup, name)
	return dir, l.newCgroup(dir)
}

func cgroup2Root() (string, error) { return probe.Cgroup2Mount(os.Getenv("KMESH_CGROUP2")) }

// removeCgroup removes dir and its children. Processes still inside (a
// straggling nginx worker) are killed with cgroup.kill first.
func removeCgroup(dir string) error {
	ents, err := os.ReadDir(dir)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	var errs []error
	for _, e := range ents {
		if e.IsDir() {
			errs = append(errs, removeCgroup(filepath.Join(dir, e.Name())))
		}
	}
	deadline := time.Now().Add(5 * time.Second)
	killed := false
	for {
		err := os.Remove(dir)
		if err == nil || errors.Is(err, os.ErrNotExist) {
			return errors.Join(errs...)
		}
		if time.Now().After(deadline) {
			procs, _ := os.ReadFile(filepath.Join(dir, "cgroup.procs"))
			return errors.Join(append(errs, fmt.Errorf("%w (still in it: %s)", err, strings.Fields(string(procs))))...)
		}
		if !killed && time.Now().Add(4*time.Second).After(deadline) {
			_ = os.WriteFile(filepath.Join(dir, "cgroup.kill"), []byte("1"), 0)
			killed = true
		}
		time.Sleep(50 * time.Millisecond)
	}
}
