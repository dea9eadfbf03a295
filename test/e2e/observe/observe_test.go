// Package observe tests what operators see of a running daemon: Istio metrics
// from real connections, the access log, readiness, the admin API's binding,
// and kmeshctl's dumps of the real maps.
package observe

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	pmodel "github.com/prometheus/common/model"

	"github.com/kmesh-go/kmesh/pkg/admin"
	"github.com/kmesh-go/kmesh/pkg/bpf/bpftest"
	"github.com/kmesh-go/kmesh/pkg/daemon"
	"github.com/kmesh-go/kmesh/pkg/dataplane"
	"github.com/kmesh-go/kmesh/pkg/model"
	"github.com/kmesh-go/kmesh/pkg/testutil"
)

func TestMain(m *testing.M) { testutil.HelperMain(m) }

const (
	svcKey  = "shop/web.shop.svc.cluster.local"
	svcHost = "web.shop.svc.cluster.local"
)

var vip = netip.MustParseAddr("10.96.0.30")

// rig is a running daemon (in-process, the real dataplane) over a topology
// with an enrolled client and three backends.
type rig struct {
	t        *testing.T
	client   *testutil.Cgroup
	cl       *testutil.Host
	be       []*testutil.Host
	admin    string
	metrics  string
	log      *syncBuffer
	release  chan struct{} // closed: the source applies its snapshot
	snapshot *model.Snapshot
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}
func (s *syncBuffer) String() string { s.mu.Lock(); defer s.mu.Unlock(); return s.b.String() }

func newRig(t *testing.T, holdFirstSync bool, reportEvery time.Duration) *rig {
	t.Helper()
	testutil.Privileged(t)
	r := &rig{t: t, log: &syncBuffer{}, release: make(chan struct{})}
	attach := testutil.NewCgroup(t)
	r.client = attach.Child(t, "client-")
	topo := testutil.NewTopology(t)
	r.cl = topo.AddHost("client")
	for i := 1; i <= 3; i++ {
		h := topo.AddHost(fmt.Sprintf("web-%d", i))
		testutil.ServeIdentity(t, h.NS.Listen(t, "tcp", "[::]:8080"), h.Name)
		r.be = append(r.be, h)
	}
	r.snapshot = &model.Snapshot{Version: "obs-1",
		Services: []model.Service{{Key: svcKey, Name: "web", Namespace: "shop", Hostname: svcHost,
			VIPs: []netip.Addr{vip}, Ports: []model.ServicePort{{Port: 80, TargetPort: 8080}}}},
		Workloads: []model.Workload{{UID: "uid-client", Name: "client", Namespace: "frontend", Healthy: true,
			Addresses: []netip.Addr{r.cl.IP4}, Enrolment: &model.Enrolment{CgroupPath: r.client.Path}}},
	}
	for _, h := range r.be {
		r.snapshot.Workloads = append(r.snapshot.Workloads, model.Workload{UID: "uid-" + h.Name, Name: h.Name,
			Namespace: "shop", Healthy: true, Addresses: []netip.Addr{h.IP4},
			Services: map[string][]model.WorkloadPort{svcKey: nil}})
	}
	if !holdFirstSync {
		close(r.release)
	}
	src := daemon.SourceFunc(func(ctx context.Context, dp dataplane.API) error {
		select {
		case <-r.release:
		case <-ctx.Done():
			return nil
		}
		return dp.Apply(ctx, r.snapshot)
	})
	bo := bpftest.Options(t, attach)
	obs := daemon.TestObservability()
	obs.AccessLog, obs.AccessLogOutput = true, r.log
	listening := make(chan struct{})
	obs.OnListening = func(a, m net.Addr) { r.admin, r.metrics = a.String(), m.String(); close(listening) }
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- daemon.Run(ctx, daemon.Options{BPFFS: bo.BPFFS, PinDir: bo.PinDir, Cgroup: bo.Cgroup, StateDir: t.TempDir(),
			ReportInterval: reportEvery, Source: src, Observability: obs})
	}()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("daemon: %v", err)
		}
	})
	select {
	case <-listening:
	case err := <-done:
		t.Fatalf("daemon stopped: %v", err)
	case <-time.After(30 * time.Second):
		t.Fatal("daemon did not start listening within 30 s")
	}
	return r
}

