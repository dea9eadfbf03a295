package dataplane

import (
	"errors"
	"fmt"
	"sort"
	"strings"

	"github.com/kmesh-go/kmesh/pkg/bpf"
	"github.com/kmesh-go/kmesh/pkg/model"
)

// Waypoints (dual-engine L7): a service or workload with a waypoint has its
// connections sent at connect() to an instance of the waypoint's own service,
// which learns the original destination from a header written by sk_msg on
// the first send (bpf/lib/waypoint.h). The dataplane lowers waypoint
// references into km_waypoint:
//
//   - per port of a service with a waypoint: (service id, port) -> redirect to
//     (waypoint service id, waypoint port); server-first ports bypass the
//     waypoint or are refused (WaypointRef.ServerFirst); an unknown waypoint
//     service refuses (connects fail with ECONNREFUSED, the waypoint is never
//     silently skipped);
//   - per address of a workload with a waypoint (traffic addressed to the
//     pod, Istio's workload waypoints): (address, port 0) -> redirect, and
//     (address, target port) for its server-first ports.
//
// Enrolled workloads that back a service used as a waypoint are waypoint
// instances: their enrolment entries carry KM_ENROL_WAYPOINT, so their own
// connects (to the original destinations) are load-balanced but never sent
// to a waypoint again.

// Waypoint header protocols (Options.WaypointProtocol).
const (
	WaypointProxyV2  = "proxy-v2"  // PROXY protocol v2 (default): HAProxy, nginx, Envoy
	WaypointKmeshTLV = "kmesh-tlv" // upstream Kmesh's TLV, for its waypoint image
)

func checkWaypointProtocol(p string) error {
	switch p {
	case "", WaypointProxyV2, WaypointKmeshTLV:
		return nil
	}
	return fmt.Errorf("unknown waypoint protocol %q (%s or %s)", p, WaypointProxyV2, WaypointKmeshTLV)
}

// wpState is what the maps hold about waypoints.
type wpState struct {
	entries    map[bpf.WaypointKey]bpf.WaypointVal // km_waypoint
	svcs       map[string]bool                     // services with a waypoint
	wls        map[string]bool                     // workloads with a waypoint
	exempt     map[string]bool                     // workloads enrolled with KM_ENROL_WAYPOINT
	wlEntries  bool                                // KM_CFG_WL_WAYPOINTS
	svcEntries bool                                // not KM_CFG_NO_SVC_WAYPOINTS
}

// wpPlan is the waypoint part of a plan: the next state and the difference.
type wpPlan struct {
	next      wpState
	put, del  []bpf.WaypointKey
	exemptOn  []string // exempt from now on (enrolment rewritten before anything else)
	exemptOff []string // no longer exempt (rewritten after the entries are gone)
	reasons   map[bpf.WaypointKey]string
}

// plannedService is a service as the plan leaves it (nil: absent).
func (d *Dataplane) plannedService(p *plan, key string) *model.Service {
	if p.svcDel[key] {
		return nil
	}
	if s := p.svcUp[key]; s != nil {
		return s
	}
	if s, ok := d.svcs.svcSlot(key); ok {
		return d.svcModel(s)
	}
	return nil
}

// plannedWorkload is a workload as the plan leaves it (nil: absent).
func (d *Dataplane) plannedWorkload(p *plan, uid string) *wlState {
	if p.wlDel[uid] {
		return nil
	}
	if st := p.wlUp[uid]; st != nil {
		return st
	}
	return d.wls.get(uid)
}

// plannedMembers are the workloads naming service key in the planned view.
func (d *Dataplane) plannedMembers(p *plan, key string) []*wlState {
	ids, ok := p.members[key]
	if !ok {
		ids = d.members(key)
	}
	out := make([]*wlState, 0, len(ids))
	for _, id := range ids {
		st := p.wlUpByID[id]
		if st == nil {
			st = d.wls.getID(id)
		}
		if st != nil && !p.wlDel[st.uid()] {
			out = append(out, st)
		}
	}
	return out
}

