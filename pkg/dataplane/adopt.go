package dataplane

import (
	"errors"
	"fmt"

	"github.com/cilium/ebpf"

	"github.com/kmesh-go/kmesh/pkg/bpf"
)

var errNotExist = ebpf.ErrKeyNotExist

// adopt rebuilds the in-memory view from pinned state left by a previous
// daemon. The maps are authoritative (they are what connects use); the
// state file supplies keys and the model behind the ids. Nothing is changed
// that connects could notice: services keep their active generation until
// the next update rewrites them; only entries no running program can reach
// (generations that are not active) are handed to the collector.
func (d *Dataplane) adopt() error {
	if d.obj.Adoption.Fresh() {
		return nil
	}
	maps := d.obj.Maps

	// Active generations.
	active := map[uint32]uint32{}
	var svc, gen uint32
	it := maps[bpf.MapSvcActive].Iterate()
	for it.Next(&svc, &gen) {
		if gen != 0 {
			active[svc] = gen
		}
	}
	if err := it.Err(); err != nil {
		return err
	}
	// Every generation present; inactive ones are garbage.
	var sk bpf.SvcKey
	var rec bpf.SvcRec
	// Per generation, its slot counts in km_endpoint (none when inline).
	recs := map[bpf.SvcKey][bpf.Families][bpf.MaxTiers]uint32{}
	it = maps[bpf.MapSvcGen].Iterate()
	for it.Next(&sk, &rec) {
		recs[sk] = endpointCounts(&rec)
		if sk.Gen > d.svcs.lastGen(sk.SvcId) {
			d.svcs.setLastGen(sk.SvcId, sk.Gen)
		}
	}
	if err := it.Err(); err != nil {
		return err
	}
	for k, r := range recs {
		if active[k.SvcId] == k.Gen {
			d.live.gens++
			d.live.slots += countSlots(r)
			continue
		}
		d.gc.retireGen(retiredGen{svc: k.SvcId, gen: k.Gen, count: r})
	}
	// Frontends as they are.
	var fk bpf.FrontendKey
	var fv bpf.FrontendVal
	it = maps[bpf.MapFrontend].Iterate()
	for it.Next(&fk, &fv) {
		d.frontends.set(fk, fv.SvcId)
	}
	if err := it.Err(); err != nil {
		return err
	}
	// Enrolments as they are.
	var ek uint64
	var ev bpf.Enrol
	it = maps[bpf.MapEnrolCg].Iterate()
	for it.Next(&ek, &ev) {
		d.enrolCg[ek] = ev.WorkloadId
	}
	if err := it.Err(); err != nil {
		return err
	}
	it = maps[bpf.MapEnrolNs].Iterate()
	for it.Next(&ek, &ev) {
		d.enrolNs[ek] = ev.WorkloadId
	}
	if err := it.Err(); err != nil {
		return err
	}
	var cfg bpf.Config
	if err := maps[bpf.MapConfig].Lookup(uint32(0), &cfg); err == nil {
		// Enrolments we cannot attribute yet keep working until a full sync.
		d.legacyLevels = cfg.CgroupLevels
	}

	// Service ids in use stay reserved until a key claims them.
	for id := range active {
		d.svcs.reserved[id] = true
	}
	st, err := readState(d.opts.StateDir)
	if err != nil {
		d.log.Warn("ignoring unreadable dataplane state; ids are re-derived and the next full sync rewrites everything", "err", err)
		st = nil
	}
	var want feTable // the services' frontends, to compare with km_frontend's
	if st != nil {
		d.node = st.Node
		for _, ps := range st.Services {
			if ps.Service == nil || ps.ID == 0 || ps.ID >= bpf.MaxServices {
				continue
			}
			key := ps.Service.Key
			_, dupKey := d.svcs.lookup(key)
			if _, dupID := d.svcs.idKey(ps.ID); dupKey || dupID {
				// A file this daemon wrote names each key and id once.
				d.log.Warn("ignoring a service of the dataplane state that repeats a key or an id", "service", key, "id", ps.ID)
				continue
			}
			d.svcs.setID(key, ps.ID)
			for _, k := range frontendKeys(ps.Service) {
				want.set(k, ps.ID)
			}
			slot, _ := d.svcs.slotOf(key)
			d.svcs.setSvc(slot, encodeService(ps.Service))
			s := d.svcs.rec(slot)
			if s.gen = active[ps.ID]; s.gen != 0 {
				s.slots = uint32(countSlots(recs[bpf.SvcKey{SvcId: ps.ID, Gen: s.gen}]))
			}
			// digest 0: content unknown, so the next update rewrites it.
		}
		d.wls.reserve(len(st.Workloads)) // sized once, as for a first full push
		members := map[uint32][]uint32{} // by service table slot
		for _, w := range st.Workloads {
			if w.id == 0 || w.uid() == "" || d.wls.getID(w.id) != nil || d.wls.get(w.uid()) != nil {
				continue
			}
			w.loc = d.internLoc(*w.loc)
			if ms := w.members(); len(ms) == 1 && ms[0].ports == nil {
				w.svcs = d.internMembership(ms[0].key)
			} else {
				for i := range ms { // the state's own list
					ms[i].key = d.internKey(ms[i].key)
				}
			}
			if w.enrolment().cgroup != 0 {
				d.cgLevels[w.enrolment().level]++
			}
			d.installWorkload(w)
			d.addMemberships(w, members)
		}
		for s, ids := range members {
			d.svcs.setMembers(s, ids)
		}
	}
	d.feStale = !sameFrontends(&want, &d.frontends)
	if err := d.adoptWaypoints(); err != nil {
		return fmt.Errorf("adopting %s: %w", bpf.MapWaypoint, err)
	}
	d.svcs.compact()
	d.log.Info("adopted pinned dataplane", "services", d.svcs.nSvc, "workloads", d.wls.len(),
		"active_generations", len(active), "frontends", d.frontends.len())
	return nil
}

// sameFrontends reports whether a and b hold the same frontends, with the
// same ids.
func sameFrontends(a, b *feTable) bool {
	if a.len() != b.len() {
		return false
	}
	for k, id := range a.all() {
		if o, ok := b.get(k); !ok || o != id {
			return false
		}
	}
	return true
}

// sweepUnowned removes what a full sync did not claim: services still active
// under ids no key owns and enrolments no workload owns. Called after a full
// Apply, when the dataplane holds exactly the snapshot.
func (d *Dataplane) sweepUnowned() error {
	for id := range d.svcs.reserved {
		if err := d.retireActive(id, 0, 0, 0); err != nil {
			return err
		}
		delete(d.svcs.reserved, id)
	}
	owned := map[uint64]bool{}
	ownedNs := map[uint64]bool{}
	for w := range d.wls.all() {
		if e := w.enrolled(); e != nil {
			owned[e.cgroup] = true
			ownedNs[e.netns] = true
		}
	}
	for id := range d.enrolCg {
		if !owned[id] {
			if err := d.obj.Maps[bpf.MapEnrolCg].Delete(id); err != nil && !errors.Is(err, errNotExist) {
				return err
			}
			delete(d.enrolCg, id)
		}
	}
	for c := range d.enrolNs {
		if !ownedNs[c] {
			if err := d.obj.Maps[bpf.MapEnrolNs].Delete(c); err != nil && !errors.Is(err, errNotExist) {
				return err
			}
			delete(d.enrolNs, c)
		}
	}
	d.legacyLevels = 0
	return d.writeConfig()
}
