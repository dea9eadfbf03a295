// Package waypoint tests dual-engine waypoints end to end with real
// proxies from Debian (HAProxy 2.6, nginx 1.22) as the waypoint: an enrolled
// client dials a service VIP, kmesh sends the connection to a waypoint
// instance with a PROXY protocol v2 header, the proxy routes by Host and
// path (or to the original destination from the header), and its own
// connects are load-balanced by kmesh. Host tier only (the VM images carry
// no proxies); the kernel side is also covered without proxies by
// pkg/dataplane's TestWaypoint, which runs in the VMs.
package waypoint

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"text/template"
	"time"

	"github.com/kmesh-go/kmesh/pkg/bpf"
	"github.com/kmesh-go/kmesh/pkg/bpf/bpftest"
	"github.com/kmesh-go/kmesh/pkg/dataplane"
	"github.com/kmesh-go/kmesh/pkg/model"
	"github.com/kmesh-go/kmesh/pkg/testutil"
)

func TestMain(m *testing.M) { testutil.HelperMain(m) }

// The mesh of these tests (the addresses are also in testdata/*.conf*).
var (
	webVIP    = netip.MustParseAddr("10.96.1.10")
	apiVIP    = netip.MustParseAddr("10.96.1.20")
	staticVIP = netip.MustParseAddr("10.96.1.30")
	wpVIP     = netip.MustParseAddr("10.96.1.100")
)

const (
	webKey    = "default/web"
	apiKey    = "default/api"
	staticKey = "default/static"
	wpKey     = "default/waypoint"
	wpPort    = 15008
	appPort   = 8080
)

type env struct {
	t        *testing.T
	dp       *dataplane.Dataplane
	attach   *testutil.Cgroup
	clientCg *testutil.Cgroup
	client   *testutil.Host
	backends map[string]*testutil.Host // web1, web2, api1, static1
	wps      []*testutil.Host
	wpCgs    []*testutil.Cgroup
}

// newEnv builds the topology, the backends (HTTP servers answering with
// their name and what they saw), the dataplane and n waypoint hosts (the
// proxies are started by the tests).
func newEnv(t *testing.T, n int) *env {
	testutil.Privileged(t)
	for _, bin := range []string{"haproxy", "nginx"} {
		if _, err := exec.LookPath(bin); err != nil {
			t.Fatalf("%s is not installed (make deps installs it)", bin)
		}
	}
	e := &env{t: t, backends: map[string]*testutil.Host{}}
	e.attach = testutil.NewCgroup(t)
	e.clientCg = e.attach.Child(t, "client-")
	topo := testutil.NewTopology(t)
	e.client = topo.AddHost("client")
	for _, name := range []string{"web1", "web2", "api1", "static1"} {
		h := topo.AddHost(name)
		e.backends[name] = h
		serveHTTP(t, h, name)
	}
	for i := 1; i <= n; i++ {
		e.wps = append(e.wps, topo.AddHost(fmt.Sprintf("wp%d", i)))
		e.wpCgs = append(e.wpCgs, e.attach.Child(t, fmt.Sprintf("wp%d-", i)))
	}
	dp, err := dataplane.Open(dataplane.Options{BPF: bpftest.Options(t, e.attach), StateDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { dp.Close() })
	e.dp = dp
	e.apply(nil)
	return e
}

// serveHTTP answers every request with "backend=<name> host=<Host>
// path=<path> peer=<client IP>" (the peer is the waypoint when one is in the
// path). Keep-alive is off so every request is a connection.
func serveHTTP(t *testing.T, h *testutil.Host, name string) {
	ln := h.NS.Listen(t, "tcp", fmt.Sprintf("[::]:%d", appPort))
	srv := &http.Server{ReadHeaderTimeout: 10 * time.Second, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		peer, _, _ := net.SplitHostPort(r.RemoteAddr)
		fmt.Fprintf(w, "backend=%s host=%s path=%s peer=%s\n", name, r.Host, r.URL.Path, netip.MustParseAddr(peer).Unmap())
	})}
	srv.SetKeepAlivesEnabled(false)
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
}

