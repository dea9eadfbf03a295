//go:build vmguest

package kmod

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"

	"github.com/kmesh-go/kmesh/pkg/bpf/objs"
	"github.com/kmesh-go/kmesh/pkg/testutil"
)

// Addresses inside the test netns (loopback; 10.96.0.10 has no route there,
// so reaching it proves the connect went where the route program said).
const (
	addrDefault  = "127.0.0.1:8080" // an L7 listener (tag 1); its own backend answers "default"
	addrA        = "127.0.0.2:8080"
	addrB        = "127.0.0.3:8080"
	addrRefused  = "127.0.0.4:8080" // nothing listens
	addrBanner   = "127.0.0.5:2525" // an L7 listener (tag 4) whose server speaks first
	addrVIP      = "10.96.0.10:80"  // an L7 listener (tag 2) without any route
	addrDefault6 = "[::1]:8080"     // an L7 listener (tag 3)
	addrA6       = "[::1]:8081"
)

const (
	condHost    = 1
	condPath    = 2
	condHeader  = 3
	condNotHTTP = 5
	condAlways  = 6
)

type rule struct {
	tag     uint64
	cond    uint32
	match   uint32
	and     bool
	verdict uint32
	name    string // header name
	value   string
	dest    string // REDIRECT destination
}

// The route table of these tests: what l7_route.c evaluates first-match.
var testRules = []rule{
	{tag: 1, cond: condHost, value: "a.example", verdict: L7Redirect, dest: addrA},
	{tag: 1, cond: condPath, match: MatchPrefix, value: "/b/", verdict: L7Redirect, dest: addrB},
	{tag: 1, cond: condHeader, name: "x-canary", value: "true", verdict: L7Redirect, dest: addrB},
	{tag: 1, cond: condHost, value: "blocked.example", verdict: L7NoRoute},
	{tag: 1, cond: condHost, value: "refused.example", verdict: L7Redirect, dest: addrRefused},
	{tag: 1, cond: condHost, match: MatchNoPort, value: "c.example", and: true},
	{tag: 1, cond: condPath, match: MatchPrefix, value: "/v2/", verdict: L7Redirect, dest: addrB},
	{tag: 1, cond: condNotHTTP, verdict: L7Pass},
	{tag: 2, cond: condAlways, verdict: L7Redirect, dest: addrA},
	{tag: 3, cond: condHost, value: "a.example", verdict: L7Redirect, dest: addrA6},
}

type backend struct {
	id     string
	banner bool
	mu     sync.Mutex
	reqs   [][]byte
}

func (b *backend) serve(ln net.Listener) {
	for {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		go b.handle(c)
	}
}

func (b *backend) handle(c net.Conn) {
	defer c.Close()
	c.SetDeadline(time.Now().Add(15 * time.Second))
	if b.banner {
		c.Write([]byte("220 " + b.id + "\r\n"))
	}
	var got []byte
	buf := make([]byte, 16384)
	for {
		n, err := c.Read(buf)
		got = append(got, buf[:n]...)
		if err != nil || complete(got) {
			break
		}
		// Not HTTP: whatever arrives within 300 ms is the request.
		c.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
	}
	b.mu.Lock()
	b.reqs = append(b.reqs, got)
	b.mu.Unlock()
	if !b.banner {
		fmt.Fprintf(c, "HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s\n", len(b.id)+1, b.id)
	}
}

// complete: an HTTP head (and its Content-Length body) has arrived.
func complete(b []byte) bool {
	i := bytes.Index(b, []byte("\r\n\r\n"))
	if i < 0 {
		return false
	}
	cl := 0
	for _, l := range strings.Split(string(b[:i]), "\r\n") {
		if k, v, ok := strings.Cut(l, ":"); ok && strings.EqualFold(k, "content-length") {
			cl, _ = strconv.Atoi(strings.TrimSpace(v))
		}
	}
	return len(b) >= i+4+cl
}

func (b *backend) requests() [][]byte {
	b.mu.Lock()
	defer b.mu.Unlock()
	return append([][]byte(nil), b.reqs...)
}

