//go:build vmguest

package l7

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/kmesh-go/kmesh/pkg/dataplane"
	"github.com/kmesh-go/kmesh/pkg/model"
)

// splitSnapshot: vipSplit:80 splits "/" 1:3 between be1 and be2.
func (e *knEnv) splitSnapshot(w1, w2 uint32) *model.Snapshot {
	return &model.Snapshot{
		Version:   fmt.Sprintf("split-%d-%d", w1, w2),
		Clusters:  []model.Cluster{e.cluster("c-be1", httpPort, 0), e.cluster("c-be2", httpPort, 1)},
		Listeners: []model.Listener{{Name: "split", Address: ap(vipSplit, 80), RouteConfig: "split"}},
		RouteConfigs: []model.RouteConfig{{Name: "split", VirtualHosts: []model.VirtualHost{{Name: "all", Domains: []string{"*"},
			Routes: []model.Route{{Match: model.RouteMatch{PathPrefix: "/"}, Action: model.RouteAction{
				WeightedClusters: []model.WeightedCluster{{Name: "c-be1", Weight: w1}, {Name: "c-be2", Weight: w2}}}}}}}}},
	}
}

// TestWeightedSplit: a 1:3 weighted route over 2000 requests, each on a new
// connection (the decision is per connection), lands within ±5 percentage
// points of 25/75.
func TestWeightedSplit(t *testing.T) {
	e := newKnEnv(t, 2)
	e.apply(e.splitSnapshot(1, 3))
	const n = 2000
	counts := map[string]int{}
	addr := ap(vipSplit, 80).String()
	for i := 0; i < n; i++ {
		id, err := e.get(addr, "split.example", "/item/"+strconv.Itoa(i))
		if err != nil {
			t.Fatalf("request %d: %v", i, err)
		}
		counts[id]++
	}
	share := float64(counts["be1"]) / n * 100
	t.Logf("%d requests: be1 %d (%.1f%%), be2 %d", n, counts["be1"], share, counts["be2"])
	if counts["be1"]+counts["be2"] != n {
		t.Fatalf("counts %v", counts)
	}
	if math.Abs(share-25) > 5 {
		t.Fatalf("be1 got %.1f%% of %d requests, want 25%% ± 5 points", share, n)
	}
}

// netstat reads a counter of /proc/net/snmp ("Tcp" ActiveOpens, ...) inside
// a namespace.
func netstat(t *testing.T, h interface{ Do(func() error) error }, proto, field string) uint64 {
	t.Helper()
	var v uint64
	err := h.Do(func() error {
		b, err := os.ReadFile("/proc/thread-self/net/snmp")
		if err != nil {
			return err
		}
		lines := strings.Split(string(b), "\n")
		for i := 0; i+1 < len(lines); i++ {
			if !strings.HasPrefix(lines[i], proto+":") || !strings.HasPrefix(lines[i+1], proto+":") {
				continue
			}
			names, vals := strings.Fields(lines[i]), strings.Fields(lines[i+1])
			for j := range names {
				if names[j] == field && j < len(vals) {
					v, err = strconv.ParseUint(vals[j], 10, 64)
					return err
				}
			}
		}
		return fmt.Errorf("%s %s not in /proc/net/snmp", proto, field)
	})
	if err != nil {
		t.Fatal(err)
	}
	return v
}

