package dataplane

import (
	"cmp"
	"encoding/binary"
	"fmt"
	"hash/fnv"
	"math"
	"net/netip"
	"slices"
	"unsafe"

	"github.com/kmesh-go/kmesh/pkg/bpf"
	"github.com/kmesh-go/kmesh/pkg/model"
)

// endpoint is where a workload is reached: its first IPv4 and first IPv6
// address (16-byte map form) and whether it is local (enrolled here).
type endpoint struct {
	addr  [bpf.Families][4]uint32
	has   [bpf.Families]bool
	local bool
}

func (e endpoint) usable() bool { return e.has[bpf.FamV4] || e.has[bpf.FamV6] }

// member is what rendering needs to know about one workload of a service.
type member struct {
	id       uint32 // workload id
	ep       endpoint
	weight   uint32
	locality *model.Locality      // interned, shared: read only
	ports    []model.WorkloadPort // overrides for this service
}

// rendered is one complete generation of a service: its record and slots.
// A generation of at most bpf.InlineSlots slots has them in the record
// (rec.Slots, bpf.RecInline) and none in km_endpoint; slots is then empty.
type rendered struct {
	rec   bpf.SvcRec
	slots [bpf.Families][bpf.MaxTiers][]bpf.Slot
	total int // slots in all families and tiers
	// digest identifies the content, so an unchanged service is not rewritten.
	digest uint64
}

// inline reports whether the generation's slots are in its record.
func (r *rendered) inline() bool { return r.rec.Flags&bpf.RecInline != 0 }

// endpointSlots is how many km_endpoint entries the generation takes.
func (r *rendered) endpointSlots() int {
	if r.inline() {
		return 0
	}
	return r.total
}

func svcObject(key string) string { return fmt.Sprintf("service %q", key) }

// validateService checks what the maps cannot represent.
func validateService(s *model.Service) error {
	obj := svcObject(s.Key)
	if s.Key == "" {
		return &InvalidError{Object: "service", Reason: "empty key"}
	}
	if len(s.Ports) > bpf.MaxPorts {
		return &CapacityError{Map: "ports per service", Limit: bpf.MaxPorts, What: obj}
	}
	seen := map[uint16]bool{}
	for _, p := range s.Ports {
		if p.Port == 0 {
			return &InvalidError{Object: obj, Reason: "port 0"}
		}
		if seen[p.Port] {
			return &InvalidError{Object: obj, Reason: fmt.Sprintf("port %d listed twice", p.Port)}
		}
		seen[p.Port] = true
		if p.Protocol != "" && p.Protocol != model.TCP {
			return &InvalidError{Object: obj, Reason: fmt.Sprintf("port %d: protocol %q (only TCP)", p.Port, p.Protocol)}
		}
	}
	for _, v := range s.VIPs {
		if !v.IsValid() || v.IsUnspecified() || v.Zone() != "" {
			return &InvalidError{Object: obj, Reason: fmt.Sprintf("VIP %v is not a usable address", v)}
		}
	}
	if _, err := algorithmCode(s.LB.Algorithm); err != nil {
		return &InvalidError{Object: obj, Reason: err.Error()}
	}
	if _, err := localityCode(s.LB.Locality); err != nil {
		return &InvalidError{Object: obj, Reason: err.Error()}
	}
	if s.LB.Locality != model.LocalityNone && len(s.LB.RoutingPreference) > bpf.MaxTiers-1 {
		return &CapacityError{Map: "locality tiers (routing preference scopes)", Limit: bpf.MaxTiers - 1, What: obj}
	}
	for _, sc := range s.LB.RoutingPreference {
		if _, ok := scopeValue(model.Locality{}, sc); !ok {
			return &InvalidError{Object: obj, Reason: fmt.Sprintf("unknown routing preference scope %q", sc)}
		}
	}
	return nil
}

func algorithmCode(a model.LBAlgorithm) (uint8, error) {
	switch a {
	case "", model.LBRandom:
		return bpf.AlgRandom, nil
	case model.LBRoundRobin:
		return bpf.AlgRoundRobin, nil
	case model.LBWeighted:
		return bpf.AlgWeighted, nil
	}
	return 0, fmt.Errorf("unknown load-balancing algorithm %q (random, round_robin, weighted)", a)
}

func localityCode(m model.LocalityMode) (uint8, error) {
	switch m {
	case model.LocalityNone:
		return bpf.LocNone, nil
	case model.LocalityStrict:
		return bpf.LocStrict, nil
	case model.LocalityFailover:
		return bpf.LocFailover, nil
	}
	return 0, fmt.Errorf("unknown locality mode %q (strict, failover, or empty)", m)
}

func scopeValue(l model.Locality, s model.LocalityScope) (string, bool) {
	switch s {
	case model.ScopeRegion:
		return l.Region, true
	case model.ScopeZone:
		return l.Zone, true
	case model.ScopeSubzone:
		return l.Subzone, true
	case model.ScopeNode:
		return l.Node, true
	case model.ScopeCluster:
		return l.Cluster, true
	case model.ScopeNetwork:
		return l.Network, true
	}
	return "", false
}

