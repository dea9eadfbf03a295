//go:build vmguest

package l7

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/kmesh-go/kmesh/pkg/bpf"
	"github.com/kmesh-go/kmesh/pkg/dataplane"
	"github.com/kmesh-go/kmesh/pkg/kmod"
	"github.com/kmesh-go/kmesh/pkg/model"
	"github.com/kmesh-go/kmesh/pkg/probe"
	"github.com/kmesh-go/kmesh/pkg/testutil"
)

// Guest-only tests (VM tier, Debian 6.12 with kmesh.ko). The programs attach
// to the guest's cgroup2 root, as on a node; only sockets of the enrolled
// client namespace are meshed. Service VIPs (10.96.0.0/16, fd96::/64) are
// routed nowhere in the topology: a request that reaches a backend was
// routed by the kernel.

var (
	vipWeb   = netip.MustParseAddr("10.96.0.80")
	vipWeb6  = netip.MustParseAddr("fd96::80")
	vipTCP   = netip.MustParseAddr("10.96.0.90")
	vipSplit = netip.MustParseAddr("10.96.0.81")
)

const (
	httpPort = 8080
	echoPort = 9000
)

type knEnv struct {
	t      *testing.T
	topo   *testutil.Topology
	client *testutil.Host
	be     []*testutil.Host
	dp     *dataplane.Dataplane
	eng    *Engine
	mod    *kmod.Conn
	peers  map[string]chan string // backend id -> RemoteAddr of each request it served
	state  string
}

// newKnEnv loads kmesh.ko, opens the L4 dataplane and the kernel-native
// engine on the cgroup root, builds the topology (client + nbe backends each
// serving HTTP identity on 8080 and an identity/echo stream on 9000) and
// enrols the client namespace.
func newKnEnv(t *testing.T, nbe int) *knEnv {
	t.Helper()
	testutil.Privileged(t)
	path := os.Getenv("KMESH_KMOD_PATH")
	if path == "" {
		t.Fatal("KMESH_KMOD_PATH is not set (the VM harness sets it)")
	}
	e := &knEnv{t: t, peers: map[string]chan string{}, state: t.TempDir()}
	conn, err := kmod.Ensure(kmod.Options{ModulePath: path})
	if err != nil {
		t.Fatal(err)
	}
	e.mod = conn
	t.Cleanup(func() {
		conn.Close()
		if err := kmod.Unload(10 * time.Second); err != nil {
			t.Errorf("unloading kmesh.ko after the test: %v", err)
		}
	})
	e.topo = testutil.NewTopology(t)
	e.client = e.topo.AddHost("client")
	for i := 1; i <= nbe; i++ {
		h := e.topo.AddHost(fmt.Sprintf("be%d", i))
		e.be = append(e.be, h)
		e.serveHTTP(h, h.Name)
		testutil.ServeIdentity(t, h.NS.Listen(t, "tcp", fmt.Sprintf("[::]:%d", echoPort)), h.Name+"-tcp")
	}
	e.open()
	if err := e.eng.Apply(context.Background(), &model.Snapshot{Workloads: []model.Workload{{UID: "test/client", Name: "client",
		Healthy: true, Enrolment: &model.Enrolment{NetnsPath: e.client.NS.Path()}}}}); err != nil {
		t.Fatalf("enrolling the client: %v", err)
	}
	return e
}

func (e *knEnv) open() {
	e.t.Helper()
	mount, err := probe.Cgroup2Mount("")
	if err != nil {
		e.t.Fatal(err)
	}
	opts := bpf.Options{PinDir: filepath.Join(probe.DefaultBPFFS, testutil.UniqueName("kn-test-")), Cgroup: mount}
	dp, err := dataplane.Open(dataplane.Options{BPF: opts, StateDir: e.state})
	if err != nil {
		e.t.Fatal(err)
	}
	eng, err := Open(Options{Dataplane: dp, StateDir: e.state})
	if err != nil {
		dp.Close()
		e.t.Fatal(err)
	}
	e.dp, e.eng = dp, eng
	e.t.Cleanup(func() {
		eng.Close()
		dp.Close()
		if err := bpf.Uninstall(opts); err != nil {
			e.t.Errorf("uninstall: %v", err)
		}
	})
}