type l7Env struct {
	t        *testing.T
	ns       *testutil.Netns
	cg       *testutil.Cgroup
	conn     *Conn
	deferO   objs.L7DeferObjects
	routeO   objs.L7RouteObjects
	backends map[string]*backend
	closers  []func()
}

func htons(p uint16) uint16 { return p<<8 | p>>8 }

func addrWords(a netip.Addr) (family uint32, w [4]uint32) {
	b := a.As16()
	family = syscall.AF_INET6
	if a.Is4() {
		family = syscall.AF_INET
		v4 := a.As4()
		w[0] = binary.LittleEndian.Uint32(v4[:])
		return
	}
	for i := range w {
		w[i] = binary.LittleEndian.Uint32(b[4*i:])
	}
	return
}

// newL7Env loads the module and the L7 programs, attaches the deferral
// programs to a fresh cgroup and the router as kmesh_l7_ops, and starts the
// backends in a fresh netns.
func newL7Env(t *testing.T) *l7Env {
	t.Helper()
	loadModule(t)
	e := &l7Env{t: t, backends: map[string]*backend{}}
	e.conn = dialModule(t)
	if err := objs.LoadL7DeferObjects(&e.deferO, nil); err != nil {
		t.Fatalf("loading l7_defer: %v", err)
	}
	if err := objs.LoadL7RouteObjects(&e.routeO, nil); err != nil {
		e.deferO.Close()
		t.Fatalf("loading l7_route (struct_ops kmesh_l7_ops): %v", err)
	}
	t.Cleanup(e.close)
	sl, err := link.AttachStructOps(link.StructOpsOptions{Map: e.routeO.KmeshRouter})
	if err != nil {
		t.Fatalf("registering the router: %v", err)
	}
	e.closers = append(e.closers, func() { sl.Close() })
	e.cg = testutil.NewCgroup(t)
	for _, a := range []struct {
		p  *ebpf.Program
		at ebpf.AttachType
	}{{e.deferO.L7DeferConnect4, ebpf.AttachCGroupInet4Connect}, {e.deferO.L7DeferConnect6, ebpf.AttachCGroupInet6Connect}} {
		l, err := link.AttachCgroup(link.CgroupOptions{Path: e.cg.Path, Attach: a.at, Program: a.p})
		if err != nil {
			t.Fatal(err)
		}
		e.closers = append(e.closers, func() { l.Close() })
	}
	e.ns = testutil.NewNetns(t, "kml7-")
	for addr, id := range map[string]string{addrDefault: "default", addrA: "A", addrB: "B", addrDefault6: "default6",
		addrA6: "A6", addrBanner: "banner"} {
		network := "tcp4"
		if strings.HasPrefix(addr, "[") {
			network = "tcp6"
		}
		b := &backend{id: id, banner: id == "banner"}
		go b.serve(e.ns.Listen(t, network, addr))
		e.backends[id] = b
	}
	for addr, tag := range map[string]uint64{addrDefault: 1, addrVIP: 2, addrDefault6: 3, addrBanner: 4} {
		ap := netip.MustParseAddrPort(addr)
		fam, w := addrWords(ap.Addr())
		key := objs.L7DeferL7ListenerKey{Family: fam, Port: htons(ap.Port()), Addr: w}
		if err := e.deferO.L7Listeners.Put(&key, &objs.L7DeferL7Listener{Tag: tag}); err != nil {
			t.Fatal(err)
		}
	}
	e.setRules(testRules)
	return e
}

func (e *l7Env) close() {
	for i := len(e.closers) - 1; i >= 0; i-- {
		e.closers[i]()
	}
	e.closers = nil
	e.routeO.Close()
	e.deferO.Close()
}

