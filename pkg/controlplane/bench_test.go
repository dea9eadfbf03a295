package controlplane

import (
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"testing"
	"time"

	"github.com/kmesh-go/kmesh/pkg/compile"
	"github.com/kmesh-go/kmesh/pkg/compile/compiletest"
	"github.com/kmesh-go/kmesh/pkg/dataplane"
	"github.com/kmesh-go/kmesh/pkg/xds"
)

// BigConfig is a mesh of nServices services with nEndpoints workloads each
// (VIPs in 10.96/12 region, backends in 10.128/9).
func BigConfig(nServices, nEndpoints int) *Config {
	c := &Config{}
	vip := netip.MustParseAddr("10.96.0.1")
	be := netip.MustParseAddr("10.128.0.1")
	for i := 0; i < nServices; i++ {
		name := fmt.Sprintf("svc-%d", i)
		c.Services = append(c.Services, ServiceConfig{Name: name, VIPs: []string{vip.String()}, Ports: []PortConfig{{Port: 80, TargetPort: 8080}}})
		vip = vip.Next()
		for j := 0; j < nEndpoints; j++ {
			c.Workloads = append(c.Workloads, WorkloadConfig{Name: fmt.Sprintf("%s-%d", name, j), Addresses: []string{be.String()},
				Services: []WorkloadServiceConfig{{Service: name}}})
			be = be.Next()
		}
	}
	return c
}

// FullPush measures one complete push of cfg: a fresh daemon-side client and
// compiler connect to a server holding it, and the clock stops when the
// dataplane holds every object (initial sync, one Apply). With cold, every
// iteration uses a new server, so the server's first encoding of the 110k
// resources (marshal and version hash, done once per config) is included;
// otherwise the server has served the config before (a daemon restart or
// reconnect, or another node), as istiod usually has.
func FullPush(b *testing.B, cfg *Config, cold bool, newDP func() dataplane.API) {
	var addr string
	newServer := func() {
		srv := New(Options{NodeName: "host1", Logger: slog.New(slog.DiscardHandler)})
		if err := srv.SetConfig(cfg); err != nil {
			b.Fatal(err)
		}
		addr = serve(b, srv)
	}
	newServer()
	if !cold {
		push(b, cfg, addr, newDP()) // warm the server's encoding
	}
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		b.StopTimer()
		if cold && i > 0 {
			newServer()
		}
		b.StartTimer()
		ms := push(b, cfg, addr, newDP())
		b.ReportMetric(float64(ms), "ms/push")
	}
}

func push(b *testing.B, cfg *Config, addr string, dp dataplane.API) int64 {
	want := len(cfg.Services) + len(cfg.Workloads)
	{
		done := make(chan struct{}, 1)
		st := compile.NewWorkloadState(dp, compile.WorkloadOptions{NodeName: "host1",
			OnApplied: func(typ string, n int, _ time.Duration) {
				if typ == xds.AddressType && n >= want {
					done <- struct{}{}
				}
			}})
		c, err := xds.New(xds.Options{Address: addr, Logger: slog.New(slog.DiscardHandler),
			Node: xds.NodeIdentity{IP: "127.0.0.1", PodName: "kmeshd", Namespace: "kmesh-system", NodeName: "host1"}.ZtunnelNode()})
		if err != nil {
			b.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		start := time.Now()
		go c.RunDelta(ctx, st)
		select {
		case <-done:
		case <-time.After(2 * time.Minute):
			b.Fatal("full push not applied within 2 minutes")
		}
		return time.Since(start).Milliseconds()
	}
}

// BenchmarkFullPush10kx10 pushes 10 000 services × 10 endpoints (110 000
// Workload API resources) into an in-memory dataplane: the control-plane,
// protocol and compiler cost of a full push. The same push into the real
// BPF maps is BenchmarkFullPushMaps in test/e2e (host tier).
func BenchmarkFullPush10kx10(b *testing.B) {
	FullPush(b, BigConfig(10000, 10), false, func() dataplane.API { return compiletest.NewRecorder() })
}

// BenchmarkFullPush10kx10Cold includes the server's first encoding.
func BenchmarkFullPush10kx10Cold(b *testing.B) {
	FullPush(b, BigConfig(10000, 10), true, func() dataplane.API { return compiletest.NewRecorder() })
}
