package compile

import (
	"context"
	"errors"
	"net/netip"
	"strings"
	"testing"

	cluster "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpoint "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listener "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	route "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	tcpproxy "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/tcp_proxy/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/wrapperspb"
	"istio.io/istio/pkg/workloadapi"

	"github.com/kmesh-go/kmesh/pkg/compile/compiletest"
	"github.com/kmesh-go/kmesh/pkg/model"
	"github.com/kmesh-go/kmesh/pkg/xds"
)

func res(t testing.TB, name string, m proto.Message) *discovery.Resource {
	a, err := anypb.New(m)
	if err != nil {
		t.Fatal(err)
	}
	return &discovery.Resource{Name: name, Version: "v-" + name, Resource: a}
}

func svcAddr(ns, host string, vips []string, ports ...uint32) *workloadapi.Address {
	s := &workloadapi.Service{Name: strings.Split(host, ".")[0], Namespace: ns, Hostname: host}
	for _, v := range vips {
		s.Addresses = append(s.Addresses, &workloadapi.NetworkAddress{Address: netip.MustParseAddr(v).AsSlice()})
	}
	for _, p := range ports {
		s.Ports = append(s.Ports, &workloadapi.Port{ServicePort: p, TargetPort: p + 8000})
	}
	return &workloadapi.Address{Type: &workloadapi.Address_Service{Service: s}}
}

func wlAddr(uid string, ip string, services ...string) *workloadapi.Address {
	w := &workloadapi.Workload{Uid: uid, Name: uid, Namespace: "ns", Services: map[string]*workloadapi.PortList{}}
	if ip != "" {
		w.Addresses = [][]byte{netip.MustParseAddr(ip).AsSlice()}
	}
	for _, s := range services {
		w.Services[s] = &workloadapi.PortList{}
	}
	return &workloadapi.Address{Type: &workloadapi.Address_Workload{Workload: w}}
}

// ---- convert ---------------------------------------------------------------

func TestConvertService(t *testing.T) {
	a := svcAddr("ns", "echo.ns.svc.cluster.local", []string{"10.96.0.1", "::ffff:10.96.0.2", "fd00::1"}, 80)
	s := a.GetService()
	s.LoadBalancing = &workloadapi.LoadBalancing{RoutingPreference: []workloadapi.LoadBalancing_Scope{workloadapi.LoadBalancing_REGION, workloadapi.LoadBalancing_ZONE}}
	s.Extensions = []*workloadapi.Extension{LBAlgorithmExtension(model.LBRoundRobin), {Name: "someone.else/ext"}}
	s.Waypoint = &workloadapi.GatewayAddress{Destination: &workloadapi.GatewayAddress_Hostname{Hostname: &workloadapi.NamespacedHostname{Namespace: "ns", Hostname: "wp.ns.svc.cluster.local"}}, HboneMtlsPort: 15008}
	out, err := ConvertAddress(res(t, "ns/echo.ns.svc.cluster.local", a))
	if err != nil {
		t.Fatal(err)
	}
	got := out.Service
	if got.Key != "ns/echo.ns.svc.cluster.local" || len(got.VIPs) != 3 || !got.VIPs[1].Is4() {
		t.Fatalf("key/VIPs: %+v (v4-mapped must become v4)", got)
	}
	if got.Ports[0] != (model.ServicePort{Port: 80, TargetPort: 8080, Protocol: model.TCP}) {
		t.Fatalf("ports %+v", got.Ports)
	}
	if got.LB.Locality != model.LocalityFailover || got.LB.Algorithm != model.LBRoundRobin || len(got.LB.RoutingPreference) != 2 {
		t.Fatalf("lb %+v: unspecified mode with preferences is failover (ztunnel)", got.LB)
	}
	if got.Waypoint == nil || got.Waypoint.Service != "ns/wp.ns.svc.cluster.local" || got.Waypoint.Port != 15008 {
		t.Fatalf("waypoint %+v", got.Waypoint)
	}
}

