package dataplane

import (
	"fmt"
	"hash/maphash"
	"iter"
	"strings"
)

// svcTable is what the dataplane keeps per service key: the key's service
// id (idSpace's assignments), its installed service (the state-file
// encoding, the active generation, its slot total and render digest) and,
// for keys that workloads name, their member ids and the interned
// one-element membership list. One 44-byte pointer-free record per key in a
// slice indexed by slot, where four maps keyed by the key (services, per-key
// info, id by key, key by id) and two heap objects per key used to be: a
// node may carry 10k services, and the daemon's budget is ~40 MB.
//
//   - The key and the encoding are bytes in an append-only arena (64 KiB
//     chunks, rewritten when more than half of it is dead): a service's
//     encoding starts with its key (length-prefixed), so a key with a
//     service keeps only the encoding, a key without one only the key.
//     Strings over svcStrMax sit in a side map.
//   - Member ids are in an arena of uint32 of their own (lists over idMax
//     in a side map): a list is replaced whole by each plan that touches it.
//   - key → slot and service id → slot are open-addressing []uint32 tables
//     (linear probing, load at most 7/8, deletion by backward shift).
//   - The interned membership list of a key is a heap object (workloads
//     share it by pointer: wlState.svcs), in a column by slot.
//
// Ids are derived from the key as idSpace always did (FNV-1a, linear probing
// over [1, limit) skipping ids in use and reserved ones); they are not
// dense, so records are not indexed by id.
//
// Strings handed out (key, enc) point into the arena: valid for as long as
// they are referenced (a chunk is never written again once handed out, and
// a rewrite starts new chunks), but a kept one keeps its 64 KiB chunk alive,
// so what leaves the dataplane or is kept is cloned. Slots are stable until
// compact(), which the dataplane calls only between changes. Every access
// needs the dataplane's lock.
type svcTable struct {
	recs    []svcRec
	lists   []*keyList // by slot: the interned membership list (nil: the key has no member info)
	free    []uint32
	byKey   []uint32 // slot+1; 0: empty
	byID    []uint32 // slot+1 of the records with an id
	n       int      // records in use
	nSvc    int      // of which with a service
	strs    arena
	long    map[uint32]string   // by slot: svcLong strings
	mem     idArena             // member ids
	longMem map[uint32][]uint32 // by slot: svcLongMem member lists

	limit    uint32            // ids in [1, limit)
	reserved map[uint32]bool   // ids found in pinned maps but not (yet) owned by a key
	seqs     map[uint32]uint32 // last generation used under ids no key holds (svcRec.seq for the others)
}

// svcRec is one service key.
type svcRec struct {
	str    uint32 // arena position of the encoding (svcHas) or of the key
	strLen uint32
	id     uint32 // service id; 0: none assigned
	gen    uint32 // active generation (0: none)
	slots  uint32 // slots of the active generation (its per-tier counts are in its km_svc_gen record)
	digest [2]uint32
	seq    uint32 // last generation used under id (nextGen; moves to seqs when the id is released)
	mem    uint32 // member ids: idArena position
	memLen uint32
	flags  uint32
}

// svcStrMax is the longest string kept in the arena (longer ones: long).
const svcStrMax = 4 << 10

const (
	svcUsed    = 1 << iota // the slot holds a key
	svcHas                 // the key has an installed service (str is its encoding)
	svcLong                // the string is long[slot]
	svcLongMem             // the member ids are longMem[slot]
)

// keyList is the interned one-element membership list {key, no overrides}
// of a key that workloads name: every workload that backs just that service
// shares it (internMembership), and its key is the interned key string.
type keyList struct {
	one  [1]membership
	list []membership // one[:]
}

func newSvcTable(limit uint32) svcTable {
	return svcTable{limit: limit, reserved: map[uint32]bool{}}
}

var keySeed = maphash.MakeSeed()

func keyHash(key string) uint64 { return maphash.String(keySeed, key) }

func (r *svcRec) getDigest() uint64         { return uint64(r.digest[0]) | uint64(r.digest[1])<<32 }
func (r *svcRec) setDigest(d uint64)        { r.digest = [2]uint32{uint32(d), uint32(d >> 32)} }
func (t *svcTable) rec(slot uint32) *svcRec { return &t.recs[slot] }

// bytes is slot's string: its encoding (svcHas) or its key.
func (t *svcTable) bytes(slot uint32) string {
	r := &t.recs[slot]
	if r.flags&svcLong != 0 {
		return t.long[slot]
	}
	return t.strs.str(r.str, int(r.strLen))
}

