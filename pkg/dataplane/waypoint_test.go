package dataplane

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"net/netip"
	"strings"
	"testing"
	"time"
	"unsafe"

	"github.com/cilium/ebpf"

	"github.com/kmesh-go/kmesh/pkg/bpf"
	"github.com/kmesh-go/kmesh/pkg/bpf/bpftest"
	"github.com/kmesh-go/kmesh/pkg/bpf/objs"
	"github.com/kmesh-go/kmesh/pkg/model"
	"github.com/kmesh-go/kmesh/pkg/testutil"
)

// Waypoint tests: the header builder through BPF_PROG_RUN, and the whole
// path with real connects: an enrolled client dials a VIP, connect() sends
// it to a waypoint instance, sk_msg writes the header on the first send, the
// Go waypoint (waypoint_helpers_test.go) parses it and dials the original
// destination, which kmesh load-balances without sending it back to a
// waypoint.

// TestWaypointHeaderBuilder runs bpf/lib/waypoint.h's builder (the code
// sk_msg runs) through the syscall shim and compares every byte with the
// formats written out by hand here.
func TestWaypointHeaderBuilder(t *testing.T) {
	testutil.Privileged(t)
	spec, err := objs.LoadWpHeader()
	if err != nil {
		t.Fatal(err)
	}
	var progs struct {
		WpHeader *ebpf.Program `ebpf:"wp_header"`
	}
	if err := spec.LoadAndAssign(&progs, nil); err != nil {
		t.Fatal(err)
	}
	defer progs.WpHeader.Close()

	build := func(src, dst netip.AddrPort, tlv bool) []byte {
		t.Helper()
		a := bpf.WpHeaderArgs{Src: addr16(src.Addr()), Dst: addr16(dst.Addr()), Sport: htons(src.Port()), Dport: htons(dst.Port())}
		if tlv {
			a.Tlv = 1
		}
		buf := unsafe.Slice((*byte)(unsafe.Pointer(&a)), unsafe.Sizeof(a))
		if _, err := progs.WpHeader.Run(&ebpf.RunOptions{Context: buf, ContextOut: buf}); err != nil {
			t.Fatal(err)
		}
		if a.Len > bpf.WpHeaderMax {
			t.Fatalf("length %d", a.Len)
		}
		return append([]byte(nil), a.Buf[:a.Len]...)
	}
	sig := []byte{0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A}
	cat := func(parts ...[]byte) []byte { return bytes.Join(parts, nil) }
	port := func(p uint16) []byte { return binary.BigEndian.AppendUint16(nil, p) }
	ip := func(s string) []byte { return netip.MustParseAddr(s).AsSlice() }

	src4 := netip.MustParseAddrPort("10.77.0.1:40001")
	dst4 := netip.MustParseAddrPort("10.96.0.10:80")
	src6 := netip.MustParseAddrPort("[fd77::1]:40002")
	dst6 := netip.MustParseAddrPort("[fd96::10]:8443")
	for _, tc := range []struct {
		name     string
		src, dst netip.AddrPort
		tlv      bool
		want     []byte
	}{
		{"proxy-v2/ipv4", src4, dst4, false, cat(sig, []byte{0x21, 0x11, 0, 12}, ip("10.77.0.1"), ip("10.96.0.10"), port(40001), port(80))},
		{"proxy-v2/ipv6", src6, dst6, false, cat(sig, []byte{0x21, 0x21, 0, 36}, ip("fd77::1"), ip("fd96::10"), port(40002), port(8443))},
		{"kmesh-tlv/ipv4", src4, dst4, true, cat([]byte{0x01, 0, 0, 0, 6}, ip("10.96.0.10"), port(80), []byte{0xfe, 0, 0, 0, 0})},
		{"kmesh-tlv/ipv6", src6, dst6, true, cat([]byte{0x01, 0, 0, 0, 18}, ip("fd96::10"), port(8443), []byte{0xfe, 0, 0, 0, 0})},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := build(tc.src, tc.dst, tc.tlv)
			if !bytes.Equal(got, tc.want) {
				t.Fatalf("header\n got % x\nwant % x", got, tc.want)
			}
			wantLen := map[string]int{"proxy-v2/ipv4": 28, "proxy-v2/ipv6": 52, "kmesh-tlv/ipv4": 16, "kmesh-tlv/ipv6": 28}[tc.name]
			if len(got) != wantLen {
				t.Fatalf("length %d, want %d", len(got), wantLen)
			}
			// And the independent reader agrees.
			r := bufio.NewReader(bytes.NewReader(append(got, "GET / HTTP/1.1\r\n"...)))
			var h testutil.WaypointHeader
			var err error
			if tc.tlv {
				h, err = testutil.ReadKmeshTLV(r)
			} else {
				h, err = testutil.ReadProxyV2(r)
				if err == nil && h.Src != tc.src {
					t.Errorf("source %v, want %v", h.Src, tc.src)
				}
			}
			if err != nil {
				t.Fatal(err)
			}
			if h.Dst != tc.dst {
				t.Errorf("destination %v, want %v", h.Dst, tc.dst)
			}
			if rest, _ := r.ReadString('\n'); rest != "GET / HTTP/1.1\r\n" {
				t.Errorf("payload after the header: %q", rest)
			}
		})
	}
}

