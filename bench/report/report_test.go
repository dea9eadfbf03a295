package report

import (
	"bytes"
	"image/png"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/kmesh-go/kmesh/bench/load"
	"github.com/kmesh-go/kmesh/bench/procstat"
)

var (
	hp = Point{Proto: load.HTTP, Conns: 16, Rate: 1000, Payload: 1024}
	tp = Point{Proto: load.TCP, Conns: 16, Rate: 0, Payload: 1024}
)

func info(name string, protos ...load.Proto) ScenarioInfo {
	return ScenarioInfo{Name: name, Title: name, Description: name + " path", Protos: protos, Available: true}
}

// okRun is a successful run with the given p50/p99 (µs), 1000 requests and
// 0.5 s of busy machine CPU and 0.3 s of lab CPU.
func okRun(s string, p Point, rep int, p50, p99 float64) Run {
	return Run{Rep: rep, Scenario: s, Point: p, Status: OK, Result: &load.Result{
		Requests: 1000, OK: 1000, Conns: p.Conns, Throughput: 1000, Elapsed: 1,
		Latency: load.Latency{P50: p50, P90: p50 * 1.5, P99: p99, P999: p99 * 2, Min: p50 / 2, Max: p99 * 3, Mean: p50 * 1.1},
		CPU:     procstat.Sample{User: 30, System: 15, SoftIRQ: 5},
		LabCPU:  &procstat.CgroupCPU{Usage: 300000},
	}}
}

func near(a, b float64) bool { return math.Abs(a-b) < 1e-9 }

func TestMedian(t *testing.T) {
	for _, c := range []struct {
		in   []float64
		want float64
	}{{nil, 0}, {[]float64{3}, 3}, {[]float64{3, 1, 2}, 2}, {[]float64{4, 1, 3, 2}, 2.5}} {
		if got := Median(c.in); got != c.want {
			t.Errorf("Median(%v) = %v, want %v", c.in, got, c.want)
		}
	}
}

func TestAggregateMediansAndSpread(t *testing.T) {
	s := []ScenarioInfo{info(Direct, load.HTTP)}
	runs := []Run{okRun(Direct, hp, 1, 100, 200), okRun(Direct, hp, 2, 120, 260), okRun(Direct, hp, 3, 110, 220)}
	cells := Aggregate(s, []Point{hp}, runs)
	if len(cells) != 1 {
		t.Fatalf("%d cells", len(cells))
	}
	c := cells[0]
	if c.Status != OK || c.Reps != 3 || c.Latency.P50 != 110 || c.Latency.P99 != 220 {
		t.Fatalf("cell = %+v", c)
	}
	if c.P50Range != [2]float64{100, 120} || c.P99Range != [2]float64{200, 260} {
		t.Errorf("spread p50 %v p99 %v", c.P50Range, c.P99Range)
	}
	if c.Latency.Min != 50 || c.Latency.Max != 780 {
		t.Errorf("min/max over repetitions = %v/%v, want 50/780", c.Latency.Min, c.Latency.Max)
	}
	// 50 ticks = 0.5 s busy over 1000 requests = 500 ms per 1000; lab 300000 µs / 1000 = 300.
	if !near(c.CPU.Busy, 500) || !near(c.CPU.User, 300) || !near(c.CPU.SoftIRQ, 50) || !near(c.CPU.Lab, 300) {
		t.Errorf("cpu = %+v", c.CPU)
	}
	if c.Requests != 3000 || c.Errors != 0 {
		t.Errorf("requests %d errors %d", c.Requests, c.Errors)
	}
	// 0.5 s busy - 0.3 s lab over a 1 s window.
	if !near(c.OtherLoad, 0.2) {
		t.Errorf("other load %v, want 0.2", c.OtherLoad)
	}
}

// One failed repetition fails the cell: its numbers are not averaged in and
// the reason says how many repetitions failed.
func TestAggregateFailureIsNeverAveraged(t *testing.T) {
	s := []ScenarioInfo{info(SidecarHAProxy, load.HTTP)}
	bad := okRun(SidecarHAProxy, hp, 2, 5, 5)
	bad.Status, bad.Reason = Failed, "3 of 1000 requests failed (first: 503)"
	bad.Result.Errors, bad.Result.OK = 3, 997
	runs := []Run{okRun(SidecarHAProxy, hp, 1, 300, 600), bad, okRun(SidecarHAProxy, hp, 3, 310, 610)}
	c := Aggregate(s, []Point{hp}, runs)[0]
	if c.Status != Failed {
		t.Fatalf("status %s, want failed", c.Status)
	}
	if !strings.Contains(c.Reason, "first: 503") || !strings.Contains(c.Reason, "1 of 3 repetitions failed") {
		t.Errorf("reason %q", c.Reason)
	}
	if c.Latency.P50 != 0 || c.Reps != 0 || c.Throughput != 0 {
		t.Errorf("failed cell carries numbers: %+v", c)
	}
	if c.Errors != 3 {
		t.Errorf("errors %d, want 3 (counted even though the cell failed)", c.Errors)
	}
}