// key is slot's key (pointing into the arena: clone it to keep it).
func (t *svcTable) key(slot uint32) string {
	s := t.bytes(slot)
	if t.recs[slot].flags&svcHas == 0 {
		return s
	}
	n, i := strUvarint(s) // the encoding's first field
	return s[i : i+int(n)]
}

// enc is the encoding of slot's service (svcHas; pointing into the arena).
func (t *svcTable) enc(slot uint32) string { return t.bytes(slot) }

// strUvarint is binary.Uvarint over a string.
func strUvarint(s string) (uint64, int) {
	var x uint64
	var shift uint
	for i := 0; i < len(s) && i < 10; i++ {
		b := s[i]
		if b < 0x80 {
			return x | uint64(b)<<shift, i + 1
		}
		x |= uint64(b&0x7f) << shift
		shift += 7
	}
	return 0, 0
}

// slotOf finds key's record.
func (t *svcTable) slotOf(key string) (uint32, bool) {
	if t.n == 0 {
		return 0, false
	}
	return findSlot(t.byKey, keyHash(key), func(slot uint32) bool { return t.key(slot) == key })
}

// slotOfID finds the record holding id.
func (t *svcTable) slotOfID(id uint32) (uint32, bool) {
	if t.n == 0 || id == 0 {
		return 0, false
	}
	return findSlot(t.byID, idHash(id), func(slot uint32) bool { return t.recs[slot].id == id })
}

// hasSvc reports whether slot's key has an installed service.
func (t *svcTable) hasSvc(slot uint32) bool { return t.recs[slot].flags&svcHas != 0 }

// svcSlot finds the record of key's installed service.
func (t *svcTable) svcSlot(key string) (uint32, bool) {
	s, ok := t.slotOf(key)
	if !ok || t.recs[s].flags&svcHas == 0 {
		return 0, false
	}
	return s, true
}

// services yields the slots of the installed services (in no particular
// order). The table must not change meanwhile.
func (t *svcTable) services() iter.Seq[uint32] {
	return func(yield func(uint32) bool) {
		for s := range t.recs {
			if t.recs[s].flags&svcHas != 0 && !yield(uint32(s)) {
				return
			}
		}
	}
}

// reserve sizes the table for n keys.
func (t *svcTable) reserve(n int) {
	if size := tableSize(n); size > len(t.byKey) {
		t.resize(size)
	}
	if cap(t.recs) < n {
		recs := make([]svcRec, len(t.recs), n)
		copy(recs, t.recs)
		lists := make([]*keyList, len(t.lists), n)
		copy(lists, t.lists)
		t.recs, t.lists = recs, lists
	}
}

func (t *svcTable) resize(size int) {
	t.byKey, t.byID = make([]uint32, size), make([]uint32, size)
	for s := range t.recs {
		if t.recs[s].flags&svcUsed != 0 {
			t.insertKey(uint32(s))
			if t.recs[s].id != 0 {
				t.insertID(uint32(s))
			}
		}
	}
}

func (t *svcTable) insertKey(slot uint32) {
	placeTab(t.byKey, keyHash(t.key(slot)), slot+1)
}

func (t *svcTable) insertID(slot uint32) {
	placeTab(t.byID, idHash(t.recs[slot].id), slot+1)
}

// add creates key's record (key copied).
func (t *svcTable) add(key string) uint32 {
	if tableFull(t.n, len(t.byKey)) {
		t.resize(max(64, 2*len(t.byKey)))
	}
	slot, ok := popFree(&t.free)
	if !ok {
		slot = uint32(len(t.recs))
		t.recs = append(t.recs, svcRec{})
		t.lists = append(t.lists, nil)
	}
	t.recs[slot] = svcRec{flags: svcUsed}
	t.setBytes(slot, key)
	t.insertKey(slot)
	t.n++
	return slot
}

// ensure is key's record, created when new.
func (t *svcTable) ensure(key string) uint32 {
	if s, ok := t.slotOf(key); ok {
		return s
	}
	return t.add(key)
}

// setBytes replaces slot's string with s (copied).
func (t *svcTable) setBytes(slot uint32, s string) {
	t.dropBytes(slot)
	r := &t.recs[slot]
	if len(s) > svcStrMax || !t.strs.fits() {
		if t.long == nil {
			t.long = map[uint32]string{}
		}
		t.long[slot] = strings.Clone(s)
		r.flags |= svcLong
		r.strLen = uint32(len(s))
		return
	}
	r.str, r.strLen = t.strs.add(s), uint32(len(s))
	if a := &t.strs; a.size >= 256<<10 && a.size-a.live > a.live {
		t.compactStrs()
	}
}

func (t *svcTable) dropBytes(slot uint32) {
	r := &t.recs[slot]
	if r.flags&svcLong != 0 {
		delete(t.long, slot)
		r.flags &^= svcLong
	} else {
		t.strs.live -= int(r.strLen)
	}
	r.str, r.strLen = 0, 0
}

