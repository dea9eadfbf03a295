package dataplane

import (
	"fmt"
	"math/rand"
	"testing"
	"unsafe"
)

// TestWlTable checks the workload table against a Go map under random
// inserts, replacements and deletes (growing and shrinking).
func TestWlTable(t *testing.T) {
	rng := rand.New(rand.NewSource(1))
	var tab wlTable
	ref := map[string]*wlState{}
	check := func() {
		t.Helper()
		if tab.len() != len(ref) {
			t.Fatalf("len %d, want %d", tab.len(), len(ref))
		}
		n := 0
		for w := range tab.all() {
			if ref[w.uid()] != w {
				t.Fatalf("all yields %q, not installed", w.uid())
			}
			n++
		}
		if n != len(ref) {
			t.Fatalf("all yields %d, want %d", n, len(ref))
		}
		for uid, w := range ref {
			if tab.get(uid) != w || tab.getID(w.id) != w {
				t.Fatalf("%q (id %d) not found", uid, w.id)
			}
		}
	}
	for round := 0; round < 4; round++ {
		for i := 0; i < 3000; i++ {
			k := rng.Intn(5000)
			uid := fmt.Sprintf("uid-%d", k)
			switch {
			case rng.Intn(3) > 0: // insert or replace (same uid, same id)
				w := newWlState(uid, "", "")
				w.id = uint32(k + 1)
				tab.put(w)
				ref[uid] = w
			case ref[uid] != nil:
				tab.del(ref[uid])
				delete(ref, uid)
			}
			if tab.get(uid) != ref[uid] {
				t.Fatalf("round %d step %d: %q", round, i, uid)
			}
		}
		check()
		// Delete most, so the tables shrink.
		for uid, w := range ref {
			if rng.Intn(10) > 0 {
				tab.del(w)
				delete(ref, uid)
			}
		}
		check()
		if tab.get("absent") != nil || tab.getID(999999) != nil {
			t.Fatal("found an absent workload")
		}
	}
	for _, w := range ref {
		tab.del(w)
	}
	if tab.len() != 0 || tab.byUID != nil {
		t.Fatalf("emptied table keeps %d entries, %d slots", tab.len(), len(tab.byUID))
	}
}

// TestWlStateSize: a node may carry 100k workloads; the state stays in the
// 96-byte size class.
func TestWlStateSize(t *testing.T) {
	if n := unsafe.Sizeof(wlState{}); n > 96 {
		t.Fatalf("wlState is %d bytes, over the 96-byte size class", n)
	}
}
