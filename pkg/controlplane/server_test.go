package controlplane

import (
	"bytes"
	"context"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	route "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	matcher "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	"github.com/envoyproxy/go-control-plane/pkg/cache/v3"

	"github.com/kmesh-go/kmesh/pkg/compile"
	"github.com/kmesh-go/kmesh/pkg/compile/compiletest"
	"github.com/kmesh-go/kmesh/pkg/model"
	"github.com/kmesh-go/kmesh/pkg/xds"
)

// syncBuffer is a goroutine-safe log sink.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func serve(t testing.TB, s *Server) string {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { s.Serve(ctx, lis); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	return lis.Addr().String()
}

func client(t *testing.T, addr string, hooks xds.Hooks) *xds.Client {
	t.Helper()
	c, err := xds.New(xds.Options{Address: addr, Hooks: hooks,
		Node:    xds.NodeIdentity{IP: "127.0.0.1", PodName: "kmeshd", Namespace: "kmesh-system", NodeName: "host1"}.ZtunnelNode(),
		Backoff: xds.Backoff{Initial: 20 * time.Millisecond, Max: 200 * time.Millisecond}})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func run(t *testing.T, f func(ctx context.Context)) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { f(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func mustLoad(t *testing.T, y string) *Config {
	t.Helper()
	c, err := Load("test.yaml", []byte(y))
	if err != nil {
		t.Fatal(err)
	}
	return c
}

const base = `
node: {locality: {region: r1, zone: z1}}
services:
  - name: echo
    vips: [10.96.0.10]
    ports: [{port: 80, targetPort: 8080}]
    lb: {algorithm: weighted}
workloads:
  - name: e1
    addresses: [10.0.0.1]
    services: [{service: echo}]
    weight: 1
  - name: e2
    addresses: [10.0.0.2]
    services: [{service: echo}]
    weight: 1
  - name: client
    locality: {region: r1, zone: z1}
    enrolment: {cgroup: /clients}
`

const echoKey = "default/echo.default.svc.cluster.local"

// The embedded server, the daemon's delta client and the compile passes,
// end to end into an in-memory dataplane: add, update and remove services and
// workloads.
func TestWorkloadAPIEndToEnd(t *testing.T) {
	srv := New(Options{NodeName: "host1", Logger: slog.New(slog.DiscardHandler)})
	if err := srv.SetConfig(mustLoad(t, base)); err != nil {
		t.Fatal(err)
	}
	addr := serve(t, srv)
	rec := compiletest.NewRecorder()
	st := compile.NewWorkloadState(rec, compile.WorkloadOptions{NodeName: "host1"})
	c := client(t, addr, xds.Hooks{})
	run(t, func(ctx context.Context) { c.RunDelta(ctx, st) })

	waitFor(t, "initial config", func() bool { s, w := rec.State(); return len(s) == 1 && len(w) == 3 })
	svcs, wls := rec.State()
	svc := svcs[echoKey]
	if svc.LB.Algorithm != model.LBWeighted || svc.Ports[0].TargetPort != 8080 || svc.VIPs[0].String() != "10.96.0.10" {
		t.Fatalf("service %+v", svc)
	}
	if cl := wls["standalone/default/client"]; cl.Enrolment == nil || cl.Enrolment.CgroupPath != "/clients" || cl.Locality.Node != "host1" {
		t.Fatalf("client workload %+v", cl)
	}
	if rec.Node.Locality.Region != "r1" || rec.Node.Name != "host1" {
		t.Fatalf("node %+v: locality not learned from the local workload", rec.Node)
	}
	if rec.CallCount("Apply") != 1 {
		t.Fatalf("initial sync must be one Apply, got %d", rec.CallCount("Apply"))
	}

	// update: a weight change is one UpsertWorkload
	if err := srv.SetConfig(mustLoad(t, strings.Replace(base, "weight: 1\n  - name: client", "weight: 3\n  - name: client", 1))); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "weight 3", func() bool { _, w := rec.State(); return w["standalone/default/e2"].Weight == 3 })
	if n := rec.CallCount("UpsertWorkload"); n != 1 {
		t.Fatalf("a single weight change caused %d workload upserts", n)
	}

	// add a service and a workload
	added := base + `  - name: e3
    addresses: [10.0.0.3]
    services: [{service: web}]
`
	added = strings.Replace(added, "workloads:", `  - name: web
    vips: [10.96.0.11]
    ports: [{port: 443}]
workloads:`, 1)
	if err := srv.SetConfig(mustLoad(t, added)); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "web added", func() bool {
		s, w := rec.State()
		_, ok := s["default/web.default.svc.cluster.local"]
		return ok && len(w) == 4
	})

	// remove them again
	if err := srv.SetConfig(mustLoad(t, base)); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "web removed", func() bool { s, w := rec.State(); return len(s) == 1 && len(w) == 3 })
	if rec.CallCount("DeleteService") != 1 || rec.CallCount("DeleteWorkload") != 1 {
		t.Fatalf("deletes: %v", rec.Calls)
	}
	if c.Stats.NACKs.Load() != 0 {
		t.Fatalf("%d NACKs for valid config", c.Stats.NACKs.Load())
	}
}

