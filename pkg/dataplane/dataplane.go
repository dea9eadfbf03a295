package dataplane

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"reflect"
	"runtime"
	"runtime/debug"
	"sort"
	"strings"
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
	// NoEvents starts with connection records off (SetEvents switches them).
	NoEvents bool
	// WaypointProtocol is the header written for waypoints: WaypointProxyV2
	// (default) or WaypointKmeshTLV.
	WaypointProtocol string
	Logger           *slog.Logger
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
	// svcs: per service key its id, installed service and, for keys that
	// workloads name, members and interned membership (svctable.go).
	svcs      svcTable
	wls       wlTable // by uid and by id
	locs      map[model.Locality]*model.Locality
	frontends feTable // what km_frontend holds
	// feStale: frontends may differ from the union of the services'
	// frontends (adopted from pinned maps, or a commit failed part way);
	// planFrontends then re-derives them from every service.
	feStale  bool
	live     counts
	enrolCg  map[uint64]uint32 // cgroup id -> workload id
	enrolNs  map[uint64]uint32 // netns cookie -> workload id
	cgLevels map[int]int       // cgroup depth -> enrolled cgroups at it

	// inlineMax: generations of at most this many slots are written inline
	// in their record (bpf.InlineSlots; tests set 0 to use km_endpoint).
	inlineMax int

	gc    *collector
	state *stateWriter
	// cgroup depths of adopted enrolments not yet attributed to a workload
	legacyLevels uint64

	wp wpState // waypoints (waypoint.go)
}

type counts struct{ slots, gens int }

var _ API = (*Dataplane)(nil)

// A service is kept as its state-file encoding (svcTable.enc: ~50 bytes
// for a service with one VIP and two ports) instead of as a copied
// model.Service (~290 bytes with its slices): a node may carry 10k
// services, and each reader decodes its own copy (svcModel). Its frontends
// are not kept with it (frontendKeys(model)): km_frontend's mirror,
// Dataplane.frontends, says which id owns each.

// svcModel decodes the installed service of slot.
func (d *Dataplane) svcModel(slot uint32) *model.Service { return decodeService(d.svcs.enc(slot)) }

