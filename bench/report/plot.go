package report

import (
	"fmt"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/plotutil"
	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/draw"
	"gonum.org/v1/plot/vg/vgimg"

	"github.com/kmesh-go/kmesh/bench/load"
)

// Plots writes PNGs into dir and returns their file names (relative to dir):
// for each protocol and rate, latency percentiles against connections
// ("latency-http-1000.png"), and per protocol, busy CPU per 1000 requests
// against connections ("cpu-http.png"). Curves use the headline payload.
// Failed cells are left out of the curve and named in its legend entry.
func Plots(r *Report, dir string) ([]string, error) {
	var files []string
	for _, proto := range load.Protos {
		payload := plotPayload(r.Config.Points, proto, r.Config.Headline.Payload)
		rates := ratesOf(r.Config.Points, proto, payload)
		if len(rates) == 0 {
			continue
		}
		for _, rate := range rates {
			var tiles []*plot.Plot
			for _, m := range []string{"p50", "p90", "p99", "p99.9"} {
				p := newPlot(fmt.Sprintf("%s latency, %s, %s %s", m, proto, rateLabel(rate), Bytes(payload)), "latency (µs)")
				if addCurves(p, r, proto, rate, payload, func(c Cell) float64 { return metric(c, m) }) > 0 {
					p.Y.Scale = plot.LogScale{}
					p.Y.Tick.Marker = niceLogTicks{}
				} else {
					p.Title.Text += " (no successful runs)"
				}
				tiles = append(tiles, p)
			}
			name := fmt.Sprintf("latency-%s-%s.png", proto, rateFile(rate))
			if err := saveGrid(filepath.Join(dir, name), tiles, 2); err != nil {
				return files, err
			}
			files = append(files, name)
		}
		// Row 1: the benchmark's processes (cgroup); row 2: the whole machine.
		var tiles []*plot.Plot
		for _, row := range []struct {
			what string
			y    func(Cell) float64
		}{
			{"benchmark processes", func(c Cell) float64 { return c.CPU.Lab }},
			{"whole machine", func(c Cell) float64 { return c.CPU.Busy }},
		} {
			for _, rate := range rates {
				p := newPlot(fmt.Sprintf("CPU per 1000 requests (%s), %s, %s %s", row.what, proto, rateLabel(rate), Bytes(payload)), "CPU-ms / 1000 req")
				if addCurves(p, r, proto, rate, payload, row.y) == 0 {
					p.Title.Text += " (no data)"
				}
				p.Y.Min = 0
				tiles = append(tiles, p)
			}
		}
		name := fmt.Sprintf("cpu-%s.png", proto)
		if err := saveGrid(filepath.Join(dir, name), tiles, len(rates)); err != nil {
			return files, err
		}
		files = append(files, name)
	}
	return files, nil
}

// plotPayload is the headline payload if the sweep has it for proto, else
// the payload with the most points.
func plotPayload(points []Point, proto load.Proto, headline int) int {
	count := map[int]int{}
	best := 0
	for _, p := range points {
		if p.Proto != proto {
			continue
		}
		if p.Payload == headline {
			return headline
		}
		count[p.Payload]++
		if count[p.Payload] > count[best] || (count[p.Payload] == count[best] && p.Payload < best) {
			best = p.Payload
		}
	}
	return best
}

func ratesOf(points []Point, proto load.Proto, payload int) []float64 {
	var rates []float64
	for _, p := range points {
		if p.Proto == proto && p.Payload == payload && !slices.Contains(rates, p.Rate) {
			rates = append(rates, p.Rate)
		}
	}
	return rates
}

func rateLabel(r float64) string {
	if r == 0 {
		return "max rate"
	}
	return fmt.Sprintf("%g req/s", r)
}

func rateFile(r float64) string {
	if r == 0 {
		return "max"
	}
	return strconv.FormatFloat(r, 'f', -1, 64)
}

func newPlot(title, ylabel string) *plot.Plot {
	p := plot.New()
	p.Title.Text = title
	p.X.Label.Text = "connections"
	p.Y.Label.Text = ylabel
	p.X.Scale = plot.LogScale{}
	p.X.Tick.Marker = plot.ConstantTicks(nil) // replaced by addCurves
	p.Legend.Top = true
	p.Legend.Left = true
	p.Add(plotter.NewGrid())
	return p
}