func TestConvertWorkload(t *testing.T) {
	a := wlAddr("c1//Pod/ns/p1", "10.0.0.5", "ns/echo.ns.svc.cluster.local")
	w := a.GetWorkload()
	w.Services["ns/echo.ns.svc.cluster.local"] = &workloadapi.PortList{Ports: []*workloadapi.Port{{ServicePort: 80, TargetPort: 9090}}}
	w.Locality = &workloadapi.Locality{Region: "r", Zone: "z", Subzone: "s"}
	w.Node, w.ClusterId, w.Network = "n1", "c1", "net1"
	w.Capacity = wrapperspb.UInt32(7)
	w.Status = workloadapi.WorkloadStatus_UNHEALTHY
	w.Extensions = []*workloadapi.Extension{EnrolmentExtension(model.Enrolment{NetnsPath: "/run/netns/x"})}
	out, err := ConvertAddress(res(t, "c1//Pod/ns/p1", a))
	if err != nil {
		t.Fatal(err)
	}
	got := out.Workload
	want := model.Locality{Region: "r", Zone: "z", Subzone: "s", Node: "n1", Cluster: "c1", Network: "net1"}
	if got.Locality != want || got.Weight != 7 || got.Healthy || got.Enrolment.NetnsPath != "/run/netns/x" {
		t.Fatalf("workload %+v", got)
	}
	if p := got.Services["ns/echo.ns.svc.cluster.local"]; len(p) != 1 || p[0] != (model.WorkloadPort{ServicePort: 80, TargetPort: 9090}) {
		t.Fatalf("ports %+v", p)
	}
}

func TestConvertRejects(t *testing.T) {
	cases := map[string]struct {
		name string
		a    *workloadapi.Address
		want string
	}{
		"5-byte address": {"ns/a.ns", &workloadapi.Address{Type: &workloadapi.Address_Service{Service: &workloadapi.Service{Namespace: "ns", Hostname: "a.ns",
			Addresses: []*workloadapi.NetworkAddress{{Address: []byte{1, 2, 3, 4, 5}}}}}}, "addresses[0]: address has 5 bytes"},
		"name mismatch": {"ns/other", svcAddr("ns", "a.ns", nil, 80), "does not match the service key"},
		"port too big":  {"ns/a.ns", svcAddr("ns", "a.ns", nil, 70000), "ports[0].service_port: 70000 is not a port"},
		"hostname workload": {"u1", &workloadapi.Address{Type: &workloadapi.Address_Workload{Workload: &workloadapi.Workload{Uid: "u1", Hostname: "db.example.com"}}},
			"DNS-resolved workloads are not supported"},
		"passthrough": {"ns/a.ns", func() *workloadapi.Address {
			a := svcAddr("ns", "a.ns", nil, 80)
			a.GetService().LoadBalancing = &workloadapi.LoadBalancing{Mode: workloadapi.LoadBalancing_PASSTHROUGH}
			return a
		}(), "mode PASSTHROUGH is not supported"},
		"empty": {"x", &workloadapi.Address{}, "neither a service nor a workload"},
	}
	for n, c := range cases {
		t.Run(n, func(t *testing.T) {
			_, err := ConvertAddress(res(t, c.name, c.a))
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("got %v, want %q", err, c.want)
			}
		})
	}
}

// ---- validate --------------------------------------------------------------

func TestValidate(t *testing.T) {
	ok := model.Service{Key: "ns/a", VIPs: []netip.Addr{netip.MustParseAddr("10.0.0.1")}, Ports: []model.ServicePort{{Port: 80}}}
	if err := ValidateService(&ok); err != nil {
		t.Fatal(err)
	}
	bad := []struct {
		mut  func(s *model.Service)
		want string
	}{
		{func(s *model.Service) { s.Key = "nokey" }, "not namespace/hostname"},
		{func(s *model.Service) { s.VIPs = append(s.VIPs, s.VIPs[0]) }, "vips[1]: 10.0.0.1 listed twice"},
		{func(s *model.Service) { s.VIPs = []netip.Addr{netip.IPv4Unspecified()} }, "vips[0]: 0.0.0.0 is unspecified"},
		{func(s *model.Service) { s.Ports = []model.ServicePort{{Port: 0}} }, "ports[0].port"},
		{func(s *model.Service) { s.LB.Locality = model.LocalityStrict }, "needs a routingPreference"},
		{func(s *model.Service) { s.LB.Algorithm = "fastest" }, `algorithm: "fastest"`},
		{func(s *model.Service) { s.Waypoint = &model.WaypointRef{Service: "ns/a"} }, "its own waypoint"},
	}
	for _, b := range bad {
		s := ok
		s.VIPs = append([]netip.Addr(nil), ok.VIPs...)
		b.mut(&s)
		if err := ValidateService(&s); err == nil || !strings.Contains(err.Error(), b.want) {
			t.Errorf("got %v, want %q", err, b.want)
		}
	}
	w := model.Workload{UID: "u", Enrolment: &model.Enrolment{CgroupPath: "/a/../b"}}
	if err := ValidateWorkload(&w); err == nil || !strings.Contains(err.Error(), "..") {
		t.Errorf("cgroup path with ..: %v", err)
	}
	w = model.Workload{UID: "u", Services: map[string][]model.WorkloadPort{"ns/a": nil}}
	if err := ValidateWorkload(&w); err == nil || !strings.Contains(err.Error(), "no address") {
		t.Errorf("backend without address: %v", err)
	}
	snap := &model.Snapshot{Services: []model.Service{ok, {Key: "ns/b", VIPs: ok.VIPs, Ports: ok.Ports}}}
	if err := ValidateSnapshot(snap); err == nil || !strings.Contains(err.Error(), `VIP 10.0.0.1 is already used by service "ns/a"`) {
		t.Errorf("VIP conflict: %v", err)
	}
}

