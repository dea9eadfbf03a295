package dataplane

import (
	"context"
	"fmt"
	"math"
	"testing"

	"github.com/kmesh-go/kmesh/pkg/bpf"
	"github.com/kmesh-go/kmesh/pkg/model"
	"github.com/kmesh-go/kmesh/pkg/testutil"
)

// distributionConnects is the connect count of the distribution tests (the
// issue asks for at least 3000). Guest runs under TCG make 600 real connects
// and check only that every backend answers; the proportions are asserted
// there by TestSelect over the same kernel code via BPF_PROG_RUN.
func distributionConnects() int {
	if testing.Short() {
		return 600
	}
	return 6000
}

// small scales the connect count of the functional tests for guest runs.
func small(n int) int {
	if testing.Short() {
		return n / 4
	}
	return n
}

// checkShares asserts that every backend got its expected share of n
// connects within tol (a fraction of n: 0.03 = 3 percentage points) or, with
// relative set, within tol of its own expected count.
func checkShares(t *testing.T, res testutil.DialResult, n int, want map[string]float64, tol float64, relative bool) {
	t.Helper()
	if len(res.Errors) != 0 {
		t.Fatalf("errors: %v", res.Errors)
	}
	got := 0
	for id, c := range res.Identities {
		if _, ok := want[id]; !ok {
			t.Fatalf("unexpected backend %q (%d connects); all: %v", id, c, res.Identities)
		}
		got += c
	}
	if got != n {
		t.Fatalf("%d of %d connects answered: %v", got, n, res.Identities)
	}
	for id, share := range want {
		c := float64(res.Identities[id])

		exp := share * float64(n)
		dev := math.Abs(c-exp) / float64(n)
		limit := tol
		if relative {
			dev = math.Abs(c-exp) / exp
		}
		t.Logf("%s: %d connects, expected %.0f (deviation %.2f%%)", id, int(c), exp, dev*100)
		if dev > limit {
			t.Errorf("%s: %d connects, expected %.0f ± %.0f%%", id, int(c), exp, limit*100)
		}
	}
}

// checkDistribution is checkShares for statistical distributions; guest runs
// (too few connects for the tolerance) check that every backend answered.
func checkDistribution(t *testing.T, res testutil.DialResult, n int, want map[string]float64, tol float64, relative bool) {
	t.Helper()
	if !testing.Short() {
		checkShares(t, res, n, want, tol, relative)
		return
	}
	checkShares(t, res, n, want, 1, false)
	for id := range want {
		if res.Identities[id] == 0 {
			t.Errorf("%s never answered: %v", id, res.Identities)
		}
	}
}

// TestLoadBalancing runs the connect-path tests on one topology and one
// attached dataplane (each case applies its own snapshot), which keeps the
// guest runs under TCG short.
func TestLoadBalancing(t *testing.T) {
	e := newEnv(t)
	for _, tc := range []struct {
		name string
		fn   func(*testing.T, *env)
	}{
		{"RandomDistribution", testRandomDistribution},
		{"RoundRobinDistribution", testRoundRobinDistribution},
		{"WeightedDistribution", testWeightedDistribution},
		{"LocalityStrict", testLocalityStrict},
		{"LocalityFailover", testLocalityFailover},
		{"MultiPortAndOverrides", testMultiPortAndOverrides},
		{"IPv6Client", testIPv6Client},
		{"V4MappedClient", testV4MappedClient},
		{"NonMeshDestinationUntouched", testNonMeshDestinationUntouched},
		{"UnenrolledProcessUntouched", testUnenrolledProcessUntouched},
		{"NetnsEnrolment", testNetnsEnrolment},
		{"ServiceWithoutBackendRefused", testServiceWithoutBackendRefused},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e.t = t
			defer func() { e.t = nil }()
			tc.fn(t, e)
		})
	}
}