// tierOf is the workload's priority tier: the number of routing-preference
// scopes left after the leading ones it shares with the node (0 = matches
// all; Istio/Kmesh semantics).
func tierOf(wl, node *model.Locality, pref []model.LocalityScope) int {
	match := 0
	for _, s := range pref {
		a, _ := scopeValue(*wl, s)
		b, _ := scopeValue(*node, s)
		if a != b {
			break
		}
		match++
	}
	return len(pref) - match
}

// targetPort resolves the port a workload listens on for service port p.
func targetPort(p model.ServicePort, overrides []model.WorkloadPort) uint16 {
	for _, o := range overrides {
		if o.ServicePort == p.Port && o.TargetPort != 0 {
			return o.TargetPort
		}
	}
	if p.TargetPort != 0 {
		return p.TargetPort
	}
	return p.Port
}

// render builds a service's next generation from its members (healthy
// workloads with an address). Members are ordered by workload id so equal
// input renders equal output. A generation of at most inlineMax slots is
// rendered inline (bpf.InlineSlots; tests set 0 to reach km_endpoint).
func render(s *model.Service, members []member, node model.Node, inlineMax int) (rendered, error) {
	var r rendered
	alg, err := algorithmCode(s.LB.Algorithm)
	if err != nil {
		return r, err
	}
	loc, err := localityCode(s.LB.Locality)
	if err != nil {
		return r, err
	}
	r.rec.Algorithm, r.rec.Locality, r.rec.Nports = alg, loc, uint8(len(s.Ports))
	for i, p := range s.Ports {
		r.rec.Port[i] = htons(p.Port)
	}
	slices.SortFunc(members, func(a, b member) int { return cmp.Compare(a.id, b.id) })
	var wsum [bpf.Families][bpf.MaxTiers]uint64
	for _, m := range members {
		tier := 0
		if loc != bpf.LocNone {
			tier = tierOf(m.locality, &node.Locality, s.LB.RoutingPreference)
		}
		w := uint32(1)
		if alg == bpf.AlgWeighted && m.weight > 0 {
			w = m.weight
		}
		slot := bpf.Slot{WorkloadId: m.id}
		if m.ep.local {
			slot.Flags |= bpf.EndpointLocal
		}
		for i, p := range s.Ports {
			slot.Target[i] = htons(targetPort(p, m.ports))
		}
		for fam, has := range m.ep.has {
			if !has {
				continue
			}
			slot.Addr = m.ep.addr[fam]
			wsum[fam][tier] += uint64(w)
			if wsum[fam][tier] > math.MaxUint32 {
				return r, &InvalidError{Object: svcObject(s.Key), Reason: "sum of endpoint weights exceeds 2^32-1"}
			}
			slot.CumWeight = uint32(wsum[fam][tier])
			if r.slots[fam][tier] == nil {
				r.slots[fam][tier] = make([]bpf.Slot, 0, len(members))
			}
			r.slots[fam][tier] = append(r.slots[fam][tier], slot)
		}
	}
	for fam := range r.slots {
		for tier := range r.slots[fam] {
			n := len(r.slots[fam][tier])
			r.rec.Count[fam][tier] = uint32(n)
			r.rec.Wsum[fam][tier] = uint32(wsum[fam][tier])
			r.total += n
		}
	}
	h := fnv.New64a()
	if inlineMax > 0 && r.total <= min(inlineMax, bpf.InlineSlots) {
		// Family-major, tier-minor, as lib/lb.h's km_inline_off expects.
		i := 0
		for fam := range r.slots {
			for tier := range r.slots[fam] {
				i += copy(r.rec.Slots[i:], r.slots[fam][tier])
			}
		}
		r.rec.Flags |= bpf.RecInline
		r.slots = [bpf.Families][bpf.MaxTiers][]bpf.Slot{}
	} else {
		for fam := range r.slots {
			for tier := range r.slots[fam] {
				for i := range r.slots[fam][tier] {
					h.Write(bytesOf(&r.slots[fam][tier][i]))
				}
			}
		}
	}
	h.Write(bytesOf(&r.rec))
	r.digest = h.Sum64()
	return r, nil
}

// bytesOf views a plain-data struct (the generated map types) as bytes.
func bytesOf[T any](v *T) []byte {
	return unsafe.Slice((*byte)(unsafe.Pointer(v)), unsafe.Sizeof(*v))
}

func htons(p uint16) uint16 {
	var b [2]byte
	binary.BigEndian.PutUint16(b[:], p)
	return binary.NativeEndian.Uint16(b[:])
}

func ntohs(p uint16) uint16 { return htons(p) }

// addr16 is the maps' 16-byte address form: IPv4 is IPv4-mapped.
func addr16(a netip.Addr) [4]uint32 {
	b := a.As16()
	var out [4]uint32
	for i := range out {
		out[i] = binary.NativeEndian.Uint32(b[i*4:])
	}
	return out
}

// addrFrom16 reverses addr16; a mapped address becomes IPv4.
func addrFrom16(w [4]uint32) netip.Addr {
	var b [16]byte
	for i := range w {
		binary.NativeEndian.PutUint32(b[i*4:], w[i])
	}
	return netip.AddrFrom16(b).Unmap()
}
