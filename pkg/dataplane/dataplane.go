package dataplane

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"reflect"
	"sort"
	"sync"
	"time"

	"github.com/kmesh-go/kmesh/pkg/bpf"
	"github.com/kmesh-go/kmesh/pkg/model"
	"github.com/kmesh-go/kmesh/pkg/probe"
)

// Map capacities (bpf/lib/structs.h), for CapacityError.
const (
	capFrontends = 131072
	capSvcGens   = 131072
	capSlots     = 262144
	capBackends  = 262144
	capEnrol     = 16384
	wlIDLimit    = 1 << 24
)

// Options configure the dataplane. The zero value is usable on a node.
type Options struct {
	BPF bpf.Options
	// StateDir keeps ids and the last applied model across restarts.
	// Default /var/lib/kmesh.
	StateDir string
	// Accel turns on same-node acceleration (sk_msg redirect between
	// enrolled local sockets).
	Accel bool
	// ReportInterval makes sockops emit a PERIODIC record for connections
	// open longer than this (0 = only OPEN and CLOSE).
	ReportInterval time.Duration
	Logger         *slog.Logger
}

// DefaultStateDir is where ids and the applied model are kept.
const DefaultStateDir = "/var/lib/kmesh"

// Dataplane implements API on the eBPF maps. It is safe for concurrent use;
// calls are serialized.
type Dataplane struct {
	mu   sync.Mutex
	obj  *bpf.Objects
	log  *slog.Logger
	opts Options

	cgroupMount string
	node        model.Node
	svcIDs      *idSpace
	wlIDs       *idSpace
	svcs        map[string]*svcState
	wls         map[string]*wlState
	members     map[string]map[string]bool // service key -> uids of workloads naming it
	frontends   map[bpf.FrontendKey]uint32 // what km_frontend holds
	genSeq      map[uint32]uint32          // last generation used per service id
	nextBackend uint32
	live        counts
	enrolCg     map[uint64]uint32 // cgroup id -> workload id
	enrolNs     map[uint64]uint32 // netns cookie -> workload id
	cgLevels    map[int]int       // cgroup depth -> enrolled cgroups at it

	gc    *collector
	state *stateWriter
	// adopted pinned state not yet rewritten or attributed by this process
	legacyBackends []uint32
	legacyLevels   uint64
}

type counts struct{ slots, gens, backends int }

type svcState struct {
	id     uint32
	svc    *model.Service
	gen    uint32
	count  [bpf.Families][bpf.MaxTiers]uint32
	digest uint64
	fe     []bpf.FrontendKey
}

type wlState struct {
	id      uint32
	wl      *model.Workload
	backend uint32
	beVal   bpf.Backend
	enrol   enrolKey
}

var _ API = (*Dataplane)(nil)

// Open loads (or adopts) the pinned BPF dataplane and the persisted state.
func Open(opts Options) (*Dataplane, error) {
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	if opts.StateDir == "" {
		opts.StateDir = DefaultStateDir
	}
	if opts.BPF.Logger == nil {
		opts.BPF.Logger = opts.Logger
	}
	mount, err := probe.Cgroup2Mount(opts.BPF.Cgroup2)
	if err != nil {
		return nil, err
	}
	obj, err := bpf.Open(opts.BPF)
	if err != nil {
		return nil, err
	}
	d := &Dataplane{
		obj: obj, log: opts.Logger, opts: opts, cgroupMount: mount,
		svcIDs: newIDSpace(bpf.MaxServices), wlIDs: newIDSpace(wlIDLimit),
		svcs: map[string]*svcState{}, wls: map[string]*wlState{}, members: map[string]map[string]bool{},
		frontends: map[bpf.FrontendKey]uint32{}, genSeq: map[uint32]uint32{}, nextBackend: 1,
		enrolCg: map[uint64]uint32{}, enrolNs: map[uint64]uint32{}, cgLevels: map[int]int{},
	}
	d.gc = newCollector(obj, d.log)
	if err := d.adopt(); err != nil {
		d.gc.close()
		obj.Close()
		return nil, fmt.Errorf("adopting pinned dataplane state: %w", err)
	}
	if err := d.writeConfig(); err != nil {
		d.gc.close()
		obj.Close()
		return nil, err
	}
	d.state = newStateWriter(opts.StateDir, d.log, func() *persisted {
		d.mu.Lock()
		defer d.mu.Unlock()
		return d.snapshotState()
	})
	return d, nil
}

