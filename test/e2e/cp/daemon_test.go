package cp

import (
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/kmesh-go/kmesh/pkg/bpf/bpftest"
	"github.com/kmesh-go/kmesh/pkg/daemon"
	"github.com/kmesh-go/kmesh/pkg/xds"
	"github.com/kmesh-go/kmesh/pkg/xdssource"
)

// syncBuf is a goroutine-safe log sink.
type syncBuf struct {
	mu sync.Mutex
	b  strings.Builder
}

func (s *syncBuf) Write(p []byte) (int, error) { s.mu.Lock(); defer s.mu.Unlock(); return s.b.Write(p) }
func (s *syncBuf) String() string              { s.mu.Lock(); defer s.mu.Unlock(); return s.b.String() }

// kmeshd's default path, in process: daemon.Run with the xDS source, which
// starts the embedded control plane on a YAML file and connects its own
// client to it. Edits to the file reach real connections; a bad edit is
// rejected with file, line and field and the last good config keeps serving.
func TestDaemonEmbeddedControlPlane(t *testing.T) {
	e := newTopology(t)
	dir := t.TempDir()
	file := filepath.Join(dir, "mesh.yaml")
	yaml := func(backends string) string {
		return fmt.Sprintf(`services:
  - name: web
    vips: [%s]
    ports: [{port: 80, targetPort: 8080}]
workloads:
%s  - name: client
    enrolment: {cgroup: %s}
`, vip1, backends, e.client.Path)
	}
	be := func(i int) string {
		return fmt.Sprintf("  - name: be%d\n    addresses: [%s]\n    services: [{service: web}]\n", i, e.be[i-1].IP4)
	}
	if err := os.WriteFile(file, []byte(yaml(be(1)+be(2))), 0o644); err != nil {
		t.Fatal(err)
	}
	logs := &syncBuf{}
	log := slog.New(slog.NewTextHandler(logs, nil))
	id := xds.NodeIdentity{IP: "127.0.0.1", PodName: "kmeshd", Namespace: "kmesh-system", NodeName: "host1"}
	src, err := xdssource.New(xdssource.Options{ConfigFile: file, Listen: "127.0.0.1:0", Identity: &id, Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	bopts := bpftest.Options(t, e.attach) // pin dir owned (and uninstalled) by the test
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- daemon.Run(ctx, daemon.Options{PinDir: bopts.PinDir, Cgroup: bopts.Cgroup, StateDir: filepath.Join(dir, "state"),
			Source: src, Logger: log, Observability: daemon.TestObservability()})
	}()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("daemon: %v", err)
		}
		daemon.Uninstall(daemon.Options{PinDir: bopts.PinDir, Cgroup: bopts.Cgroup, StateDir: filepath.Join(dir, "state")})
	})
	web := netip.AddrPortFrom(vip1, 80).String()
	waitFor(t, "the daemon serves the file", func() bool { return len(e.dial(web, 1).Identities) == 1 })
	e.expect(web, "be1:8080", "be2:8080")

	// Live edit: be2 → be3.
	if err := os.WriteFile(file+".tmp", []byte(yaml(be(1)+be(3))), 0o644); err != nil {
		t.Fatal(err)
	}
	os.Rename(file+".tmp", file)
	waitFor(t, "the edit", func() bool {
		r := e.dial(web, 10)
		return r.Identities["be3:8080"] > 0 && r.Identities["be2:8080"] == 0
	})
	e.expect(web, "be1:8080", "be3:8080")

	// Bad edit: rejected with file:line:field, the last good config serves.
	bad := strings.Replace(yaml(be(2)), fmt.Sprintf("vips: [%s]", vip1), "vips: [10.96.0.300]", 1)
	if err := os.WriteFile(file, []byte(bad), 0o644); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "rejection logged", func() bool { return strings.Contains(logs.String(), "config rejected") })
	if l := logs.String(); !strings.Contains(l, file+":3:") || !strings.Contains(l, "services[0].vips[0]") {
		t.Fatalf("rejection must name file, line and field:\n%s", l)
	}
	time.Sleep(200 * time.Millisecond)
	e.expect(web, "be1:8080", "be3:8080")
}