// ---- lower -----------------------------------------------------------------

func TestLowerOrderAndFailures(t *testing.T) {
	rec := compiletest.NewRecorder()
	rec.FailUpsert["ns/b"] = true
	fails := Lower(context.Background(), rec, Change{
		Services:  []model.Service{{Key: "ns/b"}, {Key: "ns/a"}},
		Workloads: []model.Workload{{UID: "w1"}},
	})
	if len(fails) != 1 || fails["ns/b"] == nil {
		t.Fatalf("failures %v", fails)
	}
	if _, ok := rec.Services["ns/a"]; !ok || len(rec.Workloads) != 1 {
		t.Fatal("the other objects must be applied")
	}
}

// ---- WorkloadState: the passes together -----------------------------------

func delta(t *testing.T, s *WorkloadState, resync bool, removed []string, rs ...*discovery.Resource) map[string]error {
	t.Helper()
	rej, err := s.HandleDelta(context.Background(), &xds.DeltaUpdate{TypeURL: xds.AddressType, Resources: rs, Removed: removed, Resync: resync})
	if err != nil {
		t.Fatal(err)
	}
	return rej
}

func TestWorkloadStateVIPConflictKeepsOld(t *testing.T) {
	rec := compiletest.NewRecorder()
	s := NewWorkloadState(rec, WorkloadOptions{})
	delta(t, s, true, nil,
		res(t, "ns/a.ns", svcAddr("ns", "a.ns", []string{"10.96.0.1"}, 80)),
		res(t, "ns/b.ns", svcAddr("ns", "b.ns", []string{"10.96.0.2"}, 80)))
	// b moves onto a's VIP: rejected, b keeps 10.96.0.2.
	rej := delta(t, s, false, nil, res(t, "ns/b.ns", svcAddr("ns", "b.ns", []string{"10.96.0.1"}, 80)))
	if rej["ns/b.ns"] == nil || !strings.Contains(rej["ns/b.ns"].Error(), `already used by service "ns/a.ns"`) {
		t.Fatalf("rejections %v", rej)
	}
	if got := rec.Services["ns/b.ns"].VIPs[0].String(); got != "10.96.0.2" {
		t.Fatalf("b's VIP %s", got)
	}
	// a and b swap VIPs in one response: accepted.
	rej = delta(t, s, false, nil,
		res(t, "ns/a.ns", svcAddr("ns", "a.ns", []string{"10.96.0.2"}, 80)),
		res(t, "ns/b.ns", svcAddr("ns", "b.ns", []string{"10.96.0.1"}, 80)))
	if len(rej) != 0 || rec.Services["ns/a.ns"].VIPs[0].String() != "10.96.0.2" {
		t.Fatalf("swap: %v %+v", rej, rec.Services)
	}
}

func TestWorkloadStateWaypointByAddress(t *testing.T) {
	rec := compiletest.NewRecorder()
	s := NewWorkloadState(rec, WorkloadOptions{})
	w := wlAddr("u1", "10.0.0.5", "ns/a.ns")
	w.GetWorkload().Waypoint = &workloadapi.GatewayAddress{Destination: &workloadapi.GatewayAddress_Address{
		Address: &workloadapi.NetworkAddress{Address: netip.MustParseAddr("10.96.0.9").AsSlice()}}, HboneMtlsPort: 15008}
	delta(t, s, true, nil, res(t, "u1", w))
	if rec.Workloads["u1"].Waypoint != nil {
		t.Fatal("an unknown waypoint VIP cannot be resolved yet")
	}
	// The waypoint service arrives later: the workload is re-lowered with it.
	delta(t, s, false, nil, res(t, "ns/wp.ns", svcAddr("ns", "wp.ns", []string{"10.96.0.9"}, 15008)))
	if wp := rec.Workloads["u1"].Waypoint; wp == nil || wp.Service != "ns/wp.ns" || wp.Port != 15008 {
		t.Fatalf("waypoint %+v", wp)
	}
	// And removed when the service goes.
	delta(t, s, false, []string{"ns/wp.ns"})
	if rec.Workloads["u1"].Waypoint != nil {
		t.Fatal("waypoint kept after its service was removed")
	}
}