func TestAggregateSkippedAndUnsupported(t *testing.T) {
	un := info(KernelNative, load.HTTP)
	un.Available, un.Reason = false, "needs the VM"
	s := []ScenarioInfo{info(Direct, load.HTTP, load.TCP), un, info(Waypoint, load.HTTP)}
	runs := []Run{
		okRun(Direct, hp, 1, 100, 200), okRun(Direct, tp, 1, 50, 90),
		{Rep: 1, Scenario: KernelNative, Point: hp, Status: Skipped, Reason: "needs the VM"},
	}
	cells := Aggregate(s, []Point{hp, tp}, runs)
	// direct×2, kernel-native×1 (http only), waypoint×1 (http only, no runs).
	if len(cells) != 4 {
		t.Fatalf("%d cells: %+v", len(cells), cells)
	}
	kn, _ := Find(cells, KernelNative, hp)
	if kn.Status != Skipped || kn.Reason != "needs the VM" {
		t.Errorf("kernel-native cell %+v", kn)
	}
	if _, ok := Find(cells, KernelNative, tp); ok {
		t.Error("a cell for a protocol the scenario does not carry")
	}
	wp, _ := Find(cells, Waypoint, hp)
	if wp.Status != Skipped || wp.Reason != "not run" {
		t.Errorf("waypoint without runs: %+v", wp)
	}
}

func TestRatios(t *testing.T) {
	s := []ScenarioInfo{info(Direct, load.HTTP), info(DualEngine, load.HTTP), info(SidecarHAProxy, load.HTTP), info(Waypoint, load.HTTP)}
	wpFail := Run{Rep: 1, Scenario: Waypoint, Point: hp, Status: Failed, Reason: "boom"}
	runs := []Run{okRun(Direct, hp, 1, 100, 200), okRun(DualEngine, hp, 1, 102, 230), okRun(SidecarHAProxy, hp, 1, 400, 1000), wpFail}
	cells := Aggregate(s, []Point{hp}, runs)
	ratios := Ratios(cells, Direct, SidecarHAProxy)
	de, ok := FindRatio(ratios, DualEngine, Direct, hp)
	if !ok || !de.OK || !near(de.P50, 1.02) || !near(de.P99, 1.15) || !near(de.CPU, 1) {
		t.Errorf("dual-engine/direct = %+v", de)
	}
	sc, ok := FindRatio(ratios, Direct, SidecarHAProxy, hp)
	if !ok || !near(sc.P50, 0.25) || !near(sc.P99, 0.2) {
		t.Errorf("direct/sidecar = %+v", sc)
	}
	if _, ok := FindRatio(ratios, Direct, Direct, hp); ok {
		t.Error("ratio of a scenario with itself")
	}
	if _, ok := FindRatio(ratios, Waypoint, Direct, hp); ok {
		t.Error("ratio for a failed cell")
	}
	// A failed reference gives an explicit gap, not a silent omission.
	cells2 := Aggregate(s, []Point{hp}, []Run{okRun(DualEngine, hp, 1, 100, 200), {Rep: 1, Scenario: Direct, Point: hp, Status: Failed, Reason: "x"}})
	gap, ok := FindRatio(Ratios(cells2, Direct), DualEngine, Direct, hp)
	if !ok || gap.OK || !strings.Contains(gap.Reason, "direct failed") {
		t.Errorf("ratio against failed direct = %+v, %v", gap, ok)
	}
}