// A resource the dataplane cannot take (full map) is NACKed with the
// dataplane's reason; the rest of the response applies and the previous
// version of the rejected object stays.
func TestWorkloadAPICapacityNACK(t *testing.T) {
	logs := &syncBuffer{}
	srv := New(Options{NodeName: "host1", Logger: slog.New(slog.NewTextHandler(logs, nil))})
	if err := srv.SetConfig(mustLoad(t, base)); err != nil {
		t.Fatal(err)
	}
	addr := serve(t, srv)
	rec := compiletest.NewRecorder()
	st := compile.NewWorkloadState(rec, compile.WorkloadOptions{NodeName: "host1"})
	var mu sync.Mutex
	var reasons []string
	c := client(t, addr, xds.Hooks{OnNACK: func(_, _ string, r error) { mu.Lock(); reasons = append(reasons, r.Error()); mu.Unlock() }})
	run(t, func(ctx context.Context) { c.RunDelta(ctx, st) })
	waitFor(t, "initial config", func() bool { _, w := rec.State(); return len(w) == 3 })

	rec.FailUpsert["standalone/default/e1"] = true
	edited := strings.Replace(base, "weight: 1", "weight: 5", -1) // e1 and e2 change
	if err := srv.SetConfig(mustLoad(t, edited)); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "NACK", func() bool { mu.Lock(); defer mu.Unlock(); return len(reasons) == 1 })
	if !strings.Contains(reasons[0], "standalone/default/e1: capacity: km_backend is full") {
		t.Fatalf("NACK reason %q", reasons[0])
	}
	_, w := rec.State()
	if w["standalone/default/e1"].Weight != 1 || w["standalone/default/e2"].Weight != 5 {
		t.Fatalf("e1 must keep weight 1 (rejected), e2 take 5: %d %d", w["standalone/default/e1"].Weight, w["standalone/default/e2"].Weight)
	}
	if got := st.Snapshot(); got.Workloads[0].UID == "standalone/default/e1" && got.Workloads[0].Weight != 1 {
		t.Fatalf("the compiler's model diverged from the dataplane: %+v", got.Workloads[0])
	}
	waitFor(t, "server logged the NACK", func() bool { return strings.Contains(logs.String(), "client rejected config (NACK)") })
}

// A file edit applies live; a bad edit is rejected with file, line and field,
// and the previous config keeps serving.
func TestWatchLiveEditAndBadEdit(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "mesh.yaml")
	if err := os.WriteFile(file, []byte(base), 0o644); err != nil {
		t.Fatal(err)
	}
	logs := &syncBuffer{}
	srv := New(Options{NodeName: "host1", ConfigFile: file, Listen: "127.0.0.1:0", Debounce: 20 * time.Millisecond,
		Logger: slog.New(slog.NewTextHandler(logs, nil))})
	ready := make(chan string, 1)
	run(t, func(ctx context.Context) {
		if err := srv.Run(ctx, ready); err != nil {
			t.Error(err)
		}
	})
	addr := <-ready
	rec := compiletest.NewRecorder()
	st := compile.NewWorkloadState(rec, compile.WorkloadOptions{NodeName: "host1"})
	c := client(t, addr, xds.Hooks{})
	run(t, func(ctx context.Context) { c.RunDelta(ctx, st) })
	waitFor(t, "initial config", func() bool { _, w := rec.State(); return len(w) == 3 })

	// Live edit, written the way editors do: a new file renamed over the old.
	edit := strings.Replace(base, "addresses: [10.0.0.2]", "addresses: [10.0.0.22]", 1)
	tmp := filepath.Join(dir, ".mesh.yaml.swp")
	os.WriteFile(tmp, []byte(edit), 0o644)
	if err := os.Rename(tmp, file); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "edit applied", func() bool {
		_, w := rec.State()
		a := w["standalone/default/e2"].Addresses
		return len(a) == 1 && a[0].String() == "10.0.0.22"
	})

	// Bad edit: in place, an invalid VIP on line 5.
	bad := strings.Replace(edit, "vips: [10.96.0.10]", "vips: [10.96.0.999]", 1)
	if err := os.WriteFile(file, []byte(bad), 0o644); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "rejection logged", func() bool { return srv.Stats.Rejected.Load() == 1 })
	l := logs.String()
	if !strings.Contains(l, "config rejected") || !strings.Contains(l, file+":5:") || !strings.Contains(l, "services[0].vips[0]") {
		t.Fatalf("the rejection must name file, line and field; log:\n%s", l)
	}
	s, _ := rec.State()
	if s[echoKey].VIPs[0].String() != "10.96.0.10" {
		t.Fatal("the last good config must keep serving")
	}
	// Fixing the file applies again.
	if err := os.WriteFile(file, []byte(strings.Replace(edit, "weight: 1", "weight: 2", 1)), 0o644); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "fix applied", func() bool { _, w := rec.State(); return w["standalone/default/e1"].Weight == 2 })
}

