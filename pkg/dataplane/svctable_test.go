package dataplane

import (
	"fmt"
	"hash/fnv"
	"math/rand"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/kmesh-go/kmesh/pkg/model"
)

// refKey is what the service table should hold for one key.
type refKey struct {
	id         uint32
	enc        string // "": no service
	gen, slots uint32
	digest     uint64
	list       *keyList // nil: no member info
	members    []uint32
}

// refIDs is the id space as it was before the table (maps, hash/fnv):
// assign must hand out exactly the ids it does.
type refIDs struct {
	limit    uint32
	byKey    map[string]uint32
	byID     map[uint32]string
	reserved map[uint32]bool
}

func (s *refIDs) assign(key string) (uint32, bool, bool) {
	if id, ok := s.byKey[key]; ok {
		return id, false, true
	}
	h := fnv.New32a()
	h.Write([]byte(key))
	n := s.limit - 1
	start := h.Sum32() % n
	for i := uint32(0); i < n; i++ {
		id := (start+i)%n + 1
		if _, used := s.byID[id]; used || s.reserved[id] {
			continue
		}
		s.byKey[key], s.byID[id] = id, key
		delete(s.reserved, id)
		return id, true, true
	}
	return 0, false, false
}

func (s *refIDs) release(key string) {
	if id, ok := s.byKey[key]; ok {
		delete(s.byKey, key)
		delete(s.byID, id)
	}
}

