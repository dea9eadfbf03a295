package dataplane

import (
	"errors"
	"fmt"

	"github.com/kmesh-go/kmesh/pkg/bpf"
)

// commit writes a plan to the maps in an order under which every concurrent
// connect() sees either the old or the new state of each service:
//
//  1. new backends and enrolments are written (nothing references them yet);
//  2. frontends that go away are deleted (connects to them pass through);
//  3. each changed service gets a complete new generation, then one atomic
//     flip (bpf.Objects.Flip) makes it active; the old one is retired;
//  4. new frontends are written (their services are already active);
//  5. superseded backends and enrolments are retired/removed.
//
// Retired generations and backends are deleted by the collector after an RCU
// grace period, never while a program may still read them.
func (d *Dataplane) commit(p *plan) error {
	maps := d.obj.Maps

	// 1. backends and enrolments.
	var bk []uint32
	var bv []bpf.Backend
	for _, wp := range p.wlUp {
		if wp.newBackend {
			bk = append(bk, wp.backend)
			bv = append(bv, wp.beVal)
		}
	}
	if err := putBatch(maps[bpf.MapBackend], bk, bv); err != nil {
		return fmt.Errorf("writing %s: %w", bpf.MapBackend, err)
	}
	d.live.backends += len(bk)
	d.nextBackend = p.nextBackend
	levelsChanged := false
	for uid, wp := range p.wlUp {
		cur := d.wls[uid]
		if e := wp.enrol; e.cgroup != 0 && (cur == nil || cur.enrol.cgroup != e.cgroup) {
			if err := maps[bpf.MapEnrolCg].Put(e.cgroup, bpf.Enrol{WorkloadId: wp.id}); err != nil {
				return fmt.Errorf("enrolling cgroup %s: %w", e.cgPath, err)
			}
			d.enrolCg[e.cgroup] = wp.id
			if d.cgLevels[e.level]++; d.cgLevels[e.level] == 1 {
				levelsChanged = true
			}
		}
		if e := wp.enrol; e.netns != 0 && (cur == nil || cur.enrol.netns != e.netns) {
			if err := maps[bpf.MapEnrolNs].Put(e.netns, bpf.Enrol{WorkloadId: wp.id}); err != nil {
				return fmt.Errorf("enrolling netns %s: %w", e.nsPath, err)
			}
			d.enrolNs[e.netns] = wp.id
		}
	}
	if levelsChanged {
		if err := d.writeConfig(); err != nil {
			return err
		}
	}

	// 2. frontends that go away.
	for _, k := range p.feDel {
		if err := maps[bpf.MapFrontend].Delete(&k); err != nil && !errors.Is(err, errNotExist) {
			return fmt.Errorf("deleting frontend: %w", err)
		}
		delete(d.frontends, k)
	}

	// 3. services.
	for key := range p.svcDel {
		s := d.svcs[key]
		if s.gen != 0 {
			if err := d.retireActive(s, 0); err != nil {
				return err
			}
		}
		delete(d.svcs, key)
		d.svcIDs.release(key)
	}
	for key, r := range p.renders {
		s := d.svcs[key]
		if s == nil {
			id, _ := d.svcIDs.lookup(key)
			s = &svcState{id: id}
		}
		if up := p.svcUp[key]; up != nil {
			s.svc = up
			s.fe = frontendKeys(up)
		}
		d.svcs[key] = s
		if s.gen != 0 && s.digest == r.digest {
			continue
		}
		if err := d.writeGeneration(s, r); err != nil {
			return err
		}
	}

	// 4. new frontends.
	for _, k := range p.feAdd {
		v := bpf.FrontendVal{SvcId: p.fe[k], Addr: k.Addr, Port: k.Port}
		if err := maps[bpf.MapFrontend].Put(&k, &v); err != nil {
			return fmt.Errorf("writing frontend: %w", err)
		}
		d.frontends[k] = p.fe[k]
	}

	// 5. workload bookkeeping; superseded backends and enrolments.
	for uid := range p.wlDel {
		cur := d.wls[uid]
		if err := d.dropEnrolment(cur.enrol, enrolKey{}, &levelsChanged); err != nil {
			return err
		}
		if cur.backend != 0 {
			d.retireBackend(cur.backend)
		}
		for key := range cur.wl.Services {
			delete(d.members[key], uid)
			if len(d.members[key]) == 0 {
				delete(d.members, key)
			}
		}
		delete(d.wls, uid)
		d.wlIDs.release(uid)
	}
	for uid, wp := range p.wlUp {
		cur := d.wls[uid]
		if cur != nil {
			if err := d.dropEnrolment(cur.enrol, wp.enrol, &levelsChanged); err != nil {
				return err
			}
			if cur.backend != 0 && cur.backend != wp.backend {
				d.retireBackend(cur.backend)
			}
			for key := range cur.wl.Services {
				delete(d.members[key], uid)
			}
		}
		for key := range wp.wl.Services {
			if d.members[key] == nil {
				d.members[key] = map[string]bool{}
			}
			d.members[key][uid] = true
		}
		d.wls[uid] = &wlState{id: wp.id, wl: wp.wl, backend: wp.backend, beVal: wp.beVal, enrol: wp.enrol}
	}
	for key, set := range d.members {
		if len(set) == 0 {
			delete(d.members, key)
		}
	}
	if levelsChanged {
		if err := d.writeConfig(); err != nil {
			return err
		}
	}
	d.node = p.node
	if p.full {
		if err := d.sweepUnowned(); err != nil {
			return err
		}
	}
	if len(d.legacyBackends) > 0 && d.allRewritten() {
		for _, id := range d.legacyBackends {
			d.retireBackend(id)
		}
		d.legacyBackends = nil
	}
	return nil
}

