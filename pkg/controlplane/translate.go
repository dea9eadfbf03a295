package controlplane

import (
	"fmt"
	"net/netip"
	"sort"
	"time"

	cluster "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpoint "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listener "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	route "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	hcm "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	tcpproxy "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/tcp_proxy/v3"
	matcher "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/wrapperspb"
	"istio.io/istio/pkg/workloadapi"

	"github.com/kmesh-go/kmesh/pkg/compile"
	"github.com/kmesh-go/kmesh/pkg/model"
	"github.com/kmesh-go/kmesh/pkg/xds"
)

// Resources is a config translated into xDS resources, exactly what istiod
// would serve: Workload API addresses by resource name, and Envoy resources.
type Resources struct {
	Addresses map[string]*workloadapi.Address
	Envoy     map[string][]types.Resource // type URL → resources
}

// Translate turns a validated config into xDS resources. nodeName is the node
// enrolled workloads run on (the daemon's), unless a workload names another.
func Translate(c *Config, nodeName string) *Resources {
	ix := indexServices(c)
	nodeName = effectiveNode(c, nodeName)
	r := &Resources{Addresses: map[string]*workloadapi.Address{}, Envoy: map[string][]types.Resource{}}
	for i := range c.Services {
		r.Addresses[ServiceKey(&c.Services[i])] = translateService(&c.Services[i], ix)
	}
	for i := range c.Workloads {
		r.Addresses[WorkloadUID(&c.Workloads[i])] = translateWorkload(&c.Workloads[i], ix, nodeName)
	}
	r.Envoy = translateEnvoy(c, ix)
	return r
}

// effectiveNode is the node enrolled workloads run on.
func effectiveNode(c *Config, nodeName string) string {
	if c.Node != nil && c.Node.Name != "" {
		return c.Node.Name
	}
	return nodeName
}

func translateService(s *ServiceConfig, ix *services) *workloadapi.Address {
	key := ServiceKey(s)
	ws := &workloadapi.Service{Name: s.Name, Namespace: namespace(s.Namespace), Hostname: hostOf(key)}
	for _, v := range s.VIPs {
		ip := netip.MustParseAddr(v).Unmap()
		ws.Addresses = append(ws.Addresses, &workloadapi.NetworkAddress{Address: ip.AsSlice()})
	}
	var serverFirst []uint16
	for _, p := range s.Ports {
		ws.Ports = append(ws.Ports, &workloadapi.Port{ServicePort: uint32(p.Port), TargetPort: uint32(targetPort(p))})
		if p.ServerFirst {
			serverFirst = append(serverFirst, uint16(p.Port))
		}
	}
	if lb := s.LB; lb != nil {
		if lb.Locality != "" {
			ws.LoadBalancing = &workloadapi.LoadBalancing{Mode: map[string]workloadapi.LoadBalancing_Mode{
				"strict": workloadapi.LoadBalancing_STRICT, "failover": workloadapi.LoadBalancing_FAILOVER}[lb.Locality]}
			for _, p := range lb.RoutingPreference {
				ws.LoadBalancing.RoutingPreference = append(ws.LoadBalancing.RoutingPreference, scopeOf[p])
			}
		}
		if lb.Algorithm != "" {
			ws.Extensions = append(ws.Extensions, compile.LBAlgorithmExtension(model.LBAlgorithm(lb.Algorithm)))
		}
	}
	var policy model.ServerFirstPolicy
	if wp := s.Waypoint; wp != nil {
		ws.Waypoint = gatewayAddress(wp, ix, namespace(s.Namespace))
		policy = model.ServerFirstPolicy(wp.ServerFirst)
	}
	if len(serverFirst) > 0 || policy != "" {
		ws.Extensions = append(ws.Extensions, compile.ServerFirstExtension(serverFirst, policy))
	}
	return &workloadapi.Address{Type: &workloadapi.Address_Service{Service: ws}}
}

// DefaultWaypointPort is a waypoint reference's port when none is given
// (Istio's HBONE port, which Workload API waypoints carry).
const DefaultWaypointPort = 15008

// gatewayAddress is the Workload API form of a waypoint reference: the
// waypoint service by hostname.
func gatewayAddress(wp *WaypointConfig, ix *services, ns string) *workloadapi.GatewayAddress {
	wkey, _, _ := ix.resolve(wp.Service, ns)
	port := wp.Port
	if port == 0 {
		port = DefaultWaypointPort
	}
	return &workloadapi.GatewayAddress{
		Destination:   &workloadapi.GatewayAddress_Hostname{Hostname: &workloadapi.NamespacedHostname{Namespace: nsOf(wkey), Hostname: hostOf(wkey)}},
		HboneMtlsPort: uint32(port),
	}
}

