package xdssource

import (
	"context"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/kmesh-go/kmesh/pkg/compile/compiletest"
	"github.com/kmesh-go/kmesh/pkg/xds"
)

func TestBadEmbeddedConfigStopsStartup(t *testing.T) {
	f := filepath.Join(t.TempDir(), "mesh.yaml")
	os.WriteFile(f, []byte("services:\n  - name: a\n    vips: [nope]\n    ports: [{port: 80}]\n"), 0o644)
	_, err := New(Options{ConfigFile: f})
	if err == nil || !strings.Contains(err.Error(), f+":3:") || !strings.Contains(err.Error(), "services[0].vips[0]") {
		t.Fatalf("want file:line and field, got %v", err)
	}
	if _, err := New(Options{XDSAddress: "127.0.0.1:1", ConfigFile: f}); err == nil {
		t.Fatal("--config with --xds-address must be refused")
	}
}

// The default source: embedded control plane on a loopback port serving the
// shipped mesh.yaml, the delta client and the compiler, into a recorder.
func TestEmbeddedDefault(t *testing.T) {
	id := xds.NodeIdentity{IP: "127.0.0.1", PodName: "kmeshd", Namespace: "kmesh-system", NodeName: "host1"}
	s, err := New(Options{ConfigFile: "../../deploy/standalone/mesh.yaml", Listen: "127.0.0.1:0", Identity: &id,
		Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	rec := compiletest.NewRecorder()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx, rec) }()
	deadline := time.Now().Add(10 * time.Second)
	for {
		svcs, wls := rec.State()
		if len(svcs) == 1 && len(wls) == 3 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("mesh.yaml not applied: %d services %d workloads", len(svcs), len(wls))
		}
		time.Sleep(10 * time.Millisecond)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

// Kernel-native mode: the same embedded server over SotW, into the L7 model.
func TestEmbeddedKernelNative(t *testing.T) {
	f := filepath.Join(t.TempDir(), "mesh.yaml")
	os.WriteFile(f, []byte(`
services:
  - name: echo
    vips: [10.96.0.10]
    ports: [{port: 80, targetPort: 8080}]
workloads:
  - name: e1
    addresses: [10.0.0.1]
    services: [{service: echo}]
http:
  - name: echo-http
    address: 10.96.0.20
    port: 80
    virtualHosts:
      - name: echo
        domains: ["*"]
        routes:
          - match: {prefix: /}
            to: [{service: echo}]
`), 0o644)
	id := xds.NodeIdentity{IP: "127.0.0.1", PodName: "kmeshd", Namespace: "kmesh-system", NodeName: "host1"}
	s, err := New(Options{Mode: ModeKernelNative, ConfigFile: f, Listen: "127.0.0.1:0", Identity: &id, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx, compiletest.NewRecorder()) }()
	<-s.Ready()
	deadline := time.Now().Add(10 * time.Second)
	for {
		snap, _ := s.Envoy.Snapshot()
		if len(snap.Listeners) == 2 && len(snap.RouteConfigs) == 1 && len(snap.Clusters) == 1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("L7 model not built: %+v", snap)
		}
		time.Sleep(10 * time.Millisecond)
	}
	if s.Client.Stats.ACKs.Load() < 4 || s.Client.Stats.NACKs.Load() != 0 {
		t.Fatalf("ACKs %d, NACKs %d", s.Client.Stats.ACKs.Load(), s.Client.Stats.NACKs.Load())
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}