func testRandomDistribution(t *testing.T, e *env) {
	e.apply(e.snapshot(model.LoadBalancing{Algorithm: model.LBRandom}))
	n := distributionConnects()
	res := e.dial(e.client, "tcp4", vipAddr(vip4, port80), n)
	third := 1.0 / 3
	checkDistribution(t, res, n, map[string]float64{"be1:8080": third, "be2:8080": third, "be3:8080": third}, 0.10, true)
	// getpeername: the application sees the VIP it dialed, not the backend.
	if res.Peers[vipAddr(vip4, port80)] != n {
		t.Fatalf("getpeername results %v, want %s for all", res.Peers, vipAddr(vip4, port80))
	}
}

func testRoundRobinDistribution(t *testing.T, e *env) {
	e.apply(e.snapshot(model.LoadBalancing{Algorithm: model.LBRoundRobin}))
	n := distributionConnects()
	res := e.dial(e.client, "tcp4", vipAddr(vip4, port80), n)
	third := 1.0 / 3
	checkShares(t, res, n, map[string]float64{"be1:8080": third, "be2:8080": third, "be3:8080": third}, 0.10, true)
	// One shared counter: strict rotation gives equal counts up to one.
	for id, c := range res.Identities {
		if math.Abs(float64(c)-float64(n)/3) > 1 && !testing.Short() {
			t.Errorf("round robin is not a strict rotation: %s got %d of %d", id, c, n)
		}
	}
}

func testWeightedDistribution(t *testing.T, e *env) {
	s := e.snapshot(model.LoadBalancing{Algorithm: model.LBWeighted})
	for i, w := range []uint32{1, 2, 7} {
		s.Workloads[i].Weight = w
	}
	e.apply(s)
	n := distributionConnects()
	res := e.dial(e.client, "tcp4", vipAddr(vip4, port80), n)
	checkDistribution(t, res, n, map[string]float64{"be1:8080": 0.1, "be2:8080": 0.2, "be3:8080": 0.7}, 0.03, false)
}

// Locality: be1 matches the node's region and zone (tier 0), be2 only the
// region (tier 1), be3 nothing (tier 2).
func localitySnapshot(e *env, mode model.LocalityMode) *model.Snapshot {
	s := e.snapshot(model.LoadBalancing{Locality: mode, RoutingPreference: []model.LocalityScope{model.ScopeRegion, model.ScopeZone}})
	s.Node = model.Node{Name: "n1", Locality: model.Locality{Region: "r1", Zone: "z1"}}
	s.Workloads[0].Locality = model.Locality{Region: "r1", Zone: "z1"}
	s.Workloads[1].Locality = model.Locality{Region: "r1", Zone: "z2"}
	s.Workloads[2].Locality = model.Locality{Region: "r2", Zone: "z9"}
	return s
}

func testLocalityStrict(t *testing.T, e *env) {
	s := localitySnapshot(e, model.LocalityStrict)
	e.apply(s)
	res := e.dial(e.client, "tcp4", vipAddr(vip4, port80), small(200))
	checkShares(t, res, small(200), map[string]float64{"be1:8080": 1}, 0, false)

	// Tier 0 empty: strict refuses at once, even though other tiers have endpoints.
	s.Workloads[0].Healthy = false
	e.apply(s)
	res = e.dial(e.client, "tcp4", vipAddr(vip4, port80), 20)
	if res.Errors["dial: connect: connection refused"] != 20 {
		t.Fatalf("strict with an empty best tier: %+v, want 20 x connection refused", res)
	}
}

func testLocalityFailover(t *testing.T, e *env) {
	s := localitySnapshot(e, model.LocalityFailover)
	e.apply(s)
	res := e.dial(e.client, "tcp4", vipAddr(vip4, port80), small(200))
	checkShares(t, res, small(200), map[string]float64{"be1:8080": 1}, 0, false)

	s.Workloads[0].Healthy = false // tier 0 empty -> tier 1
	e.apply(s)
	res = e.dial(e.client, "tcp4", vipAddr(vip4, port80), small(200))
	checkShares(t, res, small(200), map[string]float64{"be2:8080": 1}, 0, false)

	s.Workloads[1].Healthy = false // -> tier 2
	e.apply(s)
	res = e.dial(e.client, "tcp4", vipAddr(vip4, port80), small(200))
	checkShares(t, res, small(200), map[string]float64{"be3:8080": 1}, 0, false)

	// The node moves to r2/z9: be3 becomes tier 0 by SetNode alone.
	s.Workloads[0].Healthy, s.Workloads[1].Healthy = true, true
	e.apply(s)
	if err := e.dp.SetNode(context.Background(), model.Node{Name: "n1", Locality: model.Locality{Region: "r2", Zone: "z9"}}); err != nil {
		t.Fatal(err)
	}
	res = e.dial(e.client, "tcp4", vipAddr(vip4, port80), small(200))
	checkShares(t, res, small(200), map[string]float64{"be3:8080": 1}, 0, false)
}

