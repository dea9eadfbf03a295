package daemon

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"time"

	"golang.org/x/sys/unix"

	"github.com/kmesh-go/kmesh/pkg/bpf"
	"github.com/kmesh-go/kmesh/pkg/compile"
	"github.com/kmesh-go/kmesh/pkg/dataplane"
	"github.com/kmesh-go/kmesh/pkg/kmod"
	"github.com/kmesh-go/kmesh/pkg/l7"
	"github.com/kmesh-go/kmesh/pkg/probe"
	"github.com/kmesh-go/kmesh/pkg/version"
)

// Modes.
const (
	ModeDualEngine   = "dual-engine"
	ModeKernelNative = "kernel-native"
)

// Options is kmeshd's configuration. The zero value runs dual-engine mode
// with default paths; Source must be set.
type Options struct {
	Mode string // ModeDualEngine (default) or ModeKernelNative

	// KmodPath is the kmesh.ko loaded when kernel-native mode finds the
	// module absent (--kmod-path); empty: the module must be loaded already.
	KmodPath string

	BPFFS   string // bpffs mount, default /sys/fs/bpf
	PinDir  string // pin directory, relative to BPFFS or absolute; default "kmesh"
	Cgroup2 string // cgroup v2 mount override (autodetected otherwise)
	// Cgroup is where the programs attach: relative to the cgroup2 mount or
	// absolute. Default: the mount root (every process; enrolment decides).
	Cgroup   string
	StateDir string // default /var/lib/kmesh

	// Accel enables same-node acceleration (sk_msg redirect). Off by
	// default: an enrolled application that relays bytes with splice(2)
	// (Go's io.Copy between TCP sockets) cannot see redirected data.
	Accel bool
	// ReportInterval: periodic records for long-lived connections (0 = off).
	ReportInterval time.Duration
	// BPFStats keeps the kernel's per-program run-time accounting on while
	// the daemon runs (dataplane.ProgramStats); it costs ~20 ns per run.
	BPFStats bool
	// WaypointProtocol is the header given to waypoints: "proxy-v2"
	// (default; HAProxy, nginx, Envoy) or "kmesh-tlv" (upstream Kmesh's
	// waypoint image). See docs/waypoint.md.
	WaypointProtocol string

	// Source drives the dataplane (model file, xDS, embedded control plane).
	Source Source
	// Observability: metrics, access log, admin API.
	Observability ObservabilityOptions
	// OnReady, if set, is called once the dataplane is loaded and attached,
	// before the source starts (tests, readiness reporting).
	OnReady func(*dataplane.Dataplane)

	Logger *slog.Logger
}