func TestTargets(t *testing.T) {
	s := []ScenarioInfo{info(Direct, load.HTTP), info(DualEngine, load.HTTP), info(SidecarHAProxy, load.HTTP)}
	p2 := Point{Proto: load.HTTP, Conns: 64, Rate: 1000, Payload: 1024}
	runs := []Run{
		okRun(Direct, hp, 1, 100, 200), okRun(DualEngine, hp, 1, 102, 230), okRun(SidecarHAProxy, hp, 1, 400, 500),
		okRun(Direct, p2, 1, 100, 200), okRun(DualEngine, p2, 1, 110, 210), okRun(SidecarHAProxy, p2, 1, 400, 500),
	}
	cells := Aggregate(s, []Point{hp, p2}, runs)
	res := EvaluateTargets(Targets, cells, hp)
	by := map[string]TargetResult{}
	for _, r := range res {
		by[r.ID] = r
	}
	check := func(id string, v Verdict, value float64, met, measured int) {
		t.Helper()
		r := by[id]
		if r.Verdict != v || (v != NotMeasured && !near(r.Value, value)) || r.MetAt != met || r.Measured != measured {
			t.Errorf("%s = %+v, want %s %.4f %d/%d", id, r, v, value, met, measured)
		}
	}
	check("de-p50", Met, 1.02, 1, 2)             // 1.02 and 1.10 at p2
	check("de-p99", NotMet, 1.15, 1, 2)          // 1.15 > 1.10; p2: 1.05
	check("sidecar-vs-de", Met, 400.0/102, 2, 2) // ≥ 3 at both points
	check("accel-p50", NotMeasured, 0, 0, 0)     // no accelerated scenario in the run
	check("kn-p50", NotMeasured, 0, 0, 0)
	if r := by["accel-p50"]; !strings.Contains(r.Reason, "dual-engine-accel not in this run") {
		t.Errorf("accel reason %q", r.Reason)
	}
}

func testReport() *Report {
	un := info(KernelNative, load.HTTP)
	un.Available, un.Reason = false, "needs the VM"
	r := &Report{
		Environment: Environment{Time: "2026-01-01T00:00:00Z", Kernel: "6.18", CPUModel: "EPYC", CPUs: 2, GitRevision: "abc",
			Versions: map[string]string{"haproxy": "2.6"}, Command: "bench -smoke"},
		Config:    Config{Duration: "1s", Warmup: "100ms", Repeat: 2, Points: []Point{hp, tp}, Headline: hp},
		Scenarios: []ScenarioInfo{info(Direct, load.HTTP, load.TCP), info(DirectControl, load.HTTP), info(SidecarHAProxy, load.HTTP, load.TCP), info(Waypoint, load.HTTP), un},
	}
	for rep := 1; rep <= 2; rep++ {
		r.Runs = append(r.Runs, okRun(Direct, hp, rep, 100, 200), okRun(DirectControl, hp, rep, 102, 190), okRun(SidecarHAProxy, hp, rep, 350, 800),
			Run{Rep: rep, Scenario: Waypoint, Point: hp, Status: Failed, Reason: "setup failed: haproxy exited"},
			Run{Rep: rep, Scenario: KernelNative, Point: hp, Status: Skipped, Reason: "needs the VM"},
			okRun(Direct, tp, rep, 50, 90), okRun(SidecarHAProxy, tp, rep, 150, 300))
	}
	Build(r)
	return r
}

func TestBuildListsFailures(t *testing.T) {
	r := testReport()
	if len(r.Failed) != 1 || !strings.HasPrefix(r.Failed[0], "waypoint @ http c=16 1000/s 1 KiB: setup failed") {
		t.Fatalf("Failed = %q", r.Failed)
	}
}

func TestJSONRoundTrip(t *testing.T) {
	r := testReport()
	path := filepath.Join(t.TempDir(), "results.json")
	if err := WriteJSON(r, path); err != nil {
		t.Fatal(err)
	}
	back, err := ReadJSON(path)
	if err != nil {
		t.Fatal(err)
	}
	if len(back.Runs) != len(r.Runs) || len(back.Cells) != len(r.Cells) || back.Environment.GitRevision != "abc" ||
		back.Runs[0].Result.LabCPU == nil || back.Runs[0].Result.Latency.P50 != 100 {
		t.Fatalf("round trip lost data: %+v", back)
	}
	Build(back) // re-rendering a loaded report reproduces the same cells
	if len(back.Cells) != len(r.Cells) || back.Cells[0] != r.Cells[0] {
		t.Errorf("rebuilt cells differ")
	}
	// A report from another schema is refused.
	raw, _ := os.ReadFile(path)
	os.WriteFile(path, bytes.Replace(raw, []byte(`"schema": 1`), []byte(`"schema": 99`), 1), 0o644)
	if _, err := ReadJSON(path); err == nil {
		t.Error("schema 99 accepted")
	}
}

