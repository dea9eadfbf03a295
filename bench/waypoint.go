package bench

import (
	"context"
	"fmt"
	"net/netip"
	"path/filepath"

	"github.com/kmesh-go/kmesh/bench/load"
	"github.com/kmesh-go/kmesh/bench/netlab"
	"github.com/kmesh-go/kmesh/bench/proxy"
	"github.com/kmesh-go/kmesh/bench/report"
	"github.com/kmesh-go/kmesh/pkg/bpf"
	"github.com/kmesh-go/kmesh/pkg/dataplane"
	"github.com/kmesh-go/kmesh/pkg/model"
)

// dualEngineWaypoint is kmesh's waypoint path (dual-engine L7): the client
// dials a service VIP whose service names a waypoint; the cgroup program
// sends the connection to the waypoint's service instead (HAProxy in HTTP
// mode with accept-proxy, in the waypoint namespace on node B, enrolled in a
// cgroup of its own), sk_msg writes a PROXY v2 header before the first
// request, and HAProxy forwards to the original destination from the header,
// which kmesh load-balances to the server (the waypoint is exempt from
// waypoints). Compare with `waypoint` (the same HAProxy hop dialed directly,
// no kmesh) and the sidecar pair. Like the other dataplane scenarios it has
// its own dataplane instance, cgroups and server.
type dualEngineWaypoint struct {
	vip, wpVIP netip.Addr
	base       uint16 // the scenario's server listens on base (http)
	wpPort     uint16 // the waypoint listens on wpPort (accept-proxy)
	clientCg   string
	dp         *dataplane.Dataplane
}

func newDualEngineWaypoint() *dualEngineWaypoint {
	return &dualEngineWaypoint{vip: netip.MustParseAddr("10.96.0.12"), wpVIP: netip.MustParseAddr("10.96.0.13"), base: 9280, wpPort: 15088}
}

const (
	waypointEchoService = "bench/echo-wp"
	waypointService     = "bench/waypoint"
)

func (d *dualEngineWaypoint) Info() report.ScenarioInfo {
	return report.ScenarioInfo{Name: report.DualEngineWaypoint, Title: "dual-engine waypoint (kmesh → HAProxy)", Protos: httpOnly,
		Description: fmt.Sprintf("client → service VIP %s, sent at connect() to its waypoint (HAProxy HTTP mode, accept-proxy, on node B) with a PROXY v2 header written by sk_msg; the waypoint forwards to the original destination, load-balanced by kmesh to the server (kmesh, docs/waypoint.md)", d.vip)}
}

func (d *dualEngineWaypoint) Available(e *Env) error {
	if e.Lab.Cgroup == "" {
		return fmt.Errorf("needs cgroup v2 (the dataplane attaches to a cgroup)")
	}
	return needBinary("haproxy")
}