func (e *l7Env) setRules(rules []rule) {
	e.t.Helper()
	for i := 0; i <= len(rules); i++ {
		var r objs.L7RouteL7Rule // zero: the end marker
		if i < len(rules) {
			in := rules[i]
			r = objs.L7RouteL7Rule{Tag: in.tag, Cond: in.cond, Match: in.match, Verdict: in.verdict}
			if in.and {
				r.RuleFlags = 1
			}
			v := in.name + in.value
			r.NameLen, r.ValueLen = uint32(len(in.name)), uint32(len(v))
			for j := 0; j < len(v); j++ {
				r.Value[j] = int8(v[j])
			}
			if in.dest != "" {
				ap := netip.MustParseAddrPort(in.dest)
				r.Family, r.Addr = addrWords(ap.Addr())
				r.Port = htons(ap.Port())
			}
		}
		if err := e.routeO.L7Rules.Put(uint32(i), &r); err != nil {
			e.t.Fatal(err)
		}
	}
}

// client runs the l7client helper in the netns and the cgroup.
func (e *l7Env) client(t *testing.T, addr string, req string, steps ...string) []string {
	t.Helper()
	var res clientResult
	testutil.RunHelper(t, "l7client", clientArgs{Addr: addr, Steps: steps, Request: []byte(req)},
		testutil.HelperOptions{Netns: e.ns, Cgroup: e.cg}, &res)
	return res.Events
}

// command runs a program (curl, wget) in the netns and the cgroup.
func (e *l7Env) command(t *testing.T, name string, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := e.ns.Command(ctx, name, args...)
	cmd.SysProcAttr = &syscall.SysProcAttr{UseCgroupFD: true, CgroupFD: e.cg.FD()}
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v: %s", name, strings.Join(args, " "), err, out)
	}
	return strings.TrimSpace(string(out))
}

