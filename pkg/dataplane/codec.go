package dataplane

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"slices"
	"strings"

	"github.com/kmesh-go/kmesh/pkg/model"
)

// A compact binary encoding of the persisted state: the state file is
// rewritten after changes, and for 100k workloads JSON or gob cost ~0.5 s of
// CPU per write; this costs a few tens of milliseconds. Services are written
// whole; workloads as the dataplane's own record of them (wlState). The
// model.Workload encoder is also what hashWorkload hashes, so it must cover
// every field: TestCodecCoversModel fills each field by reflection and
// checks round trips, so a field added to pkg/model and not here fails it.

const codecMagic = "KMDP"

// encoder appends to b; with w set (encodeState) the caller spills b to w
// as it grows. Appending to a byte slice, with no io.Writer call per field,
// is what keeps hashing 100k workloads per full push cheap (hashWorkload).
type encoder struct {
	b   []byte
	w   io.Writer
	err error
}

func (e *encoder) uvarint(v uint64) { e.b = binary.AppendUvarint(e.b, v) }

func (e *encoder) write(b []byte) { e.b = append(e.b, b...) }

func (e *encoder) str(s string) {
	e.b = binary.AppendUvarint(e.b, uint64(len(s)))
	e.b = append(e.b, s...)
}

// spill writes what is buffered to w once it exceeds 64 KiB.
func (e *encoder) spill() {
	if len(e.b) >= 64<<10 {
		e.flush()
	}
}

func (e *encoder) flush() {
	if e.err == nil && len(e.b) > 0 {
		_, e.err = e.w.Write(e.b)
	}
	e.b = e.b[:0]
}

func (e *encoder) boolean(b bool) {
	if b {
		e.uvarint(1)
	} else {
		e.uvarint(0)
	}
}

// addrs writes each address as netip's binary form (4 or 16 bytes, plus the
// zone if any), without allocating for the common zone-less case.
func (e *encoder) addrs(as []netip.Addr) {
	e.uvarint(uint64(len(as)))
	for _, a := range as {
		switch {
		case a.Is4():
			b := a.As4()
			e.uvarint(4)
			e.write(b[:])
		case a.Is6() && a.Zone() == "":
			b := a.As16()
			e.uvarint(16)
			e.write(b[:])
		default:
			b, _ := a.MarshalBinary()
			e.uvarint(uint64(len(b)))
			e.write(b)
		}
	}
}

func (e *encoder) locality(l *model.Locality) {
	e.str(l.Region)
	e.str(l.Zone)
	e.str(l.Subzone)
	e.str(l.Node)
	e.str(l.Cluster)
	e.str(l.Network)
}

func (e *encoder) waypoint(w *model.WaypointRef) {
	e.boolean(w != nil)
	if w != nil {
		e.str(w.Service)
		e.uvarint(uint64(w.Port))
		e.str(string(w.ServerFirst))
	}
}

func (e *encoder) service(s *model.Service) {
	e.str(s.Key)
	e.str(s.Name)
	e.str(s.Namespace)
	e.str(s.Hostname)
	e.addrs(s.VIPs)
	e.uvarint(uint64(len(s.Ports)))
	for _, p := range s.Ports {
		e.str(p.Name)
		e.uvarint(uint64(p.Port))
		e.uvarint(uint64(p.TargetPort))
		e.str(string(p.Protocol))
		e.boolean(p.ServerFirst)
	}
	e.str(string(s.LB.Algorithm))
	e.str(string(s.LB.Locality))
	e.uvarint(uint64(len(s.LB.RoutingPreference)))
	for _, sc := range s.LB.RoutingPreference {
		e.str(string(sc))
	}
	e.waypoint(s.Waypoint)
}

func (e *encoder) workload(w *model.Workload) {
	e.str(w.UID)
	e.str(w.Name)
	e.str(w.Namespace)
	e.addrs(w.Addresses)
	e.locality(&w.Locality)
	e.uvarint(uint64(w.Weight))
	var small [4]string // most workloads back one or two services
	keys := small[:0]
	for k := range w.Services {
		keys = append(keys, k)
	}
	if len(keys) > 1 {
		slices.Sort(keys)
	}
	e.uvarint(uint64(len(keys)))
	for _, k := range keys {
		e.str(k)
		ports := w.Services[k]
		e.boolean(ports != nil)
		e.uvarint(uint64(len(ports)))
		for _, p := range ports {
			e.uvarint(uint64(p.ServicePort))
			e.uvarint(uint64(p.TargetPort))
		}
	}
	e.boolean(w.Healthy)
	e.waypoint(w.Waypoint)
	e.boolean(w.Enrolment != nil)
	if w.Enrolment != nil {
		e.str(w.Enrolment.CgroupPath)
		e.str(w.Enrolment.NetnsPath)
	}
}

