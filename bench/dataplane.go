package bench

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/kmesh-go/kmesh/bench/load"
	"github.com/kmesh-go/kmesh/bench/netlab"
	"github.com/kmesh-go/kmesh/bench/proxy"
	"github.com/kmesh-go/kmesh/bench/report"
	"github.com/kmesh-go/kmesh/pkg/bpf"
	"github.com/kmesh-go/kmesh/pkg/daemon"
	"github.com/kmesh-go/kmesh/pkg/dataplane"
	"github.com/kmesh-go/kmesh/pkg/model"
	"github.com/kmesh-go/kmesh/pkg/probe"
)

// dataplaneScenarios are kmesh's dual-engine L4 scenarios, driven through the
// pkg/dataplane Go API exactly as kmeshd drives it: connect-time load
// balancing through a service VIP (scenario 2), and the same with same-node
// sk_msg acceleration (scenario 3).
func dataplaneScenarios() []Scenario {
	return []Scenario{
		&dualEngine{vip: netip.MustParseAddr("10.96.0.10"), base: 9080},
		&dualEngine{noTelemetry: true, vip: netip.MustParseAddr("10.96.0.15"), base: 9480},
		&dualEngine{accel: true, vip: netip.MustParseAddr("10.96.0.11"), base: 9180},
	}
}

// withClose: the scenarios that also run the new-connection-per-request
// protocol, where the telemetry overhead target is judged.
var withClose = []load.Proto{load.HTTP, load.TCP, load.HTTPClose}

// dualEngine owns one dataplane instance attached to a cgroup of its own;
// the client runs in one child cgroup and a server instance of its own in
// another, so its BPF programs see only its traffic and no other scenario
// pays for them. The VIP is routed nowhere: a connect() that the program does not
// rewrite fails, so a passing path check proves the dataplane is in the path.
type dualEngine struct {
	accel bool
	// noTelemetry switches connection records off in the kernel (what
	// kmeshctl monitoring disable does); the others run kmeshd's telemetry
	// pipeline (ring buffer → Istio metrics) with kmeshd's default settings.
	noTelemetry bool
	vip         netip.Addr
	base        uint16 // the scenario's server listens on base (http) and base+1 (tcp)
	clientCg    string
	dp          *dataplane.Dataplane
	metrics     *prometheus.Registry
}

const echoService = "bench/echo"

func (d *dualEngine) name() string {
	switch {
	case d.accel:
		return report.DualEngineAccel
	case d.noTelemetry:
		return report.DualEngineNoTelemetry
	}
	return report.DualEngine
}

func (d *dualEngine) Info() report.ScenarioInfo {
	if d.accel {
		return report.ScenarioInfo{Name: d.name(), Title: "dual-engine + same-node acceleration", Protos: both,
			Description: fmt.Sprintf("client → service VIP %s, rewritten at connect(); payload bytes between the two enrolled local sockets redirected by sk_msg, bypassing TCP/IP (kmesh, pkg/dataplane Accel)", d.vip)}
	}
	if d.noTelemetry {
		return report.ScenarioInfo{Name: d.name(), Title: "dual-engine, telemetry off", Protos: withClose,
			Description: fmt.Sprintf("as dual-engine (VIP %s), with connection records off in the kernel (kmeshctl monitoring disable): the control for the telemetry path's cost", d.vip)}
	}
	return report.ScenarioInfo{Name: d.name(), Title: "dual-engine (connect-time LB)", Protos: withClose,
		Description: fmt.Sprintf("client → service VIP %s, rewritten to the server at connect() by kmesh's cgroup programs; no proxy; sockops tracks both ends; kmeshd's telemetry pipeline (Istio metrics; kmeshd's defaults) consumes the connection records (kmesh, pkg/dataplane + pkg/daemon)", d.vip)}
}

func (d *dualEngine) Available(e *Env) error {
	if e.Lab.Cgroup == "" {
		return fmt.Errorf("needs cgroup v2 (the dataplane attaches to a cgroup)")
	}
	return nil
}

