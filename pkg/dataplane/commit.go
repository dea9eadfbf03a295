package dataplane

import (
	"errors"
	"fmt"

	"github.com/kmesh-go/kmesh/pkg/bpf"
)

// commit writes a plan to the maps in an order under which every concurrent
// connect() sees either the old or the new state of each service:
//
//  1. new enrolments are written, and new waypoint instances are marked
//     exempt from waypoints;
//  2. frontends that go away are deleted (connects to them pass through);
//  3. each changed service gets a complete new generation, then one atomic
//     flip (bpf.Objects.Flip) makes it active; the old one is retired;
//  4. new frontends are written (their services are already active);
//  5. superseded enrolments are removed;
//  6. waypoint entries are written (the services they name are active), then
//     exemptions that no longer apply are dropped.
//
// Retired generations are deleted by the collector after an RCU grace
// period, never while a program may still read them.
func (d *Dataplane) commit(p *plan) error {
	maps := d.obj.Maps

	// 1. enrolments.
	levelsChanged := false
	for _, uid := range p.special {
		st, cur := p.wlUp[uid], d.wls.get(uid)
		if e := st.enrolment(); e.cgroup != 0 && (cur == nil || cur.enrolment().cgroup != e.cgroup) {
			if err := maps[bpf.MapEnrolCg].Put(e.cgroup, bpf.Enrol{WorkloadId: st.id, Flags: d.enrolFlags(p, uid)}); err != nil {
				return fmt.Errorf("enrolling cgroup %s: %w", e.cgPath, err)
			}
			d.enrolCg[e.cgroup] = st.id
			if d.cgLevels[e.level]++; d.cgLevels[e.level] == 1 {
				levelsChanged = true
			}
		}
		if e := st.enrolment(); e.netns != 0 && (cur == nil || cur.enrolment().netns != e.netns) {
			if err := maps[bpf.MapEnrolNs].Put(e.netns, bpf.Enrol{WorkloadId: st.id, Flags: d.enrolFlags(p, uid)}); err != nil {
				return fmt.Errorf("enrolling netns %s: %w", e.nsPath, err)
			}
			d.enrolNs[e.netns] = st.id
		}
	}
	if levelsChanged {
		if err := d.writeConfig(); err != nil {
			return err
		}
	}
	if err := d.commitExemptOn(p); err != nil {
		return err
	}

	// 2. frontends that go away.
	if err := deleteKeys(maps[bpf.MapFrontend], p.feDel); err != nil {
		return fmt.Errorf("deleting frontends: %w", err)
	}
	for _, k := range p.feDel {
		d.frontends.del(k)
	}

	// 3. services.
	for key := range p.svcDel {
		slot, _ := d.svcs.svcSlot(key)
		if s := d.svcs.rec(slot); s.gen != 0 {
			if err := d.retireActive(s.id, s.gen, s.slots, 0); err != nil {
				return err
			}
			s.gen = 0
		}
		d.svcs.release(key)
		d.svcs.dropSvc(slot)
	}
	var changed []genWrite
	for key, r := range p.renders {
		// Every rendered service is installed or upserted, with an id.
		slot, ok := d.svcs.slotOf(key)
		if !ok || d.svcs.rec(slot).id == 0 {
			return fmt.Errorf("service %q has no id", key)
		}
		if up := p.svcUp[key]; up != nil {
			d.svcs.setSvc(slot, encodeService(up))
		}
		if s := d.svcs.rec(slot); s.gen != 0 && s.getDigest() == r.digest {
			continue
		}
		changed = append(changed, genWrite{slot, r})
	}
	if err := d.writeGenerations(changed); err != nil {
		return err
	}

	// 4. new frontends.
	if len(p.feAdd) > 0 {
		vals := make([]bpf.FrontendVal, len(p.feAdd))
		for i, k := range p.feAdd {
			vals[i] = bpf.FrontendVal{SvcId: p.feAddID[i], Addr: k.Addr, Port: k.Port}
		}
		if err := putBatch(maps[bpf.MapFrontend], p.feAdd, vals); err != nil {
			return fmt.Errorf("writing frontends: %w", err)
		}
		if d.frontends.len() == 0 {
			d.frontends.reserve(len(p.feAdd))
		}
		for i, k := range p.feAdd {
			d.frontends.set(k, vals[i].SvcId)
		}
	}
	if p.fePlanned {
		d.feStale = false // frontends is the services' frontends now
	}

	// 5. workload bookkeeping; superseded enrolments.
	if d.wls.len() == 0 && len(p.wlUp) > 1024 {
		// The first full push: size the indexes once.
		d.wls.reserve(len(p.wlUp))
	}
	// Member lists first: should a step below fail, they name workloads
	// of the plan, which readers skip while they have no state.
	d.setMembers(p)
	for uid := range p.wlDel {
		cur := d.wls.get(uid)
		if err := d.dropEnrolment(cur.enrolment(), enrolKey{}, &levelsChanged); err != nil {
			return err
		}
		d.removeWorkload(cur)
	}
	for uid, st := range p.wlUp {
		cur := d.wls.get(uid)
		if cur != nil {
			if err := d.dropEnrolment(cur.enrolment(), st.enrolment(), &levelsChanged); err != nil {
				return err
			}
		}
		d.installWorkload(st)
	}
	if levelsChanged {
		if err := d.writeConfig(); err != nil {
			return err
		}
	}
	// 6. waypoints.
	if err := d.commitWaypoints(p); err != nil {
		return err
	}
	d.node = p.node
	if p.full {
		if err := d.sweepUnowned(); err != nil {
			return err
		}
	}
	return nil
}

