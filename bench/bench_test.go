package bench

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/cilium/ebpf"

	"github.com/kmesh-go/kmesh/bench/load"
	"github.com/kmesh-go/kmesh/bench/netlab"
	"github.com/kmesh-go/kmesh/bench/report"
	"github.com/kmesh-go/kmesh/pkg/bpf"
	"github.com/kmesh-go/kmesh/pkg/probe"
	"github.com/kmesh-go/kmesh/pkg/testutil"
)

// The harness re-executes its binary for the client and server roles; in
// tests that binary is the test binary.
func TestMain(m *testing.M) {
	if len(os.Args) > 1 && IsRole(os.Args[1]) {
		os.Exit(RoleMain(os.Args[1], os.Args[2:]))
	}
	os.Exit(m.Run())
}

func TestPlanInterleaves(t *testing.T) {
	a := report.ScenarioInfo{Name: "a", Protos: []load.Proto{load.HTTP, load.TCP}}
	b := report.ScenarioInfo{Name: "b", Protos: []load.Proto{load.HTTP}}
	c := report.ScenarioInfo{Name: "c", Protos: []load.Proto{load.HTTP, load.TCP}}
	h := report.Point{Proto: load.HTTP, Conns: 1, Payload: 64}
	tc := report.Point{Proto: load.TCP, Conns: 1, Payload: 64}
	plan := Plan(2, []report.Point{h, tc}, []report.ScenarioInfo{a, b, c})
	var got []string
	for _, p := range plan {
		got = append(got, fmt.Sprintf("%d%s%s", p.Rep, p.Point.Proto[:1], []string{"a", "b", "c"}[p.Scenario]))
	}
	want := "1ha 1hb 1hc 1ta 1tc 2ha 2hb 2hc 2ta 2tc"
	if strings.Join(got, " ") != want {
		t.Fatalf("plan %q, want %q", strings.Join(got, " "), want)
	}
}

func TestClassify(t *testing.T) {
	p := report.Point{Proto: load.HTTP, Conns: 16, Rate: 1000, Payload: 1024}
	good := load.Result{Requests: 100, OK: 100, Conns: 16}
	mod := func(f func(*load.Result)) *load.Result { r := good; f(&r); return &r }
	cases := []struct {
		name string
		res  *load.Result
		err  error
		want string // "" = OK; else a substring of the reason
	}{
		{"ok", &good, nil, ""},
		{"client error", nil, errors.New("exit status 1"), "client: exit status 1"},
		{"no result", nil, nil, "no result"},
		{"request errors", mod(func(r *load.Result) { r.Errors, r.Requests, r.FirstError = 2, 102, "503" }), nil, "2 of 102 requests failed (first: 503)"},
		{"warm-up errors", mod(func(r *load.Result) { r.WarmupErrors, r.WarmupRequests = 1, 10 }), nil, "1 of 10 warm-up requests failed"},
		{"nothing succeeded", mod(func(r *load.Result) { r.OK, r.Requests = 0, 0 }), nil, "no successful requests"},
		{"truncated", mod(func(r *load.Result) { r.Truncated = true }), nil, "sample budget"},
		{"fewer connections", mod(func(r *load.Result) { r.Conns = 8 }), nil, "used 8 of 16 connections"},
	}
	for _, c := range cases {
		st, reason := Classify(p, c.res, c.err)
		if c.want == "" {
			if st != report.OK || reason != "" {
				t.Errorf("%s: %s %q, want ok", c.name, st, reason)
			}
			continue
		}
		if st != report.Failed || !strings.Contains(reason, c.want) {
			t.Errorf("%s: %s %q, want failed with %q", c.name, st, reason, c.want)
		}
	}
}

func TestSweepPoints(t *testing.T) {
	star, err := FullSweep().Points()
	if err != nil {
		t.Fatal(err)
	}
	// Per protocol and rate: 4 connection counts at 1 KiB + 2 other payloads at 16 connections;
	// then the telemetry point.
	if len(star) != 2*2*6+1 || star[len(star)-1] != report.TelemetryPoint {
		t.Fatalf("star sweep has %d points: %v", len(star), star)
	}
	if star[0] != (report.Point{Proto: load.HTTP, Conns: 1, Rate: 1000, Payload: 1024}) || !contains(star, Headline) {
		t.Errorf("star sweep starts with %v / lacks the headline", star[0])
	}
	seen := map[report.Point]bool{}
	for _, p := range star {
		if seen[p] {
			t.Errorf("duplicate point %v", p)
		}
		seen[p] = true
		if p.Conns != 16 && p.Payload != 1024 {
			t.Errorf("point %v is off the star", p)
		}
	}
	m := FullSweep()
	m.Matrix = true
	matrix, err := m.Points()
	if err != nil || len(matrix) != 2*2*4*3+1 {
		t.Fatalf("matrix: %d points, %v", len(matrix), err)
	}
	if _, err := (Sweep{Protos: []load.Proto{"udp"}, Conns: []int{1}, Rates: []float64{0}, Payloads: []int{1}}).Points(); err == nil {
		t.Error("udp accepted")
	}
	if _, err := (Sweep{}).Points(); err == nil {
		t.Error("empty sweep accepted")
	}
	for _, p := range SmokePoints() {
		if !contains(matrix, p) {
			t.Errorf("smoke point %v is not a point of the full sweep", p)
		}
	}
}