const httpCfg = base + `
http:
  - name: echo-http
    address: 10.96.0.20
    port: 80
    virtualHosts:
      - name: echo
        domains: ["*"]
        routes:
          - match: {prefix: /v2, headers: [{name: x-canary, exact: "1"}]}
            to: [{service: echo}]
          - match: {prefix: /}
            to: [{service: echo, weight: 90}, {service: echo, weight: 10}]
`

// Kernel-native: the same server over SotW; the client warms CDS → EDS → LDS
// → RDS and the compiler produces the L7 model.
func TestEnvoySotWEndToEnd(t *testing.T) {
	srv := New(Options{NodeName: "host1", Logger: slog.New(slog.DiscardHandler)})
	if err := srv.SetConfig(mustLoad(t, httpCfg)); err != nil {
		t.Fatal(err)
	}
	addr := serve(t, srv)
	st := compile.NewEnvoyState(nil, slog.New(slog.DiscardHandler))
	var mu sync.Mutex
	var order []string
	c := client(t, addr, xds.Hooks{OnACK: func(typ, _ string, _ time.Duration) {
		mu.Lock()
		order = append(order, xds.ShortType(typ))
		mu.Unlock()
	}})
	run(t, func(ctx context.Context) { c.RunSotW(ctx, st) })
	waitFor(t, "L7 model", func() bool { s, _ := st.Snapshot(); return len(s.RouteConfigs) == 1 })
	snap, _ := st.Snapshot()
	if len(snap.Clusters) != 1 || len(snap.Clusters[0].Endpoints) != 2 {
		t.Fatalf("clusters %+v", snap.Clusters)
	}
	if len(snap.Listeners) != 2 {
		t.Fatalf("want the TCP listener of the VIP and the HTTP listener: %+v", snap.Listeners)
	}
	rc := snap.RouteConfigs[0]
	r0 := rc.VirtualHosts[0].Routes[0]
	if r0.Match.PathPrefix != "/v2" || r0.Match.Headers[0].Exact != "1" || r0.Action.Cluster != "outbound|80||echo.default.svc.cluster.local" {
		t.Fatalf("route 0 %+v", r0)
	}
	if w := rc.VirtualHosts[0].Routes[1].Action.WeightedClusters; len(w) != 2 || w[0].Weight != 90 {
		t.Fatalf("route 1 split %+v", w)
	}
	// The RDS ACK is recorded just after the model is applied.
	waitFor(t, "four ACKs", func() bool { mu.Lock(); defer mu.Unlock(); return len(order) >= 4 })
	mu.Lock()
	got := strings.Join(order, ",")
	mu.Unlock()
	if !strings.HasPrefix(got, "CDS,EDS,LDS,RDS") {
		t.Fatalf("warming order %s, want CDS,EDS,LDS,RDS", got)
	}

	// An endpoint change reaches the model.
	if err := srv.SetConfig(mustLoad(t, strings.Replace(httpCfg, "addresses: [10.0.0.2]", "addresses: [10.0.0.9]", 1))); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "EDS update", func() bool {
		s, _ := st.Snapshot()
		for _, e := range s.Clusters[0].Endpoints {
			if e.Address.Addr().String() == "10.0.0.9" {
				return true
			}
		}
		return false
	})
}

