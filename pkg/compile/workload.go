package compile

import (
	"fmt"
	"net/netip"
	"strings"

	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"google.golang.org/protobuf/proto"
	"istio.io/istio/pkg/workloadapi"
	"istio.io/istio/pkg/workloadapi/security"

	"github.com/kmesh-go/kmesh/pkg/model"
)

// xdsAddressType is xds.AddressType (pkg/xds imports nothing of ours, but
// keeping the literal here avoids a cycle-prone import for one constant).
const xdsAddressType = "type.googleapis.com/istio.workload.Address"

// Address is one converted istio.workload.Address: exactly one of Service and
// Workload is set. A waypoint given by IP (GatewayAddress.address) cannot be
// named until the service owning that VIP is known, so it is kept here and
// resolved when the object is lowered (WorkloadState.resolve).
type Address struct {
	Service  *model.Service
	Workload *model.Workload

	WaypointIP   netip.Addr // valid if the waypoint was given by address
	WaypointPort uint16
	// WaypointServerFirst is the waypoint's server-first policy (extension
	// ExtServerFirst), applied once the waypoint is resolved.
	WaypointServerFirst model.ServerFirstPolicy
}

// ConvertAddress decodes and converts one delta resource of type
// istio.workload.Address. The resource name must be the object's xDS key
// (namespace/hostname for services, the uid for workloads).
func ConvertAddress(r *discovery.Resource) (Address, error) {
	if r.GetResource() == nil {
		return Address{}, fmt.Errorf("resource has no body")
	}
	if t := r.GetResource().GetTypeUrl(); t != xdsAddressType {
		return Address{}, fmt.Errorf("resource has type %s, want %s", t, xdsAddressType)
	}
	if a, ok := quickAddress(r.GetResource().GetValue(), r.GetName()); ok {
		return a, nil
	}
	return decodeAddress(r.GetResource().GetValue(), r.GetName())
}

// decodeAddress is ConvertAddress's general path (see quickAddress):
// proto.Unmarshal, then the conversion, with the reason for any rejection.
func decodeAddress(b []byte, name string) (Address, error) {
	var a workloadapi.Address
	if err := proto.Unmarshal(b, &a); err != nil {
		return Address{}, fmt.Errorf("decoding: %w", err)
	}
	var out Address
	var err error
	switch t := a.GetType().(type) {
	case *workloadapi.Address_Service:
		out, err = ConvertService(t.Service)
		if err == nil && out.Service.Key != name {
			err = fmt.Errorf("resource name does not match the service key %q (namespace/hostname)", out.Service.Key)
		}
	case *workloadapi.Address_Workload:
		out, err = ConvertWorkload(t.Workload)
		if err == nil && out.Workload.UID != name {
			err = fmt.Errorf("resource name does not match the workload uid %q", out.Workload.UID)
		}
	default:
		err = fmt.Errorf("address is neither a service nor a workload")
	}
	return out, err
}

// ConvertService converts a Workload API Service.
func ConvertService(s *workloadapi.Service) (Address, error) {
	if s.GetHostname() == "" {
		return Address{}, fmt.Errorf("service: hostname is empty")
	}
	svc := &model.Service{
		Key:       s.GetNamespace() + "/" + s.GetHostname(),
		Name:      s.GetName(),
		Namespace: s.GetNamespace(),
		Hostname:  s.GetHostname(),
	}
	for i, na := range s.GetAddresses() {
		ip, err := addrFromBytes(na.GetAddress())
		if err != nil {
			return Address{}, fmt.Errorf("service %s: addresses[%d]: %w", svc.Key, i, err)
		}
		svc.VIPs = append(svc.VIPs, ip)
	}
	for i, p := range s.GetPorts() {
		sp, err := port16(p.GetServicePort())
		if err != nil {
			return Address{}, fmt.Errorf("service %s: ports[%d].service_port: %w", svc.Key, i, err)
		}
		tp, err := port16(p.GetTargetPort())
		if err != nil {
			return Address{}, fmt.Errorf("service %s: ports[%d].target_port: %w", svc.Key, i, err)
		}
		svc.Ports = append(svc.Ports, model.ServicePort{Port: sp, TargetPort: tp, Protocol: model.TCP})
	}
	lb, err := convertLB(s.GetLoadBalancing())
	if err != nil {
		return Address{}, fmt.Errorf("service %s: load_balancing: %w", svc.Key, err)
	}
	svc.LB = lb
	out := Address{Service: svc}
	for _, x := range s.GetExtensions() {
		switch x.GetName() {
		case ExtLBAlgorithm:
			a, err := decodeLBAlgorithm(x)
			if err != nil {
				return Address{}, fmt.Errorf("service %s: %w", svc.Key, err)
			}
			svc.LB.Algorithm = a
		case ExtServerFirst:
			ports, policy, err := decodeServerFirst(x)
			if err != nil {
				return Address{}, fmt.Errorf("service %s: %w", svc.Key, err)
			}
			for _, p := range ports {
				found := false
				for i := range svc.Ports {
					if svc.Ports[i].Port == p {
						svc.Ports[i].ServerFirst, found = true, true
					}
				}
				if !found {
					return Address{}, fmt.Errorf("service %s: extension %s: no port %d", svc.Key, ExtServerFirst, p)
				}
			}
			out.WaypointServerFirst = policy
		}
		// Other extensions are not ours: ignored, as the API requires.
	}
	if err := convertWaypoint(s.GetWaypoint(), &svc.Waypoint, &out); err != nil {
		return Address{}, fmt.Errorf("service %s: waypoint: %w", svc.Key, err)
	}
	return out, nil
}