// Close stops background work and releases handles; the pinned dataplane
// keeps serving. The state file is flushed.
func (d *Dataplane) Close() error {
	d.mu.Lock()
	obj := d.obj
	d.obj = nil // later API calls fail
	d.mu.Unlock()
	if obj == nil {
		return nil
	}
	d.gc.close()
	d.state.close()
	return obj.Close()
}

// Objects exposes the loaded BPF objects (maps, programs) for diagnostics
// and tests.
func (d *Dataplane) Objects() *bpf.Objects { return d.obj }

// Stats returns the datapath counters (km_stats).
func (d *Dataplane) Stats() (map[bpf.Stat]uint64, error) { return d.obj.Stats() }

// ProgramStats returns run count and run time per attached program (needs
// bpf.EnableStats, or kernel.bpf_stats_enabled=1).
func (d *Dataplane) ProgramStats() ([]bpf.ProgramStats, error) { return d.obj.ProgramStats() }

// ServiceKey and WorkloadUID resolve the numeric ids found in connection
// records.
func (d *Dataplane) ServiceKey(id uint32) (string, bool) {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.svcIDs.key(id)
}

func (d *Dataplane) WorkloadUID(id uint32) (string, bool) {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.wlIDs.key(id)
}

// Usage reports map occupancy: entries live, and retired but not yet deleted.
type Usage struct {
	Services, Workloads, Frontends, Slots, Generations, Backends int
	PendingSlots, PendingGenerations, PendingBackends            int
}

func (d *Dataplane) Usage() Usage {
	d.mu.Lock()
	defer d.mu.Unlock()
	ps, pg, pb := d.gc.pending()
	return Usage{Services: len(d.svcs), Workloads: len(d.wls), Frontends: len(d.frontends),
		Slots: d.live.slots, Generations: d.live.gens, Backends: d.live.backends,
		PendingSlots: ps, PendingGenerations: pg, PendingBackends: pb}
}

// Sync waits until every retired entry has been deleted (tests, shutdown).
func (d *Dataplane) Sync() error {
	if err := d.gc.collect(); err != nil {
		return err
	}
	return d.gc.collect()
}

// ---- API ----------------------------------------------------------------

func (d *Dataplane) Apply(ctx context.Context, s *model.Snapshot) error {
	if s == nil {
		return &InvalidError{Object: "snapshot", Reason: "nil"}
	}
	ch := change{svcs: map[string]*model.Service{}, wls: map[string]*model.Workload{}, node: &s.Node, full: true}
	for i := range s.Services {
		svc := &s.Services[i]
		if _, dup := ch.svcs[svc.Key]; dup {
			return &InvalidError{Object: svcObject(svc.Key), Reason: "listed twice in the snapshot"}
		}
		ch.svcs[svc.Key] = svc
	}
	for i := range s.Workloads {
		wl := &s.Workloads[i]
		if _, dup := ch.wls[wl.UID]; dup {
			return &InvalidError{Object: wlObject(wl.UID), Reason: "listed twice in the snapshot"}
		}
		ch.wls[wl.UID] = wl
	}
	return d.run(ctx, ch)
}

func (d *Dataplane) UpsertService(ctx context.Context, svc model.Service) error {
	return d.run(ctx, change{svcs: map[string]*model.Service{svc.Key: &svc}})
}

func (d *Dataplane) DeleteService(ctx context.Context, key string) error {
	return d.run(ctx, change{svcs: map[string]*model.Service{key: nil}})
}

func (d *Dataplane) UpsertWorkload(ctx context.Context, wl model.Workload) error {
	return d.run(ctx, change{wls: map[string]*model.Workload{wl.UID: &wl}})
}

func (d *Dataplane) DeleteWorkload(ctx context.Context, uid string) error {
	return d.run(ctx, change{wls: map[string]*model.Workload{uid: nil}})
}

func (d *Dataplane) SetNode(ctx context.Context, n model.Node) error {
	return d.run(ctx, change{node: &n})
}

