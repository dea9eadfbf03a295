package bench

import (
	"context"
	"fmt"
	"net/netip"
	"os/exec"

	"github.com/kmesh-go/kmesh/bench/load"
	"github.com/kmesh-go/kmesh/bench/proxy"
	"github.com/kmesh-go/kmesh/bench/report"
)

// Builtin returns every scenario in report order. Order matters only for
// presentation; runs are interleaved regardless.
func Builtin() []Scenario {
	s := []Scenario{&direct{}, &direct{control: true}}
	s = append(s, dataplaneScenarios()...)
	s = append(s,
		&sidecar{flavor: "haproxy"},
		&sidecar{flavor: "nginx"},
		&nodeProxy{},
		&waypoint{},
		newDualEngineWaypoint(), // after waypoint: it reuses that namespace (10.78.0.5)
		newKernelNative(),
	)
	return s
}

var (
	both     = []load.Proto{load.HTTP, load.TCP}
	httpOnly = []load.Proto{load.HTTP}
	loopback = netip.MustParseAddr("127.0.0.1")
)

func needBinary(name string) error {
	if _, err := exec.LookPath(name); err != nil {
		return fmt.Errorf("%s not installed (make deps installs it)", name)
	}
	return nil
}

// direct: the client connects straight to the server pod. The floor.
// The control copy measures the same path again as a separate scenario (an
// A/A test): its ratio to direct is the run's noise floor, the resolution
// below which no ratio in the table means anything.
type direct struct {
	env     *Env
	control bool
}

func (d *direct) Info() report.ScenarioInfo {
	if d.control {
		return report.ScenarioInfo{Name: report.DirectControl, Title: "direct again (A/A control)", Protos: withClose,
			Description: "the direct path measured again as its own scenario: its ratio to direct is the noise floor of the run"}
	}
	return report.ScenarioInfo{Name: report.Direct, Title: "direct (no mesh)", Protos: withClose,
		Description: "client pod → server pod over the bridge; no mesh, the physical floor"}
}
func (*direct) Available(*Env) error                    { return nil }
func (d *direct) Setup(_ context.Context, e *Env) error { d.env = e; return nil }
func (d *direct) Target(p load.Proto) Target            { return Target{Addr: d.env.ServerAddr(p)} }

// sidecar: one proxy in each pod's namespace, the way a sidecar mesh routes
// a request: client → its outbound sidecar (loopback) → the server's inbound
// sidecar (pod IP) → server (loopback). HTTP uses L7 mode, TCP echo L4 mode,
// as Envoy uses its HTTP or TCP proxy filter. Real sidecars are reached
// through iptables REDIRECT, which this path leaves out: it is the sidecar's
// best case.
type sidecar struct {
	flavor string // haproxy or nginx
	out    map[load.Proto]netip.AddrPort
}

func (s *sidecar) name() string {
	if s.flavor == "nginx" {
		return report.SidecarNginx
	}
	return report.SidecarHAProxy
}

func (s *sidecar) Info() report.ScenarioInfo {
	if s.flavor == "nginx" {
		return report.ScenarioInfo{Name: s.name(), Title: "sidecar pair (nginx)", Protos: httpOnly,
			Description: "client → nginx beside the client → nginx beside the server → server (HTTP proxying with upstream keep-alive; one worker each)"}
	}
	return report.ScenarioInfo{Name: s.name(), Title: "sidecar pair (HAProxy)", Protos: both,
		Description: "client → HAProxy beside the client → HAProxy beside the server → server (HTTP mode for HTTP, TCP mode for TCP echo; one thread each)"}
}

func (s *sidecar) Available(*Env) error { return needBinary(s.flavor) }

// Ports: outbound 15001 (http) / 15002 (tcp), inbound 15006 / 15007, like
// Istio's outbound and inbound capture ports; the nginx pair uses 151xx so
// both pairs run side by side.
func (s *sidecar) Setup(ctx context.Context, e *Env) error {
	base := uint16(15000)
	if s.flavor == "nginx" {
		base = 15100
	}
	s.out = map[load.Proto]netip.AddrPort{}
	var outR, inR []proxy.Route
	for i, p := range s.Info().Protos {
		mode := proxy.L7
		if p == load.TCP {
			mode = proxy.L4
		}
		outAddr := netip.AddrPortFrom(loopback, base+1+uint16(i))
		inAddr := netip.AddrPortFrom(e.Server.IP, base+6+uint16(i))
		s.out[p] = outAddr
		outR = append(outR, proxy.Route{Name: "out-" + string(p), Listen: outAddr, Upstream: inAddr, Mode: mode})
		inR = append(inR, proxy.Route{Name: "in-" + string(p), Listen: inAddr,
			Upstream: netip.AddrPortFrom(loopback, ServerPort(p)), Mode: mode})
	}
	outIn := proxy.Instance{Name: s.name() + "-client", Netns: e.Client.NS, CPUs: e.Placement.NodeA, Nice: e.Placement.Nice}
	inIn := proxy.Instance{Name: s.name() + "-server", Netns: e.Server.NS, CPUs: e.Placement.NodeB, Nice: e.Placement.Nice}
	var err error
	if s.flavor == "nginx" {
		_, err = proxy.StartNginx(ctx, e.Lab, inIn, proxy.Nginx{Routes: inR})
		if err == nil {
			_, err = proxy.StartNginx(ctx, e.Lab, outIn, proxy.Nginx{Routes: outR})
		}
	} else {
		_, err = proxy.StartHAProxy(ctx, e.Lab, inIn, proxy.HAProxy{Routes: inR})
		if err == nil {
			_, err = proxy.StartHAProxy(ctx, e.Lab, outIn, proxy.HAProxy{Routes: outR})
		}
	}
	return err
}

