package dataplane

import (
	"fmt"
	"net/netip"
	"slices"
	"sort"
	"strings"
	"unsafe"

	"github.com/kmesh-go/kmesh/pkg/bpf"
	"github.com/kmesh-go/kmesh/pkg/model"
)

// wlState is what the dataplane keeps of a workload: exactly what rendering,
// enrolment and restarts need, not the model value. A node may carry 100k
// workloads, and the daemon's memory budget is ~40 MB; keeping the model
// (maps per workload, six locality strings...) would cost several times that.
// Installed workloads are kept in columns (wlTable), which build a wlState
// for whoever reads one; plans build them for what they install.
//
// It is also the daemon's only copy of the workload: with name, namespace,
// and the address list when ep does not already say it, it gives back the
// model value exactly (model(): the config dump, telemetry names).
//
// The layout is packed into the 96-byte size class (TestWlRecSize): uid,
// name and namespace share one string, the membership list is a pointer (most
// workloads share their service's list, see internMembership), and what few
// workloads have (an enrolment, a waypoint, an address list ep does not say,
// a uid from 64 KiB or a name from 32 KiB on) sits behind one pointer.
type wlState struct {
	strs    string // uid, name, namespace (see uid(); in x when long)
	hash    uint64 // of the workload as given (change detection)
	loc     *model.Locality
	svcs    *[]membership // sorted by key; read only (may be shared, see internMembership); nil: none
	x       *wlRare       // nil unless the workload has one of its fields
	id      uint32
	weight  uint32
	ep      endpoint
	uidLen  uint16 // longNames: uid is strs, name and namespace are in x
	nameLen uint16 // and healthyBit (the struct has no spare byte for a bool)
}

const healthyBit = 0x8000

func (w *wlState) healthy() bool { return w.nameLen&healthyBit != 0 }

func (w *wlState) setHealthy(h bool) {
	w.nameLen &^= healthyBit
	if h {
		w.nameLen |= healthyBit
	}
}

// wlRare holds what few workloads have.
type wlRare struct {
	enrol           *enrolKey          // enrolled on this node
	wp              *model.WaypointRef // the workload has a waypoint
	addrs           *[]netip.Addr      // the addresses as given, when epAddrs() differs
	name, namespace string             // uidLen == longNames
}

const longNames = 0xffff

// newWlState is a state with the names given (copied into one string: the
// state outlives the caller's model, whose memory is then freed whole instead
// of kept alive by a few strings in each of its pages).
func newWlState(uid, name, namespace string) *wlState {
	return (*stateAlloc)(nil).state(uid, name, namespace)
}

// stateAlloc hands out the workload states of a large push (or of the state
// file) and their name strings from chunks. Allocated one by one, they would
// land in the holes the collector left in spans of the caller's model and of
// decoding garbage, and keep those spans ~half empty once the model is freed
// (measured: 16 MB of 49 MB heap in use for a 100k-workload push). A chunk
// is freed when none of its states is referenced any more; 64 states (one
// 6 KiB allocation) and 8 KiB of names are about what one span of the
// allocator holds, so later churn leaves no more waste than it would there.
// A nil *stateAlloc allocates each state and string on its own.
type stateAlloc struct {
	states []wlState
	bytes  []byte
}

const (
	stateChunk = 64
	bytesChunk = 8 << 10
)

func (a *stateAlloc) state(uid, name, namespace string) *wlState {
	var w *wlState
	if a == nil {
		w = &wlState{}
	} else {
		if len(a.states) == 0 {
			a.states = make([]wlState, stateChunk)
		}
		w, a.states = &a.states[0], a.states[1:]
	}
	if len(uid) >= longNames || len(name) >= healthyBit {
		w.strs, w.uidLen = strings.Clone(uid), longNames
		w.rare().name, w.x.namespace = strings.Clone(name), strings.Clone(namespace)
		return w
	}
	w.strs, w.uidLen, w.nameLen = a.concat(uid, name, namespace), uint16(len(uid)), uint16(len(name))
	return w
}

// concat is one new string holding a, b and c.
func (a *stateAlloc) concat(s ...string) string {
	n := 0
	for _, x := range s {
		n += len(x)
	}
	if a == nil || n == 0 || n > bytesChunk/8 {
		var b strings.Builder
		b.Grow(n)
		for _, x := range s {
			b.WriteString(x)
		}
		return b.String()
	}
	if len(a.bytes) < n {
		a.bytes = make([]byte, bytesChunk)
	}
	buf := a.bytes[:n:n]
	a.bytes = a.bytes[n:]
	i := 0
	for _, x := range s {
		i += copy(buf[i:], x)
	}
	return unsafe.String(&buf[0], n) // buf is never written again
}

