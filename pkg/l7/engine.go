// Package l7 is kernel-native mode's dataplane: it lowers the L7 part of the
// model (Envoy listeners, route configurations, clusters) into the kernel
// tables read by the kernel-native BPF programs (bpf/kn_*.c, which call
// kmesh.ko's kfuncs), and the clusters into VIP-less services of the L4
// dataplane, whose selection code the router reuses. See
// docs/kernel-native.md.
//
// The Engine is also the dataplane.API the Workload API is lowered into in
// kernel-native mode: from it only the enrolment of local workloads (which
// processes are meshed) and the node are taken; routing comes from Envoy
// config.
package l7

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net/netip"
	"reflect"
	"slices"
	"sync"
	"time"

	"github.com/cilium/ebpf"

	"github.com/kmesh-go/kmesh/pkg/bpf"
	"github.com/kmesh-go/kmesh/pkg/bpf/objs"
	"github.com/kmesh-go/kmesh/pkg/compile"
	"github.com/kmesh-go/kmesh/pkg/dataplane"
	"github.com/kmesh-go/kmesh/pkg/kmod"
	"github.com/kmesh-go/kmesh/pkg/model"
)

// Options configure the engine.
type Options struct {
	// Dataplane is the opened L4 dataplane (maps, ids, cgroup, pins).
	Dataplane *dataplane.Dataplane
	// StateDir keeps the cluster ids across restarts (default: none kept).
	StateDir string
	Logger   *slog.Logger
}

// Engine implements compile.L7Sink and dataplane.API (enrolment) on the
// kernel-native tables. Calls are serialized.
type Engine struct {
	mu  sync.Mutex
	dp  *dataplane.Dataplane
	l4  *bpf.Objects
	obj *objects
	ids *clusterIDs
	log *slog.Logger

	gen      uint32 // active generation (kn_active)
	attached bool
	tables   *Tables
	clusters []model.Cluster // applied
	enrol    map[string]model.Workload
	node     model.Node
}

var (
	_ compile.L7Sink = (*Engine)(nil)
	_ dataplane.API  = (*Engine)(nil)
)

