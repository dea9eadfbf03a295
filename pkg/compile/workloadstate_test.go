package compile

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"os"
	"reflect"
	"slices"
	"testing"

	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"istio.io/istio/pkg/workloadapi"

	"github.com/kmesh-go/kmesh/pkg/compile/compiletest"
	"github.com/kmesh-go/kmesh/pkg/model"
	"github.com/kmesh-go/kmesh/pkg/xds"
)

// Random responses (VIP conflicts, workloads on VIPs, waypoints by IP that
// appear and vanish, removals, objects the dataplane refuses, whole-response
// failures, full and incremental lowering) must leave the compiler's model
// exactly what the dataplane holds: the undo paths restore every object they
// touched.
func TestWorkloadStateRandomMatchesDataplane(t *testing.T) {
	for seed := uint64(1); seed <= 20; seed++ {
		t.Run(fmt.Sprint(seed), func(t *testing.T) { randomResponses(t, seed) })
	}
}

func randomResponses(t *testing.T, seed uint64) {
	rnd := rand.New(rand.NewPCG(seed, 0))
	rec := compiletest.NewRecorder()
	s := NewWorkloadState(rec, WorkloadOptions{NodeName: "n1", FullApplyThreshold: 4})
	vip := func() string { return fmt.Sprintf("10.96.0.%d", 1+rnd.IntN(5)) }
	randomService := func(i int) *discovery.Resource {
		host := fmt.Sprintf("s%d.ns", i)
		a := svcAddr("ns", host, []string{vip()}, 80)
		if rnd.IntN(4) == 0 {
			a.GetService().Waypoint = gatewayIP(vip())
		}
		return res(t, "ns/"+host, a)
	}
	randomWorkload := func(i int) *discovery.Resource {
		uid := fmt.Sprintf("w%d", i)
		ip := fmt.Sprintf("10.128.0.%d", i)
		if rnd.IntN(8) == 0 {
			ip = vip()
		}
		a := wlAddr(uid, ip, fmt.Sprintf("ns/s%d.ns", rnd.IntN(6)))
		if rnd.IntN(3) == 0 {
			a.GetWorkload().Node = "n1"
			a.GetWorkload().Locality = &workloadapi.Locality{Zone: fmt.Sprintf("z%d", rnd.IntN(3))}
		}
		if rnd.IntN(4) == 0 {
			a.GetWorkload().Waypoint = gatewayIP(vip())
		}
		return res(t, uid, a)
	}
	var trace []string
	for round := 0; round < 60; round++ {
		u := &xds.DeltaUpdate{TypeURL: xds.AddressType, Resync: round == 0 || rnd.IntN(10) == 0}
		for range rnd.IntN(8) {
			if rnd.IntN(3) == 0 {
				u.Resources = append(u.Resources, randomService(rnd.IntN(6)))
			} else {
				u.Resources = append(u.Resources, randomWorkload(rnd.IntN(10)))
			}
		}
		for range rnd.IntN(3) {
			if rnd.IntN(2) == 0 {
				u.Removed = append(u.Removed, fmt.Sprintf("ns/s%d.ns", rnd.IntN(6)))
			} else {
				u.Removed = append(u.Removed, fmt.Sprintf("w%d", rnd.IntN(10)))
			}
		}
		clear(rec.FailUpsert)
		if rnd.IntN(4) == 0 {
			rec.FailUpsert[fmt.Sprintf("w%d", rnd.IntN(10))] = true
		}
		if rnd.IntN(6) == 0 {
			rec.FailUpsert[fmt.Sprintf("ns/s%d.ns", rnd.IntN(6))] = true
		}
		rec.FailApply = nil
		if rnd.IntN(12) == 0 {
			rec.FailApply = errors.New("map update failed")
		}
		rej, err := s.HandleDelta(context.Background(), u)
		snap := s.Snapshot()
		svcs, wls := rec.State()
		if !reflect.DeepEqual(byKey(snap.Services, func(s model.Service) string { return s.Key }), svcs) ||
			!reflect.DeepEqual(byKey(snap.Workloads, func(w model.Workload) string { return w.UID }), wls) {
			t.Fatalf("round %d (err %v, rejected %v): model\n%+v\n%+v\ndataplane\n%+v\n%+v", round, err, rej, snap.Services, snap.Workloads, svcs, wls)
		}
		js, _ := json.Marshal(snap)
		trace = append(trace, fmt.Sprintf("round %d: err=%v rejected=%v\n  model=%s\n", round, err, sortedRejections(rej), js))
	}
	// KMESH_TRACE_DIR lets the trace of two implementations be compared.
	if dir := os.Getenv("KMESH_TRACE_DIR"); dir != "" {
		if err := os.WriteFile(fmt.Sprintf("%s/%d.txt", dir, seed), []byte(fmt.Sprintln(trace)), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

func gatewayIP(ip string) *workloadapi.GatewayAddress {
	return &workloadapi.GatewayAddress{HboneMtlsPort: 15008, Destination: &workloadapi.GatewayAddress_Address{
		Address: &workloadapi.NetworkAddress{Address: netip.MustParseAddr(ip).AsSlice()}}}
}

func byKey[T any](list []T, key func(T) string) map[string]T {
	m := make(map[string]T, len(list))
	for _, v := range list {
		m[key(v)] = v
	}
	return m
}

func sortedRejections(rej map[string]error) []string {
	var out []string
	for name, err := range rej {
		out = append(out, name+": "+err.Error())
	}
	slices.Sort(out)
	return out
}
