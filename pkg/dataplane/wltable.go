package dataplane

import (
	"encoding/binary"
	"hash/maphash"
	"iter"
	"net/netip"
	"strings"
	"unsafe"

	"github.com/kmesh-go/kmesh/pkg/bpf"
	"github.com/kmesh-go/kmesh/pkg/model"
)

// wlTable holds the installed workloads in columns instead of one heap
// object per workload: a node may carry 100k of them and the daemon's budget
// is ~40 MB. Each workload is a 32-byte pointer-free record (wlRec) in a
// slice indexed by slot; its uid, name and namespace are bytes in an
// append-only arena of 64 KiB chunks (compacted when more than half of it is
// dead), except the uid's prefix up to its last '/', which the workloads of a
// namespace share and which is interned (uidPrefix), and the name and
// namespace when they are the uid's last segments, as Istio's uids have
// them (fromUID); interned localities
// and membership lists are referenced by index (refTab); IPv6 addresses sit
// in a column of their own, allocated only once a workload has one; what
// few workloads have (wlRare, names from 255 bytes on, an endpoint whose
// address words are not the canonical ones, a locality numbered from
// locWide on) sits in a side map keyed by slot, a weight from 3 on in
// another. uid, id and address find the slot through open-addressing
// tables of uint32 (linear probing, load at most 7/8, deletion by backward
// shift). None of the big slices holds a pointer, so the collector does not
// scan them. At 100k workloads this is ~60 bytes per workload with uids and
// indexes, against ~170 as a 96-byte wlState each plus pointer tables.
//
// Reads hand out a wlState built from the columns (get, getID allocate one;
// load, all fill the caller's): states are values now, not shared records,
// and the table is edited in place, so every access needs the dataplane's
// lock (the state writer encodes under it). Lookups only read, so
// concurrent readers are safe while nobody writes (plan hashes a push on all
// CPUs). Strings of a built state point into the arena (or the caller's
// scratch buffer): good while the caller works with them, cloned where they
// leave the dataplane (names, model) so that a kept name does not keep a
// 64 KiB chunk alive.
type wlTable struct {
	recs []wlRec          // by slot; id 0: a free slot
	free []uint32         // free slots
	v6   [][4]uint32      // IPv6 address words by slot (nil until one has it)
	side map[uint32]*side // by slot, for records with recSide
	// by slot, for records whose weight is weightWide
	weights map[uint32]uint32
	byUID   []uint32 // slot+1, 0: empty
	byID    []uint32
	n       int
	// The address index (WorkloadByAddr): which workload owns each
	// workload address, the last one installed with it (see claimAddr).
	// An owner that holds the address in its v4 or v6 column is found
	// through byAddr (slot+1, with addrV6 for the v6 column), compared
	// against that column like byUID against the uid; one that has it only
	// in its address list as given (wlRare.addrs) is in xaddr, by id.
	byAddr []uint32
	naddr  int
	xaddr  map[addrKey]uint32
	names  arena
	locs   refTab[*model.Locality]
	lists  refTab[*[]membership]
	pfx    refTab[string] // uid prefixes, interned
}

// uidPrefix is the part of uid up to its last '/' when it is worth sharing
// (uids such as cluster/apps/Pod/ns12/pod-7 name their namespace: the
// workloads of a namespace share all but the pod name), else "".
func uidPrefix(uid string) string {
	i := strings.LastIndexByte(uid, '/')
	if i+1 < 8 || i+1 >= len(uid) {
		return ""
	}
	return uid[:i+1]
}

// prefix is slot's uid prefix ("" if none).
func (t *wlTable) prefix(r *wlRec) string {
	if r.pfx == 0 {
		return ""
	}
	return t.pfx.vals[r.pfx-1]
}

// wlRec is one workload (see wlState for the fields), 32 bytes: what
// does not fit its narrow fields, which few workloads need, is elsewhere
// (a weight from 3 on in weights, names from 255 bytes on and a locality
// index from locWide on in side; a uid prefix that would be index 0xffff
// or more is not interned).
type wlRec struct {
	hash    [2]uint32 // wlState.hash (split: the record stays 4-byte aligned)
	id      uint32    // 0: free slot
	v4      uint32    // ep.addr[FamV4][3]
	str     uint32    // arena position of the uid after its prefix, name, namespace
	svcs    uint32    // lists index + 1; 0: none
	loc     uint16    // locs index; locWide: in side.loc
	pfx     uint16    // prefixes index + 1; 0: none
	uidLen  uint8     // in the arena (after the prefix)
	nameLen uint8     // fromUID: the uid's last segment, not in the arena
	nsLen   uint8     // fromUID: the uid's segment before its last
	flags   uint8     // rec* bits; the weight in the top two (recWeight)
}