// Open loads the kernel-native programs (kmesh.ko must be loaded: the
// daemon calls kmod.Ensure first) over the L4 dataplane's maps, adopting the
// pinned tables of a previous daemon. The programs go live with the first
// ApplyL7, after the tables have been written, so a restart never serves
// from empty tables; until then the previous daemon's programs keep serving.
func Open(opts Options) (*Engine, error) {
	if opts.Dataplane == nil {
		return nil, errors.New("l7: no dataplane")
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	ids, err := loadClusterIDs(opts.StateDir)
	if err != nil {
		return nil, err
	}
	l4 := opts.Dataplane.Objects()
	obj, err := loadObjects(l4, opts.Logger)
	if err != nil {
		return nil, err
	}
	e := &Engine{dp: opts.Dataplane, l4: l4, obj: obj, ids: ids, log: opts.Logger, enrol: map[string]model.Workload{}}
	// What the previous daemon applied: the first updates of this one then
	// change only what changed, instead of removing clusters and enrolment
	// that the sources have not delivered yet.
	e.clusters, e.node = ids.applied.Clusters, ids.applied.Node
	for uid, w := range ids.applied.Enrol {
		e.enrol[uid] = w
	}
	if err := obj.maps[MapActive].Lookup(uint32(0), &e.gen); err != nil {
		obj.close()
		return nil, fmt.Errorf("reading %s: %w", MapActive, err)
	}
	// Leftovers of an update a crash interrupted.
	if err := e.sweep(); err != nil {
		obj.close()
		return nil, err
	}
	opts.Logger.Info("kernel-native programs loaded", "adopted_maps", len(obj.adopted), "generation", e.gen)
	return e, nil
}

// Close releases this process's handles; the pinned programs keep serving.
func (e *Engine) Close() error {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.obj != nil {
		e.obj.close()
		e.obj = nil
	}
	return nil
}

// Live reports whether the kernel-native programs are attached.
func (e *Engine) Live() bool {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.attached
}

// ---- compile.L7Sink ----------------------------------------------------------

// ApplyL7 makes the kernel route new connections by s. It is all or nothing:
// on error the previous configuration keeps serving and the error names what
// was rejected. Existing connections are never touched: a decision is made
// once per connection, on its first request.
func (e *Engine) ApplyL7(ctx context.Context, s *model.Snapshot) error {
	if errs := compile.ValidateL7(s); len(errs) > 0 {
		return errors.Join(errs...)
	}
	t, err := Lower(s)
	if err != nil {
		return err
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.obj == nil {
		return errors.New("l7: engine is closed")
	}
	if e.attached && reflect.DeepEqual(t, e.tables) {
		// xDS delivers a change type by type; most responses leave the
		// lowered tables as they are.
		e.log.Debug("kernel-native config unchanged", "version", s.Version)
		return nil
	}
	start := time.Now()
	names := make([]string, 0, len(t.Clusters))
	keep := map[string]bool{}
	for _, c := range t.Clusters {
		names = append(names, c.Name)
		keep[c.Name] = true
	}
	added, err := e.ids.assign(names, e.busy)
	if err != nil {
		return err
	}
	fail := func(err error) error {
		e.ids.release(added)
		return err
	}
	if err := e.checkCapacity(t); err != nil {
		return fail(err)
	}
	// Make before break: the L4 services of both the old and the new clusters
	// exist while the tables switch over, then the old ones go.
	union := slices.Clone(t.Clusters)
	for _, c := range e.clusters {
		if !keep[c.Name] {
			union = append(union, c)
		}
	}
	if err := e.applyL4(ctx, union); err != nil {
		return fail(err)
	}
	next := e.gen + 1
	if next == 0 {
		next = 1
	}
	if err := e.write(next, t); err != nil {
		e.deleteGeneration(next)
		e.applyL4(ctx, e.clusters) // back to the applied clusters
		return fail(err)
	}
	if err := e.flip(next); err != nil {
		e.deleteGeneration(next)
		e.applyL4(ctx, e.clusters)
		return fail(err)
	}
	e.tables, e.clusters = t, t.Clusters
	if err := e.sweep(); err != nil {
		e.log.Warn("removing the previous kernel-native generation", "err", err)
	}
	if err := e.applyL4(ctx, t.Clusters); err != nil {
		// The new tables serve; stale clusters stay until the next update.
		e.log.Warn("removing the services of deleted clusters", "err", err)
	}
	e.ids.retain(keep)
	e.saveState()
	if !e.attached {
		if err := e.obj.attach(); err != nil {
			return fmt.Errorf("attaching the kernel-native programs: %w", err)
		}
		e.attached = true
		e.log.Info("kernel-native programs attached", "cgroup", e.obj.cgroup)
	}
	e.log.Info("kernel-native config applied", "version", s.Version, "generation", e.gen, "listeners", len(t.Listeners),
		"route_configs", len(t.RouteConfigs), "virtual_hosts", len(t.VHosts), "routes", len(t.Routes),
		"clusters", len(t.Clusters), "took", time.Since(start).Round(time.Microsecond))
	return nil
}

// busy reports a cluster id whose counter still holds open connections.
func (e *Engine) busy(id uint32) bool {
	var n uint32
	if err := e.obj.maps[MapClActive].Lookup(id, &n); err != nil {
		return true
	}
	return n != 0
}

func (e *Engine) checkCapacity(t *Tables) error {
	var hosts, wilds, hdrs int
	for _, rc := range t.RouteConfigs {
		hosts += len(rc.Exact)
		wilds += len(rc.Wildcard)
	}
	for _, r := range t.Routes {
		hdrs += len(r.Headers)
	}
	for _, c := range []struct {
		m string
		n int
	}{{MapListeners, len(t.Listeners)}, {MapRCs, len(t.RouteConfigs)}, {MapHosts, hosts}, {MapWilds, wilds},
		{MapVHosts, len(t.VHosts)}, {MapRoutes, len(t.Routes)}, {MapHdrs, hdrs}, {MapActions, len(t.Actions)},
		{MapClusters, len(t.Clusters)}} {
		if limit := mapLimits[c.m] / 2; c.n > limit {
			return &dataplane.CapacityError{Map: c.m, Limit: limit, What: fmt.Sprintf("a configuration with %d entries", c.n)}
		}
	}
	return nil
}

// applyL4 makes the L4 dataplane hold the clusters' services and endpoints,
// and the enrolled local workloads.
func (e *Engine) applyL4(ctx context.Context, clusters []model.Cluster) error {
	svcs, wls := L4(clusters)
	for _, uid := range slices.Sorted(maps.Keys(e.enrol)) {
		wls = append(wls, e.enrol[uid])
	}
	return e.dp.Apply(ctx, &model.Snapshot{Node: e.node, Services: svcs, Workloads: wls})
}

// write fills generation gen with t.
func (e *Engine) write(gen uint32, t *Tables) error {
	m := e.obj.maps
	put := func(name string, k, v any) error {
		if err := m[name].Put(k, v); err != nil {
			return fmt.Errorf("writing %s: %w", name, err)
		}
		return nil
	}
	cid := func(name string) uint32 { return e.ids.lookup(name) }
	for _, c := range t.Clusters {
		key := ClusterServiceKey(c.Name)
		svc, ok := e.dp.ServiceID(key)
		if !ok {
			return fmt.Errorf("cluster %q: its service is not in the dataplane", c.Name)
		}
		v := objs.KnRouteKnCluster{SvcId: svc, LbPort: htons(ClusterPort), MaxConn: c.MaxConnections,
			TimeoutMs: uint32(c.ConnectTimeout.Milliseconds())}
		if c.ConnectTimeout > 0 && v.TimeoutMs == 0 {
			v.TimeoutMs = 1
		}
		if err := put(MapClusters, objs.KnRouteKnKey{Gen: gen, Id: cid(c.Name)}, v); err != nil {
			return err
		}
	}
	for i, a := range t.Actions {
		var v objs.KnRouteKnAction
		v.N = uint32(len(a.Clusters))
		var sum uint32
		for j, c := range a.Clusters {
			v.Cluster[j] = cid(c) // 0 for an unknown cluster: refused at runtime, like Envoy's 503
			if a.Weights != nil {
				sum += a.Weights[j]
				v.Cum[j] = sum
			}
		}
		v.Total = sum
		if err := put(MapActions, objs.KnRouteKnKey{Gen: gen, Id: uint32(i + 1)}, v); err != nil {
			return err
		}
	}
	for i, vh := range t.VHosts {
		if err := put(MapVHosts, objs.KnRouteKnKey{Gen: gen, Id: uint32(i + 1)}, objs.KnRouteKnVhost{Nroutes: uint32(vh.N)}); err != nil {
			return err
		}
	}
	for i, r := range t.Routes {
		rid := uint32(i + 1)
		v := objs.KnRouteKnRoute{PathMatch: kmod.MatchPrefix, PathLen: uint32(len(r.Path)), Nhdrs: uint32(len(r.Headers)),
			Rid: rid, Action: r.Action}
		if r.Exact {
			v.PathMatch = kmod.MatchExact
		}
		copyChars(v.Path[:], r.Path)
		if err := put(MapRoutes, objs.KnRouteKnKey{Gen: gen, Id: r.VH, Idx: r.Idx}, v); err != nil {
			return err
		}
		for j, h := range r.Headers {
			hv := objs.KnRouteKnHdr{NameLen: uint32(len(h.Name))}
			val := h.Exact
			switch {
			case h.Present:
				hv.Match, val = kmod.MatchPresent, ""
			case h.Prefix != "":
				hv.Match, val = kmod.MatchPrefix, h.Prefix
			default:
				hv.Match = kmod.MatchExact
			}
			hv.Len = uint32(len(h.Name) + len(val))
			copyChars(hv.Nv[:], h.Name+val)
			if err := put(MapHdrs, objs.KnRouteKnKey{Gen: gen, Id: rid, Idx: uint32(j)}, hv); err != nil {
				return err
			}
		}
	}
	for i, rc := range t.RouteConfigs {
		id := uint32(i + 1)
		if err := put(MapRCs, objs.KnRouteKnKey{Gen: gen, Id: id}, objs.KnRouteKnRc{Nwild: uint32(len(rc.Wildcard)), AnyVh: rc.AnyVH}); err != nil {
			return err
		}
		for _, d := range rc.Exact {
			k := objs.KnRouteKnHostKey{Gen: gen, Rc: id, Len: uint32(len(d.Host))}
			copyChars(k.Host[:], d.Host)
			if err := put(MapHosts, k, objs.KnRouteKnVhRef{Vh: d.VH}); err != nil {
				return err
			}
		}
		for j, w := range rc.Wildcard {
			v := objs.KnRouteKnWild{Vh: w.VH, Match: w.MatchFlags(), Len: uint32(len(w.Pattern))}
			if w.Port {
				v.Flags = 1 // KN_WILD_PORT
			}
			copyChars(v.Pat[:], w.Pattern)
			if err := put(MapWilds, objs.KnRouteKnKey{Gen: gen, Id: id, Idx: uint32(j)}, v); err != nil {
				return err
			}
		}
	}
	// Listeners last: nothing of this generation is reachable before them.
	for _, l := range t.Listeners {
		k := objs.KnRouteKnListenerKey{Gen: gen, Port: htons(l.Port)}
		if !l.Addr.IsUnspecified() {
			k.Addr = addr16(l.Addr)
		}
		if err := put(MapListeners, k, objs.KnRouteKnListener{Rc: l.RC, TcpAction: l.TCPAction}); err != nil {
			return err
		}
	}
	return nil
}

// flip makes gen the active generation and waits until no program can still
// be reading the previous one.
func (e *Engine) flip(gen uint32) error {
	if err := e.obj.maps[MapActive].Put(uint32(0), gen); err != nil {
		return fmt.Errorf("switching %s: %w", MapActive, err)
	}
	e.gen = gen
	return e.l4.Barrier()
}

// sweep deletes every table entry of another generation than the active one.
func (e *Engine) sweep() error {
	return e.deleteWhere(func(g uint32) bool { return g != e.gen })
}

func (e *Engine) deleteGeneration(gen uint32) {
	if err := e.deleteWhere(func(g uint32) bool { return g == gen }); err != nil {
		e.log.Warn("removing a half-written kernel-native generation", "err", err)
	}
}

// deleteWhere removes the table entries whose generation (every key starts
// with it) matches.
func (e *Engine) deleteWhere(match func(gen uint32) bool) error {
	var errs []error
	for _, name := range tableMaps {
		m := e.obj.maps[name]
		var dead [][]byte
		var k, v []byte
		it := m.Iterate()
		for it.Next(&k, &v) {
			if match(binary.NativeEndian.Uint32(k[:4])) {
				dead = append(dead, slices.Clone(k))
			}
		}
		if err := it.Err(); err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", name, err))
		}
		for _, k := range dead {
			if err := m.Delete(k); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
				errs = append(errs, fmt.Errorf("%s: %w", name, err))
			}
		}
	}
	return errors.Join(errs...)
}

