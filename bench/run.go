package bench

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/kmesh-go/kmesh/bench/load"
	"github.com/kmesh-go/kmesh/bench/netlab"
	"github.com/kmesh-go/kmesh/bench/report"
)

// Subnet is the bridge network of the lab. Hosts have no default route, so
// nothing can leave the lab's namespaces.
var Subnet = netip.MustParsePrefix("10.78.0.0/24")

// Options configure a run. Zero values are filled by Normalize.
type Options struct {
	Smoke          bool
	Points         []report.Point
	Headline       report.Point
	Scenarios      []Scenario
	Duration       time.Duration // measured window per run
	Warmup         time.Duration // traffic before the window, discarded
	Repeat         int           // repetitions of the whole interleaved sweep
	RequestTimeout time.Duration
	MaxSamples     int // latency samples kept per run
	Placement      Placement
	Self           string // the bench binary (os.Executable)
	Command        string // how the run was started, for the record
	Notes          []string
	Progress       io.Writer // progress lines; nil = none
	// LogDir receives the lab's process and proxy logs when anything failed
	// ("" = not kept).
	LogDir string
	// SetupTimeout bounds each scenario's Setup.
	SetupTimeout time.Duration
}

// Run builds the lab, sets up every scenario, runs the interleaved sweep and
// returns the report. The lab is torn down before Run returns, on success,
// failure or cancellation (Ctrl-C). A non-nil error with a non-nil report
// means the run was cut short; the partial report is still worth writing.
func Run(ctx context.Context, o Options) (rep *report.Report, err error) {
	start := time.Now()
	if err := o.validate(); err != nil {
		return nil, err
	}
	rep = &report.Report{
		Environment: CaptureEnvironment(o.Command),
		Config: report.Config{
			Smoke: o.Smoke, Duration: o.Duration.String(), Warmup: o.Warmup.String(), Repeat: o.Repeat,
			Points: o.Points, Headline: o.Headline,
		},
	}
	rep.Environment.Notes = append(rep.Environment.Notes, o.Notes...)
	rep.Environment.Placement = map[string]string{"node A (client pod, its proxies)": orAll(o.Placement.NodeA),
		"node B (server pod, its proxies, waypoint)": orAll(o.Placement.NodeB)}
	if o.Placement.Nice != 0 {
		rep.Environment.Placement["niceness of every lab process"] = fmt.Sprint(o.Placement.Nice)
	}
	defer func() {
		rep.Elapsed = time.Since(start).Round(time.Second).String()
		if la := loadAvg(); la != "" {
			rep.Environment.Notes = append(rep.Environment.Notes, "load average at end (1/5/15 min): "+la)
		}
		report.Build(rep)
	}()

	lab, err := netlab.New()
	if err != nil {
		return rep, err
	}
	defer func() {
		if o.LogDir != "" && (err != nil || anyFailed(rep.Runs)) {
			if saved, serr := lab.SaveLogs(o.LogDir, 1<<20); serr == nil && len(saved) > 0 {
				rep.Environment.Notes = append(rep.Environment.Notes, fmt.Sprintf("process and proxy logs of this run kept in %s", o.LogDir))
			}
		}
		if cerr := lab.Close(); cerr != nil {
			err = errors.Join(err, fmt.Errorf("cleanup: %w", cerr))
		}
	}()
	env, err := buildEnv(ctx, lab, o)
	if err != nil {
		return rep, fmt.Errorf("lab: %w", err)
	}

	setupErr := make([]error, len(o.Scenarios))
	for i, s := range o.Scenarios {
		info := s.Info()
		rep.Config.Scenarios = append(rep.Config.Scenarios, info.Name)
		if aerr := s.Available(env); aerr != nil {
			info.Available, info.Reason = false, aerr.Error()
			setupErr[i] = aerr
		} else {
			info.Available = true
			sctx, cancel := context.WithTimeout(ctx, o.SetupTimeout)
			if serr := s.Setup(sctx, env); serr != nil {
				setupErr[i] = fmt.Errorf("setup failed: %w", serr)
				info.Reason = setupErr[i].Error()
			} else if slices.Contains(info.Protos, load.HTTP) {
				peer, perr := probePeer(sctx, env, s.Target(load.HTTP))
				if perr != nil {
					setupErr[i] = fmt.Errorf("path check failed: %w", perr)
					info.Reason = setupErr[i].Error()
				}
				info.ServerSees = peer
			}
			cancel()
		}
		rep.Scenarios = append(rep.Scenarios, info)
		if ctx.Err() != nil {
			return rep, ctx.Err()
		}
	}

	plan := Plan(o.Repeat, o.Points, rep.Scenarios)
	prog := newProgress(o.Progress, len(plan))
	for seq, pr := range plan {
		if ctx.Err() != nil {
			rep.Environment.Notes = append(rep.Environment.Notes, fmt.Sprintf("INTERRUPTED after %d of %d runs", seq, len(plan)))
			return rep, ctx.Err()
		}
		select {
		case <-env.ServerProc.Done():
			return rep, fmt.Errorf("echo server exited: %v; log: %s", env.ServerProc.Err(), env.ServerProc.LogTail(2048))
		default:
		}
		s := o.Scenarios[pr.Scenario]
		name := rep.Scenarios[pr.Scenario].Name
		run := report.Run{Seq: seq + 1, Rep: pr.Rep, Scenario: name, Point: pr.Point}
		prog.step(seq, pr.Rep, o.Repeat, pr.Point, name)
		switch serr := setupErr[pr.Scenario]; {
		case serr != nil && !rep.Scenarios[pr.Scenario].Available:
			run.Status, run.Reason = report.Skipped, serr.Error()
		case serr != nil:
			run.Status, run.Reason = report.Failed, serr.Error()
		default:
			res, cerr := runClient(ctx, env, o, s.Target(pr.Point.Proto), pr.Point)
			if ctx.Err() != nil {
				// Cut short by the interrupt, not a failure of the scenario.
				rep.Environment.Notes = append(rep.Environment.Notes, fmt.Sprintf("INTERRUPTED after %d of %d runs", seq, len(plan)))
				return rep, ctx.Err()
			}
			run.Result = res
			run.Status, run.Reason = Classify(pr.Point, res, cerr)
		}
		rep.Runs = append(rep.Runs, run)
	}
	prog.done()
	check(env, o.Scenarios, setupErr, rep)
	return rep, nil
}

