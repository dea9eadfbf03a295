// Package cptest has helpers for tests and benchmarks that run the embedded
// control plane against a dataplane: serving a config on a loopback port and
// timing full pushes.
package cptest

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/kmesh-go/kmesh/pkg/compile"
	"github.com/kmesh-go/kmesh/pkg/controlplane"
	"github.com/kmesh-go/kmesh/pkg/dataplane"
	"github.com/kmesh-go/kmesh/pkg/xds"
)

// Serve serves s on a loopback port until the test ends; it returns the address.
func Serve(tb testing.TB, s *controlplane.Server) string {
	tb.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { s.Serve(ctx, lis); close(done) }()
	tb.Cleanup(func() { cancel(); <-done })
	return lis.Addr().String()
}

// Node is the client identity tests use.
var Node = xds.NodeIdentity{IP: "127.0.0.1", PodName: "kmeshd", Namespace: "kmesh-system", NodeName: "host1"}

// BigConfig is a mesh of nServices services with nEndpoints workloads each
// (VIPs from 10.96.0.1 up, backends from 10.128.0.1 up).
func BigConfig(nServices, nEndpoints int) *controlplane.Config {
	c := &controlplane.Config{}
	vip := netip.MustParseAddr("10.96.0.1")
	be := netip.MustParseAddr("10.128.0.1")
	for i := 0; i < nServices; i++ {
		name := fmt.Sprintf("svc-%d", i)
		c.Services = append(c.Services, controlplane.ServiceConfig{Name: name, VIPs: []string{vip.String()},
			Ports: []controlplane.PortConfig{{Port: 80, TargetPort: 8080}}})
		vip = vip.Next()
		for j := 0; j < nEndpoints; j++ {
			c.Workloads = append(c.Workloads, controlplane.WorkloadConfig{Name: fmt.Sprintf("%s-%d", name, j), Addresses: []string{be.String()},
				Services: []controlplane.WorkloadServiceConfig{{Service: name}}})
			be = be.Next()
		}
	}
	return c
}

// FullPush measures complete pushes of cfg: each iteration a fresh daemon-side
// client and compiler connect to a server holding cfg, and the clock stops
// when the dataplane holds every object (the initial sync is one Apply). With
// cold, every iteration uses a new server, so the server's first encoding of
// the resources (marshal and version hash, once per config) is included;
// otherwise the server has served the config before (a daemon restart, a
// reconnect, another node), as istiod usually has. It reports ms/push.
func FullPush(b *testing.B, cfg *controlplane.Config, cold bool, newDP func() dataplane.API) {
	var addr string
	newServer := func() {
		srv := controlplane.New(controlplane.Options{NodeName: Node.NodeName, Logger: slog.New(slog.DiscardHandler)})
		if err := srv.SetConfig(cfg); err != nil {
			b.Fatal(err)
		}
		addr = Serve(b, srv)
	}
	newServer()
	if !cold {
		Push(b, cfg, addr, newDP()) // the server encodes the config once
	}
	b.ResetTimer()
	var total time.Duration
	for i := 0; i < b.N; i++ {
		if cold && i > 0 {
			b.StopTimer()
			newServer()
			b.StartTimer()
		}
		total += Push(b, cfg, addr, newDP())
	}
	b.ReportMetric(float64(total.Milliseconds())/float64(b.N), "ms/push")
}

// Push connects a new client and compiler to addr and waits until dp holds
// all of cfg.
func Push(tb testing.TB, cfg *controlplane.Config, addr string, dp dataplane.API) time.Duration {
	tb.Helper()
	want := len(cfg.Services) + len(cfg.Workloads)
	done := make(chan struct{}, 1)
	st := compile.NewWorkloadState(dp, compile.WorkloadOptions{NodeName: Node.NodeName, Logger: slog.New(slog.DiscardHandler),
		OnApplied: func(typ string, n int, _ time.Duration) {
			if typ == xds.AddressType && n >= want {
				select {
				case done <- struct{}{}:
				default:
				}
			}
		}})
	c, err := xds.New(xds.Options{Address: addr, Logger: slog.New(slog.DiscardHandler), Node: Node.ZtunnelNode()})
	if err != nil {
		tb.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	finished := make(chan struct{})
	start := time.Now()
	go func() { c.RunDelta(ctx, st); close(finished) }()
	defer func() { cancel(); <-finished }()
	select {
	case <-done:
	case <-time.After(2 * time.Minute):
		tb.Fatal("full push not applied within 2 minutes")
	}
	return time.Since(start)
}