func convertLB(lb *workloadapi.LoadBalancing) (model.LoadBalancing, error) {
	var out model.LoadBalancing
	if lb == nil {
		return out, nil
	}
	for i, sc := range lb.GetRoutingPreference() {
		s, ok := scopes[sc]
		if !ok {
			return out, fmt.Errorf("routing_preference[%d]: unsupported scope %v", i, sc)
		}
		out.RoutingPreference = append(out.RoutingPreference, s)
	}
	switch lb.GetMode() {
	case workloadapi.LoadBalancing_STRICT:
		out.Locality = model.LocalityStrict
	case workloadapi.LoadBalancing_FAILOVER:
		out.Locality = model.LocalityFailover
	case workloadapi.LoadBalancing_UNSPECIFIED_MODE:
		// ztunnel's default: with preferences, fail over between tiers.
		if len(out.RoutingPreference) > 0 {
			out.Locality = model.LocalityFailover
		}
	default:
		return out, fmt.Errorf("mode %v is not supported", lb.GetMode())
	}
	if lb.GetHealthPolicy() != workloadapi.LoadBalancing_ONLY_HEALTHY {
		return out, fmt.Errorf("health_policy %v is not supported (only ONLY_HEALTHY)", lb.GetHealthPolicy())
	}
	return out, nil
}

var scopes = map[workloadapi.LoadBalancing_Scope]model.LocalityScope{
	workloadapi.LoadBalancing_REGION:  model.ScopeRegion,
	workloadapi.LoadBalancing_ZONE:    model.ScopeZone,
	workloadapi.LoadBalancing_SUBZONE: model.ScopeSubzone,
	workloadapi.LoadBalancing_NODE:    model.ScopeNode,
	workloadapi.LoadBalancing_CLUSTER: model.ScopeCluster,
	workloadapi.LoadBalancing_NETWORK: model.ScopeNetwork,
}

func convertWaypoint(g *workloadapi.GatewayAddress, ref **model.WaypointRef, out *Address) error {
	if g == nil {
		return nil
	}
	p, err := port16(g.GetHboneMtlsPort())
	if err != nil {
		return fmt.Errorf("hbone_mtls_port: %w", err)
	}
	switch d := g.GetDestination().(type) {
	case *workloadapi.GatewayAddress_Hostname:
		if d.Hostname.GetHostname() == "" {
			return fmt.Errorf("hostname is empty")
		}
		*ref = &model.WaypointRef{Service: d.Hostname.GetNamespace() + "/" + d.Hostname.GetHostname(), Port: p,
			ServerFirst: out.WaypointServerFirst}
	case *workloadapi.GatewayAddress_Address:
		ip, err := addrFromBytes(d.Address.GetAddress())
		if err != nil {
			return fmt.Errorf("address: %w", err)
		}
		out.WaypointIP, out.WaypointPort = ip, p
	default:
		return fmt.Errorf("no destination")
	}
	return nil
}

