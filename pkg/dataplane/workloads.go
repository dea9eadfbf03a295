package dataplane

import (
	"fmt"
	"net/netip"
	"slices"
	"sort"
	"strings"

	"github.com/kmesh-go/kmesh/pkg/bpf"
	"github.com/kmesh-go/kmesh/pkg/model"
)

// wlState is what the dataplane keeps of a workload: exactly what rendering,
// enrolment and restarts need, not the model value. A node may carry 100k
// workloads, and the daemon's memory budget is ~40 MB; keeping the model
// (maps per workload, six locality strings...) would cost several times that.
// A wlState is immutable once installed (updates replace it), so the state
// writer can read it without locks.
//
// It is also the daemon's only copy of the workload: with name, namespace,
// and the address list when ep does not already say it, it gives back the
// model value exactly (model(): the config dump, telemetry names).
type wlState struct {
	uid       string
	name      string
	namespace string
	id        uint32
	weight    uint32
	hash      uint64 // of the workload as given (change detection)
	ep        endpoint
	healthy   bool               // packs into ep's padding (160-byte size class)
	loc       *model.Locality    // interned
	svcs      []membership       // sorted by key; read only (may be shared, see internMembership)
	enrol     *enrolKey          // nil unless enrolled on this node (few are)
	wp        *model.WaypointRef // nil unless the workload has a waypoint (few do)
	addrs     *[]netip.Addr      // the addresses as given, when epAddrs() differs (rare)
}

// epAddrs is the address list ep stands for: IPv4, then IPv6.
func (w *wlState) epAddrs() []netip.Addr {
	var out []netip.Addr
	for fam, has := range w.ep.has {
		if has {
			out = append(out, addrFrom16(w.ep.addr[fam]))
		}
	}
	return out
}

// epSays reports whether as is exactly epAddrs() (the common case: one
// IPv4 address, or IPv4 then IPv6), without building it.
func (w *wlState) epSays(as []netip.Addr) bool {
	i := 0
	for fam, has := range w.ep.has {
		if !has {
			continue
		}
		if i >= len(as) || as[i] != addrFrom16(w.ep.addr[fam]) {
			return false
		}
		i++
	}
	return i == len(as)
}

// model is the workload as it was given.
func (w *wlState) model() model.Workload {
	m := model.Workload{UID: w.uid, Name: w.name, Namespace: w.namespace, Locality: *w.loc, Weight: w.weight, Healthy: w.healthy}
	if w.addrs != nil {
		m.Addresses = slices.Clone(*w.addrs)
	} else {
		m.Addresses = w.epAddrs()
	}
	if len(w.svcs) > 0 {
		m.Services = make(map[string][]model.WorkloadPort, len(w.svcs))
		for _, ms := range w.svcs {
			m.Services[ms.key] = slices.Clone(ms.ports)
		}
	}
	if w.wp != nil {
		ref := *w.wp
		m.Waypoint = &ref
	}
	if w.enrol != nil {
		m.Enrolment = &model.Enrolment{CgroupPath: w.enrol.cgGiven, NetnsPath: w.enrol.nsPath}
	}
	return m
}

func (w *wlState) enrolment() enrolKey {
	if w.enrol == nil {
		return enrolKey{}
	}
	return *w.enrol
}

// membership is a workload's membership in one service, with its target
// port overrides (nil: the service's target ports).
type membership struct {
	key   string // interned
	ports []model.WorkloadPort
}

func (w *wlState) overrides(key string) []model.WorkloadPort {
	for _, m := range w.svcs {
		if m.key == key {
			return m.ports
		}
	}
	return nil
}

// hashWorkload identifies a workload's content; equal hashes mean an
// unchanged workload. It is FNV-1a (64) of the state file encoding
// (codec.go), which covers every field; the value is persisted in the state
// file, so it must not change between builds. buf is scratch space reused
// across calls.
func hashWorkload(buf *sink, wl *model.Workload) uint64 {
	e := encoder{b: buf.b[:0]}
	e.workload(wl)
	buf.b = e.b
	return fnv64a(e.b)
}