const (
	recHealthy = 1 << iota
	recHas4
	recHas6
	recLocal
	recSide // side[slot] holds x, and the names, endpoint or locality below
	recLong // names in side.strs (uidLen, nameLen as in wlState in side.lens)
)

const (
	recWeight  = 6      // flags>>recWeight: the weight, or weightWide
	weightWide = 3      // the weight is weights[slot]
	locWide    = 0xffff // the locs index is side.loc
	pfxLimit   = 0xffff // prefixes interned at most (index+1 fits pfx)
	recNameMax = 0xfe   // longer uid rests, names, namespaces: recLong
	fromUID    = 0xff   // nameLen, nsLen: the name or namespace is part of the uid
)

// uidName and uidNamespace are the segments of a uid that name a workload
// and its namespace when the uid follows Istio's cluster/group/Kind/ns/name
// (the table then keeps them only once, see fromUID).
func uidName(uid string) string { return uid[strings.LastIndexByte(uid, '/')+1:] }

func uidNamespace(uid string) string {
	i := strings.LastIndexByte(uid, '/')
	if i < 0 {
		return ""
	}
	return uid[strings.LastIndexByte(uid[:i], '/')+1 : i]
}

// arenaLen is how many bytes of the arena r's names take.
func (r *wlRec) arenaLen() int {
	n := int(r.uidLen)
	if r.nameLen != fromUID {
		n += int(r.nameLen)
	}
	if r.nsLen != fromUID {
		n += int(r.nsLen)
	}
	return n
}

// side is what a record does not hold.
type side struct {
	x    *wlRare
	strs string    // recLong: wlState.strs
	ep   *endpoint // the endpoint, when its address words are not canonical
	loc  uint32    // r.loc == locWide: the locs index
	lens [2]uint16 // recLong: wlState.uidLen, nameLen
}

var uidSeed = maphash.MakeSeed()

func uidHash(uid string) uint64 { return maphash.String(uidSeed, uid) }

// idHash spreads ids (which are mostly FNV-derived already, but may be
// sequential in tests) over the table (Fibonacci hashing).
func idHash(id uint32) uint64 { return uint64(id) * 0x9E3779B97F4A7C15 >> 32 }

// v4Mapped is the third address word of an IPv4 address (::ffff:a.b.c.d).
var v4Mapped = binary.NativeEndian.Uint32([]byte{0, 0, 0xff, 0xff})

func (t *wlTable) len() int { return t.n }

// uidParts is slot's uid as prefix + rest.
func (t *wlTable) uidParts(slot uint32) (string, string) {
	r := &t.recs[slot]
	if r.flags&recLong != 0 {
		sd := t.side[slot]
		if n := sd.lens[0]; n != longNames {
			return "", sd.strs[:n]
		}
		return "", sd.strs
	}
	return t.prefix(r), t.names.str(r.str, int(r.uidLen))
}

// appendUID appends slot's uid to b.
func (t *wlTable) appendUID(b []byte, slot uint32) []byte {
	p, rest := t.uidParts(slot)
	return append(append(b, p...), rest...)
}

// uidHashOf is uidHash of slot's uid, without building it.
func (t *wlTable) uidHashOf(slot uint32) uint64 {
	p, rest := t.uidParts(slot)
	if p == "" {
		return uidHash(rest)
	}
	var h maphash.Hash
	h.SetSeed(uidSeed)
	h.WriteString(p)
	h.WriteString(rest)
	return h.Sum64()
}

// uidIs reports whether slot's uid is uid.
func (t *wlTable) uidIs(slot uint32, uid string) bool {
	p, rest := t.uidParts(slot)
	return len(uid) == len(p)+len(rest) && uid[:len(p)] == p && uid[len(p):] == rest
}

// slotOf finds uid's slot.
func (t *wlTable) slotOf(uid string) (uint32, bool) {
	if t.n == 0 {
		return 0, false
	}
	return findSlot(t.byUID, uidHash(uid), func(slot uint32) bool { return t.uidIs(slot, uid) })
}

// slotOfID finds id's slot.
func (t *wlTable) slotOfID(id uint32) (uint32, bool) {
	if t.n == 0 {
		return 0, false
	}
	return findSlot(t.byID, idHash(id), func(slot uint32) bool { return t.recs[slot].id == id })
}