// state encodes the dataplane's own record of a workload (wlState).
func (e *encoder) state(w *wlState) {
	e.str(w.uid())
	e.uvarint(uint64(w.id))
	e.uvarint(w.hash)
	for fam := range w.ep.has {
		e.boolean(w.ep.has[fam])
		for _, word := range w.ep.addr[fam] {
			e.uvarint(uint64(word))
		}
	}
	e.boolean(w.ep.local)
	e.uvarint(uint64(w.weight))
	e.boolean(w.healthy())
	e.locality(w.loc)
	e.uvarint(uint64(len(w.members())))
	for _, m := range w.members() {
		e.str(m.key)
		e.boolean(m.ports != nil)
		e.uvarint(uint64(len(m.ports)))
		for _, p := range m.ports {
			e.uvarint(uint64(p.ServicePort))
			e.uvarint(uint64(p.TargetPort))
		}
	}
	k := w.enrolment()
	e.boolean(k.present)
	e.uvarint(k.cgroup)
	e.uvarint(uint64(k.level))
	e.uvarint(k.netns)
	e.str(k.cgPath)
	e.str(k.nsPath)
	e.waypoint(w.waypointRef())
	// format 3
	e.str(w.name())
	e.str(w.namespace())
	e.str(k.cgGiven)
	e.boolean(w.givenAddrs() != nil)
	if a := w.givenAddrs(); a != nil {
		e.addrs(*a)
	}
}

// encodeState writes p (format stateFormat).
func encodeState(w io.Writer, p *persisted) error {
	e := &encoder{w: w, b: make([]byte, 0, 80<<10)}
	e.write([]byte(codecMagic))
	e.uvarint(uint64(p.Format))
	e.str(p.Node.Name)
	e.locality(&p.Node.Locality)
	e.uvarint(uint64(len(p.Services)))
	for _, s := range p.Services {
		e.uvarint(uint64(s.ID))
		if s.Service != nil {
			e.service(s.Service)
		} else {
			e.b = append(e.b, s.enc...)
		}
		e.spill()
	}
	if p.wls != nil {
		e.uvarint(uint64(p.wls.len()))
		for w := range p.wls.all() {
			e.state(w)
			e.spill()
		}
	} else {
		e.uvarint(uint64(len(p.Workloads)))
		for _, w := range p.Workloads {
			e.state(w)
			e.spill()
		}
	}
	e.flush()
	return e.err
}

type decoder struct {
	r     *bufio.Reader
	err   error
	alloc stateAlloc // the states read (chunked, see stateAlloc)
}

func (d *decoder) uvarint() uint64 {
	if d.err != nil {
		return 0
	}
	v, err := binary.ReadUvarint(d.r)
	d.err = err
	return v
}

// count reads a length, bounded so a corrupt file cannot ask for gigabytes.
func (d *decoder) count(limit uint64) int {
	n := d.uvarint()
	if n > limit && d.err == nil {
		d.err = fmt.Errorf("corrupt state: length %d over %d", n, limit)
	}
	if d.err != nil {
		return 0
	}
	return int(n)
}

func (d *decoder) str() string {
	n := d.count(1 << 20)
	if n == 0 {
		return ""
	}
	b := make([]byte, n)
	if _, err := io.ReadFull(d.r, b); err != nil && d.err == nil {
		d.err = err
	}
	return string(b)
}

func (d *decoder) boolean() bool { return d.uvarint() != 0 }

func (d *decoder) u16() uint16 {
	v := d.uvarint()
	if v > 0xffff && d.err == nil {
		d.err = errors.New("corrupt state: port over 65535")
	}
	return uint16(v)
}

func (d *decoder) addrs() []netip.Addr {
	n := d.count(1 << 16)
	if n == 0 {
		return nil
	}
	out := make([]netip.Addr, n)
	for i := range out {
		b := make([]byte, d.count(32))
		if _, err := io.ReadFull(d.r, b); err != nil && d.err == nil {
			d.err = err
		}
		if d.err == nil {
			d.err = out[i].UnmarshalBinary(b)
		}
	}
	return out
}

func (d *decoder) locality() model.Locality {
	return model.Locality{Region: d.str(), Zone: d.str(), Subzone: d.str(), Node: d.str(), Cluster: d.str(), Network: d.str()}
}

func (d *decoder) waypoint() *model.WaypointRef {
	if !d.boolean() {
		return nil
	}
	return &model.WaypointRef{Service: d.str(), Port: d.u16(), ServerFirst: model.ServerFirstPolicy(d.str())}
}

// encodeService is s in the state file's encoding, as a string of its own.
func encodeService(s *model.Service) string {
	var e encoder
	e.service(s)
	return string(e.b)
}

// decodeService reverses encodeService (the string is the dataplane's own,
// so it is well-formed).
func decodeService(enc string) *model.Service {
	d := &decoder{r: bufio.NewReaderSize(strings.NewReader(enc), 16)}
	return d.service()
}