// change is one API call: upserts (non-nil) and deletes (nil) by key; with
// full set, everything not listed is deleted.
type change struct {
	svcs map[string]*model.Service
	wls  map[string]*model.Workload
	node *model.Node
	full bool
}

func wlObject(uid string) string { return fmt.Sprintf("workload %q", uid) }

func (d *Dataplane) run(ctx context.Context, ch change) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.obj == nil {
		return errors.New("dataplane is closed")
	}
	p, err := d.plan(ch)
	if err != nil {
		return err
	}
	if err := d.commit(p); err != nil {
		return err
	}
	d.state.mark()
	return nil
}

// ---- planning (no side effects) -----------------------------------------

type plan struct {
	full       bool
	node       model.Node
	nodeChange bool
	newSvcIDs  []string // keys assigned an id by this plan (released on failure)
	newWlIDs   []string

	svcUp  map[string]*model.Service // final content of upserted services
	svcDel map[string]bool
	wlUp   map[string]*wlPlan
	wlDel  map[string]bool

	renders map[string]rendered // services to (re)write
	fe      map[bpf.FrontendKey]uint32
	feAdd   []bpf.FrontendKey
	feDel   []bpf.FrontendKey
	members map[string]map[string]bool // membership changes: full sets for touched keys

	nextBackend uint32 // first backend id not handed out
}

type wlPlan struct {
	wl         *model.Workload
	id         uint32
	backend    uint32 // 0 when the workload has no address
	beVal      bpf.Backend
	newBackend bool
	enrol      enrolKey
}

func (d *Dataplane) plan(ch change) (_ *plan, err error) {
	// p is a local, not the named result: error returns set the result to nil,
	// and the deferred release below must still see the plan.
	p := &plan{node: d.node, full: ch.full, nextBackend: d.nextBackend, svcUp: map[string]*model.Service{}, svcDel: map[string]bool{},
		wlUp: map[string]*wlPlan{}, wlDel: map[string]bool{}, renders: map[string]rendered{},
		members: map[string]map[string]bool{}}
	assigned := p // ids assigned while planning go back if the plan fails
	defer func() {
		if err != nil {
			for _, k := range assigned.newSvcIDs {
				d.svcIDs.release(k)
			}
			for _, k := range assigned.newWlIDs {
				d.wlIDs.release(k)
			}
		}
	}()
	if ch.node != nil && !reflect.DeepEqual(*ch.node, d.node) {
		p.node, p.nodeChange = *ch.node, true
	}

	// Classify services.
	for key, svc := range ch.svcs {
		if svc == nil {
			if _, ok := d.svcs[key]; ok {
				p.svcDel[key] = true
			}
			continue
		}
		if err := validateService(svc); err != nil {
			return nil, err
		}
		if cur, ok := d.svcs[key]; ok && reflect.DeepEqual(cur.svc, svc) && !p.nodeChange {
			continue
		}
		cp := *svc
		p.svcUp[key] = &cp
		if _, ok := d.svcs[key]; !ok {
			if _, isNew, ok := d.svcIDs.assign(key); !ok {
				return nil, &CapacityError{Map: bpf.MapSvcActive, Limit: bpf.MaxServices - 1, What: svcObject(key)}
			} else if isNew {
				p.newSvcIDs = append(p.newSvcIDs, key)
			}
		}
	}
	if ch.full {
		for key := range d.svcs {
			if _, ok := ch.svcs[key]; !ok {
				p.svcDel[key] = true
			}
		}
	}

	// Classify workloads.
	touched := map[string]bool{} // services whose members or content change
	for key := range p.svcUp {
		touched[key] = true
	}
	for uid, wl := range ch.wls {
		cur := d.wls[uid]
		if wl == nil {
			if cur != nil {
				p.wlDel[uid] = true
			}
			continue
		}
		if cur != nil && reflect.DeepEqual(cur.wl, wl) {
			continue
		}
		wp, err := d.planWorkload(p, wl, cur)
		if err != nil {
			return nil, err
		}
		if cur == nil {
			p.newWlIDs = append(p.newWlIDs, uid)
		}
		p.wlUp[uid] = wp
	}
	if ch.full {
		for uid := range d.wls {
			if _, ok := ch.wls[uid]; !ok {
				p.wlDel[uid] = true
			}
		}
	}
	for uid := range p.wlDel {
		for key := range d.wls[uid].wl.Services {
			touched[key] = true
		}
	}
	for uid, wp := range p.wlUp {
		if cur := d.wls[uid]; cur != nil {
			for key := range cur.wl.Services {
				touched[key] = true
			}
		}
		for key := range wp.wl.Services {
			touched[key] = true
		}
	}
	if p.nodeChange {
		for key, s := range d.svcs {
			if s.svc.LB.Locality != model.LocalityNone {
				touched[key] = true
			}
		}
	}

	// Membership of touched services in the new view.
	for key := range touched {
		set := map[string]bool{}
		for uid := range d.members[key] {
			if !p.wlDel[uid] {
				set[uid] = true
			}
		}
		for uid, wp := range p.wlUp {
			if _, ok := wp.wl.Services[key]; ok {
				set[uid] = true
			} else {
				delete(set, uid)
			}
		}
		p.members[key] = set
	}

	// Render every touched service that exists in the new view.
	for key := range touched {
		if p.svcDel[key] {
			continue
		}
		svc := p.svcUp[key]
		if svc == nil {
			cur, ok := d.svcs[key]
			if !ok {
				continue // a workload names a service not (yet) known
			}
			svc = cur.svc
		}
		r, err := render(svc, d.membersOf(p, key), p.node)
		if err != nil {
			return nil, err
		}
		p.renders[key] = r
	}

	if err := d.planFrontends(p); err != nil {
		return nil, err
	}
	if err := d.checkCapacity(p); err != nil {
		return nil, err
	}
	return p, nil
}

