// Package report turns the runs of a benchmark into its outputs: aggregated
// cells (one per scenario and sweep point), ratios against the no-mesh
// baseline and the sidecar pair, target verdicts, JSON, a Markdown table and
// PNG plots. It is pure: no network, no processes, so every rule (what fails,
// what is compared with what) is unit-tested.
package report

import (
	"fmt"

	"github.com/kmesh-go/kmesh/bench/load"
)

// SchemaVersion changes when the JSON layout changes incompatibly.
const SchemaVersion = 1

// Well-known scenario names the ratios and targets refer to.
const (
	Direct          = "direct"
	DirectControl   = "direct-control"
	DualEngine      = "dual-engine"
	DualEngineAccel = "dual-engine-accel"
	// DualEngineNoTelemetry is dual-engine with connection records off in
	// the kernel (kmeshctl monitoring disable): the control for telemetry.
	DualEngineNoTelemetry = "dual-engine-no-telemetry"
	SidecarHAProxy        = "sidecar-haproxy"
	SidecarNginx          = "sidecar-nginx"
	NodeProxy             = "node-proxy"
	Waypoint              = "waypoint"
	// DualEngineWaypoint is kmesh's waypoint path (docs/waypoint.md).
	DualEngineWaypoint = "dual-engine-waypoint"
	KernelNative       = "kernel-native"
)

// Point is one position of the sweep.
type Point struct {
	Proto   load.Proto `json:"proto"`
	Conns   int        `json:"conns"`
	Rate    float64    `json:"rate"` // requests per second; 0 = maximum (closed loop)
	Payload int        `json:"payload"`
}

// RateString is "1000/s" or "max".
func (p Point) RateString() string {
	if p.Rate == 0 {
		return "max"
	}
	return fmt.Sprintf("%g/s", p.Rate)
}

// PayloadString is "64 B", "1 KiB", "16 KiB".
func (p Point) PayloadString() string { return Bytes(p.Payload) }

// Bytes formats a byte count with a binary unit when it is exact.
func Bytes(n int) string {
	switch {
	case n >= 1<<20 && n%(1<<20) == 0:
		return fmt.Sprintf("%d MiB", n>>20)
	case n >= 1<<10 && n%(1<<10) == 0:
		return fmt.Sprintf("%d KiB", n>>10)
	default:
		return fmt.Sprintf("%d B", n)
	}
}

func (p Point) String() string {
	return fmt.Sprintf("%s c=%d %s %s", p.Proto, p.Conns, p.RateString(), p.PayloadString())
}

// Status of a run or a cell.
type Status string

const (
	OK      Status = "ok"
	Failed  Status = "failed"  // ran (or tried to) and something went wrong: never averaged in
	Skipped Status = "skipped" // not run, with the reason (scenario unavailable here)
)

// Run is one measurement: one scenario at one point in one repetition.
type Run struct {
	Seq      int          `json:"seq"` // position in the interleaved run order
	Rep      int          `json:"rep"` // repetition, from 1
	Scenario string       `json:"scenario"`
	Point    Point        `json:"point"`
	Status   Status       `json:"status"`
	Reason   string       `json:"reason,omitempty"`
	Result   *load.Result `json:"result,omitempty"`
}

// CPUPer1k is CPU time per 1000 successful requests, in milliseconds
// (milliseconds per 1000 requests equal thousandths of a vCPU per 1000 req/s).
// User, System, SoftIRQ and Busy come from the /proc/stat delta over the
// measured window: the whole machine, so on a shared machine they include
// other people's work. Lab comes from the cpu.stat of the cgroup holding
// every process of the benchmark (client, server, proxies), which other
// work on the machine does not disturb.
type CPUPer1k struct {
	User    float64 `json:"user_ms"`
	System  float64 `json:"system_ms"`
	SoftIRQ float64 `json:"softirq_ms"`
	Busy    float64 `json:"busy_ms"`
	Lab     float64 `json:"lab_ms,omitempty"`
}

// Best is Lab when it was measured, else the machine-wide Busy.
func (c CPUPer1k) Best() float64 {
	if c.Lab > 0 {
		return c.Lab
	}
	return c.Busy
}

// CPUPer1kOf converts a run's CPU delta.
func CPUPer1kOf(r *load.Result) CPUPer1k {
	if r == nil || r.OK == 0 {
		return CPUPer1k{}
	}
	c := r.CPU.Seconds()
	k := 1e6 / float64(r.OK) // seconds per request -> ms per 1000 requests
	out := CPUPer1k{User: c.User * k, System: c.System * k, SoftIRQ: c.SoftIRQ * k, Busy: c.Busy() * k}
	if r.LabCPU != nil {
		out.Lab = float64(r.LabCPU.Usage) / float64(r.OK) // µs per request = ms per 1000 requests
	}
	return out
}

