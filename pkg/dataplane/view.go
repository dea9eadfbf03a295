package dataplane

import (
	"net/netip"
	"sort"
	"strings"

	"github.com/kmesh-go/kmesh/pkg/bpf"
	"github.com/kmesh-go/kmesh/pkg/model"
)

// The dataplane keeps the only copy of the applied model in the daemon (a
// node may carry 100k workloads): these read it back, for the config dump
// and for telemetry's names. Like every call they wait for an update in
// progress.

// WorkloadName names a workload in telemetry.
type WorkloadName struct {
	UID, Name, Namespace string
}

// names are copied (one allocation): the table's strings point into its
// arena, and telemetry may keep a name.
func (w *wlState) names() WorkloadName {
	c := *w
	c.strs = strings.Clone(w.strs)
	return WorkloadName{UID: c.uid(), Name: c.name(), Namespace: c.namespace()}
}

// WorkloadByID names the workload behind a workload id of the maps.
func (d *Dataplane) WorkloadByID(id uint32) (WorkloadName, bool) {
	d.mu.Lock()
	defer d.mu.Unlock()
	var w wlState
	var scratch []byte
	if d.wls.loadID(id, &w, &scratch) {
		return w.names(), true
	}
	return WorkloadName{}, false
}

// WorkloadByAddr names the workload with address a (any of its addresses).
func (d *Dataplane) WorkloadByAddr(a netip.Addr) (WorkloadName, bool) {
	d.mu.Lock()
	defer d.mu.Unlock()
	id, ok := d.wls.addrOwner(a)
	if !ok {
		return WorkloadName{}, false
	}
	var w wlState
	var scratch []byte
	if d.wls.loadID(id, &w, &scratch) {
		return w.names(), true
	}
	return WorkloadName{}, false
}

// ServiceByID returns the service behind a service id of the maps (a copy:
// services are kept encoded).
func (d *Dataplane) ServiceByID(id uint32) (model.Service, bool) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if s, ok := d.svcs.slotOfID(id); ok && d.svcs.hasSvc(s) {
		return *d.svcModel(s), true
	}
	return model.Service{}, false
}

// ServiceByAddr returns the service with VIP:port a (a copy, as
// ServiceByID).
func (d *Dataplane) ServiceByAddr(a netip.AddrPort) (model.Service, bool) {
	d.mu.Lock()
	id, ok := d.frontends.get(bpf.FrontendKey{Addr: addr16(a.Addr().Unmap()), Port: htons(a.Port()), Proto: 6})
	d.mu.Unlock()
	if !ok {
		return model.Service{}, false
	}
	return d.ServiceByID(id)
}

// Snapshot returns the applied model (services and workloads sorted by key;
// Version is the caller's).
func (d *Dataplane) Snapshot() *model.Snapshot {
	d.mu.Lock()
	defer d.mu.Unlock()
	s := &model.Snapshot{Node: d.node, Services: make([]model.Service, 0, d.svcs.nSvc), Workloads: make([]model.Workload, 0, d.wls.len())}
	for sv := range d.svcs.services() {
		s.Services = append(s.Services, *d.svcModel(sv))
	}
	for w := range d.wls.all() {
		s.Workloads = append(s.Workloads, w.model())
	}
	sort.Slice(s.Services, func(i, j int) bool { return s.Services[i].Key < s.Services[j].Key })
	sort.Slice(s.Workloads, func(i, j int) bool { return s.Workloads[i].UID < s.Workloads[j].UID })
	return s
}
