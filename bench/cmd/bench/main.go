// Command bench runs the side-by-side benchmark (make bench, make
// bench-smoke) and writes results.json, results.md and PNG plots to -out.
// It must run as root: it creates network namespaces and, for kmesh's
// scenarios, attaches BPF programs. See docs/bench.md.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/kmesh-go/kmesh/bench"
	"github.com/kmesh-go/kmesh/bench/load"
	"github.com/kmesh-go/kmesh/bench/netlab"
	"github.com/kmesh-go/kmesh/bench/report"
)

func main() {
	if len(os.Args) > 1 && bench.IsRole(os.Args[1]) {
		os.Exit(bench.RoleMain(os.Args[1], os.Args[2:]))
	}
	os.Exit(run())
}

type listFlag []string

func (l *listFlag) String() string     { return strings.Join(*l, "; ") }
func (l *listFlag) Set(v string) error { *l = append(*l, v); return nil }

func run() int {
	full := bench.FullSweep()
	var (
		out        = flag.String("out", "", "output directory for results.json, results.md and the plots (required)")
		smoke      = flag.Bool("smoke", false, "tiny sweep that checks the harness end to end (< 60 s); fails on any error")
		render     = flag.String("render", "", "re-render results.md and the plots from this results.json instead of running")
		duration   = flag.Duration("duration", 0, "measured window per run (default 5s; smoke 500ms)")
		warmup     = flag.Duration("warmup", 0, "discarded traffic before each window (default 1s; smoke 200ms)")
		repeat     = flag.Int("repeat", 0, "repetitions of the interleaved sweep (default 3; smoke 2)")
		protos     = flag.String("protos", joinProtos(full.Protos), "protocols: http,tcp,http-close (http-close: a new connection per request)")
		conns      = flag.String("conns", joinInts(full.Conns), "connection counts")
		rates      = flag.String("rates", "1000,max", "request rates per second; max = closed loop")
		payloads   = flag.String("payloads", joinInts(full.Payloads), "payload sizes in bytes (request and response)")
		matrix     = flag.Bool("matrix", false, "full cross product instead of the star around 16 conns / 1 KiB")
		scenarios  = flag.String("scenarios", "all", "comma-separated scenario names, or all")
		pin        = flag.Bool("pin", true, "pin node A and node B to separate CPU halves (taskset)")
		nodeA      = flag.String("node-a-cpus", "", "CPU list for node A (client side); overrides -pin's choice")
		nodeB      = flag.String("node-b-cpus", "", "CPU list for node B (server side); overrides -pin's choice")
		nice       = flag.Int("nice", 0, "niceness of every lab process (-20..19); negative wins CPU from other work on a shared machine")
		reqTimeout = flag.Duration("request-timeout", 5*time.Second, "per-request timeout")
		maxSamples = flag.Int("max-samples", 4_000_000, "latency samples kept per run; a run above it fails")
		notes      listFlag
		vm         = flag.Bool("vm", false, "run inside the Debian 6.12 VM with kmesh.ko (kernel-native, scenario 7); results rendered into -out")
		vmKver     = flag.String("vm-kver", "", "with -vm: guest kernel ABI (default: KVER_612 from make deps)")
		emit       = flag.Bool("emit-json", false, "print results.json on stdout between markers (used by -vm inside the guest)")
		headline   = flag.String("headline", "", "judge the targets at this point instead of http,16,1000,1024 (proto,conns,rate,payload; rate may be max): for machines that cannot carry the headline load, e.g. the TCG guest of -vm")
	)
	flag.Var(&notes, "note", "a note recorded with the results (repeatable), e.g. \"shared 2-vCPU VM\"")
	flag.Parse()
	if *out == "" {
		fmt.Fprintln(os.Stderr, "bench: -out is required")
		return 2
	}
	if err := os.MkdirAll(*out, 0o755); err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		return 1
	}
	// Logs of an earlier failed run would be mistaken for this run's.
	if err := os.RemoveAll(filepath.Join(*out, "logs")); err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		return 1
	}
	if *vm {
		return runVM(os.Args[1:], *out, *vmKver)
	}
	if *render != "" {
		rep, err := report.ReadJSON(*render)
		if err != nil {
			fmt.Fprintln(os.Stderr, "bench:", err)
			return 1
		}
		report.Build(rep)
		return write(rep, *out, nil)
	}
	if os.Geteuid() != 0 {
		fmt.Fprintln(os.Stderr, "bench: must run as root (network namespaces, BPF): sudo make bench")
		return 2
	}

	o := bench.Options{Smoke: *smoke, Headline: bench.Headline, RequestTimeout: *reqTimeout, MaxSamples: *maxSamples,
		Progress: os.Stderr, Notes: notes, LogDir: filepath.Join(*out, "logs")}
	o.Duration, o.Warmup, o.Repeat = 5*time.Second, time.Second, 3
	if *smoke {
		o.Duration, o.Warmup, o.Repeat = 500*time.Millisecond, 200*time.Millisecond, 2
		o.Points = bench.SmokePoints()
		o.Notes = append(o.Notes, "smoke run: checks that every scenario works end to end; too short for meaningful numbers")
	}
	if *duration > 0 {
		o.Duration = *duration
	}
	if *warmup > 0 {
		o.Warmup = *warmup
	}
	if *repeat > 0 {
		o.Repeat = *repeat
	}
	if !*smoke {
		sw, err := parseSweep(*protos, *conns, *rates, *payloads)
		if err != nil {
			fmt.Fprintln(os.Stderr, "bench:", err)
			return 2
		}
		sw.Matrix = *matrix
		protosSet := false
		flag.Visit(func(f *flag.Flag) { protosSet = protosSet || f.Name == "protos" })
		if !protosSet {
			sw.Extra = full.Extra // the telemetry overhead point (http-close)
		}
		if *headline != "" {
			h, err := parsePoint(*headline)
			if err != nil {
				fmt.Fprintln(os.Stderr, "bench: -headline:", err)
				return 2
			}
			sw.Headline, o.Headline = h, h
		}
		if o.Points, err = sw.Points(); err != nil {
			fmt.Fprintln(os.Stderr, "bench:", err)
			return 2
		}
	}
	sel, err := selectScenarios(*scenarios)
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		return 2
	}
	o.Scenarios = sel
	if *pin {
		o.Placement = bench.DefaultPlacement()
	}
	if *nodeA != "" {
		o.Placement.NodeA = *nodeA
	}
	if *nodeB != "" {
		o.Placement.NodeB = *nodeB
	}
	if *nice < -20 || *nice > 19 {
		fmt.Fprintln(os.Stderr, "bench: -nice: want -20..19")
		return 2
	}
	o.Placement.Nice = *nice
	if o.Self, err = os.Executable(); err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		return 1
	}
	o.Command = "go run ./bench/cmd/bench " + shellJoin(os.Args[1:])

	// Pins first: their links refer to the dead run's cgroups.
	removedPins, perr := bench.SweepStaleDataplanes()
	removed, err := netlab.SweepStale()
	if removed = append(removedPins, removed...); len(removed) > 0 || perr != nil || err != nil {
		fmt.Fprintf(os.Stderr, "bench: removed leftovers of killed runs: %v (errors: %v)\n", removed, errors.Join(perr, err))
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	rep, runErr := bench.Run(ctx, o)
	code := 0
	if rep != nil {
		code = write(rep, *out, runErr)
		if *emit {
			if err := emitJSON(*out); err != nil {
				fmt.Fprintln(os.Stderr, "bench: -emit-json:", err)
				code = 1
			}
		}
	}
	if runErr != nil {
		fmt.Fprintln(os.Stderr, "bench:", runErr)
		if errors.Is(runErr, context.Canceled) {
			return 130
		}
		return 1
	}
	return code
}

