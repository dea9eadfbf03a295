package compile

import (
	"context"
	"fmt"
	"log/slog"
	"maps"
	"net/netip"
	"reflect"
	"runtime"
	"runtime/debug"
	"sort"
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
	// Converted objects by xDS name (service key or workload uid), as accepted.
	services  map[string]Address
	workloads map[string]Address
	// lowered holds what the dataplane has, after waypoint resolution.
	loweredSvc map[string]model.Service
	loweredWl  map[string]model.Workload
	node       model.Node
	nodeSet    bool
	policies   map[string]*security.Authorization
	// Indexes kept by put: the service owning each VIP, objects whose waypoint
	// is given by IP, workloads on this node.
	vipOwner map[netip.Addr]string
	wpIP     map[string]bool
	locals   map[string]bool
}

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
		services: map[string]Address{}, workloads: map[string]Address{},
		loweredSvc: map[string]model.Service{}, loweredWl: map[string]model.Workload{},
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

	// convert + validate, per resource (in parallel for big pushes).
	conv := convertAll(u.Resources)
	staged := make(map[string]*Address, len(u.Resources)+len(u.Removed)) // nil: remove
	for i, r := range u.Resources {
		if conv[i].err != nil {
			rejected[r.GetName()] = conv[i].err
			continue
		}
		a := conv[i].a
		staged[r.GetName()] = &a
	}
	for _, name := range u.Removed {
		if s.has(name) {
			staged[name] = nil
		}
	}

	// cross-check: a VIP belongs to one service, and no workload uses a VIP.
	// The object of this response that conflicts is rejected (its previous
	// version stays); repeat until consistent.
	for {
		name, err := s.conflict(staged)
		if name == "" {
			break
		}
		rejected[name] = err
		delete(staged, name)
	}

	// Apply to the model, remembering what was there.
	undo := map[string]saved{}
	for name, a := range staged {
		undo[name] = s.save(name)
		s.put(name, a)
	}
	// Materialize: staged objects, and those whose waypoint is an IP (the
	// VIP's owner may have changed).
	changed := map[string]bool{}
	for name := range staged {
		changed[name] = true
	}
	for name := range s.wpIP {
		changed[name] = true
	}
	var ch Change
	for name := range changed {
		if _, ok := undo[name]; !ok {
			undo[name] = s.save(name)
		}
		if s.materialize(name, &ch) {
			continue
		}
		if _, isStaged := staged[name]; !isStaged {
			delete(undo, name) // nothing changed for it
		}
	}
	for _, svc := range ch.Services {
		if a := s.services[svc.Key]; a.WaypointIP.IsValid() && svc.Waypoint == nil {
			s.log.Warn("waypoint address is not a known service VIP yet; traffic goes direct until it is", "service", svc.Key, "waypoint", a.WaypointIP)
		}
	}
	for _, w := range ch.Workloads {
		if a := s.workloads[w.UID]; a.WaypointIP.IsValid() && w.Waypoint == nil {
			s.log.Warn("waypoint address is not a known service VIP yet; traffic goes direct until it is", "workload", w.UID, "waypoint", a.WaypointIP)
		}
	}

	node := s.learnNode()
	if u.Resync || ch.Size() > s.opts.FullApplyThreshold {
		// One object the dataplane refuses must not block the whole mesh: when
		// the error names an object, that object is rejected (its previous
		// version, or nothing, stays) and the rest is applied again.
		blamed := map[string]int{}
		for {
			snap := buildSnapshot(node, s.loweredSvc, s.loweredWl)
			err := s.api.Apply(ctx, snap)
			if err == nil {
				s.node, s.nodeSet = node, true
				return rejected, len(snap.Services) + len(snap.Workloads), nil
			}
			name := s.culprit(err, staged)
			if name == "" || len(blamed) >= maxBlamed {
				for name, old := range undo {
					s.restore(name, old)
				}
				return nil, 0, fmt.Errorf("applying %d services and %d workloads: %w", len(snap.Services), len(snap.Workloads), err)
			}
			rejected[name] = err
			blamed[name]++
			old, ok := undo[name]
			if !ok {
				old = s.save(name)
				undo[name] = old
			}
			if blamed[name] == 1 {
				s.restore(name, old) // back to the version that was applied before
			} else {
				s.put(name, nil) // that one fails too: leave the object out
				delete(s.loweredSvc, name)
				delete(s.loweredWl, name)
			}
			node = s.learnNode()
		}
	}
	if !s.nodeSet || !reflect.DeepEqual(node, s.node) {
		if err := s.api.SetNode(ctx, node); err != nil {
			for name, old := range undo {
				s.restore(name, old)
			}
			return nil, 0, fmt.Errorf("setting node locality: %w", err)
		}
		s.node, s.nodeSet = node, true
	}
	for name, err := range Lower(ctx, s.api, ch) {
		// The dataplane kept its previous state for this object: so do we.
		rejected[name] = err
		s.restore(name, undo[name])
	}
	return rejected, ch.Size(), nil
}