// A full Apply that the dataplane refuses because of one object rejects that
// object and applies the rest; an error naming no object rejects the response.
func TestWorkloadStateApplyFailure(t *testing.T) {
	rec := compiletest.NewRecorder()
	rec.FailUpsert["ns/a.ns"] = true
	s := NewWorkloadState(rec, WorkloadOptions{})
	rej, err := s.HandleDelta(context.Background(), &xds.DeltaUpdate{TypeURL: xds.AddressType, Resync: true,
		Resources: []*discovery.Resource{
			res(t, "ns/a.ns", svcAddr("ns", "a.ns", []string{"10.96.0.1"}, 80)),
			res(t, "ns/b.ns", svcAddr("ns", "b.ns", []string{"10.96.0.2"}, 80)),
		}})
	if err != nil || rej["ns/a.ns"] == nil || !strings.Contains(rej["ns/a.ns"].Error(), "km_service is full") {
		t.Fatalf("rejected %v, err %v", rej, err)
	}
	if _, ok := rec.Services["ns/b.ns"]; !ok || len(rec.Services) != 1 {
		t.Fatalf("dataplane %v: want only ns/b.ns", rec.Services)
	}
	if snap := s.Snapshot(); len(snap.Services) != 1 || snap.Services[0].Key != "ns/b.ns" {
		t.Fatalf("model %+v must match the dataplane", snap.Services)
	}

	rec2 := compiletest.NewRecorder()
	rec2.FailApply = errors.New("map update failed")
	s2 := NewWorkloadState(rec2, WorkloadOptions{})
	_, err = s2.HandleDelta(context.Background(), &xds.DeltaUpdate{TypeURL: xds.AddressType, Resync: true,
		Resources: []*discovery.Resource{res(t, "ns/a.ns", svcAddr("ns", "a.ns", []string{"10.96.0.1"}, 80))}})
	if err == nil || len(s2.Snapshot().Services) != 0 {
		t.Fatalf("err %v, model %+v: an unattributed failure must reject the response and change nothing", err, s2.Snapshot().Services)
	}
}

// ---- Envoy ------------------------------------------------------------------

func sock(ip string, port uint32) *core.Address {
	return &core.Address{Address: &core.Address_SocketAddress{SocketAddress: &core.SocketAddress{Address: ip, PortSpecifier: &core.SocketAddress_PortValue{PortValue: port}}}}
}

func TestConvertClusterAndEndpoints(t *testing.T) {
	c := &cluster.Cluster{Name: "c", ClusterDiscoveryType: &cluster.Cluster_Type{Type: cluster.Cluster_EDS}, LbPolicy: cluster.Cluster_ROUND_ROBIN,
		CircuitBreakers: &cluster.CircuitBreakers{Thresholds: []*cluster.CircuitBreakers_Thresholds{{MaxConnections: wrapperspb.UInt32(100)}}}}
	cla := &endpoint.ClusterLoadAssignment{ClusterName: "c", Endpoints: []*endpoint.LocalityLbEndpoints{{
		Locality: &core.Locality{Region: "r"}, Priority: 1,
		LbEndpoints: []*endpoint.LbEndpoint{
			{HostIdentifier: &endpoint.LbEndpoint_Endpoint{Endpoint: &endpoint.Endpoint{Address: sock("10.0.0.1", 80)}}},
			{HostIdentifier: &endpoint.LbEndpoint_Endpoint{Endpoint: &endpoint.Endpoint{Address: sock("10.0.0.2", 80)}}, HealthStatus: core.HealthStatus_UNHEALTHY},
		}}}}
	mc, skip, err := ConvertCluster(c, cla)
	if err != nil || skip != nil {
		t.Fatal(err, skip)
	}
	if mc.LB.Algorithm != model.LBRoundRobin || mc.MaxConnections != 100 || len(mc.Endpoints) != 1 || mc.Endpoints[0].Priority != 1 || mc.Endpoints[0].Locality.Region != "r" {
		t.Fatalf("cluster %+v (unhealthy endpoints are left out)", mc)
	}
	orig := &cluster.Cluster{Name: "PassthroughCluster", ClusterDiscoveryType: &cluster.Cluster_Type{Type: cluster.Cluster_ORIGINAL_DST}}
	if _, skip, err := ConvertCluster(orig, nil); err != nil || skip == nil {
		t.Fatalf("ORIGINAL_DST must be skipped with a note: %v %v", skip, err)
	}
	c.LbPolicy = cluster.Cluster_MAGLEV
	if _, _, err := ConvertCluster(c, cla); err == nil || !strings.Contains(err.Error(), "MAGLEV") {
		t.Fatalf("maglev: %v", err)
	}
}