// rare returns x, allocating it (only while the state is being built).
func (w *wlState) rare() *wlRare {
	if w.x == nil {
		w.x = &wlRare{}
	}
	return w.x
}

func (w *wlState) uid() string {
	if w.uidLen == longNames {
		return w.strs
	}
	return w.strs[:w.uidLen]
}

func (w *wlState) name() string {
	if w.uidLen == longNames {
		return w.x.name
	}
	return w.strs[w.uidLen : int(w.uidLen)+int(w.nameLen&^healthyBit)]
}

func (w *wlState) namespace() string {
	if w.uidLen == longNames {
		return w.x.namespace
	}
	return w.strs[int(w.uidLen)+int(w.nameLen&^healthyBit):]
}

// members are the workload's service memberships (read only).
func (w *wlState) members() []membership {
	if w.svcs == nil {
		return nil
	}
	return *w.svcs
}

// enrolled is the enrolment on this node, nil if none.
func (w *wlState) enrolled() *enrolKey {
	if w.x == nil {
		return nil
	}
	return w.x.enrol
}

// waypointRef is the workload's waypoint, nil if none.
func (w *wlState) waypointRef() *model.WaypointRef {
	if w.x == nil {
		return nil
	}
	return w.x.wp
}

// special: enrolled here or with a waypoint (see plan.special).
func (w *wlState) special() bool { return w.x != nil && (w.x.enrol != nil || w.x.wp != nil) }