type genWrite struct {
	slot uint32 // in d.svcs
	r    rendered
}

// writeGenerations writes new generations of many services with a few batch
// syscalls, then flips each. When the maps cannot hold all of them next to
// the generations they replace, it goes service by service, reclaiming
// retired entries in between.
func (d *Dataplane) writeGenerations(ws []genWrite) error {
	total := 0 // km_endpoint entries
	for _, w := range ws {
		total += w.r.endpointSlots()
	}
	ps, pg := d.gc.pending()
	if len(ws) < 2 || d.live.slots+ps+total > capSlots || d.live.gens+pg+len(ws) > capSvcGens {
		for _, w := range ws {
			if err := d.writeGeneration(w.slot, w.r); err != nil {
				return err
			}
		}
		return nil
	}
	maps := d.obj.Maps
	keys := make([]bpf.SlotKey, 0, total)
	vals := make([]bpf.Slot, 0, total)
	recKeys := make([]bpf.SvcKey, 0, len(ws))
	recs := make([]bpf.SvcRec, 0, len(ws))
	gens := make([]uint32, len(ws))
	for i, w := range ws {
		id := d.svcs.rec(w.slot).id
		gens[i] = d.nextGen(id)
		keys, vals = appendSlots(keys, vals, id, gens[i], &w.r)
		recKeys = append(recKeys, bpf.SvcKey{SvcId: id, Gen: gens[i]})
		recs = append(recs, w.r.rec)
	}
	if err := putBatch(maps[bpf.MapEndpoint], keys, vals); err != nil {
		return fmt.Errorf("writing %s: %w", bpf.MapEndpoint, err)
	}
	if err := putBatch(maps[bpf.MapSvcGen], recKeys, recs); err != nil {
		return fmt.Errorf("writing %s: %w", bpf.MapSvcGen, err)
	}
	d.live.slots += total
	d.live.gens += len(ws)
	for i, w := range ws {
		s := d.svcs.rec(w.slot)
		if err := d.retireActive(s.id, s.gen, s.slots, gens[i]); err != nil {
			return err
		}
		s.gen, s.slots = gens[i], uint32(w.r.endpointSlots())
		s.setDigest(w.r.digest)
	}
	return nil
}

// appendSlots adds the km_endpoint entries of r (none when it is inline).
func appendSlots(keys []bpf.SlotKey, vals []bpf.Slot, svc, gen uint32, r *rendered) ([]bpf.SlotKey, []bpf.Slot) {
	if r.inline() {
		return keys, vals
	}
	for f := range r.slots {
		for t := range r.slots[f] {
			for i, sl := range r.slots[f][t] {
				keys = append(keys, bpf.SlotKey{SvcId: svc, Gen: gen, Family: uint8(f), Tier: uint8(t), Idx: uint32(i)})
				vals = append(vals, sl)
			}
		}
	}
	return keys, vals
}

// writeGeneration writes r as a new generation of the service in slot and
// makes it active.
func (d *Dataplane) writeGeneration(slot uint32, r rendered) error {
	maps := d.obj.Maps
	n := r.endpointSlots()
	if err := d.reserve(n); err != nil {
		return err
	}
	id := d.svcs.rec(slot).id
	gen := d.nextGen(id)
	keys, vals := appendSlots(make([]bpf.SlotKey, 0, n), make([]bpf.Slot, 0, n), id, gen, &r)
	if err := putBatch(maps[bpf.MapEndpoint], keys, vals); err != nil {
		return fmt.Errorf("writing %s for service id %d: %w", bpf.MapEndpoint, id, err)
	}
	rec := r.rec
	if err := maps[bpf.MapSvcGen].Put(bpf.SvcKey{SvcId: id, Gen: gen}, &rec); err != nil {
		return fmt.Errorf("writing %s for service id %d: %w", bpf.MapSvcGen, id, err)
	}
	d.live.slots += n
	d.live.gens++
	s := d.svcs.rec(slot)
	if err := d.retireActive(id, s.gen, s.slots, gen); err != nil {
		return err
	}
	s.gen, s.slots = gen, uint32(n)
	s.setDigest(r.digest)
	return nil
}