// compactStrs rewrites the arena: when more than half of it is dead, and
// between changes when a fifth is (a push writes the keys of new services,
// then their encodings). Strings handed out before keep the old chunks
// alive while referenced.
func (t *svcTable) compactStrs() {
	a := &t.strs
	var b arena
	for s := range t.recs {
		r := &t.recs[s]
		if r.flags&svcUsed == 0 || r.flags&svcLong != 0 {
			continue
		}
		r.str = b.add(a.str(r.str, int(r.strLen)))
	}
	t.strs = b
}

// remove drops slot's record.
func (t *svcTable) remove(slot uint32) {
	dropTab(t.byKey, keyHash(t.key(slot)), slot+1, func(s uint32) uint64 { return keyHash(t.key(s - 1)) })
	if t.recs[slot].id != 0 {
		t.removeID(slot)
	}
	t.dropBytes(slot)
	t.dropMembers(slot)
	if t.recs[slot].flags&svcHas != 0 {
		t.nSvc--
	}
	t.recs[slot] = svcRec{}
	t.lists[slot] = nil
	t.free = append(t.free, slot)
	t.n--
	if t.n == 0 {
		*t = svcTable{limit: t.limit, reserved: t.reserved, seqs: t.seqs}
	} else if len(t.byKey) > 1024 && t.n*8 < len(t.byKey) {
		t.resize(len(t.byKey) / 2)
	}
}

func (t *svcTable) removeID(slot uint32) {
	r := &t.recs[slot]
	dropTab(t.byID, idHash(r.id), slot+1, func(s uint32) uint64 { return idHash(t.recs[s-1].id) })
	if r.seq != 0 {
		if t.seqs == nil {
			t.seqs = map[uint32]uint32{}
		}
		t.seqs[r.id] = r.seq
	}
	r.id, r.seq = 0, 0
}

// lastGen is the last generation used under service id (0: none). It
// outlives the id's key: a generation of a deleted service may still wait
// for the collector when a new key gets its id.
func (t *svcTable) lastGen(id uint32) uint32 {
	if s, ok := t.slotOfID(id); ok {
		return t.recs[s].seq
	}
	return t.seqs[id]
}

func (t *svcTable) setLastGen(id, gen uint32) {
	if s, ok := t.slotOfID(id); ok {
		t.recs[s].seq = gen
		return
	}
	if t.seqs == nil {
		t.seqs = map[uint32]uint32{}
	}
	t.seqs[id] = gen
}

// removeIfUnused drops slot's record once it holds nothing: no id, no
// service, no member info.
func (t *svcTable) removeIfUnused(slot uint32) {
	if r := &t.recs[slot]; r.id == 0 && r.flags&svcHas == 0 && t.lists[slot] == nil {
		t.remove(slot)
	}
}

// compact rewrites the arenas when a fifth of them is dead, and renumbers
// the slots densely once most are free (after a large delete). It
// invalidates slots: call it between changes.
func (t *svcTable) compact() {
	if a := &t.strs; a.size-a.live >= 64<<10 && (a.size-a.live)*5 > a.size {
		t.compactStrs()
	}
	if a := &t.mem; (a.size-a.live)*4 >= 64<<10 && (a.size-a.live)*5 > a.size {
		t.compactMem()
	}
	if len(t.recs) <= 1024 || t.n*4 >= len(t.recs) {
		return
	}
	recs := make([]svcRec, 0, t.n)
	lists := make([]*keyList, 0, t.n)
	var long map[uint32]string
	var longMem map[uint32][]uint32
	for s := range t.recs {
		r := t.recs[s]
		if r.flags&svcUsed == 0 {
			continue
		}
		ns := uint32(len(recs))
		recs, lists = append(recs, r), append(lists, t.lists[s])
		if r.flags&svcLong != 0 {
			if long == nil {
				long = map[uint32]string{}
			}
			long[ns] = t.long[uint32(s)]
		}
		if r.flags&svcLongMem != 0 {
			if longMem == nil {
				longMem = map[uint32][]uint32{}
			}
			longMem[ns] = t.longMem[uint32(s)]
		}
	}
	t.recs, t.lists, t.free, t.long, t.longMem = recs, lists, nil, long, longMem
	t.resize(tableSize(t.n))
}

// ---- services ----

