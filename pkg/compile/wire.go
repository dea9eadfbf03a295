package compile

import (
	"unicode/utf8"

	"google.golang.org/protobuf/encoding/protowire"

	"github.com/kmesh-go/kmesh/pkg/model"
)

// Decoding istio.workload.Address straight from the wire.
//
// A full push is 100 000 Address resources, and decoding them with
// proto.Unmarshal (reflection for the services map, a message per field, then
// a second copy into the model) was the largest share of the compiler's time.
// quickAddress converts the plain forms istiod sends for most objects in one
// pass over the bytes. It is deliberately partial: it declines (ok == false)
// anything it does not handle exactly as proto.Unmarshal + ConvertAddress
// would (an unknown or repeated message field, a wire type proto would treat
// as unknown, invalid UTF-8, waypoints, extensions, load balancing, hostname
// workloads, any value ConvertAddress rejects), and the caller then takes that
// general path, which decides, with its reasons. So the result is the same
// either way; TestQuickAddressMatchesProto and FuzzQuickAddress check it.

// Field numbers of workload.proto.
const (
	addrWorkload = 1
	addrService  = 2

	svcName, svcNamespace, svcHostname, svcAddresses, svcPorts, svcSANs = 1, 2, 3, 4, 5, 6
	svcIPFamilies, svcCanonical, svcIngressUseWaypoint, svcVisibility   = 9, 11, 12, 14

	wlName, wlNamespace, wlAddresses, wlNetwork, wlTunnelProtocol  = 1, 2, 3, 4, 5
	wlTrustDomain, wlServiceAccount, wlNode, wlCanonicalName       = 6, 7, 9, 10
	wlCanonicalRevision, wlWorkloadType, wlWorkloadName            = 11, 12, 13
	wlNativeTunnel, wlAuthorizationPolicies, wlStatus, wlClusterID = 14, 16, 17, 18
	wlUID, wlServices, wlLocality, wlNetworkMode, wlCapacity       = 20, 22, 24, 25, 27
)

// quickAddress converts one Address body named name; see above.
func quickAddress(b []byte, name string) (Address, bool) {
	var (
		kind protowire.Number
		body []byte
	)
	ok := fields(b, func(num protowire.Number, typ protowire.Type, _ uint64, bs []byte) bool {
		// A second occurrence would merge into the first or switch the oneof:
		// left to proto.
		if typ != protowire.BytesType || (num != addrWorkload && num != addrService) || kind != 0 {
			return false
		}
		kind, body = num, bs
		return true
	})
	switch {
	case ok && kind == addrWorkload:
		return quickWorkload(body, name)
	case ok && kind == addrService:
		return quickService(body, name)
	}
	return Address{}, false
}

// fields walks the fields of one message, calling f with each field's number,
// wire type and value: the varint for VarintType, the bytes for BytesType.
// Other wire types, malformed input or f returning false stop it with false.
func fields(b []byte, f func(num protowire.Number, typ protowire.Type, v uint64, bs []byte) bool) bool {
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return false
		}
		b = b[n:]
		var (
			v  uint64
			bs []byte
		)
		switch typ {
		case protowire.VarintType:
			v, n = protowire.ConsumeVarint(b)
		case protowire.BytesType:
			bs, n = protowire.ConsumeBytes(b)
		default:
			return false
		}
		if n < 0 || !f(num, typ, v, bs) {
			return false
		}
		b = b[n:]
	}
	return true
}

// text is a proto3 string field's value, if it is one proto accepts.
func text(typ protowire.Type, bs []byte) (string, bool) {
	if typ != protowire.BytesType || !utf8.Valid(bs) {
		return "", false
	}
	return string(bs), true
}

func quickService(b []byte, name string) (Address, bool) {
	svc := &model.Service{}
	ok := fields(b, func(num protowire.Number, typ protowire.Type, _ uint64, bs []byte) bool {
		var ok bool
		switch num {
		case svcName:
			svc.Name, ok = text(typ, bs)
		case svcNamespace:
			svc.Namespace, ok = text(typ, bs)
		case svcHostname:
			svc.Hostname, ok = text(typ, bs)
		case svcSANs:
			_, ok = text(typ, bs)
		case svcAddresses:
			var ip [16]byte
			var n int
			if ok = typ == protowire.BytesType && quickNetworkAddress(bs, &ip, &n); ok {
				addr, err := addrFromBytes(ip[:n])
				ok = err == nil
				svc.VIPs = append(svc.VIPs, addr)
			}
		case svcPorts:
			var sp, tp uint32
			if ok = typ == protowire.BytesType && quickPort(bs, &sp, &tp); ok {
				ok = sp <= 65535 && tp <= 65535
				svc.Ports = append(svc.Ports, model.ServicePort{Port: uint16(sp), TargetPort: uint16(tp), Protocol: model.TCP})
			}
		case svcIPFamilies, svcCanonical, svcIngressUseWaypoint, svcVisibility:
			ok = typ == protowire.VarintType
		}
		return ok
	})
	if !ok || svc.Hostname == "" {
		return Address{}, false
	}
	svc.Key = svc.Namespace + "/" + svc.Hostname
	if svc.Key != name {
		return Address{}, false
	}
	return Address{Service: svc}, true
}

