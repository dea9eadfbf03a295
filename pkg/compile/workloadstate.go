package compile

import (
	"context"
	"fmt"
	"iter"
	"log/slog"
	"maps"
	"net/netip"
	"reflect"
	"runtime"
	"runtime/debug"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"istio.io/istio/pkg/workloadapi/security"

	"github.com/kmesh-go/kmesh/pkg/dataplane"
	"github.com/kmesh-go/kmesh/pkg/model"
	"github.com/kmesh-go/kmesh/pkg/xds"
)

// WorkloadOptions configures a WorkloadState. The zero value works.
type WorkloadOptions struct {
	// NodeName is this node; workloads whose node matches are local, and the
	// first of them (by uid) gives the node its locality, as Kmesh does.
	NodeName string
	// FullApplyThreshold: a response touching more objects than this is lowered
	// with one dataplane Apply instead of per-object calls (default 1000).
	FullApplyThreshold int
	Logger             *slog.Logger
	// OnApplied, if set, runs after each response was lowered, with the number
	// of objects changed and how long compiling and lowering took (metrics #8).
	OnApplied func(typeURL string, objects int, took time.Duration)
}

// WorkloadState compiles the Istio Workload API into the dataplane
// (dual-engine mode). It implements xds.DeltaHandler and holds the last good
// model: what it reports in Snapshot is exactly what was lowered.
type WorkloadState struct {
	api  dataplane.API
	opts WorkloadOptions
	log  *slog.Logger

	mu sync.Mutex
	// objects by xDS name (service key or workload uid): one map, so that the
	// passes over a push of 100 000 objects look each one up once rather than
	// in four maps (the lookups are cache misses and dominated the push).
	objects  map[string]*object
	node     model.Node
	nodeSet  bool
	policies map[string]*security.Authorization
	// Indexes kept by put: the service owning each VIP, objects whose waypoint
	// is given by IP, workloads on this node.
	vipOwner map[netip.Addr]string
	wpIP     map[string]bool
	locals   map[string]bool
}

// object is one Address resource: as accepted, and as the dataplane has it.
// They differ while a response is being compiled, and for objects whose
// waypoint is given by IP (resolved when lowered). The model objects pointed
// to are never modified once converted, so lowered shares them when there is
// nothing to resolve.
type object struct {
	accepted Address // neither Service nor Workload set: removed
	lsvc     *model.Service
	lwl      *model.Workload
}

func (o *object) exists() bool { return o.accepted.Service != nil || o.accepted.Workload != nil }