func translateWorkload(w *WorkloadConfig, ix *services, nodeName string) *workloadapi.Address {
	uid := WorkloadUID(w)
	ww := &workloadapi.Workload{Uid: uid, Name: w.Name, Namespace: namespace(w.Namespace), Node: w.Node}
	if ww.Node == "" && w.Enrolment != nil {
		ww.Node = nodeName
	}
	for _, a := range w.Addresses {
		ww.Addresses = append(ww.Addresses, netip.MustParseAddr(a).Unmap().AsSlice())
	}
	if l := w.Locality; l != nil {
		ww.Locality = &workloadapi.Locality{Region: l.Region, Zone: l.Zone, Subzone: l.Subzone}
	}
	if w.Weight != nil {
		ww.Capacity = wrapperspb.UInt32(uint32(*w.Weight))
	}
	if w.Healthy != nil && !*w.Healthy {
		ww.Status = workloadapi.WorkloadStatus_UNHEALTHY
	}
	if len(w.Services) > 0 {
		ww.Services = map[string]*workloadapi.PortList{}
	}
	for _, b := range w.Services {
		key, _, _ := ix.resolve(b.Service, namespace(w.Namespace))
		pl := &workloadapi.PortList{}
		for _, p := range b.Ports {
			pl.Ports = append(pl.Ports, &workloadapi.Port{ServicePort: uint32(p.Port), TargetPort: uint32(p.TargetPort)})
		}
		ww.Services[key] = pl
	}
	if e := w.Enrolment; e != nil {
		ww.Extensions = append(ww.Extensions, compile.EnrolmentExtension(model.Enrolment{CgroupPath: e.Cgroup, NetnsPath: e.Netns}))
	}
	if wp := w.Waypoint; wp != nil {
		ww.Waypoint = gatewayAddress(wp, ix, namespace(w.Namespace))
		if wp.ServerFirst != "" {
			ww.Extensions = append(ww.Extensions, compile.ServerFirstExtension(nil, model.ServerFirstPolicy(wp.ServerFirst)))
		}
	}
	return &workloadapi.Address{Type: &workloadapi.Address_Workload{Workload: ww}}
}

var scopeOf = map[string]workloadapi.LoadBalancing_Scope{
	"region": workloadapi.LoadBalancing_REGION, "zone": workloadapi.LoadBalancing_ZONE,
	"subzone": workloadapi.LoadBalancing_SUBZONE, "node": workloadapi.LoadBalancing_NODE,
	"cluster": workloadapi.LoadBalancing_CLUSTER, "network": workloadapi.LoadBalancing_NETWORK,
}

func targetPort(p PortConfig) int {
	if p.TargetPort != 0 {
		return p.TargetPort
	}
	return p.Port
}

func nsOf(key string) string {
	for i := 0; i < len(key); i++ {
		if key[i] == '/' {
			return key[:i]
		}
	}
	return ""
}

func hostOf(key string) string { return key[len(nsOf(key))+1:] }

// ClusterName is the Envoy cluster of a service port, named as istiod does.
func ClusterName(hostname string, port int) string {
	return fmt.Sprintf("outbound|%d||%s", port, hostname)
}