// quickNetworkAddress reads a NetworkAddress's address bytes into ip (n of
// them); an address of another length than 4 or 16 is declined by the caller.
func quickNetworkAddress(b []byte, ip *[16]byte, n *int) bool {
	*n = 0
	return fields(b, func(num protowire.Number, typ protowire.Type, _ uint64, bs []byte) bool {
		switch num {
		case 1: // network
			_, ok := text(typ, bs)
			return ok
		case 2: // address
			if typ != protowire.BytesType || len(bs) > len(ip) {
				return false
			}
			*n = copy(ip[:], bs)
			return true
		}
		return false
	})
}

// quickPort reads a Port's service and target port (app_protocol is ignored,
// as ConvertService and ConvertWorkload do).
func quickPort(b []byte, sp, tp *uint32) bool {
	*sp, *tp = 0, 0
	return fields(b, func(num protowire.Number, typ protowire.Type, v uint64, _ []byte) bool {
		if typ != protowire.VarintType {
			return false
		}
		switch num {
		case 1:
			*sp = uint32(v)
		case 2:
			*tp = uint32(v)
		case 3:
		default:
			return false
		}
		return true
	})
}

func quickWorkload(b []byte, name string) (Address, bool) {
	wl := &model.Workload{Healthy: true}
	var seenLocality, seenCapacity bool
	ok := fields(b, func(num protowire.Number, typ protowire.Type, v uint64, bs []byte) bool {
		var ok bool
		switch num {
		case wlUID:
			wl.UID, ok = text(typ, bs)
		case wlName:
			wl.Name, ok = text(typ, bs)
		case wlNamespace:
			wl.Namespace, ok = text(typ, bs)
		case wlNetwork:
			wl.Locality.Network, ok = text(typ, bs)
		case wlNode:
			wl.Locality.Node, ok = text(typ, bs)
		case wlClusterID:
			wl.Locality.Cluster, ok = text(typ, bs)
		case wlTrustDomain, wlServiceAccount, wlCanonicalName, wlCanonicalRevision, wlWorkloadName, wlAuthorizationPolicies:
			_, ok = text(typ, bs)
		case wlAddresses:
			if ok = typ == protowire.BytesType; ok {
				addr, err := addrFromBytes(bs)
				ok = err == nil
				wl.Addresses = append(wl.Addresses, addr)
			}
		case wlStatus:
			// An open enum: any value but HEALTHY (0) is not healthy.
			ok = typ == protowire.VarintType
			wl.Healthy = int32(v) == 0
		case wlTunnelProtocol, wlWorkloadType, wlNativeTunnel, wlNetworkMode:
			ok = typ == protowire.VarintType
		case wlServices:
			ok = typ == protowire.BytesType && quickServiceEntry(bs, wl)
		case wlLocality:
			// A second occurrence would be merged into the first: left to proto.
			ok = typ == protowire.BytesType && !seenLocality && quickLocality(bs, &wl.Locality)
			seenLocality = true
		case wlCapacity:
			ok = typ == protowire.BytesType && !seenCapacity && quickUInt32Value(bs, &wl.Weight)
			seenCapacity = true
		}
		return ok
	})
	if !ok || wl.UID == "" || wl.UID != name || (seenCapacity && wl.Weight == 0) {
		return Address{}, false
	}
	return Address{Workload: wl}, true
}

// quickServiceEntry adds one entry of Workload.services (map<string, PortList>).
func quickServiceEntry(b []byte, wl *model.Workload) bool {
	var (
		key       string
		ports     []model.WorkloadPort
		seenValue bool
	)
	ok := fields(b, func(num protowire.Number, typ protowire.Type, _ uint64, bs []byte) bool {
		var ok bool
		switch num {
		case 1:
			key, ok = text(typ, bs)
		case 2: // PortList; a second one would be merged: left to proto
			if typ != protowire.BytesType || seenValue {
				return false
			}
			seenValue = true
			ok = fields(bs, func(num protowire.Number, typ protowire.Type, _ uint64, bs []byte) bool {
				var sp, tp uint32
				if num != 1 || typ != protowire.BytesType || !quickPort(bs, &sp, &tp) || sp > 65535 || tp > 65535 {
					return false
				}
				ports = append(ports, model.WorkloadPort{ServicePort: uint16(sp), TargetPort: uint16(tp)})
				return true
			})
		}
		return ok
	})
	if !ok {
		return false
	}
	if wl.Services == nil {
		wl.Services = map[string][]model.WorkloadPort{}
	}
	wl.Services[key] = ports // a repeated key replaces the earlier entry, as in proto
	return true
}

func quickLocality(b []byte, loc *model.Locality) bool {
	return fields(b, func(num protowire.Number, typ protowire.Type, _ uint64, bs []byte) bool {
		var ok bool
		switch num {
		case 1:
			loc.Region, ok = text(typ, bs)
		case 2:
			loc.Zone, ok = text(typ, bs)
		case 3:
			loc.Subzone, ok = text(typ, bs)
		}
		return ok
	})
}

func quickUInt32Value(b []byte, out *uint32) bool {
	return fields(b, func(num protowire.Number, typ protowire.Type, v uint64, _ []byte) bool {
		if num != 1 || typ != protowire.VarintType {
			return false
		}
		*out = uint32(v)
		return true
	})
}