// NewWorkloadState returns an empty state lowering into api.
func NewWorkloadState(api dataplane.API, opts WorkloadOptions) *WorkloadState {
	if opts.FullApplyThreshold <= 0 {
		opts.FullApplyThreshold = 1000
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	return &WorkloadState{
		api: api, opts: opts, log: opts.Logger,
		objects:  map[string]*object{},
		policies: map[string]*security.Authorization{},
		node:     model.Node{Name: opts.NodeName},
		vipOwner: map[netip.Addr]string{}, wpIP: map[string]bool{}, locals: map[string]bool{},
	}
}

// HandleDelta implements xds.DeltaHandler.
func (s *WorkloadState) HandleDelta(ctx context.Context, u *xds.DeltaUpdate) (map[string]error, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	start := time.Now()
	var (
		rejected map[string]error
		n        int
		err      error
	)
	switch u.TypeURL {
	case xds.AddressType:
		rejected, n, err = s.addresses(ctx, u)
	case xds.AuthorizationType:
		rejected, n = s.authorizations(u)
	default:
		return nil, fmt.Errorf("type %s is not handled", u.TypeURL)
	}
	if err == nil && s.opts.OnApplied != nil {
		s.opts.OnApplied(u.TypeURL, n, time.Since(start))
	}
	return rejected, err
}

func (s *WorkloadState) authorizations(u *xds.DeltaUpdate) (map[string]error, int) {
	rejected := map[string]error{}
	for _, r := range u.Resources {
		p, err := ConvertAuthorization(r)
		if err != nil {
			rejected[r.GetName()] = err
			continue
		}
		s.policies[r.GetName()] = p
	}
	for _, name := range u.Removed {
		delete(s.policies, name)
	}
	return rejected, len(u.Resources) + len(u.Removed)
}

// addresses runs the passes for one Address response: convert and validate
// each resource, check it against the rest (VIP ownership), resolve
// waypoints, and lower what changed. The state is changed in place with an
// undo record, so a single update costs O(1) in the size of the mesh.
func (s *WorkloadState) addresses(ctx context.Context, u *xds.DeltaUpdate) (map[string]error, int, error) {
	rejected := map[string]error{}
	if len(u.Resources) > s.opts.FullApplyThreshold {
		// A big push allocates hundreds of MB of short-lived objects; with the
		// default GOGC the collector runs many times over a live heap that is
		// mostly the model itself. Collect less often while it lasts.
		defer debug.SetGCPercent(debug.SetGCPercent(400))
	}

	s.reserve(len(u.Resources))

	// convert + validate, per resource (in parallel for big pushes), in name
	// order: the objects are then allocated in the order the snapshot and the
	// dataplane walk them, which keeps a full push's memory accesses mostly
	// sequential (the passes over 100 000 objects are bound by cache misses).
	resources := sortedByName(u.Resources)
	conv := convertAll(resources)
	staged := &staging{list: make([]stagedObject, 0, len(resources))}
	for i, r := range resources {
		if conv[i].err != nil {
			rejected[r.GetName()] = conv[i].err
			continue
		}
		staged.list = append(staged.list, stagedObject{name: r.GetName(), a: &conv[i].a})
	}
	var removed []string
	for _, name := range u.Removed {
		if s.has(name) {
			removed = append(removed, name)
		}
	}
	staged.remove(removed)

	// cross-check: a VIP belongs to one service, and no workload uses a VIP.
	// The object of this response that conflicts is rejected (its previous
	// version stays); repeat until consistent.
	for {
		name, err := s.conflict(staged)
		if name == "" {
			break
		}
		rejected[name] = err
		staged.drop(name)
	}

	// Apply to the model, remembering what was there: staged entries keep
	// their own undo record, undo has the other objects this response changes.
	for e := range staged.all() {
		e.old = s.save(e.name)
		s.put(e.name, e.a)
	}
	// Materialize: staged objects, and those whose waypoint is an IP (the
	// VIP's owner may have changed).
	var ch pending
	for e := range staged.all() {
		s.materialize(e.name, &ch)
	}
	undo := map[string]*object{}
	for name := range s.wpIP {
		if staged.has(name) {
			continue
		}
		old := s.save(name)
		if s.materialize(name, &ch) {
			undo[name] = old
		}
	}
	undoAll := func() {
		for e := range staged.all() {
			s.restore(e.name, e.old)
		}
		for name, old := range undo {
			s.restore(name, old)
		}
	}
	undoRecord := func(name string) (*object, bool) {
		if e := staged.entry(name); e != nil {
			return e.old, true
		}
		old, ok := undo[name]
		return old, ok
	}

	node := s.learnNode()
	if u.Resync || ch.size() > s.opts.FullApplyThreshold {
		// One object the dataplane refuses must not block the whole mesh: when
		// the error names an object, that object is rejected (its previous
		// version, or nothing, stays) and the rest is applied again.
		blamed := map[string]int{}
		for {
			snap := s.buildSnapshot(node)
			err := s.api.Apply(ctx, snap)
			if err == nil {
				s.node, s.nodeSet = node, true
				return rejected, len(snap.Services) + len(snap.Workloads), nil
			}
			name := s.culprit(err, staged)
			if name == "" || len(blamed) >= maxBlamed {
				undoAll()
				return nil, 0, fmt.Errorf("applying %d services and %d workloads: %w", len(snap.Services), len(snap.Workloads), err)
			}
			rejected[name] = err
			blamed[name]++
			old, ok := undoRecord(name)
			if !ok {
				old = s.save(name)
				undo[name] = old
			}
			if blamed[name] == 1 {
				s.restore(name, old) // back to the version that was applied before
			} else {
				s.restore(name, nil) // that one fails too: leave the object out
			}
			node = s.learnNode()
		}
	}
	if !s.nodeSet || !reflect.DeepEqual(node, s.node) {
		if err := s.api.SetNode(ctx, node); err != nil {
			undoAll()
			return nil, 0, fmt.Errorf("setting node locality: %w", err)
		}
		s.node, s.nodeSet = node, true
	}
	for name, err := range Lower(ctx, s.api, ch.change()) {
		// The dataplane kept its previous state for this object: so do we.
		rejected[name] = err
		old, _ := undoRecord(name)
		s.restore(name, old)
	}
	return rejected, ch.size(), nil
}

// maxBlamed bounds the objects a full Apply may leave out before the whole
// response is rejected.
const maxBlamed = 64

// culprit finds the object a dataplane error is about: its quoted name
// appears in the error (CapacityError.What, InvalidError.Object). Objects of
// this response are tried first.
func (s *WorkloadState) culprit(err error, staged *staging) string {
	msg := err.Error()
	for e := range staged.all() {
		if strings.Contains(msg, strconv.Quote(e.name)) {
			return e.name
		}
	}
	for name, o := range s.objects {
		if (o.lsvc != nil || o.lwl != nil) && strings.Contains(msg, strconv.Quote(name)) {
			return name
		}
	}
	return ""
}

// has reports whether name is a known service or workload.
func (s *WorkloadState) has(name string) bool {
	o := s.objects[name]
	return o != nil && o.exists()
}

// save copies one object's state before a response, for undo; nil stands
// for an object that did not exist (most of a full push), so recording one
// costs no allocation.
func (s *WorkloadState) save(name string) *object {
	o := s.objects[name]
	if o == nil {
		return nil
	}
	c := *o
	return &c
}

// restore puts name back as it was when saved (nil: absent).
func (s *WorkloadState) restore(name string, old *object) {
	if old == nil || !old.exists() {
		s.put(name, nil)
	} else {
		s.put(name, &old.accepted)
	}
	o := s.objects[name]
	if o == nil {
		if old == nil || (old.lsvc == nil && old.lwl == nil) {
			return
		}
		o = &object{}
		s.objects[name] = o
	}
	o.lsvc, o.lwl = nil, nil
	if old != nil {
		o.lsvc, o.lwl = old.lsvc, old.lwl
	}
	s.forgetIfEmpty(name, o)
}

// forgetIfEmpty drops an object that is neither accepted nor lowered.
func (s *WorkloadState) forgetIfEmpty(name string, o *object) {
	if !o.exists() && o.lsvc == nil && o.lwl == nil {
		delete(s.objects, name)
	}
}

// reserve sizes the empty object map of a fresh state for a push of n
// objects (a daemon's first full push), so that it is not rehashed ~17
// times while 100 000 objects are inserted.
func (s *WorkloadState) reserve(n int) {
	if n > s.opts.FullApplyThreshold && len(s.objects) == 0 {
		s.objects = make(map[string]*object, n)
	}
}

// put sets (or, with nil, removes) an object's accepted version and keeps the
// indexes: VIP owners, objects with waypoint IPs, local workloads. What the
// dataplane has (lowered) is left alone: materialize or restore changes it.
func (s *WorkloadState) put(name string, a *Address) {
	o := s.objects[name]
	if o != nil {
		if old := o.accepted.Service; old != nil {
			for _, ip := range old.VIPs {
				if s.vipOwner[ip] == name {
					delete(s.vipOwner, ip)
				}
			}
		}
		if o.accepted.WaypointIP.IsValid() {
			delete(s.wpIP, name)
		}
		if o.accepted.Workload != nil {
			delete(s.locals, name)
		}
	}
	if a == nil {
		if o != nil {
			o.accepted = Address{}
			s.forgetIfEmpty(name, o)
		}
		return
	}
	if o == nil {
		o = &object{}
		s.objects[name] = o
	}
	o.accepted = *a
	if a.Service != nil {
		for _, ip := range a.Service.VIPs {
			s.vipOwner[ip] = name
		}
	} else if s.opts.NodeName != "" && a.Workload.Locality.Node == s.opts.NodeName {
		s.locals[name] = true
	}
	if a.WaypointIP.IsValid() {
		s.wpIP[name] = true
	}
}

// pending is what a response changes in the dataplane, gathered by
// materialize. It points at the lowered objects: a full push needs only its
// size, and copying 100 000 workloads into a Change would be wasted.
type pending struct {
	services         []*model.Service
	workloads        []*model.Workload
	deletedServices  []string
	deletedWorkloads []string
}

func (p *pending) size() int {
	return len(p.services) + len(p.workloads) + len(p.deletedServices) + len(p.deletedWorkloads)
}

// change is p as the Change that Lower applies.
func (p *pending) change() Change {
	c := Change{DeletedServices: p.deletedServices, DeletedWorkloads: p.deletedWorkloads}
	for _, svc := range p.services {
		c.Services = append(c.Services, *svc)
	}
	for _, wl := range p.workloads {
		c.Workloads = append(c.Workloads, *wl)
	}
	return c
}

// materialize recomputes name's lowered form and adds it to ch if it
// differs from what the dataplane has; it reports whether it did.
func (s *WorkloadState) materialize(name string, ch *pending) bool {
	o := s.objects[name]
	if o == nil {
		return false
	}
	a := o.accepted
	switch {
	case a.Service != nil:
		svc := s.materializeService(a)
		o.lwl = nil
		if o.lsvc != nil && (o.lsvc == svc || reflect.DeepEqual(o.lsvc, svc)) {
			return false
		}
		o.lsvc = svc
		ch.services = append(ch.services, svc)
		s.warnUnresolved("service", name, a, svc.Waypoint)
		return true
	case a.Workload != nil:
		wl := s.materializeWorkload(a)
		if o.lsvc != nil {
			o.lsvc = nil
			ch.deletedServices = append(ch.deletedServices, name)
		}
		if o.lwl != nil && (o.lwl == wl || reflect.DeepEqual(o.lwl, wl)) {
			return false
		}
		o.lwl = wl
		ch.workloads = append(ch.workloads, wl)
		s.warnUnresolved("workload", name, a, wl.Waypoint)
		return true
	}
	changed := false
	if o.lsvc != nil {
		o.lsvc = nil
		ch.deletedServices = append(ch.deletedServices, name)
		changed = true
	}
	if o.lwl != nil {
		o.lwl = nil
		ch.deletedWorkloads = append(ch.deletedWorkloads, name)
		changed = true
	}
	s.forgetIfEmpty(name, o)
	return changed
}

// conflict finds a staged object that shares an address with another one.
// Objects not in this response were consistent, so the newcomer loses; among
// staged services, the later one (by name) loses. Service conflicts are
// reported first, then the first conflicting workload by name; only the
// services are sorted (a full push has ten times more workloads).
func (s *WorkloadState) conflict(staged *staging) (string, error) {
	overlay := map[netip.Addr]string{}
	owner := func(ip netip.Addr) string {
		if o, ok := overlay[ip]; ok {
			return o
		}
		if o, ok := s.vipOwner[ip]; ok && !staged.has(o) {
			return o
		}
		return ""
	}
	var services []*stagedObject
	for e := range staged.all() {
		if e.a != nil && e.a.Service != nil {
			services = append(services, e)
		}
	}
	slices.SortFunc(services, func(a, b *stagedObject) int { return strings.Compare(a.name, b.name) })
	for _, e := range services {
		for _, ip := range e.a.Service.VIPs {
			if o := owner(ip); o != "" && o != e.name {
				return e.name, fmt.Errorf("VIP %s is already used by service %q", ip, o)
			}
			overlay[ip] = e.name
		}
	}
	var (
		name string
		err  error
	)
	for e := range staged.all() {
		if e.a == nil || e.a.Workload == nil || (name != "" && e.name > name) {
			continue
		}
		for _, ip := range e.a.Workload.Addresses {
			if o := owner(ip); o != "" {
				name, err = e.name, fmt.Errorf("address %s is the VIP of service %q", ip, o)
				break
			}
		}
	}
	return name, err
}

// staging is one response's objects, sorted by name. The passes walk the
// list rather than a map, in the order the objects were converted and so
// allocated: a full push's passes are bound by memory latency, and this keeps
// them mostly sequential. Names are looked up by binary search (rarely: VIP
// conflicts, waypoint re-resolution, failures).
type staging struct {
	list []stagedObject // sorted by name, one entry per name once remove ran
}

type stagedObject struct {
	name    string
	a       *Address // nil: remove
	old     *object  // the object before this response (undo), once put
	dropped bool     // rejected: its previous version stays
}

// remove stages the removal of names, which overrides an update of the same
// name in this response, and leaves one entry per name: of several updates of
// one name (kept in response order by sortedByName), the last.
func (st *staging) remove(names []string) {
	if len(names) > 0 {
		slices.Sort(names)
		merged := make([]stagedObject, 0, len(st.list)+len(names))
		i := 0
		for _, n := range names {
			for i < len(st.list) && st.list[i].name <= n {
				merged = append(merged, st.list[i])
				i++
			}
			merged = append(merged, stagedObject{name: n})
		}
		st.list = append(merged, st.list[i:]...)
	}
	out := st.list[:0]
	for i := range st.list {
		if i+1 < len(st.list) && st.list[i+1].name == st.list[i].name {
			continue
		}
		out = append(out, st.list[i])
	}
	st.list = out
}

// drop unstages name (rejected: its previous version stays).
func (st *staging) drop(name string) {
	if e := st.entry(name); e != nil {
		e.dropped = true
	}
}

func (st *staging) has(name string) bool { return st.entry(name) != nil }

// entry is name's live entry, or nil.
func (st *staging) entry(name string) *stagedObject {
	i, found := slices.BinarySearchFunc(st.list, name, func(e stagedObject, name string) int { return strings.Compare(e.name, name) })
	if !found || st.list[i].dropped {
		return nil
	}
	return &st.list[i]
}

// all yields the live entries in name order.
func (st *staging) all() iter.Seq[*stagedObject] {
	return func(yield func(*stagedObject) bool) {
		for i := range st.list {
			if !st.list[i].dropped && !yield(&st.list[i]) {
				return
			}
		}
	}
}

// sortedByName returns rs sorted by name; of two entries with one name the
// later stays later, so it still wins.
func sortedByName(rs []*discovery.Resource) []*discovery.Resource {
	byName := make([]keyed[int], len(rs))
	for i, r := range rs {
		byName[i] = keyed[int]{r.GetName(), i}
	}
	slices.SortFunc(byName, func(a, b keyed[int]) int {
		if c := strings.Compare(a.key, b.key); c != 0 {
			return c
		}
		return a.v - b.v
	})
	out := make([]*discovery.Resource, len(rs))
	for i, k := range byName {
		out[i] = rs[k.v]
	}
	return out
}

type converted struct {
	a   Address
	err error
}

// convertAll runs convert and validate over rs, on all CPUs when there are
// many (a full push of 100k resources is dominated by decoding).
func convertAll(rs []*discovery.Resource) []converted {
	out := make([]converted, len(rs))
	one := func(i int) {
		a, err := ConvertAddress(rs[i])
		if err == nil {
			if a.Service != nil {
				err = ValidateService(a.Service)
			} else {
				err = ValidateWorkload(a.Workload)
			}
		}
		out[i] = converted{a, err}
	}
	workers := runtime.GOMAXPROCS(0)
	if len(rs) < 256 || workers == 1 {
		for i := range rs {
			one(i)
		}
		return out
	}
	var wg sync.WaitGroup
	chunk := (len(rs) + workers - 1) / workers
	for lo := 0; lo < len(rs); lo += chunk {
		hi := min(lo+chunk, len(rs))
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := lo; i < hi; i++ {
				one(i)
			}
		}()
	}
	wg.Wait()
	return out
}