// translateEnvoy builds the kernel-native view: a cluster per service port
// (endpoints from the workloads that back it), a TCP listener per VIP:port,
// and the HTTP listeners with their route configurations.
func translateEnvoy(c *Config, ix *services) map[string][]types.Resource {
	ads := &core.ConfigSource{ConfigSourceSpecifier: &core.ConfigSource_Ads{Ads: &core.AggregatedConfigSource{}}, ResourceApiVersion: core.ApiVersion_V3}
	out := map[string][]types.Resource{}
	// endpoints per cluster
	eps := map[string][]*endpoint.LbEndpoint{}
	epLoc := map[string][]*core.Locality{}
	for i := range c.Workloads {
		w := &c.Workloads[i]
		if w.Healthy != nil && !*w.Healthy {
			continue
		}
		for _, b := range w.Services {
			key, si, _ := ix.resolve(b.Service, namespace(w.Namespace))
			for _, p := range c.Services[si].Ports {
				tp := targetPort(p)
				for _, o := range b.Ports {
					if o.Port == p.Port {
						tp = o.TargetPort
					}
				}
				name := ClusterName(hostOf(key), p.Port)
				for _, a := range w.Addresses {
					lbe := &endpoint.LbEndpoint{HostIdentifier: &endpoint.LbEndpoint_Endpoint{Endpoint: &endpoint.Endpoint{
						Address: sockAddr(netip.MustParseAddr(a).Unmap().String(), tp)}}}
					if w.Weight != nil {
						lbe.LoadBalancingWeight = wrapperspb.UInt32(uint32(*w.Weight))
					}
					eps[name] = append(eps[name], lbe)
					var loc *core.Locality
					if l := w.Locality; l != nil {
						loc = &core.Locality{Region: l.Region, Zone: l.Zone, SubZone: l.Subzone}
					}
					epLoc[name] = append(epLoc[name], loc)
				}
			}
		}
	}
	httpAt := map[string]bool{}
	for _, h := range c.HTTP {
		httpAt[netip.AddrPortFrom(netip.MustParseAddr(h.Address).Unmap(), uint16(h.Port)).String()] = true
	}
	for i := range c.Services {
		s := &c.Services[i]
		host := hostOf(ServiceKey(s))
		lb := cluster.Cluster_RANDOM
		if s.LB != nil && s.LB.Algorithm == "round_robin" {
			lb = cluster.Cluster_ROUND_ROBIN
		}
		for _, p := range s.Ports {
			name := ClusterName(host, p.Port)
			cl := &cluster.Cluster{
				Name:                 name,
				ClusterDiscoveryType: &cluster.Cluster_Type{Type: cluster.Cluster_EDS},
				EdsClusterConfig:     &cluster.Cluster_EdsClusterConfig{EdsConfig: ads},
				LbPolicy:             lb,
				ConnectTimeout:       durationpb.New(time.Second),
			}
			if cc := s.Cluster; cc != nil {
				if d, err := time.ParseDuration(cc.ConnectTimeout); err == nil && d > 0 {
					cl.ConnectTimeout = durationpb.New(d)
				}
				if cc.MaxConnections > 0 {
					cl.CircuitBreakers = &cluster.CircuitBreakers{Thresholds: []*cluster.CircuitBreakers_Thresholds{{
						Priority: core.RoutingPriority_DEFAULT, MaxConnections: wrapperspb.UInt32(uint32(cc.MaxConnections))}}}
				}
			}
			out[xds.ClusterType] = append(out[xds.ClusterType], cl)
			cla := &endpoint.ClusterLoadAssignment{ClusterName: name}
			for j, e := range eps[name] {
				cla.Endpoints = append(cla.Endpoints, &endpoint.LocalityLbEndpoints{Locality: epLoc[name][j], LbEndpoints: []*endpoint.LbEndpoint{e}})
			}
			out[xds.EndpointType] = append(out[xds.EndpointType], cla)
			for _, v := range s.VIPs {
				ip := netip.MustParseAddr(v).Unmap()
				ap := netip.AddrPortFrom(ip, uint16(p.Port)).String()
				if httpAt[ap] {
					continue
				}
				out[xds.ListenerType] = append(out[xds.ListenerType], tcpListener(fmt.Sprintf("%s_%d", ip, p.Port), ip.String(), p.Port, name))
			}
		}
	}
	for _, h := range c.HTTP {
		rc := &route.RouteConfiguration{Name: h.Name}
		for _, vh := range h.VirtualHosts {
			rvh := &route.VirtualHost{Name: vh.Name, Domains: vh.Domains}
			for _, r := range vh.Routes {
				rr := &route.Route{Name: r.Name, Match: &route.RouteMatch{}}
				if r.Match.Prefix != "" {
					rr.Match.PathSpecifier = &route.RouteMatch_Prefix{Prefix: r.Match.Prefix}
				} else {
					rr.Match.PathSpecifier = &route.RouteMatch_Path{Path: r.Match.Path}
				}
				for _, hm := range r.Match.Headers {
					m := &route.HeaderMatcher{Name: hm.Name}
					switch {
					case hm.Exact != "":
						m.HeaderMatchSpecifier = &route.HeaderMatcher_StringMatch{StringMatch: &matcher.StringMatcher{MatchPattern: &matcher.StringMatcher_Exact{Exact: hm.Exact}}}
					case hm.Prefix != "":
						m.HeaderMatchSpecifier = &route.HeaderMatcher_StringMatch{StringMatch: &matcher.StringMatcher{MatchPattern: &matcher.StringMatcher_Prefix{Prefix: hm.Prefix}}}
					default:
						m.HeaderMatchSpecifier = &route.HeaderMatcher_PresentMatch{PresentMatch: true}
					}
					rr.Match.Headers = append(rr.Match.Headers, m)
				}
				backend := func(b BackendConfig) string {
					key, _, _ := ix.resolve(b.Service, "default")
					port := b.Port
					if port == 0 {
						port = h.Port
					}
					return ClusterName(hostOf(key), port)
				}
				ra := &route.RouteAction{}
				if len(r.To) == 1 {
					ra.ClusterSpecifier = &route.RouteAction_Cluster{Cluster: backend(r.To[0])}
				} else {
					wc := &route.WeightedCluster{}
					for _, b := range r.To {
						w := b.Weight
						if w == 0 {
							w = 1
						}
						wc.Clusters = append(wc.Clusters, &route.WeightedCluster_ClusterWeight{Name: backend(b), Weight: wrapperspb.UInt32(uint32(w))})
					}
					ra.ClusterSpecifier = &route.RouteAction_WeightedClusters{WeightedClusters: wc}
				}
				rr.Action = &route.Route_Route{Route: ra}
				rvh.Routes = append(rvh.Routes, rr)
			}
			rc.VirtualHosts = append(rc.VirtualHosts, rvh)
		}
		out[xds.RouteType] = append(out[xds.RouteType], rc)
		mgr := &hcm.HttpConnectionManager{
			StatPrefix:     h.Name,
			RouteSpecifier: &hcm.HttpConnectionManager_Rds{Rds: &hcm.Rds{RouteConfigName: h.Name, ConfigSource: ads}},
		}
		hl := &listener.Listener{
			Name:         rc.Name,
			Address:      sockAddr(netip.MustParseAddr(h.Address).Unmap().String(), h.Port),
			FilterChains: []*listener.FilterChain{{Filters: []*listener.Filter{filter("envoy.filters.network.http_connection_manager", mgr)}}},
		}
		// Non-HTTP first bytes: the explicit tcp backend, or the service
		// whose VIP:port this is (a default filter chain with tcp_proxy).
		if tcp := httpTCPRoute(c, ix, h); tcp != "" {
			tp := &tcpproxy.TcpProxy{StatPrefix: tcp, ClusterSpecifier: &tcpproxy.TcpProxy_Cluster{Cluster: tcp}}
			hl.DefaultFilterChain = &listener.FilterChain{Filters: []*listener.Filter{filter("envoy.filters.network.tcp_proxy", tp)}}
		}
		out[xds.ListenerType] = append(out[xds.ListenerType], hl)
	}
	for t := range out {
		sort.Slice(out[t], func(i, j int) bool { return resName(out[t][i]) < resName(out[t][j]) })
	}
	return out
}