// fnv64a is hash/fnv's New64a over b, without the interface calls.
func fnv64a(b []byte) uint64 {
	h := uint64(14695981039346656037)
	for _, c := range b {
		h ^= uint64(c)
		h *= 1099511628211
	}
	return h
}

// fnv32a is hash/fnv's New32a over s.
func fnv32a(s string) uint32 {
	h := uint32(2166136261)
	for i := 0; i < len(s); i++ {
		h ^= uint32(s[i])
		h *= 16777619
	}
	return h
}

// sink is scratch space for hashWorkload.
type sink struct{ b []byte }

// interning: service keys of memberships and localities are shared.
func (d *Dataplane) internKey(k string) string { return d.internMembership(k)[0].key }

// internMembership is the one-element membership list {k, no overrides},
// shared (read only) by every workload that backs just service k, which is
// most of them: a 100k-workload mesh keeps one list per service, not one
// per workload.
func (d *Dataplane) internMembership(k string) []membership {
	if m, ok := d.keys[k]; ok {
		return m
	}
	k = strings.Clone(k)
	m := []membership{{key: k}}
	d.keys[k] = m
	return m
}

func (d *Dataplane) internLoc(l model.Locality) *model.Locality {
	if p, ok := d.locs[l]; ok {
		return p
	}
	l = model.Locality{Region: strings.Clone(l.Region), Zone: strings.Clone(l.Zone), Subzone: strings.Clone(l.Subzone),
		Node: strings.Clone(l.Node), Cluster: strings.Clone(l.Cluster), Network: strings.Clone(l.Network)}
	p := &l
	d.locs[l] = p
	return p
}

// workloadID returns uid's id, assigning one when new: FNV-1a of the uid
// with linear probing, skipping ids in use and ids taken by this plan
// (p.wlUpByID: the caller records each id there before asking again).
func (d *Dataplane) workloadID(p *plan, uid string) (uint32, bool) {
	if w := d.wls[uid]; w != nil {
		return w.id, true
	}
	n := uint32(wlIDLimit - 1)
	start := fnv32a(uid) % n
	for i := uint32(0); i < n; i++ {
		id := (start+i)%n + 1
		if d.wlByID[id] != nil || p.wlUpByID[id] != nil {
			continue // in use, or taken by this plan
		}
		return id, true
	}
	return 0, false
}

// planWorkload validates a workload and builds the state it would have.
func (d *Dataplane) planWorkload(p *plan, wl *model.Workload, hash uint64) (*wlState, error) {
	if wl.UID == "" {
		return nil, &InvalidError{Object: "workload", Reason: "empty uid"}
	}
	id, ok := d.workloadID(p, wl.UID)
	if !ok {
		return nil, &CapacityError{Map: "workload ids", Limit: wlIDLimit - 1, What: wlObject(wl.UID)}
	}
	ep, err := endpointOf(wl)
	if err != nil {
		return nil, err
	}
	// Strings are copied: the state outlives the caller's model, whose
	// memory (a decoded push) is then freed whole instead of kept alive
	// by a few strings in each of its pages.
	st := &wlState{uid: strings.Clone(wl.UID), name: strings.Clone(wl.Name), namespace: strings.Clone(wl.Namespace),
		id: id, hash: hash, ep: ep, weight: wl.Weight, healthy: wl.Healthy, loc: d.internLoc(wl.Locality)}
	if !st.epSays(wl.Addresses) {
		a := slices.Clone(wl.Addresses)
		st.addrs = &a
	}
	if wl.Waypoint != nil {
		ref := *wl.Waypoint
		ref.Service = d.internKey(ref.Service)
		st.wp = &ref
	}
	if len(wl.Services) == 1 {
		for key, ports := range wl.Services {
			if ports == nil {
				st.svcs = d.internMembership(key)
			}
		}
	}
	if len(wl.Services) > 0 && st.svcs == nil {
		st.svcs = make([]membership, 0, len(wl.Services))
		for key, ports := range wl.Services {
			st.svcs = append(st.svcs, membership{key: d.internKey(key), ports: slices.Clone(ports)})
		}
		if len(st.svcs) > 1 {
			sort.Slice(st.svcs, func(i, j int) bool { return st.svcs[i].key < st.svcs[j].key })
		}
	}
	if e := wl.Enrolment; e != nil {
		obj := wlObject(wl.UID)
		if e.CgroupPath == "" && e.NetnsPath == "" {
			return nil, &InvalidError{Object: obj, Reason: "enrolment names neither a cgroup nor a netns"}
		}
		st.enrol = &enrolKey{present: true, cgGiven: e.CgroupPath}
		if e.CgroupPath != "" {
			cg, level, abs, err := resolveCgroup(d.cgroupMount, e.CgroupPath)
			if err != nil {
				return nil, &InvalidError{Object: obj, Reason: "enrolment: " + err.Error()}
			}
			st.enrol.cgroup, st.enrol.level, st.enrol.cgPath = cg, level, abs
			if owner, ok := d.enrolCg[cg]; ok && owner != id {
				return nil, &InvalidError{Object: obj, Reason: fmt.Sprintf("cgroup %s is already enrolled by another workload", abs)}
			}
		}
		if e.NetnsPath != "" {
			c, err := netnsCookie(e.NetnsPath)
			if err != nil {
				return nil, &InvalidError{Object: obj, Reason: "enrolment: " + err.Error()}
			}
			st.enrol.netns, st.enrol.nsPath = c, e.NetnsPath
			if owner, ok := d.enrolNs[c]; ok && owner != id {
				return nil, &InvalidError{Object: obj, Reason: fmt.Sprintf("netns %s is already enrolled by another workload", e.NetnsPath)}
			}
		}
	}
	return st, nil
}