// validateWaypoint checks a waypoint reference of obj (self: obj's own
// service key, or "" for a workload).
func validateWaypoint(obj, self string, w *model.WaypointRef) error {
	if w == nil {
		return nil
	}
	switch {
	case w.Service == "":
		return &InvalidError{Object: obj, Reason: "waypoint names no service"}
	case w.Service == self:
		return &InvalidError{Object: obj, Reason: "a service cannot be its own waypoint"}
	case w.Port == 0:
		return &InvalidError{Object: obj, Reason: "waypoint port 0"}
	}
	switch w.ServerFirst {
	case "", model.ServerFirstBypass, model.ServerFirstRefuse:
	default:
		return &InvalidError{Object: obj, Reason: fmt.Sprintf("waypoint serverFirst %q (bypass or refuse)", w.ServerFirst)}
	}
	return nil
}

// planWaypoints computes km_waypoint and the waypoint exemptions for the
// planned view. It only looks at objects that have (or had) a waypoint and
// at the members of waypoint services, so a mesh without waypoints pays
// nothing.
func (d *Dataplane) planWaypoints(p *plan) error {
	for key, s := range p.svcUp {
		if s.Waypoint == nil {
			continue
		}
		if err := validateWaypoint(svcObject(key), key, s.Waypoint); err != nil {
			return err
		}
	}
	for _, uid := range p.special {
		st := p.wlUp[uid]
		if st.waypointRef() == nil {
			continue
		}
		if err := validateWaypoint(wlObject(uid), "", st.waypointRef()); err != nil {
			return err
		}
	}
	svcs := map[string]bool{}
	for k := range d.wp.svcs {
		svcs[k] = true
	}
	for k, s := range p.svcUp {
		if s.Waypoint != nil {
			svcs[k] = true
		} else {
			delete(svcs, k)
		}
	}
	for k := range p.svcDel {
		delete(svcs, k)
	}
	wls := map[string]bool{}
	for k := range d.wp.wls {
		wls[k] = true
	}
	for _, k := range p.special { // other upserts have and had no waypoint
		st := p.wlUp[k]
		if st.waypointRef() != nil {
			wls[k] = true
		} else {
			delete(wls, k)
		}
	}
	for k := range p.wlDel {
		delete(wls, k)
	}
	if len(svcs) == 0 && len(wls) == 0 && len(d.wp.entries) == 0 && len(d.wp.exempt) == 0 && !d.wp.wlEntries && !d.wp.svcEntries {
		return nil
	}

	wp := &wpPlan{next: wpState{entries: map[bpf.WaypointKey]bpf.WaypointVal{}, svcs: svcs, wls: wls,
		exempt: map[string]bool{}}, reasons: map[bpf.WaypointKey]string{}}
	refs := map[string]bool{} // waypoint services in use
	put := func(k bpf.WaypointKey, v bpf.WaypointVal, reason string) {
		if _, dup := wp.next.entries[k]; dup {
			return // two workloads share an address: the first (by uid) wins
		}
		v.Key = k
		wp.next.entries[k] = v
		if reason != "" {
			wp.reasons[k] = reason
		}
	}
	// target resolves a reference of obj: the redirect value, or a refusal
	// and why.
	target := func(obj string, ref *model.WaypointRef) (bpf.WaypointVal, string) {
		refs[ref.Service] = true
		w := d.plannedService(p, ref.Service)
		if w == nil {
			return bpf.WaypointVal{Action: bpf.WpRefuse}, fmt.Sprintf("%s: waypoint service %q is unknown", obj, ref.Service)
		}
		found := false
		for _, port := range w.Ports {
			found = found || port.Port == ref.Port
		}
		if !found {
			return bpf.WaypointVal{Action: bpf.WpRefuse}, fmt.Sprintf("%s: waypoint service %q has no port %d", obj, ref.Service, ref.Port)
		}
		id, _ := d.svcs.lookup(ref.Service)
		return bpf.WaypointVal{WpSvc: id, WpPort: htons(ref.Port), Action: bpf.WpRedirect}, ""
	}
	serverFirst := func(ref *model.WaypointRef) bpf.WaypointVal {
		if ref.ServerFirst == model.ServerFirstRefuse {
			return bpf.WaypointVal{Action: bpf.WpRefuse}
		}
		return bpf.WaypointVal{Action: bpf.WpBypass}
	}

	for _, key := range sortedSet(svcs) {
		s := d.plannedService(p, key)
		if s == nil || s.Waypoint == nil {
			continue
		}
		id, ok := d.svcs.lookup(key)
		if !ok {
			continue
		}
		v, reason := target(svcObject(key), s.Waypoint)
		for _, port := range s.Ports {
			k := bpf.WaypointKey{SvcId: id, Port: htons(port.Port)}
			if port.ServerFirst {
				put(k, serverFirst(s.Waypoint), "")
			} else {
				put(k, v, reason)
			}
		}
	}
	for _, uid := range sortedSet(wls) {
		w := d.plannedWorkload(p, uid)
		if w == nil || w.waypointRef() == nil {
			continue
		}
		v, reason := target(wlObject(uid), w.waypointRef())
		// The workload's addresses: its first of each family (as for
		// endpoints), v4 mapped like every address key.
		for fam := range w.ep.has {
			if !w.ep.has[fam] {
				continue
			}
			addr := w.ep.addr[fam]
			put(bpf.WaypointKey{Addr: addr}, v, reason)
			for _, m := range w.members() {
				s := d.plannedService(p, m.key)
				if s == nil {
					continue
				}
				for _, port := range s.Ports {
					if port.ServerFirst {
						put(bpf.WaypointKey{Addr: addr, Port: htons(targetPort(port, m.ports))}, serverFirst(w.waypointRef()), "")
					}
				}
			}
			wp.next.wlEntries = true
		}
	}
	for k := range wp.next.entries {
		if k.SvcId != 0 {
			wp.next.svcEntries = true
			break
		}
	}
	if len(wp.next.entries) > bpf.MaxWaypoints {
		return &CapacityError{Map: bpf.MapWaypoint, Limit: bpf.MaxWaypoints, What: "the waypoint entries of this change"}
	}

	// Waypoint instances: enrolled members of waypoint services.
	for ref := range refs {
		for _, w := range d.plannedMembers(p, ref) {
			if w.enrolment().present {
				wp.next.exempt[strings.Clone(w.uid())] = true
			}
		}
	}

	for k, v := range wp.next.entries {
		if cur, ok := d.wp.entries[k]; !ok || cur != v {
			wp.put = append(wp.put, k)
		}
	}
	for k := range d.wp.entries {
		if _, ok := wp.next.entries[k]; !ok {
			wp.del = append(wp.del, k)
		}
	}
	for uid := range wp.next.exempt {
		if !d.wp.exempt[uid] {
			wp.exemptOn = append(wp.exemptOn, uid)
		}
	}
	for uid := range d.wp.exempt {
		if !wp.next.exempt[uid] {
			wp.exemptOff = append(wp.exemptOff, uid)
		}
	}
	p.wp = wp
	return nil
}

