package dataplane

import (
	"context"
	"fmt"
	"net/netip"
	"testing"

	"github.com/kmesh-go/kmesh/pkg/bpf"
	"github.com/kmesh-go/kmesh/pkg/model"
)

// Inline slots (bpf.InlineSlots in the generation record, KM_REC_INLINE)
// against km_endpoint, through the BPF selection code (lb_select shim).

// inlineSnap is service "s" with n workloads (weight i+1 for the i-th),
// dual-stack when dual.
func inlineSnap(alg model.LBAlgorithm, n int, dual bool) *model.Snapshot {
	snap := &model.Snapshot{Services: []model.Service{{Key: "s", VIPs: []netip.Addr{vip4, vip6}, LB: model.LoadBalancing{Algorithm: alg},
		Ports: []model.ServicePort{{Port: 80, TargetPort: 8080}}}}}
	for i := 0; i < n; i++ {
		w := wl(fmt.Sprintf("w%02d", i), fmt.Sprintf("10.0.1.%d", i+1), "s", uint32(i+1), model.Locality{})
		if dual {
			w.Addresses = append(w.Addresses, netip.MustParseAddr(fmt.Sprintf("fd00::1:%d", i+1)))
		}
		snap.Workloads = append(snap.Workloads, w)
	}
	return snap
}

// checkPicks sweeps the selection of service "s" (n workloads of
// inlineSnap) over whole periods of its algorithm, for each family it has:
// every workload must get exactly its share, at its address.
func checkPicks(t *testing.T, s *selector, alg model.LBAlgorithm, n int, dual bool) {
	t.Helper()
	vips := []netip.Addr{vip4}
	if dual {
		vips = append(vips, vip6)
	}
	for fam, vip := range vips {
		dst := netip.AddrPortFrom(vip, 80)
		got := map[string]int{}
		want := map[string]int{}
		period := n
		if alg == model.LBWeighted {
			period = n * (n + 1) / 2
		}
		for i := 0; i < n; i++ {
			want[fmt.Sprintf("w%02d:8080", i)] = 1
			if alg == model.LBWeighted {
				want[fmt.Sprintf("w%02d:8080", i)] = i + 1
			}
		}
		for i := 0; i < period; i++ {
			a := s.pick(dst, int64(i))
			if a.Verdict != verdictOK {
				t.Fatalf("%v pick %d: verdict %d", vip, i, a.Verdict)
			}
			b := s.backendOf(a)
			got[b]++
			var idx int
			fmt.Sscanf(b, "w%02d", &idx)
			wantAddr := fmt.Sprintf("10.0.1.%d", idx+1)
			if fam == 1 {
				wantAddr = fmt.Sprintf("fd00::1:%d", idx+1)
			}
			if addrFrom16(a.OutAddr) != netip.MustParseAddr(wantAddr) {
				t.Fatalf("%v: %s at %v, want %s", vip, b, addrFrom16(a.OutAddr), wantAddr)
			}
		}
		if len(got) != len(want) {
			t.Fatalf("%s over %v: %v, want %v", alg, vip, got, want)
		}
		for k, v := range want {
			if got[k] != v {
				t.Fatalf("%s over %v: %v, want %v", alg, vip, got, want)
			}
		}
	}
}

// dumpedEndpoints is what the admin dump shows under km_endpoint: address ->
// the row's "inline" column.
func dumpedEndpoints(t *testing.T, dp *Dataplane) map[string]string {
	t.Helper()
	maps, err := dp.Objects().Dump(0)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]string{}
	for _, m := range maps {
		if m.Name != bpf.MapEndpoint {
			continue
		}
		for _, r := range m.Rows {
			out[r["addr"]] = r["inline"]
		}
	}
	return out
}