func (s *sidecar) Target(p load.Proto) Target { return Target{Addr: s.out[p]} }

// nodeProxy: two L4 proxies, one per node, in their own namespaces, the way
// ambient's ztunnels route: client → node A's proxy → node B's proxy →
// server. HTTP traffic is relayed as bytes too (ztunnel does not parse
// HTTP). No mTLS/HBONE: this is ambient's best case.
type nodeProxy struct{ entry map[load.Proto]netip.AddrPort }

func (*nodeProxy) Info() report.ScenarioInfo {
	return report.ScenarioInfo{Name: report.NodeProxy, Title: "node-proxy pair (HAProxy TCP mode)", Protos: both,
		Description: "client → L4 proxy of node A → L4 proxy of node B → server (HAProxy TCP mode, like ambient's ztunnels without mTLS)"}
}

func (*nodeProxy) Available(*Env) error { return needBinary("haproxy") }

func (n *nodeProxy) Setup(ctx context.Context, e *Env) error {
	a, err := e.Host("node-a")
	if err != nil {
		return err
	}
	b, err := e.Host("node-b")
	if err != nil {
		return err
	}
	n.entry = map[load.Proto]netip.AddrPort{}
	var ra, rb []proxy.Route
	for i, p := range both {
		ea := netip.AddrPortFrom(a.IP, 15001+uint16(i))
		eb := netip.AddrPortFrom(b.IP, 15008+uint16(i))
		n.entry[p] = ea
		ra = append(ra, proxy.Route{Name: "a-" + string(p), Listen: ea, Upstream: eb, Mode: proxy.L4})
		rb = append(rb, proxy.Route{Name: "b-" + string(p), Listen: eb, Upstream: e.ServerAddr(p), Mode: proxy.L4})
	}
	if _, err := proxy.StartHAProxy(ctx, e.Lab, proxy.Instance{Name: "node-proxy-b", Netns: b.NS, CPUs: e.Placement.NodeB, Nice: e.Placement.Nice}, proxy.HAProxy{Routes: rb}); err != nil {
		return err
	}
	_, err = proxy.StartHAProxy(ctx, e.Lab, proxy.Instance{Name: "node-proxy-a", Netns: a.NS, CPUs: e.Placement.NodeA, Nice: e.Placement.Nice}, proxy.HAProxy{Routes: ra})
	return err
}

func (n *nodeProxy) Target(p load.Proto) Target { return Target{Addr: n.entry[p]} }

// waypoint: one L7 proxy hop on the server's node, the path of an L7-policy
// request in ambient or in kmesh's dual-engine mode.
type waypoint struct{ entry netip.AddrPort }

func (*waypoint) Info() report.ScenarioInfo {
	return report.ScenarioInfo{Name: report.Waypoint, Title: "one L7 hop (HAProxy HTTP mode)", Protos: httpOnly,
		Description: "client → HAProxy in HTTP mode in its own namespace on node B → server (the waypoint path)"}
}

func (*waypoint) Available(*Env) error { return needBinary("haproxy") }

func (w *waypoint) Setup(ctx context.Context, e *Env) error {
	h, err := e.Host("waypoint")
	if err != nil {
		return err
	}
	w.entry = netip.AddrPortFrom(h.IP, 15080)
	r := proxy.Route{Name: "waypoint", Listen: w.entry, Upstream: e.ServerAddr(load.HTTP), Mode: proxy.L7}
	_, err = proxy.StartHAProxy(ctx, e.Lab, proxy.Instance{Name: "waypoint", Netns: h.NS, CPUs: e.Placement.NodeB, Nice: e.Placement.Nice}, proxy.HAProxy{Routes: []proxy.Route{r}})
	return err
}

func (w *waypoint) Target(load.Proto) Target { return Target{Addr: w.entry} }