// ---- dataplane.API: the Workload API in kernel-native mode --------------------

// Apply takes the enrolled local workloads and the node from a full Workload
// API snapshot (services and remote workloads are Envoy config's business).
func (e *Engine) Apply(ctx context.Context, s *model.Snapshot) error {
	enrol := map[string]model.Workload{}
	for _, w := range s.Workloads {
		if w.Enrolment != nil {
			enrol[w.UID] = enrolOnly(w)
		}
	}
	return e.updateEnrolment(ctx, func() { e.enrol, e.node = enrol, s.Node })
}

func (e *Engine) UpsertService(context.Context, model.Service) error { return nil }
func (e *Engine) DeleteService(context.Context, string) error        { return nil }

func (e *Engine) UpsertWorkload(ctx context.Context, w model.Workload) error {
	return e.updateEnrolment(ctx, func() {
		if w.Enrolment != nil {
			e.enrol[w.UID] = enrolOnly(w)
		} else {
			delete(e.enrol, w.UID)
		}
	})
}

func (e *Engine) DeleteWorkload(ctx context.Context, uid string) error {
	return e.updateEnrolment(ctx, func() { delete(e.enrol, uid) })
}

func (e *Engine) SetNode(ctx context.Context, n model.Node) error {
	return e.updateEnrolment(ctx, func() { e.node = n })
}