func testMultiPortAndOverrides(t *testing.T, e *env) {
	s := e.snapshot(model.LoadBalancing{Algorithm: model.LBRoundRobin})
	// be3 overrides port 80's target to 8081 (a named targetPort in k8s terms).
	s.Workloads[2].Services[svcKey] = []model.WorkloadPort{{ServicePort: port80, TargetPort: target81}}
	e.apply(s)
	res := e.dial(e.client, "tcp4", vipAddr(vip4, port81), small(300))
	checkShares(t, res, small(300), map[string]float64{"be1:8081": 1.0 / 3, "be2:8081": 1.0 / 3, "be3:8081": 1.0 / 3}, 0.02, false)
	res = e.dial(e.client, "tcp4", vipAddr(vip4, port80), small(300))
	checkShares(t, res, small(300), map[string]float64{"be1:8080": 1.0 / 3, "be2:8080": 1.0 / 3, "be3:8081": 1.0 / 3}, 0.02, false)
	// A port the service does not have is not a mesh destination.
	res = e.dial(e.client, "tcp4", vipAddr(vip4, 82), 3)
	if res.Errors["dial: connect: network is unreachable"] != 3 {
		t.Fatalf("unknown port on a VIP: %+v, want untouched (unreachable)", res)
	}
}

func testIPv6Client(t *testing.T, e *env) {
	e.apply(e.snapshot(model.LoadBalancing{Algorithm: model.LBRoundRobin}))
	res := e.dial(e.client, "tcp6", vipAddr(vip6, port80), small(300))
	checkShares(t, res, small(300), map[string]float64{"be1:8080": 1.0 / 3, "be2:8080": 1.0 / 3, "be3:8080": 1.0 / 3}, 0.02, false)
	if res.Peers[vipAddr(vip6, port80)] != small(300) {
		t.Fatalf("getpeername6: %v", res.Peers)
	}
	// A backend without an IPv6 address is not used for IPv6 clients.
	s := e.snapshot(model.LoadBalancing{Algorithm: model.LBRoundRobin})
	s.Workloads[0].Addresses = s.Workloads[0].Addresses[:1]
	e.apply(s)
	res = e.dial(e.client, "tcp6", vipAddr(vip6, port80), small(200))
	checkShares(t, res, small(200), map[string]float64{"be2:8080": 0.5, "be3:8080": 0.5}, 0.02, false)
}

func testV4MappedClient(t *testing.T, e *env) {
	e.apply(e.snapshot(model.LoadBalancing{Algorithm: model.LBRoundRobin}))
	var res mappedResult
	n := small(300)
	testutil.RunHelper(t, "dial-mapped", mappedArgs{VIP: vipAddr(vip4, port80), Count: n},
		testutil.HelperOptions{Netns: e.cl.NS, Cgroup: e.client}, &res)
	if len(res.Errors) != 0 {
		t.Fatalf("errors: %v", res.Errors)
	}
	for i := 1; i <= 3; i++ {
		if c := res.Identities[fmt.Sprintf("be%d:8080", i)]; c != n/3 {
			t.Errorf("be%d got %d of %d: %v", i, c, n, res.Identities)
		}
	}
	want := "[::ffff:10.96.0.10]:80"
	if res.Peers[want] != n {
		t.Fatalf("getpeername on a dual-stack socket: %v, want %s (v4-mapped VIP)", res.Peers, want)
	}
}