// enrolFlags are the km_enrol flags of workload uid after plan p.
func (d *Dataplane) enrolFlags(p *plan, uid string) uint32 {
	exempt := d.wp.exempt[uid]
	if p.wp != nil {
		exempt = p.wp.next.exempt[uid]
	}
	if exempt {
		return bpf.EnrolWaypoint
	}
	return 0
}

// writeEnrolment (re)writes the enrolment entries of a workload.
func (d *Dataplane) writeEnrolment(e enrolKey, v bpf.Enrol) error {
	if e.cgroup != 0 {
		if err := d.obj.Maps[bpf.MapEnrolCg].Put(e.cgroup, v); err != nil {
			return fmt.Errorf("enrolling cgroup %s: %w", e.cgPath, err)
		}
	}
	if e.netns != 0 {
		if err := d.obj.Maps[bpf.MapEnrolNs].Put(e.netns, v); err != nil {
			return fmt.Errorf("enrolling netns %s: %w", e.nsPath, err)
		}
	}
	return nil
}

// commitExemptOn marks new waypoint instances before any entry could send
// their own connects to a waypoint (commit step 1).
func (d *Dataplane) commitExemptOn(p *plan) error {
	if p.wp == nil {
		return nil
	}
	for _, uid := range p.wp.exemptOn {
		w := d.plannedWorkload(p, uid)
		if w == nil {
			continue
		}
		if err := d.writeEnrolment(w.enrolment(), bpf.Enrol{WorkloadId: w.id, Flags: bpf.EnrolWaypoint}); err != nil {
			return err
		}
	}
	return nil
}

