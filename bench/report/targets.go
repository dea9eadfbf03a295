package report

import (
	"fmt"

	"github.com/kmesh-go/kmesh/bench/load"
)

// Target is a ratio the project has committed to, judged at the headline
// point of a run (Istio's published configuration: HTTP/1.1, 16 connections,
// 1000 req/s, 1 KiB).
type Target struct {
	ID     string  `json:"id"`
	Text   string  `json:"text"`
	Num    string  `json:"num"` // scenario in the numerator
	Den    string  `json:"den"` // scenario in the denominator
	Metric string  `json:"metric"`
	Op     string  `json:"op"` // "<=" or ">="
	Limit  float64 `json:"limit"`
	Note   string  `json:"note,omitempty"`
	// At judges the target at this point instead of the headline (a
	// throughput target needs a maximum-rate point).
	At *Point `json:"at,omitempty"`
}

// TelemetryPoint is where the telemetry overhead is judged: maximum rate,
// one connection per request (two connection records per end per request).
var TelemetryPoint = Point{Proto: load.HTTPClose, Conns: 16, Rate: 0, Payload: 1024}

// Targets from issues #7 and #8.
var Targets = []Target{
	{ID: "de-p50", Text: "dual-engine p50 / direct p50", Num: DualEngine, Den: Direct, Metric: "p50", Op: "<=", Limit: 1.03},
	{ID: "de-p99", Text: "dual-engine p99 / direct p99", Num: DualEngine, Den: Direct, Metric: "p99", Op: "<=", Limit: 1.10},
	{ID: "sidecar-vs-de", Text: "sidecar pair p50 / dual-engine p50", Num: SidecarHAProxy, Den: DualEngine, Metric: "p50", Op: ">=", Limit: 3.0},
	{ID: "accel-p50", Text: "same-node accelerated p50 / direct p50", Num: DualEngineAccel, Den: Direct, Metric: "p50", Op: "<=", Limit: 0.70},
	{ID: "kn-p50", Text: "kernel-native p50 / direct p50", Num: KernelNative, Den: Direct, Metric: "p50", Op: "<=", Limit: 1.10, Note: "judged in the 6.12 VM run"},
	{ID: "telemetry-tput", Text: "dual-engine throughput / the same without telemetry", Num: DualEngine, Den: DualEngineNoTelemetry,
		Metric: "throughput", Op: ">=", Limit: 0.95, At: &TelemetryPoint,
		Note: "issue #8: the telemetry path costs <= 5 % of throughput; a new connection per request, maximum rate"},
	{ID: "l7hop-p50", Text: "HAProxy L7 hop (waypoint) p50 / direct p50", Num: Waypoint, Den: Direct, Metric: "p50", Op: ">=", Limit: 2.0, Note: "the VM run's control for kernel-native"},
}

// Verdict of a target.
type Verdict string

const (
	Met         Verdict = "met"
	NotMet      Verdict = "NOT MET"
	NotMeasured Verdict = "not measured"
)

// TargetResult is a target judged on one run.
type TargetResult struct {
	Target
	Point   Point   `json:"point"`
	Value   float64 `json:"value,omitempty"`
	Verdict Verdict `json:"verdict"`
	Reason  string  `json:"reason,omitempty"`
	// Across every point where both scenarios are OK: how many meet the limit.
	MetAt    int `json:"met_at_points"`
	Measured int `json:"measured_points"`
}

func metric(c Cell, m string) float64 {
	switch m {
	case "p50":
		return c.Latency.P50
	case "p90":
		return c.Latency.P90
	case "p99":
		return c.Latency.P99
	case "p99.9":
		return c.Latency.P999
	case "throughput":
		return c.Throughput
	}
	return 0
}

func (t Target) holds(v float64) bool {
	if t.Op == ">=" {
		return v >= t.Limit
	}
	return v <= t.Limit
}

// value is the target's ratio at p, or why there is none.
func (t Target) value(cells []Cell, p Point) (float64, string) {
	num, okN := Find(cells, t.Num, p)
	den, okD := Find(cells, t.Den, p)
	inSweep := false
	for _, c := range cells {
		inSweep = inSweep || c.Point == p
	}
	switch {
	case !inSweep:
		return 0, fmt.Sprintf("%s is not a point of this sweep", p)
	case !okN:
		return 0, t.Num + " not in this run"
	case !okD:
		return 0, t.Den + " not in this run"
	case num.Status != OK:
		return 0, fmt.Sprintf("%s %s: %s", t.Num, num.Status, num.Reason)
	case den.Status != OK:
		return 0, fmt.Sprintf("%s %s: %s", t.Den, den.Status, den.Reason)
	}
	d := metric(den, t.Metric)
	if d <= 0 {
		return 0, t.Den + " has no samples"
	}
	return metric(num, t.Metric) / d, ""
}

// EvaluateTargets judges each target at headline, and counts at how many
// points of the sweep it holds.
func EvaluateTargets(targets []Target, cells []Cell, headline Point) []TargetResult {
	var points []Point
	seen := map[Point]bool{}
	for _, c := range cells {
		if !seen[c.Point] {
			seen[c.Point] = true
			points = append(points, c.Point)
		}
	}
	var out []TargetResult
	for _, t := range targets {
		at := headline
		if t.At != nil {
			at = *t.At
		}
		tr := TargetResult{Target: t, Point: at}
		v, why := t.value(cells, at)
		switch {
		case why != "":
			tr.Verdict, tr.Reason = NotMeasured, why
		case t.holds(v):
			tr.Verdict, tr.Value = Met, v
		default:
			tr.Verdict, tr.Value = NotMet, v
		}
		for _, p := range points {
			if t.Metric == "throughput" && (p.Rate != 0 || p.Proto != at.Proto) {
				continue // throughput compares only where both ran at maximum rate
			}
			if v, why := t.value(cells, p); why == "" {
				tr.Measured++
				if t.holds(v) {
					tr.MetAt++
				}
			}
		}
		out = append(out, tr)
	}
	return out
}