// httpTCPRoute is the cluster for non-HTTP traffic on an http[] listener: its
// tcp backend, else the service owning its VIP:port, else none.
func httpTCPRoute(c *Config, ix *services, h HTTPListenerConfig) string {
	if b := h.TCP; b != nil {
		key, _, _ := ix.resolve(b.Service, "default")
		port := b.Port
		if port == 0 {
			port = h.Port
		}
		return ClusterName(hostOf(key), port)
	}
	ip := netip.MustParseAddr(h.Address).Unmap()
	for i := range c.Services {
		s := &c.Services[i]
		if !hasPort(s, h.Port) {
			continue
		}
		for _, v := range s.VIPs {
			if netip.MustParseAddr(v).Unmap() == ip {
				return ClusterName(hostOf(ServiceKey(s)), h.Port)
			}
		}
	}
	return ""
}

func tcpListener(name, ip string, port int, clusterName string) *listener.Listener {
	tp := &tcpproxy.TcpProxy{StatPrefix: clusterName, ClusterSpecifier: &tcpproxy.TcpProxy_Cluster{Cluster: clusterName}}
	return &listener.Listener{
		Name:         name,
		Address:      sockAddr(ip, port),
		FilterChains: []*listener.FilterChain{{Filters: []*listener.Filter{filter("envoy.filters.network.tcp_proxy", tp)}}},
	}
}

func filter(name string, cfg proto.Message) *listener.Filter {
	a, err := anypb.New(cfg)
	if err != nil {
		panic(err) // only our own well-formed messages reach here
	}
	return &listener.Filter{Name: name, ConfigType: &listener.Filter_TypedConfig{TypedConfig: a}}
}

func sockAddr(ip string, port int) *core.Address {
	return &core.Address{Address: &core.Address_SocketAddress{SocketAddress: &core.SocketAddress{
		Address: ip, PortSpecifier: &core.SocketAddress_PortValue{PortValue: uint32(port)}}}}
}

func resName(r types.Resource) string {
	switch m := r.(type) {
	case *cluster.Cluster:
		return m.GetName()
	case *endpoint.ClusterLoadAssignment:
		return m.GetClusterName()
	case *listener.Listener:
		return m.GetName()
	case *route.RouteConfiguration:
		return m.GetName()
	}
	return ""
}
