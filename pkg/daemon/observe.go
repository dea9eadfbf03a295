package daemon

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"sync"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/kmesh-go/kmesh/pkg/admin"
	"github.com/kmesh-go/kmesh/pkg/bpf"
	"github.com/kmesh-go/kmesh/pkg/dataplane"
	"github.com/kmesh-go/kmesh/pkg/logging"
	"github.com/kmesh-go/kmesh/pkg/telemetry"
)

// Off disables the admin API or the metrics endpoint when given as its address.
const Off = "off"

// ObservabilityOptions configure what operators see: metrics, access log and
// the admin API. The zero value serves metrics on :15020/stats/prometheus and
// the admin API on 127.0.0.1:15200, with the access log off.
type ObservabilityOptions struct {
	AdminAddress   string // default admin.DefaultAddress; Off disables
	MetricsAddress string // default telemetry.DefaultMetricsAddress; Off disables
	// AccessLog starts the access log on (switchable with kmeshctl monitoring).
	AccessLog       bool
	AccessLogOutput io.Writer // default os.Stdout
	// MaxSeries bounds label sets per Istio metric (telemetry.DefaultMaxSeries).
	MaxSeries int
	// Logging owns the per-component log levels kmeshctl log changes.
	Logging *logging.Registry
	// Registry lets the caller register more metrics (e.g. xDS) before Run;
	// default: a fresh one.
	Registry *prometheus.Registry
	// Module returns kmesh.ko's counters (kernel-native mode).
	Module func() (map[string]uint64, error)
	// Status adds fields to the admin API's /debug/status.
	Status func() map[string]any
	// OnListening reports the bound addresses (tests pass port 0).
	OnListening func(admin, metrics net.Addr)
}

// TestObservability binds the admin API and metrics to ephemeral loopback
// ports, so tests (and several daemons on one machine) never collide on the
// well-known ones.
func TestObservability() ObservabilityOptions {
	return ObservabilityOptions{AdminAddress: "127.0.0.1:0", MetricsAddress: "127.0.0.1:0", AccessLogOutput: io.Discard}
}

// validate checks the addresses before anything touches the kernel, so a bad
// flag never leaves a half-started dataplane behind.
func (o *ObservabilityOptions) validate() error {
	if o.AdminAddress != Off && o.AdminAddress != "" {
		if _, _, err := admin.ParseAddress(o.AdminAddress); err != nil {
			return err
		}
	}
	if o.MetricsAddress != Off && o.MetricsAddress != "" {
		if _, _, err := net.SplitHostPort(o.MetricsAddress); err != nil {
			return fmt.Errorf("metrics address %q: %w", o.MetricsAddress, err)
		}
	}
	return nil
}

type observability struct {
	tracker  *tracker
	pipeline *telemetry.Pipeline
	wg       sync.WaitGroup
	cancel   context.CancelFunc
	log      *slog.Logger
}

func startObservability(ctx context.Context, o ObservabilityOptions, dp *dataplane.Dataplane, mode string, log *slog.Logger) (*observability, error) {
	ctx, cancel := context.WithCancel(ctx)
	obs := &observability{tracker: newTracker(dp), cancel: cancel, log: log}
	reg := o.Registry
	if reg == nil {
		reg = telemetry.NewRegistry()
	}
	out := o.AccessLogOutput
	if out == nil {
		out = os.Stdout
	}
	metrics := telemetry.NewTCPMetrics(reg, o.MaxSeries)
	obs.pipeline = telemetry.NewPipeline(metrics, telemetry.NewAccessLog(out, o.AccessLog))
	obs.pipeline.SetNames(obs.tracker)
	obs.pipeline.Kernel = dp
	reg.MustRegister(&telemetry.Internals{
		Maps:     func() []telemetry.MapUsage { return mapUsage(dp) },
		Programs: func() ([]telemetry.ProgramCost, error) { return programCosts(dp) },
		Counters: func() (map[string]uint64, error) { return counters(dp) },
		Module:   o.Module,
	})
	reg.MustRegister(prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "kmesh_config_applies_total",
		Help: "Configuration changes accepted by the dataplane."}, func() float64 { return float64(obs.tracker.applies.Load()) }))
	reg.MustRegister(prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "kmesh_config_rejects_total",
		Help: "Configuration changes the dataplane rejected (the last good state kept serving)."}, func() float64 { return float64(obs.tracker.rejects.Load()) }))

	events, err := dp.Events()
	if err != nil {
		cancel()
		return nil, fmt.Errorf("telemetry: %w", err)
	}
	obs.wg.Add(1)
	go func() {
		defer obs.wg.Done()
		if err := obs.pipeline.Run(ctx, eventReader{events}); err != nil {
			log.Error("telemetry stopped", "err", err)
		}
	}()

	var adminAddr, metricsAddr net.Addr
	if o.MetricsAddress != Off {
		addr := o.MetricsAddress
		if addr == "" {
			addr = telemetry.DefaultMetricsAddress
		}
		ln, err := net.Listen("tcp", addr)
		if err != nil {
			obs.stop()
			return nil, fmt.Errorf("metrics: listening on %s: %w (set --metrics-address, or off)", addr, err)
		}
		metricsAddr = ln.Addr()
		obs.wg.Add(1)
		go func() {
			defer obs.wg.Done()
			if err := telemetry.ServeMetricsOn(ctx, ln, reg); err != nil {
				log.Error("metrics server stopped", "err", err)
			}
		}()
		log.Info("metrics", "address", ln.Addr().String(), "path", telemetry.MetricsPath)
	}
	if o.AdminAddress != Off {
		srv, err := admin.Listen(admin.Options{
			Address:    o.AdminAddress,
			Logger:     log,
			Logging:    o.Logging,
			ConfigDump: func(context.Context) (any, error) { return obs.tracker.snapshot(), nil },
			BPFDump:    func(context.Context) (*admin.BPFDump, error) { return bpfDump(dp) },
			Ready:      obs.tracker.ready,
			Monitoring: obs.pipeline,
			Status: func() map[string]any {
				st := map[string]any{"mode": mode, "pinDir": dp.Objects().PinDir, "cgroup": dp.Objects().CgroupDir,
					"layout": bpf.LayoutVersion}
				u := dp.Usage()
				st["services"], st["workloads"] = u.Services, u.Workloads
				if o.Status != nil {
					for k, v := range o.Status() {
						st[k] = v
					}
				}
				return st
			},
		})
		if err != nil {
			obs.stop()
			return nil, err
		}
		adminAddr = srv.Addr()
		obs.wg.Add(1)
		go func() {
			defer obs.wg.Done()
			if err := srv.Serve(ctx); err != nil {
				log.Error("admin API stopped", "err", err)
			}
		}()
		log.Info("admin API", "address", srv.Addr().String())
	}
	if o.OnListening != nil {
		o.OnListening(adminAddr, metricsAddr)
	}
	return obs, nil
}