// serveHTTP answers every request with "<id>\n" (keep-alive allowed) and
// records the peer address it saw.
func (e *knEnv) serveHTTP(h *testutil.Host, id string) {
	ch := make(chan string, 100000)
	e.peers[id] = ch
	ln := h.NS.Listen(e.t, "tcp", fmt.Sprintf("[::]:%d", httpPort))
	srv := &http.Server{ReadHeaderTimeout: 10 * time.Second, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case ch <- r.RemoteAddr:
		default:
		}
		io.Copy(io.Discard, r.Body)
		io.WriteString(w, id+"\n")
	})}
	go srv.Serve(ln)
	e.t.Cleanup(func() { srv.Close() })
}

// cluster is a cluster of the given backends' HTTP (or echo) port.
func (e *knEnv) cluster(name string, port uint16, be ...int) model.Cluster {
	c := model.Cluster{Name: name}
	for _, i := range be {
		c.Endpoints = append(c.Endpoints, model.Endpoint{Address: netip.AddrPortFrom(e.be[i].IP4, port), Weight: 1})
	}
	return c
}

func (e *knEnv) apply(s *model.Snapshot) {
	e.t.Helper()
	if err := e.eng.ApplyL7(context.Background(), s); err != nil {
		e.t.Fatalf("ApplyL7: %v", err)
	}
}

// dial connects from the client namespace (the test process's socket, in the
// enrolled netns).
func (e *knEnv) dial(addr string) (net.Conn, error) {
	var c net.Conn
	err := e.client.NS.Do(func() (err error) {
		c, err = net.DialTimeout("tcp", addr, 10*time.Second)
		return err
	})
	if c != nil {
		c.SetDeadline(time.Now().Add(30 * time.Second))
	}
	return c, err
}

// request sends one HTTP/1.1 request on c and returns the response body.
func request(c net.Conn, br *bufio.Reader, host, path string, hdr ...string) (string, error) {
	var b strings.Builder
	fmt.Fprintf(&b, "GET %s HTTP/1.1\r\nHost: %s\r\nUser-Agent: kn-test\r\n", path, host)
	for i := 0; i+1 < len(hdr); i += 2 {
		fmt.Fprintf(&b, "%s: %s\r\n", hdr[i], hdr[i+1])
	}
	b.WriteString("\r\n")
	if _, err := io.WriteString(c, b.String()); err != nil {
		return "", err
	}
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	return strings.TrimSpace(string(body)), err
}

// get makes one request on a new connection and returns the backend's id.
func (e *knEnv) get(addr, host, path string, hdr ...string) (string, error) {
	c, err := e.dial(addr)
	if err != nil {
		return "", err
	}
	defer c.Close()
	return request(c, bufio.NewReader(c), host, path, hdr...)
}

// command runs a program (curl, wget) in the client namespace.
func (e *knEnv) command(name string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	out, err := e.client.NS.Command(ctx, name, args...).CombinedOutput()
	return strings.TrimSpace(string(out)), err
}

func (e *knEnv) stats() map[string]uint64 {
	e.t.Helper()
	s, err := e.eng.Stats()
	if err != nil {
		e.t.Fatal(err)
	}
	return s
}

func (e *knEnv) moduleStats() kmod.Stats {
	e.t.Helper()
	s, err := e.mod.Stats()
	if err != nil {
		e.t.Fatal(err)
	}
	return s
}

// waitFor polls cond for up to 10 s.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func errnoOf(err error) syscall.Errno {
	var en syscall.Errno
	if errors.As(err, &en) {
		return en
	}
	return 0
}

func ap(a netip.Addr, port uint16) netip.AddrPort { return netip.AddrPortFrom(a, port) }
