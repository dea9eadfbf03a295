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
	id, ok := d.addrIndex.lookup(a)
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
	key, ok := d.svcIDs.key(id)
	if !ok {
		return model.Service{}, false
	}
	if s := d.svcs[key]; s != nil {
		return *s.model(), true
	}
	return model.Service{}, false
}

// ServiceByAddr returns the service with VIP:port a (a copy, as
// ServiceByID).
func (d *Dataplane) ServiceByAddr(a netip.AddrPort) (model.Service, bool) {
	d.mu.Lock()
	id, ok := d.frontends[bpf.FrontendKey{Addr: addr16(a.Addr().Unmap()), Port: htons(a.Port()), Proto: 6}]
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
	s := &model.Snapshot{Node: d.node, Services: make([]model.Service, 0, len(d.svcs)), Workloads: make([]model.Workload, 0, d.wls.len())}
	for _, sv := range d.svcs {
		s.Services = append(s.Services, *sv.model())
	}
	for w := range d.wls.all() {
		s.Workloads = append(s.Workloads, w.model())
	}
	sort.Slice(s.Services, func(i, j int) bool { return s.Services[i].Key < s.Services[j].Key })
	sort.Slice(s.Workloads, func(i, j int) bool { return s.Workloads[i].UID < s.Workloads[j].UID })
	return s
}

// addrIndex maps workload addresses to workload ids (the last workload
// installed with an address owns it), keyed by the maps' address words:
// IPv4 keys are one word, so 100k workloads cost ~1.5 MB.
type addrIndex struct {
	v4 map[uint32]uint32
	v6 map[[4]uint32]uint32
}

func (x *addrIndex) lookup(a netip.Addr) (uint32, bool) {
	w := addr16(a.Unmap())
	if a.Unmap().Is4() {
		id, ok := x.v4[w[3]]
		return id, ok
	}
	id, ok := x.v6[w]
	return id, ok
}

// set adds (or, with remove, drops) the address with map words w.
func (x *addrIndex) set(w [4]uint32, v4 bool, id uint32, remove bool) {
	if v4 {
		if !remove {
			if x.v4 == nil {
				x.v4 = map[uint32]uint32{}
			}
			x.v4[w[3]] = id
		} else if cur, ok := x.v4[w[3]]; ok && cur == id {
			delete(x.v4, w[3])
		}
		return
	}
	if !remove {
		if x.v6 == nil {
			x.v6 = map[[4]uint32]uint32{}
		}
		x.v6[w] = id
	} else if cur, ok := x.v6[w]; ok && cur == id {
		delete(x.v6, w)
	}
}

// index adds (or, with remove, drops) every address of w.
func (x *addrIndex) index(w *wlState, remove bool) {
	if as := w.givenAddrs(); as != nil {
		for _, a := range *as {
			a = a.Unmap()
			x.set(addr16(a), a.Is4(), w.id, remove)
		}
		return
	}
	for fam, has := range w.ep.has {
		if has {
			x.set(w.ep.addr[fam], fam == bpf.FamV4, w.id, remove)
		}
	}
}