var (
	wpVIP4 = netip.MustParseAddr("10.96.0.99")
	wpVIP6 = netip.MustParseAddr("fd96::99")
)

const (
	wpKey  = "default/waypoint"
	wpPort = 15008
)

// wpEnv is the load-balancing env plus two Go waypoint instances, each in a
// namespace and cgroup of its own, enrolled by cgroup.
type wpEnv struct {
	*env
	root  *testing.T
	hosts []*testutil.Host
	cgs   []*testutil.Cgroup
	procs []*testutil.Helper
}

func newWpEnv(t *testing.T) *wpEnv {
	e := &wpEnv{env: newEnv(t), root: t}
	for i := 1; i <= 2; i++ {
		e.hosts = append(e.hosts, e.topo.AddHost(fmt.Sprintf("wp%d", i)))
		e.cgs = append(e.cgs, e.attach.Child(t, fmt.Sprintf("wp%d-", i)))
	}
	// Enrol first: sockets are enrolled when they are created.
	e.apply(e.wpSnapshot(true))
	for i, h := range e.hosts {
		e.procs = append(e.procs, startWaypoint(t, e.cgs[i], h.NS, fmt.Sprintf("[::]:%d", wpPort), h.Name))
	}
	return e
}

// waypointWorkload is waypoint instance i as a workload of the waypoint service.
func (e *wpEnv) waypointWorkload(i int) model.Workload {
	h := e.hosts[i]
	return model.Workload{UID: "uid-" + h.Name, Name: h.Name, Namespace: "default",
		Addresses: []netip.Addr{h.IP4, h.IP6}, Healthy: true,
		Services:  map[string][]model.WorkloadPort{wpKey: nil},
		Enrolment: &model.Enrolment{CgroupPath: e.cgs[i].Path}}
}

// wpSnapshot: the web service (port 81 server-first) with the waypoint, the
// waypoint service and its two instances, three backends, the client.
func (e *wpEnv) wpSnapshot(withWaypoint bool) *model.Snapshot {
	s := e.snapshot(model.LoadBalancing{})
	web := &s.Services[0]
	web.Ports[1].ServerFirst = true
	if withWaypoint {
		web.Waypoint = &model.WaypointRef{Service: wpKey, Port: wpPort}
	}
	s.Services = append(s.Services, model.Service{Key: wpKey, Name: "waypoint", Namespace: "default",
		VIPs: []netip.Addr{wpVIP4, wpVIP6}, Ports: []model.ServicePort{{Port: wpPort}}})
	for i := range e.hosts {
		s.Workloads = append(s.Workloads, e.waypointWorkload(i))
	}
	return s
}

