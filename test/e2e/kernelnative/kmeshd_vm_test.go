//go:build vmguest

// The real kmeshd binary in kernel-native mode in the VM tier (Debian 6.12
// with kmesh.ko): Envoy config from the embedded control plane's YAML or an
// external ADS server drives in-kernel HTTP routing between network
// namespaces, with no proxy on the path.

package kernelnative

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/kmesh-go/kmesh/pkg/controlplane"
	"github.com/kmesh-go/kmesh/pkg/kmod"
	"github.com/kmesh-go/kmesh/pkg/probe"
	"github.com/kmesh-go/kmesh/pkg/testutil"
)

func TestMain(m *testing.M) { testutil.HelperMain(m) }

const kmeshdBin = "/usr/local/bin/kmeshd" // suites.txt: kn gobin ./daemon/kmeshd

type topo struct {
	client *testutil.Host
	be     []*testutil.Host
}

func newTopo(t *testing.T) *topo {
	t.Helper()
	testutil.Privileged(t)
	tp := testutil.NewTopology(t)
	e := &topo{client: tp.AddHost("client")}
	for i := 1; i <= 2; i++ {
		h := tp.AddHost(fmt.Sprintf("be%d", i))
		ln := h.NS.Listen(t, "tcp", "[::]:8080")
		id := h.Name
		srv := &http.Server{ReadHeaderTimeout: 10 * time.Second, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			io.WriteString(w, id+"\n")
		})}
		go srv.Serve(ln)
		t.Cleanup(func() { srv.Close() })
		e.be = append(e.be, h)
	}
	return e
}

// meshYAML: two services with an HTTP listener on echo's VIP. "/" goes to
// root, /v2/ to v2, Host v1.example to v1.
func (e *topo) meshYAML(root string) string {
	return fmt.Sprintf(`services:
  - name: echo
    vips: [10.96.1.10]
    ports: [{port: 80, targetPort: 8080}]
  - name: v1
    vips: [10.96.1.11]
    ports: [{port: 80, targetPort: 8080}]
    cluster: {maxConnections: 50, connectTimeout: 2s}
  - name: v2
    vips: [10.96.1.12]
    ports: [{port: 80, targetPort: 8080}]
workloads:
  - name: be1
    addresses: [%s]
    services: [{service: echo}, {service: v1}]
  - name: be2
    addresses: [%s]
    services: [{service: echo}, {service: v2}]
  - name: client
    enrolment: {netns: %s}
http:
  - name: web
    address: 10.96.1.10
    port: 80
    virtualHosts:
      - name: v1
        domains: [v1.example]
        routes:
          - match: {prefix: /}
            to: [{service: v1}]
      - name: all
        domains: ["*"]
        routes:
          - match: {prefix: /v2/}
            to: [{service: v2}]
          - match: {prefix: /}
            to: [{service: %s}]
`, e.be[0].IP4, e.be[1].IP4, e.client.NS.Path(), root)
}

// syncBuf collects a process's output.
type syncBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuf) Write(p []byte) (int, error) { s.mu.Lock(); defer s.mu.Unlock(); return s.b.Write(p) }
func (s *syncBuf) String() string              { s.mu.Lock(); defer s.mu.Unlock(); return s.b.String() }

type kmeshd struct {
	t      *testing.T
	cmd    *exec.Cmd
	log    *syncBuf
	done   chan error
	common []string // --pin-dir, --state-dir: also for uninstall
}

// startKmeshd runs the kmeshd binary in kernel-native mode with args.
func startKmeshd(t *testing.T, args ...string) *kmeshd {
	t.Helper()
	pin := filepath.Join(probe.DefaultBPFFS, testutil.UniqueName("kn-e2e-"))
	k := &kmeshd{t: t, log: &syncBuf{}, done: make(chan error, 1),
		common: []string{"--pin-dir", pin, "--state-dir", filepath.Join(t.TempDir(), "state")}}
	k.start(args...)
	t.Cleanup(func() {
		k.stop()
		out, err := exec.Command(kmeshdBin, append([]string{"uninstall"}, k.common...)...).CombinedOutput()
		if err != nil {
			t.Errorf("kmeshd uninstall: %v: %s", err, out)
		}
		if err := kmod.Unload(10 * time.Second); err != nil {
			t.Errorf("kmesh.ko still in use after uninstall: %v", err)
		}
		if t.Failed() {
			t.Logf("kmeshd log:\n%s", k.log.String())
		}
	})
	return k
}