// TestSelectInlineBoundary: a generation of bpf.InlineSlots slots in all
// (16 IPv4 endpoints, or 8 dual-stack ones) is inline, one more slot goes to
// km_endpoint; random, round robin and weighted pick exactly either way, the
// admin dump shows the endpoints, and the maps hold exactly what the
// accounting says after the superseded generations are collected.
func TestSelectInlineBoundary(t *testing.T) {
	s := newSelector(t)
	ctx := context.Background()
	for _, tc := range []struct {
		n      int
		dual   bool
		inline bool
	}{
		{bpf.InlineSlots, false, true},
		{bpf.InlineSlots + 1, false, false},
		{bpf.InlineSlots / 2, true, true},
		{bpf.InlineSlots/2 + 1, true, false},
		{1, false, true},
	} {
		for _, alg := range []model.LBAlgorithm{model.LBRandom, model.LBRoundRobin, model.LBWeighted} {
			name := fmt.Sprintf("%d-dual=%v-%s", tc.n, tc.dual, alg)
			t.Run(name, func(t *testing.T) {
				if err := s.dp.Apply(ctx, inlineSnap(alg, tc.n, tc.dual)); err != nil {
					t.Fatal(err)
				}
				slots := tc.n
				if tc.dual {
					slots *= 2
				}
				rec, ext := activeRec(t, s.dp, "s")
				if got := rec.Flags&bpf.RecInline != 0; got != tc.inline || countSlots(rec.Count) != slots {
					t.Fatalf("%d slots: inline %v, want %v", countSlots(rec.Count), got, tc.inline)
				}
				if wantExt := map[bool]int{true: 0, false: slots}[tc.inline]; ext != wantExt {
					t.Fatalf("km_endpoint holds %d slots of the generation, want %d", ext, wantExt)
				}
				if u := s.dp.Usage(); u.Slots != ext {
					t.Fatalf("accounting: %d live km_endpoint slots, want %d", u.Slots, ext)
				}
				if alg == model.LBRoundRobin {
					// A strict rotation: n picks reach every workload once.
					seen := map[string]bool{}
					for i := 0; i < tc.n; i++ {
						seen[s.backendOf(s.pick(netip.AddrPortFrom(vip4, 80), 0))] = true
					}
					if len(seen) != tc.n {
						t.Fatalf("round robin: %d picks reached %v", tc.n, seen)
					}
				} else {
					checkPicks(t, s, alg, tc.n, tc.dual)
				}
				if err := s.dp.Sync(); err != nil {
					t.Fatal(err)
				}
				checkMapCounts(t, s.dp)
				// After the collection: only the active generation is left.
				eps := dumpedEndpoints(t, s.dp)
				for i := 0; i < tc.n; i++ {
					a := fmt.Sprintf("10.0.1.%d", i+1)
					if want := map[bool]string{true: "yes", false: "no"}[tc.inline]; eps[a] != want {
						t.Fatalf("admin dump of km_endpoint: %s has inline=%q, want %q (%v)", a, eps[a], want, eps)
					}
				}
			})
		}
	}
}

// TestSelectUpgradedRecord: a generation written without the inline flag,
// its slots in km_endpoint and the record's slot array zero (what the loader
// makes of a layout-1 record when it migrates km_svc_gen), keeps serving;
// the next update replaces it with an inline generation, and retiring the
// old one deletes its km_endpoint slots. Going back (the service grows past
// bpf.InlineSlots) retires the inline generation without touching
// km_endpoint.
func TestSelectUpgradedRecord(t *testing.T) {
	s := newSelector(t)
	ctx := context.Background()
	epEntries := func() int {
		n := 0
		var k, v []byte
		it := s.dp.Objects().Maps[bpf.MapEndpoint].Iterate()
		for it.Next(&k, &v) {
			n++
		}
		if err := it.Err(); err != nil {
			t.Fatal(err)
		}
		return n
	}
	for _, alg := range []model.LBAlgorithm{model.LBWeighted, model.LBRandom} {
		// Layout 1's record: no flag, slots in km_endpoint.
		s.dp.inlineMax = 0
		if err := s.dp.Apply(ctx, inlineSnap(alg, 3, true)); err != nil {
			t.Fatal(err)
		}
		rec, ext := activeRec(t, s.dp, "s")
		if rec.Flags != 0 || rec.Slots != ([bpf.InlineSlots]bpf.Slot{}) || ext != 6 {
			t.Fatalf("flags %#x, %d slots in km_endpoint: not a layout-1 record", rec.Flags, ext)
		}
		checkPicks(t, s, alg, 3, true)
		if err := s.dp.Sync(); err != nil {
			t.Fatal(err)
		}

		// This build's daemon rewrites it inline.
		s.dp.inlineMax = bpf.InlineSlots
		if err := s.dp.Apply(ctx, inlineSnap(alg, 4, true)); err != nil {
			t.Fatal(err)
		}
		rec, ext = activeRec(t, s.dp, "s")
		if rec.Flags&bpf.RecInline == 0 || ext != 0 {
			t.Fatalf("flags %#x, %d slots in km_endpoint after the update, want inline", rec.Flags, ext)
		}
		checkPicks(t, s, alg, 4, true)
		if err := s.dp.Sync(); err != nil {
			t.Fatal(err)
		}
		if n := epEntries(); n != 0 {
			t.Fatalf("km_endpoint holds %d entries after the layout-1 generation was retired, want 0", n)
		}
		checkMapCounts(t, s.dp)

		// Grown past the inline limit: km_endpoint again.
		if err := s.dp.Apply(ctx, inlineSnap(alg, bpf.InlineSlots, true)); err != nil {
			t.Fatal(err)
		}
		checkPicks(t, s, alg, bpf.InlineSlots, true)
		if err := s.dp.Sync(); err != nil {
			t.Fatal(err)
		}
		if n := epEntries(); n != 2*bpf.InlineSlots {
			t.Fatalf("km_endpoint holds %d entries, want %d", n, 2*bpf.InlineSlots)
		}
		checkMapCounts(t, s.dp)
		if err := s.dp.Apply(ctx, &model.Snapshot{}); err != nil {
			t.Fatal(err)
		}
		if err := s.dp.Sync(); err != nil {
			t.Fatal(err)
		}
		if n := epEntries(); n != 0 {
			t.Fatalf("km_endpoint holds %d entries after the service was deleted", n)
		}
	}
}