func (e *wpEnv) dialWp(cg *testutil.Cgroup, a wpDialArgs) []wpConnResult {
	e.t.Helper()
	var out []wpConnResult
	testutil.RunHelper(e.t, "wp-dial", a, testutil.HelperOptions{Netns: e.cl.NS, Cgroup: cg, Timeout: 5 * time.Minute}, &out)
	return out
}

func (e *wpEnv) stats() map[bpf.Stat]uint64 {
	e.t.Helper()
	st, err := e.dp.Stats()
	if err != nil {
		e.t.Fatal(err)
	}
	return st
}

// TestWaypoint runs the waypoint path cases on one topology and dataplane.
func TestWaypoint(t *testing.T) {
	e := newWpEnv(t)
	for _, tc := range []struct {
		name string
		fn   func(*testing.T, *wpEnv)
	}{
		{"ServiceViaWaypoint", testServiceViaWaypoint},
		{"IPv6", testWaypointIPv6},
		{"V4MappedClient", testWaypointV4Mapped},
		{"WaypointNotRedirected", testWaypointNotRedirected},
		{"ServerFirstBypass", testServerFirstBypass},
		{"ServerFirstRefuse", testServerFirstRefuse},
		{"WorkloadWaypoint", testWorkloadWaypoint},
		{"NoHealthyInstance", testNoHealthyWaypoint},
		{"UnknownWaypointService", testUnknownWaypointService},
		{"KmeshTLV", testWaypointKmeshTLV},
		{"WaypointRemoved", testWaypointRemoved},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e.t = t
			defer func() { e.t = nil }()
			e.apply(e.wpSnapshot(true))
			tc.fn(t, e)
		})
	}
}

// checkViaWaypoint asserts that every connection went through a waypoint
// whose header named the client and dst, and reached a backend of the web
// service on backendPort; it returns connections per waypoint instance.
func checkViaWaypoint(t *testing.T, res []wpConnResult, dst netip.AddrPort, backendPort int, proto string) map[string]int {
	t.Helper()
	per := map[string]int{}
	for i, r := range res {
		if r.Err != "" || r.WP == nil || r.WP.Err != "" {
			t.Fatalf("connection %d: %+v (waypoint %+v)", i, r, r.WP)
		}
		if r.WP.Proto != proto {
			t.Fatalf("connection %d: waypoint read %s, want %s", i, r.WP.Proto, proto)
		}
		if r.WP.Dst != dst.String() {
			t.Fatalf("connection %d: header destination %s, want %s", i, r.WP.Dst, dst)
		}
		if local := netip.MustParseAddrPort(r.Local); proto == "proxy-v2" && r.WP.Src != netip.AddrPortFrom(local.Addr().Unmap(), local.Port()).String() {
			t.Fatalf("connection %d: header source %s, client is %s", i, r.WP.Src, r.Local)
		}
		if !strings.HasPrefix(r.Backend, "be") || !strings.HasSuffix(r.Backend, fmt.Sprintf(":%d", backendPort)) {
			t.Fatalf("connection %d: reached %q, want a web backend on %d", i, r.Backend, backendPort)
		}
		// getpeername: the application still sees what it dialed.
		if p := netip.MustParseAddrPort(r.Peer); netip.AddrPortFrom(p.Addr().Unmap(), p.Port()) != dst {
			t.Fatalf("connection %d: getpeername %s, want %s", i, r.Peer, dst)
		}
		per[r.WP.ID]++
	}
	return per
}

func testServiceViaWaypoint(t *testing.T, e *wpEnv) {
	before := e.stats()
	n := small(60)
	dst := netip.AddrPortFrom(vip4, port80)
	res := e.dialWp(e.client, wpDialArgs{Addr: dst.String(), Count: n})
	per := checkViaWaypoint(t, res, dst, target80, "proxy-v2")
	t.Logf("connections per waypoint instance: %v", per)
	if per["wp1"] == 0 || per["wp2"] == 0 {
		t.Errorf("connections not spread over both waypoint instances: %v", per)
	}
	after := e.stats()
	for _, s := range []bpf.Stat{bpf.StatWaypointRedirect, bpf.StatWaypointHeader, bpf.StatWaypointExempt} {
		if got := after[s] - before[s]; got < uint64(n) {
			t.Errorf("%s grew by %d, want >= %d", s, got, n)
		}
	}
	if d := after[bpf.StatWaypointHeaderErr] - before[bpf.StatWaypointHeaderErr]; d != 0 {
		t.Errorf("%s grew by %d", bpf.StatWaypointHeaderErr, d)
	}
}