// planWorkload validates a workload and prepares its backend and enrolment.
func (d *Dataplane) planWorkload(p *plan, wl *model.Workload, cur *wlState) (*wlPlan, error) {
	obj := wlObject(wl.UID)
	if wl.UID == "" {
		return nil, &InvalidError{Object: "workload", Reason: "empty uid"}
	}
	wp := &wlPlan{wl: new(model.Workload)}
	*wp.wl = *wl
	id, _, ok := d.wlIDs.assign(wl.UID)
	if !ok {
		return nil, &CapacityError{Map: "workload ids", Limit: wlIDLimit - 1, What: obj}
	}
	wp.id = id
	be, hasBackend, err := backendValue(wl, id)
	if err != nil {
		return nil, err
	}
	if e := wl.Enrolment; e != nil {
		if e.CgroupPath == "" && e.NetnsPath == "" {
			return nil, &InvalidError{Object: obj, Reason: "enrolment names neither a cgroup nor a netns"}
		}
		wp.enrol.present = true
		if e.CgroupPath != "" {
			id, level, abs, err := resolveCgroup(d.cgroupMount, e.CgroupPath)
			if err != nil {
				return nil, &InvalidError{Object: obj, Reason: "enrolment: " + err.Error()}
			}
			wp.enrol.cgroup, wp.enrol.level, wp.enrol.cgPath = id, level, abs
			if owner, ok := d.enrolCg[id]; ok && owner != wp.id {
				return nil, &InvalidError{Object: obj, Reason: fmt.Sprintf("cgroup %s is already enrolled by another workload", abs)}
			}
		}
		if e.NetnsPath != "" {
			c, err := netnsCookie(e.NetnsPath)
			if err != nil {
				return nil, &InvalidError{Object: obj, Reason: "enrolment: " + err.Error()}
			}
			wp.enrol.netns, wp.enrol.nsPath = c, e.NetnsPath
			if owner, ok := d.enrolNs[c]; ok && owner != wp.id {
				return nil, &InvalidError{Object: obj, Reason: fmt.Sprintf("netns %s is already enrolled by another workload", e.NetnsPath)}
			}
		}
	}
	if hasBackend {
		wp.beVal = be
		if cur != nil && cur.backend != 0 && cur.beVal == wp.beVal {
			wp.backend = cur.backend
		} else {
			wp.backend = p.nextBackend
			wp.newBackend = true
			if p.nextBackend++; p.nextBackend == 0 {
				p.nextBackend = 1
			}
		}
	}
	return wp, nil
}

