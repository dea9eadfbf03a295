package dataplane

import (
	"fmt"
	"math/rand"
	"net/netip"
	"reflect"
	"strings"
	"testing"
	"unsafe"

	"github.com/kmesh-go/kmesh/pkg/bpf"
	"github.com/kmesh-go/kmesh/pkg/model"
)

// sameState reports whether two states hold the same workload.
func sameState(a, b *wlState) bool {
	return a.uid() == b.uid() && a.name() == b.name() && a.namespace() == b.namespace() && a.hash == b.hash &&
		a.id == b.id && a.weight == b.weight && a.ep == b.ep && a.healthy() == b.healthy() && a.loc == b.loc &&
		a.svcs == b.svcs && a.x == b.x
}

// randomState is a state for uid with random content: short and very long
// names, IPv4 and IPv6, non-canonical address words, shared and own
// membership lists, rare fields.
func randomState(rng *rand.Rand, uid string, id uint32, locs []*model.Locality, lists []*[]membership) *wlState {
	name, ns := fmt.Sprintf("n%d", rng.Intn(100)), ""
	switch rng.Intn(20) {
	case 0:
		name = strings.Repeat("n", arenaMax) // too long for the arena
	case 1, 2:
		ns = "namespace"
	}
	w := newWlState(uid, name, ns)
	w.id, w.hash, w.weight = id, rng.Uint64(), uint32(rng.Intn(3))
	w.setHealthy(rng.Intn(4) > 0)
	w.loc = locs[rng.Intn(len(locs))]
	if rng.Intn(5) > 0 {
		w.ep.has[bpf.FamV4] = true
		w.ep.addr[bpf.FamV4] = addr16(netip.AddrFrom4([4]byte{10, byte(rng.Intn(256)), byte(rng.Intn(256)), byte(rng.Intn(256))}))
	}
	if rng.Intn(4) == 0 {
		w.ep.has[bpf.FamV6] = true
		w.ep.addr[bpf.FamV6] = [4]uint32{rng.Uint32(), 0, 0, rng.Uint32()}
	}
	if rng.Intn(30) == 0 {
		w.ep.addr[bpf.FamV4][0] = 7 // not what addr16 gives: kept whole
	}
	w.ep.local = rng.Intn(10) == 0
	switch rng.Intn(5) {
	case 0:
	case 1:
		ms := []membership{{key: "own"}, {key: "other", ports: []model.WorkloadPort{{ServicePort: 1, TargetPort: 2}}}}
		w.svcs = &ms
	default:
		w.svcs = lists[rng.Intn(len(lists))]
	}
	if rng.Intn(10) == 0 {
		w.rare().wp = &model.WaypointRef{Service: "wp", Port: 15008}
	}
	return w
}