// An invalid Envoy resource is NACKed with the reason, the server does not
// loop resending it, the last good model stays, and the next good push applies.
func TestEnvoySotWNACKKeepsLastGood(t *testing.T) {
	srv := New(Options{NodeName: "host1", Logger: slog.New(slog.DiscardHandler)})
	if err := srv.SetConfig(mustLoad(t, httpCfg)); err != nil {
		t.Fatal(err)
	}
	addr := serve(t, srv)
	st := compile.NewEnvoyState(nil, slog.New(slog.DiscardHandler))
	var mu sync.Mutex
	var reasons []string
	c := client(t, addr, xds.Hooks{OnNACK: func(_, _ string, r error) { mu.Lock(); reasons = append(reasons, r.Error()); mu.Unlock() }})
	run(t, func(ctx context.Context) { c.RunSotW(ctx, st) })
	waitFor(t, "L7 model", func() bool { s, _ := st.Snapshot(); return len(s.RouteConfigs) == 1 })
	good, _ := st.Snapshot()

	// Push a route configuration with a regex match, which the kernel router
	// cannot do, straight into the cache (the YAML loader cannot produce it).
	res := srv.Resources()
	bad := map[string][]types.Resource{}
	for k, v := range res.Envoy {
		bad[k] = v
	}
	rc := res.Envoy[xds.RouteType][0].(*route.RouteConfiguration)
	badRC := &route.RouteConfiguration{Name: rc.GetName(), VirtualHosts: []*route.VirtualHost{{Name: "v", Domains: []string{"*"},
		Routes: []*route.Route{{Match: &route.RouteMatch{PathSpecifier: &route.RouteMatch_SafeRegex{SafeRegex: &matcher.RegexMatcher{Regex: "/v[0-9]+"}}},
			Action: rc.GetVirtualHosts()[0].GetRoutes()[0].GetAction()}}}}}
	bad[xds.RouteType] = []types.Resource{badRC}
	srv.mu.Lock()
	snap, _ := cache.NewSnapshot("bad", bad)
	srv.envoyCache.SetSnapshot(context.Background(), envoyNode, snap)
	srv.mu.Unlock()

	waitFor(t, "NACK", func() bool { mu.Lock(); defer mu.Unlock(); return len(reasons) > 0 })
	mu.Lock()
	if !strings.Contains(reasons[0], "echo-http") || !strings.Contains(reasons[0], "only prefix and path matches") {
		t.Fatalf("NACK reason %q", reasons[0])
	}
	mu.Unlock()
	time.Sleep(200 * time.Millisecond)
	if n := srv.Stats.NACKs.Load(); n != 1 {
		t.Fatalf("server received %d NACKs: it resent the rejected config", n)
	}
	now, _ := st.Snapshot()
	if !reflect.DeepEqual(now.RouteConfigs, good.RouteConfigs) || !reflect.DeepEqual(now.Listeners, good.Listeners) {
		t.Fatal("the last good L7 model must stay")
	}
	// The next good config applies.
	if err := srv.SetConfig(mustLoad(t, strings.Replace(httpCfg, "prefix: /v2", "prefix: /v3", 1))); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "good config after NACK", func() bool {
		s, _ := st.Snapshot()
		return len(s.RouteConfigs) == 1 && s.RouteConfigs[0].VirtualHosts[0].Routes[0].Match.PathPrefix == "/v3"
	})
}

// SotW reconnect: a client that had a complete config re-subscribes to every
// type on the new stream and applies what changed meanwhile.
func TestEnvoySotWReconnect(t *testing.T) {
	srv := New(Options{NodeName: "host1", Logger: slog.New(slog.DiscardHandler)})
	if err := srv.SetConfig(mustLoad(t, httpCfg)); err != nil {
		t.Fatal(err)
	}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := lis.Addr().String()
	ctx1, cancel1 := context.WithCancel(context.Background())
	done1 := make(chan struct{})
	go func() { srv.Serve(ctx1, lis); close(done1) }()
	st := compile.NewEnvoyState(nil, slog.New(slog.DiscardHandler))
	c := client(t, addr, xds.Hooks{})
	run(t, func(ctx context.Context) { c.RunSotW(ctx, st) })
	waitFor(t, "L7 model", func() bool { s, _ := st.Snapshot(); return len(s.RouteConfigs) == 1 })
	cancel1()
	<-done1

	srv2 := New(Options{NodeName: "host1", Logger: slog.New(slog.DiscardHandler)})
	if err := srv2.SetConfig(mustLoad(t, strings.Replace(httpCfg, "prefix: /v2", "prefix: /v9", 1))); err != nil {
		t.Fatal(err)
	}
	var lis2 net.Listener
	for i := 0; i < 100; i++ {
		if lis2, err = net.Listen("tcp", addr); err == nil {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err != nil {
		t.Fatal(err)
	}
	ctx2, cancel2 := context.WithCancel(context.Background())
	done2 := make(chan struct{})
	go func() { srv2.Serve(ctx2, lis2); close(done2) }()
	t.Cleanup(func() { cancel2(); <-done2 })
	waitFor(t, "resync after restart", func() bool {
		s, _ := st.Snapshot()
		return len(s.RouteConfigs) == 1 && s.RouteConfigs[0].VirtualHosts[0].Routes[0].Match.PathPrefix == "/v9"
	})
	if c.Stats.Connects.Load() < 2 {
		t.Fatalf("connects %d", c.Stats.Connects.Load())
	}
}