// Observability is kmeshd's telemetry pipeline, metrics endpoint and admin
// API around a dataplane, for callers that drive a dataplane themselves
// (the bench harness measures the daemon's telemetry path with it).
type Observability struct{ obs *observability }

// StartObservability starts what Run starts around dp. Changes must go
// through API() so that metrics and the access log can name workloads.
func StartObservability(ctx context.Context, o ObservabilityOptions, dp *dataplane.Dataplane, log *slog.Logger) (*Observability, error) {
	if err := o.validate(); err != nil {
		return nil, err
	}
	obs, err := startObservability(ctx, o, dp, "dual-engine", log)
	if err != nil {
		return nil, err
	}
	return &Observability{obs: obs}, nil
}

// API is the dataplane as the observability layer sees it.
func (o *Observability) API() dataplane.API { return o.obs.tracker }

// Stop ends the pipeline and the servers.
func (o *Observability) Stop() { o.obs.stop() }

func (obs *observability) stop() {
	obs.cancel()
	obs.wg.Wait()
}

// eventReader adapts the dataplane's ring-buffer reader to telemetry.Reader.
type eventReader struct{ r *dataplane.EventReader }

func (e eventReader) Read() (telemetry.ConnEvent, error) {
	ev, err := e.r.Read()
	if err != nil {
		if errors.Is(err, dataplane.ErrEventsClosed) {
			return telemetry.ConnEvent{}, telemetry.ErrClosed
		}
		return telemetry.ConnEvent{}, err
	}
	return telemetry.ConnEvent{
		Type: telemetry.EventType(ev.Type), Direction: telemetry.Direction(ev.Direction),
		Time: ev.Time, Start: ev.Start, Cookie: ev.Cookie,
		Local: ev.Local, Remote: ev.Remote, Original: ev.Original,
		ServiceID: ev.ServiceID, SrcWorkloadID: ev.SrcWorkloadID, DstWorkloadID: ev.DstWorkloadID,
		BytesSent: ev.BytesSent, BytesReceived: ev.BytesReceived, Retransmits: ev.Retransmits, SRTT: ev.SRTT,
	}, nil
}

func (e eventReader) Close() error { return e.r.Close() }

func mapUsage(dp *dataplane.Dataplane) []telemetry.MapUsage {
	u := dp.Usage()
	maps := dp.Objects().Maps
	entries := map[string]int{
		bpf.MapFrontend:  u.Frontends,
		bpf.MapSvcActive: u.Services,
		bpf.MapSvcGen:    u.Generations + u.PendingGenerations,
		bpf.MapEndpoint:  u.Slots + u.PendingSlots,
	}
	out := make([]telemetry.MapUsage, 0, len(entries))
	for name, n := range entries {
		if m := maps[name]; m != nil {
			out = append(out, telemetry.MapUsage{Name: name, Entries: n, Capacity: int(m.MaxEntries())})
		}
	}
	return out
}

func programCosts(dp *dataplane.Dataplane) ([]telemetry.ProgramCost, error) {
	ps, err := dp.ProgramStats()
	if err != nil {
		return nil, err
	}
	out := make([]telemetry.ProgramCost, len(ps))
	for i, p := range ps {
		out[i] = telemetry.ProgramCost{Name: p.Name, Runs: p.RunCount, RunTime: p.RunTime}
	}
	return out, nil
}

func counters(dp *dataplane.Dataplane) (map[string]uint64, error) {
	st, err := dp.Stats()
	if err != nil {
		return nil, err
	}
	out := make(map[string]uint64, len(st))
	for k, v := range st {
		out[k.String()] = v
	}
	return out, nil
}

func bpfDump(dp *dataplane.Dataplane) (*admin.BPFDump, error) {
	maps, err := dp.Objects().Dump(0)
	if err != nil {
		return nil, err
	}
	d := &admin.BPFDump{Layout: fmt.Sprint(bpf.LayoutVersion), Maps: make([]admin.MapDump, len(maps))}
	for i, m := range maps {
		d.Maps[i] = admin.MapDump{Name: m.Name, Type: m.Type, MaxEntries: m.MaxEntries, Entries: m.Entries,
			Columns: m.Columns, Rows: m.Rows, Truncated: m.Truncated, Note: m.Note}
	}
	return d, nil
}