func (d *dualEngine) Setup(ctx context.Context, e *Env) error {
	name := d.name()
	attach, err := e.Lab.SubCgroup(name)
	if err != nil {
		return err
	}
	if d.clientCg, err = e.Lab.SubCgroup(filepath.Join(name, "client")); err != nil {
		return err
	}
	serverCg, err := e.Lab.SubCgroup(filepath.Join(name, "server"))
	if err != nil {
		return err
	}
	dp, logger, err := openDataplane(e, name, attach, dataplane.Options{Accel: d.accel, NoEvents: d.noTelemetry,
		ReportInterval: 10 * time.Second}, nil) // kmeshd's default report interval
	if err != nil {
		return err
	}
	d.dp = dp
	var api dataplane.API = dp
	if !d.noTelemetry {
		// kmeshd's own telemetry with its defaults: the pipeline reads the
		// ring buffer into the Istio metrics (label names resolved from the
		// model); the access log stays off, as in kmeshd (--access-log), and
		// costs more per connection (docs/observability.md). Admin API off:
		// it is not on the data path.
		d.metrics = prometheus.NewRegistry()
		obs, err := daemon.StartObservability(context.Background(), daemon.ObservabilityOptions{
			AdminAddress: daemon.Off, MetricsAddress: "127.0.0.1:0", AccessLogOutput: io.Discard,
			Registry: d.metrics}, dp, logger)
		if err != nil {
			return fmt.Errorf("telemetry: %w", err)
		}
		e.Lab.Defer("stop telemetry "+name, func() error { obs.Stop(); return nil })
		api = obs.API()
	}

	// Pods are enrolled by network namespace, as a node agent enrols pods.
	// The programs only run for sockets under this scenario's cgroup, so the
	// other scenarios' processes in the same namespaces are not affected.
	snap := &model.Snapshot{
		Version: "bench-" + name,
		Services: []model.Service{{Key: echoService, Name: "echo", Namespace: "bench", VIPs: []netip.Addr{d.vip},
			Ports: []model.ServicePort{{Name: "http", Port: 80, TargetPort: d.base}, {Name: "tcp", Port: 81, TargetPort: d.base + 1}}}},
		Workloads: []model.Workload{
			{UID: "bench/server", Name: "server", Namespace: "bench", Addresses: []netip.Addr{e.Server.IP}, Healthy: true,
				Services: map[string][]model.WorkloadPort{echoService: nil}, Enrolment: &model.Enrolment{NetnsPath: e.Server.NS.Path()}},
			{UID: "bench/client", Name: "client", Namespace: "bench", Addresses: []netip.Addr{e.Client.IP}, Healthy: true,
				Enrolment: &model.Enrolment{NetnsPath: e.Client.NS.Path()}},
		},
	}
	if err := api.Apply(ctx, snap); err != nil {
		return fmt.Errorf("dataplane apply: %w", err)
	}
	// The scenario's own server instance (same binary as everyone's), enrolled
	// so that both ends of every connection are meshed, as in a real node. It
	// starts after Apply: sockets inherit enrolment when they are created, so
	// the listeners must be created in an already enrolled cgroup.
	srv, err := e.Lab.Start(netlab.Cmd{Name: name + "-server", Netns: e.Server.NS, CPUs: e.Placement.NodeB, Nice: e.Placement.Nice, Cgroup: serverCg,
		Args: []string{e.Self, RoleServe, "-http", fmt.Sprintf(":%d", d.base), "-tcp", fmt.Sprintf(":%d", d.base+1)}})
	if err != nil {
		return err
	}
	for _, port := range []uint16{d.base, d.base + 1} {
		if err := netlab.WaitListening(ctx, e.Server.NS, netip.AddrPortFrom(e.Server.IP, port).String(), srv, proxy.ReadyTimeout); err != nil {
			return err
		}
	}
	return nil
}

func (d *dualEngine) Target(p load.Proto) Target {
	port := uint16(80)
	if p == load.TCP {
		port = 81
	}
	return Target{Addr: netip.AddrPortFrom(d.vip, port), Cgroup: d.clientCg}
}