// check runs the post-sweep checks and fails the runs of a scenario whose
// mechanism was not in effect.
func check(env *Env, scenarios []Scenario, setupErr []error, rep *report.Report) {
	for i, s := range scenarios {
		c, ok := s.(Checker)
		if !ok || setupErr[i] != nil {
			continue
		}
		evidence, err := c.Check(env)
		rep.Scenarios[i].Evidence = evidence
		if err == nil {
			continue
		}
		reason := "post-run check failed: " + err.Error()
		rep.Scenarios[i].Reason = reason
		for j := range rep.Runs {
			if rep.Runs[j].Scenario == rep.Scenarios[i].Name && rep.Runs[j].Status == report.OK {
				rep.Runs[j].Status, rep.Runs[j].Reason = report.Failed, reason
			}
		}
	}
}

func anyFailed(runs []report.Run) bool {
	for _, r := range runs {
		if r.Status == report.Failed {
			return true
		}
	}
	return false
}

func orAll(cpus string) string {
	if cpus == "" {
		return "not pinned"
	}
	return "CPU " + cpus
}

func (o *Options) validate() error {
	var errs []error
	if len(o.Points) == 0 {
		errs = append(errs, errors.New("no sweep points"))
	}
	if len(o.Scenarios) == 0 {
		errs = append(errs, errors.New("no scenarios"))
	}
	if o.Repeat < 1 || o.Repeat > 100 {
		errs = append(errs, fmt.Errorf("repeat %d: want 1..100", o.Repeat))
	}
	if o.Self == "" {
		errs = append(errs, errors.New("the bench binary (Options.Self) is not set"))
	}
	if o.SetupTimeout <= 0 {
		o.SetupTimeout = time.Minute
	}
	for _, p := range o.Points {
		s := load.Spec{Proto: p.Proto, Addr: "x:1", Conns: p.Conns, Rate: p.Rate, Payload: p.Payload,
			Warmup: o.Warmup, Duration: o.Duration, RequestTimeout: o.RequestTimeout, MaxSamples: o.MaxSamples}
		if err := s.Validate(); err != nil {
			errs = append(errs, fmt.Errorf("point %s: %w", p, err))
		}
	}
	return errors.Join(errs...)
}

// PlannedRun is one entry of the run order.
type PlannedRun struct {
	Rep      int
	Point    report.Point
	Scenario int // index into the scenario list
}

// Plan interleaves: for each repetition, for each point, every scenario that
// carries the point's protocol, in order (A B C A B C ...). Unavailable
// scenarios stay in the plan and are recorded as skipped.
func Plan(repeat int, points []report.Point, scenarios []report.ScenarioInfo) []PlannedRun {
	var plan []PlannedRun
	for rep := 1; rep <= repeat; rep++ {
		for _, p := range points {
			for i, s := range scenarios {
				for _, proto := range s.Protos {
					if proto == p.Proto {
						plan = append(plan, PlannedRun{Rep: rep, Point: p, Scenario: i})
					}
				}
			}
		}
	}
	return plan
}