// retireActive flips service id to gen (0 = no generation: connects pass
// through) and hands the generation it replaced to the collector. active and
// slots are the generation the dataplane has as active and its km_endpoint
// slot total (0: none known, e.g. an adopted id no key owns, or inline).
func (d *Dataplane) retireActive(id, active, slots, gen uint32) error {
	old, err := d.obj.Flip(id, gen)
	if err != nil {
		return err
	}
	if old != 0 {
		// The per-tier counts are the generation's record (services keep
		// only their total): one lookup per retired generation. An inline
		// record has nothing in km_endpoint; one without the flag (also a
		// record migrated from layout 1) has its slots there. A record
		// that cannot be read (only an adopted, foreign generation) counts
		// as empty: the collector tolerates missing keys.
		var cnt [bpf.Families][bpf.MaxTiers]uint32
		if rec, ok := d.readRec(id, old); ok {
			cnt = endpointCounts(&rec)
		}
		n := countSlots(cnt)
		if old == active {
			n = int(slots)
		}
		d.gc.retireGen(retiredGen{svc: id, gen: old, count: cnt})
		d.live.slots -= n
		d.live.gens--
	}
	return nil
}

func (d *Dataplane) readRec(svc, gen uint32) (bpf.SvcRec, bool) {
	var rec bpf.SvcRec
	err := d.obj.Maps[bpf.MapSvcGen].Lookup(bpf.SvcKey{SvcId: svc, Gen: gen}, &rec)
	return rec, err == nil
}

// reserve makes room for n more slots and one generation, reclaiming
// retired entries synchronously when the maps are nearly full. The plan has
// checked that the end state fits.
func (d *Dataplane) reserve(n int) error {
	ps, pg := d.gc.pending()
	if d.live.slots+ps+n <= capSlots && d.live.gens+pg+1 <= capSvcGens {
		return nil
	}
	if err := d.gc.collect(); err != nil {
		return err
	}
	ps, pg = d.gc.pending()
	if d.live.slots+ps+n > capSlots {
		return &CapacityError{Map: bpf.MapEndpoint, Limit: capSlots, What: fmt.Sprintf("%d endpoint slots", n)}
	}
	if d.live.gens+pg+1 > capSvcGens {
		return &CapacityError{Map: bpf.MapSvcGen, Limit: capSvcGens, What: "a service generation"}
	}
	return nil
}

func (d *Dataplane) nextGen(svc uint32) uint32 {
	g := d.svcs.lastGen(svc) + 1
	if g == 0 {
		g = 1
	}
	d.svcs.setLastGen(svc, g)
	return g
}

// dropEnrolment removes the map entries of old that next no longer has.
func (d *Dataplane) dropEnrolment(old, next enrolKey, levelsChanged *bool) error {
	maps := d.obj.Maps
	if old.cgroup != 0 && old.cgroup != next.cgroup {
		if err := maps[bpf.MapEnrolCg].Delete(old.cgroup); err != nil && !errors.Is(err, errNotExist) {
			return err
		}
		delete(d.enrolCg, old.cgroup)
		if d.cgLevels[old.level]--; d.cgLevels[old.level] <= 0 {
			delete(d.cgLevels, old.level)
			*levelsChanged = true
		}
	}
	if old.netns != 0 && old.netns != next.netns {
		if err := maps[bpf.MapEnrolNs].Delete(old.netns); err != nil && !errors.Is(err, errNotExist) {
			return err
		}
		delete(d.enrolNs, old.netns)
	}
	return nil
}

// writeConfig writes km_config from the options and enrolled cgroup depths.
func (d *Dataplane) writeConfig() error {
	cfg := bpf.Config{CgroupLevels: d.legacyLevels}
	for level := range d.cgLevels {
		cfg.CgroupLevels |= 1 << uint(level)
	}
	cfg.ReportIntervalNs = uint64(d.opts.ReportInterval.Nanoseconds())
	if d.opts.Accel {
		cfg.Flags |= bpf.ConfigAccel
	}
	cfg.Flags |= d.wpConfigFlags()
	if d.opts.NoEvents {
		cfg.Flags |= bpf.ConfigNoEvents
	}
	if err := d.obj.Maps[bpf.MapConfig].Put(uint32(0), &cfg); err != nil {
		return fmt.Errorf("writing %s: %w", bpf.MapConfig, err)
	}
	return nil
}

// SetEvents switches connection records (the ring buffer) on or off in the
// kernel: with monitoring off the telemetry path costs nothing per
// connection. A connection opened while records were off reports only its
// close (with its whole byte counts) if records are back on by then.
func (d *Dataplane) SetEvents(on bool) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	prev := d.opts.NoEvents
	d.opts.NoEvents = !on
	if err := d.writeConfig(); err != nil {
		d.opts.NoEvents = prev
		return err
	}
	return nil
}

// EventsEnabled reports whether connection records are on.
func (d *Dataplane) EventsEnabled() bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	return !d.opts.NoEvents
}
