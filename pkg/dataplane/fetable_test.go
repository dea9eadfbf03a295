package dataplane

import (
	"maps"
	"math/rand"
	"net/netip"
	"testing"

	"github.com/kmesh-go/kmesh/pkg/bpf"
)

// feMap is t as a map.
func feMap(t *feTable) map[bpf.FrontendKey]uint32 {
	m := map[bpf.FrontendKey]uint32{}
	for k, id := range t.all() {
		m[k] = id
	}
	return m
}

// TestFeTable checks the frontend table against a Go map under random sets
// (new and overwriting), deletes (present and absent), growth to thousands
// of entries and shrinking back: IPv4 frontends (the compact records) next
// to IPv6 ones, v4 address words that are not the canonical ones, padding
// and other protocols (the side map), over small address and port pools so
// keys differ in one field only. After every step every key is found with
// its id, absent keys are not, and all() yields exactly the map.
func TestFeTable(t *testing.T) {
	rng := rand.New(rand.NewSource(5))
	key := func(n int) bpf.FrontendKey {
		k := bpf.FrontendKey{Addr: addr16(netip.AddrFrom4([4]byte{10, 0, byte(rng.Intn(n / 256)), byte(rng.Intn(256))})),
			Port: htons(uint16(80 + rng.Intn(3))), Proto: 6}
		switch rng.Intn(30) {
		case 0:
			k.Addr = addr16(netip.AddrFrom16([16]byte{0xfd, 15: byte(rng.Intn(8))}))
		case 1:
			k.Addr[2] = 0 // an IPv4-compatible, not mapped, address
		case 2:
			k.Pad = 1
		case 3:
			k.Proto = 17
		}
		return k
	}
	var tab feTable
	ref := map[bpf.FrontendKey]uint32{}
	check := func(step, pool int) {
		t.Helper()
		if tab.len() != len(ref) {
			t.Fatalf("step %d: %d frontends, want %d", step, tab.len(), len(ref))
		}
		for k, id := range ref {
			if got, ok := tab.get(k); !ok || got != id {
				t.Fatalf("step %d: %+v: %d %v, want %d", step, k, got, ok, id)
			}
		}
		for i := 0; i < 20; i++ {
			k := key(pool)
			_, want := ref[k]
			if _, ok := tab.get(k); ok != want {
				t.Fatalf("step %d: %+v found: %v", step, k, ok)
			}
		}
		if got := feMap(&tab); !maps.Equal(got, ref) {
			t.Fatalf("step %d: all() differs from the map (%d, %d entries)", step, len(got), len(ref))
		}
	}
	step := 0
	// Grow to a few thousand, shrink to a few, grow again.
	for _, phase := range []struct{ pool, steps, setPct int }{{1024, 4000, 60}, {4096, 20000, 80}, {4096, 30000, 10}, {512, 5000, 50}} {
		for i := 0; i < phase.steps; i++ {
			k := key(phase.pool)
			if rng.Intn(100) < phase.setPct {
				id := uint32(1 + rng.Intn(50))
				tab.set(k, id)
				ref[k] = id
			} else {
				tab.del(k)
				delete(ref, k)
			}
			if step%97 == 0 {
				check(step, phase.pool)
			}
			step++
		}
		check(step, phase.pool)
	}
	if tab.reserve(5000); len(tab.tab) < 5000 {
		t.Fatal("reserve did not grow the table")
	}
	check(step, 512)

	// The hash spreads VIPs that differ in their last octet (the top byte
	// of the address word, above the bits the table masks): records sit
	// near their home slot. A hash of the low key bits only put 256 VIPs on
	// one run of slots (probes of thousands, 20x slower sets).
	var big feTable
	for i := 0; i < 20000; i++ {
		for _, port := range []uint16{80, 443} {
			big.set(bpf.FrontendKey{Addr: addr16(netip.AddrFrom4([4]byte{10, 128 + byte(i>>16), byte(i >> 8), byte(i)})), Port: htons(port), Proto: 6}, uint32(i))
		}
	}
	mask := uint64(len(big.tab) - 1)
	total := uint64(0)
	for i := range big.tab {
		if r := &big.tab[i]; r.used != 0 {
			total += (uint64(i) - r.hash()) & mask
		}
	}
	if mean := float64(total) / float64(big.n); mean > 4 {
		t.Fatalf("records sit %.1f slots from home on average (%d in %d slots)", mean, big.n, len(big.tab))
	}
}