func (t *wlTable) hasID(id uint32) bool {
	_, ok := t.slotOfID(id)
	return ok
}

// idOf is uid's id.
func (t *wlTable) idOf(uid string) (uint32, bool) {
	s, ok := t.slotOf(uid)
	if !ok {
		return 0, false
	}
	return t.recs[s].id, true
}

// get builds the state of uid (nil: none).
func (t *wlTable) get(uid string) *wlState {
	s, ok := t.slotOf(uid)
	if !ok {
		return nil
	}
	w := &wlState{}
	t.load(s, w, nil)
	return w
}

// getID builds the state of id (nil: none).
func (t *wlTable) getID(id uint32) *wlState {
	s, ok := t.slotOfID(id)
	if !ok {
		return nil
	}
	w := &wlState{}
	t.load(s, w, nil)
	return w
}

// loadID builds the state of id into w, its names in scratch (see load):
// no allocation once scratch has grown.
func (t *wlTable) loadID(id uint32, w *wlState, scratch *[]byte) bool {
	s, ok := t.slotOfID(id)
	if ok {
		t.load(s, w, scratch)
	}
	return ok
}

// load builds slot's state into w. A uid with an interned prefix is joined
// with the rest of the names into scratch when it is not nil (the state's
// strings are then valid until scratch is reused), else into a new string.
func (t *wlTable) load(slot uint32, w *wlState, scratch *[]byte) {
	r := &t.recs[slot]
	*w = wlState{hash: uint64(r.hash[0]) | uint64(r.hash[1])<<32, id: r.id, weight: uint32(r.flags >> recWeight),
		uidLen: uint16(r.uidLen), nameLen: uint16(r.nameLen)}
	if w.weight == weightWide {
		w.weight = t.weights[slot]
	}
	if r.loc != locWide {
		w.loc = t.locs.vals[r.loc]
	}
	if r.svcs != 0 {
		w.svcs = t.lists.vals[r.svcs-1]
	}
	if r.flags&recHas4 != 0 {
		w.ep.has[bpf.FamV4] = true
		w.ep.addr[bpf.FamV4] = [4]uint32{0, 0, v4Mapped, r.v4}
	}
	if r.flags&recHas6 != 0 {
		w.ep.has[bpf.FamV6] = true
		w.ep.addr[bpf.FamV6] = t.v6[slot]
	}
	w.ep.local = r.flags&recLocal != 0
	if r.flags&recSide != 0 {
		sd := t.side[slot]
		w.x = sd.x
		if sd.ep != nil {
			w.ep = *sd.ep
		}
		if r.flags&recLong != 0 {
			w.strs, w.uidLen, w.nameLen = sd.strs, sd.lens[0], sd.lens[1]
		}
		if r.loc == locWide {
			w.loc = t.locs.vals[sd.loc]
		}
	}
	if r.flags&recLong == 0 && (r.nameLen == fromUID || r.nsLen == fromUID) {
		t.joinNames(r, w, scratch)
	} else if r.flags&recLong == 0 {
		w.strs = t.names.str(r.str, int(r.uidLen)+int(r.nameLen)+int(r.nsLen))
		if p := t.prefix(r); p != "" {
			w.uidLen += uint16(len(p))
			if scratch == nil {
				w.strs = p + w.strs
			} else {
				*scratch = append(append((*scratch)[:0], p...), w.strs...)
				w.strs = unsafe.String(&(*scratch)[0], len(*scratch))
			}
		}
	}
	w.setHealthy(r.flags&recHealthy != 0)
}

// joinNames builds w's names for a record that keeps its name or namespace
// as part of its uid (into scratch, as load).
func (t *wlTable) joinNames(r *wlRec, w *wlState, scratch *[]byte) {
	raw := t.names.str(r.str, r.arenaLen())
	var b []byte
	if scratch != nil {
		b = (*scratch)[:0]
	}
	b = append(append(b, t.prefix(r)...), raw[:r.uidLen]...)
	raw = raw[r.uidLen:]
	uid := unsafe.String(unsafe.SliceData(b), len(b)) // b's bytes so far: not written again
	name := uidName(uid)
	if r.nameLen != fromUID {
		name, raw = raw[:r.nameLen], raw[r.nameLen:]
	}
	ns := raw
	if r.nsLen == fromUID {
		ns = uidNamespace(uid)
	}
	b = append(append(b, name...), ns...)
	if scratch != nil {
		*scratch = b
	}
	w.strs, w.uidLen, w.nameLen = unsafe.String(unsafe.SliceData(b), len(b)), uint16(len(uid)), uint16(len(name))
}

