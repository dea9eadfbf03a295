package daemon

import (
	"context"
	"errors"
	"net/netip"
	"sort"
	"sync"
	"sync/atomic"

	"github.com/kmesh-go/kmesh/pkg/dataplane"
	"github.com/kmesh-go/kmesh/pkg/model"
	"github.com/kmesh-go/kmesh/pkg/telemetry"
)

// tracker sits between the configuration source and the dataplane. It
// forwards every call unchanged and counts them; the first full sync applied
// is the readiness signal. What is applied (the config dump, the names
// telemetry labels are made of) is read back from the dataplane in
// dual-engine mode: its workload state is the daemon's only copy of the
// model, since a second one here would double the daemon's memory for a
// large mesh. In kernel-native mode the engine keeps only local enrolments,
// so the tracker mirrors what each successful call applied. The calls are
// all-or-nothing, so a failed call leaves what is reported as it was.
type tracker struct {
	dp *dataplane.Dataplane
	// api receives the calls: dp, or in kernel-native mode the engine
	// (pkg/l7), which takes only the enrolment of local workloads.
	api dataplane.API

	mu        sync.RWMutex
	version   string
	node      model.Node               // mirror (kernel-native mode only)
	services  map[string]model.Service // mirror
	workloads map[string]model.Workload
	byAddr    map[netip.Addr]string // workload address -> uid (mirror)
	synced    atomic.Bool
	applies   atomic.Uint64
	rejects   atomic.Uint64
}

func newTracker(dp *dataplane.Dataplane) *tracker {
	return &tracker{dp: dp, api: dp, services: map[string]model.Service{}, workloads: map[string]model.Workload{},
		byAddr: map[netip.Addr]string{}}
}

// mirrors is true when the calls go elsewhere than the dataplane, which
// then cannot report them (kernel-native mode).
func (t *tracker) mirrors() bool { return t.api != dataplane.API(t.dp) }

var _ dataplane.API = (*tracker)(nil)

func (t *tracker) done(err error) error {
	if err != nil {
		t.rejects.Add(1)
	} else {
		t.applies.Add(1)
	}
	return err
}

func (t *tracker) Apply(ctx context.Context, s *model.Snapshot) error {
	if err := t.done(t.api.Apply(ctx, s)); err != nil {
		return err
	}
	t.mu.Lock()
	t.version = s.Version
	if !t.mirrors() {
		t.mu.Unlock()
		t.synced.Store(true)
		return nil
	}
	t.node = s.Node
	t.services = make(map[string]model.Service, len(s.Services))
	for _, svc := range s.Services {
		t.services[svc.Key] = svc
	}
	t.workloads = make(map[string]model.Workload, len(s.Workloads))
	t.byAddr = make(map[netip.Addr]string, len(s.Workloads))
	for _, wl := range s.Workloads {
		t.putWorkloadLocked(wl)
	}
	t.mu.Unlock()
	t.synced.Store(true)
	return nil
}

func (t *tracker) UpsertService(ctx context.Context, svc model.Service) error {
	if err := t.done(t.api.UpsertService(ctx, svc)); err != nil {
		return err
	}
	if !t.mirrors() {
		return nil
	}
	t.mu.Lock()
	t.services[svc.Key] = svc
	t.mu.Unlock()
	return nil
}

func (t *tracker) DeleteService(ctx context.Context, key string) error {
	if err := t.done(t.api.DeleteService(ctx, key)); err != nil {
		return err
	}
	if !t.mirrors() {
		return nil
	}
	t.mu.Lock()
	delete(t.services, key)
	t.mu.Unlock()
	return nil
}

func (t *tracker) UpsertWorkload(ctx context.Context, wl model.Workload) error {
	if err := t.done(t.api.UpsertWorkload(ctx, wl)); err != nil {
		return err
	}
	if !t.mirrors() {
		return nil
	}
	t.mu.Lock()
	t.removeWorkloadLocked(wl.UID)
	t.putWorkloadLocked(wl)
	t.mu.Unlock()
	return nil
}

func (t *tracker) DeleteWorkload(ctx context.Context, uid string) error {
	if err := t.done(t.api.DeleteWorkload(ctx, uid)); err != nil {
		return err
	}
	if !t.mirrors() {
		return nil
	}
	t.mu.Lock()
	t.removeWorkloadLocked(uid)
	t.mu.Unlock()
	return nil
}

func (t *tracker) SetNode(ctx context.Context, n model.Node) error {
	if err := t.done(t.api.SetNode(ctx, n)); err != nil {
		return err
	}
	if !t.mirrors() {
		return nil
	}
	t.mu.Lock()
	t.node = n
	t.mu.Unlock()
	return nil
}

func (t *tracker) putWorkloadLocked(wl model.Workload) {
	t.workloads[wl.UID] = wl
	for _, a := range wl.Addresses {
		t.byAddr[a.Unmap()] = wl.UID
	}
}