func (r *rig) waitReady() {
	r.t.Helper()
	c, _ := admin.NewClient(r.admin)
	deadline := time.Now().Add(20 * time.Second)
	for {
		var s string
		if err := c.Get(context.Background(), "/ready", &s); err == nil {
			return
		} else if time.Now().After(deadline) {
			r.t.Fatalf("not ready after 20 s: %v", err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// scrape returns every sample of a metric family as label-set -> value.
func (r *rig) scrape(name string) map[string]float64 {
	r.t.Helper()
	resp, err := http.Get("http://" + r.metrics + "/stats/prometheus")
	if err != nil {
		r.t.Fatal(err)
	}
	defer resp.Body.Close()
	p := expfmt.NewTextParser(pmodel.UTF8Validation)
	fams, err := p.TextToMetricFamilies(resp.Body)
	if err != nil {
		r.t.Fatal(err)
	}
	out := map[string]float64{}
	fam := fams[name]
	if fam == nil {
		return out
	}
	for _, m := range fam.Metric {
		out[labelString(m.Label)] = value(m)
	}
	return out
}

func labelString(ls []*dto.LabelPair) string {
	parts := make([]string, 0, len(ls))
	for _, l := range ls {
		parts = append(parts, l.GetName()+"="+l.GetValue())
	}
	return strings.Join(parts, ",")
}

func value(m *dto.Metric) float64 {
	switch {
	case m.Counter != nil:
		return m.Counter.GetValue()
	case m.Gauge != nil:
		return m.Gauge.GetValue()
	}
	return 0
}

func sum(m map[string]float64, must ...string) float64 {
	var s float64
next:
	for k, v := range m {
		for _, want := range must {
			if !strings.Contains(k, want) {
				continue next
			}
		}
		s += v
	}
	return s
}

// waitFor polls cond (bounded): the telemetry pipeline is asynchronous.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after 30 s waiting for %s", what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// sendArgs: connect Count times to Addr; on each connection read the
// identity line, send Payload bytes, read them back, close.
type sendArgs struct {
	Addr    string
	Count   int
	Payload int
	// Hold keeps one connection open, sending Payload bytes every 200 ms,
	// for this long (long-lived connection).
	Hold time.Duration
}

type sendResult struct {
	OK, Failed int
	Errors     []string
}

func init() {
	testutil.RegisterHelper("send", func(raw json.RawMessage) (any, error) {
		var a sendArgs
		if err := json.Unmarshal(raw, &a); err != nil {
			return nil, err
		}
		var res sendResult
		for i := 0; i < a.Count; i++ {
			if err := sendOnce(a); err != nil {
				res.Failed++
				if len(res.Errors) < 5 {
					res.Errors = append(res.Errors, err.Error())
				}
				continue
			}
			res.OK++
		}
		return res, nil
	})
}

func sendOnce(a sendArgs) error {
	c, err := net.DialTimeout("tcp", a.Addr, 5*time.Second)
	if err != nil {
		return err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(a.Hold + 20*time.Second))
	br := bufio.NewReader(c)
	if _, err := br.ReadString('\n'); err != nil {
		return err
	}
	payload := bytes.Repeat([]byte("k"), a.Payload)
	rounds := 1
	if a.Hold > 0 {
		rounds = int(a.Hold / (200 * time.Millisecond))
	}
	buf := make([]byte, a.Payload)
	for i := 0; i < rounds; i++ {
		if _, err := c.Write(payload); err != nil {
			return err
		}
		if _, err := io.ReadFull(br, buf); err != nil {
			return err
		}
		if a.Hold > 0 {
			time.Sleep(200 * time.Millisecond)
		}
	}
	return nil
}

// TestIstioMetricsFromRealConnections: 100 connections through the VIP raise
// istio_tcp_connections_opened_total (and, once closed, closed_total) by
// exactly 100 under the right labels, byte counters match what was sent
// within 1 %, and each close is one access-log line.
func TestIstioMetricsFromRealConnections(t *testing.T) {
	r := newRig(t, false, 0)
	r.waitReady()
	const conns, payload = 100, 10_000
	var res sendResult
	testutil.RunHelper(t, "send", sendArgs{Addr: netip.AddrPortFrom(vip, 80).String(), Count: conns, Payload: payload},
		testutil.HelperOptions{Netns: r.cl.NS, Cgroup: r.client, Timeout: 2 * time.Minute}, &res)
	if res.OK != conns {
		t.Fatalf("connections: %+v", res)
	}
	labels := []string{"reporter=source", "source_workload=client", "source_workload_namespace=frontend",
		"destination_service=" + svcHost, "destination_service_name=web", "destination_service_namespace=shop",
		"destination_workload_namespace=shop", "request_protocol=tcp"}
	waitFor(t, "100 closed connections in metrics", func() bool {
		return sum(r.scrape("istio_tcp_connections_closed_total"), labels...) >= conns
	})
	opened := r.scrape("istio_tcp_connections_opened_total")
	if got := sum(opened, labels...); got != conns {
		t.Fatalf("opened_total with labels %v = %v, want exactly %d; all series: %v", labels, got, conns, opened)
	}
	if got := sum(opened); got != conns {
		t.Fatalf("opened_total over all series = %v, want exactly %d: %v", got, conns, opened)
	}
	perBackend := 0
	for _, h := range r.be {
		if sum(opened, "destination_workload="+h.Name+",") > 0 {
			perBackend++
		}
	}
	if perBackend != len(r.be) {
		t.Fatalf("destination_workload labels cover %d of %d backends: %v", perBackend, len(r.be), opened)
	}
	if got := sum(r.scrape("istio_tcp_connections_closed_total"), labels...); got != conns {
		t.Fatalf("closed_total = %v, want %d", got, conns)
	}
	// The client sent payload bytes per connection; it received the identity
	// line ("web-N\n", 6 bytes) plus the echo.
	wantSent, wantRecv := float64(conns*payload), float64(conns*(payload+6))
	sent, recv := sum(r.scrape("istio_tcp_sent_bytes_total"), labels...), sum(r.scrape("istio_tcp_received_bytes_total"), labels...)
	if d := (sent - wantSent) / wantSent; d < -0.01 || d > 0.01 {
		t.Errorf("sent bytes %v, want %v ±1%%", sent, wantSent)
	}
	if d := (recv - wantRecv) / wantRecv; d < -0.01 || d > 0.01 {
		t.Errorf("received bytes %v, want %v ±1%%", recv, wantRecv)
	}
	lines := 0
	for _, l := range strings.Split(strings.TrimSpace(r.log.String()), "\n") {
		var rec map[string]any
		if json.Unmarshal([]byte(l), &rec) == nil && rec["msg"] == "connection" && rec["original_dst"] == netip.AddrPortFrom(vip, 80).String() {
			lines++
		}
	}
	if lines != conns {
		t.Errorf("access log has %d connection lines for the VIP, want %d", lines, conns)
	}
}

// TestLongLivedConnectionReportsBeforeClose: with periodic records, bytes of
// a connection that stays open show up in the metrics while it is open.
func TestLongLivedConnectionReportsBeforeClose(t *testing.T) {
	r := newRig(t, false, 500*time.Millisecond)
	r.waitReady()
	h := testutil.StartHelper(t, "send", sendArgs{Addr: netip.AddrPortFrom(vip, 80).String(), Count: 1, Payload: 1000, Hold: 6 * time.Second},
		testutil.HelperOptions{Netns: r.cl.NS, Cgroup: r.client, Timeout: time.Minute})
	waitFor(t, "bytes of the open connection in istio_tcp_sent_bytes_total", func() bool {
		return sum(r.scrape("istio_tcp_sent_bytes_total"), "reporter=source") >= 2000
	})
	if closed := sum(r.scrape("istio_tcp_connections_closed_total")); closed != 0 {
		t.Fatalf("the connection closed before its bytes were reported (closed_total=%v): not a periodic report", closed)
	}
	var res sendResult
	if err := h.Wait(&res); err != nil || res.OK != 1 {
		t.Fatalf("long-lived connection: %+v %v", res, err)
	}
}

// TestReadyAfterFirstSyncAndAdminLoopbackOnly: /ready is 503 until the
// source has applied its first full snapshot, 200 after; the admin API is not
// reachable on a non-loopback address, and a non-loopback admin address is
// refused at startup.
func TestReadyAfterFirstSyncAndAdminLoopbackOnly(t *testing.T) {
	r := newRig(t, true, 0)
	c, _ := admin.NewClient(r.admin)
	var s string
	err := c.Get(context.Background(), "/ready", &s)
	if err == nil || !strings.Contains(err.Error(), "503") || !strings.Contains(err.Error(), "first full configuration") {
		t.Fatalf("before the first sync /ready = %q, %v; want 503 with the reason", s, err)
	}
	if err := c.Get(context.Background(), "/healthz", &s); err != nil {
		t.Fatalf("healthz before sync: %v", err)
	}
	close(r.release)
	r.waitReady()

	_, port, _ := net.SplitHostPort(r.admin)
	addrs, _ := net.InterfaceAddrs()
	tried := 0
	for _, a := range addrs {
		ipn, ok := a.(*net.IPNet)
		if !ok || ipn.IP.IsLoopback() || ipn.IP.IsLinkLocalUnicast() {
			continue
		}
		tried++
		conn, err := net.DialTimeout("tcp", net.JoinHostPort(ipn.IP.String(), port), 2*time.Second)
		if err == nil {
			conn.Close()
			t.Fatalf("admin API reachable on %s:%s", ipn.IP, port)
		}
	}
	if tried == 0 {
		t.Log("no non-loopback address on this host; binding is still checked below")
	}

	// Refused before the daemon touches the kernel (no pin dir, no state dir
	// is created for these paths).
	pins := filepath.Join(t.TempDir(), "must-not-exist")
	err = daemon.Run(context.Background(), daemon.Options{PinDir: pins, StateDir: pins,
		Source:        daemon.SourceFunc(func(context.Context, dataplane.API) error { return nil }),
		Observability: daemon.ObservabilityOptions{AdminAddress: "0.0.0.0:15299", MetricsAddress: daemon.Off}})
	if err == nil || !strings.Contains(err.Error(), "loopback") {
		t.Fatalf("a non-loopback admin address: %v, want a refusal naming loopback", err)
	}
	if _, err := os.Stat(pins); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("a refused start created %s", pins)
	}
}

// TestKmeshctlDumpsRoundTrip: kmeshctl dump config returns the applied
// model, and dump bpf decodes the real maps: the VIP's frontend and every
// backend's address are there.
func TestKmeshctlDumpsRoundTrip(t *testing.T) {
	r := newRig(t, false, 0)
	r.waitReady()
	ctl := filepath.Join(t.TempDir(), "kmeshctl")
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	if out, err := exec.CommandContext(ctx, "go", "build", "-o", ctl, "github.com/kmesh-go/kmesh/daemon/kmeshctl").CombinedOutput(); err != nil {
		t.Fatalf("building kmeshctl: %v\n%s", err, out)
	}
	run := func(args ...string) []byte {
		out, err := exec.CommandContext(ctx, ctl, append(args, "--admin", r.admin)...).Output()
		if err != nil {
			var ee *exec.ExitError
			if errors.As(err, &ee) {
				t.Fatalf("kmeshctl %v: %v: %s", args, err, ee.Stderr)
			}
			t.Fatal(err)
		}
		return out
	}
	var snap model.Snapshot
	if err := json.Unmarshal(run("dump", "config", "-o", "json"), &snap); err != nil {
		t.Fatal(err)
	}
	if len(snap.Services) != 1 || snap.Services[0].Key != svcKey || len(snap.Workloads) != len(r.snapshot.Workloads) {
		t.Fatalf("config dump does not round-trip the applied model: %+v", snap)
	}
	var d admin.BPFDump
	if err := json.Unmarshal(run("dump", "bpf", "-o", "json"), &d); err != nil {
		t.Fatal(err)
	}
	rows := func(name string) []map[string]string {
		for _, m := range d.Maps {
			if m.Name == name {
				return m.Rows
			}
		}
		t.Fatalf("no map %s in the dump", name)
		return nil
	}
	found := false
	for _, row := range rows("km_frontend") {
		for _, v := range row {
			if v == vip.String() {
				found = true
			}
		}
	}
	if !found {
		t.Fatalf("km_frontend rows lack the VIP %s: %v", vip, rows("km_frontend"))
	}
	for _, h := range r.be {
		hit := false
		for _, row := range rows("km_endpoint") {
			for _, v := range row {
				if v == h.IP4.String() {
					hit = true
				}
			}
		}
		if !hit {
			t.Fatalf("km_endpoint lacks %s (%s): %v", h.Name, h.IP4, rows("km_endpoint"))
		}
	}
	table := string(run("dump", "bpf", "--map", "km_frontend"))
	if !strings.Contains(table, "MAP km_frontend") || !strings.Contains(table, vip.String()) {
		t.Fatalf("table output:\n%s", table)
	}
}

// TestMonitoringSwitch: `kmeshctl monitoring disable` (the admin API's
// switch) stops connection telemetry in the kernel too; connections made
// meanwhile are never counted, and after enable exactly the new ones are.
func TestMonitoringSwitch(t *testing.T) {
	r := newRig(t, false, 0)
	r.waitReady()
	c, err := admin.NewClient(r.admin)
	if err != nil {
		t.Fatal(err)
	}
	set := func(on bool) {
		var st admin.MonitoringState
		if err := c.Post(context.Background(), "/debug/monitoring", url.Values{"enabled": {fmt.Sprint(on)}}, &st); err != nil || st.Enabled != on {
			t.Fatalf("monitoring %v: %+v %v", on, st, err)
		}
	}
	send := func(n int) {
		var res sendResult
		testutil.RunHelper(t, "send", sendArgs{Addr: netip.AddrPortFrom(vip, 80).String(), Count: n, Payload: 100},
			testutil.HelperOptions{Netns: r.cl.NS, Cgroup: r.client, Timeout: 2 * time.Minute}, &res)
		if res.OK != n {
			t.Fatalf("connections: %+v", res)
		}
	}
	set(false)
	send(20)
	set(true)
	send(10)
	waitFor(t, "10 closed connections in metrics", func() bool {
		return sum(r.scrape("istio_tcp_connections_closed_total"), "reporter=source") >= 10
	})
	time.Sleep(300 * time.Millisecond) // anything late would show now
	if got := sum(r.scrape("istio_tcp_connections_opened_total"), "reporter=source"); got != 10 {
		t.Fatalf("opened_total = %v, want exactly the 10 connections made while monitoring was on", got)
	}
	if got := sum(r.scrape("istio_tcp_connections_closed_total"), "reporter=source"); got != 10 {
		t.Fatalf("closed_total = %v, want exactly 10", got)
	}
}
