// Package cp tests the control plane end to end on the real dataplane (host
// tier): go-control-plane's server (the embedded control plane, or bare
// linear caches for invalid pushes and restarts) → kmesh's xDS client → the
// compile passes → pkg/dataplane → BPF maps, checked by reading km_frontend and
// by real connections from an enrolled client to the service VIPs.
package cp

import (
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	"google.golang.org/protobuf/proto"
	"istio.io/istio/pkg/workloadapi"

	"github.com/kmesh-go/kmesh/pkg/bpf"
	"github.com/kmesh-go/kmesh/pkg/bpf/bpftest"
	"github.com/kmesh-go/kmesh/pkg/compile"
	"github.com/kmesh-go/kmesh/pkg/controlplane"
	"github.com/kmesh-go/kmesh/pkg/controlplane/cptest"
	"github.com/kmesh-go/kmesh/pkg/dataplane"
	"github.com/kmesh-go/kmesh/pkg/model"
	"github.com/kmesh-go/kmesh/pkg/testutil"
	"github.com/kmesh-go/kmesh/pkg/xds"
)

func TestMain(m *testing.M) { testutil.HelperMain(m) }

var (
	vip1 = netip.MustParseAddr("10.96.0.10")
	vip2 = netip.MustParseAddr("10.96.0.11")
)

const (
	webKey = "default/web.default.svc.cluster.local"
	apiKey = "default/api.default.svc.cluster.local"
)

// env is a client namespace enrolled by cgroup and three backends (be1..be3)
// serving their identity on 8080 and 8081, on the real dataplane attached to a
// test-owned cgroup with its own pin directory.
type env struct {
	t      *testing.T
	dp     *dataplane.Dataplane
	events *recorder
	attach *testutil.Cgroup
	client *testutil.Cgroup
	cl     *testutil.Host
	be     []*testutil.Host
}