// commitWaypoints writes km_waypoint (after the services it names are
// active), then drops exemptions that no longer apply (last commit step).
func (d *Dataplane) commitWaypoints(p *plan) error {
	if p.wp == nil {
		return nil
	}
	m := d.obj.Maps[bpf.MapWaypoint]
	warned := map[string]bool{}
	for _, k := range p.wp.put {
		v := p.wp.next.entries[k]
		if err := m.Put(&k, &v); err != nil {
			return fmt.Errorf("writing %s: %w", bpf.MapWaypoint, err)
		}
		if r, ok := p.wp.reasons[k]; ok && !warned[r] {
			warned[r] = true
			d.log.Warn("waypoint unusable: connections that need it fail with ECONNREFUSED until it is", "reason", r)
		}
	}
	// The switches change between the writes and the deletes: they turn on
	// once the entries exist and off before they go.
	if p.wp.next.wlEntries != d.wp.wlEntries || p.wp.next.svcEntries != d.wp.svcEntries {
		d.wp.wlEntries, d.wp.svcEntries = p.wp.next.wlEntries, p.wp.next.svcEntries
		if err := d.writeConfig(); err != nil {
			return err
		}
	}
	for _, k := range p.wp.del {
		if err := m.Delete(&k); err != nil && !errors.Is(err, errNotExist) {
			return fmt.Errorf("deleting from %s: %w", bpf.MapWaypoint, err)
		}
	}
	for _, uid := range p.wp.exemptOff {
		w := d.wls.get(uid)
		if w == nil || !w.enrolment().present {
			continue // gone, with its enrolment
		}
		if err := d.writeEnrolment(w.enrolment(), bpf.Enrol{WorkloadId: w.id}); err != nil {
			return err
		}
	}
	d.wp = p.wp.next
	return nil
}

// adoptWaypoints rebuilds the waypoint state from pinned maps (adopt).
func (d *Dataplane) adoptWaypoints() error {
	d.wp = wpState{entries: map[bpf.WaypointKey]bpf.WaypointVal{}, svcs: map[string]bool{}, wls: map[string]bool{},
		exempt: map[string]bool{}}
	var k bpf.WaypointKey
	var v bpf.WaypointVal
	it := d.obj.Maps[bpf.MapWaypoint].Iterate()
	for it.Next(&k, &v) {
		d.wp.entries[k] = v
		if k.SvcId == 0 {
			d.wp.wlEntries = true
		} else {
			d.wp.svcEntries = true
		}
	}
	if err := it.Err(); err != nil {
		return err
	}
	for s := range d.svcs.services() {
		if d.svcModel(s).Waypoint != nil {
			d.wp.svcs[strings.Clone(d.svcs.key(s))] = true // kept in d.wp
		}
	}
	for w := range d.wls.all() {
		uid := strings.Clone(w.uid()) // kept in d.wp
		if w.waypointRef() != nil {
			d.wp.wls[uid] = true
		}
		var e bpf.Enrol
		k := w.enrolment()
		if k.cgroup != 0 && d.obj.Maps[bpf.MapEnrolCg].Lookup(k.cgroup, &e) == nil && e.Flags&bpf.EnrolWaypoint != 0 {
			d.wp.exempt[uid] = true
		}
		if k.netns != 0 && d.obj.Maps[bpf.MapEnrolNs].Lookup(k.netns, &e) == nil && e.Flags&bpf.EnrolWaypoint != 0 {
			d.wp.exempt[uid] = true
		}
	}
	return nil
}

// wpConfigFlags are the km_config flags for waypoints.
func (d *Dataplane) wpConfigFlags() uint32 {
	var f uint32
	if d.opts.WaypointProtocol == WaypointKmeshTLV {
		f |= bpf.ConfigWpTLV
	}
	if d.wp.wlEntries {
		f |= bpf.ConfigWlWaypoints
	}
	if !d.wp.svcEntries {
		f |= bpf.ConfigNoSvcWaypoints
	}
	return f
}

// Waypoints returns km_waypoint's content as the dataplane wrote it (tests,
// diagnostics).
func (d *Dataplane) Waypoints() map[bpf.WaypointKey]bpf.WaypointVal {
	d.mu.Lock()
	defer d.mu.Unlock()
	out := make(map[bpf.WaypointKey]bpf.WaypointVal, len(d.wp.entries))
	for k, v := range d.wp.entries {
		out[k] = v
	}
	return out
}

func sortedSet(m map[string]bool) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}