// addCurves draws one line per scenario over the connection counts of the
// (proto, rate, payload) points and returns how many points it drew.
func addCurves(p *plot.Plot, r *Report, proto load.Proto, rate float64, payload int, y func(Cell) float64) int {
	drawn := 0
	var conns []int
	for _, pt := range r.Config.Points {
		if pt.Proto == proto && pt.Rate == rate && pt.Payload == payload && !slices.Contains(conns, pt.Conns) {
			conns = append(conns, pt.Conns)
		}
	}
	slices.Sort(conns)
	var ticks []plot.Tick
	for _, c := range conns {
		ticks = append(ticks, plot.Tick{Value: float64(c), Label: strconv.Itoa(c)})
	}
	p.X.Tick.Marker = plot.ConstantTicks(ticks)
	if len(conns) > 0 {
		// Keep single-point sweeps drawable on a log axis.
		p.X.Min, p.X.Max = float64(conns[0])/1.5, float64(conns[len(conns)-1])*1.5
	}
	lo, hi := math.Inf(1), math.Inf(-1)
	for i, s := range r.Scenarios {
		var xys plotter.XYs
		var failed []string
		for _, c := range conns {
			pt := Point{Proto: proto, Conns: c, Rate: rate, Payload: payload}
			cell, ok := Find(r.Cells, s.Name, pt)
			if !ok {
				continue
			}
			if cell.Status != OK {
				failed = append(failed, strconv.Itoa(c))
				continue
			}
			if v := y(cell); v > 0 {
				xys = append(xys, plotter.XY{X: float64(c), Y: v})
				lo, hi = math.Min(lo, v), math.Max(hi, v)
			}
		}
		label := s.Name
		if len(failed) > 0 {
			label += " (failed at c=" + strings.Join(failed, ",") + ")"
		}
		if len(xys) == 0 {
			continue
		}
		line, points, err := plotter.NewLinePoints(xys)
		if err != nil {
			continue
		}
		line.Color = plotutil.Color(i)
		line.Dashes = plotutil.Dashes(i)
		points.Color = plotutil.Color(i)
		points.Shape = plotutil.Shape(i)
		p.Add(line, points)
		p.Legend.Add(label, line, points)
		drawn += len(xys)
	}
	if drawn > 0 {
		// Pad the range so points on the extremes are not drawn on the frame.
		p.Y.Min, p.Y.Max = lo/1.25, hi*1.25
	}
	return drawn
}

// niceLogTicks labels 1, 2, 5 × 10^k, which a log axis of latencies needs
// (plot.LogTicks labels only powers of ten).
type niceLogTicks struct{}

func (niceLogTicks) Ticks(min, max float64) []plot.Tick {
	if min <= 0 {
		min = 1
	}
	var ticks []plot.Tick
	for e := math.Floor(math.Log10(min)); e <= math.Ceil(math.Log10(max)); e++ {
		for _, m := range []float64{1, 2, 5} {
			v := m * math.Pow(10, e)
			if v >= min && v <= max {
				ticks = append(ticks, plot.Tick{Value: v, Label: strconv.FormatFloat(v, 'g', -1, 64)})
			}
		}
	}
	if len(ticks) < 2 { // narrow range: label the ends
		ticks = append(ticks, plot.Tick{Value: min, Label: fmt.Sprintf("%.0f", min)}, plot.Tick{Value: max, Label: fmt.Sprintf("%.0f", max)})
	}
	return ticks
}

func saveGrid(path string, plots []*plot.Plot, cols int) error {
	rows := (len(plots) + cols - 1) / cols
	img := vgimg.New(vg.Length(cols)*7*vg.Inch, vg.Length(rows)*4.5*vg.Inch)
	dc := draw.New(img)
	grid := make([][]*plot.Plot, rows)
	for i := range grid {
		grid[i] = make([]*plot.Plot, cols)
	}
	for i, p := range plots {
		grid[i/cols][i%cols] = p
	}
	t := draw.Tiles{Rows: rows, Cols: cols, PadX: vg.Millimeter * 4, PadY: vg.Millimeter * 4,
		PadTop: vg.Millimeter * 2, PadBottom: vg.Millimeter * 2, PadLeft: vg.Millimeter * 2, PadRight: vg.Millimeter * 2}
	canvases := plot.Align(grid, t, dc)
	for i, row := range grid {
		for j, p := range row {
			if p != nil {
				p.Draw(canvases[i][j])
			}
		}
	}
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if _, err := (vgimg.PngCanvas{Canvas: img}).WriteTo(f); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}
