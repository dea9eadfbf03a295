package cptest

import (
	"context"
	"net"
	"sync"
	"testing"
	"time"

	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	"github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	"github.com/envoyproxy/go-control-plane/pkg/server/v3"
	"google.golang.org/grpc"

	"github.com/kmesh-go/kmesh/pkg/controlplane"
	"github.com/kmesh-go/kmesh/pkg/xds"
)

// Peer is go-control-plane's ADS server with bare linear caches for the
// Workload API types, for tests that push resources the embedded control
// plane would refuse to produce (invalid ones) or restart the server. It
// records the NACKs it receives.
type Peer struct {
	tb    testing.TB
	Addr  string
	Cache *cache.LinearCache // istio.workload.Address
	g     *grpc.Server
	mu    sync.Mutex
	nacks []string
}

// NewPeer serves the addresses of cfg (translated as the embedded server
// does) on addr ("" = a free loopback port).
func NewPeer(tb testing.TB, addr string, cfg *controlplane.Config) *Peer {
	tb.Helper()
	c := cache.NewLinearCache(xds.AddressType)
	if cfg != nil {
		c.UpdateResources(Addresses(cfg), nil)
	}
	return NewPeerWithCache(tb, addr, c)
}

// Addresses translates cfg into Address resources by name.
func Addresses(cfg *controlplane.Config) map[string]types.Resource {
	out := map[string]types.Resource{}
	for name, a := range controlplane.Translate(cfg, Node.NodeName).Addresses {
		out[name] = a
	}
	return out
}

// NewPeerWithCache serves c.
func NewPeerWithCache(tb testing.TB, addr string, c *cache.LinearCache) *Peer {
	tb.Helper()
	if addr == "" {
		addr = "127.0.0.1:0"
	}
	var lis net.Listener
	var err error
	for i := 0; i < 100; i++ { // a just-closed port may linger briefly
		if lis, err = net.Listen("tcp", addr); err == nil {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err != nil {
		tb.Fatal(err)
	}
	p := &Peer{tb: tb, Addr: lis.Addr().String(), Cache: c}
	mux := &cache.MuxCache{
		Classify:      func(r *cache.Request) string { return r.GetTypeUrl() },
		ClassifyDelta: func(r *cache.DeltaRequest) string { return r.GetTypeUrl() },
		Caches:        map[string]cache.Cache{xds.AddressType: c, xds.AuthorizationType: cache.NewLinearCache(xds.AuthorizationType)},
	}
	srv := server.NewServer(context.Background(), mux, server.CallbackFuncs{
		StreamDeltaRequestFunc: func(_ int64, r *discovery.DeltaDiscoveryRequest) error {
			if r.GetErrorDetail() != nil {
				p.mu.Lock()
				p.nacks = append(p.nacks, r.GetErrorDetail().GetMessage())
				p.mu.Unlock()
			}
			return nil
		},
	})
	p.g = grpc.NewServer()
	discovery.RegisterAggregatedDiscoveryServiceServer(p.g, srv)
	go p.g.Serve(lis)
	tb.Cleanup(p.g.Stop)
	return p
}

// Stop stops the server (streams end at once).
func (p *Peer) Stop() { p.g.Stop() }

// NACKs returns the error_detail messages received so far.
func (p *Peer) NACKs() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]string(nil), p.nacks...)
}
