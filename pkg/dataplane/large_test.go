package dataplane

import (
	"context"
	"reflect"
	"runtime/debug"
	"testing"

	"github.com/kmesh-go/kmesh/pkg/bpf"
	"github.com/kmesh-go/kmesh/pkg/bpf/bpftest"
	"github.com/kmesh-go/kmesh/pkg/testutil"
)

// openScratch opens a dataplane on its own cgroup and state directory, with
// everything it pins removed at cleanup; opts reopens it for a restart.
func openScratch(t *testing.T) (*Dataplane, Options) {
	t.Helper()
	testutil.Privileged(t)
	opts := Options{BPF: bpftest.Options(t, testutil.NewCgroup(t)), StateDir: t.TempDir()}
	t.Cleanup(func() { bpf.Uninstall(opts.BPF) })
	dp, err := Open(opts)
	if err != nil {
		t.Fatal(err)
	}
	return dp, opts
}

// TestLargePush applies a push large enough for the bulk paths (GOGC raised
// for the call, states and names allocated in chunks): the collector setting
// is restored, the model comes back exactly, also after a restart from the
// state file, and re-applying it changes nothing.
func TestLargePush(t *testing.T) {
	dp, opts := openScratch(t)
	var err error
	defer func() { dp.Close() }()
	// 12 100 objects: over both bulk thresholds. Under TCG (-short, VM
	// tier) 1 210: states still allocated in chunks, GOGC left alone.
	n := 1100
	if testing.Short() {
		n = 110
	}
	snap := bigSnapshot(n, 10)
	old := debug.SetGCPercent(100)
	defer debug.SetGCPercent(old)
	if err := dp.Apply(context.Background(), snap); err != nil {
		t.Fatal(err)
	}
	if gc := debug.SetGCPercent(100); gc != 100 {
		t.Fatalf("GOGC is %d after a large push, want it restored to 100", gc)
	}
	// The workload records are one slice sized for the push, also after a
	// restart (not grown by appends, which leave up to a quarter unused).
	if c := cap(dp.wls.recs); c != len(snap.Workloads) {
		t.Fatalf("%d workload records allocated for %d", c, len(snap.Workloads))
	}
	want := dp.Snapshot()
	if len(want.Workloads) != len(snap.Workloads) || len(want.Services) != len(snap.Services) {
		t.Fatalf("snapshot has %d workloads, %d services", len(want.Workloads), len(want.Services))
	}
	in := map[string]int{}
	for i, w := range snap.Workloads {
		in[w.UID] = i
	}
	for _, w := range want.Workloads {
		if i, ok := in[w.UID]; !ok || !reflect.DeepEqual(w, snap.Workloads[i]) {
			t.Fatalf("workload %q differs from the one applied:\n%+v", w.UID, w)
		}
	}
	svcs := map[string]int{}
	for i, s := range snap.Services {
		svcs[s.Key] = i
	}
	for _, s := range want.Services {
		if i, ok := svcs[s.Key]; !ok || !reflect.DeepEqual(s, snap.Services[i]) {
			t.Fatalf("service %q differs from the one applied:\n%+v", s.Key, s)
		}
	}
	if err := dp.Close(); err != nil { // flushes the state file
		t.Fatal(err)
	}
	if dp, err = Open(opts); err != nil {
		t.Fatal(err)
	}
	if got := dp.Snapshot(); !reflect.DeepEqual(got, want) {
		t.Fatal("the model read back from the state file differs from the one applied")
	}
	if c := cap(dp.wls.recs); c != len(snap.Workloads) {
		t.Fatalf("%d workload records allocated for %d after the restart", c, len(snap.Workloads))
	}
	u := dp.Usage()
	if err := dp.Apply(context.Background(), snap); err != nil {
		t.Fatal(err)
	}
	if got := dp.Usage(); got != u {
		t.Fatalf("re-applying the same push after a restart changed usage: %+v, was %+v", got, u)
	}
	if id, ok := dp.WorkloadUID(dp.wls.get(snap.Workloads[5].UID).id); !ok || id != snap.Workloads[5].UID {
		t.Fatalf("WorkloadUID gives %q, %v", id, ok)
	}
}