// TestSvcTable checks the service table against Go maps under random id
// assignments and releases (with reserved ids and a small id space, so ids
// collide and probe), service installs, updates and removals (short and
// over-long encodings), member info created, replaced (short and over-long
// lists) and dropped, generation fields, and slot and arena compaction:
// after every step each key comes back with its id, service, fields,
// members and interned list by key, by id and from services(), no other key
// is found, and the ids are the ones the map-based id space assigned.
func TestSvcTable(t *testing.T) {
	rng := rand.New(rand.NewSource(3))
	const limit = 4000 // ids 1..3999 for 3000 keys: they collide and probe
	tab := newSvcTable(limit)
	ids := &refIDs{limit: limit, byKey: map[string]uint32{}, byID: map[uint32]string{}, reserved: map[uint32]bool{}}
	for i := 0; i < 20; i++ {
		id := uint32(1 + rng.Intn(limit-1))
		tab.reserved[id], ids.reserved[id] = true, true
	}
	ref := map[string]*refKey{}
	seqs := map[uint32]uint32{} // last generation used by id, whoever holds it
	var pool []string
	for i := 0; i < 3000; i++ {
		k := fmt.Sprintf("ns%d/svc-%d", i%7, i)
		switch i % 50 {
		case 0:
			k = ""
		case 1:
			k += strings.Repeat("x", svcStrMax+10) // a key too long for the arena
		case 2:
			k += strings.Repeat("y", 200)
		}
		pool = append(pool, k)
	}
	encode := func(key string) string {
		s := model.Service{Key: key, Hostname: fmt.Sprint("h", rng.Intn(1000)), VIPs: []netip.Addr{netip.AddrFrom4([4]byte{10, 0, byte(rng.Intn(256)), byte(rng.Intn(256))})}}
		for i := rng.Intn(3); i >= 0; i-- {
			s.Ports = append(s.Ports, model.ServicePort{Port: uint16(1 + rng.Intn(1000)), TargetPort: 8080})
		}
		if rng.Intn(40) == 0 {
			s.Name = strings.Repeat("n", svcStrMax) // an encoding too long for the arena
		}
		return encodeService(&s)
	}
	get := func(key string) *refKey {
		r := ref[key]
		if r == nil {
			r = &refKey{}
			ref[key] = r
		}
		return r
	}
	gone := func(key string) {
		if r := ref[key]; r != nil && r.id == 0 && r.enc == "" && r.list == nil {
			delete(ref, key)
		}
	}
	check := func(step int) {
		t.Helper()
		svcs := 0
		for key, r := range ref {
			s, ok := tab.slotOf(key)
			if !ok {
				t.Fatalf("step %d: key %.40q lost", step, key)
			}
			if got := tab.key(s); got != key {
				t.Fatalf("step %d: key %.40q reads back as %.40q", step, key, got)
			}
			if id, ok := tab.lookup(key); id != r.id || ok != (r.id != 0) {
				t.Fatalf("step %d: key %.40q id %d %v, want %d", step, key, id, ok, r.id)
			}
			if r.id != 0 {
				if k, ok := tab.idKey(r.id); !ok || k != key {
					t.Fatalf("step %d: id %d names %.40q, want %.40q", step, r.id, k, key)
				}
			}
			if tab.hasSvc(s) != (r.enc != "") {
				t.Fatalf("step %d: key %.40q has a service: %v", step, key, tab.hasSvc(s))
			}
			if rec := tab.rec(s); r.enc == "" && (rec.gen != 0 || rec.slots != 0 || rec.getDigest() != 0) {
				t.Fatalf("step %d: key %.40q without a service keeps generation fields", step, key)
			}
			if r.enc != "" {
				svcs++
				rec := tab.rec(s)
				if tab.enc(s) != r.enc || rec.gen != r.gen || rec.slots != r.slots || rec.getDigest() != r.digest {
					t.Fatalf("step %d: service %.40q differs", step, key)
				}
				if ss, ok := tab.svcSlot(key); !ok || ss != s {
					t.Fatalf("step %d: svcSlot(%.40q)", step, key)
				}
			}
			if tab.lists[s] != r.list {
				t.Fatalf("step %d: key %.40q interned list %p, want %p", step, key, tab.lists[s], r.list)
			}
			if r.list != nil && (r.list.one[0].key != key || len(r.list.list) != 1 || &r.list.list[0] != &r.list.one[0] || r.list.one[0].ports != nil) {
				t.Fatalf("step %d: key %.40q interned list %+v", step, key, r.list)
			}
			if m := tab.members(s); !slices.Equal(m, r.members) || cap(m) != len(m) {
				t.Fatalf("step %d: key %.40q members %.60v (%d, cap %d), want %.60v (%d)", step, key, m, len(m), cap(m), r.members, len(r.members))
			}
		}
		for _, key := range pool {
			if _, ok := ref[key]; !ok {
				if _, found := tab.slotOf(key); found {
					t.Fatalf("step %d: removed key %.40q found", step, key)
				}
			}
		}
		for id := uint32(0); id < limit; id++ {
			_, ok := tab.slotOfID(id)
			if _, want := ids.byID[id]; ok != want {
				t.Fatalf("step %d: id %d in the table: %v", step, id, ok)
			}
			if g := tab.lastGen(id); g != seqs[id] {
				t.Fatalf("step %d: id %d last generation %d, want %d", step, id, g, seqs[id])
			}
		}
		n := 0
		for s := range tab.services() {
			n++
			if r := ref[tab.key(s)]; r == nil || r.enc == "" {
				t.Fatalf("step %d: services() yields %.40q", step, tab.key(s))
			}
		}
		if n != svcs || tab.nSvc != svcs || tab.n != len(ref) {
			t.Fatalf("step %d: %d services yielded, nSvc %d, n %d; want %d services, %d keys", step, n, tab.nSvc, tab.n, svcs, len(ref))
		}
		long, longMem := 0, 0
		for s := range tab.recs {
			if f := tab.rec(uint32(s)).flags; f&svcUsed != 0 {
				long += int(f & svcLong / svcLong)
				longMem += int(f & svcLongMem / svcLongMem)
			}
		}
		if long != len(tab.long) || longMem != len(tab.longMem) {
			t.Fatalf("step %d: side maps hold %d strings and %d member lists, records %d and %d", step, len(tab.long), len(tab.longMem), long, longMem)
		}
		// Arenas are rewritten: dead bytes stay bounded.
		if a := &tab.strs; a.size > 4*a.live+(512<<10) {
			t.Fatalf("step %d: string arena %d bytes for %d live", step, a.size, a.live)
		}
		if a := &tab.mem; a.size > 4*a.live+(256<<10) {
			t.Fatalf("step %d: member arena %d ids for %d live", step, a.size, a.live)
		}
	}
	// remove drops everything key has, as commit does for a deleted
	// service whose workloads are gone.
	remove := func(key string) {
		tab.release(key)
		ids.release(key)
		if s, ok := tab.svcSlot(key); ok {
			tab.dropSvc(s)
		}
		if s, ok := tab.slotOf(key); ok {
			tab.dropKeyList(s)
		}
		delete(ref, key)
	}
	compactions := 0
	for step := 0; step < 40000; step++ {
		key := pool[rng.Intn(len(pool))]
		if step == 25000 {
			// Shrink to a tenth of the keys: slots are renumbered.
			for _, k := range pool[len(pool)/10:] {
				remove(k)
			}
			check(step)
		}
		if step >= 25000 {
			key = pool[rng.Intn(len(pool)/10)]
		}
		switch op := rng.Intn(20); {
		case op < 4: // assign (a plan)
			id, isNew, ok := tab.assign(key)
			wid, wNew, wok := ids.assign(key)
			if id != wid || isNew != wNew || ok != wok {
				t.Fatalf("step %d: assign(%.40q) = %d %v %v, the id space gives %d %v %v", step, key, id, isNew, ok, wid, wNew, wok)
			}
			get(key).id = id
		case op < 6: // release
			tab.release(key)
			ids.release(key)
			if r := ref[key]; r != nil {
				r.id = 0
				gone(key)
			}
		case op < 9: // install or update a service (keys with an id)
			r := ref[key]
			if r == nil || r.id == 0 {
				continue
			}
			s, _ := tab.slotOf(key)
			r.enc = encode(key)
			tab.setSvc(s, r.enc)
			r.gen, r.slots, r.digest = rng.Uint32(), rng.Uint32(), rng.Uint64()
			rec := tab.rec(s)
			rec.gen, rec.slots = r.gen, r.slots
			rec.setDigest(r.digest)
		case op < 11: // delete a service, as commit does
			s, ok := tab.svcSlot(key)
			if !ok {
				continue
			}
			tab.release(key)
			ids.release(key)
			tab.dropSvc(s)
			r := ref[key]
			r.id, r.enc, r.gen, r.slots, r.digest = 0, "", 0, 0, 0
			gone(key)
		case op < 13: // intern
			_, l := tab.keyList(key)
			r := get(key)
			if r.list != nil && r.list != l {
				t.Fatalf("step %d: interned list of %.40q changed", step, key)
			}
			r.list = l
		case op < 17: // set members
			s, l := tab.keyList(key)
			r := get(key)
			r.list = l
			var m []uint32
			n := rng.Intn(30)
			if rng.Intn(50) == 0 {
				n = idMax + 1 + rng.Intn(100) // kept whole
			}
			for i := 0; i < n; i++ {
				m = append(m, rng.Uint32())
			}
			tab.setMembers(s, m)
			r.members = slices.Clone(m)
		case op < 19: // drop member info, as setMembers does
			s, ok := tab.slotOf(key)
			if !ok || tab.lists[s] == nil {
				continue
			}
			tab.setMembers(s, nil)
			r := ref[key]
			r.members = nil
			if !tab.hasSvc(s) {
				tab.dropKeyList(s)
				r.list = nil
				gone(key)
			}
		case op < 20 && rng.Intn(2) == 0: // a generation written (ids with and without a key)
			id := uint32(1 + rng.Intn(limit-1))
			if r := ref[key]; r != nil && r.id != 0 && rng.Intn(2) == 0 {
				id = r.id
			}
			g := tab.lastGen(id) + 1 + uint32(rng.Intn(3))
			tab.setLastGen(id, g)
			seqs[id] = g
		default: // between changes
			if rng.Intn(10) == 0 {
				tab.reserve(tab.n + rng.Intn(2000))
			}
			before := len(tab.recs)
			tab.compact()
			if len(tab.recs) < before {
				compactions++
			}
		}
		if step%11 == 0 || step > 39000 {
			check(step)
		}
	}
	check(-1)
	if compactions == 0 {
		t.Fatal("slots were never renumbered")
	}
	// A full id space.
	small, smallIDs := newSvcTable(4), &refIDs{limit: 4, byKey: map[string]uint32{}, byID: map[uint32]string{}, reserved: map[uint32]bool{}}
	for i := 0; i < 5; i++ {
		k := fmt.Sprint("k", i)
		id, isNew, ok := small.assign(k)
		if wid, wNew, wok := smallIDs.assign(k); id != wid || isNew != wNew || ok != wok {
			t.Fatalf("assign(%q) in a small space = %d %v %v, the id space gives %d %v %v", k, id, isNew, ok, wid, wNew, wok)
		}
	}
}
