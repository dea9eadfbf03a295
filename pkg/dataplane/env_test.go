package dataplane

import (
	"context"
	"fmt"
	"net/netip"
	"testing"
	"time"

	"github.com/kmesh-go/kmesh/pkg/bpf/bpftest"
	"github.com/kmesh-go/kmesh/pkg/model"
	"github.com/kmesh-go/kmesh/pkg/testutil"
)

func TestMain(m *testing.M) { testutil.HelperMain(m) }

// The topology: a client netns, three backend netns and one non-mesh
// server on a bridge. VIPs are routed nowhere, so a connect() that is not
// rewritten fails with ENETUNREACH and nothing ever reaches a VIP.
var (
	vip4 = netip.MustParseAddr("10.96.0.10")
	vip6 = netip.MustParseAddr("fd96::10")
)

const (
	svcKey   = "default/web"
	port80   = 80
	port81   = 81
	target80 = 8080
	target81 = 8081
)

type env struct {
	t      testing.TB
	dp     *Dataplane
	opts   Options
	attach *testutil.Cgroup // programs attach here (stands in for the cgroup2 root)
	client *testutil.Cgroup // enrolled by cgroup
	other  *testutil.Cgroup // under the attach point, never enrolled
	topo   *testutil.Topology
	cl     *testutil.Host
	be     []*testutil.Host
	plain  *testutil.Host
}

func newEnv(t testing.TB, mutate ...func(*Options)) *env {
	t.Helper()
	testutil.Privileged(t)
	e := &env{t: t}
	e.attach = testutil.NewCgroup(t)
	e.client = e.attach.Child(t, "client-")
	e.other = e.attach.Child(t, "other-")
	e.topo = testutil.NewTopology(t)
	e.cl = e.topo.AddHost("client")
	for i := 1; i <= 3; i++ {
		h := e.topo.AddHost(fmt.Sprintf("be%d", i))
		for _, port := range []int{target80, target81} {
			ln := h.NS.Listen(t, "tcp", fmt.Sprintf("[::]:%d", port))
			testutil.ServeIdentity(t, ln, fmt.Sprintf("%s:%d", h.Name, port))
		}
		e.be = append(e.be, h)
	}
	e.plain = e.topo.AddHost("plain")
	ln := e.plain.NS.Listen(t, "tcp", "[::]:9090")
	testutil.ServeIdentity(t, ln, "plain")

	e.opts = Options{BPF: bpftest.Options(t, e.attach), StateDir: t.TempDir()}
	for _, m := range mutate {
		m(&e.opts)
	}
	e.open()
	return e
}

func (e *env) open() {
	e.t.Helper()
	dp, err := Open(e.opts)
	if err != nil {
		e.t.Fatal(err)
	}
	e.dp = dp
	e.t.Cleanup(func() { dp.Close() })
}

// service is the test service: both VIPs, ports 80->8080 and 81->8081.
func service(lb model.LoadBalancing) model.Service {
	return model.Service{Key: svcKey, VIPs: []netip.Addr{vip4, vip6}, LB: lb,
		Ports: []model.ServicePort{{Port: port80, TargetPort: target80}, {Port: port81, TargetPort: target81}}}
}

// backend is backend host i (0-based) as a workload of the test service.
func (e *env) backend(i int) model.Workload {
	h := e.be[i]
	return model.Workload{UID: "uid-" + h.Name, Name: h.Name, Namespace: "default",
		Addresses: []netip.Addr{h.IP4, h.IP6}, Healthy: true,
		Services: map[string][]model.WorkloadPort{svcKey: nil}}
}

// clientWorkload enrols the client cgroup.
func (e *env) clientWorkload() model.Workload {
	return model.Workload{UID: "uid-client", Name: "client", Namespace: "default",
		Addresses: []netip.Addr{e.cl.IP4, e.cl.IP6}, Healthy: true,
		Enrolment: &model.Enrolment{CgroupPath: e.client.Path}}
}

func (e *env) apply(s *model.Snapshot) {
	e.t.Helper()
	if err := e.dp.Apply(context.Background(), s); err != nil {
		e.t.Fatalf("apply: %v", err)
	}
}

// snapshot is the test service with the three backends and the enrolled client.
func (e *env) snapshot(lb model.LoadBalancing) *model.Snapshot {
	s := &model.Snapshot{Services: []model.Service{service(lb)}}
	for i := range e.be {
		s.Workloads = append(s.Workloads, e.backend(i))
	}
	s.Workloads = append(s.Workloads, e.clientWorkload())
	return s
}

// dial runs n connects from the client netns inside cgroup cg.
func (e *env) dial(cg *testutil.Cgroup, network, addr string, n int) testutil.DialResult {
	e.t.Helper()
	var res testutil.DialResult
	testutil.RunHelper(e.t, "dial", testutil.DialArgs{Network: network, Addr: addr, Count: n, Timeout: 3 * time.Second},
		testutil.HelperOptions{Netns: e.cl.NS, Cgroup: cg, Timeout: 5 * time.Minute}, &res)
	return res
}

func vipAddr(ip netip.Addr, port int) string { return netip.AddrPortFrom(ip, uint16(port)).String() }