// reserve sizes the tables for n workloads.
func (t *wlTable) reserve(n int) {
	if size := tableSize(n); size > len(t.byUID) {
		t.resize(size)
	}
	if size := tableSize(n); size > len(t.byAddr) {
		t.resizeAddr(size)
	}
	if cap(t.recs) < n {
		recs := make([]wlRec, len(t.recs), n)
		copy(recs, t.recs)
		t.recs = recs
	}
}

// tableSize is the table size for n entries: a power of two, load at most 7/8.
func tableSize(n int) int {
	size := 64
	for size*7/8 < n {
		size *= 2
	}
	return size
}

func (t *wlTable) resize(size int) {
	t.byUID, t.byID = make([]uint32, size), make([]uint32, size)
	for s := range t.recs {
		if t.recs[s].id != 0 {
			t.insert(uint32(s))
		}
	}
}

func (t *wlTable) insert(slot uint32) {
	placeTab(t.byUID, t.uidHashOf(slot), slot+1)
	placeTab(t.byID, idHash(t.recs[slot].id), slot+1)
}

// put installs w, replacing the workload with its uid (which has its id:
// ids follow uids, see workloadID). The table keeps none of w's memory but
// its interned locality and membership list, its wlRare and, for very long
// names, its strings (all read only).
func (t *wlTable) put(w *wlState) {
	if s, ok := t.slotOf(w.uid()); ok {
		t.delSlot(s)
	}
	if tableFull(t.n, len(t.byUID)) {
		t.resize(max(64, 2*len(t.byUID)))
	}
	slot, ok := popFree(&t.free)
	if !ok {
		slot = uint32(len(t.recs))
		t.recs = append(t.recs, wlRec{})
	}
	r := wlRec{hash: [2]uint32{uint32(w.hash), uint32(w.hash >> 32)}, id: w.id}
	var sd side
	if loc := t.locs.ref(w.loc); loc < locWide {
		r.loc = uint16(loc)
	} else {
		r.loc, sd.loc = locWide, loc
	}
	if w.weight < weightWide {
		r.flags |= uint8(w.weight) << recWeight
	} else {
		r.flags |= weightWide << recWeight
		if t.weights == nil {
			t.weights = map[uint32]uint32{}
		}
		t.weights[slot] = w.weight
	}
	if w.svcs != nil {
		r.svcs = t.lists.ref(w.svcs) + 1
	}
	if w.healthy() {
		r.flags |= recHealthy
	}
	ep := &w.ep
	canonical := true
	if ep.has[bpf.FamV4] {
		r.flags |= recHas4
		r.v4 = ep.addr[bpf.FamV4][3]
		canonical = ep.addr[bpf.FamV4] == [4]uint32{0, 0, v4Mapped, r.v4}
	} else {
		canonical = ep.addr[bpf.FamV4] == [4]uint32{}
	}
	if ep.has[bpf.FamV6] {
		r.flags |= recHas6
		for len(t.v6) <= int(slot) {
			t.v6 = append(t.v6, [4]uint32{})
		}
		t.v6[slot] = ep.addr[bpf.FamV6]
	} else if ep.addr[bpf.FamV6] != [4]uint32{} {
		canonical = false
	}
	if ep.local {
		r.flags |= recLocal
	}
	if !canonical {
		e := *ep
		sd.ep = &e
	}
	sd.x = w.x
	uidLen, nameLen := int(w.uidLen), int(w.nameLen&^healthyBit)
	nsLen := len(w.strs) - uidLen - nameLen
	p := uidPrefix(w.uid())
	var nameDer, nsDer bool // the uid says them (fromUID)
	if w.uidLen != longNames {
		uid := w.uid()
		nameDer = nameLen > 0 && w.name() == uidName(uid)
		nsDer = nsLen > 0 && w.namespace() == uidNamespace(uid)
	}
	if w.uidLen == longNames || !nameDer && nameLen > recNameMax || !nsDer && nsLen > recNameMax || uidLen-len(p) > recNameMax || !t.names.fits() {
		r.flags |= recLong
		sd.strs, sd.lens = w.strs, [2]uint16{w.uidLen, w.nameLen &^ healthyBit}
	} else {
		s := w.strs
		if p != "" {
			if !t.pfx.has(p) {
				p = strings.Clone(p) // kept: not w's memory
			}
			if i := t.pfx.ref(p); i+1 < pfxLimit {
				r.pfx = uint16(i + 1)
				uidLen -= len(p)
				s = s[len(p):]
			} else {
				t.pfx.unref(i) // too many prefixes: this uid is kept whole
			}
		}
		if uidLen > recNameMax { // whole, as its prefix is not interned
			r.flags |= recLong
			sd.strs, sd.lens = w.strs, [2]uint16{w.uidLen, w.nameLen &^ healthyBit}
		} else {
			r.uidLen, r.nameLen, r.nsLen = uint8(uidLen), uint8(nameLen), uint8(nsLen)
			if nameDer || nsDer {
				rest, name, ns := s[:uidLen], s[uidLen:uidLen+nameLen], s[uidLen+nameLen:]
				if nameDer {
					r.nameLen, name = fromUID, ""
				}
				if nsDer {
					r.nsLen, ns = fromUID, ""
				}
				r.str = t.names.add(rest, name, ns)
			} else {
				r.str = t.names.add(s)
			}
		}
	}
	if sd != (side{}) {
		r.flags |= recSide
		if t.side == nil {
			t.side = map[uint32]*side{}
		}
		t.side[slot] = &sd
	}
	t.recs[slot] = r
	t.insert(slot)
	t.n++
	t.indexAddrs(slot, true)
	t.compactNames()
}