// start (re)starts the daemon on the same pin and state directories.
func (k *kmeshd) start(args ...string) {
	k.t.Helper()
	full := append([]string{"--mode=kernel-native", "--kmod-path", os.Getenv("KMESH_KMOD_PATH"),
		"--admin-address", "off", "--metrics-address", "off", "--report-interval", "0"}, k.common...)
	full = append(full, args...)
	k.cmd = exec.Command(kmeshdBin, full...)
	k.cmd.Stdout, k.cmd.Stderr = k.log, k.log
	if err := k.cmd.Start(); err != nil {
		k.t.Fatalf("starting kmeshd: %v", err)
	}
	k.done = make(chan error, 1)
	go func() { k.done <- k.cmd.Wait() }()
}

func (k *kmeshd) stop() {
	if k.cmd.ProcessState != nil {
		return
	}
	k.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case err := <-k.done:
		k.done <- err
	case <-time.After(30 * time.Second):
		k.cmd.Process.Kill()
		k.done <- <-k.done
	}
}

// curl runs curl in the client namespace and returns the body.
func (e *topo) curl(args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	out, err := e.client.NS.Command(ctx, "curl", append([]string{"-sS", "--max-time", "5"}, args...)...).CombinedOutput()
	return strings.TrimSpace(string(out)), err
}

func waitFor(t *testing.T, what string, k *kmeshd, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(90 * time.Second)
	for !cond() {
		select {
		case err := <-k.done:
			k.done <- err
			t.Fatalf("kmeshd exited while waiting for %s: %v\n%s", what, err, k.log.String())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s\n%s", what, k.log.String())
		}
		time.Sleep(200 * time.Millisecond)
	}
}

func (e *topo) expect(t *testing.T, want string, args ...string) {
	t.Helper()
	if got, err := e.curl(args...); err != nil || got != want {
		t.Errorf("curl %s: %q (%v), want %s", strings.Join(args, " "), got, err, want)
	}
}

