package dataplane

import (
	"context"
	"fmt"
	"math"
	"math/rand"
	"net/netip"
	"testing"
	"unsafe"

	"github.com/cilium/ebpf"

	"github.com/kmesh-go/kmesh/pkg/bpf"
	"github.com/kmesh-go/kmesh/pkg/bpf/bpftest"
	"github.com/kmesh-go/kmesh/pkg/bpf/objs"
	"github.com/kmesh-go/kmesh/pkg/model"
	"github.com/kmesh-go/kmesh/pkg/testutil"
)

// Unit tests of the selection code in bpf/lib/lb.h through BPF_PROG_RUN: the
// lb_select syscall shim runs the same inline functions as the connect
// programs against the dataplane's real maps, filled by the real writer.

type selector struct {
	t    testing.TB
	dp   *Dataplane
	prog *ebpf.Program
}

func newSelector(t testing.TB) *selector {
	t.Helper()
	testutil.Privileged(t)
	cg := testutil.NewCgroup(t)
	dp, err := Open(Options{BPF: bpftest.Options(t, cg), StateDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { dp.Close() })
	spec, err := objs.LoadLbSelect()
	if err != nil {
		t.Fatal(err)
	}
	repl := map[string]*ebpf.Map{}
	for name := range spec.Maps {
		if m, ok := dp.Objects().Maps[name]; ok {
			repl[name] = m
		}
	}
	coll, err := ebpf.NewCollectionWithOptions(spec, ebpf.CollectionOptions{MapReplacements: repl})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { coll.Close() })
	return &selector{t: t, dp: dp, prog: coll.Programs["lb_select"]}
}

const (
	verdictPass   = 0
	verdictOK     = 1
	verdictRefuse = 2
)

// pick runs the selection for dst once; rnd < 0 uses the kernel's random.
func (s *selector) pick(dst netip.AddrPort, rnd int64) bpf.LBTestArgs {
	s.t.Helper()
	a := bpf.LBTestArgs{Addr: addr16(dst.Addr()), Port: htons(dst.Port()), Family: bpf.FamV4}
	if dst.Addr().Is6() && !dst.Addr().Is4In6() {
		a.Family = bpf.FamV6
	}
	if rnd < 0 {
		a.KernelRnd = 1
	} else {
		a.Rnd = uint32(rnd)
	}
	buf := unsafe.Slice((*byte)(unsafe.Pointer(&a)), unsafe.Sizeof(a))
	if _, err := s.prog.Run(&ebpf.RunOptions{Context: buf, ContextOut: buf}); err != nil {
		s.t.Fatal(err)
	}
	return a
}

// backendOf names the pick by workload uid and target port.
func (s *selector) backendOf(a bpf.LBTestArgs) string {
	uid, _ := s.dp.WorkloadUID(a.WorkloadId)
	return fmt.Sprintf("%s:%d", uid, ntohs(a.OutPort))
}

func (s *selector) count(dst netip.AddrPort, n int, rnd func(i int) int64) map[string]int {
	out := map[string]int{}
	for i := 0; i < n; i++ {
		a := s.pick(dst, rnd(i))
		if a.Verdict != verdictOK {
			s.t.Fatalf("pick %d: verdict %d", i, a.Verdict)
		}
		out[s.backendOf(a)]++
	}
	return out
}

func sweep(i int) int64      { return int64(i) }
func kernelRandom(int) int64 { return -1 }

func wl(uid string, ip string, svc string, weight uint32, loc model.Locality) model.Workload {
	return model.Workload{UID: uid, Addresses: []netip.Addr{netip.MustParseAddr(ip)}, Healthy: true, Weight: weight,
		Locality: loc, Services: map[string][]model.WorkloadPort{svc: nil}}
}