func testWaypointIPv6(t *testing.T, e *wpEnv) {
	dst := netip.AddrPortFrom(vip6, port80)
	res := e.dialWp(e.client, wpDialArgs{Addr: dst.String(), Count: small(20)})
	checkViaWaypoint(t, res, dst, target80, "proxy-v2")
	for _, r := range res {
		if !strings.HasPrefix(r.WP.Hdr, hexSig+"2121") {
			t.Fatalf("IPv6 connection got header %s, want TCP/IPv6 (0x21 0x21)", r.WP.Hdr)
		}
	}
}

const hexSig = "0d0a0d0a000d0a515549540a"

// A dual-stack socket dialing ::ffff:VIP makes an IPv4 connection: the
// header is the IPv4 form.
func testWaypointV4Mapped(t *testing.T, e *wpEnv) {
	dst := netip.AddrPortFrom(vip4, port80)
	res := e.dialWp(e.client, wpDialArgs{Addr: dst.String(), Count: small(12), Mapped: true})
	checkViaWaypoint(t, res, dst, target80, "proxy-v2")
	for _, r := range res {
		if !strings.HasPrefix(r.WP.Hdr, hexSig+"2111") {
			t.Fatalf("v4-mapped connection got header %s, want TCP/IPv4 (0x21 0x11)", r.WP.Hdr)
		}
	}
}

// A waypoint instance's own connects are load-balanced, never sent to a
// waypoint (no loop), and its enrolment carries the mark.
func testWaypointNotRedirected(t *testing.T, e *wpEnv) {
	before := e.stats()
	n := small(20)
	res := e.dialWp(e.cgs[0], wpDialArgs{Addr: vipAddr(vip4, port80), Count: n})
	for i, r := range res {
		if r.Err != "" || r.WP != nil || !strings.HasSuffix(r.Backend, fmt.Sprintf(":%d", target80)) {
			t.Fatalf("connection %d from a waypoint instance: %+v, want a backend directly", i, r)
		}
	}
	if d := e.stats()[bpf.StatWaypointExempt] - before[bpf.StatWaypointExempt]; d < uint64(n) {
		t.Errorf("%s grew by %d, want >= %d", bpf.StatWaypointExempt, d, n)
	}
	id, _ := resolveCgroupID(t, e.cgs[0].Path)
	var en bpf.Enrol
	if err := e.dp.Objects().Maps[bpf.MapEnrolCg].Lookup(id, &en); err != nil || en.Flags&bpf.EnrolWaypoint == 0 {
		t.Fatalf("waypoint instance enrolment %+v (%v): want the waypoint mark", en, err)
	}
	if err := e.dp.Objects().Maps[bpf.MapEnrolCg].Lookup(mustCgroupID(t, e.client.Path), &en); err != nil || en.Flags != 0 {
		t.Fatalf("client enrolment %+v (%v): want no mark", en, err)
	}
}

// Port 81 is server-first: the client sends nothing and waits for the
// server's greeting, which the waypoint (waiting for its header) would
// never produce. By default such ports skip the waypoint.
func testServerFirstBypass(t *testing.T, e *wpEnv) {
	before := e.stats()
	n := small(12)
	res := e.dialWp(e.client, wpDialArgs{Addr: vipAddr(vip4, port81), Count: n, ServerFirst: true})
	for i, r := range res {
		if r.Err != "" || r.WP != nil || !strings.HasPrefix(r.Backend, "be") || !strings.HasSuffix(r.Backend, fmt.Sprintf(":%d", target81)) {
			t.Fatalf("server-first connection %d: %+v, want the backend's greeting directly", i, r)
		}
	}
	if d := e.stats()[bpf.StatWaypointBypass] - before[bpf.StatWaypointBypass]; d < uint64(n) {
		t.Errorf("%s grew by %d, want >= %d", bpf.StatWaypointBypass, d, n)
	}
	// Port 80 of the same service still goes through the waypoint.
	checkViaWaypoint(t, e.dialWp(e.client, wpDialArgs{Addr: vipAddr(vip4, port80), Count: 4}), netip.AddrPortFrom(vip4, port80), target80, "proxy-v2")
}