func (d *dualEngineWaypoint) Setup(ctx context.Context, e *Env) error {
	name := report.DualEngineWaypoint
	attach, err := e.Lab.SubCgroup(name)
	if err != nil {
		return err
	}
	cgs := map[string]string{}
	for _, c := range []string{"client", "server", "waypoint"} {
		if cgs[c], err = e.Lab.SubCgroup(filepath.Join(name, c)); err != nil {
			return err
		}
	}
	d.clientCg = cgs["client"]
	// The same namespace as the plain waypoint scenario's HAProxy (another
	// port): the server sees the waypoint's address either way.
	h, err := e.Host("waypoint")
	if err != nil {
		return err
	}
	dp, _, err := openDataplane(e, name, attach, dataplane.Options{}, nil)
	if err != nil {
		return err
	}
	d.dp = dp

	snap := &model.Snapshot{
		Version: "bench-" + name,
		Services: []model.Service{
			{Key: waypointEchoService, Name: "echo-wp", Namespace: "bench", VIPs: []netip.Addr{d.vip},
				Ports:    []model.ServicePort{{Name: "http", Port: 80, TargetPort: d.base}},
				Waypoint: &model.WaypointRef{Service: waypointService, Port: d.wpPort}},
			{Key: waypointService, Name: "waypoint", Namespace: "bench", VIPs: []netip.Addr{d.wpVIP},
				Ports: []model.ServicePort{{Name: "proxy", Port: d.wpPort}}},
		},
		Workloads: []model.Workload{
			{UID: "bench/server-wp", Name: "server", Namespace: "bench", Addresses: []netip.Addr{e.Server.IP}, Healthy: true,
				Services: map[string][]model.WorkloadPort{waypointEchoService: nil}, Enrolment: &model.Enrolment{NetnsPath: e.Server.NS.Path()}},
			{UID: "bench/client-wp", Name: "client", Namespace: "bench", Addresses: []netip.Addr{e.Client.IP}, Healthy: true,
				Enrolment: &model.Enrolment{NetnsPath: e.Client.NS.Path()}},
			{UID: "bench/waypoint", Name: "waypoint", Namespace: "bench", Addresses: []netip.Addr{h.IP}, Healthy: true,
				Services: map[string][]model.WorkloadPort{waypointService: nil}, Enrolment: &model.Enrolment{CgroupPath: cgs["waypoint"]}},
		},
	}
	if err := dp.Apply(ctx, snap); err != nil {
		return fmt.Errorf("dataplane apply: %w", err)
	}
	// After Apply: sockets are enrolled when they are created.
	srv, err := e.Lab.Start(netlab.Cmd{Name: name + "-server", Netns: e.Server.NS, CPUs: e.Placement.NodeB, Nice: e.Placement.Nice,
		Cgroup: cgs["server"], Args: []string{e.Self, RoleServe, "-http", fmt.Sprintf(":%d", d.base), "-tcp", fmt.Sprintf(":%d", d.base+1)}})
	if err != nil {
		return err
	}
	if err := netlab.WaitListening(ctx, e.Server.NS, netip.AddrPortFrom(e.Server.IP, d.base).String(), srv, proxy.ReadyTimeout); err != nil {
		return err
	}
	r := proxy.Route{Name: "waypoint", Listen: netip.AddrPortFrom(h.IP, d.wpPort), Mode: proxy.L7, AcceptProxy: true, OriginalDst: true}
	_, err = proxy.StartHAProxy(ctx, e.Lab, proxy.Instance{Name: name, Netns: h.NS, CPUs: e.Placement.NodeB, Nice: e.Placement.Nice,
		Cgroup: cgs["waypoint"]}, proxy.HAProxy{Routes: []proxy.Route{r}})
	return err
}

func (d *dualEngineWaypoint) Target(load.Proto) Target {
	return Target{Addr: netip.AddrPortFrom(d.vip, 80), Cgroup: d.clientCg}
}

// Check: client connections went to the waypoint with a header, and the
// waypoint's own connects were load-balanced without a waypoint.
func (d *dualEngineWaypoint) Check(*Env) (string, error) {
	if d.dp == nil {
		return "", fmt.Errorf("dataplane not set up")
	}
	st, err := d.dp.Stats()
	if err != nil {
		return "", fmt.Errorf("reading dataplane counters: %w", err)
	}
	evidence := fmt.Sprintf("kernel counters: %s=%d %s=%d %s=%d %s=%d", bpf.StatWaypointRedirect, st[bpf.StatWaypointRedirect],
		bpf.StatWaypointHeader, st[bpf.StatWaypointHeader], bpf.StatWaypointExempt, st[bpf.StatWaypointExempt],
		bpf.StatWaypointHeaderErr, st[bpf.StatWaypointHeaderErr])
	switch {
	case st[bpf.StatWaypointRedirect] == 0 || st[bpf.StatWaypointHeader] == 0:
		return evidence, fmt.Errorf("no connection was sent to the waypoint with a header")
	case st[bpf.StatWaypointExempt] == 0:
		return evidence, fmt.Errorf("the waypoint's connects to the original destination were not load-balanced by kmesh")
	case st[bpf.StatWaypointHeaderErr] != 0:
		return evidence, fmt.Errorf("waypoint headers failed")
	}
	return evidence, nil
}