func newEnv(t *testing.T) *env {
	t.Helper()
	e := newTopology(t)
	dp, err := dataplane.Open(dataplane.Options{BPF: bpftest.Options(t, e.attach), StateDir: t.TempDir(), Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { dp.Close() })
	e.dp = dp
	e.events = &recorder{API: dp, ch: make(chan event, 4096)}
	return e
}

// newTopology is the cgroups and namespaces of env, without a dataplane.
func newTopology(t *testing.T) *env {
	t.Helper()
	testutil.Privileged(t)
	e := &env{t: t}
	e.attach = testutil.NewCgroup(t)
	e.client = e.attach.Child(t, "client-")
	topo := testutil.NewTopology(t)
	e.cl = topo.AddHost("client")
	for i := 1; i <= 3; i++ {
		h := topo.AddHost(fmt.Sprintf("be%d", i))
		for _, port := range []int{8080, 8081} {
			testutil.ServeIdentity(t, h.NS.Listen(t, "tcp", fmt.Sprintf("0.0.0.0:%d", port)), fmt.Sprintf("%s:%d", h.Name, port))
		}
		e.be = append(e.be, h)
	}
	return e
}

// config: service web (vip1:80 → 8080) backed by the given backends (1-based),
// the client enrolled by its cgroup.
func (e *env) config(backends ...int) *controlplane.Config {
	c := &controlplane.Config{
		Services: []controlplane.ServiceConfig{{Name: "web", VIPs: []string{vip1.String()}, Ports: []controlplane.PortConfig{{Port: 80, TargetPort: 8080}}}},
		Workloads: []controlplane.WorkloadConfig{{Name: "client", Addresses: []string{e.cl.IP4.String()},
			Enrolment: &controlplane.EnrolmentConfig{Cgroup: e.client.Path}}},
	}
	for _, i := range backends {
		c.Workloads = append(c.Workloads, e.backend(i, "web"))
	}
	return c
}

func (e *env) backend(i int, services ...string) controlplane.WorkloadConfig {
	w := controlplane.WorkloadConfig{Name: fmt.Sprintf("be%d", i), Addresses: []string{e.be[i-1].IP4.String()}}
	for _, s := range services {
		w.Services = append(w.Services, controlplane.WorkloadServiceConfig{Service: s})
	}
	return w
}

// run starts the daemon side (client + compiler) against addr.
func (e *env) run(addr string, hooks xds.Hooks) *xds.Client {
	e.t.Helper()
	c, err := xds.New(xds.Options{Address: addr, Node: cptest.Node.ZtunnelNode(), Hooks: hooks, Logger: slog.New(slog.DiscardHandler),
		Backoff: xds.Backoff{Initial: 50 * time.Millisecond, Max: 500 * time.Millisecond}})
	if err != nil {
		e.t.Fatal(err)
	}
	st := compile.NewWorkloadState(e.events, compile.WorkloadOptions{NodeName: cptest.Node.NodeName, Logger: slog.New(slog.DiscardHandler)})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { c.RunDelta(ctx, st); close(done) }()
	e.t.Cleanup(func() { cancel(); <-done })
	return c
}

// frontends reads km_frontend: VIP:port → service key.
func (e *env) frontends() map[string]string {
	e.t.Helper()
	out := map[string]string{}
	var k bpf.FrontendKey
	var v bpf.FrontendVal
	it := e.dp.Objects().Maps[bpf.MapFrontend].Iterate()
	for it.Next(&k, &v) {
		var b [16]byte
		for i, w := range k.Addr {
			b[i*4], b[i*4+1], b[i*4+2], b[i*4+3] = byte(w), byte(w>>8), byte(w>>16), byte(w>>24)
		}
		port := k.Port>>8 | k.Port<<8
		key, _ := e.dp.ServiceKey(v.SvcId)
		out[netip.AddrPortFrom(netip.AddrFrom16(b).Unmap(), port).String()] = key
	}
	if err := it.Err(); err != nil {
		e.t.Fatal(err)
	}
	return out
}

// dial makes n connections to addr from the enrolled client.
func (e *env) dial(addr string, n int) testutil.DialResult {
	e.t.Helper()
	var res testutil.DialResult
	testutil.RunHelper(e.t, "dial", testutil.DialArgs{Network: "tcp4", Addr: addr, Count: n, Timeout: 3 * time.Second},
		testutil.HelperOptions{Netns: e.cl.NS, Cgroup: e.client, Timeout: 2 * time.Minute}, &res)
	return res
}

// expect dials and requires exactly the given identities to answer, without errors.
func (e *env) expect(addr string, want ...string) {
	e.t.Helper()
	res := e.dial(addr, 30)
	var got []string
	for id := range res.Identities {
		got = append(got, id)
	}
	sort.Strings(got)
	sort.Strings(want)
	if len(res.Errors) > 0 || !slices.Equal(got, want) {
		e.t.Fatalf("dial %s: answered by %v, errors %v; want exactly %v", addr, res.Identities, res.Errors, want)
	}
}

// expectUnreachable dials and requires every connection to fail.
func (e *env) expectUnreachable(addr string) {
	e.t.Helper()
	res := e.dial(addr, 3)
	if len(res.Identities) > 0 {
		e.t.Fatalf("dial %s: answered by %v; want unreachable", addr, res.Identities)
	}
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// recorder wraps the real dataplane and reports every successful call.
type recorder struct {
	dataplane.API
	ch chan event
}

type event struct {
	method, key string
	at          time.Time
}

func (r *recorder) note(method, key string) {
	select {
	case r.ch <- event{method, key, time.Now()}:
	default:
	}
}

func (r *recorder) Apply(ctx context.Context, s *model.Snapshot) error {
	err := r.API.Apply(ctx, s)
	if err == nil {
		r.note("Apply", "")
	}
	return err
}

func (r *recorder) UpsertService(ctx context.Context, s model.Service) error {
	err := r.API.UpsertService(ctx, s)
	if err == nil {
		r.note("UpsertService", s.Key)
	}
	return err
}

func (r *recorder) DeleteService(ctx context.Context, key string) error {
	err := r.API.DeleteService(ctx, key)
	if err == nil {
		r.note("DeleteService", key)
	}
	return err
}

func (r *recorder) UpsertWorkload(ctx context.Context, w model.Workload) error {
	err := r.API.UpsertWorkload(ctx, w)
	if err == nil {
		r.note("UpsertWorkload", w.UID)
	}
	return err
}

func (r *recorder) DeleteWorkload(ctx context.Context, uid string) error {
	err := r.API.DeleteWorkload(ctx, uid)
	if err == nil {
		r.note("DeleteWorkload", uid)
	}
	return err
}

func (e *env) waitEvent(method, key string) time.Time {
	e.t.Helper()
	timeout := time.After(15 * time.Second)
	for {
		select {
		case ev := <-e.events.ch:
			if ev.method == method && ev.key == key {
				return ev.at
			}
		case <-timeout:
			e.t.Fatalf("no %s %s within 15 s", method, key)
		}
	}
}

func (e *env) drain() {
	for {
		select {
		case <-e.events.ch:
		default:
			return
		}
	}
}

// Add, update and remove services and workloads through the embedded control
// plane; after each change the maps and real connections reflect it.
func TestMapsReflectEachChange(t *testing.T) {
	e := newEnv(t)
	srv := controlplane.New(controlplane.Options{NodeName: cptest.Node.NodeName, Logger: slog.New(slog.DiscardHandler)})
	if err := srv.SetConfig(e.config(1, 2)); err != nil {
		t.Fatal(err)
	}
	c := e.run(cptest.Serve(t, srv), xds.Hooks{})
	e.waitEvent("Apply", "")
	web := netip.AddrPortFrom(vip1, 80).String()
	if fe := e.frontends(); fe[web] != webKey || len(fe) != 1 {
		t.Fatalf("km_frontend %v: want %s → %s", fe, web, webKey)
	}
	e.expect(web, "be1:8080", "be2:8080")

	// update: be3 joins, be1 leaves
	e.drain()
	if err := srv.SetConfig(e.config(2, 3)); err != nil {
		t.Fatal(err)
	}
	e.waitEvent("UpsertWorkload", "standalone/default/be3")
	e.waitEvent("DeleteWorkload", "standalone/default/be1")
	e.expect(web, "be2:8080", "be3:8080")

	// add a service (vip2:81 → be1:8081)
	cfg := e.config(2, 3)
	cfg.Services = append(cfg.Services, controlplane.ServiceConfig{Name: "api", VIPs: []string{vip2.String()},
		Ports: []controlplane.PortConfig{{Port: 81, TargetPort: 8081}}})
	cfg.Workloads = append(cfg.Workloads, e.backend(1, "api"))
	if err := srv.SetConfig(cfg); err != nil {
		t.Fatal(err)
	}
	e.waitEvent("UpsertWorkload", "standalone/default/be1")
	api := netip.AddrPortFrom(vip2, 81).String()
	if fe := e.frontends(); fe[api] != apiKey || fe[web] != webKey {
		t.Fatalf("km_frontend %v after adding %s", fe, apiKey)
	}
	e.expect(api, "be1:8081")
	e.expect(web, "be2:8080", "be3:8080")

	// change the service: port 81 → 82 on the same VIP
	cfg.Services[1].Ports = []controlplane.PortConfig{{Port: 82, TargetPort: 8081}} // SetConfig owns the old slice
	if err := srv.SetConfig(cfg); err != nil {
		t.Fatal(err)
	}
	e.waitEvent("UpsertService", apiKey)
	api82 := netip.AddrPortFrom(vip2, 82).String()
	waitFor(t, "km_frontend moves to :82", func() bool { fe := e.frontends(); _, old := fe[api]; return fe[api82] == apiKey && !old })
	e.expect(api82, "be1:8081")

	// remove the service and its workload
	if err := srv.SetConfig(e.config(2, 3)); err != nil {
		t.Fatal(err)
	}
	e.waitEvent("DeleteService", apiKey)
	if fe := e.frontends(); len(fe) != 1 || fe[web] != webKey {
		t.Fatalf("km_frontend %v after removing %s", fe, apiKey)
	}
	e.expectUnreachable(api82)
	e.expect(web, "be2:8080", "be3:8080")
	if n := c.Stats.NACKs.Load(); n != 0 {
		t.Fatalf("%d NACKs", n)
	}
}

// Single updates reach the maps quickly: from the control plane accepting a
// new config to the dataplane call returning (the maps hold it), p99 < 100 ms.
func TestPropagationP99(t *testing.T) {
	e := newEnv(t)
	srv := controlplane.New(controlplane.Options{NodeName: cptest.Node.NodeName, Logger: slog.New(slog.DiscardHandler)})
	cfg := e.config(1, 2, 3)
	if err := srv.SetConfig(cfg); err != nil {
		t.Fatal(err)
	}
	e.run(cptest.Serve(t, srv), xds.Hooks{})
	e.waitEvent("Apply", "")
	const n = 200
	lat := make([]time.Duration, 0, n)
	for i := 0; i < n; i++ {
		w := 1 + i%2*2 // be2 alternates weight 3 and 1
		cfg.Workloads[2].Weight = &w
		e.drain()
		start := time.Now()
		if err := srv.SetConfig(cfg); err != nil {
			t.Fatal(err)
		}
		lat = append(lat, e.waitEvent("UpsertWorkload", "standalone/default/be2").Sub(start))
	}
	slices.Sort(lat)
	p50, p99 := lat[n/2], lat[n*99/100]
	t.Logf("propagation of %d single updates: p50 %v, p99 %v, max %v", n, p50, p99, lat[n-1])
	if p99 >= 100*time.Millisecond {
		t.Fatalf("p99 propagation %v ≥ 100 ms", p99)
	}
	e.expect(netip.AddrPortFrom(vip1, 80).String(), "be1:8080", "be2:8080", "be3:8080")
}

// An invalid resource is NACKed with its reason, and the last good config keeps
// serving real traffic.
func TestNACKLastGoodServes(t *testing.T) {
	e := newEnv(t)
	p := cptest.NewPeer(t, "", e.config(1, 2))
	var mu sync.Mutex
	var reasons []string
	c := e.run(p.Addr, xds.Hooks{OnNACK: func(_, _ string, r error) { mu.Lock(); reasons = append(reasons, r.Error()); mu.Unlock() }})
	e.waitEvent("Apply", "")
	web := netip.AddrPortFrom(vip1, 80).String()
	e.expect(web, "be1:8080", "be2:8080")

	// be2 with a 5-byte address: rejected by the compiler.
	bad := cptest.Addresses(e.config(1, 2))["standalone/default/be2"].(*workloadapi.Address)
	bad = proto.Clone(bad).(*workloadapi.Address)
	bad.GetWorkload().Addresses = [][]byte{{10, 77, 0, 3, 9}}
	p.Cache.UpdateResource("standalone/default/be2", bad)
	waitFor(t, "NACK", func() bool { return len(p.NACKs()) == 1 })
	if got := p.NACKs()[0]; !strings.Contains(got, "standalone/default/be2") || !strings.Contains(got, "addresses[0]: address has 5 bytes") {
		t.Fatalf("NACK reason %q", got)
	}
	e.expect(web, "be1:8080", "be2:8080")

	waitFor(t, "the client's NACK count", func() bool { return c.Stats.NACKs.Load() == 1 })
}

// Server restart and network cut: the client reconnects, resyncs, and applies
// a removal made while it was disconnected.
func TestReconnectResync(t *testing.T) {
	e := newEnv(t)
	p := cptest.NewPeer(t, "", e.config(1, 2))
	px := testutil.NewCutProxy(t, p.Addr)
	var mu sync.Mutex
	disconnects := 0
	c := e.run(px.Addr, xds.Hooks{OnDisconnect: func(error) { mu.Lock(); disconnects++; mu.Unlock() }})
	e.waitEvent("Apply", "")
	web := netip.AddrPortFrom(vip1, 80).String()
	e.expect(web, "be1:8080", "be2:8080")

	// Server restart: a new server (fresh cache, same address) that no longer
	// has be2; the client's initial_resource_versions make it send the removal.
	p.Stop()
	waitFor(t, "disconnect", func() bool { mu.Lock(); defer mu.Unlock(); return disconnects >= 1 })
	cache2 := cache.NewLinearCache(xds.AddressType)
	cache2.UpdateResources(cptest.Addresses(e.config(1)), nil)
	p2 := cptest.NewPeerWithCache(t, p.Addr, cache2)
	e.waitEvent("Apply", "") // the first response of a stream is applied whole
	e.expect(web, "be1:8080")

	// Network cut: while cut, be1 is removed and be3 added.
	px.Cut()
	waitFor(t, "disconnect", func() bool { mu.Lock(); defer mu.Unlock(); return disconnects >= 2 })
	p2.Cache.UpdateResources(cptest.Addresses(e.config(3)), []string{"standalone/default/be1"})
	time.Sleep(300 * time.Millisecond) // reconnect attempts fail meanwhile
	e.expect(web, "be1:8080")          // the last config keeps serving during the cut
	px.Restore()
	e.waitEvent("Apply", "")
	e.expect(web, "be3:8080")
	if c.Stats.Connects.Load() < 3 {
		t.Fatalf("connects %d, want 3", c.Stats.Connects.Load())
	}
}

// BenchmarkFullPushMaps10kx10: 10 000 services × 10 endpoints pushed by the
// embedded control plane through the client and compiler into the real BPF
// maps. Target: < 2 s (docs/performance.md).
func BenchmarkFullPushMaps10kx10(b *testing.B) { fullPushMaps(b, 10000, 10) }

// BenchmarkFullPushMaps1kx10 is the same at a tenth of the scale.
func BenchmarkFullPushMaps1kx10(b *testing.B) { fullPushMaps(b, 1000, 10) }

func fullPushMaps(b *testing.B, services, endpoints int) {
	testutil.Privileged(b)
	cg := testutil.NewCgroup(b)
	opts := bpftest.Options(b, cg)
	state := b.TempDir()
	var open *dataplane.Dataplane
	b.Cleanup(func() {
		if open != nil {
			open.Close()
		}
	})
	cptest.FullPush(b, cptest.BigConfig(services, endpoints), false, func() dataplane.API {
		if open != nil {
			open.Close()
			if err := bpf.Uninstall(opts); err != nil {
				b.Fatal(err)
			}
			dataplane.RemoveState(state)
		}
		dp, err := dataplane.Open(dataplane.Options{BPF: opts, StateDir: state, Logger: slog.New(slog.DiscardHandler)})
		if err != nil {
			b.Fatal(err)
		}
		open = dp
		return dp
	})
}