func (e *l7Env) stats(t *testing.T) Stats {
	t.Helper()
	s, err := e.conn.Stats()
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func (e *l7Env) last(t *testing.T) objs.L7RouteL7Decision {
	t.Helper()
	var d objs.L7RouteL7Decision
	if err := e.routeO.L7Last.Lookup(uint32(0), &d); err != nil {
		t.Fatal(err)
	}
	return d
}

// waitLive waits until the module tracks n sockets (a closing socket is
// released by the kernel shortly after close() returns).
func (e *l7Env) waitLive(t *testing.T, n uint64) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		s := e.stats(t)
		if s.Live == n {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("module tracks %d sockets, want %d", s.Live, n)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func wantEvents(t *testing.T, got []string, want ...string) {
	t.Helper()
	if strings.Join(got, " ") != strings.Join(want, " ") {
		t.Fatalf("events:\n  got  %s\n  want %s", strings.Join(got, " "), strings.Join(want, " "))
	}
}

func get(host, path string) string {
	return "GET " + path + " HTTP/1.1\r\nHost: " + host + "\r\nUser-Agent: kmesh-test\r\n\r\n"
}

// TestDeferredConnect covers the deferred connect end to end on real sockets:
// a cgroup/connect program defers, the struct_ops router decides on the first
// request, the module connects. Each subtest names the behaviour it pins down.
func TestDeferredConnect(t *testing.T) {
	e := newL7Env(t)

	t.Run("no SYN before the first send", func(t *testing.T) {
		req := get("a.example", "/x")
		ev := e.client(t, addrDefault, req, "socket", "connect", "snmp", "poll", "getpeername", "sleep", "snmp",
			"send", "recv", "snmp")
		// connect() succeeds at once, sends no SYN (ActiveOpens) and nothing is
		// accepted (PassiveOpens); poll says writable, not hung up; there is
		// no peer yet. The first send routes by Host to backend A.
		wantEvents(t, ev, "connect=0", "snmp=0/0", "poll=OUT", "getpeername=ENOTCONN", "snmp=0/0",
			fmt.Sprintf("send=%d", len(req)), "body=A", "snmp=1/1")
		reqs := e.backends["A"].requests()
		if len(reqs) == 0 || string(reqs[len(reqs)-1]) != req {
			t.Fatalf("backend A received %q, want exactly the request", reqs)
		}
		d := e.last(t)
		if d.Tag != 1 || d.Status != HTTPOK || d.Verdict != L7Redirect || d.Rule != 0 ||
			d.OrigPort != htons(8080) || cString(d.Path[:], 2) != "/x" {
			t.Fatalf("route program saw %+v", d)
		}
	})

	t.Run("curl routed by host path and header", func(t *testing.T) {
		base := "http://" + addrDefault
		for _, c := range []struct {
			args []string
			want string
		}{
			{[]string{"-H", "Host: a.example", base + "/"}, "A"},
			{[]string{base + "/b/items?id=1"}, "B"},
			{[]string{"-H", "X-Canary: true", base + "/"}, "B"},
			{[]string{"-H", "Host: c.example:8080", base + "/v2/list"}, "B"},
			{[]string{"-H", "Host: c.example", base + "/v1/list"}, "default"},
			{[]string{base + "/"}, "default"},
			{[]string{"-X", "POST", "-d", "payload=1", "-H", "Host: a.example", base + "/submit"}, "A"},
		} {
			got := e.command(t, "curl", append([]string{"-sS", "--max-time", "10"}, c.args...)...)
			if got != c.want {
				t.Errorf("curl %s: got %q, want %q", strings.Join(c.args, " "), got, c.want)
			}
		}
		// The POST body arrived with its head, nothing lost or duplicated.
		reqs := e.backends["A"].requests()
		if r := string(reqs[len(reqs)-1]); !strings.HasPrefix(r, "POST /submit") || !strings.HasSuffix(r, "\r\n\r\npayload=1") {
			t.Fatalf("backend A got %q", r)
		}
	})

	t.Run("wget routed by host and path", func(t *testing.T) {
		if got := e.command(t, "wget", "-q", "-O", "-", "--header", "Host: a.example", "http://"+addrDefault+"/"); got != "A" {
			t.Errorf("wget with Host a.example: %q", got)
		}
		if got := e.command(t, "wget", "-q", "-O", "-", "http://"+addrDefault+"/b/"); got != "B" {
			t.Errorf("wget /b/: %q", got)
		}
	})

	t.Run("VIP without a route is reached through the router", func(t *testing.T) {
		if got := e.command(t, "curl", "-sS", "--max-time", "10", "http://"+addrVIP+"/"); got != "A" {
			t.Fatalf("curl VIP: %q", got)
		}
	})

	t.Run("IPv6", func(t *testing.T) {
		if got := e.command(t, "curl", "-sS", "-g", "--max-time", "10", "-H", "Host: a.example", "http://"+addrDefault6+"/"); got != "A6" {
			t.Errorf("curl [::1] Host a.example: %q", got)
		}
		if got := e.command(t, "curl", "-sS", "-g", "--max-time", "10", "http://"+addrDefault6+"/"); got != "default6" {
			t.Errorf("curl [::1]: %q", got)
		}
	})

	t.Run("non-HTTP first bytes pass through", func(t *testing.T) {
		before := e.stats(t)
		hello := "\x16\x03\x01\x00\x2a\x01\x00\x00\x26\x03\x03binary-client-hello"
		ev := e.client(t, addrDefault, hello, "socket", "connect", "snmp", "send", "recv", "snmp")
		wantEvents(t, ev, "connect=0", "snmp=0/0", fmt.Sprintf("send=%d", len(hello)), "body=default", "snmp=1/1")
		after := e.stats(t)
		if after.ParseErrors-before.ParseErrors != 1 || after.Decisions-before.Decisions != 1 {
			t.Fatalf("counters before %+v after %+v: want one parse error and one decision", before, after)
		}
		if d := e.last(t); d.Status != HTTPErrNotHTTP || d.Verdict != L7Pass || d.Rule != 7 {
			t.Fatalf("route program saw %+v", d)
		}
		reqs := e.backends["default"].requests()
		if string(reqs[len(reqs)-1]) != hello {
			t.Fatal("the default backend did not receive the bytes unchanged")
		}
	})

	t.Run("closed before any send", func(t *testing.T) {
		base := e.stats(t)
		ev := e.client(t, addrDefault, "", "socket", "connect", "sleep", "close", "sleep", "snmp")
		wantEvents(t, ev, "connect=0", "snmp=0/0") // never a SYN
		e.waitLive(t, base.Live)
		if s := e.stats(t); s.Deferred != base.Deferred+1 {
			t.Fatalf("deferred %d -> %d", base.Deferred, s.Deferred)
		}
	})

	t.Run("non-blocking socket with poll and epoll", func(t *testing.T) {
		req := get("b.example", "/b/nb")
		ev := e.client(t, addrDefault, req, "socket-nb", "connect", "poll", "epoll-out", "snmp", "send-nb", "recv-nb")
		// connect() does not say EINPROGRESS: like TCP Fast Open's deferred
		// connect it succeeds, and poll/epoll report writable so the app sends.
		wantEvents(t, ev[:4], "connect=0", "poll=OUT", "epoll=OUT", "snmp=0/0")
		// The first write either goes through (the loopback handshake finished
		// while the module held the socket lock) or says EAGAIN until the
		// handshake completes; either way every byte is sent exactly once.
		first, final, _ := strings.Cut(strings.TrimPrefix(ev[4], "send-nb="), ",")
		if (first != strconv.Itoa(len(req)) && first != "EAGAIN") || final != strconv.Itoa(len(req)) {
			t.Fatalf("non-blocking send: %s", ev[4])
		}
		wantEvents(t, ev[5:], "body=B")
		t.Logf("first non-blocking write: %s", first)
	})

	t.Run("sendfile as the first write", func(t *testing.T) {
		req := get("a.example", "/sendfile")
		ev := e.client(t, addrDefault, req, "socket", "connect", "snmp", "sendfile", "recv")
		wantEvents(t, ev, "connect=0", "snmp=0/0", fmt.Sprintf("sendfile=%d", len(req)), "body=A")
	})

	t.Run("splice as the first write", func(t *testing.T) {
		req := get("x.example", "/b/splice")
		ev := e.client(t, addrDefault, req, "socket", "connect", "snmp", "splice", "recv")
		wantEvents(t, ev, "connect=0", "snmp=0/0", fmt.Sprintf("splice=%d", len(req)), "body=B")
	})

	t.Run("backend refuses", func(t *testing.T) {
		req := get("refused.example", "/")
		// Blocking: the first send reports the refused connect.
		ev := e.client(t, addrDefault, req, "socket", "connect", "send", "poll", "so_error")
		wantEvents(t, ev, "connect=0", "send=ECONNREFUSED", "poll=IN|OUT|HUP", "so_error=0")
		// Non-blocking: EAGAIN while the SYN is out, or the error at once.
		ev = e.client(t, addrDefault, req, "socket-nb", "connect", "send-nb")
		if ev[1] != "send-nb=ECONNREFUSED,ECONNREFUSED" && ev[1] != "send-nb=EAGAIN,ECONNREFUSED" {
			t.Fatalf("non-blocking send to a refusing backend: %v", ev)
		}
	})

	t.Run("no route", func(t *testing.T) {
		before := e.stats(t)
		ev := e.client(t, addrDefault, get("blocked.example", "/"), "socket", "connect", "send", "poll", "snmp", "send")
		// EHOSTUNREACH on the first send, no SYN ever, then EPIPE like any
		// failed connection.
		wantEvents(t, ev, "connect=0", "send=EHOSTUNREACH", "poll=IN|OUT|HUP", "snmp=0/0", "send=EPIPE")
		if s := e.stats(t); s.NoRoute != before.NoRoute+1 {
			t.Fatalf("no-route counter %d -> %d", before.NoRoute, s.NoRoute)
		}
	})

	t.Run("receive before send connects to the original destination", func(t *testing.T) {
		before := e.stats(t)
		ev := e.client(t, addrBanner, "", "socket", "connect", "snmp", "recv-raw", "snmp")
		wantEvents(t, ev, "connect=0", "snmp=0/0", "raw=220 banner", "snmp=1/1")
		if s := e.stats(t); s.Fallbacks != before.Fallbacks+1 {
			t.Fatalf("fallback counter %d -> %d", before.Fallbacks, s.Fallbacks)
		}
	})

	t.Run("zero-length write keeps the socket deferred", func(t *testing.T) {
		req := get("a.example", "/zero")
		ev := e.client(t, addrDefault, req, "socket", "connect", "send0", "snmp", "send", "recv")
		wantEvents(t, ev, "connect=0", "send0=0", "snmp=0/0", fmt.Sprintf("send=%d", len(req)), "body=A")
	})

	t.Run("shutdown and disconnect before any send", func(t *testing.T) {
		base := e.stats(t)
		ev := e.client(t, addrDefault, "", "socket", "connect", "shutdown-wr", "snmp", "close")
		// A deferred socket is a connect in progress: shutdown aborts it.
		wantEvents(t, ev, "connect=0", "shutdown-wr=0", "snmp=0/0")
		req := get("a.example", "/")
		ev = e.client(t, addrDefault, req, "socket", "connect", "disconnect", "snmp", "connect", "send", "recv")
		// After connect(AF_UNSPEC) the socket can connect again, deferred again.
		wantEvents(t, ev, "connect=0", "disconnect=0", "snmp=0/0", "connect=0", fmt.Sprintf("send=%d", len(req)), "body=A")
		e.waitLive(t, base.Live)
	})

	t.Run("TCP_ULP on a deferred socket", func(t *testing.T) {
		req := get("a.example", "/ulp")
		ev := e.client(t, addrDefault, req, "socket", "connect", "ulp-tls", "snmp", "send", "recv")
		// kTLS needs an established connection; the module never lets a ULP
		// build its proto from the module's.
		wantEvents(t, ev, "connect=0", "ulp-tls=ENOTCONN", "snmp=0/0", fmt.Sprintf("send=%d", len(req)), "body=A")
	})

	t.Run("safe mode", func(t *testing.T) {
		before := e.stats(t)
		if err := e.conn.SetSafeMode(true); err != nil {
			t.Fatal(err)
		}
		req := get("a.example", "/safe")
		ev := e.client(t, addrDefault, req, "socket", "connect", "snmp", "send", "recv")
		if err := e.conn.SetSafeMode(false); err != nil {
			t.Fatal(err)
		}
		// Not deferred: the SYN goes out in connect(), to the address as given.
		wantEvents(t, ev, "connect=0", "snmp=1/1", fmt.Sprintf("send=%d", len(req)), "body=default")
		if s := e.stats(t); s.Refused != before.Refused+1 || s.Deferred != before.Deferred {
			t.Fatalf("counters before %+v after %+v", before, s)
		}
		ev = e.client(t, addrDefault, req, "socket", "connect", "snmp", "send", "recv")
		wantEvents(t, ev, "connect=0", "snmp=0/0", fmt.Sprintf("send=%d", len(req)), "body=A")
	})

	t.Run("marked socket whose connect was denied", func(t *testing.T) {
		base := e.stats(t)
		var d objs.KmodDeferObjects
		if err := objs.LoadKmodDeferObjects(&d, nil); err != nil {
			t.Fatal(err)
		}
		defer d.Close()
		if err := d.DenyPort.Set(uint16(9999)); err != nil {
			t.Fatal(err)
		}
		l, err := link.AttachCgroup(link.CgroupOptions{Path: e.cg.Path, Attach: ebpf.AttachCGroupInet4Connect, Program: d.DeferThenDeny4})
		if err != nil {
			t.Fatal(err)
		}
		defer l.Close()
		// connect is denied after the kfunc marked the socket; bind and listen
		// then work on plain TCP, and close releases everything.
		ev := e.client(t, "127.0.0.1:9999", "", "socket", "connect", "connect", "bind-listen", "close")
		wantEvents(t, ev, "connect=EPERM", "connect=EPERM", "bind-listen=0")
		var ret int32
		if err := d.DenyKfuncRet.Get(&ret); err != nil || ret != 0 {
			t.Fatalf("kfunc in the denying program returned %d (%v)", ret, err)
		}
		e.waitLive(t, base.Live)
	})

	t.Run("parallel deferred connections", func(t *testing.T) {
		base := e.stats(t)
		var res parallelResult
		testutil.RunHelper(t, "l7parallel", parallelArgs{Addr: addrDefault, Conns: 60,
			Hosts: []string{"a.example", "other.example"}}, testutil.HelperOptions{Netns: e.ns, Cgroup: e.cg}, &res)
		if res.Bodies["A"] != 30 || res.Bodies["default"] != 30 || len(res.Errors) != 0 {
			t.Fatalf("60 parallel connections: %+v", res)
		}
		s := e.stats(t)
		if s.Deferred-base.Deferred != 60 || s.Decisions-base.Decisions != 60 {
			t.Fatalf("counters before %+v after %+v", base, s)
		}
		e.waitLive(t, base.Live)
	})

	if s := e.stats(t); s.Live != 0 {
		t.Fatalf("%d sockets still tracked after every client exited", s.Live)
	}
}

// TestUnloadWithLiveDeferredSockets: rmmod while sockets are deferred (and
// one is marked but never connected). The module puts them back on plain
// TCP: the deferred ones connect to the destination connect() was given, and
// the applications, which never noticed, complete their requests there. The
// harness checks dmesg for oopses and warnings afterwards.
func TestUnloadWithLiveDeferredSockets(t *testing.T) {
	e := newL7Env(t)
	gate := filepath.Join(t.TempDir(), "gate")
	const deferred = 3
	helpers := make([]*testutil.Helper, deferred)
	for i := range helpers {
		req := get("a.example", fmt.Sprintf("/unload/%d", i))
		helpers[i] = testutil.StartHelper(t, "l7client", clientArgs{Addr: addrDefault, Request: []byte(req), Gate: gate,
			Steps: []string{"socket", "connect", "snmp", "gate", "send", "recv"}}, testutil.HelperOptions{Netns: e.ns, Cgroup: e.cg})
	}
	// One marked-but-denied socket stays open too.
	var d objs.KmodDeferObjects
	if err := objs.LoadKmodDeferObjects(&d, nil); err != nil {
		t.Fatal(err)
	}
	if err := d.DenyPort.Set(uint16(9999)); err != nil {
		t.Fatal(err)
	}
	l, err := link.AttachCgroup(link.CgroupOptions{Path: e.cg.Path, Attach: ebpf.AttachCGroupInet4Connect, Program: d.DeferThenDeny4})
	if err != nil {
		t.Fatal(err)
	}
	marked := testutil.StartHelper(t, "l7client", clientArgs{Addr: "127.0.0.1:9999", Gate: gate,
		Steps: []string{"socket", "connect", "gate", "bind-listen"}}, testutil.HelperOptions{Netns: e.ns, Cgroup: e.cg})
	e.waitLive(t, deferred+1)

	// Everything that holds a module reference goes; then rmmod.
	l.Close()
	d.Close()
	e.close()
	e.conn.Close()
	start := time.Now()
	if err := Unload(10 * time.Second); err != nil {
		t.Fatal(err)
	}
	t.Logf("rmmod with %d live tracked sockets took %v", deferred+1, time.Since(start))
	if Loaded() {
		t.Fatal("module still loaded")
	}
	out, _ := testutil.Run("dmesg")
	if !strings.Contains(out, fmt.Sprintf("kmesh: unload: %d sockets back on plain TCP (%d connected to their original destination)", deferred+1, deferred)) {
		t.Fatalf("dmesg lacks the unload report:\n%s", out)
	}
	if err := os.WriteFile(gate, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	for i, h := range helpers {
		var res clientResult
		if err := h.Wait(&res); err != nil {
			t.Fatal(err)
		}
		// Deferred at connect (no SYN); after the unload the request reached
		// the original destination, without L7 routing.
		req := get("a.example", fmt.Sprintf("/unload/%d", i))
		wantEvents(t, res.Events, "connect=0", "snmp=0/0", fmt.Sprintf("send=%d", len(req)), "body=default")
	}
	var res clientResult
	if err := marked.Wait(&res); err != nil {
		t.Fatal(err)
	}
	wantEvents(t, res.Events, "connect=EPERM", "bind-listen=0")
	// loadModule's cleanup would unload again: load once more so it balances.
	if err := Load(modulePath(t), ""); err != nil {
		t.Fatal(err)
	}
}