func (s *WorkloadState) resolveWaypoint(obj string, a Address) *model.WaypointRef {
	if !a.WaypointIP.IsValid() {
		return nil
	}
	if key, ok := s.vipOwner[a.WaypointIP]; ok && key != obj {
		return &model.WaypointRef{Service: key, Port: a.WaypointPort, ServerFirst: a.WaypointServerFirst}
	}
	return nil
}

// warnUnresolved logs, when an object is lowered, that its waypoint given by
// IP does not name a service yet.
func (s *WorkloadState) warnUnresolved(kind, name string, a Address, wp *model.WaypointRef) {
	if a.WaypointIP.IsValid() && wp == nil {
		s.log.Warn("waypoint address is not a known service VIP yet; traffic goes direct until it is", kind, name, "waypoint", a.WaypointIP)
	}
}

// materializeService returns the service as lowered: the converted object
// itself unless its waypoint is given by IP and must be resolved.
func (s *WorkloadState) materializeService(a Address) *model.Service {
	if !a.WaypointIP.IsValid() {
		return a.Service
	}
	svc := *a.Service
	svc.Waypoint = s.resolveWaypoint(svc.Key, a)
	return &svc
}

// materializeWorkload is materializeService for workloads.
func (s *WorkloadState) materializeWorkload(a Address) *model.Workload {
	if !a.WaypointIP.IsValid() {
		return a.Workload
	}
	wl := *a.Workload
	wl.Waypoint = s.resolveWaypoint(wl.UID, a)
	return &wl
}