// With serverFirst: refuse, server-first ports fail at once instead.
func testServerFirstRefuse(t *testing.T, e *wpEnv) {
	s := e.wpSnapshot(true)
	s.Services[0].Waypoint.ServerFirst = model.ServerFirstRefuse
	e.apply(s)
	res := e.dialWp(e.client, wpDialArgs{Addr: vipAddr(vip4, port81), Count: 5, ServerFirst: true})
	for i, r := range res {
		if r.Err != "connection refused" {
			t.Fatalf("server-first connection %d with serverFirst=refuse: %+v, want connection refused", i, r)
		}
	}
	checkViaWaypoint(t, e.dialWp(e.client, wpDialArgs{Addr: vipAddr(vip4, port80), Count: 4}), netip.AddrPortFrom(vip4, port80), target80, "proxy-v2")
}

// A workload waypoint takes traffic addressed to the workload's own address
// (Istio's workload waypoints); the header names the pod address and port.
func testWorkloadWaypoint(t *testing.T, e *wpEnv) {
	s := e.wpSnapshot(false)
	for i := range s.Workloads {
		if s.Workloads[i].UID == "uid-be1" {
			s.Workloads[i].Waypoint = &model.WaypointRef{Service: wpKey, Port: wpPort}
		}
	}
	e.apply(s)
	be1 := netip.AddrPortFrom(e.be[0].IP4, target80)
	res := e.dialWp(e.client, wpDialArgs{Addr: be1.String(), Count: small(12)})
	for i, r := range res {
		if r.Err != "" || r.WP == nil || r.WP.Dst != be1.String() || r.Backend != "be1:8080" {
			t.Fatalf("connection %d to be1's address: %+v (waypoint %+v), want via a waypoint to %s", i, r, r.WP, be1)
		}
	}
	// IPv6 address of the same workload.
	be1v6 := netip.AddrPortFrom(e.be[0].IP6, target80)
	for i, r := range e.dialWp(e.client, wpDialArgs{Addr: be1v6.String(), Count: 4}) {
		if r.Err != "" || r.WP == nil || r.WP.Dst != be1v6.String() || r.Backend != "be1:8080" {
			t.Fatalf("connection %d to %s: %+v (waypoint %+v)", i, be1v6, r, r.WP)
		}
	}
	// be1's 8081 is the target of the server-first port 81: direct.
	for i, r := range e.dialWp(e.client, wpDialArgs{Addr: netip.AddrPortFrom(e.be[0].IP4, target81).String(), Count: 4, ServerFirst: true}) {
		if r.Err != "" || r.WP != nil || r.Backend != "be1:8081" {
			t.Fatalf("server-first connection %d to be1: %+v", i, r)
		}
	}
	// be2 has no waypoint: untouched. The service VIP is service-addressed
	// traffic and the service has no waypoint: load-balanced directly.
	for i, r := range e.dialWp(e.client, wpDialArgs{Addr: netip.AddrPortFrom(e.be[1].IP4, target80).String(), Count: 4}) {
		if r.Err != "" || r.WP != nil || r.Backend != "be2:8080" {
			t.Fatalf("connection %d to be2: %+v", i, r)
		}
	}
	for i, r := range e.dialWp(e.client, wpDialArgs{Addr: vipAddr(vip4, port80), Count: 6}) {
		if r.Err != "" || r.WP != nil {
			t.Fatalf("connection %d to the VIP: %+v, want direct", i, r)
		}
	}
	if ok := hasConfigFlag(t, e.env, bpf.ConfigWlWaypoints); !ok {
		t.Errorf("km_config lacks the workload-waypoint flag")
	}
}