func tcpFilter(t *testing.T, clusterName string) *listener.Filter {
	a, err := anypb.New(&tcpproxy.TcpProxy{StatPrefix: "s", ClusterSpecifier: &tcpproxy.TcpProxy_Cluster{Cluster: clusterName}})
	if err != nil {
		t.Fatal(err)
	}
	return &listener.Filter{Name: "tcp", ConfigType: &listener.Filter_TypedConfig{TypedConfig: a}}
}

func TestConvertListenerPrefixRanges(t *testing.T) {
	l := &listener.Listener{Name: "0.0.0.0_3306", Address: sock("0.0.0.0", 3306), FilterChains: []*listener.FilterChain{
		{FilterChainMatch: &listener.FilterChainMatch{PrefixRanges: []*core.CidrRange{{AddressPrefix: "10.96.0.5", PrefixLen: wrapperspb.UInt32(32)}}},
			Filters: []*listener.Filter{tcpFilter(t, "db")}},
		{FilterChainMatch: &listener.FilterChainMatch{TransportProtocol: "tls"}, Filters: []*listener.Filter{tcpFilter(t, "x")}},
	}}
	ls, _, skipped, err := ConvertListener(l)
	if err != nil {
		t.Fatal(err)
	}
	if len(ls) != 1 || ls[0].Address.String() != "10.96.0.5:3306" || ls[0].TCPRoute.Cluster != "db" {
		t.Fatalf("listeners %+v", ls)
	}
	if len(skipped) != 1 || !strings.Contains(skipped[0].Reason, "TLS") {
		t.Fatalf("skipped %+v", skipped)
	}
	l.FilterChains[0].FilterChainMatch.PrefixRanges[0].PrefixLen = wrapperspb.UInt32(24)
	if _, _, _, err := ConvertListener(l); err == nil || !strings.Contains(err.Error(), "only single addresses") {
		t.Fatalf("CIDR: %v", err)
	}
}

func TestConvertRouteConfigRejectsUnsupported(t *testing.T) {
	rc := &route.RouteConfiguration{Name: "r", VirtualHosts: []*route.VirtualHost{{Name: "v", Domains: []string{"*"}, Routes: []*route.Route{{
		Match:  &route.RouteMatch{PathSpecifier: &route.RouteMatch_Prefix{Prefix: "/"}},
		Action: &route.Route_Route{Route: &route.RouteAction{ClusterSpecifier: &route.RouteAction_Cluster{Cluster: "c"}, PrefixRewrite: "/x"}},
	}}}}}
	if _, err := ConvertRouteConfig(rc); err == nil || !strings.Contains(err.Error(), "rewrites") {
		t.Fatalf("rewrite: %v", err)
	}
	rc.VirtualHosts[0].Routes[0].Action = &route.Route_Redirect{Redirect: &route.RedirectAction{}}
	if _, err := ConvertRouteConfig(rc); err == nil || !strings.Contains(err.Error(), "only route actions") {
		t.Fatalf("redirect: %v", err)
	}
}

func TestValidateL7(t *testing.T) {
	s := &model.Snapshot{
		Listeners: []model.Listener{
			{Name: "a", Address: netip.MustParseAddrPort("10.0.0.1:80"), RouteConfig: "missing"},
			{Name: "b", Address: netip.MustParseAddrPort("10.0.0.1:80"), TCPRoute: &model.RouteAction{WeightedClusters: []model.WeightedCluster{{Name: "c", Weight: 0}}}},
		},
		RouteConfigs: []model.RouteConfig{{Name: "r", VirtualHosts: []model.VirtualHost{
			{Name: "v1", Domains: []string{"a.com", "*.x.*"}, Routes: []model.Route{{Match: model.RouteMatch{PathPrefix: "/", PathExact: "/x"}, Action: model.RouteAction{Cluster: "c"}}}},
			{Name: "v2", Domains: []string{"A.com"}},
		}}},
	}
	err := ValidateSnapshot(s)
	for _, want := range []string{`route config "missing" does not exist`, "already used by listener", "weights add up to 0",
		"set exactly one of prefix and path", `domain "A.com" is also in virtual host "v1"`, `domain "*.x.*"`} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("missing %q in %v", want, err)
		}
	}
}