// del removes the workload with w's uid.
func (t *wlTable) del(w *wlState) {
	if s, ok := t.slotOf(w.uid()); ok {
		t.delSlot(s)
	}
}

func (t *wlTable) delSlot(slot uint32) {
	t.indexAddrs(slot, false)
	dropTab(t.byUID, t.uidHashOf(slot), slot+1, func(s uint32) uint64 { return t.uidHashOf(s - 1) })
	r := &t.recs[slot]
	dropTab(t.byID, idHash(r.id), slot+1, func(s uint32) uint64 { return idHash(t.recs[s-1].id) })
	if r.loc != locWide {
		t.locs.unref(uint32(r.loc))
	} else {
		t.locs.unref(t.side[slot].loc)
	}
	if r.svcs != 0 {
		t.lists.unref(r.svcs - 1)
	}
	if r.pfx != 0 {
		t.pfx.unref(uint32(r.pfx) - 1)
	}
	if r.flags&recLong == 0 {
		t.names.live -= r.arenaLen()
	}
	if r.flags&recSide != 0 {
		delete(t.side, slot)
	}
	if r.flags>>recWeight == weightWide {
		if delete(t.weights, slot); len(t.weights) == 0 {
			t.weights = nil
		}
	}
	*r = wlRec{}
	t.free = append(t.free, slot)
	t.n--
	if t.n == 0 {
		*t = wlTable{}
	} else if len(t.recs) > 1024 && t.n*4 < len(t.recs) {
		t.compactRecs()
	} else {
		if len(t.byUID) > 1024 && t.n*8 < len(t.byUID) {
			t.resize(len(t.byUID) / 2)
		}
		if len(t.byAddr) > 1024 && t.naddr*8 < len(t.byAddr) {
			t.resizeAddr(len(t.byAddr) / 2)
		}
	}
}

// compactRecs renumbers the slots densely once most are free (after a
// large delete), and sizes the tables for what is left.
func (t *wlTable) compactRecs() {
	recs := make([]wlRec, 0, t.n)
	var v6 [][4]uint32
	var sides map[uint32]*side
	var weights map[uint32]uint32
	renum := make([]uint32, len(t.recs)) // old slot -> new slot+1
	for s := range t.recs {
		r := t.recs[s]
		if r.id == 0 {
			continue
		}
		ns := uint32(len(recs))
		renum[s] = ns + 1
		recs = append(recs, r)
		if r.flags&recHas6 != 0 {
			for len(v6) <= int(ns) {
				v6 = append(v6, [4]uint32{})
			}
			v6[ns] = t.v6[s]
		}
		if r.flags&recSide != 0 {
			if sides == nil {
				sides = map[uint32]*side{}
			}
			sides[ns] = t.side[uint32(s)]
		}
		if r.flags>>recWeight == weightWide {
			if weights == nil {
				weights = map[uint32]uint32{}
			}
			weights[ns] = t.weights[uint32(s)]
		}
	}
	t.recs, t.free, t.v6, t.side, t.weights = recs, nil, v6, sides, weights
	t.resize(tableSize(t.n))
	// The address entries stay where they are (their addresses moved with
	// their records); only their slots change.
	for i, e := range t.byAddr {
		if e != 0 {
			t.byAddr[i] = e&addrV6 | renum[e&^addrV6-1]
		}
	}
	if size := tableSize(t.naddr); size < len(t.byAddr) {
		t.resizeAddr(size)
	}
}

