package dataplane

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"strconv"
	"strings"
	"testing"

	"github.com/kmesh-go/kmesh/pkg/bpf"
	"github.com/kmesh-go/kmesh/pkg/model"
)

// TestCapacity fills maps to their limit: the change that does not fit is
// rejected with an error naming the map, its limit and the object, nothing
// of it is applied, and the services already there keep working.
func TestCapacity(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	base := e.snapshot(model.LoadBalancing{Algorithm: model.LBRoundRobin})
	e.apply(base)
	works := func() {
		t.Helper()
		res := e.dial(e.client, "tcp4", vipAddr(vip4, port80), 6)
		if len(res.Errors) != 0 || res.Identities["be1:8080"] != 2 {
			t.Fatalf("the existing service stopped working: %+v", res)
		}
	}
	capErr := func(err error, m string, limit int, obj string) {
		t.Helper()
		var ce *CapacityError
		if !errors.As(err, &ce) || ce.Map != m || ce.Limit != limit || !strings.Contains(ce.What, strconv.Quote(obj)) {
			t.Fatalf("got %v, want a CapacityError for %s (limit %d) naming %q", err, m, limit, obj)
		}
		t.Logf("rejected as expected: %v", err)
	}

	run := func(name string, fn func(t *testing.T)) {
		t.Run(name, func(t *testing.T) {
			e.t = t
			defer func() { e.t = nil }()
			fn(t)
		})
	}
	run("PortsPerService", func(t *testing.T) {
		svc := model.Service{Key: "many-ports", VIPs: []netip.Addr{netip.MustParseAddr("10.97.0.1")}}
		for p := 1; p <= bpf.MaxPorts+1; p++ {
			svc.Ports = append(svc.Ports, model.ServicePort{Port: uint16(p)})
		}
		capErr(e.dp.UpsertService(ctx, svc), "ports per service", bpf.MaxPorts, "many-ports")
		works()
	})

	run("Frontends", func(t *testing.T) {
		// Fill km_frontend exactly: the test service has 2 VIPs x 2 ports.
		s := *base
		free := capFrontends - 4
		ports := make([]model.ServicePort, bpf.MaxPorts)
		for i := range ports {
			ports[i] = model.ServicePort{Port: uint16(1000 + i)}
		}
		for i := 0; free > 0; i++ {
			n := min(bpf.MaxPorts, free)
			s.Services = append(s.Services, model.Service{Key: fmt.Sprintf("fill-%05d", i),
				VIPs: []netip.Addr{netip.AddrFrom4([4]byte{10, 98, byte(i / 256), byte(i % 256)})}, Ports: ports[:n]})
			free -= n
		}
		e.apply(&s)
		if u := e.dp.Usage(); u.Frontends != capFrontends {
			t.Fatalf("frontends %d, want the map full (%d)", u.Frontends, capFrontends)
		}
		works()
		extra := model.Service{Key: "one-too-many", VIPs: []netip.Addr{netip.MustParseAddr("10.97.0.2")}, Ports: []model.ServicePort{{Port: 80}}}
		capErr(e.dp.UpsertService(ctx, extra), bpf.MapFrontend, capFrontends, "one-too-many")
		s2 := s
		s2.Services = append(append([]model.Service{}, s.Services...), extra)
		capErr(e.dp.Apply(ctx, &s2), bpf.MapFrontend, capFrontends, "one-too-many")
		if u := e.dp.Usage(); u.Frontends != capFrontends || u.Services != len(s.Services) {
			t.Fatalf("a rejected change left traces: %+v", u)
		}
		works()
		e.apply(base)
		works()
	})

	// Filling 262144 slots takes minutes under TCG: host tier only.
	if testing.Short() {
		return
	}
	run("Endpoints", func(t *testing.T) {
		// 1000 workloads in 262 services: 262000 slots plus the test
		// service's 3; one more service of 1000 does not fit.
		s := *base
		var keys []string
		for i := 0; i < 262; i++ {
			key := fmt.Sprintf("big-%03d", i)
			keys = append(keys, key)
			s.Services = append(s.Services, model.Service{Key: key, VIPs: []netip.Addr{netip.AddrFrom4([4]byte{10, 99, byte(i / 256), byte(i % 256)})}, Ports: []model.ServicePort{{Port: 80}}})
		}
		for w := 0; w < 1000; w++ {
			wl := model.Workload{UID: fmt.Sprintf("w%04d", w), Healthy: true, Addresses: []netip.Addr{netip.AddrFrom4([4]byte{10, 100, byte(w / 250), byte(w%250 + 1)})},
				Services: map[string][]model.WorkloadPort{}}
			for _, k := range keys {
				wl.Services[k] = nil
			}
			wl.Services["big-extra"] = nil
			s.Workloads = append(s.Workloads, wl)
		}
		e.apply(&s)
		works()
		extra := model.Service{Key: "big-extra", VIPs: []netip.Addr{netip.MustParseAddr("10.99.200.1")}, Ports: []model.ServicePort{{Port: 80}}}
		capErr(e.dp.UpsertService(ctx, extra), bpf.MapEndpoint, capSlots, "big-extra")
		works()
		if err := e.dp.Sync(); err != nil {
			t.Fatal(err)
		}
		checkMapCounts(t, e.dp)

		// Inline generations take no km_endpoint entries (the test
		// service's 3 slots are inline): with the map exactly full, a
		// service of bpf.InlineSlots endpoints still fits; one of
		// bpf.InlineSlots+1 does not.
		rest := capSlots - e.dp.Usage().Slots
		if rest != capSlots-262000 {
			t.Fatalf("km_endpoint holds %d slots, want 262000", e.dp.Usage().Slots)
		}
		full := func(extra ...model.Service) *model.Snapshot {
			f := s
			svcs := []model.Service{{Key: "fill-rest", VIPs: []netip.Addr{netip.MustParseAddr("10.99.201.1")}, Ports: []model.ServicePort{{Port: 80}}},
				{Key: "small-in", VIPs: []netip.Addr{netip.MustParseAddr("10.99.201.2")}, Ports: []model.ServicePort{{Port: 80}}}}
			f.Services = append(append(append([]model.Service{}, s.Services...), svcs...), extra...)
			f.Workloads = append([]model.Workload{}, s.Workloads...)
			for i := range f.Workloads {
				if !strings.HasPrefix(f.Workloads[i].UID, "w") {
					continue
				}
				var n int
				fmt.Sscanf(f.Workloads[i].UID, "w%d", &n)
				m := map[string][]model.WorkloadPort{}
				for k, v := range f.Workloads[i].Services {
					m[k] = v
				}
				if n < rest {
					m["fill-rest"] = nil
				}
				if n < bpf.InlineSlots {
					m["small-in"] = nil
				}
				if n <= bpf.InlineSlots {
					m["small-out"] = nil
				}
				f.Workloads[i].Services = m
			}
			return &f
		}
		e.apply(full())
		if u := e.dp.Usage(); u.Slots != capSlots {
			t.Fatalf("km_endpoint holds %d slots, want it full (%d)", u.Slots, capSlots)
		}
		works()
		out := model.Service{Key: "small-out", VIPs: []netip.Addr{netip.MustParseAddr("10.99.201.3")}, Ports: []model.ServicePort{{Port: 80}}}
		capErr(e.dp.Apply(ctx, full(out)), bpf.MapEndpoint, capSlots, "small-out")
		works()
		if err := e.dp.Sync(); err != nil {
			t.Fatal(err)
		}
		checkMapCounts(t, e.dp)
		e.apply(base)
		works()
	})
}