// givenAddrs is the address list as given when epAddrs() differs, else nil.
func (w *wlState) givenAddrs() *[]netip.Addr {
	if w.x == nil {
		return nil
	}
	return w.x.addrs
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

// model is the workload as it was given (its strings copied: the table's
// point into its arena).
func (w *wlState) model() model.Workload {
	c := *w
	c.strs = strings.Clone(w.strs)
	w = &c
	m := model.Workload{UID: w.uid(), Name: w.name(), Namespace: w.namespace(), Locality: *w.loc, Weight: w.weight, Healthy: w.healthy()}
	if a := w.givenAddrs(); a != nil {
		m.Addresses = slices.Clone(*a)
	} else {
		m.Addresses = w.epAddrs()
	}
	if ms := w.members(); len(ms) > 0 {
		m.Services = make(map[string][]model.WorkloadPort, len(ms))
		for _, ms := range ms {
			m.Services[ms.key] = slices.Clone(ms.ports)
		}
	}
	if wp := w.waypointRef(); wp != nil {
		ref := *wp
		m.Waypoint = &ref
	}
	if e := w.enrolled(); e != nil {
		m.Enrolment = &model.Enrolment{CgroupPath: e.cgGiven, NetnsPath: e.nsPath}
	}
	return m
}

func (w *wlState) enrolment() enrolKey {
	if e := w.enrolled(); e != nil {
		return *e
	}
	return enrolKey{}
}

// membership is a workload's membership in one service, with its target
// port overrides (nil: the service's target ports).
type membership struct {
	key   string // interned
	ports []model.WorkloadPort
}

func (w *wlState) overrides(key string) []model.WorkloadPort {
	for _, m := range w.members() {
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

// interning: service keys of memberships and localities are shared. What
// the dataplane keeps per service key that workloads name (member ids, the
// interned key and membership list) is in the service table (svctable.go).
func (d *Dataplane) internKey(k string) string {
	_, l := d.svcs.keyList(k)
	return l.one[0].key
}

// members are the ids of the workloads naming key (read only).
func (d *Dataplane) members(key string) []uint32 {
	if s, ok := d.svcs.slotOf(key); ok {
		return d.svcs.members(s)
	}
	return nil
}

// internMembership is the one-element membership list {k, no overrides},
// shared (read only) by every workload that backs just service k, which is
// most of them: a 100k-workload mesh keeps one list per service, not one
// per workload.
func (d *Dataplane) internMembership(k string) *[]membership {
	_, l := d.svcs.keyList(k)
	return &l.list
}

// internLoc's parameter must not escape: a heap copy per call would be 100k
// dead 96-byte objects per full push, interleaved with the workload states
// (same size class), leaving their spans half empty.
func (d *Dataplane) internLoc(l model.Locality) *model.Locality {
	if p, ok := d.locs[l]; ok {
		return p
	}
	p := &model.Locality{Region: strings.Clone(l.Region), Zone: strings.Clone(l.Zone), Subzone: strings.Clone(l.Subzone),
		Node: strings.Clone(l.Node), Cluster: strings.Clone(l.Cluster), Network: strings.Clone(l.Network)}
	d.locs[*p] = p
	return p
}

// workloadID returns uid's id, assigning one when new: FNV-1a of the uid
// with linear probing, skipping ids in use and ids taken by this plan
// (p.wlUpByID: the caller records each id there before asking again).
func (d *Dataplane) workloadID(p *plan, uid string) (uint32, bool) {
	if id, ok := d.wls.idOf(uid); ok {
		return id, true
	}
	n := uint32(wlIDLimit - 1)
	start := fnv32a(uid) % n
	for i := uint32(0); i < n; i++ {
		id := (start+i)%n + 1
		if d.wls.hasID(id) || p.wlUpByID[id] != nil {
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
	st := p.alloc.state(wl.UID, wl.Name, wl.Namespace)
	st.id, st.hash, st.ep, st.weight, st.loc = id, hash, ep, wl.Weight, d.internLoc(wl.Locality)
	st.setHealthy(wl.Healthy)
	if !st.epSays(wl.Addresses) {
		a := slices.Clone(wl.Addresses)
		st.rare().addrs = &a
	}
	if wl.Waypoint != nil {
		ref := *wl.Waypoint
		ref.Service = d.internKey(ref.Service)
		st.rare().wp = &ref
	}
	if len(wl.Services) == 1 {
		for key, ports := range wl.Services {
			if ports == nil {
				st.svcs = d.internMembership(key)
			}
		}
	}
	if len(wl.Services) > 0 && st.svcs == nil {
		ms := make([]membership, 0, len(wl.Services))
		for key, ports := range wl.Services {
			ms = append(ms, membership{key: d.internKey(key), ports: slices.Clone(ports)})
		}
		if len(ms) > 1 {
			sort.Slice(ms, func(i, j int) bool { return ms[i].key < ms[j].key })
		}
		st.svcs = &ms
	}
	if e := wl.Enrolment; e != nil {
		obj := wlObject(wl.UID)
		if e.CgroupPath == "" && e.NetnsPath == "" {
			return nil, &InvalidError{Object: obj, Reason: "enrolment names neither a cgroup nor a netns"}
		}
		enrol := &enrolKey{present: true, cgGiven: e.CgroupPath}
		st.rare().enrol = enrol
		if e.CgroupPath != "" {
			cg, level, abs, err := resolveCgroup(d.cgroupMount, e.CgroupPath)
			if err != nil {
				return nil, &InvalidError{Object: obj, Reason: "enrolment: " + err.Error()}
			}
			enrol.cgroup, enrol.level, enrol.cgPath = cg, level, abs
			if owner, ok := d.enrolCg[cg]; ok && owner != id {
				return nil, &InvalidError{Object: obj, Reason: fmt.Sprintf("cgroup %s is already enrolled by another workload", abs)}
			}
		}
		if e.NetnsPath != "" {
			c, err := netnsCookie(e.NetnsPath)
			if err != nil {
				return nil, &InvalidError{Object: obj, Reason: "enrolment: " + err.Error()}
			}
			enrol.netns, enrol.nsPath = c, e.NetnsPath
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
	ids := p.members[key]
	out := make([]member, 0, len(ids))
	var cur wlState
	var scratch []byte
	for _, id := range ids {
		st := p.wlUpByID[id]
		if st == nil && d.wls.loadID(id, &cur, &scratch) {
			st = &cur
		}
		if st == nil || !st.healthy() || !st.ep.usable() {
			continue
		}
		out = append(out, member{id: id, ep: st.ep, weight: st.weight, locality: st.loc, ports: st.overrides(key)})
	}
	return out
}

// installWorkload makes st current, replacing the workload with its uid
// (the table copies it, and indexes its addresses).
// Service memberships are not kept here: commit takes them whole from the
// plan (plan.members), adopt with addMemberships.
func (d *Dataplane) installWorkload(st *wlState) {
	d.wls.put(st)
}

func (d *Dataplane) removeWorkload(cur *wlState) {
	d.wls.del(cur)
}

// addMemberships records st in the member lists of its services, collected
// in acc by service table slot (adopt installs them with setMembers).
func (d *Dataplane) addMemberships(st *wlState, acc map[uint32][]uint32) {
	for _, m := range st.members() {
		s, _ := d.svcs.keyList(m.key)
		acc[s] = append(acc[s], st.id)
	}
}

// setMembers installs the planned member lists of the services a plan
// touched (the complete new list of each), dropping empty ones.
func (d *Dataplane) setMembers(p *plan) {
	for key, ids := range p.members {
		if len(ids) > 0 {
			s, _ := d.svcs.keyList(key)
			d.svcs.setMembers(s, ids)
			continue
		}
		if s, ok := d.svcs.slotOf(key); ok && d.svcs.lists[s] != nil {
			d.svcs.setMembers(s, nil)
			if !d.svcs.hasSvc(s) {
				d.svcs.dropKeyList(s)
			}
		}
	}
}