// probeTab walks an open-addressing table of non-zero entries (linear probing,
// a power-of-two size) from h's home position to the first entry match
// accepts: its position and the entry; ok is false at an empty entry.
func probeTab(tab []uint32, h uint64, match func(e uint32) bool) (pos uint64, e uint32, ok bool) {
	if len(tab) == 0 {
		return 0, 0, false
	}
	mask := uint64(len(tab) - 1)
	for i := h & mask; ; i = (i + 1) & mask {
		e := tab[i]
		if e == 0 {
			return 0, 0, false
		}
		if match(e) {
			return i, e, true
		}
	}
}

// findSlot is probeTab over a table whose entries are slot+1.
func findSlot(tab []uint32, h uint64, match func(slot uint32) bool) (uint32, bool) {
	_, e, ok := probeTab(tab, h, func(e uint32) bool { return match(e - 1) })
	if !ok {
		return 0, false
	}
	return e - 1, true
}

// tableFull reports whether a table of size entries holding n must grow
// before one more goes in (load at most 7/8; an empty table is full).
func tableFull(n, size int) bool { return (n+1)*8 > size*7 }

// popFree takes the last index of a free list.
func popFree(free *[]uint32) (uint32, bool) {
	n := len(*free)
	if n == 0 {
		return 0, false
	}
	i := (*free)[n-1]
	*free = (*free)[:n-1]
	return i, true
}

// placeTab puts e at the first empty position of h's probe sequence.
func placeTab(tab []uint32, h uint64, e uint32) {
	mask := uint64(len(tab) - 1)
	i := h & mask
	for tab[i] != 0 {
		i = (i + 1) & mask
	}
	tab[i] = e
}

// dropTab removes entry e, looked for from h's home position; hash gives
// any entry's hash (for shiftOut).
func dropTab(tab []uint32, h uint64, e uint32, hash func(uint32) uint64) {
	if i, _, ok := probeTab(tab, h, func(x uint32) bool { return x == e }); ok {
		shiftOut(tab, i, hash)
	}
}

// shiftOut empties position i of a linear-probing table, moving later
// entries of the probe sequence back so lookups need no tombstones; hash
// gives an entry's hash.
func shiftOut(tab []uint32, i uint64, hash func(uint32) uint64) {
	mask := uint64(len(tab) - 1)
	j := i
	for {
		j = (j + 1) & mask
		s := tab[j]
		if s == 0 {
			tab[i] = 0
			return
		}
		k := hash(s) & mask
		// s may move to i unless its home lies cyclically in (i, j].
		if i <= j {
			if i < k && k <= j {
				continue
			}
		} else if i < k || k <= j {
			continue
		}
		tab[i] = s
		i = j
	}
}

// all yields every installed workload (in no particular order). The state
// and its strings are the iterator's own, rebuilt for each: valid until the
// next one (copy a string to keep it).
func (t *wlTable) all() iter.Seq[*wlState] {
	return func(yield func(*wlState) bool) {
		var w wlState
		var scratch []byte
		for s := range t.recs {
			if t.recs[s].id == 0 {
				continue
			}
			t.load(uint32(s), &w, &scratch)
			if !yield(&w) {
				return
			}
		}
	}
}

// compactNames rewrites the arena when more than half of it is dead.
// Strings handed out before keep the old chunks alive while they are
// referenced; the chunks are never written again.
func (t *wlTable) compactNames() {
	a := &t.names
	if a.size < 1<<20 || a.size-a.live <= a.live {
		return
	}
	var b arena
	for s := range t.recs {
		r := &t.recs[s]
		if r.id == 0 || r.flags&recLong != 0 {
			continue
		}
		r.str = b.add(a.str(r.str, r.arenaLen()))
	}
	t.names = b
}

// arena holds strings in 64 KiB chunks, addressed by chunk<<16 | offset.
type arena struct {
	chunks [][]byte
	size   int // bytes handed out
	live   int // of which still used
}

const arenaChunk = 64 << 10 // holds any record's names (3 x recNameMax)