// write saves the outputs and prints the verdicts; it returns 1 if any cell
// failed, so a broken scenario can never pass unnoticed.
func write(rep *report.Report, dir string, runErr error) int {
	plots, perr := report.Plots(rep, dir)
	md := report.Markdown(rep, plots)
	for _, err := range []error{
		report.WriteJSON(rep, filepath.Join(dir, "results.json")),
		os.WriteFile(filepath.Join(dir, "results.md"), []byte(md), 0o644),
		perr,
	} {
		if err != nil {
			fmt.Fprintln(os.Stderr, "bench: writing results:", err)
			return 1
		}
	}
	fmt.Printf("results: %s (%d cells, %d failed)\n", filepath.Join(dir, "results.md"), len(rep.Cells), len(rep.Failed))
	if rep.Config.Smoke && len(rep.Targets) > 0 {
		fmt.Println("  targets are not judged by a smoke run (runs too short for meaningful ratios); values for reference only:")
	}
	for _, t := range rep.Targets {
		v := "—"
		if t.Verdict != report.NotMeasured {
			v = fmt.Sprintf("%.2f", t.Value)
		}
		verdict := string(t.Verdict)
		if rep.Config.Smoke && t.Verdict != report.NotMeasured {
			verdict = "(smoke)"
		}
		fmt.Printf("  target %-45s %s %.2f: %-6s %s %s\n", t.Text, t.Op, t.Limit, v, verdict, t.Reason)
	}
	for _, f := range rep.Failed {
		fmt.Printf("  FAILED %s\n", f)
	}
	if len(rep.Failed) > 0 {
		return 1
	}
	ran := 0
	for _, c := range rep.Cells {
		if c.Status == report.OK {
			ran++
		}
	}
	if ran == 0 && runErr == nil {
		fmt.Println("  no scenario produced results")
		return 1
	}
	return 0
}

