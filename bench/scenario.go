// Package bench is the side-by-side benchmark harness: it builds "nodes" and
// "pods" as network namespaces on one host, starts one echo server, sets up
// every scenario (no mesh, kmesh's dataplane, sidecar and node proxies), and
// drives the same fortio client through each of them, interleaved, so machine
// drift hits every scenario alike. See docs/bench.md.
package bench

import (
	"context"
	"fmt"
	"net/netip"

	"github.com/kmesh-go/kmesh/bench/load"
	"github.com/kmesh-go/kmesh/bench/netlab"
	"github.com/kmesh-go/kmesh/bench/report"
)

// Scenario is one way for the client's requests to reach the server. To add
// one, implement it, register it in Builtin, and document it in docs/bench.md.
type Scenario interface {
	// Info names and describes the scenario and lists the protocols it carries.
	Info() report.ScenarioInfo
	// Available reports, before anything is set up, why the scenario cannot
	// run on this machine or build (nil if it can). An unavailable scenario
	// is reported as skipped with this reason; it is not a failure.
	Available(env *Env) error
	// Setup starts what the scenario needs (proxies, BPF programs) inside env.
	// Everything it creates must be registered with env.Lab for cleanup. A
	// setup error fails every run of the scenario.
	Setup(ctx context.Context, env *Env) error
	// Target is where the client connects for proto, and in which cgroup
	// the client runs (empty: the harness's own).
	Target(proto load.Proto) Target
}

// Checker is implemented by scenarios that can prove, after the sweep, that
// their mechanism was in effect (for example kernel counters showing that
// connections were load-balanced or that sk_msg redirected data). Check
// returns the evidence as a short text; an error fails every run of the
// scenario, because its numbers would not measure what the name says.
type Checker interface {
	Check(env *Env) (evidence string, err error)
}

// Target is the client side of a scenario.
type Target struct {
	Addr   netip.AddrPort
	Cgroup string
}

// Placement pins the two "nodes" to CPUs. Node A hosts the client pod and
// its proxies, node B the server pod, its proxies and the waypoint. Empty
// lists leave processes unpinned.
type Placement struct {
	NodeA string
	NodeB string
	// Nice is the niceness of every process of the lab (0 = inherit). A
	// negative value makes the benchmark win CPU time from other work on a
	// shared machine; every scenario gets the same value.
	Nice int
}

// Well-known server ports inside the server pod.
const (
	ServerHTTPPort = 8080
	ServerTCPPort  = 8081
)

// Env is what scenarios build on: the lab, the two pods on the bridge, and
// the server that every scenario ultimately reaches.
type Env struct {
	Lab       *netlab.Lab
	Bridge    *netlab.Bridge
	Client    *netlab.Host // the client pod (node A)
	Server    *netlab.Host // the server pod (node B), running the echo servers
	Placement Placement
	// Self is the bench binary, re-executed for the client and server roles.
	Self string
	// ServerProc is the running echo server.
	ServerProc *netlab.Proc
	hosts      map[string]*netlab.Host
}

// ServerAddr is the server pod's address for proto.
func (e *Env) ServerAddr(p load.Proto) netip.AddrPort {
	if p == load.TCP {
		return netip.AddrPortFrom(e.Server.IP, ServerTCPPort)
	}
	return netip.AddrPortFrom(e.Server.IP, ServerHTTPPort)
}

// ServerPort is the server's port for proto.
func ServerPort(p load.Proto) uint16 {
	if p == load.TCP {
		return ServerTCPPort
	}
	return ServerHTTPPort
}

// Host returns the namespace for role on the bridge, creating it on first
// use (node proxies, the waypoint).
func (e *Env) Host(role string) (*netlab.Host, error) {
	if h, ok := e.hosts[role]; ok {
		return h, nil
	}
	h, err := e.Bridge.AddHost(role)
	if err != nil {
		return nil, fmt.Errorf("host %s: %w", role, err)
	}
	if e.hosts == nil {
		e.hosts = map[string]*netlab.Host{}
	}
	e.hosts[role] = h
	return h, nil
}