// Check reads the dataplane's own counters: connections must have been
// load-balanced at connect(), and with acceleration, messages must have been
// redirected by sk_msg. Otherwise the scenario measured something else.
func (d *dualEngine) Check(*Env) (string, error) {
	if d.dp == nil {
		return "", fmt.Errorf("dataplane not set up")
	}
	st, err := d.dp.Stats()
	if err != nil {
		return "", fmt.Errorf("reading dataplane counters: %w", err)
	}
	evidence := fmt.Sprintf("kernel counters: %s=%d %s=%d %s=%d %s=%d %s=%d", bpf.StatConnectLB, st[bpf.StatConnectLB],
		bpf.StatLookupMiss, st[bpf.StatLookupMiss], bpf.StatAccelInsert, st[bpf.StatAccelInsert], bpf.StatAccelRedirect, st[bpf.StatAccelRedirect],
		bpf.StatEventsDropped, st[bpf.StatEventsDropped])
	if d.metrics != nil {
		opened, err := counterSum(d.metrics, "istio_tcp_connections_opened_total")
		if err != nil {
			return evidence, err
		}
		evidence += fmt.Sprintf(", telemetry: istio_tcp_connections_opened_total=%.0f", opened)
		if opened == 0 {
			return evidence, fmt.Errorf("telemetry on, but no connection reached the metrics")
		}
	}
	switch {
	case d.noTelemetry && st[bpf.StatEventsDropped] != 0:
		return evidence, fmt.Errorf("records off, but the kernel tried to write %d", st[bpf.StatEventsDropped])
	case st[bpf.StatConnectLB] == 0:
		return evidence, fmt.Errorf("no connection was load-balanced by the dataplane")
	case d.accel && st[bpf.StatAccelRedirect] == 0:
		return evidence, fmt.Errorf("sk_msg redirected nothing: same-node acceleration was not in effect")
	case !d.accel && st[bpf.StatAccelRedirect] != 0:
		return evidence, fmt.Errorf("sk_msg redirected data although acceleration is off")
	}
	return evidence, nil
}

// openDataplane opens a scenario's own dataplane instance, as kmeshd does,
// attached to the cgroup attach, pinned under a directory named after the
// lab and the scenario, logging to <name>-dataplane.log in the lab. Its
// teardown (close, then uninstall, plus uninstallToo for objects the
// scenario adds over the same pins) is registered with the lab, also for a
// half-done open.
func openDataplane(e *Env, name, attach string, o dataplane.Options, uninstallToo func(pinDir string) error) (*dataplane.Dataplane, *slog.Logger, error) {
	if err := probe.EnsureBPFFS(probe.DefaultBPFFS); err != nil {
		return nil, nil, err
	}
	logf, err := os.Create(filepath.Join(e.Lab.Dir, name+"-dataplane.log"))
	if err != nil {
		return nil, nil, err
	}
	e.Lab.Defer("close "+logf.Name(), logf.Close)
	o.BPF = bpf.Options{PinDir: filepath.Join(probe.DefaultBPFFS, e.Lab.Name(name)), Cgroup: attach}
	o.StateDir = filepath.Join(e.Lab.Dir, name+"-state")
	o.Logger = slog.New(slog.NewTextHandler(logf, &slog.HandlerOptions{Level: slog.LevelInfo}))
	// Registered before Open so a half-done load is removed too; cleanups run
	// in reverse, so the dataplane is closed, then uninstalled, then the
	// cgroups go.
	e.Lab.Defer("uninstall dataplane "+o.BPF.PinDir, func() error {
		var err error
		if uninstallToo != nil {
			err = uninstallToo(o.BPF.PinDir)
		}
		return errors.Join(err, bpf.Uninstall(o.BPF))
	})
	dp, err := dataplane.Open(o)
	if err != nil {
		return nil, nil, fmt.Errorf("dataplane: %w", err)
	}
	e.Lab.Defer("close dataplane "+name, dp.Close)
	return dp, o.Logger, nil
}

// counterSum adds up every series of a counter family.
func counterSum(reg *prometheus.Registry, name string) (float64, error) {
	mfs, err := reg.Gather()
	if err != nil {
		return 0, err
	}
	var sum float64
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			sum += m.GetCounter().GetValue()
		}
	}
	return sum, nil
}

// SweepStaleDataplanes uninstalls dataplanes pinned by a bench run that was
// killed before it could clean up (its pin directory is named after its pid,
// like the lab's namespaces): links are detached and pins removed.
func SweepStaleDataplanes() ([]string, error) {
	ents, err := os.ReadDir(probe.DefaultBPFFS)
	if err != nil {
		return nil, nil // no bpffs mounted: nothing can be pinned
	}
	var removed []string
	var errs []error
	for _, e := range ents {
		if !e.IsDir() || !netlab.DeadOwner(e.Name()) {
			continue
		}
		dir := filepath.Join(probe.DefaultBPFFS, e.Name())
		if err := bpf.Uninstall(bpf.Options{PinDir: dir}); err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", dir, err))
			continue
		}
		removed = append(removed, "bpf pins "+dir)
	}
	return removed, errors.Join(errs...)
}
