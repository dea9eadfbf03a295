// Package bpftest gives tests isolated dataplane pin directories.
package bpftest

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/kmesh-go/kmesh/pkg/bpf"
	"github.com/kmesh-go/kmesh/pkg/probe"
	"github.com/kmesh-go/kmesh/pkg/testutil"
)

// Options returns bpf.Options for a test: a unique pin directory under the
// default bpffs and the given test-owned cgroup. Everything is uninstalled on
// cleanup, so parallel runs by other packages never collide.
func Options(tb testing.TB, cg *testutil.Cgroup) bpf.Options {
	tb.Helper()
	opts := bpf.Options{
		PinDir: filepath.Join(probe.DefaultBPFFS, testutil.UniqueName("kmesh-test-")),
		Cgroup: cg.Path,
	}
	tb.Cleanup(func() {
		if err := bpf.Uninstall(opts); err != nil {
			tb.Errorf("uninstall %s: %v", opts.PinDir, err)
		}
		if _, err := os.Stat(opts.PinDir); err == nil {
			tb.Errorf("pin dir %s still exists after uninstall", opts.PinDir)
		}
	})
	return opts
}