// fits reports whether another chunk can be addressed.
func (a *arena) fits() bool { return len(a.chunks) < 1<<16-1 }

// add stores the concatenation of parts.
func (a *arena) add(parts ...string) uint32 {
	size := 0
	for _, s := range parts {
		size += len(s)
	}
	if size == 0 {
		return 0
	}
	if n := len(a.chunks); n == 0 || cap(a.chunks[n-1])-len(a.chunks[n-1]) < size {
		a.chunks = append(a.chunks, make([]byte, 0, arenaChunk))
	}
	c := len(a.chunks) - 1
	pos := uint32(c)<<16 | uint32(len(a.chunks[c]))
	for _, s := range parts {
		a.chunks[c] = append(a.chunks[c], s...)
	}
	a.size += size
	a.live += size
	return pos
}

func (a *arena) str(pos uint32, n int) string {
	if n == 0 {
		return ""
	}
	return unsafe.String(&a.chunks[pos>>16][pos&0xffff], n)
}

// refTab numbers shared read-only values (interned localities, membership
// lists, uid prefixes) for the records, with a reference count per value.
// Values are found through an open-addressing table of their numbers
// (i+1) like the workload tables, not a Go map: a mesh has a membership
// list per service and one per workload in several services.
type refTab[T comparable] struct {
	vals []T
	refs []uint32
	idx  []uint32 // i+1 by the hash of vals[i]; 0: empty
	n    int      // values in use
	free []uint32
}

var refSeed = maphash.MakeSeed()

func refHash[T comparable](v T) uint64 { return maphash.Comparable(refSeed, v) }

// find is v's number.
func (t *refTab[T]) find(v T) (uint32, bool) {
	if t.n == 0 {
		return 0, false
	}
	return findSlot(t.idx, refHash(v), func(i uint32) bool { return t.vals[i] == v })
}

func (t *refTab[T]) has(v T) bool {
	_, ok := t.find(v)
	return ok
}

func (t *refTab[T]) ref(v T) uint32 {
	if i, ok := t.find(v); ok {
		t.refs[i]++
		return i
	}
	if tableFull(t.n, len(t.idx)) {
		t.rehash(max(16, 2*len(t.idx)))
	}
	i, ok := popFree(&t.free)
	if ok {
		t.vals[i], t.refs[i] = v, 1
	} else {
		i = uint32(len(t.vals))
		t.vals, t.refs = append(t.vals, v), append(t.refs, 1)
	}
	t.insert(i)
	t.n++
	return i
}

func (t *refTab[T]) unref(i uint32) {
	if t.refs[i]--; t.refs[i] != 0 {
		return
	}
	dropTab(t.idx, refHash(t.vals[i]), i+1, func(e uint32) uint64 { return refHash(t.vals[e-1]) })
	var zero T
	t.vals[i] = zero
	t.free = append(t.free, i)
	if t.n--; len(t.idx) > 64 && t.n*8 < len(t.idx) {
		t.rehash(len(t.idx) / 2)
	}
}

func (t *refTab[T]) insert(i uint32) {
	placeTab(t.idx, refHash(t.vals[i]), i+1)
}

func (t *refTab[T]) rehash(size int) {
	old := t.idx
	t.idx = make([]uint32, size)
	for _, e := range old {
		if e != 0 {
			t.insert(e - 1)
		}
	}
}

// addrKey is a workload address as the index keys it: the maps' address
// words, of which an IPv4 address uses only the last (w[3]; the others are
// zero here).
type addrKey struct {
	w  [4]uint32
	v6 bool
}

// keyOf is a's key (a unmapped: ::ffff:a.b.c.d is a.b.c.d).
func keyOf(a netip.Addr) addrKey {
	a = a.Unmap()
	w := addr16(a)
	if a.Is4() {
		return addrKey{w: [4]uint32{3: w[3]}}
	}
	return addrKey{w: w, v6: true}
}

// addrV6 marks a byAddr entry whose address is its slot's v6 column.
const addrV6 = 1 << 31

func addrHash(k addrKey) uint64 {
	if !k.v6 {
		return idHash(k.w[3])
	}
	x := (uint64(k.w[0])<<32 | uint64(k.w[1])) * 0x9E3779B97F4A7C15
	y := (uint64(k.w[2])<<32 | uint64(k.w[3]) ^ x) * 0xC2B2AE3D27D4EB4F
	return (x ^ y) >> 32
}

