package dataplane

import (
	"hash/maphash"
	"iter"
)

// wlTable holds the installed workloads, found by uid and by id: two
// open-addressing tables of pointers (linear probing, load at most 3/4,
// deletion by backward shift, no tombstones). For 100k workloads this is
// 4 MB, against 8 MB for a map[string]*wlState plus a map[uint32]*wlState.
// Lookups only read, so concurrent readers are safe while nobody writes
// (plan hashes a push on all CPUs).
type wlTable struct {
	byUID []*wlState
	byID  []*wlState
	n     int
}

var uidSeed = maphash.MakeSeed()

func uidHash(uid string) uint64 { return maphash.String(uidSeed, uid) }

// idHash spreads ids (which are mostly FNV-derived already, but may be
// sequential in tests) over the table (Fibonacci hashing).
func idHash(id uint32) uint64 { return uint64(id) * 0x9E3779B97F4A7C15 }

func (t *wlTable) len() int { return t.n }

func (t *wlTable) get(uid string) *wlState {
	if t.n == 0 {
		return nil
	}
	mask := uint64(len(t.byUID) - 1)
	for i := uidHash(uid) & mask; ; i = (i + 1) & mask {
		w := t.byUID[i]
		if w == nil || w.uid() == uid {
			return w
		}
	}
}

func (t *wlTable) getID(id uint32) *wlState {
	if t.n == 0 {
		return nil
	}
	mask := uint64(len(t.byID) - 1)
	for i := idHash(id) >> 32 & mask; ; i = (i + 1) & mask {
		w := t.byID[i]
		if w == nil || w.id == id {
			return w
		}
	}
}

// reserve sizes the tables for n workloads.
func (t *wlTable) reserve(n int) {
	size := 64
	for size*3/4 < n {
		size *= 2
	}
	if size > len(t.byUID) {
		t.resize(size)
	}
}

func (t *wlTable) resize(size int) {
	old := t.byUID
	t.byUID, t.byID = make([]*wlState, size), make([]*wlState, size)
	for _, w := range old {
		if w != nil {
			t.insert(w)
		}
	}
}

func (t *wlTable) insert(w *wlState) {
	mask := uint64(len(t.byUID) - 1)
	i := uidHash(w.uid()) & mask
	for t.byUID[i] != nil {
		i = (i + 1) & mask
	}
	t.byUID[i] = w
	i = idHash(w.id) >> 32 & mask
	for t.byID[i] != nil {
		i = (i + 1) & mask
	}
	t.byID[i] = w
}

// put installs w, replacing the workload with its uid (which has its id:
// ids follow uids, see workloadID).
func (t *wlTable) put(w *wlState) {
	if cur := t.get(w.uid()); cur != nil {
		t.del(cur)
	}
	if (t.n+1)*4 > len(t.byUID)*3 {
		t.resize(max(64, 2*len(t.byUID)))
	}
	t.insert(w)
	t.n++
}

// del removes w (by identity).
func (t *wlTable) del(w *wlState) {
	if t.n == 0 {
		return
	}
	mask := uint64(len(t.byUID) - 1)
	for i := uidHash(w.uid()) & mask; t.byUID[i] != nil; i = (i + 1) & mask {
		if t.byUID[i] == w {
			shiftOut(t.byUID, i, func(w *wlState) uint64 { return uidHash(w.uid()) & mask })
			break
		}
	}
	for i := idHash(w.id) >> 32 & mask; t.byID[i] != nil; i = (i + 1) & mask {
		if t.byID[i] == w {
			shiftOut(t.byID, i, func(w *wlState) uint64 { return idHash(w.id) >> 32 & mask })
			t.n--
			break
		}
	}
	if t.n == 0 {
		t.byUID, t.byID = nil, nil
	} else if len(t.byUID) > 1024 && t.n*8 < len(t.byUID) {
		t.resize(len(t.byUID) / 2)
	}
}

// shiftOut empties slot i of a linear-probing table, moving later entries
// of the probe sequence back so lookups need no tombstones.
func shiftOut(tab []*wlState, i uint64, home func(*wlState) uint64) {
	mask := uint64(len(tab) - 1)
	j := i
	for {
		j = (j + 1) & mask
		w := tab[j]
		if w == nil {
			tab[i] = nil
			return
		}
		k := home(w)
		// w may move to i unless its home lies cyclically in (i, j].
		if i <= j {
			if i < k && k <= j {
				continue
			}
		} else if i < k || k <= j {
			continue
		}
		tab[i] = w
		i = j
	}
}

// all yields every installed workload (in no particular order).
func (t *wlTable) all() iter.Seq[*wlState] {
	return func(yield func(*wlState) bool) {
		for _, w := range t.byUID {
			if w != nil && !yield(w) {
				return
			}
		}
	}
}