func contains(ps []report.Point, p report.Point) bool {
	for _, q := range ps {
		if q == p {
			return true
		}
	}
	return false
}

func TestBuiltinScenarios(t *testing.T) {
	names := map[string]bool{}
	for _, s := range Builtin() {
		in := s.Info()
		if in.Name == "" || in.Description == "" || len(in.Protos) == 0 {
			t.Errorf("incomplete scenario info %+v", in)
		}
		if names[in.Name] {
			t.Errorf("scenario %s registered twice", in.Name)
		}
		names[in.Name] = true
	}
	for _, n := range []string{report.Direct, report.DirectControl, report.SidecarHAProxy, report.SidecarNginx, report.NodeProxy, report.Waypoint, report.DualEngineWaypoint, report.KernelNative} {
		if !names[n] {
			t.Errorf("scenario %s missing", n)
		}
	}
	if err := newKernelNative().Available(nil); err == nil {
		t.Error("kernel-native claims to be available on the host")
	}
}

// End to end on the real kernel: the lab, the echo server, real HAProxy and
// nginx instances and the fortio client, for a tiny sweep. Every scenario
// that can run here must complete without a single error, and the proxy
// paths must be slower than direct at p50.
func TestRunEndToEnd(t *testing.T) {
	testutil.Privileged(t)
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	o := Options{
		Points: []report.Point{{Proto: load.HTTP, Conns: 2, Rate: 500, Payload: 256}, {Proto: load.TCP, Conns: 2, Rate: 0, Payload: 64},
			{Proto: load.HTTPClose, Conns: 2, Rate: 0, Payload: 64}},
		Headline:  report.Point{Proto: load.HTTP, Conns: 2, Rate: 500, Payload: 256},
		Scenarios: Builtin(), Duration: 300 * time.Millisecond, Warmup: 100 * time.Millisecond, Repeat: 1,
		RequestTimeout: 2 * time.Second, MaxSamples: 1 << 20, Placement: DefaultPlacement(), Self: self,
		Command: "go test ./bench",
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	rep, err := Run(ctx, o)
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.Failed) > 0 {
		t.Fatalf("failed cells: %q", rep.Failed)
	}
	h := o.Points[0]
	direct, ok := report.Find(rep.Cells, report.Direct, h)
	if !ok || direct.Status != report.OK || direct.Latency.P50 <= 0 || direct.CPU.Lab <= 0 || direct.Throughput <= 0 {
		t.Fatalf("direct cell %+v", direct)
	}
	// The path check: for every scenario that runs here, the server saw the
	// probe from the hop the scenario claims is last (10.78.0.1 the client
	// itself, 127.0.0.1 an inbound sidecar, .3/.4 node proxies, .5 the
	// waypoint), and every cell of it is OK.
	want := map[string]string{report.Direct: "10.78.0.1", report.DirectControl: "10.78.0.1",
		report.DualEngine: "10.78.0.1", report.DualEngineAccel: "10.78.0.1", report.DualEngineNoTelemetry: "10.78.0.1",
		report.SidecarHAProxy: "127.0.0.1", report.SidecarNginx: "127.0.0.1", report.NodeProxy: "10.78.0.4", report.Waypoint: "10.78.0.5",
		report.DualEngineWaypoint: "10.78.0.5"}
	for _, s := range rep.Scenarios {
		if !s.Available {
			continue
		}
		w, ok := want[s.Name]
		if !ok {
			t.Errorf("scenario %s: add the peer the server should see to this test", s.Name)
		}
		if s.ServerSees != w {
			t.Errorf("%s: server sees %q, want %q", s.Name, s.ServerSees, w)
		}
		for _, p := range o.Points {
			if c, ok := report.Find(rep.Cells, s.Name, p); ok && (c.Status != report.OK || c.Latency.P50 <= 0) {
				t.Errorf("%s @ %s: %+v", s.Name, p, c)
			}
		}
		// kmesh's scenarios prove their mechanism with kernel counters.
		if (s.Name == report.DualEngine || s.Name == report.DualEngineAccel || s.Name == report.DualEngineNoTelemetry) && !strings.Contains(s.Evidence, "connect_lb=") {
			t.Errorf("%s: no kernel evidence: %+v", s.Name, s)
		}
		// Telemetry on: the connections reached the Istio metrics.
		if (s.Name == report.DualEngine || s.Name == report.DualEngineAccel) != strings.Contains(s.Evidence, "istio_tcp_connections_opened_total=") {
			t.Errorf("%s: telemetry evidence wrong: %s", s.Name, s.Evidence)
		}
		if s.Name == report.DualEngineWaypoint && !strings.Contains(s.Evidence, "waypoint_header=") {
			t.Errorf("%s: no kernel evidence: %+v", s.Name, s)
		}
	}
	kn, _ := report.Find(rep.Cells, report.KernelNative, h)
	if kn.Status != report.Skipped {
		t.Errorf("kernel-native on the host: %+v", kn)
	}
	if rep.Environment.GitRevision == "" || rep.Environment.Kernel == "unknown" || len(rep.Runs) == 0 {
		t.Errorf("environment %+v", rep.Environment)
	}
}

