package daemon

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/kmesh-go/kmesh/pkg/bpf/bpftest"
	"github.com/kmesh-go/kmesh/pkg/dataplane"
	"github.com/kmesh-go/kmesh/pkg/kmod"
	"github.com/kmesh-go/kmesh/pkg/model"
	"github.com/kmesh-go/kmesh/pkg/testutil"
)

func TestMain(m *testing.M) { testutil.HelperMain(m) }

// Kernel-native mode never falls back to dual-engine: without a usable
// kmesh.ko the daemon stops with the reason (*kmod.Error) before touching the
// dataplane. The host has no module support at all; the guests of the VM tier
// have no module loaded and no --kmod-path here (6.12) or are too old (6.1).
// The refusals with the real kmeshd binary are in pkg/l7 and the kmodold suite.
func TestKernelNativeRefusedWithoutModule(t *testing.T) {
	if kmod.Loaded() {
		t.Fatal("kmesh.ko is loaded; this test needs a kernel without it")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	err := Run(ctx, Options{Mode: ModeKernelNative, StateDir: t.TempDir(),
		Source: SourceFunc(func(context.Context, dataplane.API) error { return nil })})
	var kerr *kmod.Error
	if !errors.As(err, &kerr) {
		t.Fatalf("kernel-native without kmesh.ko: %v, want a *kmod.Error", err)
	}
	if _, serr := os.Stat("/proc/modules"); serr != nil && !errors.Is(err, kmod.ErrNoModuleSupport) {
		t.Fatalf("no module support: %v", err)
	}
	t.Logf("refused: %v", err)
}

func TestLoadModelFileRejectsUnknownFields(t *testing.T) {
	p := filepath.Join(t.TempDir(), "m.yaml")
	os.WriteFile(p, []byte("services:\n- key: a\n  vipz: [10.0.0.1]\n"), 0o644)
	if _, err := LoadModelFile(p); err == nil {
		t.Fatal("a misspelled field was accepted")
	}
	os.WriteFile(p, []byte("\n"), 0o644)
	if _, err := LoadModelFile(p); err == nil {
		t.Fatal("an empty file (a write in progress) was accepted as an empty model")
	}
	os.WriteFile(p, []byte("services:\n- key: a\n  vips: [10.0.0.1]\n  ports: [{port: 80, targetPort: 8080}]\n"), 0o644)
	s, err := LoadModelFile(p)
	if err != nil || len(s.Services) != 1 || s.Services[0].VIPs[0] != netip.MustParseAddr("10.0.0.1") || s.Services[0].Ports[0].TargetPort != 8080 {
		t.Fatalf("%+v %v", s, err)
	}
}

// TestDaemonModelFileStopAndUninstall runs the daemon core on a model file:
// the VIP works once applied, an edit is applied live, a bad edit keeps the
// last good model, stopping the daemon leaves the dataplane serving, and
// Uninstall removes it.
func TestDaemonModelFileStopAndUninstall(t *testing.T) {
	testutil.Privileged(t)
	cg := testutil.NewCgroup(t)
	client := cg.Child(t, "client-")
	topo := testutil.NewTopology(t)
	cl := topo.AddHost("client")
	var be []*testutil.Host
	for i := 1; i <= 2; i++ {
		h := topo.AddHost(fmt.Sprintf("be%d", i))
		testutil.ServeIdentity(t, h.NS.Listen(t, "tcp", "[::]:8080"), h.Name)
		be = append(be, h)
	}
	vip := netip.MustParseAddr("10.96.0.20")
	snap := func(backends ...*testutil.Host) *model.Snapshot {
		s := &model.Snapshot{Services: []model.Service{{Key: "ns/svc", VIPs: []netip.Addr{vip}, Ports: []model.ServicePort{{Port: 80, TargetPort: 8080}}}},
			Workloads: []model.Workload{{UID: "client", Addresses: []netip.Addr{cl.IP4}, Healthy: true, Enrolment: &model.Enrolment{CgroupPath: client.Path}}}}
		for _, h := range backends {
			s.Workloads = append(s.Workloads, model.Workload{UID: h.Name, Addresses: []netip.Addr{h.IP4}, Healthy: true, Services: map[string][]model.WorkloadPort{"ns/svc": nil}})
		}
		return s
	}
	file := filepath.Join(t.TempDir(), "model.json")
	write := func(s *model.Snapshot) {
		b, _ := json.Marshal(s)
		tmp := file + ".tmp"
		os.WriteFile(tmp, b, 0o644)
		os.Rename(tmp, file)
	}
	write(snap(be[0]))

	bo := bpftest.Options(t, cg)
	ready := make(chan struct{})
	opts := Options{BPFFS: bo.BPFFS, PinDir: bo.PinDir, Cgroup: bo.Cgroup, StateDir: t.TempDir(),
		Source:        ModelFile{Path: file, Poll: 50 * time.Millisecond},
		Observability: TestObservability(),
		OnReady:       func(*dataplane.Dataplane) { close(ready) }}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- Run(ctx, opts) }()
	select {
	case <-ready:
	case err := <-done:
		t.Fatalf("daemon ended before it was ready: %v", err)
	case <-time.After(3 * time.Minute):
		t.Fatal("daemon not ready after 3 minutes")
	}
	defer func() {
		cancel()
		<-done
	}()

	dial := func(n int) testutil.DialResult {
		var r testutil.DialResult
		testutil.RunHelper(t, "dial", testutil.DialArgs{Addr: "10.96.0.20:80", Count: n, Timeout: 2 * time.Second},
			testutil.HelperOptions{Netns: cl.NS, Cgroup: client}, &r)
		return r
	}
	waitFor := func(what string, ok func(testutil.DialResult) bool) {
		t.Helper()
		deadline := time.Now().Add(20 * time.Second)
		for {
			r := dial(10)
			if ok(r) {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s: last result %+v", what, r)
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	waitFor("first model applied", func(r testutil.DialResult) bool { return r.Identities["be1"] == 10 })

	write(snap(be[1]))
	waitFor("edited model applied", func(r testutil.DialResult) bool { return r.Identities["be2"] == 10 })

	os.WriteFile(file, []byte("{not json"), 0o644)
	time.Sleep(300 * time.Millisecond)
	if r := dial(10); r.Identities["be2"] != 10 {
		t.Fatalf("after a bad edit the last good model must keep serving: %+v", r)
	}

	cancel()
	if err := <-done; err != nil {
		t.Fatalf("Run after stop: %v", err)
	}
	done <- nil // for the deferred receive
	if r := dial(10); r.Identities["be2"] != 10 {
		t.Fatalf("with the daemon stopped the pinned dataplane must keep serving: %+v", r)
	}

	if err := Uninstall(opts); err != nil {
		t.Fatal(err)
	}
	if r := dial(3); r.Errors["dial: connect: network is unreachable"] != 3 {
		t.Fatalf("after uninstall the VIP must be untouched: %+v", r)
	}
	if _, err := os.Stat(bo.PinDir); !os.IsNotExist(err) {
		t.Fatalf("pin dir after uninstall: %v", err)
	}
}