// localityMode is the LB.Locality of an encoded service.
func localityMode(enc string) model.LocalityMode { return decodeService(enc).LB.Locality }

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
	if err := checkWaypointProtocol(opts.WaypointProtocol); err != nil {
		return nil, err
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
		obj: obj, log: opts.Logger, opts: opts, cgroupMount: mount, inlineMax: bpf.InlineSlots,
		svcs:    newSvcTable(bpf.MaxServices),
		locs:    map[model.Locality]*model.Locality{},
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
	d.state = newStateWriter(opts.StateDir, d.log, func(path string) error {
		// Encoded under the lock: the workload table is edited in place.
		d.mu.Lock()
		defer d.mu.Unlock()
		return writeState(path, d.snapshotState())
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
	k, ok := d.svcs.idKey(id)
	return strings.Clone(k), ok // the table's points into its arena
}

func (d *Dataplane) WorkloadUID(id uint32) (string, bool) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if s, ok := d.wls.slotOfID(id); ok {
		return string(d.wls.appendUID(nil, s)), true
	}
	return "", false
}

// Usage reports map occupancy: entries live, and retired but not yet deleted.
type Usage struct {
	Services, Workloads, Frontends, Slots, Generations int
	PendingSlots, PendingGenerations                   int
}

func (d *Dataplane) Usage() Usage {
	d.mu.Lock()
	defer d.mu.Unlock()
	ps, pg := d.gc.pending()
	return Usage{Services: d.svcs.nSvc, Workloads: d.wls.len(), Frontends: d.frontends.len(),
		Slots: d.live.slots, Generations: d.live.gens, PendingSlots: ps, PendingGenerations: pg}
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
	ch := change{svcs: make(map[string]*model.Service, len(s.Services)), wls: make(map[string]*model.Workload, len(s.Workloads)),
		node: &s.Node, full: true}
	for i := range s.Services {
		svc := &s.Services[i]
		if _, dup := ch.svcs[svc.Key]; dup {
			return &InvalidError{Object: svcObject(svc.Key), Reason: "listed twice in the snapshot"}
		}
		ch.svcs[svc.Key] = svc
	}
	ch.wlList = make([]*model.Workload, len(s.Workloads))
	for i := range s.Workloads {
		wl := &s.Workloads[i]
		if _, dup := ch.wls[wl.UID]; dup {
			return &InvalidError{Object: wlObject(wl.UID), Reason: "listed twice in the snapshot"}
		}
		ch.wls[wl.UID] = wl
		ch.wlList[i] = wl
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
	// wlList is wls's upserts in the caller's order (full snapshots), so a
	// large push is walked in order rather than through the map.
	wlList []*model.Workload
	node   *model.Node
	full   bool
}

func wlObject(uid string) string { return fmt.Sprintf("workload %q", uid) }

// copyService copies s deeply: the dataplane keeps services, and callers may
// reuse or mutate the values they passed.
func copyService(s *model.Service) *model.Service {
	c := *s
	c.VIPs = append([]netip.Addr(nil), s.VIPs...)
	c.Ports = append([]model.ServicePort(nil), s.Ports...)
	c.LB.RoutingPreference = append([]model.LocalityScope(nil), s.LB.RoutingPreference...)
	if s.Waypoint != nil {
		w := *s.Waypoint
		c.Waypoint = &w
	}
	return &c
}

func (d *Dataplane) run(ctx context.Context, ch change) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.obj == nil {
		return errors.New("dataplane is closed")
	}
	if len(ch.wls)+len(ch.svcs) > 10000 {
		// A large push allocates hundreds of MB that die at its end; with
		// the default GOGC the collector would run many times over a live
		// heap that is mostly the caller's model (as pkg/compile does).
		if old := debug.SetGCPercent(400); old >= 0 && old < 400 {
			defer debug.SetGCPercent(old)
		} else {
			debug.SetGCPercent(old) // off or already higher: leave it
		}
	}
	// Slots of the service table stay valid while a change is planned and
	// committed; renumbering them waits until it is done.
	defer d.svcs.compact()
	p, err := d.plan(ch)
	if err != nil {
		return err
	}
	if err := d.commit(p); err != nil {
		d.feStale = true
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

	svcUp    map[string]*model.Service // final content of upserted services
	svcDel   map[string]bool
	wlUp     map[string]*wlState // new state of upserted workloads, by uid
	wlUpByID map[uint32]*wlState
	wlDel    map[string]bool
	// special lists the upserted workloads that are (or were) enrolled here
	// or have a waypoint: the few the enrolment and waypoint passes need to
	// see, out of possibly 100k upserts.
	special []string

	renders map[string]rendered // services to (re)write
	// Frontends to write (with their service ids) and to delete; with
	// fePlanned, km_frontend is exactly the services' frontends once they
	// are done.
	feAdd     []bpf.FrontendKey
	feAddID   []uint32
	feDel     []bpf.FrontendKey
	fePlanned bool
	members   map[string][]uint32 // membership of touched services in the new view (ids)
	alloc     *stateAlloc         // new workload states of a large push (nil: one by one)
	wp        *wpPlan             // waypoint changes (nil: none)
}

func (d *Dataplane) plan(ch change) (p *plan, err error) {
	p = &plan{node: d.node, full: ch.full, svcUp: map[string]*model.Service{}, svcDel: map[string]bool{},
		wlUp: map[string]*wlState{}, wlUpByID: map[uint32]*wlState{}, wlDel: map[string]bool{}, renders: map[string]rendered{},
		members: map[string][]uint32{}}
	if n := len(ch.wls); n > 64 && d.wls.len() < n/2 {
		// A large push of mostly new workloads: size the tables once
		// instead of growing them step by step.
		p.wlUp, p.wlUpByID = make(map[string]*wlState, n), make(map[uint32]*wlState, n)
	}
	if len(ch.wls) > 1024 {
		p.alloc = &stateAlloc{}
	}
	assigned := p // ids assigned while planning go back if the plan fails
	defer func() {
		if err != nil {
			for _, k := range assigned.newSvcIDs {
				d.svcs.release(k)
			}
		}
	}()
	if ch.node != nil && !reflect.DeepEqual(*ch.node, d.node) {
		p.node, p.nodeChange = *ch.node, true
	}

	// Classify services.
	if n := len(ch.svcs); n > 64 && d.svcs.n < n/2 {
		d.svcs.reserve(n) // a large push of mostly new services
	}
	for key, svc := range ch.svcs {
		if svc == nil {
			if _, ok := d.svcs.svcSlot(key); ok {
				p.svcDel[key] = true
			}
			continue
		}
		if err := validateService(svc); err != nil {
			return nil, err
		}
		slot, cur := d.svcs.svcSlot(key)
		if cur && d.svcs.enc(slot) == encodeService(svc) && !p.nodeChange {
			continue
		}
		p.svcUp[key] = copyService(svc)
		if !cur {
			if _, isNew, ok := d.svcs.assign(key); !ok {
				return nil, &CapacityError{Map: bpf.MapSvcActive, Limit: bpf.MaxServices - 1, What: svcObject(key)}
			} else if isNew {
				p.newSvcIDs = append(p.newSvcIDs, key)
			}
		}
	}
	if ch.full {
		for s := range d.svcs.services() {
			key := d.svcs.key(s)
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
	// Upserted workloads touch the services they leave and join; joins
	// lists who joins each (collected here, while each state is fresh in
	// the cache).
	joins := map[string][]uint32{}
	kept := 0 // current workloads the change names
	for _, it := range d.classify(ch) {
		uid, wl, cur, h := it.uid, it.wl, it.cur, it.hash
		if cur != nil && wl != nil {
			kept++
		}
		if wl == nil {
			if cur != nil {
				p.wlDel[uid] = true
			}
			continue
		}
		if cur != nil && cur.hash == h {
			continue
		}
		st, err := d.planWorkload(p, wl, h)
		if err != nil {
			return nil, err
		}
		p.wlUp[uid] = st
		p.wlUpByID[st.id] = st
		if cur != nil {
			for _, m := range cur.members() {
				touched[m.key] = true
			}
		}
		if st.special() || (cur != nil && cur.special()) {
			p.special = append(p.special, uid)
		}
		for _, m := range st.members() {
			touched[m.key] = true
			joins[m.key] = append(joins[m.key], st.id)
		}
	}
	if ch.full && kept < d.wls.len() { // else every current workload is named
		for w := range d.wls.all() {
			if _, ok := ch.wls[w.uid()]; !ok {
				p.wlDel[strings.Clone(w.uid())] = true // w's strings are all's own
			}
		}
	}
	for uid := range p.wlDel {
		for _, m := range d.wls.get(uid).members() {
			touched[m.key] = true
		}
	}
	if p.nodeChange {
		for s := range d.svcs.services() {
			if localityMode(d.svcs.enc(s)) != model.LocalityNone {
				touched[d.svcs.key(s)] = true
			}
		}
	}

	// Membership of touched services in the new view: the current members
	// that stay, plus the upserted workloads that name the service.
	var uid []byte
	for key := range touched {
		cur, join := d.members(key), joins[key]
		ids := make([]uint32, 0, len(cur)+len(join))
		for _, id := range cur {
			if s, ok := d.wls.slotOfID(id); ok {
				if uid = d.wls.appendUID(uid[:0], s); !p.wlDel[string(uid)] && p.wlUp[string(uid)] == nil {
					ids = append(ids, id)
				}
			}
		}
		p.members[key] = append(ids, join...)
	}

	// Render every touched service that exists in the new view.
	type job struct {
		key string
		svc *model.Service
		r   rendered
		err error
	}
	jobs := make([]job, 0, len(touched))
	for key := range touched {
		if p.svcDel[key] {
			continue
		}
		svc := p.svcUp[key]
		if svc == nil {
			cur, ok := d.svcs.svcSlot(key)
			if !ok {
				continue // a workload names a service not (yet) known
			}
			svc = d.svcModel(cur)
		}
		jobs = append(jobs, job{key: key, svc: svc})
	}
	// Rendering only reads the plan and the dataplane: a large push renders
	// on all CPUs.
	parallel(len(jobs), func(lo, hi int) {
		for i := lo; i < hi; i++ {
			j := &jobs[i]
			j.r, j.err = render(j.svc, d.membersOf(p, j.key), p.node, d.inlineMax)
		}
	})
	for i := range jobs {
		if jobs[i].err != nil {
			return nil, jobs[i].err
		}
		p.renders[jobs[i].key] = jobs[i].r
	}

	if err := d.planFrontends(p); err != nil {
		return nil, err
	}
	if err := d.planWaypoints(p); err != nil {
		return nil, err
	}
	if err := d.checkCapacity(p); err != nil {
		return nil, err
	}
	return p, nil
}

// wlItem is one workload of a change with its current state and content
// hash (wl nil: a delete).
type wlItem struct {
	uid  string
	wl   *model.Workload
	cur  *wlState
	hash uint64
}

// classify pairs each workload of ch with its current state and hashes it.
// Hashing reads every field of every workload of the caller's model, which
// is dominated by memory latency; a large push is hashed on all CPUs (plan
// only reads the dataplane's maps, so the workers share them safely).
func (d *Dataplane) classify(ch change) []wlItem {
	items := make([]wlItem, 0, len(ch.wls))
	if ch.wlList != nil {
		for _, wl := range ch.wlList {
			items = append(items, wlItem{uid: wl.UID, wl: wl})
		}
	} else {
		for uid, wl := range ch.wls {
			items = append(items, wlItem{uid: uid, wl: wl})
		}
	}
	parallel(len(items), func(lo, hi int) {
		var scratch sink
		for i := lo; i < hi; i++ {
			it := &items[i]
			it.cur = d.wls.get(it.uid)
			if it.wl != nil {
				it.hash = hashWorkload(&scratch, it.wl)
			}
		}
	})
	return items
}

// parallel runs work over [0, n) in one chunk per CPU when n is large, else
// in the caller's goroutine.
func parallel(n int, work func(lo, hi int)) {
	cpus := runtime.GOMAXPROCS(0)
	if n < 2048 || cpus < 2 {
		work(0, n)
		return
	}
	var wg sync.WaitGroup
	chunk := (n + cpus - 1) / cpus
	for lo := 0; lo < n; lo += chunk {
		wg.Add(1)
		go func(lo, hi int) {
			defer wg.Done()
			work(lo, hi)
		}(lo, min(lo+chunk, n))
	}
	wg.Wait()
}

// planFrontends computes km_frontend's next content and the difference.
// The frontends of the services the plan leaves alone are what km_frontend
// holds (its mirror) less those of the services it deletes or updates,
// unless the mirror is stale (feStale): then they are re-derived from every
// service.
func (d *Dataplane) planFrontends(p *plan) error {
	if len(p.svcUp) == 0 && len(p.svcDel) == 0 {
		return nil
	}
	// The ids whose frontends the plan replaces.
	skip := make(map[uint32]bool, len(p.svcDel)+len(p.svcUp))
	for key := range p.svcDel {
		slot, _ := d.svcs.svcSlot(key)
		skip[d.svcs.rec(slot).id] = true
	}
	for key := range p.svcUp {
		if slot, ok := d.svcs.svcSlot(key); ok {
			skip[d.svcs.rec(slot).id] = true
		}
	}
	// kept is the owner of a frontend among the services left alone.
	kept := func(k bpf.FrontendKey) (uint32, bool) {
		id, ok := d.frontends.get(k)
		return id, ok && !skip[id]
	}
	var stale feTable // feStale: the frontends of the services left alone
	if d.feStale {
		for s := range d.svcs.services() {
			if id := d.svcs.rec(s).id; !skip[id] {
				for _, k := range frontendKeys(d.svcModel(s)) {
					stale.set(k, id)
				}
			}
		}
		kept = stale.get
	}
	// The upserted services' frontends, in key order (the first of two
	// services claiming one is accepted, the second rejected).
	keys := make([]string, 0, len(p.svcUp))
	for key := range p.svcUp {
		keys = append(keys, key)
	}
	sort.Strings(keys)
	var up feTable
	if len(keys) > 64 {
		up.reserve(2 * len(keys))
	}
	for _, key := range keys {
		svc := p.svcUp[key]
		id, _ := d.svcs.lookup(key)
		for _, k := range frontendKeys(svc) {
			o, ok := up.get(k)
			if !ok {
				o, ok = kept(k)
			}
			if ok && o != id {
				owner, _ := d.svcs.idKey(o)
				return &InvalidError{Object: svcObject(key), Reason: fmt.Sprintf("%s is already used by service %q",
					netip.AddrPortFrom(addrFrom16(k.Addr), ntohs(k.Port)), owner)}
			}
			up.set(k, id)
		}
	}
	// Next: the frontends kept, and those of the upserted services.
	total := up.len()
	if d.feStale {
		for k := range stale.all() {
			if _, ok := up.get(k); !ok {
				total++
			}
		}
	} else {
		for k := range d.frontends.all() {
			if _, ok := kept(k); ok {
				if _, ok := up.get(k); !ok {
					total++
				}
			}
		}
	}
	if total > capFrontends {
		var fe []delta
		for key := range p.svcDel {
			slot, _ := d.svcs.svcSlot(key)
			fe = append(fe, delta{key: key, n: -len(frontendKeys(d.svcModel(slot)))})
		}
		for key, svc := range p.svcUp {
			n := len(frontendKeys(svc))
			if cur, ok := d.svcs.svcSlot(key); ok {
				n -= len(frontendKeys(d.svcModel(cur)))
			}
			fe = append(fe, delta{key: key, n: n})
		}
		return &CapacityError{Map: bpf.MapFrontend, Limit: capFrontends, What: "the frontends of " + firstOver(d.frontends.len(), capFrontends, fe)}
	}
	// The difference: what km_frontend holds and next does not, and what
	// next holds that km_frontend does not (or under another id).
	for k := range d.frontends.all() {
		if _, ok := kept(k); ok {
			continue
		}
		if _, ok := up.get(k); !ok {
			p.feDel = append(p.feDel, k)
		}
	}
	add := func(k bpf.FrontendKey, id uint32) {
		if cur, ok := d.frontends.get(k); !ok || cur != id {
			p.feAdd, p.feAddID = append(p.feAdd, k), append(p.feAddID, id)
		}
	}
	for k, id := range up.all() {
		add(k, id)
	}
	if d.feStale {
		for k, id := range stale.all() {
			if _, ok := up.get(k); !ok {
				add(k, id)
			}
		}
	}
	p.fePlanned = true
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
	key string
	wl  bool // key is a workload uid (else a service key)
	n   int
}

// obj names the object as callers and logs do, e.g. `service "ns/a"`.
func (d delta) obj() string {
	if d.wl {
		return wlObject(d.key)
	}
	return svcObject(d.key)
}

// firstOver applies deltas to base, shrinking ones first and then growing
// ones in a fixed order, and names the object whose growth first exceeds
// limit ("" when the end state fits). Naming it lets a caller reject that
// object and apply the rest.
func firstOver(base, limit int, deltas []delta) string {
	total := base
	for _, d := range deltas {
		total += d.n
	}
	if total <= limit {
		return ""
	}
	sort.Slice(deltas, func(i, j int) bool {
		if (deltas[i].n < 0) != (deltas[j].n < 0) {
			return deltas[i].n < 0
		}
		return deltas[i].key < deltas[j].key
	})
	total = base
	for _, d := range deltas {
		if total += d.n; total > limit {
			return d.obj()
		}
	}
	return deltas[len(deltas)-1].obj()
}

// checkCapacity rejects a change whose end state does not fit the maps,
// naming the map, its limit and the object that does not fit.
func (d *Dataplane) checkCapacity(p *plan) error {
	var slots, gens []delta
	for key := range p.svcDel {
		if slot, ok := d.svcs.svcSlot(key); ok && d.svcs.rec(slot).gen != 0 {
			slots = append(slots, delta{key: key, n: -int(d.svcs.rec(slot).slots)})
			gens = append(gens, delta{key: key, n: -1})
		}
	}
	for key, r := range p.renders {
		n, g := r.endpointSlots(), 1
		if slot, ok := d.svcs.svcSlot(key); ok && d.svcs.rec(slot).gen != 0 {
			s := d.svcs.rec(slot)
			if s.getDigest() == r.digest {
				continue
			}
			n -= int(s.slots)
			g = 0
		}
		slots = append(slots, delta{key: key, n: n})
		gens = append(gens, delta{key: key, n: g})
	}
	if obj := firstOver(d.live.slots, capSlots, slots); obj != "" {
		return &CapacityError{Map: bpf.MapEndpoint, Limit: capSlots, What: "the endpoints of " + obj}
	}
	if obj := firstOver(d.live.gens, capSvcGens, gens); obj != "" {
		return &CapacityError{Map: bpf.MapSvcGen, Limit: capSvcGens, What: obj}
	}
	var cg, ns []delta
	for uid := range p.wlDel {
		w := d.wls.get(uid)
		if w.enrolment().cgroup != 0 {
			cg = append(cg, delta{key: uid, wl: true, n: -1})
		}
		if w.enrolment().netns != 0 {
			ns = append(ns, delta{key: uid, wl: true, n: -1})
		}
	}
	for _, uid := range p.special {
		st := p.wlUp[uid]
		c, n := 0, 0
		if cur := d.wls.get(uid); cur != nil {
			if e := cur.enrolment(); e.cgroup != 0 {
				c--
			}
			if e := cur.enrolment(); e.netns != 0 {
				n--
			}
		}
		if e := st.enrolment(); e.cgroup != 0 {
			c++
		}
		if e := st.enrolment(); e.netns != 0 {
			n++
		}
		if c != 0 {
			cg = append(cg, delta{key: uid, wl: true, n: c})
		}
		if n != 0 {
			ns = append(ns, delta{key: uid, wl: true, n: n})
		}
	}
	if obj := firstOver(len(d.enrolCg), capEnrol, cg); obj != "" {
		return &CapacityError{Map: bpf.MapEnrolCg, Limit: capEnrol, What: "the cgroup enrolment of " + obj}
	}
	if obj := firstOver(len(d.enrolNs), capEnrol, ns); obj != "" {
		return &CapacityError{Map: bpf.MapEnrolNs, Limit: capEnrol, What: "the netns enrolment of " + obj}
	}
	return nil
}

// endpointCounts is what a generation record has in km_endpoint: its slot
// counts per family and tier, or none when its slots are inline. A record
// without bpf.RecInline (larger services, and records migrated from layout 1,
// which had no inline slots) keeps them in km_endpoint.
func endpointCounts(rec *bpf.SvcRec) [bpf.Families][bpf.MaxTiers]uint32 {
	if rec.Flags&bpf.RecInline != 0 {
		return [bpf.Families][bpf.MaxTiers]uint32{}
	}
	return rec.Count
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

// ServiceID returns the map id of a service key (kernel-native clusters are
// VIP-less services the route program selects endpoints of by id).
func (d *Dataplane) ServiceID(key string) (uint32, bool) {
	d.mu.Lock()
	defer d.mu.Unlock()
	slot, ok := d.svcs.svcSlot(key)
	if !ok {
		return 0, false
	}
	return d.svcs.rec(slot).id, true
}