type checked struct {
	direct
	err error
}

func (c *checked) Check(*Env) (string, error) { return "counters: x=1", c.err }

// A failed post-run check fails every OK run of its scenario, keeps the
// evidence, and leaves other scenarios alone.
func TestCheckFailsRuns(t *testing.T) {
	p := report.Point{Proto: load.HTTP, Conns: 1, Payload: 64}
	good, bad := &checked{}, &checked{err: errors.New("sk_msg redirected nothing")}
	rep := &report.Report{
		Scenarios: []report.ScenarioInfo{{Name: "good"}, {Name: "bad"}, {Name: "plain"}},
		Runs: []report.Run{
			{Scenario: "good", Point: p, Status: report.OK}, {Scenario: "bad", Point: p, Status: report.OK},
			{Scenario: "bad", Point: p, Status: report.Failed, Reason: "earlier"}, {Scenario: "plain", Point: p, Status: report.OK},
		},
	}
	check(nil, []Scenario{good, bad, &direct{}}, make([]error, 3), rep)
	if rep.Runs[0].Status != report.OK || rep.Runs[3].Status != report.OK {
		t.Errorf("unrelated runs changed: %+v", rep.Runs)
	}
	if rep.Runs[1].Status != report.Failed || !strings.Contains(rep.Runs[1].Reason, "post-run check failed: sk_msg redirected nothing") {
		t.Errorf("bad run: %+v", rep.Runs[1])
	}
	if rep.Runs[2].Reason != "earlier" {
		t.Errorf("an already failed run lost its reason: %+v", rep.Runs[2])
	}
	if rep.Scenarios[0].Evidence != "counters: x=1" || rep.Scenarios[1].Evidence != "counters: x=1" || rep.Scenarios[1].Reason == "" {
		t.Errorf("scenario info: %+v", rep.Scenarios)
	}
	// A scenario that failed setup is not checked.
	rep.Scenarios[0].Evidence = ""
	check(nil, []Scenario{good}, []error{errors.New("setup")}, rep)
	if rep.Scenarios[0].Evidence != "" {
		t.Error("checked a scenario whose setup failed")
	}
}

// A dataplane pinned by a killed run (pin directory named after a dead pid)
// is uninstalled; a live run's is not.
func TestSweepStaleDataplanes(t *testing.T) {
	testutil.Privileged(t)
	raw, err := os.ReadFile("/proc/sys/kernel/pid_max")
	if err != nil {
		t.Fatal(err)
	}
	pidMax, _ := strconv.Atoi(strings.TrimSpace(string(raw)))
	stale := filepath.Join(probe.DefaultBPFFS, fmt.Sprintf("%s%d-dual-engine", netlab.NamePrefix, pidMax+1000))
	live := filepath.Join(probe.DefaultBPFFS, fmt.Sprintf("%s%d-dual-engine", netlab.NamePrefix, os.Getpid()))
	for _, dir := range []string{stale, live} {
		if err := os.MkdirAll(filepath.Join(dir, "maps"), 0o700); err != nil {
			t.Fatal(err)
		}
		defer bpf.Uninstall(bpf.Options{PinDir: dir})
		m, err := ebpf.NewMap(&ebpf.MapSpec{Type: ebpf.Array, KeySize: 4, ValueSize: 4, MaxEntries: 1})
		if err != nil {
			t.Fatal(err)
		}
		if err := m.Pin(filepath.Join(dir, "maps", "km_stats")); err != nil {
			t.Fatal(err)
		}
		m.Close()
	}
	removed, err := SweepStaleDataplanes()
	if err != nil {
		t.Fatal(err)
	}
	if strings.Join(removed, ",") != "bpf pins "+stale {
		t.Errorf("removed %q, want only %s", removed, stale)
	}
	if _, err := os.Stat(stale); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("%s still exists: %v", stale, err)
	}
	if _, err := os.Stat(filepath.Join(live, "maps", "km_stats")); err != nil {
		t.Errorf("live pins removed: %v", err)
	}
}