// No healthy waypoint instance: the connect fails at once with
// ECONNREFUSED; it never hangs or goes around the waypoint.
func testNoHealthyWaypoint(t *testing.T, e *wpEnv) {
	s := e.wpSnapshot(true)
	for i := range s.Workloads {
		if strings.HasPrefix(s.Workloads[i].UID, "uid-wp") {
			s.Workloads[i].Healthy = false
		}
	}
	e.apply(s)
	before := e.stats()
	start := time.Now()
	res := e.dialWp(e.client, wpDialArgs{Addr: vipAddr(vip4, port80), Count: 10})
	for i, r := range res {
		if r.Err != "connection refused" {
			t.Fatalf("connection %d with no healthy waypoint: %+v, want connection refused", i, r)
		}
	}
	t.Logf("10 refused connects (with the helper process start) took %v", time.Since(start))
	if d := e.stats()[bpf.StatWaypointRefused] - before[bpf.StatWaypointRefused]; d != 10 {
		t.Errorf("%s grew by %d, want 10", bpf.StatWaypointRefused, d)
	}
}

// A waypoint service that does not exist (yet): refused, not bypassed.
func testUnknownWaypointService(t *testing.T, e *wpEnv) {
	s := e.wpSnapshot(true)
	s.Services[0].Waypoint.Service = "default/missing"
	e.apply(s)
	for i, r := range e.dialWp(e.client, wpDialArgs{Addr: vipAddr(vip4, port80), Count: 5}) {
		if r.Err != "connection refused" {
			t.Fatalf("connection %d with an unknown waypoint: %+v, want connection refused", i, r)
		}
	}
	// A waypoint service without the referenced port: refused as well.
	s = e.wpSnapshot(true)
	s.Services[0].Waypoint.Port = 15009
	e.apply(s)
	for i, r := range e.dialWp(e.client, wpDialArgs{Addr: vipAddr(vip4, port80), Count: 5}) {
		if r.Err != "connection refused" {
			t.Fatalf("connection %d with a waypoint port the service lacks: %+v, want connection refused", i, r)
		}
	}
}

// --waypoint-protocol=kmesh-tlv: a restarted dataplane (adopting the pinned
// state) writes upstream Kmesh's TLV, exactly its bytes.
func testWaypointKmeshTLV(t *testing.T, e *wpEnv) {
	reopen := func(proto string) {
		if err := e.dp.Close(); err != nil {
			t.Fatal(err)
		}
		e.opts.WaypointProtocol = proto
		dp, err := Open(e.opts)
		if err != nil {
			t.Fatal(err)
		}
		e.root.Cleanup(func() { dp.Close() })
		e.dp = dp
		e.apply(e.wpSnapshot(true))
	}
	reopen(WaypointKmeshTLV)
	defer reopen(WaypointProxyV2)

	dst4 := netip.AddrPortFrom(vip4, port80)
	res := e.dialWp(e.client, wpDialArgs{Addr: dst4.String(), Count: small(12)})
	checkViaWaypoint(t, res, dst4, target80, "kmesh-tlv")
	want4 := "0100000006" + "0a60000a" + "0050" + "fe00000000"
	for _, r := range res {
		if r.WP.Hdr != want4 {
			t.Fatalf("IPv4 TLV %s, want %s", r.WP.Hdr, want4)
		}
	}
	dst6 := netip.AddrPortFrom(vip6, port80)
	res = e.dialWp(e.client, wpDialArgs{Addr: dst6.String(), Count: small(12)})
	checkViaWaypoint(t, res, dst6, target80, "kmesh-tlv")
	want6 := "0100000012" + "fd960000000000000000000000000010" + "0050" + "fe00000000"
	for _, r := range res {
		if r.WP.Hdr != want6 {
			t.Fatalf("IPv6 TLV %s, want %s", r.WP.Hdr, want6)
		}
	}
}