// OtherLoadOf is the busy CPU of everything outside the benchmark during a
// run, in vCPUs (-1 when the lab's CPU was not measured). Tick granularity
// (10 ms) can make it slightly negative; it is clamped at 0.
func OtherLoadOf(r *load.Result) float64 {
	if r == nil || r.LabCPU == nil || r.Elapsed <= 0 {
		return -1
	}
	other := r.CPU.Seconds().Busy() - float64(r.LabCPU.Usage)/1e6
	return max(other, 0) / r.Elapsed
}

// Cell aggregates the repetitions of one scenario at one point. A cell is OK
// only if every repetition was; otherwise it is Failed (or Skipped) and has
// no numbers, so a failure can never be averaged away.
type Cell struct {
	Scenario string `json:"scenario"`
	Point    Point  `json:"point"`
	Status   Status `json:"status"`
	Reason   string `json:"reason,omitempty"`
	Reps     int    `json:"reps"`
	// Medians over repetitions.
	Latency    load.Latency `json:"latency"`
	Throughput float64      `json:"throughput_rps"`
	CPU        CPUPer1k     `json:"cpu_per_1k"`
	// Spread over repetitions: [min, max].
	P50Range [2]float64 `json:"p50_range_us"`
	P99Range [2]float64 `json:"p99_range_us"`
	Requests int64      `json:"requests"` // total over repetitions
	Errors   int64      `json:"errors"`
	// OtherLoad is the median, over repetitions, of the machine's busy CPU
	// not spent by the benchmark's processes, in vCPUs, during the measured
	// window: other work competing with the run (0 on a quiet machine; -1 if
	// the lab's CPU was not measured).
	OtherLoad float64 `json:"other_load_vcpu"`
}

// Ratio compares a cell with the same point of another scenario.
type Ratio struct {
	Scenario string  `json:"scenario"`
	Versus   string  `json:"versus"`
	Point    Point   `json:"point"`
	P50      float64 `json:"p50,omitempty"`
	P99      float64 `json:"p99,omitempty"`
	CPU      float64 `json:"cpu,omitempty"` // CPU per request (CPUPer1k.Best)
	OK       bool    `json:"ok"`
	Reason   string  `json:"reason,omitempty"` // why there is no ratio
}

// ScenarioInfo describes a scenario of the run.
type ScenarioInfo struct {
	Name        string       `json:"name"`
	Title       string       `json:"title"`
	Description string       `json:"description"`
	Protos      []load.Proto `json:"protos"`
	Available   bool         `json:"available"`
	Reason      string       `json:"reason,omitempty"` // why it is unavailable or failed to set up
	// ServerSees is the peer address the echo server saw for a probe request
	// sent through the scenario: which hop actually reached the server.
	ServerSees string `json:"server_sees,omitempty"`
	// Evidence is what the scenario's post-run check found (kernel counters).
	Evidence string `json:"evidence,omitempty"`
}

// Environment records where and with what the numbers were taken.
type Environment struct {
	Time        string            `json:"time"`
	Hostname    string            `json:"hostname"`
	Kernel      string            `json:"kernel"`
	CPUModel    string            `json:"cpu_model"`
	CPUs        int               `json:"cpus"`
	MemTotal    string            `json:"mem_total"`
	GoVersion   string            `json:"go_version"`
	GitRevision string            `json:"git_revision"`
	GitDirty    bool              `json:"git_dirty"`
	Versions    map[string]string `json:"versions"` // fortio, haproxy, nginx, ...
	Command     string            `json:"command"`
	Placement   map[string]string `json:"placement"` // role -> CPU list
	Notes       []string          `json:"notes,omitempty"`
}

// Config is the sweep that was run.
type Config struct {
	Smoke     bool     `json:"smoke"`
	Duration  string   `json:"duration"`
	Warmup    string   `json:"warmup"`
	Repeat    int      `json:"repeat"`
	Points    []Point  `json:"points"`
	Scenarios []string `json:"scenarios"`
	Headline  Point    `json:"headline"` // where targets are judged
}

// Report is the whole output.
type Report struct {
	Schema      int            `json:"schema"`
	Environment Environment    `json:"environment"`
	Config      Config         `json:"config"`
	Scenarios   []ScenarioInfo `json:"scenarios"`
	Runs        []Run          `json:"runs"`
	Cells       []Cell         `json:"cells"`
	Ratios      []Ratio        `json:"ratios"`
	Targets     []TargetResult `json:"targets"`
	Failed      []string       `json:"failed"` // "scenario @ point: reason", one per failed cell
	// OtherLoad is the median over OK cells of Cell.OtherLoad: how much of
	// the machine other work took during the measured windows (-1: unknown).
	OtherLoad float64 `json:"other_load_median_vcpu"`
	Elapsed   string  `json:"elapsed"`
}