func selectScenarios(list string) ([]bench.Scenario, error) {
	all := bench.Builtin()
	if list == "all" || list == "" {
		return all, nil
	}
	byName := map[string]bench.Scenario{}
	var names []string
	for _, s := range all {
		byName[s.Info().Name] = s
		names = append(names, s.Info().Name)
	}
	var sel []bench.Scenario
	for _, n := range strings.Split(list, ",") {
		s, ok := byName[strings.TrimSpace(n)]
		if !ok {
			return nil, fmt.Errorf("unknown scenario %q (have %s)", n, strings.Join(names, ", "))
		}
		sel = append(sel, s)
	}
	return sel, nil
}

func parseSweep(protos, conns, rates, payloads string) (bench.Sweep, error) {
	sw := bench.Sweep{Headline: bench.Headline}
	var errs []error
	for _, p := range strings.Split(protos, ",") {
		sw.Protos = append(sw.Protos, load.Proto(strings.TrimSpace(p)))
	}
	var err error
	if sw.Conns, err = parseInts(conns); err != nil {
		errs = append(errs, fmt.Errorf("-conns: %w", err))
	}
	if sw.Payloads, err = parseInts(payloads); err != nil {
		errs = append(errs, fmt.Errorf("-payloads: %w", err))
	}
	for _, r := range strings.Split(rates, ",") {
		r = strings.TrimSpace(r)
		if r == "max" {
			sw.Rates = append(sw.Rates, 0)
			continue
		}
		v, err := strconv.ParseFloat(r, 64)
		if err != nil || v <= 0 {
			errs = append(errs, fmt.Errorf("-rates: %q: want a positive number or max", r))
			continue
		}
		sw.Rates = append(sw.Rates, v)
	}
	return sw, errors.Join(errs...)
}

// parsePoint reads "proto,conns,rate,payload" (rate: a number or max).
func parsePoint(s string) (report.Point, error) {
	f := strings.Split(s, ",")
	if len(f) != 4 {
		return report.Point{}, fmt.Errorf("%q: want proto,conns,rate,payload", s)
	}
	sw, err := parseSweep(f[0], f[1], f[2], f[3])
	if err != nil {
		return report.Point{}, err
	}
	return report.Point{Proto: sw.Protos[0], Conns: sw.Conns[0], Rate: sw.Rates[0], Payload: sw.Payloads[0]}, nil
}

func parseInts(s string) ([]int, error) {
	var v []int
	for _, f := range strings.Split(s, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil {
			return nil, err
		}
		v = append(v, n)
	}
	return v, nil
}

func joinInts(v []int) string {
	s := make([]string, len(v))
	for i, n := range v {
		s[i] = strconv.Itoa(n)
	}
	return strings.Join(s, ",")
}

func joinProtos(v []load.Proto) string {
	s := make([]string, len(v))
	for i, p := range v {
		s[i] = string(p)
	}
	return strings.Join(s, ",")
}

// shellJoin quotes arguments so the recorded command can be pasted back.
func shellJoin(args []string) string {
	out := make([]string, len(args))
	for i, a := range args {
		if a != "" && strings.IndexFunc(a, func(r rune) bool {
			return !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || strings.ContainsRune("-_./,:=+@%", r))
		}) < 0 {
			out[i] = a
			continue
		}
		out[i] = "'" + strings.ReplaceAll(a, "'", `'\''`) + "'"
	}
	return strings.Join(out, " ")
}