// endpointOf is where a workload is reached: its first IPv4 and first IPv6
// address; local when it is enrolled on this node. A workload without
// addresses is not usable as an endpoint.
func endpointOf(wl *model.Workload) (endpoint, error) {
	var ep endpoint
	for _, a := range wl.Addresses {
		if !a.IsValid() || a.IsUnspecified() || a.Zone() != "" {
			return ep, &InvalidError{Object: wlObject(wl.UID), Reason: fmt.Sprintf("address %v is not usable", a)}
		}
		a = a.Unmap()
		fam := bpf.FamV6
		if a.Is4() {
			fam = bpf.FamV4
		}
		if !ep.has[fam] {
			ep.addr[fam], ep.has[fam] = addr16(a), true
		}
	}
	ep.local = wl.Enrolment != nil
	return ep, nil
}

// membersOf lists the members of service key in the planned view.
func (d *Dataplane) membersOf(p *plan, key string) []member {
	set := p.members[key]
	out := make([]member, 0, len(set))
	for id := range set {
		st := p.wlUpByID[id]
		if st == nil {
			st = d.wlByID[id]
		}
		if st == nil || !st.healthy || !st.ep.usable() {
			continue
		}
		out = append(out, member{id: id, ep: st.ep, weight: st.weight, locality: st.loc, ports: st.overrides(key)})
	}
	return out
}

// installWorkload makes st current (replacing cur, if any) in the indexes.
func (d *Dataplane) installWorkload(cur, st *wlState) {
	if cur != nil {
		d.dropMemberships(cur)
	}
	for _, m := range st.svcs {
		set := d.members[m.key]
		if set == nil {
			set = map[uint32]struct{}{}
			d.members[m.key] = set
		}
		set[st.id] = struct{}{}
	}
	d.wls[st.uid] = st
	d.wlByID[st.id] = st
	if cur != nil {
		d.addrIndex.index(cur, true)
	}
	d.addrIndex.index(st, false)
}

func (d *Dataplane) removeWorkload(cur *wlState) {
	d.dropMemberships(cur)
	delete(d.wls, cur.uid)
	delete(d.wlByID, cur.id)
	d.addrIndex.index(cur, true)
}

func (d *Dataplane) dropMemberships(w *wlState) {
	for _, m := range w.svcs {
		set := d.members[m.key]
		delete(set, w.id)
		if len(set) == 0 {
			delete(d.members, m.key)
			if _, svc := d.svcs[m.key]; !svc {
				delete(d.keys, m.key)
			}
		}
	}
}
