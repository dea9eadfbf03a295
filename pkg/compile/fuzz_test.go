package compile

import (
	"context"
	"net/netip"
	"testing"

	cluster "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	endpoint "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listener "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	route "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"istio.io/istio/pkg/workloadapi"

	"github.com/kmesh-go/kmesh/pkg/compile/compiletest"
	"github.com/kmesh-go/kmesh/pkg/model"
	"github.com/kmesh-go/kmesh/pkg/xds"
)

// FuzzWorkloadAPI feeds arbitrary Address bytes through the delta handler:
// no panic, and whatever is accepted forms a valid snapshot.
func FuzzWorkloadAPI(f *testing.F) {
	seed := func(m proto.Message) {
		b, _ := proto.Marshal(m)
		f.Add(b, "ns/a.ns")
	}
	seed(svcAddr("ns", "a.ns", []string{"10.96.0.1", "fd00::1"}, 80, 443))
	w := wlAddr("u1", "10.0.0.1", "ns/a.ns")
	w.GetWorkload().Extensions = []*workloadapi.Extension{EnrolmentExtension(model.Enrolment{CgroupPath: "/x"})}
	seed(w)
	f.Fuzz(func(t *testing.T, data []byte, name string) {
		var a workloadapi.Address
		if proto.Unmarshal(data, &a) != nil {
			return
		}
		body, err := anypb.New(&a)
		if err != nil {
			return
		}
		rec := compiletest.NewRecorder()
		s := NewWorkloadState(rec, WorkloadOptions{NodeName: "n"})
		r := &discovery.Resource{Name: name, Resource: body}
		if _, err := s.HandleDelta(context.Background(), &xds.DeltaUpdate{TypeURL: xds.AddressType, Resync: true, Resources: []*discovery.Resource{r}}); err != nil {
			t.Fatalf("a single resource must be rejected per resource, not fail the response: %v", err)
		}
		if err := ValidateSnapshot(s.Snapshot()); err != nil {
			t.Fatalf("accepted an invalid object: %v", err)
		}
		for _, svc := range s.Snapshot().Services {
			for _, ip := range svc.VIPs {
				if !ip.IsValid() || ip != ip.Unmap() && ip.Is4In6() {
					t.Fatalf("VIP %v not normalized", ip)
				}
			}
		}
	})
}

// FuzzEnvoy feeds arbitrary bytes as each Envoy resource type through the
// converters: no panic, and a config that compiles validates.
func FuzzEnvoy(f *testing.F) {
	lis := &listener.Listener{Name: "l", Address: sock("10.0.0.1", 80), FilterChains: []*listener.FilterChain{{Filters: []*listener.Filter{{Name: "tcp"}}}}}
	for _, m := range []proto.Message{
		&cluster.Cluster{Name: "c", ClusterDiscoveryType: &cluster.Cluster_Type{Type: cluster.Cluster_EDS}},
		&endpoint.ClusterLoadAssignment{ClusterName: "c", Endpoints: []*endpoint.LocalityLbEndpoints{{LbEndpoints: []*endpoint.LbEndpoint{
			{HostIdentifier: &endpoint.LbEndpoint_Endpoint{Endpoint: &endpoint.Endpoint{Address: sock("10.0.0.2", 8080)}}}}}}},
		lis,
		&route.RouteConfiguration{Name: "r", VirtualHosts: []*route.VirtualHost{{Name: "v", Domains: []string{"*"}, Routes: []*route.Route{{
			Match:  &route.RouteMatch{PathSpecifier: &route.RouteMatch_Prefix{Prefix: "/"}},
			Action: &route.Route_Route{Route: &route.RouteAction{ClusterSpecifier: &route.RouteAction_Cluster{Cluster: "c"}}}}}}}},
	} {
		b, _ := proto.Marshal(m)
		for k := 0; k < 4; k++ {
			f.Add(b, uint8(k))
		}
	}
	f.Fuzz(func(t *testing.T, data []byte, kind uint8) {
		cfg := &xds.EnvoyConfig{Clusters: map[string]*cluster.Cluster{}, Endpoints: map[string]*endpoint.ClusterLoadAssignment{},
			Listeners: map[string]*listener.Listener{}, Routes: map[string]*route.RouteConfiguration{}}
		switch kind % 4 {
		case 0:
			var c cluster.Cluster
			if proto.Unmarshal(data, &c) != nil {
				return
			}
			ConvertCluster(&c, nil)
			cfg.Clusters[c.GetName()] = &c
		case 1:
			var c endpoint.ClusterLoadAssignment
			if proto.Unmarshal(data, &c) != nil {
				return
			}
			eps, err := ConvertEndpoints(&c)
			if err == nil {
				for _, e := range eps {
					if !e.Address.Addr().IsValid() || e.Address.Port() == 0 {
						t.Fatalf("accepted endpoint %v", e.Address)
					}
				}
			}
			return
		case 2:
			var l listener.Listener
			if proto.Unmarshal(data, &l) != nil {
				return
			}
			cfg.Listeners[l.GetName()] = &l
		case 3:
			var r route.RouteConfiguration
			if proto.Unmarshal(data, &r) != nil {
				return
			}
			cfg.Routes[r.GetName()] = &r
		}
		snap, _, err := Compile(cfg)
		if err == nil {
			if verr := ValidateSnapshot(snap); verr != nil {
				t.Fatalf("Compile accepted what Validate rejects: %v", verr)
			}
			for _, l := range snap.Listeners {
				if !l.Address.Addr().IsValid() {
					t.Fatalf("listener %q without address", l.Name)
				}
			}
		}
		_ = netip.Addr{}
	})
}