// backendValue is the km_backend record of a workload: its first IPv4 and
// first IPv6 address, and whether it is local (enrolled on this node).
// ok is false for a workload without addresses.
func backendValue(wl *model.Workload, id uint32) (be bpf.Backend, ok bool, err error) {
	var v4, v6 netip.Addr
	for _, a := range wl.Addresses {
		if !a.IsValid() || a.IsUnspecified() || a.Zone() != "" {
			return be, false, &InvalidError{Object: wlObject(wl.UID), Reason: fmt.Sprintf("address %v is not usable", a)}
		}
		a = a.Unmap()
		if a.Is4() && !v4.IsValid() {
			v4 = a
		} else if a.Is6() && !v6.IsValid() {
			v6 = a
		}
	}
	if !v4.IsValid() && !v6.IsValid() {
		return be, false, nil
	}
	be.WorkloadId = id
	if v4.IsValid() {
		be.Addr4 = addr4(v4)
	}
	if v6.IsValid() {
		be.Addr6 = addr16(v6)
	}
	if wl.Enrolment != nil {
		be.Flags |= bpf.BackendLocal
	}
	return be, true, nil
}

// membersOf lists the members of service key in the planned view.
func (d *Dataplane) membersOf(p *plan, key string) []member {
	var out []member
	for uid := range p.members[key] {
		var wl *model.Workload
		var backend uint32
		var be bpf.Backend
		var id uint32
		if wp, ok := p.wlUp[uid]; ok {
			wl, backend, be, id = wp.wl, wp.backend, wp.beVal, wp.id
		} else if cur, ok := d.wls[uid]; ok {
			wl, backend, be, id = cur.wl, cur.backend, cur.beVal, cur.id
		} else {
			continue
		}
		if !wl.Healthy || backend == 0 {
			continue
		}
		out = append(out, member{id: id, backend: backend, v4: be.Addr4 != 0, v6: be.Addr6 != [4]uint32{},
			weight: wl.Weight, locality: wl.Locality, ports: wl.Services[key]})
	}
	return out
}

// planFrontends computes km_frontend's next content and the difference.
func (d *Dataplane) planFrontends(p *plan) error {
	if len(p.svcUp) == 0 && len(p.svcDel) == 0 {
		return nil
	}
	next := make(map[bpf.FrontendKey]uint32, len(d.frontends))
	owner := map[bpf.FrontendKey]string{}
	for key, s := range d.svcs {
		if p.svcDel[key] || p.svcUp[key] != nil {
			continue
		}
		for _, k := range s.fe {
			next[k] = s.id
			owner[k] = key
		}
	}
	keys := make([]string, 0, len(p.svcUp))
	for key := range p.svcUp {
		keys = append(keys, key)
	}
	sort.Strings(keys)
	for _, key := range keys {
		svc := p.svcUp[key]
		id, _ := d.svcIDs.lookup(key)
		for _, k := range frontendKeys(svc) {
			if o, ok := owner[k]; ok && o != key {
				return &InvalidError{Object: svcObject(key), Reason: fmt.Sprintf("%s is already used by service %q",
					netip.AddrPortFrom(addrFrom16(k.Addr), ntohs(k.Port)), o)}
			}
			next[k] = id
			owner[k] = key
		}
	}
	if len(next) > capFrontends {
		var fe []delta
		for key := range p.svcDel {
			fe = append(fe, delta{svcObject(key), -len(d.svcs[key].fe)})
		}
		for key, svc := range p.svcUp {
			n := len(frontendKeys(svc))
			if cur := d.svcs[key]; cur != nil {
				n -= len(cur.fe)
			}
			fe = append(fe, delta{svcObject(key), n})
		}
		return &CapacityError{Map: bpf.MapFrontend, Limit: capFrontends, What: "the frontends of " + firstOver(len(d.frontends), capFrontends, fe)}
	}
	for k, id := range next {
		if cur, ok := d.frontends[k]; !ok || cur != id {
			p.feAdd = append(p.feAdd, k)
		}
	}
	for k := range d.frontends {
		if _, ok := next[k]; !ok {
			p.feDel = append(p.feDel, k)
		}
	}
	p.fe = next
	return nil
}

func frontendKeys(s *model.Service) []bpf.FrontendKey {
	var out []bpf.FrontendKey
	for _, v := range s.VIPs {
		for _, port := range s.Ports {
			out = append(out, bpf.FrontendKey{Addr: addr16(v.Unmap()), Port: htons(port.Port), Proto: 6})
		}
	}
	return out
}

