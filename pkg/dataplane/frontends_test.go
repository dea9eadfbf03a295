package dataplane

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"math/rand"
	"net/netip"
	"path/filepath"
	"testing"

	"github.com/cilium/ebpf"

	"github.com/kmesh-go/kmesh/pkg/bpf"
	"github.com/kmesh-go/kmesh/pkg/bpf/bpftest"
	"github.com/kmesh-go/kmesh/pkg/model"
	"github.com/kmesh-go/kmesh/pkg/testutil"
)

// TestFrontendsFollowServices: services keep no frontend list of their own;
// each plan derives the frontends of the services it leaves alone from
// km_frontend's mirror. Random upserts, deletes and full applies over a
// small VIP/port pool (so services collide and are rejected), with reopens
// (adoption) and, before some, a stray or missing entry planted in the
// pinned km_frontend: after every step the map, its mirror and the union of
// the applied services' frontends agree (once a plan has re-derived them
// after a plant), and rejected changes leave everything as it was.
func TestFrontendsFollowServices(t *testing.T) {
	testutil.Privileged(t)
	cg := testutil.NewCgroup(t)
	opts := Options{BPF: bpftest.Options(t, cg), StateDir: t.TempDir()}
	dp, err := Open(opts)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { dp.Close() }()
	ctx := context.Background()
	rng := rand.New(rand.NewSource(7))
	svc := func() model.Service {
		s := model.Service{Key: fmt.Sprintf("ns/s%d", rng.Intn(24))}
		for i := rng.Intn(3); i >= 0; i-- {
			s.VIPs = append(s.VIPs, netip.AddrFrom4([4]byte{10, 9, 0, byte(rng.Intn(40))}))
		}
		// Distinct ports (a service listing one twice is rejected before
		// its frontends are looked at), mostly: now and then a duplicate.
		for _, i := range rng.Perm(3)[:1+rng.Intn(3)] {
			s.Ports = append(s.Ports, model.ServicePort{Port: uint16(80 + i), TargetPort: 8080})
		}
		if rng.Intn(10) == 0 {
			s.Ports = append(s.Ports, s.Ports[0])
		}
		return s
	}
	want := func() map[bpf.FrontendKey]uint32 {
		m := map[bpf.FrontendKey]uint32{}
		for _, s := range dp.Snapshot().Services {
			id, _ := dp.svcs.lookup(s.Key)
			for _, k := range frontendKeys(&s) {
				if o, dup := m[k]; dup && o != id {
					t.Fatalf("services %d and %d were both accepted with frontend %+v", o, id, k)
				}
				m[k] = id
			}
		}
		return m
	}
	pinned := func() map[bpf.FrontendKey]uint32 {
		m := map[bpf.FrontendKey]uint32{}
		var k bpf.FrontendKey
		var v bpf.FrontendVal
		it := dp.Objects().Maps[bpf.MapFrontend].Iterate()
		for it.Next(&k, &v) {
			m[k] = v.SvcId
		}
		if err := it.Err(); err != nil {
			t.Fatal(err)
		}
		return m
	}
	check := func(step int, what string) {
		t.Helper()
		w, p := want(), pinned()
		if mirror := feMap(&dp.frontends); !maps.Equal(w, p) || !maps.Equal(w, mirror) {
			t.Fatalf("step %d (%s): services' frontends %v, km_frontend %v, mirror %v", step, what, w, p, mirror)
		}
	}
	rejected, stale := 0, 0
	for step := 0; step < 250; step++ {
		var err error
		what := ""
		switch r := rng.Intn(20); {
		case r < 10:
			what = "upsert"
			err = dp.UpsertService(ctx, svc())
		case r < 15:
			what = "delete"
			err = dp.DeleteService(ctx, fmt.Sprintf("ns/s%d", rng.Intn(24)))
		case r < 18:
			what = "apply"
			s := &model.Snapshot{}
			seen := map[string]bool{}
			for i := rng.Intn(12); i > 0; i-- {
				if v := svc(); !seen[v.Key] {
					seen[v.Key] = true
					s.Services = append(s.Services, v)
				}
			}
			err = dp.Apply(ctx, s)
		default:
			what = "reopen"
			if err := dp.Close(); err != nil {
				t.Fatal(err)
			}
			if rng.Intn(2) == 0 {
				// Plant a stray entry or drop a real one in the pinned map.
				pinDir, _, err := opts.BPF.Paths()
				if err != nil {
					t.Fatal(err)
				}
				m, err := ebpf.LoadPinnedMap(filepath.Join(pinDir, "maps", bpf.MapFrontend), nil)
				if err != nil {
					t.Fatal(err)
				}
				if dp.frontends.len() > 0 && rng.Intn(2) == 0 {
					for k := range dp.frontends.all() {
						if err := m.Delete(k); err != nil {
							t.Fatal(err)
						}
						break
					}
				} else {
					k := bpf.FrontendKey{Addr: addr16(netip.AddrFrom4([4]byte{10, 9, 1, byte(step)})), Port: htons(80), Proto: 6}
					if err := m.Put(k, bpf.FrontendVal{SvcId: 1, Addr: k.Addr, Port: k.Port}); err != nil {
						t.Fatal(err)
					}
				}
				m.Close()
			}
			if dp, err = Open(opts); err != nil {
				t.Fatal(err)
			}
			if dp.feStale {
				stale++
				// The next plan that changes services re-derives them.
				if err := dp.UpsertService(ctx, model.Service{Key: "ns/fix", VIPs: []netip.Addr{netip.MustParseAddr("10.9.2.1")},
					Ports: []model.ServicePort{{Port: uint16(1000 + step), TargetPort: 8080}}}); err != nil {
					t.Fatal(err)
				}
				if dp.feStale {
					t.Fatalf("step %d: frontends still stale after a service change", step)
				}
			}
		}
		if err != nil {
			rejected++
			var inv *InvalidError
			if !errors.As(err, &inv) {
				t.Fatalf("step %d (%s): %v", step, what, err)
			}
		}
		check(step, what)
	}
	if rejected == 0 || stale == 0 {
		t.Fatalf("the walk did not exercise rejections (%d) or stale adoption (%d)", rejected, stale)
	}
	t.Logf("%d rejected changes, %d stale adoptions", rejected, stale)
}