// TestWlTable checks the columnar workload table against a Go map of
// states under random inserts, replacements and deletes (growing, shrinking,
// arena and slot compaction): every field comes back by uid, by id and from
// all, and Snapshot-style model values are equal.
func TestWlTable(t *testing.T) {
	rng := rand.New(rand.NewSource(1))
	var locs []*model.Locality
	var lists []*[]membership
	for i := 0; i < 5; i++ {
		locs = append(locs, &model.Locality{Region: fmt.Sprint("r", i)})
		ms := []membership{{key: fmt.Sprint("svc", i)}}
		lists = append(lists, &ms)
	}
	var tab wlTable
	ref := map[string]*wlState{}
	check := func(where string) {
		t.Helper()
		if tab.len() != len(ref) {
			t.Fatalf("%s: len %d, want %d", where, tab.len(), len(ref))
		}
		n := 0
		for w := range tab.all() {
			if r := ref[w.uid()]; r == nil || !sameState(r, w) {
				t.Fatalf("%s: all yields %q, not as installed", where, w.uid())
			}
			n++
		}
		if n != len(ref) {
			t.Fatalf("%s: all yields %d, want %d", where, n, len(ref))
		}
		prefixes := map[string]bool{}
		for uid := range ref {
			if p := uidPrefix(uid); p != "" {
				prefixes[p] = true
			}
		}
		if len(tab.pfx.idx) > len(prefixes) {
			t.Fatalf("%s: %d interned prefixes for %d in use", where, len(tab.pfx.idx), len(prefixes))
		}
		for uid, w := range ref {
			a, b := tab.get(uid), tab.getID(w.id)
			if a == nil || b == nil || !sameState(a, w) || !sameState(b, w) {
				t.Fatalf("%s: %q (id %d) not found as installed", where, uid, w.id)
			}
			if got, want := a.model(), w.model(); !reflect.DeepEqual(got, want) {
				t.Fatalf("%s: model %+v, want %+v", where, got, want)
			}
		}
	}
	for round := 0; round < 6; round++ {
		for i := 0; i < 6000; i++ {
			k := rng.Intn(5000)
			uid := fmt.Sprintf("uid-%d", k)
			switch k % 3 {
			case 0:
				uid = fmt.Sprintf("cluster/apps/Pod/ns%d/pod-%d", k%7, k) // an interned prefix
			case 1:
				uid = fmt.Sprintf("short/%d", k) // a prefix too short to intern
			}
			if k%50 == 0 {
				uid += strings.Repeat("u", longNames) // uid of 64 KiB and more
			}
			switch {
			case rng.Intn(3) > 0: // insert or replace (same uid, same id)
				w := randomState(rng, uid, uint32(k+1), locs, lists)
				tab.put(w)
				ref[uid] = w
			case ref[uid] != nil:
				tab.del(ref[uid])
				delete(ref, uid)
			}
			if got, want := tab.get(uid), ref[uid]; (got == nil) != (want == nil) || (got != nil && !sameState(got, want)) {
				t.Fatalf("round %d step %d: %q", round, i, uid)
			}
		}
		check(fmt.Sprint("round ", round))
		// Delete most, so the tables shrink and the slots are renumbered.
		for uid, w := range ref {
			if rng.Intn(10) > 0 {
				tab.del(w)
				delete(ref, uid)
			}
		}
		check(fmt.Sprint("round ", round, " after deletes"))
		if tab.get("absent") != nil || tab.getID(999999) != nil {
			t.Fatal("found an absent workload")
		}
	}
	if tab.names.size > 2*tab.names.live+arenaChunk && tab.names.size > 1<<20 {
		t.Fatalf("arena not compacted: %d bytes for %d live", tab.names.size, tab.names.live)
	}
	for _, w := range ref {
		tab.del(w)
	}
	if tab.len() != 0 || tab.byUID != nil || tab.recs != nil || tab.locs.idx != nil {
		t.Fatalf("emptied table keeps %d entries, %d slots", tab.len(), len(tab.byUID))
	}
}

// TestWlTableArenaCompaction: churn of new uids does not grow the arena
// beyond twice what is live.
func TestWlTableArenaCompaction(t *testing.T) {
	var tab wlTable
	loc := &model.Locality{}
	for i := 0; i < 200000; i++ {
		w := newWlState(fmt.Sprintf("cluster/apps/Pod/ns/pod-%d", i), "name", "namespace")
		w.id, w.loc = uint32(i%1000+1), loc
		if i >= 1000 {
			tab.del(tab.getID(w.id))
		}
		tab.put(w)
	}
	if tab.len() != 1000 || tab.names.size > 2*tab.names.live+arenaChunk+1<<20 {
		t.Fatalf("%d workloads, arena %d bytes for %d live", tab.len(), tab.names.size, tab.names.live)
	}
	if len(tab.recs) != 1000 {
		t.Fatalf("%d slots for 1000 workloads", len(tab.recs))
	}
}

// TestWlRecSize: a node may carry 100k workloads; a record is 44 bytes and
// a plan's state stays in the 96-byte size class.
func TestWlRecSize(t *testing.T) {
	if n := unsafe.Sizeof(wlRec{}); n > 44 {
		t.Fatalf("wlRec is %d bytes, over 44", n)
	}
	if n := unsafe.Sizeof(wlState{}); n > 96 {
		t.Fatalf("wlState is %d bytes, over the 96-byte size class", n)
	}
}