// activeRec is the active generation record of service key and the number
// of km_endpoint entries of that generation.
func activeRec(t testing.TB, dp *Dataplane, key string) (bpf.SvcRec, int) {
	t.Helper()
	id, ok := dp.ServiceID(key)
	if !ok {
		t.Fatalf("no service %q", key)
	}
	var gen uint32
	if err := dp.Objects().Maps[bpf.MapSvcActive].Lookup(id, &gen); err != nil || gen == 0 {
		t.Fatalf("service %q (id %d): active generation %d, %v", key, id, gen, err)
	}
	var rec bpf.SvcRec
	if err := dp.Objects().Maps[bpf.MapSvcGen].Lookup(bpf.SvcKey{SvcId: id, Gen: gen}, &rec); err != nil {
		t.Fatal(err)
	}
	// A set: the collector may delete retired entries meanwhile, and a hash
	// map iteration whose current key goes away starts over (duplicates).
	keys := map[bpf.SlotKey]bool{}
	var k bpf.SlotKey
	var v bpf.Slot
	it := dp.Objects().Maps[bpf.MapEndpoint].Iterate()
	for it.Next(&k, &v) {
		if k.SvcId == id && k.Gen == gen {
			keys[k] = true
		}
	}
	if err := it.Err(); err != nil {
		t.Fatal(err)
	}
	return rec, len(keys)
}

// TestSelect runs every selection case twice: with the slots inline in the
// generation record (the default for services of at most bpf.InlineSlots
// slots) and with them in km_endpoint (larger services, and records a
// layout-1 daemon wrote: no inline flag, slots in km_endpoint).
func TestSelect(t *testing.T) {
	s := newSelector(t)
	for _, mode := range []struct {
		name      string
		inlineMax int
	}{{"inline", bpf.InlineSlots}, {"km_endpoint", 0}} {
		t.Run(mode.name, func(t *testing.T) {
			s.dp.inlineMax = mode.inlineMax
			testSelect(t, s, mode.inlineMax > 0)
		})
	}
}