// maxBlamed bounds the objects a full Apply may leave out before the whole
// response is rejected.
const maxBlamed = 64

// culprit finds the object a dataplane error is about: its quoted name
// appears in the error (CapacityError.What, InvalidError.Object). Objects of
// this response are tried first.
func (s *WorkloadState) culprit(err error, staged map[string]*Address) string {
	msg := err.Error()
	for name := range staged {
		if strings.Contains(msg, strconv.Quote(name)) {
			return name
		}
	}
	for name := range s.loweredSvc {
		if strings.Contains(msg, strconv.Quote(name)) {
			return name
		}
	}
	for name := range s.loweredWl {
		if strings.Contains(msg, strconv.Quote(name)) {
			return name
		}
	}
	return ""
}

// has reports whether name is a known service or workload.
func (s *WorkloadState) has(name string) bool {
	_, ok1 := s.services[name]
	_, ok2 := s.workloads[name]
	return ok1 || ok2
}

// saved is one object's state before a response, for undo.
type saved struct {
	svc, wl Address
	hasSvc  bool
	hasWl   bool
	lsvc    model.Service
	lwl     model.Workload
	hasLSvc bool
	hasLWl  bool
}

func (s *WorkloadState) save(name string) saved {
	var o saved
	o.svc, o.hasSvc = s.services[name]
	o.wl, o.hasWl = s.workloads[name]
	o.lsvc, o.hasLSvc = s.loweredSvc[name]
	o.lwl, o.hasLWl = s.loweredWl[name]
	return o
}

func (s *WorkloadState) restore(name string, o saved) {
	switch {
	case o.hasSvc:
		s.put(name, &o.svc)
	case o.hasWl:
		s.put(name, &o.wl)
	default:
		s.put(name, nil)
	}
	delete(s.loweredSvc, name)
	delete(s.loweredWl, name)
	if o.hasLSvc {
		s.loweredSvc[name] = o.lsvc
	}
	if o.hasLWl {
		s.loweredWl[name] = o.lwl
	}
}

// put sets (or, with nil, removes) an object and keeps the indexes: VIP
// owners, objects with waypoint IPs, local workloads.
func (s *WorkloadState) put(name string, a *Address) {
	if old, ok := s.services[name]; ok {
		for _, ip := range old.Service.VIPs {
			if s.vipOwner[ip] == name {
				delete(s.vipOwner, ip)
			}
		}
		delete(s.services, name)
	}
	delete(s.workloads, name)
	delete(s.wpIP, name)
	delete(s.locals, name)
	if a == nil {
		return
	}
	if a.Service != nil {
		s.services[name] = *a
		for _, ip := range a.Service.VIPs {
			s.vipOwner[ip] = name
		}
	} else {
		s.workloads[name] = *a
		if s.opts.NodeName != "" && a.Workload.Locality.Node == s.opts.NodeName {
			s.locals[name] = true
		}
	}
	if a.WaypointIP.IsValid() {
		s.wpIP[name] = true
	}
}

