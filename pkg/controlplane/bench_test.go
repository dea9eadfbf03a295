package controlplane_test

import (
	"testing"

	"github.com/kmesh-go/kmesh/pkg/compile/compiletest"
	"github.com/kmesh-go/kmesh/pkg/controlplane/cptest"
	"github.com/kmesh-go/kmesh/pkg/dataplane"
)

// BenchmarkFullPush10kx10 pushes 10 000 services × 10 endpoints (110 000
// Workload API resources) into an in-memory dataplane: the control-plane,
// protocol and compiler cost of a full push. The same push into the real BPF
// maps is BenchmarkFullPushMaps10kx10 in test/e2e/cp (host tier).
func BenchmarkFullPush10kx10(b *testing.B) {
	cptest.FullPush(b, cptest.BigConfig(10000, 10), false, func() dataplane.API { return compiletest.NewRecorder() })
}

// BenchmarkFullPush10kx10Cold includes the server's first encoding.
func BenchmarkFullPush10kx10Cold(b *testing.B) {
	cptest.FullPush(b, cptest.BigConfig(10000, 10), true, func() dataplane.API { return compiletest.NewRecorder() })
}