func svc(key string, vip netip.Addr, port, target uint16) model.Service {
	ns, name, _ := strings.Cut(key, "/")
	return model.Service{Key: key, Name: name, Namespace: ns, VIPs: []netip.Addr{vip},
		Ports: []model.ServicePort{{Name: "http", Port: port, TargetPort: target}}}
}

func workload(name string, h *testutil.Host, services ...string) model.Workload {
	w := model.Workload{UID: "uid-" + name, Name: name, Namespace: "default", Addresses: []netip.Addr{h.IP4}, Healthy: true,
		Services: map[string][]model.WorkloadPort{}}
	for _, s := range services {
		w.Services[s] = nil
	}
	return w
}

// snapshot: web (with the waypoint), api and static services, their
// backends, the waypoint service with every waypoint instance (enrolled by
// cgroup), and the enrolled client. mod edits it before it is applied.
func (e *env) snapshot() *model.Snapshot {
	web := svc(webKey, webVIP, 80, appPort)
	web.Waypoint = &model.WaypointRef{Service: wpKey, Port: wpPort}
	s := &model.Snapshot{Services: []model.Service{web, svc(apiKey, apiVIP, 80, appPort), svc(staticKey, staticVIP, 80, appPort),
		svc(wpKey, wpVIP, wpPort, wpPort)}}
	s.Workloads = append(s.Workloads,
		workload("web1", e.backends["web1"], webKey), workload("web2", e.backends["web2"], webKey),
		workload("api1", e.backends["api1"], apiKey), workload("static1", e.backends["static1"], staticKey))
	for i, h := range e.wps {
		w := workload(h.Name, h, wpKey)
		w.Enrolment = &model.Enrolment{CgroupPath: e.wpCgs[i].Path}
		s.Workloads = append(s.Workloads, w)
	}
	cl := workload("client", e.client)
	cl.Enrolment = &model.Enrolment{CgroupPath: e.clientCg.Path}
	s.Workloads = append(s.Workloads, cl)
	return s
}

func (e *env) apply(mod func(*model.Snapshot)) {
	e.t.Helper()
	s := e.snapshot()
	if mod != nil {
		mod(s)
	}
	if err := e.dp.Apply(context.Background(), s); err != nil {
		e.t.Fatal(err)
	}
}

// ---- proxies --------------------------------------------------------------

// proxy is a running waypoint instance.
type proxy struct {
	host *testutil.Host
	cmd  *testutil.Command
}

// render fills a testdata template (the files docs/waypoint.md quotes).
func render(t *testing.T, name string, data any) string {
	t.Helper()
	tmpl, err := template.ParseFiles(filepath.Join("testdata", name))
	if err != nil {
		t.Fatal(err)
	}
	var b strings.Builder
	if err := tmpl.Execute(&b, data); err != nil {
		t.Fatal(err)
	}
	return b.String()
}

// startHAProxy runs a private HAProxy (testdata/haproxy.cfg) as waypoint
// instance i, in its namespace and enrolled cgroup.
func (e *env) startHAProxy(i int) *proxy {
	e.t.Helper()
	dir := e.t.TempDir()
	cfg := filepath.Join(dir, "haproxy.cfg")
	if err := os.WriteFile(cfg, []byte(render(e.t, "haproxy.cfg", nil)), 0o600); err != nil {
		e.t.Fatal(err)
	}
	p := &proxy{host: e.wps[i]}
	p.cmd = testutil.StartCommand(e.t, testutil.HelperOptions{Netns: p.host.NS, Cgroup: e.wpCgs[i], Timeout: 10 * time.Minute},
		"haproxy", "-db", "-f", cfg)
	e.waitListening(p)
	return p
}

// startNginx runs a private nginx (testdata/nginx.conf) as waypoint instance i.
func (e *env) startNginx(i int) *proxy {
	e.t.Helper()
	dir := e.t.TempDir()
	cfg := filepath.Join(dir, "nginx.conf")
	if err := os.WriteFile(cfg, []byte(render(e.t, "nginx.conf", struct{ Dir string }{dir})), 0o600); err != nil {
		e.t.Fatal(err)
	}
	p := &proxy{host: e.wps[i]}
	p.cmd = testutil.StartCommand(e.t, testutil.HelperOptions{Netns: p.host.NS, Cgroup: e.wpCgs[i], Timeout: 10 * time.Minute},
		"nginx", "-p", dir, "-e", filepath.Join(dir, "error.log"), "-c", cfg)
	e.waitListening(p)
	return p
}