// TestKmeshdEmbeddedControlPlane: kmeshd --mode=kernel-native on a YAML file
// (the embedded control plane serves it as Envoy xDS), routes by Host and
// path, a live edit applies to new connections, a bad edit is rejected and
// the last good config keeps serving, SIGTERM leaves the kernel serving and
// uninstall removes everything (kmesh.ko can be unloaded).
func TestKmeshdEmbeddedControlPlane(t *testing.T) {
	e := newTopo(t)
	file := filepath.Join(t.TempDir(), "mesh.yaml")
	if err := os.WriteFile(file, []byte(e.meshYAML("v1")), 0o644); err != nil {
		t.Fatal(err)
	}
	k := startKmeshd(t, "--config", file, "--xds-listen", "127.0.0.1:0")
	web := "http://10.96.1.10/"
	waitFor(t, "kmeshd to route the HTTP listener", k, func() bool { got, _ := e.curl(web); return got == "be1" })
	e.expect(t, "be1", "-H", "Host: v1.example", web+"x")
	e.expect(t, "be2", web+"v2/items")
	e.expect(t, "be1", web)
	e.expect(t, "be2", "http://10.96.1.12/") // a TCP listener: balanced at connect()
	e.expect(t, "be1", "http://10.96.1.11/")

	// Live edit: "/" now goes to v2.
	if err := os.WriteFile(file+".tmp", []byte(e.meshYAML("v2")), 0o644); err != nil {
		t.Fatal(err)
	}
	os.Rename(file+".tmp", file)
	waitFor(t, "the edit", k, func() bool { got, _ := e.curl(web); return got == "be2" })
	e.expect(t, "be1", "-H", "Host: v1.example", web)

	// Bad edit: rejected with file:line:field; the last good config serves.
	bad := strings.Replace(e.meshYAML("v1"), "prefix: /v2/", "prefix: v2", 1)
	os.WriteFile(file+".tmp", []byte(bad), 0o644)
	os.Rename(file+".tmp", file)
	waitFor(t, "the rejection", k, func() bool { return strings.Contains(k.log.String(), "config rejected") })
	if l := k.log.String(); !strings.Contains(l, "must start with /") {
		t.Errorf("the rejection does not say why:\n%s", l)
	}
	time.Sleep(300 * time.Millisecond)
	e.expect(t, "be2", web)

	// SIGTERM: the pinned programs and tables keep serving.
	k.stop()
	if err := <-k.done; err != nil {
		t.Fatalf("kmeshd exit: %v", err)
	}
	k.done <- nil
	e.expect(t, "be2", web)
	e.expect(t, "be1", "-H", "Host: v1.example", web)

	// Restart on the same pins: a keep-alive connection opened before keeps
	// working, the new daemon adopts the tables and swaps its programs in
	// (the router through the module's atomic update), new connections are
	// routed throughout.
	var ka net.Conn
	if err := e.client.NS.Do(func() (err error) { ka, err = net.DialTimeout("tcp", "10.96.1.10:80", 10*time.Second); return err }); err != nil {
		t.Fatal(err)
	}
	defer ka.Close()
	ka.SetDeadline(time.Now().Add(2 * time.Minute))
	kaGet := func() string {
		t.Helper()
		if _, err := io.WriteString(ka, "GET / HTTP/1.1\r\nHost: x\r\n\r\n"); err != nil {
			t.Fatal(err)
		}
		resp, err := http.ReadResponse(bufioReader(ka), nil)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return strings.TrimSpace(string(b))
	}
	if got := kaGet(); got != "be2" {
		t.Fatalf("keep-alive connection before the restart: %q", got)
	}
	// (A file that does not load stops kmeshd at start: put the good one back.)
	if err := os.WriteFile(file, []byte(e.meshYAML("v2")), 0o644); err != nil {
		t.Fatal(err)
	}
	// New connections are routed all through the restart: a request every
	// 50 ms, each on a new connection, none may fail.
	stopLoop := make(chan struct{})
	loopDone := make(chan [2]int)
	go func() {
		ok, failed := 0, 0
		for {
			select {
			case <-stopLoop:
				loopDone <- [2]int{ok, failed}
				return
			case <-time.After(50 * time.Millisecond):
			}
			if got, err := e.get("10.96.1.10:80"); err == nil && got == "be2" {
				ok++
			} else {
				failed++
				t.Logf("request during the restart: %q %v", got, err)
			}
		}
	}()
	k.start("--config", file, "--xds-listen", "127.0.0.1:0")
	waitFor(t, "the restarted kmeshd to apply the config", k, func() bool {
		return strings.Count(k.log.String(), "kernel-native programs attached") >= 2
	})
	time.Sleep(2 * time.Second)
	close(stopLoop)
	counts := <-loopDone
	if counts[1] != 0 || counts[0] == 0 {
		t.Errorf("during the restart %d requests succeeded and %d failed; want none failed", counts[0], counts[1])
	}
	t.Logf("restart: %d requests on new connections, none failed", counts[0])
	e.expect(t, "be2", web)
	e.expect(t, "be1", "-H", "Host: v1.example", web)
	if got := kaGet(); got != "be2" {
		t.Fatalf("keep-alive connection across the restart: %q", got)
	}
	if !regexp.MustCompile(`kernel-native programs loaded".* adopted_maps=[1-9][0-9]* generation=[1-9]`).MatchString(k.log.String()) {
		t.Errorf("the restarted daemon did not adopt the pinned tables:\n%s", k.log.String())
	}
}