func testNonMeshDestinationUntouched(t *testing.T, e *env) {
	e.apply(e.snapshot(model.LoadBalancing{}))
	// A real address that is not a frontend reaches its server unchanged.
	res := e.dial(e.client, "tcp4", fmt.Sprintf("%s:9090", e.plain.IP4), 20)
	if res.Identities["plain"] != 20 || res.Peers[fmt.Sprintf("%s:9090", e.plain.IP4)] != 20 {
		t.Fatalf("non-mesh destination: %+v", res)
	}
	// A backend address dialed directly is not load-balanced either.
	res = e.dial(e.client, "tcp4", fmt.Sprintf("%s:8080", e.be[0].IP4), 20)
	if res.Identities["be1:8080"] != 20 {
		t.Fatalf("direct backend: %+v", res)
	}
	// An address in the VIP range that is not a service stays unreachable.
	res = e.dial(e.client, "tcp4", "10.96.0.11:80", 5)
	if res.Errors["dial: connect: network is unreachable"] != 5 {
		t.Fatalf("unknown VIP: %+v", res)
	}
}

func testUnenrolledProcessUntouched(t *testing.T, e *env) {
	e.apply(e.snapshot(model.LoadBalancing{}))
	before := stats(t, e.dp)
	// Same netns, same attach point, but a cgroup nobody enrolled.
	res := e.dial(e.other, "tcp4", vipAddr(vip4, port80), 10)
	if res.Errors["dial: connect: network is unreachable"] != 10 {
		t.Fatalf("unenrolled process: %+v, want all unreachable (VIP untouched)", res)
	}
	after := stats(t, e.dp)
	if d := after[bpf.StatConnectUnenrolled] - before[bpf.StatConnectUnenrolled]; d != 10 {
		t.Fatalf("unenrolled connects counted %d, want 10", d)
	}
	if after[bpf.StatConnectLB] != before[bpf.StatConnectLB] {
		t.Fatal("an unenrolled connect was load-balanced")
	}
	// Un-enrolling the client makes it untouched as well.
	s := e.snapshot(model.LoadBalancing{})
	s.Workloads = s.Workloads[:3]
	e.apply(s)
	res = e.dial(e.client, "tcp4", vipAddr(vip4, port80), 5)
	if res.Errors["dial: connect: network is unreachable"] != 5 {
		t.Fatalf("after un-enrolment: %+v", res)
	}
}

func testNetnsEnrolment(t *testing.T, e *env) {
	s := e.snapshot(model.LoadBalancing{Algorithm: model.LBRoundRobin})
	// Enrol the client's network namespace instead of its cgroup; the dialing
	// process stays in the un-enrolled cgroup.
	s.Workloads[3].Enrolment = &model.Enrolment{NetnsPath: e.cl.NS.Path()}
	e.apply(s)
	res := e.dial(e.other, "tcp4", vipAddr(vip4, port80), small(300))
	checkShares(t, res, small(300), map[string]float64{"be1:8080": 1.0 / 3, "be2:8080": 1.0 / 3, "be3:8080": 1.0 / 3}, 0.02, false)
}

func testServiceWithoutBackendRefused(t *testing.T, e *env) {
	s := e.snapshot(model.LoadBalancing{})
	for i := 0; i < 3; i++ {
		s.Workloads[i].Healthy = false
	}
	e.apply(s)
	before := stats(t, e.dp)
	res := e.dial(e.client, "tcp4", vipAddr(vip4, port80), 10)
	if res.Errors["dial: connect: connection refused"] != 10 {
		t.Fatalf("empty service: %+v, want ECONNREFUSED at once", res)
	}
	st := stats(t, e.dp)
	if st[bpf.StatConnectRefused]-before[bpf.StatConnectRefused] != 10 || st[bpf.StatLookupMiss] != 0 {
		t.Fatalf("stats %v", st)
	}
}

func stats(t *testing.T, dp *Dataplane) map[bpf.Stat]uint64 {
	t.Helper()
	st, err := dp.Stats()
	if err != nil {
		t.Fatal(err)
	}
	return st
}
