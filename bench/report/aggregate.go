package report

import (
	"fmt"
	"slices"
	"sort"
)

// Build fills Cells, Ratios, Failed and Targets from Runs, Config and
// Scenarios. It can be re-run on a loaded report.
func Build(r *Report) {
	r.Schema = SchemaVersion
	r.Cells = Aggregate(r.Scenarios, r.Config.Points, r.Runs)
	r.Ratios = Ratios(r.Cells, Direct, SidecarHAProxy)
	r.Failed = nil
	for _, c := range r.Cells {
		if c.Status == Failed {
			r.Failed = append(r.Failed, fmt.Sprintf("%s @ %s: %s", c.Scenario, c.Point, c.Reason))
		}
	}
	r.Targets = EvaluateTargets(Targets, r.Cells, r.Config.Headline)
	var other []float64
	for _, c := range r.Cells {
		if c.Status == OK && c.OtherLoad >= 0 {
			other = append(other, c.OtherLoad)
		}
	}
	r.OtherLoad = -1
	if len(other) > 0 {
		r.OtherLoad = Median(other)
	}
}

// DisturbedAbove is the median other load (vCPUs) above which a run is
// called disturbed in its report.
const DisturbedAbove = 0.1

func supports(s ScenarioInfo, p Point) bool { return slices.Contains(s.Protos, p.Proto) }

// Aggregate makes one cell per scenario and supported point, in scenario then
// point order.
func Aggregate(scenarios []ScenarioInfo, points []Point, runs []Run) []Cell {
	type key struct {
		s string
		p Point
	}
	by := map[key][]Run{}
	for _, run := range runs {
		k := key{run.Scenario, run.Point}
		by[k] = append(by[k], run)
	}
	var cells []Cell
	for _, s := range scenarios {
		for _, p := range points {
			if !supports(s, p) {
				continue
			}
			cells = append(cells, aggregateCell(s, p, by[key{s.Name, p}]))
		}
	}
	return cells
}

func aggregateCell(s ScenarioInfo, p Point, runs []Run) Cell {
	c := Cell{Scenario: s.Name, Point: p}
	if len(runs) == 0 {
		c.Status = Skipped
		c.Reason = "not run"
		if !s.Available {
			c.Reason = s.Reason
		}
		return c
	}
	var failed, skipped []Run
	for _, r := range runs {
		if r.Result != nil {
			c.Requests += r.Result.Requests
			c.Errors += r.Result.Errors
		}
		switch r.Status {
		case Failed:
			failed = append(failed, r)
		case Skipped:
			skipped = append(skipped, r)
		}
	}
	if len(failed) > 0 {
		// Failure wins over everything: no numbers, the first reason, and how often.
		c.Status = Failed
		c.Reason = fmt.Sprintf("%s (%d of %d repetitions failed)", failed[0].Reason, len(failed), len(runs))
		return c
	}
	if len(skipped) > 0 {
		c.Status = Skipped
		c.Reason = skipped[0].Reason
		return c
	}
	c.Status = OK
	c.Reps = len(runs)
	col := func(f func(r Run) float64) []float64 {
		v := make([]float64, len(runs))
		for i, r := range runs {
			v[i] = f(r)
		}
		return v
	}
	p50 := col(func(r Run) float64 { return r.Result.Latency.P50 })
	p99 := col(func(r Run) float64 { return r.Result.Latency.P99 })
	c.Latency.P50 = Median(p50)
	c.Latency.P90 = Median(col(func(r Run) float64 { return r.Result.Latency.P90 }))
	c.Latency.P99 = Median(p99)
	c.Latency.P999 = Median(col(func(r Run) float64 { return r.Result.Latency.P999 }))
	c.Latency.Mean = Median(col(func(r Run) float64 { return r.Result.Latency.Mean }))
	c.Latency.Min = slices.Min(col(func(r Run) float64 { return r.Result.Latency.Min }))
	c.Latency.Max = slices.Max(col(func(r Run) float64 { return r.Result.Latency.Max }))
	c.Throughput = Median(col(func(r Run) float64 { return r.Result.Throughput }))
	c.CPU = CPUPer1k{
		User:    Median(col(func(r Run) float64 { return CPUPer1kOf(r.Result).User })),
		System:  Median(col(func(r Run) float64 { return CPUPer1kOf(r.Result).System })),
		SoftIRQ: Median(col(func(r Run) float64 { return CPUPer1kOf(r.Result).SoftIRQ })),
		Busy:    Median(col(func(r Run) float64 { return CPUPer1kOf(r.Result).Busy })),
		Lab:     Median(col(func(r Run) float64 { return CPUPer1kOf(r.Result).Lab })),
	}
	c.OtherLoad = Median(col(func(r Run) float64 { return OtherLoadOf(r.Result) }))
	c.P50Range = [2]float64{slices.Min(p50), slices.Max(p50)}
	c.P99Range = [2]float64{slices.Min(p99), slices.Max(p99)}
	return c
}

// Median of v (the mean of the two middle values for an even count); 0 for none.
func Median(v []float64) float64 {
	if len(v) == 0 {
		return 0
	}
	s := slices.Clone(v)
	sort.Float64s(s)
	n := len(s)
	if n%2 == 1 {
		return s[n/2]
	}
	return (s[n/2-1] + s[n/2]) / 2
}

// Find returns the cell of scenario at p.
func Find(cells []Cell, scenario string, p Point) (Cell, bool) {
	for _, c := range cells {
		if c.Scenario == scenario && c.Point == p {
			return c, true
		}
	}
	return Cell{}, false
}

// Ratios compares every OK cell with the same point of each reference
// scenario (not with itself). When a reference cell exists but is not OK the
// ratio is recorded as missing with the reason, so a gap is visible.
func Ratios(cells []Cell, refs ...string) []Ratio {
	var out []Ratio
	for _, c := range cells {
		if c.Status != OK {
			continue
		}
		for _, ref := range refs {
			if ref == c.Scenario {
				continue
			}
			rc, ok := Find(cells, ref, c.Point)
			if !ok {
				continue
			}
			out = append(out, ratio(c, rc))
		}
	}
	return out
}

func ratio(c, ref Cell) Ratio {
	r := Ratio{Scenario: c.Scenario, Versus: ref.Scenario, Point: c.Point}
	switch {
	case ref.Status != OK:
		r.Reason = fmt.Sprintf("%s %s at this point", ref.Scenario, ref.Status)
	case ref.Latency.P50 <= 0 || ref.Latency.P99 <= 0:
		r.Reason = ref.Scenario + " has no latency samples"
	default:
		r.OK = true
		r.P50 = c.Latency.P50 / ref.Latency.P50
		r.P99 = c.Latency.P99 / ref.Latency.P99
		if ref.CPU.Best() > 0 {
			r.CPU = c.CPU.Best() / ref.CPU.Best()
		}
	}
	return r
}

// FindRatio returns the ratio of scenario versus ref at p.
func FindRatio(ratios []Ratio, scenario, ref string, p Point) (Ratio, bool) {
	for _, r := range ratios {
		if r.Scenario == scenario && r.Versus == ref && r.Point == p {
			return r, true
		}
	}
	return Ratio{}, false
}