// delta is one object's change of a map's entry count.
type delta struct {
	obj string // e.g. `service "ns/a"`, as callers and logs name it
	n   int
}

// firstOver applies deltas to base, shrinking ones first and then growing
// ones in a fixed order, and names the object whose growth first exceeds
// limit ("" when the end state fits). Naming it lets a caller reject that
// object and apply the rest.
func firstOver(base, limit int, deltas []delta) string {
	sort.Slice(deltas, func(i, j int) bool {
		if (deltas[i].n < 0) != (deltas[j].n < 0) {
			return deltas[i].n < 0
		}
		return deltas[i].obj < deltas[j].obj
	})
	total := base
	for _, d := range deltas {
		total += d.n
	}
	if total <= limit {
		return ""
	}
	total = base
	for _, d := range deltas {
		if total += d.n; total > limit {
			return d.obj
		}
	}
	return deltas[len(deltas)-1].obj
}

// checkCapacity rejects a change whose end state does not fit the maps,
// naming the map, its limit and the object that does not fit.
func (d *Dataplane) checkCapacity(p *plan) error {
	var slots, gens []delta
	for key := range p.svcDel {
		if s := d.svcs[key]; s != nil && s.gen != 0 {
			slots = append(slots, delta{svcObject(key), -countSlots(s.count)})
			gens = append(gens, delta{svcObject(key), -1})
		}
	}
	for key, r := range p.renders {
		n, g := r.total, 1
		if s := d.svcs[key]; s != nil && s.gen != 0 {
			if s.digest == r.digest {
				continue
			}
			n -= countSlots(s.count)
			g = 0
		}
		slots = append(slots, delta{svcObject(key), n})
		gens = append(gens, delta{svcObject(key), g})
	}
	if obj := firstOver(d.live.slots, capSlots, slots); obj != "" {
		return &CapacityError{Map: bpf.MapEndpoint, Limit: capSlots, What: "the endpoints of " + obj}
	}
	if obj := firstOver(d.live.gens, capSvcGens, gens); obj != "" {
		return &CapacityError{Map: bpf.MapSvcGen, Limit: capSvcGens, What: obj}
	}
	var backends, cg, ns []delta
	for uid := range p.wlDel {
		w := d.wls[uid]
		if w.backend != 0 {
			backends = append(backends, delta{wlObject(uid), -1})
		}
		if w.enrol.cgroup != 0 {
			cg = append(cg, delta{wlObject(uid), -1})
		}
		if w.enrol.netns != 0 {
			ns = append(ns, delta{wlObject(uid), -1})
		}
	}
	for uid, wp := range p.wlUp {
		b, c, n := 0, 0, 0
		if cur := d.wls[uid]; cur != nil {
			if cur.backend != 0 && cur.backend != wp.backend {
				b--
			}
			if cur.enrol.cgroup != 0 {
				c--
			}
			if cur.enrol.netns != 0 {
				n--
			}
		}
		if wp.newBackend {
			b++
		}
		if wp.enrol.cgroup != 0 {
			c++
		}
		if wp.enrol.netns != 0 {
			n++
		}
		backends = append(backends, delta{wlObject(uid), b})
		cg = append(cg, delta{wlObject(uid), c})
		ns = append(ns, delta{wlObject(uid), n})
	}
	if obj := firstOver(d.live.backends, capBackends, backends); obj != "" {
		return &CapacityError{Map: bpf.MapBackend, Limit: capBackends, What: obj}
	}
	if obj := firstOver(len(d.enrolCg), capEnrol, cg); obj != "" {
		return &CapacityError{Map: bpf.MapEnrolCg, Limit: capEnrol, What: "the cgroup enrolment of " + obj}
	}
	if obj := firstOver(len(d.enrolNs), capEnrol, ns); obj != "" {
		return &CapacityError{Map: bpf.MapEnrolNs, Limit: capEnrol, What: "the netns enrolment of " + obj}
	}
	return nil
}

func countSlots(c [bpf.Families][bpf.MaxTiers]uint32) int {
	n := 0
	for f := range c {
		for t := range c[f] {
			n += int(c[f][t])
		}
	}
	return n
}