// learnNode gives the node the locality of its first local workload (by uid).
func (s *WorkloadState) learnNode() model.Node {
	n := model.Node{Name: s.opts.NodeName}
	best := ""
	for uid := range s.locals {
		if best == "" || uid < best {
			best = uid
		}
	}
	if o := s.objects[best]; o != nil && o.lwl != nil {
		n.Locality = o.lwl.Locality
	}
	return n
}

// buildSnapshot is what the dataplane has, sorted by key.
func (s *WorkloadState) buildSnapshot(node model.Node) *model.Snapshot {
	var svcs []keyed[*model.Service]
	wls := make([]keyed[*model.Workload], 0, len(s.objects))
	for name, o := range s.objects {
		if o.lsvc != nil {
			svcs = append(svcs, keyed[*model.Service]{name, o.lsvc})
		}
		if o.lwl != nil {
			wls = append(wls, keyed[*model.Workload]{name, o.lwl})
		}
	}
	snap := &model.Snapshot{Node: node, Services: make([]model.Service, len(svcs)), Workloads: make([]model.Workload, len(wls))}
	for i, k := range sortByKey(svcs) {
		snap.Services[i] = *k.v
	}
	for i, k := range sortByKey(wls) {
		snap.Workloads[i] = *k.v
	}
	return snap
}

// keyed is a value with its key, sorted without following the value's
// pointer (for 100 000 objects those are cache misses on every compare).
type keyed[T any] struct {
	key string
	v   T
}

func sortByKey[T any](list []keyed[T]) []keyed[T] {
	slices.SortFunc(list, func(a, b keyed[T]) int { return strings.Compare(a.key, b.key) })
	return list
}

// Snapshot returns the model that was last lowered (sorted by key).
func (s *WorkloadState) Snapshot() *model.Snapshot {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.buildSnapshot(s.node)
}

// Policies returns the accepted authorization policies by resource name.
func (s *WorkloadState) Policies() map[string]*security.Authorization {
	s.mu.Lock()
	defer s.mu.Unlock()
	return maps.Clone(s.policies)
}

var _ xds.DeltaHandler = (*WorkloadState)(nil)