func testSelect(t *testing.T, s *selector, inline bool) {
	ctx := context.Background()
	dst := netip.AddrPortFrom(vip4, 80)
	apply := func(snap *model.Snapshot) {
		t.Helper()
		if err := s.dp.Apply(ctx, snap); err != nil {
			t.Fatal(err)
		}
		rec, ext := activeRec(t, s.dp, "s")
		total := countSlots(rec.Count)
		wantInline := inline && total <= bpf.InlineSlots
		if got := rec.Flags&bpf.RecInline != 0; got != wantInline || (wantInline && ext != 0) || (!wantInline && ext != total) {
			t.Fatalf("%d slots: inline %v with %d in km_endpoint, want inline %v", total, got, ext, wantInline)
		}
	}
	svc := func(lb model.LoadBalancing) model.Service {
		return model.Service{Key: "s", VIPs: []netip.Addr{vip4, vip6}, LB: lb, Ports: []model.ServicePort{{Port: 80, TargetPort: 8080}, {Port: 443}}}
	}

	t.Run("WeightedExact", func(t *testing.T) {
		apply(&model.Snapshot{Services: []model.Service{svc(model.LoadBalancing{Algorithm: model.LBWeighted})},
			Workloads: []model.Workload{wl("a", "10.0.0.1", "s", 1, model.Locality{}), wl("b", "10.0.0.2", "s", 2, model.Locality{}), wl("c", "10.0.0.3", "s", 7, model.Locality{})}})
		// Sweeping the random input over whole periods gives exactly 1:2:7.
		got := s.count(dst, 10000, sweep)
		want := map[string]int{"a:8080": 1000, "b:8080": 2000, "c:8080": 7000}
		for k, v := range want {
			if got[k] != v {
				t.Fatalf("weighted sweep: %v, want %v", got, want)
			}
		}
	})

	t.Run("WeightedBinarySearchLarge", func(t *testing.T) {
		rng := rand.New(rand.NewSource(7))
		snap := &model.Snapshot{Services: []model.Service{svc(model.LoadBalancing{Algorithm: model.LBWeighted})}}
		weights := map[string]int{}
		total := 0
		for i := 0; i < 1000; i++ {
			w := 1 + rng.Intn(50)
			uid := fmt.Sprintf("w%04d", i)
			snap.Workloads = append(snap.Workloads, wl(uid, fmt.Sprintf("10.1.%d.%d", i/250, i%250+1), "s", uint32(w), model.Locality{}))
			weights[uid+":8080"] = w
			total += w
		}
		apply(snap)
		got := s.count(dst, total, sweep)
		for k, w := range weights {
			if got[k] != w {
				t.Fatalf("%s picked %d times over one weight period, want its weight %d", k, got[k], w)
			}
		}
	})

	t.Run("RandomKernel", func(t *testing.T) {
		apply(&model.Snapshot{Services: []model.Service{svc(model.LoadBalancing{})},
			Workloads: []model.Workload{wl("a", "10.0.0.1", "s", 0, model.Locality{}), wl("b", "10.0.0.2", "s", 0, model.Locality{}), wl("c", "10.0.0.3", "s", 0, model.Locality{})}})
		n := 30000
		got := s.count(dst, n, kernelRandom)
		for _, k := range []string{"a:8080", "b:8080", "c:8080"} {
			if dev := math.Abs(float64(got[k])-float64(n)/3) / (float64(n) / 3); dev > 0.05 {
				t.Fatalf("random with the kernel's generator: %v (%s off by %.1f%%)", got, k, dev*100)
			}
		}
		// Uniform over slots: sweeping rnd gives exact thirds.
		got = s.count(dst, 3000, sweep)
		if got["a:8080"] != 1000 || got["b:8080"] != 1000 || got["c:8080"] != 1000 {
			t.Fatalf("random sweep: %v", got)
		}
	})

	t.Run("RoundRobin", func(t *testing.T) {
		apply(&model.Snapshot{Services: []model.Service{svc(model.LoadBalancing{Algorithm: model.LBRoundRobin})},
			Workloads: []model.Workload{wl("a", "10.0.0.1", "s", 0, model.Locality{}), wl("b", "10.0.0.2", "s", 0, model.Locality{})}})
		prev := ""
		for i := 0; i < 100; i++ {
			cur := s.backendOf(s.pick(dst, 0))
			if cur == prev {
				t.Fatalf("round robin repeated %s at pick %d", cur, i)
			}
			prev = cur
		}
	})

	t.Run("LocalityTiers", func(t *testing.T) {
		node := model.Node{Locality: model.Locality{Region: "r", Zone: "z", Subzone: "s"}}
		pref := []model.LocalityScope{model.ScopeRegion, model.ScopeZone, model.ScopeSubzone}
		ws := []model.Workload{
			wl("t0", "10.0.0.1", "s", 0, model.Locality{Region: "r", Zone: "z", Subzone: "s"}),
			wl("t1", "10.0.0.2", "s", 0, model.Locality{Region: "r", Zone: "z", Subzone: "x"}),
			wl("t2", "10.0.0.3", "s", 0, model.Locality{Region: "r", Zone: "y", Subzone: "s"}), // zone differs: subzone match does not count
			wl("t3", "10.0.0.4", "s", 0, model.Locality{Region: "q"}),
		}
		// Dual-stack: an IPv6 pick reads the family's slots after every
		// IPv4 slot of the record (inline) or its own key (km_endpoint).
		for i := range ws {
			ws[i].Addresses = append(ws[i].Addresses, netip.MustParseAddr(fmt.Sprintf("fd00::%d", i+1)))
		}
		for _, tc := range []struct {
			mode    model.LocalityMode
			healthy []bool
			want    string // "" = refused
			tier    uint8
		}{
			{model.LocalityFailover, []bool{true, true, true, true}, "t0:8080", 0},
			{model.LocalityFailover, []bool{false, true, true, true}, "t1:8080", 1},
			{model.LocalityFailover, []bool{false, false, true, true}, "t2:8080", 2},
			{model.LocalityFailover, []bool{false, false, false, true}, "t3:8080", 3},
			{model.LocalityFailover, []bool{false, false, false, false}, "", 0},
			{model.LocalityStrict, []bool{true, true, true, true}, "t0:8080", 0},
			{model.LocalityStrict, []bool{false, true, true, true}, "", 0},
		} {
			snap := &model.Snapshot{Node: node, Services: []model.Service{svc(model.LoadBalancing{Locality: tc.mode, RoutingPreference: pref})}}
			for i, w := range ws {
				w.Healthy = tc.healthy[i]
				snap.Workloads = append(snap.Workloads, w)
			}
			apply(snap)
			for i := 0; i < 100; i++ {
				d := dst
				if i%2 == 1 {
					d = netip.AddrPortFrom(vip6, 80)
				}
				a := s.pick(d, int64(i))
				if tc.want == "" {
					if a.Verdict != verdictRefuse {
						t.Fatalf("%s %v: verdict %d, want refuse", tc.mode, tc.healthy, a.Verdict)
					}
					continue
				}
				if a.Verdict != verdictOK || s.backendOf(a) != tc.want || a.Tier != tc.tier {
					t.Fatalf("%s %v %v: picked %s tier %d (verdict %d), want %s tier %d", tc.mode, tc.healthy, d, s.backendOf(a), a.Tier, a.Verdict, tc.want, tc.tier)
				}
				if want := snap.Workloads[tc.tier].Addresses[i%2]; addrFrom16(a.OutAddr) != want {
					t.Fatalf("%s %v %v: address %v, want %v", tc.mode, tc.healthy, d, addrFrom16(a.OutAddr), want)
				}
			}
		}
	})

	t.Run("FamiliesPortsAndPassThrough", func(t *testing.T) {
		w4 := wl("v4only", "10.0.0.1", "s", 0, model.Locality{})
		w6 := wl("v6only", "fd00::1", "s", 0, model.Locality{})
		w46 := wl("dual", "10.0.0.3", "s", 0, model.Locality{})
		w46.Addresses = append(w46.Addresses, netip.MustParseAddr("fd00::3"))
		w46.Services["s"] = []model.WorkloadPort{{ServicePort: 443, TargetPort: 8443}}
		apply(&model.Snapshot{Services: []model.Service{svc(model.LoadBalancing{})}, Workloads: []model.Workload{w4, w6, w46}})
		got := s.count(dst, 200, sweep)
		if len(got) != 2 || got["v4only:8080"] != 100 || got["dual:8080"] != 100 {
			t.Fatalf("IPv4 VIP: %v", got)
		}
		got = s.count(netip.AddrPortFrom(vip6, 80), 200, sweep)
		if len(got) != 2 || got["v6only:8080"] != 100 || got["dual:8080"] != 100 {
			t.Fatalf("IPv6 VIP: %v", got)
		}
		// Port 443 has no targetPort (same as port) except dual's override.
		got = s.count(netip.AddrPortFrom(vip4, 443), 200, sweep)
		if got["v4only:443"] != 100 || got["dual:8443"] != 100 {
			t.Fatalf("port 443: %v", got)
		}
		a := s.pick(netip.AddrPortFrom(vip4, 444), 0)
		if a.Verdict != verdictPass {
			t.Fatalf("a port the service lacks: verdict %d, want pass", a.Verdict)
		}
		a = s.pick(netip.MustParseAddrPort("10.0.0.1:80"), 0)
		if a.Verdict != verdictPass {
			t.Fatalf("a backend address: verdict %d, want pass", a.Verdict)
		}
		a = s.pick(dst, 0)
		if got := addrFrom16(a.OutAddr); got != netip.MustParseAddr("10.0.0.1") && got != netip.MustParseAddr("10.0.0.3") {
			t.Fatalf("address written back: %v", got)
		}
	})
}