// ConvertWorkload converts a Workload API Workload.
func ConvertWorkload(w *workloadapi.Workload) (Address, error) {
	if w.GetUid() == "" {
		return Address{}, fmt.Errorf("workload: uid is empty")
	}
	wl := &model.Workload{
		UID:       w.GetUid(),
		Name:      w.GetName(),
		Namespace: w.GetNamespace(),
		Healthy:   w.GetStatus() == workloadapi.WorkloadStatus_HEALTHY,
		Locality: model.Locality{
			Region:  w.GetLocality().GetRegion(),
			Zone:    w.GetLocality().GetZone(),
			Subzone: w.GetLocality().GetSubzone(),
			Node:    w.GetNode(),
			Cluster: w.GetClusterId(),
			Network: w.GetNetwork(),
		},
	}
	if c := w.GetCapacity(); c != nil {
		wl.Weight = c.GetValue()
		if wl.Weight == 0 {
			return Address{}, fmt.Errorf("workload %s: capacity 0 would never be picked; remove the workload instead", wl.UID)
		}
	}
	for i, b := range w.GetAddresses() {
		ip, err := addrFromBytes(b)
		if err != nil {
			return Address{}, fmt.Errorf("workload %s: addresses[%d]: %w", wl.UID, i, err)
		}
		wl.Addresses = append(wl.Addresses, ip)
	}
	if len(wl.Addresses) == 0 && w.GetHostname() != "" {
		return Address{}, fmt.Errorf("workload %s: addressed by hostname %q: DNS-resolved workloads are not supported yet", wl.UID, w.GetHostname())
	}
	if len(w.GetServices()) > 0 {
		wl.Services = make(map[string][]model.WorkloadPort, len(w.GetServices()))
	}
	for key, pl := range w.GetServices() {
		var ports []model.WorkloadPort
		for i, p := range pl.GetPorts() {
			sp, err := port16(p.GetServicePort())
			if err != nil {
				return Address{}, fmt.Errorf("workload %s: services[%q].ports[%d].service_port: %w", wl.UID, key, i, err)
			}
			tp, err := port16(p.GetTargetPort())
			if err != nil {
				return Address{}, fmt.Errorf("workload %s: services[%q].ports[%d].target_port: %w", wl.UID, key, i, err)
			}
			ports = append(ports, model.WorkloadPort{ServicePort: sp, TargetPort: tp})
		}
		wl.Services[key] = ports
	}
	out := Address{Workload: wl}
	for _, x := range w.GetExtensions() {
		switch x.GetName() {
		case ExtEnrolment:
			e, err := decodeEnrolment(x)
			if err != nil {
				return Address{}, fmt.Errorf("workload %s: %w", wl.UID, err)
			}
			wl.Enrolment = e
		case ExtServerFirst:
			ports, policy, err := decodeServerFirst(x)
			if err != nil {
				return Address{}, fmt.Errorf("workload %s: %w", wl.UID, err)
			}
			if len(ports) > 0 {
				return Address{}, fmt.Errorf("workload %s: extension %s: ports belong to services", wl.UID, ExtServerFirst)
			}
			out.WaypointServerFirst = policy
		}
	}
	if err := convertWaypoint(w.GetWaypoint(), &wl.Waypoint, &out); err != nil {
		return Address{}, fmt.Errorf("workload %s: waypoint: %w", wl.UID, err)
	}
	return out, nil
}

// ConvertAuthorization decodes one istio.security.Authorization and checks
// what the dataplane will rely on (addresses and ports). Enforcement is a
// later issue; the policies are held and served to it unchanged.
func ConvertAuthorization(r *discovery.Resource) (*security.Authorization, error) {
	if r.GetResource() == nil {
		return nil, fmt.Errorf("resource has no body")
	}
	var p security.Authorization
	if err := r.GetResource().UnmarshalTo(&p); err != nil {
		return nil, fmt.Errorf("decoding: %w", err)
	}
	if p.GetName() == "" {
		return nil, fmt.Errorf("policy has no name")
	}
	for gi, g := range p.GetGroups() {
		for ri, rule := range g.GetRules() {
			for mi, m := range rule.GetMatches() {
				at := fmt.Sprintf("groups[%d].rules[%d].matches[%d]", gi, ri, mi)
				for _, list := range [][]*security.Address{m.GetSourceIps(), m.GetNotSourceIps(), m.GetDestinationIps(), m.GetNotDestinationIps()} {
					for _, a := range list {
						ip, err := addrFromBytes(a.GetAddress())
						if err != nil {
							return nil, fmt.Errorf("%s: %w", at, err)
						}
						if int(a.GetLength()) > ip.BitLen() {
							return nil, fmt.Errorf("%s: prefix length %d exceeds %d bits", at, a.GetLength(), ip.BitLen())
						}
					}
				}
				for _, list := range [][]uint32{m.GetDestinationPorts(), m.GetNotDestinationPorts()} {
					for _, port := range list {
						if port > 65535 {
							return nil, fmt.Errorf("%s: port %d out of range", at, port)
						}
					}
				}
			}
		}
	}
	return &p, nil
}

// addrFromBytes parses a 4- or 16-byte address; v4-mapped IPv6 becomes IPv4.
func addrFromBytes(b []byte) (netip.Addr, error) {
	ip, ok := netip.AddrFromSlice(b)
	if !ok {
		return netip.Addr{}, fmt.Errorf("address has %d bytes, want 4 or 16", len(b))
	}
	return ip.Unmap(), nil
}

func port16(p uint32) (uint16, error) {
	if p > 65535 {
		return 0, fmt.Errorf("%d is not a port", p)
	}
	return uint16(p), nil
}

// IsServiceKey reports whether key looks like a Workload API service key.
func IsServiceKey(key string) bool {
	ns, host, ok := strings.Cut(key, "/")
	return ok && ns != "" && host != "" && !strings.Contains(host, "/")
}