// listeners returns the local ports in LISTEN state in a namespace.
func listeners(t *testing.T, h interface{ Do(func() error) error }) []string {
	t.Helper()
	var out []string
	err := h.Do(func() error {
		for _, f := range []string{"/proc/thread-self/net/tcp", "/proc/thread-self/net/tcp6"} {
			b, err := os.ReadFile(f)
			if err != nil {
				return err
			}
			for _, l := range strings.Split(string(b), "\n")[1:] {
				fl := strings.Fields(l)
				if len(fl) > 3 && fl[3] == "0A" { // TCP_LISTEN
					_, port, _ := strings.Cut(fl[1], ":")
					p, _ := strconv.ParseUint(port, 16, 16)
					out = append(out, strconv.Itoa(int(p)))
				}
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// TestNoProxyOnThePath proves the request path has no userspace hop: no
// socket listens anywhere except the backends' own ports (nothing could
// accept a client's connection and relay it), the backend sees the client's
// own address as the peer, and the kernel counts exactly one connection per
// request on each side (a proxy would add a second one).
func TestNoProxyOnThePath(t *testing.T) {
	e := newKnEnv(t, 3)
	e.apply(e.routingSnapshot())
	web := ap(vipWeb, 80).String()

	if l := listeners(t, e.client.NS); len(l) != 0 {
		t.Fatalf("sockets listen in the client namespace: %v", l)
	}
	for _, h := range e.be {
		l := listeners(t, h.NS)
		if !slices.Contains(l, strconv.Itoa(httpPort)) {
			t.Fatalf("%s: its own HTTP listener is not visible (%v): the check would see nothing", h.Name, l)
		}
		for _, p := range l {
			if p != strconv.Itoa(httpPort) && p != strconv.Itoa(echoPort) {
				t.Fatalf("%s listens on unexpected port %s", h.Name, p)
			}
		}
	}
	if l := listeners(t, e.topo.Bridge); len(l) != 0 {
		t.Fatalf("sockets listen in the bridge namespace: %v", l)
	}
	// kmeshd itself relays nothing; in this test the engine runs in the test
	// process, which has no socket in the client namespace besides its own
	// client connections (checked above: no listener).

	const n = 20
	active0, passive0 := netstat(t, e.client.NS, "Tcp", "ActiveOpens"), netstat(t, e.be[0].NS, "Tcp", "PassiveOpens")
	drain(e.peers["be1"])
	for i := 0; i < n; i++ {
		if id, err := e.get(web, "exact.example", "/"); err != nil || id != "be1" {
			t.Fatalf("request %d: %q %v", i, id, err)
		}
	}
	active, passive := netstat(t, e.client.NS, "Tcp", "ActiveOpens")-active0, netstat(t, e.be[0].NS, "Tcp", "PassiveOpens")-passive0
	if active != n || passive != n {
		t.Fatalf("%d requests: the client opened %d connections and be1 accepted %d; want %d each (one connection per request, no relay)",
			n, active, passive, n)
	}
	for i := 0; i < n; i++ {
		select {
		case peer := <-e.peers["be1"]:
			host, _, _ := net.SplitHostPort(peer)
			if host != e.client.IP4.String() {
				t.Fatalf("be1 saw peer %s, want the client's own address %s", peer, e.client.IP4)
			}
		case <-time.After(5 * time.Second):
			t.Fatalf("be1 recorded only %d peers", i)
		}
	}
	ms := e.moduleStats()
	if ms.Redirects < n || ms.Deferred < n {
		t.Fatalf("module counters %+v: every connection deferred and redirected in the kernel", ms)
	}
}

func drain(ch chan string) {
	for {
		select {
		case <-ch:
		default:
			return
		}
	}
}

// TestLiveRouteChange: a route update redirects new connections at once,
// while a keep-alive connection opened before keeps its backend (the
// decision is per connection, made on its first request).
func TestLiveRouteChange(t *testing.T) {
	e := newKnEnv(t, 2)
	e.apply(e.splitSnapshot(1, 0))
	addr := ap(vipSplit, 80).String()
	c, err := e.dial(addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	br := bufio.NewReader(c)
	if id, err := request(c, br, "split.example", "/first"); err != nil || id != "be1" {
		t.Fatalf("first request on the keep-alive connection: %q %v", id, err)
	}
	gen := e.eng.Generation()
	e.apply(e.splitSnapshot(0, 1)) // everything to be2 now
	if e.eng.Generation() == gen {
		t.Fatal("the update did not switch generations")
	}
	for i := 0; i < 10; i++ {
		if id, err := e.get(addr, "split.example", "/new"); err != nil || id != "be2" {
			t.Fatalf("new connection %d after the update: %q %v, want be2", i, id, err)
		}
		if id, err := request(c, br, "split.example", "/again"); err != nil || id != "be1" {
			t.Fatalf("keep-alive request %d after the update: %q %v, want be1 (its connection's backend)", i, id, err)
		}
	}
	// And back: the same holds for a connection opened under the second config.
	c2, err := e.dial(addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c2.Close()
	br2 := bufio.NewReader(c2)
	if id, err := request(c2, br2, "split.example", "/"); err != nil || id != "be2" {
		t.Fatalf("%q %v", id, err)
	}
	e.apply(e.splitSnapshot(1, 0))
	if id, err := request(c2, br2, "split.example", "/"); err != nil || id != "be2" {
		t.Fatalf("keep-alive after the second update: %q %v", id, err)
	}
	if id, err := e.get(addr, "split.example", "/"); err != nil || id != "be1" {
		t.Fatalf("new connection after the second update: %q %v", id, err)
	}
}

// TestBadConfigKeepsServing: a rejected update names the object and the
// limit, and the previous configuration keeps routing.
func TestBadConfigKeepsServing(t *testing.T) {
	e := newKnEnv(t, 2)
	good := e.splitSnapshot(1, 0)
	e.apply(good)
	gen := e.eng.Generation()
	bad := e.splitSnapshot(0, 1)
	for i := 0; i <= MaxRoutes; i++ {
		r := &bad.RouteConfigs[0].VirtualHosts[0]
		r.Routes = append(r.Routes, r.Routes[0])
	}
	err := e.eng.ApplyL7(context.Background(), bad)
	var ce *dataplane.CapacityError
	if !errors.As(err, &ce) || ce.Map != "routes per virtual host" || !strings.Contains(err.Error(), `virtual host "all"`) {
		t.Fatalf("oversized config: %v", err)
	}
	bad2 := e.splitSnapshot(0, 1)
	bad2.Listeners[0].RouteConfig = "missing"
	if err := e.eng.ApplyL7(context.Background(), bad2); err == nil || !strings.Contains(err.Error(), `route config "missing" does not exist`) {
		t.Fatalf("dangling route config: %v", err)
	}
	if e.eng.Generation() != gen {
		t.Fatal("a rejected config switched generations")
	}
	for i := 0; i < 5; i++ {
		if id, err := e.get(ap(vipSplit, 80).String(), "x", "/"); err != nil || id != "be1" {
			t.Fatalf("after rejected updates: %q %v, want be1 (the last good config)", id, err)
		}
	}
}

// TestCircuitBreaking: a cluster with max 2 connections; the third
// concurrent connection fails at its first send with EBUSY, and succeeds once
// one of the two closes. A TCP-only listener refuses at connect() itself.
func TestCircuitBreaking(t *testing.T) {
	e := newKnEnv(t, 2)
	s := e.splitSnapshot(1, 0)
	s.Clusters = []model.Cluster{e.cluster("c-be1", httpPort, 0), e.cluster("c-be2", httpPort, 0)}
	s.Clusters[0].MaxConnections = 2
	tcp := e.cluster("c-tcp", echoPort, 0)
	tcp.MaxConnections = 1
	s.Clusters = append(s.Clusters, tcp)
	s.Listeners = append(s.Listeners, model.Listener{Name: "tcp", Address: ap(vipTCP, echoPort), TCPRoute: &model.RouteAction{Cluster: "c-tcp"}})
	e.apply(s)
	addr := ap(vipSplit, 80).String()

	var open []net.Conn
	for i := 0; i < 2; i++ {
		c, err := e.dial(addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		if id, err := request(c, bufio.NewReader(c), "x", "/"); err != nil || id != "be1" {
			t.Fatalf("connection %d: %q %v", i, id, err)
		}
		open = append(open, c)
	}
	if n, _ := e.eng.ClusterConnections("c-be1"); n != 2 {
		t.Fatalf("cluster counts %d open connections, want 2", n)
	}
	before := e.stats()["overflow"]
	c3, err := e.dial(addr)
	if err != nil {
		t.Fatalf("connect() of the third connection: %v (the decision comes at the first send)", err)
	}
	_, err = request(c3, bufio.NewReader(c3), "x", "/")
	if errnoOf(err) != syscall.EBUSY {
		t.Fatalf("third concurrent connection: %v, want EBUSY (circuit breaker open)", err)
	}
	c3.Close()
	if got := e.stats()["overflow"] - before; got != 1 {
		t.Fatalf("overflow counter moved by %d, want 1", got)
	}
	open[0].Close()
	waitFor(t, "the closed connection's slot", func() bool { n, _ := e.eng.ClusterConnections("c-be1"); return n == 1 })
	if id, err := e.get(addr, "x", "/"); err != nil || id != "be1" {
		t.Fatalf("after a slot was freed: %q %v", id, err)
	}

	// TCP-only listener: decided at connect(), so connect() is refused.
	t1, err := e.dial(ap(vipTCP, echoPort).String())
	if err != nil {
		t.Fatal(err)
	}
	defer t1.Close()
	if _, err := e.dial(ap(vipTCP, echoPort).String()); errnoOf(err) != syscall.EBUSY {
		t.Fatalf("second connect to a TCP listener with max 1: %v, want EBUSY", err)
	}
	t1.Close()
	waitFor(t, "the TCP slot", func() bool { n, _ := e.eng.ClusterConnections("c-tcp"); return n == 0 })
	t2, err := e.dial(ap(vipTCP, echoPort).String())
	if err != nil {
		t.Fatalf("after the TCP slot was freed: %v", err)
	}
	t2.Close()
}

// blackhole listens on port with a full accept queue: further SYNs are
// dropped silently, so a connect to it hangs until a timeout.
func blackhole(t *testing.T, h interface{ Do(func() error) error }, port int) {
	t.Helper()
	var fd int
	err := h.Do(func() (err error) {
		fd, err = unix.Socket(unix.AF_INET, unix.SOCK_STREAM, 0)
		if err != nil {
			return err
		}
		if err := unix.Bind(fd, &unix.SockaddrInet4{Port: port}); err != nil {
			return err
		}
		if err := unix.Listen(fd, 0); err != nil {
			return err
		}
		// Fill the queue (backlog 0 holds one connection) from inside.
		c, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM, 0)
		if err != nil {
			return err
		}
		t.Cleanup(func() { unix.Close(c) })
		return unix.Connect(c, &unix.SockaddrInet4{Port: port, Addr: [4]byte{127, 0, 0, 1}})
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Close(fd) })
}

// TestConnectTimeout: a cluster's connect timeout bounds the handshake of a
// routed connection (ETIMEDOUT at the first send); without one the kernel
// would retry the SYN for minutes.
func TestConnectTimeout(t *testing.T) {
	e := newKnEnv(t, 2)
	blackhole(t, e.be[1].NS, 7070)
	s := e.splitSnapshot(1, 0)
	s.Clusters = append(s.Clusters, model.Cluster{Name: "c-hole", ConnectTimeout: 1500 * time.Millisecond,
		Endpoints: []model.Endpoint{{Address: ap(e.be[1].IP4, 7070)}}})
	s.RouteConfigs[0].VirtualHosts[0].Routes = append([]model.Route{{Match: model.RouteMatch{PathPrefix: "/hole"},
		Action: model.RouteAction{Cluster: "c-hole"}}}, s.RouteConfigs[0].VirtualHosts[0].Routes...)
	e.apply(s)
	c, err := e.dial(ap(vipSplit, 80).String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(20 * time.Second))
	start := time.Now()
	_, err = request(c, bufio.NewReader(c), "x", "/hole")
	took := time.Since(start)
	if errnoOf(err) != syscall.ETIMEDOUT {
		t.Fatalf("request to a black-holed endpoint: %v after %v, want ETIMEDOUT", err, took)
	}
	// Generous bounds (TCG): the 1.5 s timeout, not the ~2 min of SYN retries.
	if took < time.Second || took > 10*time.Second {
		t.Fatalf("timed out after %v, want about 1.5 s", took)
	}
	if e.stats()["timeout_set"] == 0 {
		t.Fatal("timeout_set counter did not move")
	}
	// The timeout applies to the handshake only: a routed connection to a
	// live backend stays usable beyond it.
	c2, err := e.dial(ap(vipSplit, 80).String())
	if err != nil {
		t.Fatal(err)
	}
	defer c2.Close()
	br := bufio.NewReader(c2)
	for i := 0; i < 2; i++ {
		if id, err := request(c2, br, "x", "/"); err != nil || id != "be1" {
			t.Fatalf("%q %v", id, err)
		}
	}
	t.Logf("ETIMEDOUT after %v", took.Round(time.Millisecond))
}

// TestHostileInput: oversized heads, too many headers, binary garbage and a
// client that connects and never sends all get defined behaviour, and the
// kernel logs no warning (the VM harness fails the run on any WARN/oops).
func TestHostileInput(t *testing.T) {
	e := newKnEnv(t, 3)
	e.apply(e.routingSnapshot())
	web := ap(vipWeb, 80).String()

	t.Run("head larger than the parser limit is routed on what fits", func(t *testing.T) {
		// Host first, then 12 KB of cookie: the parser reports TOO_LARGE
		// and routes on the request line and the headers that fit.
		big := "x=" + strings.Repeat("a", 12000)
		c, err := e.dial(web)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		if id, err := request(c, bufio.NewReader(c), "exact.example", "/", "Cookie", big); err != nil || id != "be1" {
			t.Fatalf("%q %v", id, err)
		}
		// The header that decides comes after the limit: not seen, so the
		// default route.
		if id, err := e.get(web, "other.example", "/", "Cookie", big, "X-Canary", "true"); err != nil || id != "be1" {
			t.Fatalf("canary header beyond the limit: %q %v, want the default be1", id, err)
		}
	})
	t.Run("more header lines than the parser indexes", func(t *testing.T) {
		var hdr []string
		for i := 0; i < 150; i++ {
			hdr = append(hdr, fmt.Sprintf("X-H%d", i), "v")
		}
		if id, err := e.get(web, "a.wild.example", "/", hdr...); err != nil || id != "be2" {
			t.Fatalf("%q %v", id, err)
		}
	})
	t.Run("binary garbage follows the TCP route", func(t *testing.T) {
		c, err := e.dial(web)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		junk := make([]byte, 4096)
		for i := range junk {
			junk[i] = byte(i*7 + 3)
		}
		if _, err := c.Write(junk); err != nil {
			t.Fatal(err)
		}
		line, err := bufio.NewReader(c).ReadString('\n')
		if err != nil || line != "be1-tcp\n" {
			t.Fatalf("garbage reached %q (%v), want the TCP route's be1-tcp", line, err)
		}
	})
	t.Run("garbage without a TCP route is refused", func(t *testing.T) {
		c, err := e.dial(ap(vipWeb6, 80).String()) // "web6" has HTTP routes only
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		_, err = c.Write([]byte("\x00\x01\x02\xffSSH-2.0-nope\r\n"))
		if errnoOf(err) != syscall.EHOSTUNREACH {
			t.Fatalf("non-HTTP bytes on an HTTP-only listener: %v, want EHOSTUNREACH", err)
		}
	})
	t.Run("a client that connects and never sends", func(t *testing.T) {
		live0 := e.moduleStats().Live
		active0 := netstat(t, e.client.NS, "Tcp", "ActiveOpens")
		var conns []net.Conn
		for i := 0; i < 20; i++ {
			c, err := e.dial(web)
			if err != nil {
				t.Fatal(err)
			}
			conns = append(conns, c)
		}
		time.Sleep(300 * time.Millisecond)
		if a := netstat(t, e.client.NS, "Tcp", "ActiveOpens") - active0; a != 0 {
			t.Fatalf("%d SYNs sent for connections that never sent a byte", a)
		}
		if l := e.moduleStats().Live; l != live0+20 {
			t.Fatalf("module tracks %d sockets, want %d", l, live0+20)
		}
		for _, c := range conns {
			c.Close()
		}
		waitFor(t, "the silent sockets to be released", func() bool { return e.moduleStats().Live == live0 })
		waitFor(t, "kn_conns to forget them", func() bool { return e.connEntries() == 0 })
	})
	t.Run("a client that reads first goes to the TCP route", func(t *testing.T) {
		c, err := e.dial(web)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		line, err := bufio.NewReader(c).ReadString('\n')
		if err != nil || line != "be1-tcp\n" {
			t.Fatalf("server-first client: %q %v", line, err)
		}
	})
	if s := e.stats(); s["routed_tcp"] == 0 || s["no_route"] == 0 {
		t.Errorf("counters %v", s)
	}
}

// connEntries counts kn_conns entries (sockets to L7 listeners not yet released).
func (e *knEnv) connEntries() int {
	n := 0
	var k uint64
	var v []byte
	it := e.eng.obj.maps[MapConns].Iterate()
	for it.Next(&k, &v) {
		n++
	}
	return n
}

var (
	_ = io.EOF
	_ = sync.Mutex{}
	_ = filepath.Join
)