// materialize recomputes name's lowered form and adds it to ch if it
// differs from what the dataplane has; it reports whether it did.
func (s *WorkloadState) materialize(name string, ch *Change) bool {
	if a, ok := s.services[name]; ok {
		svc := s.materializeService(a)
		delete(s.loweredWl, name)
		if old, ok := s.loweredSvc[name]; ok && reflect.DeepEqual(old, svc) {
			return false
		}
		s.loweredSvc[name] = svc
		ch.Services = append(ch.Services, svc)
		return true
	}
	if a, ok := s.workloads[name]; ok {
		wl := s.materializeWorkload(a)
		if _, was := s.loweredSvc[name]; was {
			delete(s.loweredSvc, name)
			ch.DeletedServices = append(ch.DeletedServices, name)
		}
		if old, ok := s.loweredWl[name]; ok && reflect.DeepEqual(old, wl) {
			return false
		}
		s.loweredWl[name] = wl
		ch.Workloads = append(ch.Workloads, wl)
		return true
	}
	changed := false
	if _, ok := s.loweredSvc[name]; ok {
		delete(s.loweredSvc, name)
		ch.DeletedServices = append(ch.DeletedServices, name)
		changed = true
	}
	if _, ok := s.loweredWl[name]; ok {
		delete(s.loweredWl, name)
		ch.DeletedWorkloads = append(ch.DeletedWorkloads, name)
		changed = true
	}
	return changed
}

// conflict finds a staged object that shares an address with another one.
// Objects not in this response were consistent, so the newcomer loses; among
// staged services, the later one (by name) loses.
func (s *WorkloadState) conflict(staged map[string]*Address) (string, error) {
	overlay := map[netip.Addr]string{}
	owner := func(ip netip.Addr) string {
		if o, ok := overlay[ip]; ok {
			return o
		}
		if o, ok := s.vipOwner[ip]; ok {
			if _, releasing := staged[o]; !releasing {
				return o
			}
		}
		return ""
	}
	names := make([]string, 0, len(staged))
	for n := range staged {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		a := staged[n]
		if a == nil || a.Service == nil {
			continue
		}
		for _, ip := range a.Service.VIPs {
			if o := owner(ip); o != "" && o != n {
				return n, fmt.Errorf("VIP %s is already used by service %q", ip, o)
			}
			overlay[ip] = n
		}
	}
	for _, n := range names {
		a := staged[n]
		if a == nil || a.Workload == nil {
			continue
		}
		for _, ip := range a.Workload.Addresses {
			if o := owner(ip); o != "" {
				return n, fmt.Errorf("address %s is the VIP of service %q", ip, o)
			}
		}
	}
	return "", nil
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

func (s *WorkloadState) materializeService(a Address) model.Service {
	svc := *a.Service
	if a.WaypointIP.IsValid() {
		svc.Waypoint = s.resolveWaypoint(svc.Key, a)
	}
	return svc
}

func (s *WorkloadState) materializeWorkload(a Address) model.Workload {
	wl := *a.Workload
	if a.WaypointIP.IsValid() {
		wl.Waypoint = s.resolveWaypoint(wl.UID, a)
	}
	return wl
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
	if best != "" {
		n.Locality = s.loweredWl[best].Locality
	}
	return n
}

func buildSnapshot(node model.Node, svcs map[string]model.Service, wls map[string]model.Workload) *model.Snapshot {
	snap := &model.Snapshot{Node: node, Services: make([]model.Service, 0, len(svcs)), Workloads: make([]model.Workload, 0, len(wls))}
	for _, k := range sortedNames(svcs) {
		snap.Services = append(snap.Services, svcs[k])
	}
	for _, k := range sortedNames(wls) {
		snap.Workloads = append(snap.Workloads, wls[k])
	}
	return snap
}

// Snapshot returns the model that was last lowered (sorted by key).
func (s *WorkloadState) Snapshot() *model.Snapshot {
	s.mu.Lock()
	defer s.mu.Unlock()
	return buildSnapshot(s.node, s.loweredSvc, s.loweredWl)
}

// Policies returns the accepted authorization policies by resource name.
func (s *WorkloadState) Policies() map[string]*security.Authorization {
	s.mu.Lock()
	defer s.mu.Unlock()
	return maps.Clone(s.policies)
}

var _ xds.DeltaHandler = (*WorkloadState)(nil)
