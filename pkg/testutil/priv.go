// Package testutil holds the helpers of the host test tier: privilege gating,
// test-owned cgroups and network namespaces, re-exec helper processes, and
// small servers. Everything a test creates is removed in t.Cleanup, also when
// the test fails.
package testutil

import (
	"os"
	"testing"

	"github.com/kmesh-go/kmesh/pkg/probe"
)

// TierMarker is logged by every host-tier test; test/tools/testreport counts
// tests by it.
const TierMarker = "kmesh-tier: host"

// InCI reports whether the run is a CI run (CI=true), where a host-tier test
// must fail instead of skipping.
func InCI() bool { return os.Getenv("CI") == "true" }

// Privileged marks t as a host-tier test: it needs root and a BPF-capable
// kernel. Without them it skips with the reason, or fails when CI=true.
// It also mounts bpffs at /sys/fs/bpf if nothing is mounted there.
func Privileged(tb testing.TB) {
	tb.Helper()
	tb.Log(TierMarker)
	if reason := privilegeProblem(); reason != "" {
		SkipOrFail(tb, "host-tier test needs %s", reason)
	}
	if err := probe.EnsureBPFFS(probe.DefaultBPFFS); err != nil {
		tb.Fatalf("bpffs: %v", err)
	}
}

// SkipOrFail skips the test with the formatted reason, or fails it under CI.
func SkipOrFail(tb testing.TB, format string, args ...any) {
	tb.Helper()
	if InCI() {
		tb.Fatalf("CI=true forbids skipping: "+format, args...)
	}
	tb.Skipf(format, args...)
}

func privilegeProblem() string {
	if os.Geteuid() != 0 {
		return "root (run: sudo make test)"
	}
	return ""
}