// updateEnrolment applies change and the L4 state it implies; on error the
// previous enrolment is restored.
func (e *Engine) updateEnrolment(ctx context.Context, change func()) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	prev, prevNode := make(map[string]model.Workload, len(e.enrol)), e.node
	for k, v := range e.enrol {
		prev[k] = v
	}
	change()
	if err := e.applyL4(ctx, e.clusters); err != nil {
		e.enrol, e.node = prev, prevNode
		return err
	}
	e.saveState()
	return nil
}

// saveState persists the cluster ids and what is applied (under e.mu).
func (e *Engine) saveState() {
	e.ids.applied = applied{Clusters: e.clusters, Enrol: e.enrol, Node: e.node}
	if err := e.ids.save(); err != nil {
		e.log.Warn("saving kernel-native state", "err", err)
	}
}

// enrolOnly keeps what kernel-native mode uses of a local workload: who it
// is and where its processes are.
func enrolOnly(w model.Workload) model.Workload {
	return model.Workload{UID: w.UID, Name: w.Name, Namespace: w.Namespace, Locality: w.Locality, Healthy: w.Healthy,
		Enrolment: w.Enrolment}
}

// ---- diagnostics ---------------------------------------------------------------

// StatNames name the kn_stats counters (enum kn_stat, bpf/lib/kn.h).
var StatNames = []string{"connects", "deferred", "defer_refused", "conn_full", "routed_http", "routed_tcp",
	"no_route", "no_cluster", "no_endpoint", "overflow", "unknown_socket", "fallback_pick", "timeout_set", "released"}

