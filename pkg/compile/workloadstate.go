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
// waypoints, and lower what changed.
func (s *WorkloadState) addresses(ctx context.Context, u *xds.DeltaUpdate) (map[string]error, int, error) {
	rejected := map[string]error{}
	if len(u.Resources) > s.opts.FullApplyThreshold {
		// A big push allocates hundreds of MB of short-lived objects; with the
		// default GOGC the collector runs many times over a live heap that is
		// mostly the model itself. Collect less often while it lasts.
		defer debug.SetGCPercent(debug.SetGCPercent(400))
	}
	svcs, wls := cloneSized(s.services, len(u.Resources)), cloneSized(s.workloads, len(u.Resources))

	// convert + validate, per resource (in parallel for big pushes).
	conv := convertAll(u.Resources)
	touched := make(map[string]bool, len(u.Resources)+len(u.Removed))
	for i, r := range u.Resources {
		name, c := r.GetName(), conv[i]
		if c.err != nil {
			rejected[name] = c.err
			continue
		}
		touched[name] = true
		if c.a.Service != nil {
			svcs[name] = c.a
			delete(wls, name)
		} else {
			wls[name] = c.a
			delete(svcs, name)
		}
	}
	for _, name := range u.Removed {
		if _, ok := svcs[name]; ok {
			touched[name] = true
		}
		if _, ok := wls[name]; ok {
			touched[name] = true
		}
		delete(svcs, name)
		delete(wls, name)
	}

	// cross-check: a VIP belongs to one service, and no workload uses a VIP.
	// An object of this response that conflicts is rejected and its previous
	// version (if any) kept; repeat until consistent (each round reverts one
	// object, and the previous state was consistent).
	for {
		name, err := conflict(svcs, wls, touched)
		if name == "" {
			break
		}
		rejected[name] = err
		delete(touched, name)
		revert(name, svcs, s.services)
		revert(name, wls, s.workloads)
	}

	// Materialize the model objects that may have changed: touched ones and
	// those whose waypoint is an IP (its owner may have changed).
	vips := vipIndex(svcs)
	newSvc, newWl := cloneSized(s.loweredSvc, len(svcs)), cloneSized(s.loweredWl, len(wls))
	for name, a := range svcs {
		if touched[name] || a.WaypointIP.IsValid() {
			newSvc[name] = s.materializeService(a, vips)
		}
	}
	for name, a := range wls {
		if touched[name] || a.WaypointIP.IsValid() {
			newWl[name] = s.materializeWorkload(a, vips)
		}
	}
	for name := range touched {
		if _, ok := svcs[name]; !ok {
			delete(newSvc, name)
		}
		if _, ok := wls[name]; !ok {
			delete(newWl, name)
		}
	}

	full := u.Resync || len(touched) > s.opts.FullApplyThreshold
	var ch Change
	if !full {
		ch = diff(s.loweredSvc, newSvc, s.loweredWl, newWl, touched)
	}
	for _, svc := range ch.Services {
		if svcs[svc.Key].WaypointIP.IsValid() && svc.Waypoint == nil {
			s.log.Warn("waypoint address is not a known service VIP yet; traffic goes direct until it is", "service", svc.Key, "waypoint", svcs[svc.Key].WaypointIP)
		}
	}
	for _, w := range ch.Workloads {
		if wls[w.UID].WaypointIP.IsValid() && w.Waypoint == nil {
			s.log.Warn("waypoint address is not a known service VIP yet; traffic goes direct until it is", "workload", w.UID, "waypoint", wls[w.UID].WaypointIP)
		}
	}
	node := s.learnNode(newWl)
	if full {
		snap := buildSnapshot(node, newSvc, newWl)
		if err := s.api.Apply(ctx, snap); err != nil {
			return nil, 0, fmt.Errorf("applying %d services and %d workloads: %w", len(newSvc), len(newWl), err)
		}
		s.node, s.nodeSet = node, true
	} else {
		if !s.nodeSet || !reflect.DeepEqual(node, s.node) {
			if err := s.api.SetNode(ctx, node); err != nil {
				return nil, 0, fmt.Errorf("setting node locality: %w", err)
			}
			s.node, s.nodeSet = node, true
		}
		for name, err := range Lower(ctx, s.api, ch) {
			// The dataplane kept its previous state for this object: so do we.
			rejected[name] = err
			revert(name, svcs, s.services)
			revert(name, wls, s.workloads)
			revert(name, newSvc, s.loweredSvc)
			revert(name, newWl, s.loweredWl)
		}
	}
	s.services, s.workloads = svcs, wls
	s.loweredSvc, s.loweredWl = newSvc, newWl
	if full {
		return rejected, len(newSvc) + len(newWl), nil
	}
	return rejected, ch.Size(), nil
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

// cloneSized copies m into a map with room for extra more entries.
func cloneSized[T any](m map[string]T, extra int) map[string]T {
	out := make(map[string]T, len(m)+extra)
	maps.Copy(out, m)
	return out
}

// revert puts back prev's version of name in cur (or removes it).
func revert[T any](name string, cur, prev map[string]T) {
	if old, ok := prev[name]; ok {
		cur[name] = old
	} else {
		delete(cur, name)
	}
}

// conflict finds a touched object that shares an address with another one.
func conflict(svcs, wls map[string]Address, touched map[string]bool) (string, error) {
	owner := map[netip.Addr]string{}
	// Untouched objects first: they were consistent, so the newcomer loses.
	names := sortedNames(svcs)
	sort.SliceStable(names, func(i, j int) bool { return !touched[names[i]] && touched[names[j]] })
	for _, n := range names {
		for _, ip := range svcs[n].Service.VIPs {
			if o, ok := owner[ip]; ok {
				return n, fmt.Errorf("VIP %s is already used by service %q", ip, o)
			}
			owner[ip] = n
		}
	}
	// Workloads: report the smallest conflicting name (deterministic without
	// sorting 100k names on a full push).
	bad, badErr := "", error(nil)
	for n, a := range wls {
		if !touched[n] || bad != "" && n > bad {
			continue
		}
		for _, ip := range a.Workload.Addresses {
			if o, ok := owner[ip]; ok {
				bad, badErr = n, fmt.Errorf("address %s is the VIP of service %q", ip, o)
				break
			}
		}
	}
	return bad, badErr
}

func vipIndex(svcs map[string]Address) map[netip.Addr]string {
	idx := map[netip.Addr]string{}
	for n, a := range svcs {
		for _, ip := range a.Service.VIPs {
			idx[ip] = n
		}
	}
	return idx
}

func (s *WorkloadState) resolveWaypoint(obj string, ip netip.Addr, port uint16, vips map[netip.Addr]string) *model.WaypointRef {
	if !ip.IsValid() {
		return nil
	}
	if key, ok := vips[ip]; ok && key != obj {
		return &model.WaypointRef{Service: key, Port: port}
	}
	return nil
}

func (s *WorkloadState) materializeService(a Address, vips map[netip.Addr]string) model.Service {
	svc := *a.Service
	if a.WaypointIP.IsValid() {
		svc.Waypoint = s.resolveWaypoint(svc.Key, a.WaypointIP, a.WaypointPort, vips)
	}
	return svc
}

func (s *WorkloadState) materializeWorkload(a Address, vips map[netip.Addr]string) model.Workload {
	wl := *a.Workload
	if a.WaypointIP.IsValid() {
		wl.Waypoint = s.resolveWaypoint(wl.UID, a.WaypointIP, a.WaypointPort, vips)
	}
	return wl
}

// diff lists what differs between the lowered and the new model. Only touched
// objects and those with a waypoint can change.
func diff(oldSvc, newSvc map[string]model.Service, oldWl, newWl map[string]model.Workload, touched map[string]bool) Change {
	var ch Change
	for name, s := range newSvc {
		if o, ok := oldSvc[name]; !ok || (touched[name] || s.Waypoint != nil || o.Waypoint != nil) && !reflect.DeepEqual(o, s) {
			ch.Services = append(ch.Services, s)
		}
	}
	for name := range oldSvc {
		if _, ok := newSvc[name]; !ok {
			ch.DeletedServices = append(ch.DeletedServices, name)
		}
	}
	for name, w := range newWl {
		if o, ok := oldWl[name]; !ok || (touched[name] || w.Waypoint != nil || o.Waypoint != nil) && !reflect.DeepEqual(o, w) {
			ch.Workloads = append(ch.Workloads, w)
		}
	}
	for name := range oldWl {
		if _, ok := newWl[name]; !ok {
			ch.DeletedWorkloads = append(ch.DeletedWorkloads, name)
		}
	}
	return ch
}

// learnNode gives the node the locality of its first local workload.
func (s *WorkloadState) learnNode(wls map[string]model.Workload) model.Node {
	n := model.Node{Name: s.opts.NodeName}
	if n.Name == "" {
		return n
	}
	best := ""
	for uid, w := range wls {
		if w.Locality.Node == n.Name && (best == "" || uid < best) {
			best = uid
		}
	}
	if best != "" {
		n.Locality = wls[best].Locality
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