// Removing the waypoint restores direct load balancing and drops the
// waypoint entries and marks.
func testWaypointRemoved(t *testing.T, e *wpEnv) {
	s := e.wpSnapshot(false)
	s.Services = s.Services[:1] // the waypoint service goes too
	s.Workloads = s.Workloads[:len(s.Workloads)-2]
	e.apply(s)
	for i, r := range e.dialWp(e.client, wpDialArgs{Addr: vipAddr(vip4, port80), Count: 6}) {
		if r.Err != "" || r.WP != nil || !strings.HasPrefix(r.Backend, "be") {
			t.Fatalf("connection %d after removing the waypoint: %+v", i, r)
		}
	}
	if n := len(e.dp.Waypoints()); n != 0 {
		t.Errorf("%d waypoint entries left", n)
	}
	n := 0
	var k bpf.WaypointKey
	var v bpf.WaypointVal
	it := e.dp.Objects().Maps[bpf.MapWaypoint].Iterate()
	for it.Next(&k, &v) {
		n++
	}
	if n != 0 {
		t.Errorf("%s holds %d entries", bpf.MapWaypoint, n)
	}
	if hasConfigFlag(t, e.env, bpf.ConfigWlWaypoints) {
		t.Errorf("km_config still has the workload-waypoint flag")
	}
	// No service has a waypoint: connects to VIPs skip km_waypoint.
	if !hasConfigFlag(t, e.env, bpf.ConfigNoSvcWaypoints) {
		t.Errorf("km_config lacks the no-service-waypoints flag with no service waypoint left")
	}
	// Put everything back for the next case.
	e.apply(e.wpSnapshot(true))
	if hasConfigFlag(t, e.env, bpf.ConfigNoSvcWaypoints) {
		t.Errorf("km_config says no service has a waypoint while one has")
	}
}

func hasConfigFlag(t *testing.T, e *env, flag uint32) bool {
	t.Helper()
	var cfg bpf.Config
	if err := e.dp.Objects().Maps[bpf.MapConfig].Lookup(uint32(0), &cfg); err != nil {
		t.Fatal(err)
	}
	return cfg.Flags&flag != 0
}

func mustCgroupID(t *testing.T, path string) uint64 {
	t.Helper()
	id, _ := resolveCgroupID(t, path)
	return id
}

func resolveCgroupID(t *testing.T, path string) (uint64, int) {
	t.Helper()
	id, level, _, err := resolveCgroup("/", path)
	if err != nil {
		t.Fatal(err)
	}
	return id, level
}

// TestWaypointValidation: references the dataplane cannot honour are
// rejected with the reason; nothing is applied.
func TestWaypointValidation(t *testing.T) {
	testutil.Privileged(t)
	cg := testutil.NewCgroup(t)
	dp, err := Open(Options{BPF: bpftest.Options(t, cg), StateDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	defer dp.Close()
	ctx := context.Background()
	base := model.Service{Key: "default/a", VIPs: []netip.Addr{vip4}, Ports: []model.ServicePort{{Port: 80}}}
	for _, tc := range []struct {
		ref  model.WaypointRef
		want string
	}{
		{model.WaypointRef{Service: "default/a", Port: 15008}, "own waypoint"},
		{model.WaypointRef{Service: "default/wp"}, "port 0"},
		{model.WaypointRef{Service: "", Port: 1}, "names no service"},
		{model.WaypointRef{Service: "default/wp", Port: 1, ServerFirst: "maybe"}, "serverFirst"},
	} {
		s := base
		ref := tc.ref
		s.Waypoint = &ref
		err := dp.UpsertService(ctx, s)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%+v: error %v, want %q", tc.ref, err, tc.want)
		}
	}
	if n := len(dp.Waypoints()); n != 0 {
		t.Errorf("%d entries after rejected updates", n)
	}
	if _, err := Open(Options{BPF: bpftest.Options(t, cg), StateDir: t.TempDir(), WaypointProtocol: "proxy-v1"}); err == nil ||
		!strings.Contains(err.Error(), "proxy-v1") {
		t.Errorf("unknown waypoint protocol: %v", err)
	}
}