func TestMarkdown(t *testing.T) {
	md := Markdown(testReport(), []string{"latency-http-1000.png"})
	for _, want := range []string{
		"| `direct` | 100.0 (100.0–100.0) | 150.0 | 200.0 | 400.0 | 1000 | 300 | — | 500 | 0.20 | 1 | 1 | 0.29 | 0.25 |",
		"| `sidecar-haproxy` | 350.0 (350.0–350.0) | 525.0 | 800.0 | 1600.0 | 1000 | 300 | +0 | 500 | 0.20 | 3.50 | 4.00 | 1 | 1 |",
		"| `waypoint` | **FAILED**: setup failed: haproxy exited (2 of 2 repetitions failed) |",
		"| `kernel-native` | **SKIPPED**: needs the VM |",
		"- waypoint @ http c=16 1000/s 1 KiB: setup failed: haproxy exited (2 of 2 repetitions failed)",
		"| dual-engine p50 / direct p50 | <= 1.03 | — | not measured: dual-engine not in this run | 0/0 |",
		"### tcp c=16 max 1 KiB",
		"![latency-http-1000](latency-http-1000.png)",
		"**Command:** `bench -smoke`",
		"p50 ratio 1.02, p99 ratio 0.95. Ratios that differ from 1 by less than this are not resolved",
	} {
		if !strings.Contains(md, want) {
			t.Errorf("markdown lacks %q\n%s", want, md)
		}
	}
	if strings.Contains(md, "None: every scenario") {
		t.Error("markdown claims no failures")
	}
	// okRun leaves 0.2 vCPU of other load in every cell: the run is flagged.
	if !strings.Contains(md, "**Disturbed run.** Other work on the machine used a median of 0.20 vCPUs (of 2)") {
		t.Errorf("disturbed run not flagged:\n%s", md)
	}
}

func TestMdCellEscapes(t *testing.T) {
	if got := mdCell("a|b\n  c"); got != `a\|b c` {
		t.Errorf("mdCell = %q", got)
	}
}

func TestPlotsWritePNGs(t *testing.T) {
	dir := t.TempDir()
	files, err := Plots(testReport(), dir)
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"latency-http-1000.png", "cpu-http.png", "latency-tcp-max.png", "cpu-tcp.png"}
	if strings.Join(files, ",") != strings.Join(want, ",") {
		t.Fatalf("plots %v, want %v", files, want)
	}
	for _, f := range files {
		fh, err := os.Open(filepath.Join(dir, f))
		if err != nil {
			t.Fatal(err)
		}
		cfg, err := png.DecodeConfig(fh)
		fh.Close()
		if err != nil || cfg.Width < 500 || cfg.Height < 300 {
			t.Errorf("%s: %v %dx%d", f, err, cfg.Width, cfg.Height)
		}
	}
	// Nothing succeeded at all: plots still render (no log axis over no data).
	r := testReport()
	for i := range r.Runs {
		r.Runs[i].Status, r.Runs[i].Reason = Failed, "x"
	}
	Build(r)
	if _, err := Plots(r, t.TempDir()); err != nil {
		t.Fatalf("all-failed report: %v", err)
	}
}

func TestPointStrings(t *testing.T) {
	if hp.String() != "http c=16 1000/s 1 KiB" || tp.String() != "tcp c=16 max 1 KiB" {
		t.Errorf("%q %q", hp, tp)
	}
	for n, want := range map[int]string{64: "64 B", 1024: "1 KiB", 16384: "16 KiB", 1500: "1500 B", 1 << 20: "1 MiB"} {
		if got := Bytes(n); got != want {
			t.Errorf("Bytes(%d) = %q, want %q", n, got, want)
		}
	}
}

func TestPlotPayload(t *testing.T) {
	pts := []Point{{Proto: load.HTTP, Payload: 64}, {Proto: load.HTTP, Payload: 16384}, {Proto: load.HTTP, Payload: 16384}, {Proto: load.TCP, Payload: 1024}}
	if got := plotPayload(pts, load.HTTP, 1024); got != 16384 {
		t.Errorf("without the headline payload: %d, want the most common (16384)", got)
	}
	if got := plotPayload(pts, load.TCP, 1024); got != 1024 {
		t.Errorf("with the headline payload: %d", got)
	}
}

func TestTargetOffSweep(t *testing.T) {
	cells := Aggregate([]ScenarioInfo{info(Direct, load.HTTP), info(DualEngine, load.HTTP)}, []Point{tp}, nil)
	r := EvaluateTargets(Targets[:1], cells, hp)[0]
	if r.Verdict != NotMeasured || !strings.Contains(r.Reason, "not a point of this sweep") {
		t.Errorf("%+v", r)
	}
}
