package dataplane

import (
	"iter"

	"github.com/kmesh-go/kmesh/pkg/bpf"
)

// feTable maps frontends (km_frontend's keys) to service ids: the mirror of
// km_frontend (Dataplane.frontends) and a plan's new frontends. A node may
// carry 10k services with two frontends each; as a Go map with the 20-byte
// key this was ~0.85 MB. Frontends on an IPv4 VIP (the address words
// ::ffff:a.b.c.d, no padding) are 12-byte pointer-free records in one
// open-addressing table (linear probing, load at most 7/8, deletion by
// backward shift); any other key sits in a side map. The zero value is an
// empty table.
type feTable struct {
	tab   []feRec
	n     int // records in tab
	other map[bpf.FrontendKey]uint32
}

type feRec struct {
	v4    uint32 // Addr[3]
	port  uint16 // as in the key (network order)
	proto uint8
	used  uint8
	id    uint32
}

// feRecOf is k's record, ok false when k is not an IPv4 frontend.
func feRecOf(k bpf.FrontendKey) (feRec, bool) {
	if k.Addr[0] != 0 || k.Addr[1] != 0 || k.Addr[2] != v4Mapped || k.Pad != 0 {
		return feRec{}, false
	}
	return feRec{v4: k.Addr[3], port: k.Port, proto: k.Proto, used: 1}, true
}

func (r *feRec) key() bpf.FrontendKey {
	return bpf.FrontendKey{Addr: [4]uint32{0, 0, v4Mapped, r.v4}, Port: r.port, Proto: r.proto}
}

func (r *feRec) same(o *feRec) bool { return r.v4 == o.v4 && r.port == o.port && r.proto == o.proto }

// hash mixes all 56 bits of the key (murmur3's finalizer): the table masks
// the low bits, and a VIP's last octet is the address word's top byte.
func (r *feRec) hash() uint64 {
	x := uint64(r.v4)<<24 | uint64(r.port)<<8 | uint64(r.proto)
	x ^= x >> 33
	x *= 0xff51afd7ed558ccd
	x ^= x >> 33
	x *= 0xc4ceb9fe1a85ec53
	x ^= x >> 33
	return x
}

func (t *feTable) len() int { return t.n + len(t.other) }

// find is the index of r's key in tab (-1: absent).
func (t *feTable) find(r *feRec) int {
	if t.n == 0 {
		return -1
	}
	mask := uint64(len(t.tab) - 1)
	for i := r.hash() & mask; ; i = (i + 1) & mask {
		e := &t.tab[i]
		if e.used == 0 {
			return -1
		}
		if e.same(r) {
			return int(i)
		}
	}
}

func (t *feTable) get(k bpf.FrontendKey) (uint32, bool) {
	r, ok := feRecOf(k)
	if !ok {
		id, ok := t.other[k]
		return id, ok
	}
	if i := t.find(&r); i >= 0 {
		return t.tab[i].id, true
	}
	return 0, false
}

func (t *feTable) set(k bpf.FrontendKey, id uint32) {
	r, ok := feRecOf(k)
	if !ok {
		if t.other == nil {
			t.other = map[bpf.FrontendKey]uint32{}
		}
		t.other[k] = id
		return
	}
	if i := t.find(&r); i >= 0 {
		t.tab[i].id = id
		return
	}
	if tableFull(t.n, len(t.tab)) {
		t.resize(max(64, 2*len(t.tab)))
	}
	r.id = id
	t.insert(r)
	t.n++
}

func (t *feTable) insert(r feRec) {
	mask := uint64(len(t.tab) - 1)
	i := r.hash() & mask
	for t.tab[i].used != 0 {
		i = (i + 1) & mask
	}
	t.tab[i] = r
}

func (t *feTable) del(k bpf.FrontendKey) {
	r, ok := feRecOf(k)
	if !ok {
		delete(t.other, k)
		return
	}
	i := t.find(&r)
	if i < 0 {
		return
	}
	// Backward shift (as shiftOut, over records).
	mask := uint64(len(t.tab) - 1)
	hole, j := uint64(i), uint64(i)
	for {
		j = (j + 1) & mask
		e := t.tab[j]
		if e.used == 0 {
			break
		}
		h := e.hash() & mask
		// e may move to hole unless its home lies cyclically in (hole, j].
		if hole <= j {
			if hole < h && h <= j {
				continue
			}
		} else if hole < h || h <= j {
			continue
		}
		t.tab[hole] = e
		hole = j
	}
	t.tab[hole] = feRec{}
	t.n--
	if t.n == 0 {
		t.tab = nil
	} else if len(t.tab) > 1024 && t.n*8 < len(t.tab) {
		t.resize(len(t.tab) / 2)
	}
}

// reserve sizes the table for n frontends.
func (t *feTable) reserve(n int) {
	if size := tableSize(n); size > len(t.tab) {
		t.resize(size)
	}
}

func (t *feTable) resize(size int) {
	old := t.tab
	t.tab = make([]feRec, size)
	for i := range old {
		if old[i].used != 0 {
			t.insert(old[i])
		}
	}
}

// all yields every frontend and its service id (in no particular order);
// the table must not change meanwhile.
func (t *feTable) all() iter.Seq2[bpf.FrontendKey, uint32] {
	return func(yield func(bpf.FrontendKey, uint32) bool) {
		for i := range t.tab {
			if r := &t.tab[i]; r.used != 0 && !yield(r.key(), r.id) {
				return
			}
		}
		for k, id := range t.other {
			if !yield(k, id) {
				return
			}
		}
	}
}