func (t *tracker) removeWorkloadLocked(uid string) {
	old, ok := t.workloads[uid]
	if !ok {
		return
	}
	for _, a := range old.Addresses {
		if t.byAddr[a.Unmap()] == uid {
			delete(t.byAddr, a.Unmap())
		}
	}
	delete(t.workloads, uid)
}

// errNotSynced is why the daemon is not ready before the first full config.
var errNotSynced = errors.New("waiting for the first full configuration from the control plane")

// ready is nil once the first full configuration has been applied.
func (t *tracker) ready() error {
	if !t.synced.Load() {
		return errNotSynced
	}
	return nil
}

// snapshot is the applied model, sorted for stable dumps.
func (t *tracker) snapshot() *model.Snapshot {
	if !t.mirrors() {
		s := t.dp.Snapshot()
		t.mu.RLock()
		s.Version = t.version
		t.mu.RUnlock()
		return s
	}
	t.mu.RLock()
	defer t.mu.RUnlock()
	s := &model.Snapshot{Version: t.version, Node: t.node,
		Services: make([]model.Service, 0, len(t.services)), Workloads: make([]model.Workload, 0, len(t.workloads))}
	for _, svc := range t.services {
		s.Services = append(s.Services, svc)
	}
	for _, wl := range t.workloads {
		s.Workloads = append(s.Workloads, wl)
	}
	sort.Slice(s.Services, func(i, j int) bool { return s.Services[i].Key < s.Services[j].Key })
	sort.Slice(s.Workloads, func(i, j int) bool { return s.Workloads[i].UID < s.Workloads[j].UID })
	return s
}

// Names for telemetry labels.

func workloadInfo(uid, name, namespace string) telemetry.WorkloadInfo {
	if name == "" {
		name = uid
	}
	return telemetry.WorkloadInfo{Name: name, Namespace: orUnknown(namespace), UID: uid}
}

func (t *tracker) workloadInfo(uid string) (telemetry.WorkloadInfo, bool) {
	t.mu.RLock()
	wl, ok := t.workloads[uid]
	t.mu.RUnlock()
	if !ok {
		return telemetry.WorkloadInfo{}, false
	}
	return workloadInfo(wl.UID, wl.Name, wl.Namespace), true
}

func (t *tracker) WorkloadByID(id uint32) (telemetry.WorkloadInfo, bool) {
	if !t.mirrors() {
		w, ok := t.dp.WorkloadByID(id)
		return workloadInfo(w.UID, w.Name, w.Namespace), ok
	}
	uid, ok := t.dp.WorkloadUID(id)
	if !ok {
		return telemetry.WorkloadInfo{}, false
	}
	return t.workloadInfo(uid)
}

func (t *tracker) WorkloadByAddr(a netip.Addr) (telemetry.WorkloadInfo, bool) {
	if !t.mirrors() {
		w, ok := t.dp.WorkloadByAddr(a)
		return workloadInfo(w.UID, w.Name, w.Namespace), ok
	}
	t.mu.RLock()
	uid, ok := t.byAddr[a.Unmap()]
	t.mu.RUnlock()
	if !ok {
		return telemetry.WorkloadInfo{}, false
	}
	return t.workloadInfo(uid)
}

func (t *tracker) ServiceByID(id uint32) (telemetry.ServiceInfo, bool) {
	if !t.mirrors() {
		svc, ok := t.dp.ServiceByID(id)
		return serviceInfo(svc), ok
	}
	key, ok := t.dp.ServiceKey(id)
	if !ok {
		return telemetry.ServiceInfo{}, false
	}
	t.mu.RLock()
	svc, ok := t.services[key]
	t.mu.RUnlock()
	if !ok {
		return telemetry.ServiceInfo{}, false
	}
	return serviceInfo(svc), true
}

func (t *tracker) ServiceByAddr(a netip.AddrPort) (telemetry.ServiceInfo, bool) {
	if !t.mirrors() {
		svc, ok := t.dp.ServiceByAddr(a)
		return serviceInfo(svc), ok
	}
	t.mu.RLock()
	defer t.mu.RUnlock()
	for _, svc := range t.services {
		for _, v := range svc.VIPs {
			if v.Unmap() != a.Addr().Unmap() {
				continue
			}
			for _, p := range svc.Ports {
				if p.Port == a.Port() {
					return serviceInfo(svc), true
				}
			}
		}
	}
	return telemetry.ServiceInfo{}, false
}

func serviceInfo(svc model.Service) telemetry.ServiceInfo {
	host := svc.Hostname
	if host == "" {
		host = svc.Key
	}
	name := svc.Name
	if name == "" {
		name = host
	}
	return telemetry.ServiceInfo{Hostname: host, Name: name, Namespace: orUnknown(svc.Namespace)}
}

func orUnknown(s string) string {
	if s == "" {
		return "unknown"
	}
	return s
}