// Stats sums the kernel-native counters over CPUs.
func (e *Engine) Stats() (map[string]uint64, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.obj == nil {
		return nil, errors.New("l7: engine is closed")
	}
	out := map[string]uint64{}
	for i, name := range StatNames {
		var per []uint64
		if err := e.obj.maps[MapStats].Lookup(uint32(i), &per); err != nil {
			return nil, err
		}
		for _, v := range per {
			out[name] += v
		}
	}
	return out, nil
}

// ClusterConnections is the number of open connections the circuit breaker
// counts for a cluster.
func (e *Engine) ClusterConnections(name string) (uint32, bool) {
	e.mu.Lock()
	defer e.mu.Unlock()
	id := e.ids.lookup(name)
	if id == 0 || e.obj == nil {
		return 0, false
	}
	var n uint32
	if err := e.obj.maps[MapClActive].Lookup(id, &n); err != nil {
		return 0, false
	}
	return n, true
}

// Generation is the active table generation (0 before the first config).
func (e *Engine) Generation() uint32 {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.gen
}

// ---- helpers -----------------------------------------------------------------

func copyChars(dst []int8, s string) {
	for i := 0; i < len(s) && i < len(dst); i++ {
		dst[i] = int8(s[i])
	}
}

func htons(p uint16) uint16 {
	var b [2]byte
	binary.BigEndian.PutUint16(b[:], p)
	return binary.NativeEndian.Uint16(b[:])
}

// addr16 is the maps' address form: four network-order words, IPv4 mapped.
func addr16(a netip.Addr) [4]uint32 {
	b := a.Unmap().As16()
	var out [4]uint32
	for i := range out {
		out[i] = binary.NativeEndian.Uint32(b[i*4:])
	}
	return out
}