func (o *Options) defaults() {
	if o.Mode == "" {
		o.Mode = ModeDualEngine
	}
	if o.StateDir == "" {
		o.StateDir = dataplane.DefaultStateDir
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
}

func (o *Options) bpfOptions() bpf.Options {
	return bpf.Options{BPFFS: o.BPFFS, PinDir: o.PinDir, Cgroup2: o.Cgroup2, Cgroup: o.Cgroup, Logger: o.Logger}
}

// Run checks the kernel, opens or adopts the pinned dataplane, and runs the
// source until ctx ends. It returns nil after a clean stop. Whatever way it
// ends, the pinned programs and maps keep serving: stopping kmeshd (SIGTERM,
// or a crash) never takes traffic down; `kmeshd uninstall` does.
func Run(ctx context.Context, opts Options) error {
	opts.defaults()
	log := opts.Logger
	switch opts.Mode {
	case ModeDualEngine, ModeKernelNative:
	default:
		return fmt.Errorf("unknown mode %q (dual-engine or kernel-native)", opts.Mode)
	}
	if opts.Source == nil {
		return errors.New("no configuration source")
	}
	if err := opts.Observability.validate(); err != nil {
		return err
	}
	log.Info("kmeshd starting", "version", version.Get().String(), "mode", opts.Mode)
	var kc *kmod.Conn
	if opts.Mode == ModeKernelNative {
		// Never a silent fallback to dual-engine: a kernel or module that
		// cannot do kernel-native mode stops kmeshd with the reason.
		var err error
		if kc, err = kmod.Ensure(kmod.Options{ModulePath: opts.KmodPath}); err != nil {
			return err
		}
		defer kc.Close()
		if info, err := kc.Hello(); err == nil {
			log.Info("kmesh.ko ready", "module_version", info.ModuleVersion, "abi", info.ABIVersion,
				"safe_mode", info.SafeMode, "max_deferred", info.MaxDeferred)
		}
	}

	if _, err := probe.Cgroup2Mount(opts.Cgroup2); err != nil {
		return err
	}
	if err := probe.Check(probe.DualEngine()); err != nil {
		return err
	}
	if err := probe.HaveSetRetval(); err != nil {
		log.Warn("bpf_set_retval is unavailable: a connect() to a service without backends fails with EPERM instead of ECONNREFUSED", "err", err)
	}

	unlock, err := lockStateDir(opts.StateDir)
	if err != nil {
		return err
	}
	defer unlock()

	if opts.BPFStats {
		c, err := bpf.EnableStats()
		if err != nil {
			return err
		}
		defer c.Close()
	}

	dpLog := log
	if opts.Observability.Logging != nil {
		dpLog = opts.Observability.Logging.Logger("dataplane")
	}
	dp, err := dataplane.Open(dataplane.Options{BPF: opts.bpfOptions(), StateDir: opts.StateDir,
		Accel: opts.Accel, ReportInterval: opts.ReportInterval, WaypointProtocol: opts.WaypointProtocol, Logger: dpLog})
	if err != nil {
		return err
	}
	defer dp.Close()
	a := dp.Objects().Adoption
	log.Info("dataplane ready", "pin_dir", dp.Objects().PinDir, "cgroup", dp.Objects().CgroupDir,
		"adopted", !a.Fresh(), "previous_layout", a.FromLayout, "layout", bpf.LayoutVersion,
		"migrated_maps", a.Migrated, "programs_replaced", len(a.Updated))
	obsLog := log
	if opts.Observability.Logging != nil {
		obsLog = opts.Observability.Logging.Logger("telemetry")
	}
	if opts.Mode == ModeKernelNative && opts.Observability.Module == nil && kc != nil {
		opts.Observability.Module = moduleCounters(kc)
	}
	obs, err := startObservability(ctx, opts.Observability, dp, opts.Mode, obsLog)
	if err != nil {
		return err
	}
	defer obs.stop()
	// The source drives the dataplane through the tracker, which mirrors what
	// is applied for the config dump, readiness and telemetry labels.
	var api dataplane.API = obs.tracker
	if opts.Mode == ModeKernelNative {
		eng, err := l7.Open(l7.Options{Dataplane: dp, StateDir: opts.StateDir, Logger: log})
		if err != nil {
			return fmt.Errorf("kernel-native: %w", err)
		}
		defer eng.Close()
		// Routing comes from Envoy config (the engine is the compile.L7Sink);
		// the Workload API, through the tracker, only enrols local workloads.
		obs.tracker.api = eng
		api = kernelNativeAPI{API: obs.tracker, L7Sink: eng}
	}
	if opts.OnReady != nil {
		opts.OnReady(dp)
	}

	err = opts.Source.Run(ctx, api)
	if ctx.Err() != nil {
		log.Info("kmeshd stopping; the pinned dataplane keeps serving")
		return nil
	}
	if err == nil {
		// A source that returns on its own (a one-shot file) leaves the
		// daemon running until it is stopped.
		<-ctx.Done()
		log.Info("kmeshd stopping; the pinned dataplane keeps serving")
		return nil
	}
	return err
}

// Uninstall removes everything kmeshd created: it detaches the programs,
// removes every pinned link, program and map, and deletes its state files.
func Uninstall(opts Options) error {
	opts.defaults()
	if pinDir, _, err := opts.bpfOptions().Paths(); err == nil {
		// Kernel-native programs first: the router holds kmesh.ko.
		if err := l7.Uninstall(pinDir); err != nil {
			return err
		}
	}
	if err := bpf.Uninstall(opts.bpfOptions()); err != nil {
		return err
	}
	if err := dataplane.RemoveState(opts.StateDir); err != nil {
		return err
	}
	os.Remove(filepath.Join(opts.StateDir, lockFile))
	os.Remove(opts.StateDir) // only if empty
	return nil
}

const lockFile = "kmeshd.lock"

// lockStateDir makes sure one daemon at a time owns a state directory (and
// so a pinned dataplane).
func lockStateDir(dir string) (func(), error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("state dir: %w", err)
	}
	f, err := os.OpenFile(filepath.Join(dir, lockFile), os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return nil, fmt.Errorf("state dir: %w", err)
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		f.Close()
		return nil, fmt.Errorf("another kmeshd is running with state dir %s (%w)", dir, err)
	}
	return func() { f.Close() }, nil
}

// kernelNativeAPI is what the source drives in kernel-native mode: the
// Workload API (enrolment) and the Envoy config (compile.L7Sink).
type kernelNativeAPI struct {
	dataplane.API
	compile.L7Sink
}

// moduleCounters reads kmesh.ko's counters for the metrics endpoint.
func moduleCounters(kc *kmod.Conn) func() (map[string]uint64, error) {
	return func() (map[string]uint64, error) {
		s, err := kc.Stats()
		if err != nil {
			return nil, err
		}
		return map[string]uint64{"parsed": s.Parsed, "parse_errors": s.ParseErrors, "deferred": s.Deferred,
			"decisions": s.Decisions, "redirects": s.Redirects, "no_route": s.NoRoute, "fallbacks": s.Fallbacks,
			"refused": s.Refused, "live": s.Live}, nil
	}
}