// setSvc installs enc (encodeService of a service with slot's key) as slot's
// service.
func (t *svcTable) setSvc(slot uint32, enc string) {
	if n, i := strUvarint(enc); i == 0 || int(n) > len(enc)-i || enc[i:i+int(n)] != t.key(slot) {
		panic(fmt.Sprintf("dataplane: service %.64q installed under key %.64q", enc, t.key(slot)))
	}
	if t.recs[slot].flags&svcHas == 0 {
		t.nSvc++
	}
	t.recs[slot].flags |= svcHas
	t.setBytes(slot, enc)
}

// dropSvc removes slot's service (its generation already retired); the
// record goes too unless it still holds an id or member info.
func (t *svcTable) dropSvc(slot uint32) {
	r := &t.recs[slot]
	if r.flags&svcHas == 0 {
		return
	}
	if r.id == 0 && t.lists[slot] == nil {
		t.remove(slot)
		return
	}
	key := t.key(slot) // in the old bytes, which stay valid
	t.nSvc--
	r.flags &^= svcHas
	r.gen, r.slots, r.digest = 0, 0, [2]uint32{}
	t.setBytes(slot, key)
}

// ---- member info of keys that workloads name ----

// keyList is key's interned membership list, created (with the key copied)
// when new.
func (t *svcTable) keyList(key string) (uint32, *keyList) {
	s := t.ensure(key)
	if l := t.lists[s]; l != nil {
		return s, l
	}
	l := &keyList{}
	l.one[0].key = strings.Clone(key)
	l.list = l.one[:]
	t.lists[s] = l
	return s, l
}

// members are the ids of the workloads naming slot's key (read only).
func (t *svcTable) members(slot uint32) []uint32 {
	r := &t.recs[slot]
	if r.flags&svcLongMem != 0 {
		return t.longMem[slot]
	}
	return t.mem.get(r.mem, int(r.memLen))
}

// setMembers replaces slot's member ids (slot has a keyList). ids is
// copied, or kept when it is long.
func (t *svcTable) setMembers(slot uint32, ids []uint32) {
	t.dropMembers(slot)
	r := &t.recs[slot]
	switch {
	case len(ids) == 0:
	case len(ids) > idMax || !t.mem.fits():
		if t.longMem == nil {
			t.longMem = map[uint32][]uint32{}
		}
		t.longMem[slot] = ids[:len(ids):len(ids)]
		r.flags |= svcLongMem
	default:
		r.mem, r.memLen = t.mem.add(ids), uint32(len(ids))
		if a := &t.mem; a.size >= 64<<10 && a.size-a.live > a.live {
			t.compactMem()
		}
	}
}

func (t *svcTable) dropMembers(slot uint32) {
	r := &t.recs[slot]
	if r.flags&svcLongMem != 0 {
		delete(t.longMem, slot)
		r.flags &^= svcLongMem
	} else {
		t.mem.live -= int(r.memLen)
	}
	r.mem, r.memLen = 0, 0
}

// dropKeyList removes slot's member info; the record goes too unless it
// holds an id or a service.
func (t *svcTable) dropKeyList(slot uint32) {
	t.dropMembers(slot)
	t.lists[slot] = nil
	t.removeIfUnused(slot)
}

// compactMem rewrites the member arena (as compactStrs).
func (t *svcTable) compactMem() {
	a := &t.mem
	var b idArena
	for s := range t.recs {
		r := &t.recs[s]
		if r.flags&svcUsed == 0 || r.flags&svcLongMem != 0 || r.memLen == 0 {
			continue
		}
		r.mem = b.add(a.get(r.mem, int(r.memLen)))
	}
	t.mem = b
}

// idArena holds lists of uint32 in chunks of idChunk, addressed by
// chunk<<14 | offset; a chunk is never written again where it was handed
// out.
type idArena struct {
	chunks [][]uint32
	size   int // ids handed out
	live   int // of which still used
}

const (
	idChunk = 1 << 14 // ids per chunk (64 KiB)
	idMax   = 4 << 10 // longer lists are kept whole (longMem)
)

func (a *idArena) fits() bool { return len(a.chunks) < 1<<18-1 }

func (a *idArena) add(ids []uint32) uint32 {
	if len(ids) == 0 {
		return 0
	}
	if n := len(a.chunks); n == 0 || cap(a.chunks[n-1])-len(a.chunks[n-1]) < len(ids) {
		a.chunks = append(a.chunks, make([]uint32, 0, idChunk))
	}
	c := len(a.chunks) - 1
	pos := uint32(c)<<14 | uint32(len(a.chunks[c]))
	a.chunks[c] = append(a.chunks[c], ids...)
	a.size += len(ids)
	a.live += len(ids)
	return pos
}

func (a *idArena) get(pos uint32, n int) []uint32 {
	if n == 0 {
		return nil
	}
	off := int(pos & (idChunk - 1))
	return a.chunks[pos>>14][off : off+n : off+n]
}