// TestKmeshdExternalADS: the same routing from an external ADS server
// (--xds-address), here pkg/controlplane's server run by the test.
func TestKmeshdExternalADS(t *testing.T) {
	e := newTopo(t)
	file := filepath.Join(t.TempDir(), "mesh.yaml")
	if err := os.WriteFile(file, []byte(e.meshYAML("v2")), 0o644); err != nil {
		t.Fatal(err)
	}
	srv := controlplane.New(controlplane.Options{Listen: "127.0.0.1:0", ConfigFile: file, NodeName: "guest",
		Logger: slog.New(slog.DiscardHandler)})
	ctx, cancel := context.WithCancel(context.Background())
	ready := make(chan string, 1)
	done := make(chan error, 1)
	go func() { done <- srv.Run(ctx, ready) }()
	t.Cleanup(func() { cancel(); <-done })
	var addr string
	select {
	case addr = <-ready:
	case err := <-done:
		t.Fatal(err)
	}
	const metrics = "127.0.0.1:15921"
	k := startKmeshd(t, "--xds-address", addr, "--metrics-address", metrics)
	waitFor(t, "kmeshd to route from the external server", k, func() bool { got, _ := e.curl("http://10.96.1.10/"); return got == "be2" })
	e.expect(t, "be1", "-H", "Host: v1.example", "http://10.96.1.10/")
	e.expect(t, "be2", "http://10.96.1.10/v2/")
	if !strings.Contains(k.log.String(), "kernel-native config applied") {
		t.Errorf("no apply in the log:\n%s", k.log.String())
	}
	// kmesh.ko's counters, read over generic netlink, are metrics: the
	// requests above were parsed, decided and redirected by the module.
	resp, err := http.Get("http://" + metrics + "/stats/prometheus")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	for _, c := range []string{"parsed", "decisions", "redirects"} {
		m := regexp.MustCompile(`(?m)^kmesh_kmod_events_total\{counter="` + c + `"\} ([0-9.e+]+)$`).FindSubmatch(body)
		if m == nil || string(m[1]) == "0" {
			t.Errorf("kmesh_kmod_events_total{counter=%q}: %q; metrics:\n%s", c, m, body)
		}
	}
}

// TestKmeshdRefusesWithoutModule: kernel-native mode with kmesh.ko neither
// loaded nor given (--kmod-path) stops kmeshd with exit 1 and the reason;
// never a silent fallback to dual-engine.
func TestKmeshdRefusesWithoutModule(t *testing.T) {
	testutil.Privileged(t)
	if kmod.Loaded() {
		t.Fatal("kmesh.ko is loaded")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	model := filepath.Join(t.TempDir(), "m.yaml")
	os.WriteFile(model, []byte("{}\n"), 0o644)
	cmd := exec.CommandContext(ctx, kmeshdBin, "--mode=kernel-native", "--model-file", model,
		"--pin-dir", filepath.Join(probe.DefaultBPFFS, testutil.UniqueName("kn-refuse-")), "--state-dir", t.TempDir(),
		"--admin-address", "off", "--metrics-address", "off")
	out, err := cmd.CombinedOutput()
	var ee *exec.ExitError
	if !errorsAs(err, &ee) || ee.ExitCode() == 0 {
		t.Fatalf("kmeshd: %v, want a non-zero exit\n%s", err, out)
	}
	if !strings.Contains(string(out), "kmesh.ko is not loaded and no module path was given") {
		t.Fatalf("kmeshd does not say what is missing:\n%s", out)
	}
	t.Logf("exit %d: %s", ee.ExitCode(), bytes.TrimSpace(out))
}

var bufReaders sync.Map // net.Conn -> *bufio.Reader

func bufioReader(c net.Conn) *bufio.Reader {
	r, _ := bufReaders.LoadOrStore(c, bufio.NewReader(c))
	return r.(*bufio.Reader)
}

// get makes one request on a new connection from the client namespace.
func (e *topo) get(addr string) (string, error) {
	var c net.Conn
	if err := e.client.NS.Do(func() (err error) { c, err = net.DialTimeout("tcp", addr, 5*time.Second); return err }); err != nil {
		return "", err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.WriteString(c, "GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"); err != nil {
		return "", err
	}
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return strings.TrimSpace(string(b)), err
}

func errorsAs(err error, target **exec.ExitError) bool {
	e, ok := err.(*exec.ExitError)
	if ok {
		*target = e
	}
	return ok
}