func (e *env) waitListening(p *proxy) {
	e.t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for {
		out, _ := testutil.Run("ip", "netns", "exec", p.host.NS.Name, "ss", "-Hltn", fmt.Sprintf("sport = :%d", wpPort))
		if strings.Contains(out, "LISTEN") {
			return
		}
		if done, err := p.cmd.Exited(); done || time.Now().After(deadline) {
			e.t.Fatalf("waypoint on %s not listening (exited: %v %v): %s", p.host.Name, done, err, p.cmd.Output())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// logLine is one "waypoint k=v ..." access log line.
type logLine map[string]string

// logs parses the proxy's access log lines.
func (p *proxy) logs() []logLine {
	var out []logLine
	for _, l := range strings.Split(p.cmd.Output(), "\n") {
		f := strings.Fields(l)
		if len(f) == 0 || f[0] != "waypoint" {
			continue
		}
		ll := logLine{}
		for _, kv := range f[1:] {
			k, v, _ := strings.Cut(kv, "=")
			ll[k] = v
		}
		out = append(out, ll)
	}
	return out
}

// logFor waits for the access log line of the connection from client.
func (p *proxy) logFor(t *testing.T, client string) logLine {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		for _, l := range p.logs() {
			if l["client"] == client {
				return l
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("no access log line of %s from client %s; output:\n%s", p.host.Name, client, p.cmd.Output())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// ---- client -----------------------------------------------------------------

type request struct {
	Host, Path string
}

type getArgs struct {
	URL      string // http://VIP:port
	Requests []request
}

type response struct {
	Local string // the client's address:port of this request's connection
	Body  string
	Code  int
	Err   string
}

func init() {
	testutil.RegisterHelper("http-get", func(raw json.RawMessage) (any, error) {
		var a getArgs
		if err := json.Unmarshal(raw, &a); err != nil {
			return nil, err
		}
		var out []response
		for _, rq := range a.Requests {
			out = append(out, get(a.URL, rq))
		}
		return out, nil
	})
}

// get makes one request on a connection of its own and records its local
// address, which the waypoint must report as the true client.
func get(base string, rq request) (r response) {
	tr := &http.Transport{DisableKeepAlives: true, DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
		c, err := (&net.Dialer{Timeout: 3 * time.Second}).DialContext(ctx, network, addr)
		if err == nil {
			r.Local = c.LocalAddr().String()
		}
		return c, err
	}}
	defer tr.CloseIdleConnections()
	cl := &http.Client{Transport: tr, Timeout: 5 * time.Second}
	req, err := http.NewRequest(http.MethodGet, base+rq.Path, nil)
	if err != nil {
		r.Err = err.Error()
		return r
	}
	req.Host = rq.Host
	resp, err := cl.Do(req)
	if err != nil {
		var errno syscall.Errno
		if errors.As(err, &errno) {
			r.Err = errno.Error()
		} else {
			r.Err = err.Error()
		}
		return r
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(bufio.NewReader(resp.Body))
	r.Code, r.Body = resp.StatusCode, strings.TrimSpace(string(b))
	if err != nil {
		r.Err = err.Error()
	}
	return r
}

// get runs requests from the enrolled client to the web VIP.
func (e *env) get(reqs ...request) []response {
	e.t.Helper()
	var out []response
	testutil.RunHelper(e.t, "http-get", getArgs{URL: fmt.Sprintf("http://%s", netip.AddrPortFrom(webVIP, 80)), Requests: reqs},
		testutil.HelperOptions{Netns: e.client.NS, Cgroup: e.clientCg, Timeout: 5 * time.Minute}, &out)
	return out
}

func repeat(rq request, n int) []request {
	out := make([]request, n)
	for i := range out {
		out[i] = rq
	}
	return out
}

// fields parses "k=v k=v" (a backend's answer).
func fields(s string) map[string]string {
	out := map[string]string{}
	for _, kv := range strings.Fields(s) {
		k, v, _ := strings.Cut(kv, "=")
		out[k] = v
	}
	return out
}

// ---- the routing cases (shared by HAProxy and nginx) -----------------------

// checkRouting sends requests that the waypoint routes by Host and by path,
// and by default to the original destination, and checks where each landed,
// that it went through the waypoint, and the waypoint's log: the true client
// and the original destination, and the backend it chose.
func checkRouting(t *testing.T, e *env, p *proxy, logBackend map[string]string) {
	before, err := e.dp.Stats()
	if err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		rq   request
		want []string // acceptable backends
		kind string   // api, static, orig: the waypoint's route
	}{
		{request{Host: "api.example", Path: "/v1/items"}, []string{"api1"}, "api"},
		{request{Host: "web.example", Path: "/static/logo.png"}, []string{"static1"}, "static"},
		{request{Host: "web.example", Path: "/"}, []string{"web1", "web2"}, "orig"},
	}
	var reqs []request
	for _, c := range cases {
		reqs = append(reqs, repeat(c.rq, 4)...)
	}
	res := e.get(reqs...)
	seen := map[string]int{}
	for i, r := range res {
		c := cases[i/4]
		if r.Err != "" || r.Code != http.StatusOK {
			t.Fatalf("request %d (%+v): %+v; waypoint output:\n%s", i, c.rq, r, p.cmd.Output())
		}
		f := fields(r.Body)
		if !contains(c.want, f["backend"]) {
			t.Fatalf("request %d (%+v) landed on %q, want one of %v", i, c.rq, f["backend"], c.want)
		}
		seen[f["backend"]]++
		if f["peer"] != p.host.IP4.String() {
			t.Fatalf("request %d: the backend saw %s, want the waypoint %s", i, f["peer"], p.host.IP4)
		}
		l := p.logFor(t, r.Local)
		if l["orig"] != netip.AddrPortFrom(webVIP, 80).String() {
			t.Fatalf("request %d: waypoint logged orig=%s, want the VIP the client dialed (%s:80): %v", i, l["orig"], webVIP, l)
		}
		if l["status"] != "200" {
			t.Fatalf("request %d: waypoint logged %v", i, l)
		}
		for k, v := range map[string]string{"backend": logBackend[c.kind], "upstream": logBackend[c.kind+"-upstream"]} {
			if v != "" && l[k] != v {
				t.Fatalf("request %d (%s route): waypoint logged %s=%s, want %s: %v", i, c.kind, k, l[k], v, l)
			}
		}
	}
	t.Logf("backends reached: %v", seen)
	after, err := e.dp.Stats()
	if err != nil {
		t.Fatal(err)
	}
	// Every client connect went to the waypoint with a header; the
	// waypoint's connects to the original destination were exempt from the
	// waypoint (no loop), those to api and static plain load balancing.
	n := uint64(len(reqs))
	for s, want := range map[bpf.Stat]uint64{bpf.StatWaypointRedirect: n, bpf.StatWaypointHeader: n,
		bpf.StatWaypointExempt: 4, bpf.StatConnectLB: 8} {
		if d := after[s] - before[s]; d < want {
			t.Errorf("%s grew by %d, want >= %d", s, d, want)
		}
	}
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

func TestHAProxyWaypoint(t *testing.T) {
	e := newEnv(t, 1)
	p := e.startHAProxy(0)
	checkRouting(t, e, p, map[string]string{
		"api": "api", "api-upstream": "10.96.1.20:80",
		"static": "static", "static-upstream": "10.96.1.30:80",
		"orig": "original-destination", "orig-upstream": "10.96.1.10:80",
	})
}

func TestNginxWaypoint(t *testing.T) {
	e := newEnv(t, 1)
	p := e.startNginx(0)
	checkRouting(t, e, p, map[string]string{
		"api-upstream": "10.96.1.20:80", "static-upstream": "10.96.1.30:80", "orig-upstream": "10.96.1.10:80",
	})
}

// TestWaypointInstances: two HAProxy instances share the load; an instance
// the control plane marks unhealthy or removes gets nothing; an instance
// that died but is still listed refuses the connects that pick it (kmesh
// does no health checking of its own); with none left, connects fail at
// once with ECONNREFUSED.
func TestWaypointInstances(t *testing.T) {
	e := newEnv(t, 2)
	ps := []*proxy{e.startHAProxy(0), e.startHAProxy(1)}
	wpOf := map[string]string{e.wps[0].IP4.String(): "wp1", e.wps[1].IP4.String(): "wp2"}
	def := request{Host: "web.example", Path: "/"}
	spread := func(res []response) (per map[string]int, errs map[string]int) {
		per, errs = map[string]int{}, map[string]int{}
		for _, r := range res {
			if r.Err != "" {
				errs[r.Err]++
				continue
			}
			per[wpOf[fields(r.Body)["peer"]]]++
		}
		return per, errs
	}
	setWp2 := func(mod func(w *model.Workload) bool) {
		e.apply(func(s *model.Snapshot) {
			out := s.Workloads[:0]
			for _, w := range s.Workloads {
				if w.UID != "uid-wp2" || mod(&w) {
					out = append(out, w)
				}
			}
			s.Workloads = out
		})
	}

	n := 40
	per, errs := spread(e.get(repeat(def, n)...))
	t.Logf("both healthy: %v %v", per, errs)
	if len(errs) != 0 || per["wp1"] == 0 || per["wp2"] == 0 || per["wp1"]+per["wp2"] != n {
		t.Fatalf("two instances: %v errors %v, want both used", per, errs)
	}
	for i, p := range ps {
		if len(p.logs()) == 0 {
			t.Errorf("instance %d logged nothing", i+1)
		}
	}

	setWp2(func(w *model.Workload) bool { w.Healthy = false; return true })
	per, errs = spread(e.get(repeat(def, 20)...))
	if len(errs) != 0 || per["wp1"] != 20 {
		t.Fatalf("wp2 unhealthy: %v errors %v, want all 20 on wp1", per, errs)
	}
	setWp2(func(*model.Workload) bool { return false })
	per, errs = spread(e.get(repeat(def, 20)...))
	if len(errs) != 0 || per["wp1"] != 20 {
		t.Fatalf("wp2 removed: %v errors %v, want all 20 on wp1", per, errs)
	}

	// wp2 listed and healthy again, but its proxy is dead: the connects
	// that pick it are refused by its host (nothing listens), the others
	// succeed through wp1. This lasts until the control plane reacts.
	e.apply(nil)
	ps[1].cmd.Kill()
	per, errs = spread(e.get(repeat(def, n)...))
	t.Logf("wp2 dead but listed: %v %v", per, errs)
	if per["wp2"] != 0 || per["wp1"] == 0 || errs["connection refused"] == 0 || per["wp1"]+errs["connection refused"] != n {
		t.Fatalf("wp2 dead but listed: %v errors %v, want refusals and the rest on wp1", per, errs)
	}

	// None healthy: ECONNREFUSED at connect(), never a hang.
	e.apply(func(s *model.Snapshot) {
		for i := range s.Workloads {
			if strings.HasPrefix(s.Workloads[i].UID, "uid-wp") {
				s.Workloads[i].Healthy = false
			}
		}
	})
	start := time.Now()
	per, errs = spread(e.get(repeat(def, 10)...))
	if len(per) != 0 || errs["connection refused"] != 10 {
		t.Fatalf("no healthy instance: %v errors %v, want 10 x connection refused", per, errs)
	}
	t.Logf("10 refused requests (helper start included): %v", time.Since(start))
}

// TestDocsQuoteConfigs: docs/waypoint.md shows exactly the configurations
// these tests run.
func TestDocsQuoteConfigs(t *testing.T) {
	doc, err := os.ReadFile("../../../docs/waypoint.md")
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"haproxy.cfg", "nginx.conf"} {
		b, err := os.ReadFile(filepath.Join("testdata", name))
		if err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(string(doc), string(b)) {
			t.Errorf("docs/waypoint.md does not quote testdata/%s verbatim", name)
		}
	}
}
