package xds

import (
	"context"
	"errors"
	"fmt"
	"net"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	"github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	"github.com/envoyproxy/go-control-plane/pkg/server/v3"
	"google.golang.org/grpc"
	"istio.io/istio/pkg/workloadapi"

	"github.com/kmesh-go/kmesh/pkg/testutil"
)

// peer is go-control-plane's server on a loopback port, with linear caches
// for the Workload API types; it records the requests it receives.
type peer struct {
	addr  string
	lis   net.Listener
	g     *grpc.Server
	cache *cache.LinearCache
	mu    sync.Mutex
	reqs  []*discovery.DeltaDiscoveryRequest
}

func newPeer(t *testing.T, addr string, c *cache.LinearCache) *peer {
	t.Helper()
	if addr == "" {
		addr = "127.0.0.1:0"
	}
	var lis net.Listener
	var err error
	for i := 0; i < 50; i++ { // the port of a just-stopped server may linger briefly
		if lis, err = net.Listen("tcp", addr); err == nil {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err != nil {
		t.Fatal(err)
	}
	p := &peer{addr: lis.Addr().String(), lis: lis, cache: c}
	authz := cache.NewLinearCache(AuthorizationType)
	mux := &cache.MuxCache{
		Classify:      func(r *cache.Request) string { return r.GetTypeUrl() },
		ClassifyDelta: func(r *cache.DeltaRequest) string { return r.GetTypeUrl() },
		Caches:        map[string]cache.Cache{AddressType: c, AuthorizationType: authz},
	}
	srv := server.NewServer(context.Background(), mux, server.CallbackFuncs{
		StreamDeltaRequestFunc: func(_ int64, r *discovery.DeltaDiscoveryRequest) error {
			p.mu.Lock()
			p.reqs = append(p.reqs, r)
			p.mu.Unlock()
			return nil
		},
	})
	p.g = grpc.NewServer()
	discovery.RegisterAggregatedDiscoveryServiceServer(p.g, srv)
	go p.g.Serve(lis)
	t.Cleanup(p.g.Stop)
	return p
}

func (p *peer) requests() []*discovery.DeltaDiscoveryRequest {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]*discovery.DeltaDiscoveryRequest(nil), p.reqs...)
}

// handler records what it was given and rejects names starting with "bad".
type handler struct {
	mu      sync.Mutex
	have    map[string]string // name → workload name or service hostname
	updates []*DeltaUpdate
	changed chan struct{}
}

func newHandler() *handler {
	return &handler{have: map[string]string{}, changed: make(chan struct{}, 100)}
}

func (h *handler) HandleDelta(_ context.Context, u *DeltaUpdate) (map[string]error, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.updates = append(h.updates, u)
	rej := map[string]error{}
	if u.TypeURL == AddressType {
		for _, r := range u.Resources {
			if strings.HasPrefix(r.GetName(), "bad") {
				rej[r.GetName()] = fmt.Errorf("field x of %s is wrong", r.GetName())
				continue
			}
			var a workloadapi.Address
			if err := r.GetResource().UnmarshalTo(&a); err != nil {
				rej[r.GetName()] = err
				continue
			}
			h.have[r.GetName()] = a.GetWorkload().GetName()
		}
		for _, n := range u.Removed {
			delete(h.have, n)
		}
	}
	h.changed <- struct{}{}
	return rej, nil
}

func (h *handler) names() []string {
	h.mu.Lock()
	defer h.mu.Unlock()
	var out []string
	for n := range h.have {
		out = append(out, n)
	}
	sort.Strings(out)
	return out
}

func wl(name string) types.Resource {
	return &workloadapi.Address{Type: &workloadapi.Address_Workload{Workload: &workloadapi.Workload{Uid: name, Name: name}}}
}

func testNode() *core.Node {
	return NodeIdentity{IP: "127.0.0.1", PodName: "kmeshd", Namespace: "kmesh-system", NodeName: "n1"}.ZtunnelNode()
}