// writeGeneration writes r as a new generation of s and makes it active.
func (d *Dataplane) writeGeneration(s *svcState, r rendered) error {
	maps := d.obj.Maps
	if err := d.reserve(r.total); err != nil {
		return err
	}
	gen := d.nextGen(s.id)
	keys := make([]bpf.SlotKey, 0, r.total)
	vals := make([]bpf.Slot, 0, r.total)
	for f := range r.slots {
		for t := range r.slots[f] {
			for i, sl := range r.slots[f][t] {
				keys = append(keys, bpf.SlotKey{SvcId: s.id, Gen: gen, Family: uint8(f), Tier: uint8(t), Idx: uint32(i)})
				vals = append(vals, sl)
			}
		}
	}
	if err := putBatch(maps[bpf.MapEndpoint], keys, vals); err != nil {
		return fmt.Errorf("writing %s for service id %d: %w", bpf.MapEndpoint, s.id, err)
	}
	rec := r.rec
	if err := maps[bpf.MapSvcGen].Put(bpf.SvcKey{SvcId: s.id, Gen: gen}, &rec); err != nil {
		return fmt.Errorf("writing %s for service id %d: %w", bpf.MapSvcGen, s.id, err)
	}
	d.live.slots += r.total
	d.live.gens++
	if err := d.retireActive(s, gen); err != nil {
		return err
	}
	s.gen, s.count, s.digest = gen, r.rec.Count, r.digest
	return nil
}

// retireActive flips s to gen (0 = no generation: connects pass through) and
// hands the generation it replaced to the collector.
func (d *Dataplane) retireActive(s *svcState, gen uint32) error {
	old, err := d.obj.Flip(s.id, gen)
	if err != nil {
		return err
	}
	if old != 0 {
		cnt := s.count
		if old != s.gen {
			cnt = [bpf.Families][bpf.MaxTiers]uint32{} // unknown (adopted): the collector tolerates missing keys
			if rec, ok := d.readRec(s.id, old); ok {
				cnt = rec.Count
			}
		}
		d.gc.retireGen(retiredGen{svc: s.id, gen: old, count: cnt})
		d.live.slots -= countSlots(cnt)
		d.live.gens--
	}
	if gen == 0 {
		s.gen = 0
	}
	return nil
}

func (d *Dataplane) readRec(svc, gen uint32) (bpf.SvcRec, bool) {
	var rec bpf.SvcRec
	err := d.obj.Maps[bpf.MapSvcGen].Lookup(bpf.SvcKey{SvcId: svc, Gen: gen}, &rec)
	return rec, err == nil
}

func (d *Dataplane) retireBackend(id uint32) {
	d.gc.retireBackend(id)
	d.live.backends--
}

// reserve makes room for n more slots and one generation, reclaiming
// retired entries synchronously when the maps are nearly full. The plan has
// checked that the end state fits.
func (d *Dataplane) reserve(n int) error {
	ps, pg, _ := d.gc.pending()
	if d.live.slots+ps+n <= capSlots && d.live.gens+pg+1 <= capSvcGens {
		return nil
	}
	if err := d.gc.collect(); err != nil {
		return err
	}
	ps, pg, _ = d.gc.pending()
	if d.live.slots+ps+n > capSlots {
		return &CapacityError{Map: bpf.MapEndpoint, Limit: capSlots, What: fmt.Sprintf("%d endpoint slots", n)}
	}
	if d.live.gens+pg+1 > capSvcGens {
		return &CapacityError{Map: bpf.MapSvcGen, Limit: capSvcGens, What: "a service generation"}
	}
	return nil
}

func (d *Dataplane) nextGen(svc uint32) uint32 {
	g := d.genSeq[svc] + 1
	if g == 0 {
		g = 1
	}
	d.genSeq[svc] = g
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
	if err := d.obj.Maps[bpf.MapConfig].Put(uint32(0), &cfg); err != nil {
		return fmt.Errorf("writing %s: %w", bpf.MapConfig, err)
	}
	return nil
}

// allRewritten reports whether every service's active generation was
// written by this process (so adopted backends are no longer referenced).
func (d *Dataplane) allRewritten() bool {
	for _, s := range d.svcs {
		if s.gen != 0 && s.digest == 0 {
			return false
		}
	}
	return true
}