// holds reports whether slot has k in its v4 or v6 column.
func (t *wlTable) holds(slot uint32, k addrKey) bool {
	r := &t.recs[slot]
	if !k.v6 {
		return r.flags&recHas4 != 0 && r.v4 == k.w[3]
	}
	return r.flags&recHas6 != 0 && t.v6[slot] == k.w
}

// entryKey is the address of byAddr entry e, read from its slot's column.
func (t *wlTable) entryKey(e uint32) addrKey {
	slot := e&^addrV6 - 1
	if e&addrV6 == 0 {
		return addrKey{w: [4]uint32{3: t.recs[slot].v4}}
	}
	return addrKey{w: t.v6[slot], v6: true}
}

// addrPos finds k's entry in byAddr.
func (t *wlTable) addrPos(k addrKey) (uint64, bool) {
	if t.naddr == 0 {
		return 0, false
	}
	i, _, ok := probeTab(t.byAddr, addrHash(k), func(e uint32) bool { return (e&addrV6 != 0) == k.v6 && t.holds(e&^addrV6-1, k) })
	return i, ok
}

// addrOwner is the id of the workload that owns a.
func (t *wlTable) addrOwner(a netip.Addr) (uint32, bool) {
	k := keyOf(a)
	if i, ok := t.addrPos(k); ok {
		return t.recs[t.byAddr[i]&^addrV6-1].id, true
	}
	id, ok := t.xaddr[k]
	return id, ok
}

// claimAddr makes slot the owner of k: the last workload indexed with an
// address owns it, whoever did before.
func (t *wlTable) claimAddr(slot uint32, k addrKey) {
	if i, ok := t.addrPos(k); ok {
		if t.byAddr[i]&^addrV6 == slot+1 {
			return
		}
		t.dropAddrAt(i)
	} else if t.xaddr != nil {
		t.dropX(k)
	}
	if !t.holds(slot, k) {
		if t.xaddr == nil {
			t.xaddr = map[addrKey]uint32{}
		}
		t.xaddr[k] = t.recs[slot].id
		return
	}
	if tableFull(t.naddr, len(t.byAddr)) {
		t.resizeAddr(max(64, 2*len(t.byAddr)))
	}
	e := slot + 1
	if k.v6 {
		e |= addrV6
	}
	t.insertAddr(e)
	t.naddr++
}

// releaseAddr drops k from the index if slot owns it (an address a later
// workload took stays with that one).
func (t *wlTable) releaseAddr(slot uint32, k addrKey) {
	if i, ok := t.addrPos(k); ok {
		if t.byAddr[i]&^addrV6 == slot+1 {
			t.dropAddrAt(i)
		}
		return
	}
	if id, ok := t.xaddr[k]; ok && id == t.recs[slot].id {
		t.dropX(k)
	}
}

// dropX deletes k from xaddr, and the map once empty (a map keeps its
// memory after deletes).
func (t *wlTable) dropX(k addrKey) {
	if delete(t.xaddr, k); len(t.xaddr) == 0 {
		t.xaddr = nil
	}
}

func (t *wlTable) dropAddrAt(i uint64) {
	shiftOut(t.byAddr, i, func(e uint32) uint64 { return addrHash(t.entryKey(e)) })
	t.naddr--
}

func (t *wlTable) insertAddr(e uint32) {
	placeTab(t.byAddr, addrHash(t.entryKey(e)), e)
}

// resizeAddr rehashes byAddr into size entries (the owners stay: they are
// history, not derived from the records).
func (t *wlTable) resizeAddr(size int) {
	old := t.byAddr
	t.byAddr = make([]uint32, size)
	for _, e := range old {
		if e != 0 {
			t.insertAddr(e)
		}
	}
}

// indexAddrs claims (or releases) every address of slot's workload: its
// addresses as given when it keeps them, else its v4 and v6 columns.
func (t *wlTable) indexAddrs(slot uint32, claim bool) {
	r := &t.recs[slot]
	each := func(k addrKey) {
		if claim {
			t.claimAddr(slot, k)
		} else {
			t.releaseAddr(slot, k)
		}
	}
	if r.flags&recSide != 0 {
		if x := t.side[slot].x; x != nil && x.addrs != nil {
			for _, a := range *x.addrs {
				each(keyOf(a))
			}
			return
		}
	}
	if r.flags&recHas4 != 0 {
		each(addrKey{w: [4]uint32{3: r.v4}})
	}
	if r.flags&recHas6 != 0 {
		each(addrKey{w: t.v6[slot], v6: true})
	}
}