func buildEnv(ctx context.Context, lab *netlab.Lab, o Options) (*Env, error) {
	br, err := lab.NewBridge(Subnet)
	if err != nil {
		return nil, err
	}
	env := &Env{Lab: lab, Bridge: br, Placement: o.Placement, Self: o.Self}
	if env.Client, err = br.AddHost("client"); err != nil {
		return nil, err
	}
	if env.Server, err = br.AddHost("server"); err != nil {
		return nil, err
	}
	env.ServerProc, err = lab.Start(netlab.Cmd{Name: "server", Netns: env.Server.NS, CPUs: o.Placement.NodeB, Nice: o.Placement.Nice,
		Args: []string{o.Self, RoleServe, "-http", fmt.Sprintf(":%d", ServerHTTPPort), "-tcp", fmt.Sprintf(":%d", ServerTCPPort)}})
	if err != nil {
		return nil, err
	}
	for _, p := range load.Protos {
		if err := netlab.WaitListening(ctx, env.Server.NS, env.ServerAddr(p).String(), env.ServerProc, 10*time.Second); err != nil {
			return nil, err
		}
	}
	return env, nil
}

// probePeer asks the server, through the scenario, who its peer is.
func probePeer(ctx context.Context, env *Env, t Target) (string, error) {
	if !t.Addr.IsValid() {
		return "", errors.New("scenario has no target address")
	}
	out, err := env.Lab.Output(ctx, netlab.Cmd{Name: "probe", Netns: env.Client.NS, Cgroup: t.Cgroup,
		Args: []string{env.Self, RoleProbe, "-addr", t.Addr.String()}}, 15*time.Second)
	return strings.TrimSpace(string(out)), err
}

// runClient runs one client process in the client pod (and the target's
// cgroup, if any) and decodes its result.
func runClient(ctx context.Context, env *Env, o Options, t Target, p report.Point) (*load.Result, error) {
	if !t.Addr.IsValid() {
		return nil, errors.New("scenario has no target address")
	}
	spec := load.Spec{Proto: p.Proto, Addr: t.Addr.String(), Conns: p.Conns, Rate: p.Rate, Payload: p.Payload,
		Warmup: o.Warmup, Duration: o.Duration, RequestTimeout: o.RequestTimeout, MaxSamples: o.MaxSamples}
	var extra []*os.File
	if env.Lab.Cgroup != "" {
		f, err := os.Open(env.Lab.Cgroup)
		if err != nil {
			return nil, fmt.Errorf("lab cgroup: %w", err)
		}
		defer f.Close()
		extra = append(extra, f)
		spec.CPUCgroupFD = 3 // the first ExtraFile
	}
	raw, err := json.Marshal(spec)
	if err != nil {
		return nil, err
	}
	timeout := o.Warmup + o.Duration + 2*o.RequestTimeout + 30*time.Second
	out, err := env.Lab.Output(ctx, netlab.Cmd{Name: "client", Netns: env.Client.NS, CPUs: o.Placement.NodeA, Nice: o.Placement.Nice,
		Cgroup: t.Cgroup, Args: []string{o.Self, RoleLoad, "-spec", string(raw)}, ExtraFiles: extra}, timeout)
	if err != nil {
		return nil, err
	}
	var res load.Result
	if err := json.Unmarshal(out, &res); err != nil {
		return nil, fmt.Errorf("client result %q: %w", out, err)
	}
	return &res, nil
}

// Classify decides whether a run counts. Any error, failed request (also
// during warm-up), truncated sample set, or connection count below the
// requested one fails the run, with the reason.
func Classify(p report.Point, res *load.Result, err error) (report.Status, string) {
	switch {
	case err != nil:
		return report.Failed, "client: " + err.Error()
	case res == nil:
		return report.Failed, "client returned no result"
	case res.Errors > 0:
		return report.Failed, fmt.Sprintf("%d of %d requests failed (first: %s)", res.Errors, res.Requests, res.FirstError)
	case res.WarmupErrors > 0:
		return report.Failed, fmt.Sprintf("%d of %d warm-up requests failed", res.WarmupErrors, res.WarmupRequests)
	case res.OK == 0:
		return report.Failed, "no successful requests"
	case res.Truncated:
		return report.Failed, "more requests than the latency sample budget; lower -duration or raise -max-samples"
	case res.Conns < p.Conns:
		return report.Failed, fmt.Sprintf("fortio used %d of %d connections (rate × duration too small for the connection count)", res.Conns, p.Conns)
	}
	return report.OK, ""
}