func (d *decoder) service() *model.Service {
	s := &model.Service{Key: d.str(), Name: d.str(), Namespace: d.str(), Hostname: d.str(), VIPs: d.addrs()}
	if n := d.count(1 << 16); n > 0 {
		s.Ports = make([]model.ServicePort, n)
		for i := range s.Ports {
			s.Ports[i] = model.ServicePort{Name: d.str(), Port: d.u16(), TargetPort: d.u16(), Protocol: model.Protocol(d.str()), ServerFirst: d.boolean()}
		}
	}
	s.LB.Algorithm = model.LBAlgorithm(d.str())
	s.LB.Locality = model.LocalityMode(d.str())
	if n := d.count(64); n > 0 {
		s.LB.RoutingPreference = make([]model.LocalityScope, n)
		for i := range s.LB.RoutingPreference {
			s.LB.RoutingPreference[i] = model.LocalityScope(d.str())
		}
	}
	s.Waypoint = d.waypoint()
	return s
}

func (d *decoder) u32() uint32 {
	v := d.uvarint()
	if v > 0xffffffff && d.err == nil {
		d.err = errors.New("corrupt state: value over 32 bits")
	}
	return uint32(v)
}

func (d *decoder) state(format int) *wlState {
	uid := d.str()
	w := &wlState{id: d.u32(), hash: d.uvarint()}
	for fam := range w.ep.has {
		w.ep.has[fam] = d.boolean()
		for i := range w.ep.addr[fam] {
			w.ep.addr[fam][i] = d.u32()
		}
	}
	w.ep.local = d.boolean()
	w.weight = d.u32()
	healthy := d.boolean()
	loc := d.locality()
	w.loc = &loc
	if n := d.count(1 << 20); n > 0 {
		ms := make([]membership, n)
		w.svcs = &ms
		for i := range ms {
			m := membership{key: d.str()}
			isSet := d.boolean()
			if k := d.count(1 << 16); k > 0 || isSet {
				m.ports = make([]model.WorkloadPort, k)
			}
			for j := range m.ports {
				m.ports[j] = model.WorkloadPort{ServicePort: d.u16(), TargetPort: d.u16()}
			}
			ms[i] = m
		}
	}
	k := enrolKey{present: d.boolean(), cgroup: d.uvarint(), level: int(d.uvarint()), netns: d.uvarint(), cgPath: d.str(), nsPath: d.str()}
	wp := d.waypoint()
	var name, namespace string
	var addrs *[]netip.Addr
	if format >= 3 {
		name, namespace, k.cgGiven = d.str(), d.str(), d.str()
		if d.boolean() {
			a := d.addrs()
			addrs = &a
		}
	} else {
		// Format 2 did not keep names and the address list: zero the hash
		// so the next full sync plans the workload again and fills them.
		w.hash = 0
		if k.cgroup != 0 {
			k.cgGiven = k.cgPath
		}
	}
	n := d.alloc.state(uid, name, namespace)
	n.id, n.hash, n.ep, n.weight, n.loc, n.svcs = w.id, w.hash, w.ep, w.weight, w.loc, w.svcs
	n.setHealthy(healthy)
	if wp != nil {
		n.rare().wp = wp
	}
	if addrs != nil {
		n.rare().addrs = addrs
	}
	if k.present {
		n.rare().enrol = &k
	}
	return n
}

func (d *decoder) workload() *model.Workload {
	w := &model.Workload{UID: d.str(), Name: d.str(), Namespace: d.str(), Addresses: d.addrs(), Locality: d.locality()}
	w.Weight = uint32(d.uvarint())
	if n := d.count(1 << 20); n > 0 {
		w.Services = make(map[string][]model.WorkloadPort, n)
		for i := 0; i < n; i++ {
			k := d.str()
			isSet := d.boolean()
			var ports []model.WorkloadPort
			if m := d.count(1 << 16); m > 0 || isSet {
				ports = make([]model.WorkloadPort, m)
			}
			for j := range ports {
				ports[j] = model.WorkloadPort{ServicePort: d.u16(), TargetPort: d.u16()}
			}
			w.Services[k] = ports
		}
	}
	w.Healthy = d.boolean()
	w.Waypoint = d.waypoint()
	if d.boolean() {
		w.Enrolment = &model.Enrolment{CgroupPath: d.str(), NetnsPath: d.str()}
	}
	return w
}

// decodeState reads what encodeState wrote.
func decodeState(r io.Reader) (*persisted, error) {
	d := &decoder{r: bufio.NewReaderSize(r, 256<<10)}
	magic := make([]byte, len(codecMagic))
	if _, err := io.ReadFull(d.r, magic); err != nil || string(magic) != codecMagic {
		return nil, errors.New("not a dataplane state file")
	}
	p := &persisted{Format: int(d.uvarint())}
	if p.Format != stateFormat && p.Format != 2 {
		return nil, fmt.Errorf("unknown state format %d", p.Format)
	}
	p.Node = model.Node{Name: d.str(), Locality: d.locality()}
	for n := d.count(1 << 24); n > 0 && d.err == nil; n-- {
		p.Services = append(p.Services, persistedSvc{ID: uint32(d.uvarint()), Service: d.service()})
	}
	for n := d.count(1 << 26); n > 0 && d.err == nil; n-- {
		p.Workloads = append(p.Workloads, d.state(p.Format))
	}
	if d.err != nil {
		return nil, fmt.Errorf("corrupt state: %w", d.err)
	}
	return p, nil
}
