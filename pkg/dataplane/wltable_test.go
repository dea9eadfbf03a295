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
		name = strings.Repeat("n", recNameMax+rng.Intn(2)) // fits a record, or just not
	case 1, 2:
		ns = "namespace"
	case 3:
		ns = strings.Repeat("s", recNameMax+rng.Intn(2))
	case 4:
		name = strings.Repeat("n", 5000+rng.Intn(3)) // side.strs
	case 5, 6, 7, 8:
		name, ns = uidName(uid), uidNamespace(uid) // kept once (fromUID)
	case 9:
		name = uidName(uid)
	case 10:
		ns, name = uidNamespace(uid), ""
	}
	w := newWlState(uid, name, ns)
	w.id, w.hash = id, rng.Uint64()
	// Weights the record holds (0-2) and others (weights).
	w.weight = []uint32{0, 1, 1, 1, 2, weightWide, 100, 1<<32 - 1}[rng.Intn(8)]
	w.setHealthy(rng.Intn(4) > 0)
	w.loc = locs[rng.Intn(len(locs))]
	if rng.Intn(5) > 0 {
		w.ep.has[bpf.FamV4] = true
		w.ep.addr[bpf.FamV4] = addr16(poolAddr(rng, false))
	}
	if rng.Intn(4) == 0 {
		w.ep.has[bpf.FamV6] = true
		w.ep.addr[bpf.FamV6] = addr16(poolAddr(rng, true))
	}
	if rng.Intn(30) == 0 {
		w.ep.addr[bpf.FamV4][0] = 7 // not what addr16 gives: kept whole
	}
	if rng.Intn(8) == 0 {
		// Addresses as given that ep does not say: ep's own (IPv4 also
		// mapped), others (owned elsewhere, or by nobody else), repeats.
		var as []netip.Addr
		for n := rng.Intn(5); len(as) < n; {
			switch a := addrFrom16(w.ep.addr[rng.Intn(2)]); rng.Intn(4) {
			case 0:
				if a.IsValid() && !a.IsUnspecified() {
					as = append(as, a)
				}
			case 1:
				if a.Is4() {
					as = append(as, netip.AddrFrom16(a.As16()))
				}
			default:
				as = append(as, poolAddr(rng, rng.Intn(3) == 0))
			}
			if len(as) > 0 && rng.Intn(6) == 0 {
				as = append(as, as[rng.Intn(len(as))])
			}
		}
		w.rare().addrs = &as
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

// poolAddr is an address from a pool small enough that workloads share
// addresses.
func poolAddr(rng *rand.Rand, v6 bool) netip.Addr {
	if v6 {
		// Equal last words in different addresses too.
		return netip.AddrFrom16([16]byte{0: 0xfd, 1: 7, 5: byte(rng.Intn(2)), 14: byte(rng.Intn(2)), 15: byte(rng.Intn(128))})
	}
	return netip.AddrFrom4([4]byte{10, 0, byte(rng.Intn(8)), byte(rng.Intn(256))})
}

// refAddrIndex is the address index as Go maps (its semantics before it
// moved into the table): IPv4 keyed by the last address word, the last
// workload indexed with an address owns it, and a workload drops only the
// addresses it owns.
type refAddrIndex struct {
	v4 map[uint32]uint32
	v6 map[[4]uint32]uint32
}

func (x *refAddrIndex) lookup(a netip.Addr) (uint32, bool) {
	w := addr16(a.Unmap())
	if a.Unmap().Is4() {
		id, ok := x.v4[w[3]]
		return id, ok
	}
	id, ok := x.v6[w]
	return id, ok
}

func (x *refAddrIndex) set(w [4]uint32, v4 bool, id uint32, remove bool) {
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

func (x *refAddrIndex) index(w *wlState, remove bool) {
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

// addrsOf lists every address w is indexed under, IPv4 also mapped.
func addrsOf(w *wlState) []netip.Addr {
	as := w.epAddrs()
	if g := w.givenAddrs(); g != nil {
		as = append(as, *g...)
	}
	for _, a := range as {
		if a.Is4() {
			as = append(as, netip.AddrFrom16(a.As16()))
		}
	}
	return as
}

// checkRefTab: every value in use is found under its own number, once.
func checkRefTab[T comparable](t *testing.T, where string, r *refTab[T]) {
	t.Helper()
	n := 0
	for i, v := range r.vals {
		if r.refs[i] == 0 {
			continue
		}
		n++
		if j, ok := r.find(v); !ok || j != uint32(i) {
			t.Fatalf("%s: value %d found as %d (%v)", where, i, j, ok)
		}
	}
	if n != r.n || len(r.vals) != n+len(r.free) || len(r.idx) > 64 && n*8 < len(r.idx) {
		t.Fatalf("%s: %d values in use, counted %d, %d numbered, %d free, table of %d", where, n, r.n, len(r.vals), len(r.free), len(r.idx))
	}
}

// TestWlTable checks the columnar workload table against a Go map of
// states under random inserts, replacements and deletes (growing, shrinking,
// arena and slot compaction): every field comes back by uid, by id and from
// all, and Snapshot-style model values are equal; the address index gives
// the owners the Go-map index (refAddrIndex) gives.
func TestWlTable(t *testing.T) {
	rng := rand.New(rand.NewSource(1))
	var locs []*model.Locality
	var lists []*[]membership
	for i := 0; i < 8; i++ {
		locs = append(locs, &model.Locality{Region: fmt.Sprint("r", i)})
		ms := []membership{{key: fmt.Sprint("svc", i)}}
		lists = append(lists, &ms)
	}
	var tab wlTable
	// Fill the locality and prefix numberings up to just below what a
	// record holds: the test's own are then numbered across the limit,
	// some in the record, some not (side.loc, uids kept whole), and move
	// across it as they are freed and reused.
	const fill = 4
	for i := 0; i < locWide-fill; i++ {
		tab.locs.ref(&model.Locality{Region: fmt.Sprint("fill", i)})
	}
	for i := 0; i < pfxLimit-fill; i++ {
		tab.pfx.ref(fmt.Sprintf("fill/%d/", i))
	}
	ref := map[string]*wlState{}
	var refAddrs refAddrIndex
	checkAddrs := func(where string, as []netip.Addr) {
		t.Helper()
		for _, a := range as {
			id, ok := tab.addrOwner(a)
			wantID, want := refAddrs.lookup(a)
			if id != wantID || ok != want {
				t.Fatalf("%s: address %v owned by %d (%v), want %d (%v)", where, a, id, ok, wantID, want)
			}
		}
	}
	var pool []netip.Addr
	for i := 0; i < 2048; i++ {
		a := netip.AddrFrom4([4]byte{10, 0, byte(i >> 8), byte(i)})
		pool = append(pool, a, netip.AddrFrom16(a.As16()))
	}
	for i := 0; i < 512; i++ {
		pool = append(pool, netip.AddrFrom16([16]byte{0: 0xfd, 1: 7, 5: byte(i >> 8), 14: byte(i >> 7 & 1), 15: byte(i & 127)}))
	}
	check := func(where string) {
		t.Helper()
		checkAddrs(where, pool)
		for _, w := range ref {
			checkAddrs(where, addrsOf(w))
		}
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
		if tab.pfx.n-(pfxLimit-fill) > len(prefixes) {
			t.Fatalf("%s: %d interned prefixes for %d in use", where, tab.pfx.n-(pfxLimit-fill), len(prefixes))
		}
		wide := map[string]int{}
		for s := range tab.recs {
			if r := &tab.recs[s]; r.id != 0 {
				if r.loc == locWide {
					wide["locality"]++
				}
				if r.flags>>recWeight == weightWide {
					wide["weight"]++
				}
				if r.flags&recLong != 0 {
					wide["names"]++
				}
				if r.nameLen == fromUID && r.nsLen != fromUID {
					wide["name from uid"]++
				}
				if r.nsLen == fromUID && r.nameLen != fromUID {
					wide["namespace from uid"]++
				}
				if r.nsLen == fromUID && r.nameLen == fromUID {
					wide["both from uid"]++
				}
				if p, _ := tab.uidParts(uint32(s)); p == "" && r.flags&recLong == 0 && uidPrefix(string(tab.appendUID(nil, uint32(s)))) != "" {
					wide["prefix"]++
				}
			}
		}
		if len(ref) > 100 && len(wide) < 7 {
			t.Fatalf("%s: %v: not every escape is exercised", where, wide)
		}
		// Nothing leaks: references counted as the records hold them, side
		// maps as large as the records using them, every address entry
		// that the Go-map index has.
		pfxRefs, locRefs := map[uint32]uint32{}, map[uint32]uint32{}
		nSide, nWeights, live := 0, 0, 0
		for s := range tab.recs {
			r := &tab.recs[s]
			if r.id == 0 {
				continue
			}
			if r.pfx != 0 {
				pfxRefs[uint32(r.pfx)-1]++
			}
			if r.loc != locWide {
				locRefs[uint32(r.loc)]++
			} else {
				locRefs[tab.side[uint32(s)].loc]++
			}
			if r.flags&recSide != 0 {
				nSide++
			}
			if r.flags&recLong == 0 {
				live += r.arenaLen()
			}
			if r.flags>>recWeight == weightWide {
				nWeights++
			}
		}
		for i, v := range tab.pfx.vals {
			if want := pfxRefs[uint32(i)] + uint32(strings.Count(v, "fill/")); tab.pfx.refs[i] != want {
				t.Fatalf("%s: prefix %q has %d references, want %d", where, v, tab.pfx.refs[i], want)
			}
		}
		for i, v := range tab.locs.vals {
			want := locRefs[uint32(i)]
			if v != nil && strings.HasPrefix(v.Region, "fill") {
				want++
			}
			if tab.locs.refs[i] != want {
				t.Fatalf("%s: locality %d has %d references, want %d", where, i, tab.locs.refs[i], want)
			}
		}
		checkRefTab(t, where+": localities", &tab.locs)
		checkRefTab(t, where+": lists", &tab.lists)
		checkRefTab(t, where+": prefixes", &tab.pfx)
		if tab.names.live != live {
			t.Fatalf("%s: arena counts %d bytes live, the records hold %d", where, tab.names.live, live)
		}
		if len(tab.side) != nSide || len(tab.weights) != nWeights {
			t.Fatalf("%s: %d side entries, %d weights for %d, %d records", where, len(tab.side), len(tab.weights), nSide, nWeights)
		}
		if n := len(refAddrs.v4) + len(refAddrs.v6); tab.naddr+len(tab.xaddr) != n {
			t.Fatalf("%s: %d + %d addresses indexed, want %d", where, tab.naddr, len(tab.xaddr), n)
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
			switch k % 50 {
			case 0:
				uid += strings.Repeat("u", longNames) // uid of 64 KiB and more
			case 1, 2:
				uid += strings.Repeat("v", 220+k/50%50) // around what a record holds, with or without the prefix
			}
			switch {
			case rng.Intn(3) > 0: // insert or replace (same uid, same id)
				w := randomState(rng, uid, uint32(k+1), locs, lists)
				tab.put(w)
				old := ref[uid]
				if old != nil {
					refAddrs.index(old, true)
				}
				refAddrs.index(w, false)
				ref[uid] = w
				checkAddrs(fmt.Sprintf("round %d step %d: put", round, i), addrsOf(w))
				if old != nil {
					checkAddrs(fmt.Sprintf("round %d step %d: replaced", round, i), addrsOf(old))
				}
			case ref[uid] != nil:
				tab.del(ref[uid])
				refAddrs.index(ref[uid], true)
				checkAddrs(fmt.Sprintf("round %d step %d: deleted", round, i), addrsOf(ref[uid]))
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
				refAddrs.index(w, true)
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
		refAddrs.index(w, true)
	}
	if len(refAddrs.v4)+len(refAddrs.v6) != 0 {
		t.Fatal("reference address index not empty")
	}
	if tab.len() != 0 || tab.byUID != nil || tab.recs != nil || tab.locs.idx != nil || tab.byAddr != nil || tab.xaddr != nil {
		t.Fatalf("emptied table keeps %d entries, %d slots", tab.len(), len(tab.byUID))
	}
}

// TestWlTableAddrShrink: the address index shrinks when workloads lose
// their addresses (no slot compaction then) and stays exact.
func TestWlTableAddrShrink(t *testing.T) {
	var tab wlTable
	tab.reserve(3000)
	loc := &model.Locality{}
	state := func(i int, addrs bool) *wlState {
		w := newWlState(fmt.Sprintf("w/%d", i), "", "")
		w.id, w.loc = uint32(i+1), loc
		if addrs {
			w.ep.has = [2]bool{true, true}
			w.ep.addr[bpf.FamV4] = addr16(netip.AddrFrom4([4]byte{10, 1, byte(i >> 8), byte(i)}))
			w.ep.addr[bpf.FamV6] = addr16(netip.AddrFrom16([16]byte{0: 0xfd, 14: byte(i >> 8), 15: byte(i)}))
		}
		return w
	}
	owner := func(i int) (uint32, uint32) {
		w := state(i, true)
		a, _ := tab.addrOwner(addrFrom16(w.ep.addr[bpf.FamV4]))
		b, _ := tab.addrOwner(addrFrom16(w.ep.addr[bpf.FamV6]))
		return a, b
	}
	for i := 0; i < 3000; i++ {
		tab.put(state(i, true))
	}
	grown := len(tab.byAddr)
	for i := 0; i < 3000; i++ {
		if a, b := owner(i); a != uint32(i+1) || b != uint32(i+1) {
			t.Fatalf("workload %d: addresses owned by %d, %d", i, a, b)
		}
	}
	for i := 0; i < 2990; i++ {
		tab.put(state(i, false))
	}
	if len(tab.byAddr) >= grown/4 || tab.naddr != 20 {
		t.Fatalf("address index of %d entries (%d before) for %d addresses", len(tab.byAddr), grown, tab.naddr)
	}
	for i := 0; i < 3000; i++ {
		a, b := owner(i)
		if want := uint32(i + 1); i < 2990 && (a != 0 || b != 0) || i >= 2990 && (a != want || b != want) {
			t.Fatalf("workload %d: addresses owned by %d, %d after the shrink", i, a, b)
		}
	}
}

// TestWlTableArenaCompaction: churn of new uids does not grow the arena
// beyond twice what is live.
func TestWlTableArenaCompaction(t *testing.T) {
	var tab wlTable
	loc := &model.Locality{}
	// Names of their own, and names and namespaces the uid says (fromUID).
	names := func(i int) (string, string, string) {
		uid := fmt.Sprintf("cluster/apps/Pod/ns/pod-%d", i)
		switch i % 3 {
		case 0:
			return uid, fmt.Sprintf("pod-%d", i), "ns"
		case 1:
			return uid, "name", "namespace"
		}
		return uid, "x", "ns"
	}
	compactions := 0
	for i := 0; i < 200000; i++ {
		w := newWlState(names(i))
		w.id, w.loc = uint32(i%1000+1), loc
		if i >= 1000 {
			tab.del(tab.getID(w.id))
		}
		size := tab.names.size
		if tab.put(w); tab.names.size >= size {
			continue
		}
		compactions++
		for j := max(0, i-999); j <= i; j++ { // every workload, moved
			uid, name, ns := names(j)
			if w := tab.get(uid); w == nil || w.uid() != uid || w.name() != name || w.namespace() != ns {
				t.Fatalf("workload %d not as installed after compaction", j)
			}
		}
	}
	if compactions == 0 {
		t.Fatal("the arena was never compacted")
	}
	if tab.len() != 1000 || tab.names.size > 2*tab.names.live+arenaChunk+1<<20 {
		t.Fatalf("%d workloads, arena %d bytes for %d live", tab.len(), tab.names.size, tab.names.live)
	}
	if len(tab.recs) != 1000 {
		t.Fatalf("%d slots for 1000 workloads", len(tab.recs))
	}
}

// TestWlRecSize: a node may carry 100k workloads; a record is 32 bytes and
// a plan's state stays in the 96-byte size class.
func TestWlRecSize(t *testing.T) {
	if n := unsafe.Sizeof(wlRec{}); n > 32 {
		t.Fatalf("wlRec is %d bytes, over 32", n)
	}
	if n := unsafe.Sizeof(wlState{}); n > 96 {
		t.Fatalf("wlState is %d bytes, over the 96-byte size class", n)
	}
}