func fastBackoff() Backoff {
	return Backoff{Initial: 20 * time.Millisecond, Max: 200 * time.Millisecond, Multiplier: 2, Jitter: 0.2}
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

func startDelta(t *testing.T, addr string, h DeltaHandler, hooks Hooks) *Client {
	t.Helper()
	c, err := New(Options{Address: addr, Node: testNode(), Backoff: fastBackoff(), Hooks: hooks})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { c.RunDelta(ctx, h); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	return c
}

func TestZtunnelNodeID(t *testing.T) {
	n := NodeIdentity{IP: "10.0.0.5", PodName: "kmesh-abc", Namespace: "kmesh-system"}
	if got, want := n.ZtunnelNode().GetId(), "ztunnel~10.0.0.5~kmesh-abc.kmesh-system~kmesh-system.svc.cluster.local"; got != want {
		t.Fatalf("node id %q, want %q", got, want)
	}
	if got := n.SidecarNode().GetId(); !strings.HasPrefix(got, "sidecar~10.0.0.5~") {
		t.Fatalf("sidecar node id %q", got)
	}
}

func TestBackoffGrowsCapsAndJitters(t *testing.T) {
	b := Backoff{Initial: 100 * time.Millisecond, Max: time.Second, Multiplier: 2, Jitter: 0.2}
	for attempt, base := range []time.Duration{100, 200, 400, 800, 1000, 1000} {
		base *= time.Millisecond
		seen := map[time.Duration]bool{}
		for i := 0; i < 50; i++ {
			d := b.Delay(attempt)
			if d < base*8/10 || d > base*12/10 {
				t.Fatalf("attempt %d: delay %v outside %v±20%%", attempt, d, base)
			}
			seen[d] = true
		}
		if len(seen) < 10 {
			t.Fatalf("attempt %d: only %d distinct delays in 50: no jitter", attempt, len(seen))
		}
	}
}

func TestTokenRefusedInCleartextToRemote(t *testing.T) {
	_, err := New(Options{Address: "istiod.istio-system.svc:15012", TokenFile: "/tmp/tok", Node: testNode()})
	if err == nil || !strings.Contains(err.Error(), "cleartext") {
		t.Fatalf("want a refusal to send the token in cleartext, got %v", err)
	}
	if _, err := New(Options{Address: "127.0.0.1:15010", TokenFile: "/tmp/tok", Node: testNode()}); err != nil {
		t.Fatalf("loopback plaintext with a token must be allowed: %v", err)
	}
}

func TestDeltaACKAndPartialNACK(t *testing.T) {
	c := cache.NewLinearCache(AddressType)
	c.UpdateResources(map[string]types.Resource{"w1": wl("w1"), "w2": wl("w2")}, nil)
	p := newPeer(t, "", c)
	h := newHandler()
	var nacks []string
	var mu sync.Mutex
	startDelta(t, p.addr, h, Hooks{OnNACK: func(_, _ string, reason error) { mu.Lock(); nacks = append(nacks, reason.Error()); mu.Unlock() }})
	waitFor(t, "initial sync", func() bool { return len(h.names()) == 2 })

	// The first request of the stream identifies the node in ztunnel form.
	first := p.requests()[0]
	if !strings.HasPrefix(first.GetNode().GetId(), "ztunnel~") || first.GetTypeUrl() != AddressType {
		t.Fatalf("first request: node %q type %q", first.GetNode().GetId(), first.GetTypeUrl())
	}

	// One good and one bad resource: the good one is applied, the response NACKed.
	c.UpdateResources(map[string]types.Resource{"w3": wl("w3"), "bad1": wl("bad1")}, nil)
	waitFor(t, "w3 applied", func() bool { return strings.Join(h.names(), ",") == "w1,w2,w3" })
	var nack *discovery.DeltaDiscoveryRequest
	waitFor(t, "NACK", func() bool {
		for _, r := range p.requests() {
			if r.GetErrorDetail() != nil {
				nack = r
				return true
			}
		}
		return false
	})
	if msg := nack.GetErrorDetail().GetMessage(); !strings.Contains(msg, "bad1: field x of bad1 is wrong") {
		t.Fatalf("NACK reason %q does not name the resource and the field", msg)
	}
	if nack.GetResponseNonce() == "" || nack.GetTypeUrl() != AddressType {
		t.Fatalf("NACK must carry the nonce and type: %+v", nack)
	}
	waitFor(t, "OnNACK", func() bool { mu.Lock(); defer mu.Unlock(); return len(nacks) == 1 }) // runs just after the send

	// ACKs carry a nonce and no error.
	acks := 0
	for _, r := range p.requests() {
		if r.GetResponseNonce() != "" && r.GetErrorDetail() == nil {
			acks++
		}
	}
	if acks < 2 {
		t.Fatalf("want ACKs for the Address and Authorization responses, got %d", acks)
	}
	// Removal.
	c.DeleteResource("w1")
	waitFor(t, "w1 removed", func() bool { return strings.Join(h.names(), ",") == "w2,w3" })
}

func TestDeltaReconnectSendsInitialVersionsAndAppliesRemovals(t *testing.T) {
	c := cache.NewLinearCache(AddressType)
	c.UpdateResources(map[string]types.Resource{"w1": wl("w1"), "w2": wl("w2"), "w3": wl("w3")}, nil)
	p := newPeer(t, "", c)
	h := newHandler()
	cl := startDelta(t, p.addr, h, Hooks{})
	waitFor(t, "initial sync", func() bool { return len(h.names()) == 3 })

	// Server restart; meanwhile w2 is removed and w4 added (new cache, same address).
	p.g.Stop()
	c2 := cache.NewLinearCache(AddressType)
	c2.UpdateResources(map[string]types.Resource{"w1": wl("w1"), "w3": wl("w3"), "w4": wl("w4")}, nil)
	p2 := newPeer(t, p.addr, c2)
	waitFor(t, "resync", func() bool { return strings.Join(h.names(), ",") == "w1,w3,w4" })
	if cl.Stats.Connects.Load() < 2 {
		t.Fatalf("connects = %d", cl.Stats.Connects.Load())
	}
	var sub *discovery.DeltaDiscoveryRequest
	for _, r := range p2.requests() {
		if r.GetTypeUrl() == AddressType && r.GetResponseNonce() == "" {
			sub = r
			break
		}
	}
	if sub == nil {
		t.Fatal("no subscription on the new stream")
	}
	iv := sub.GetInitialResourceVersions()
	if len(iv) != 3 || iv["w2"] == "" {
		t.Fatalf("initial_resource_versions = %v, want w1 w2 w3 with versions", iv)
	}
	// Unchanged resources are not resent: the resync carried only w4 and the removal of w2.
	h.mu.Lock()
	last := h.updates[len(h.updates)-1]
	for _, u := range h.updates {
		if u.TypeURL == AddressType && u.Resync && len(u.Removed) > 0 {
			last = u
		}
	}
	h.mu.Unlock()
	if len(last.Resources) != 1 || last.Resources[0].GetName() != "w4" || len(last.Removed) != 1 || last.Removed[0] != "w2" {
		names := []string{}
		for _, r := range last.Resources {
			names = append(names, r.GetName())
		}
		t.Fatalf("resync carried %v removed %v; want [w4] removed [w2]", names, last.Removed)
	}
}

func TestDeltaWholeResponseRejection(t *testing.T) {
	c := cache.NewLinearCache(AddressType)
	c.UpdateResources(map[string]types.Resource{"w1": wl("w1")}, nil)
	p := newPeer(t, "", c)
	h := &rejectAll{}
	startDelta(t, p.addr, h, Hooks{})
	waitFor(t, "NACK", func() bool {
		for _, r := range p.requests() {
			if strings.Contains(r.GetErrorDetail().GetMessage(), "dataplane full") {
				return true
			}
		}
		return false
	})
}

type rejectAll struct{}

func (rejectAll) HandleDelta(_ context.Context, u *DeltaUpdate) (map[string]error, error) {
	if u.TypeURL == AddressType {
		return nil, errors.New("dataplane full")
	}
	return nil, nil
}

// A cut network: the TCP proxy between client and server drops every
// connection and refuses new ones for a while. The client must reconnect with
// backoff and resync, and a removal made during the cut must be applied.
func TestDeltaNetworkCut(t *testing.T) {
	c := cache.NewLinearCache(AddressType)
	c.UpdateResources(map[string]types.Resource{"w1": wl("w1"), "w2": wl("w2")}, nil)
	p := newPeer(t, "", c)
	px := testutil.NewCutProxy(t, p.addr)
	h := newHandler()
	var disconnects sync.WaitGroup
	disconnects.Add(1)
	var once sync.Once
	startDelta(t, px.Addr, h, Hooks{OnDisconnect: func(error) { once.Do(disconnects.Done) }})
	waitFor(t, "initial sync", func() bool { return len(h.names()) == 2 })
	px.Cut()
	disconnects.Wait()
	c.DeleteResource("w1")
	c.UpdateResource("w5", wl("w5"))
	time.Sleep(300 * time.Millisecond) // several failed attempts while cut
	px.Restore()
	waitFor(t, "resync after the cut", func() bool { return strings.Join(h.names(), ",") == "w2,w5" })
}
