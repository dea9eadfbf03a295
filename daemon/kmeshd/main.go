// Command kmeshd is the kmesh-go node daemon: it takes mesh configuration from a
// control plane and programs the kernel (eBPF, and kmesh.ko in kernel-native
// mode). This file only turns flags into daemon.Options; the logic lives in pkg/.
//
//	kmeshd [flags]            run (SIGTERM/SIGINT stop it; the dataplane keeps serving)
//	kmeshd uninstall [flags]  detach and remove every program, link, pin and map, and the state files
//	kmeshd version
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"runtime"
	"runtime/debug"
	"strings"
	"syscall"
	"time"

	"github.com/kmesh-go/kmesh/pkg/admin"
	"github.com/kmesh-go/kmesh/pkg/controlplane"
	"github.com/kmesh-go/kmesh/pkg/daemon"
	"github.com/kmesh-go/kmesh/pkg/dataplane"
	"github.com/kmesh-go/kmesh/pkg/logging"
	"github.com/kmesh-go/kmesh/pkg/probe"
	"github.com/kmesh-go/kmesh/pkg/telemetry"
	"github.com/kmesh-go/kmesh/pkg/version"
	"github.com/kmesh-go/kmesh/pkg/xds"
	"github.com/kmesh-go/kmesh/pkg/xdssource"
)

type flags struct {
	opts      daemon.Options
	logLevel  string
	logFormat string
	modelFile string
	xds       xdssource.Options
	memLimit  int64
	heapProf  bool
}

// The heap profiler is off unless --heap-profile asks for it (or GODEBUG sets
// memprofilerate): its sampling keeps a 1.4 MB bucket table resident plus a
// record per sampled call stack, ~1.5 MB of a 100k-workload daemon's RSS,
// and only /debug/pprof/heap and allocs use it. Set in a package variable so
// it takes effect before main runs (only the dependencies' initialisers are
// sampled).
var _ = func() int {
	if !strings.Contains(os.Getenv("GODEBUG"), "memprofilerate=") {
		runtime.MemProfileRate = 0
	}
	return 0
}()

func parseFlags(args []string) (*flags, error) {
	f := &flags{}
	fs := flag.NewFlagSet("kmeshd", flag.ContinueOnError)
	fs.StringVar(&f.opts.Mode, "mode", daemon.ModeDualEngine, "dual-engine (eBPF L4 + waypoint L7) or kernel-native (needs kmesh.ko)")
	fs.StringVar(&f.opts.KmodPath, "kmod-path", "", "kernel-native: kmesh.ko to load when the module is not loaded (e.g. /lib/modules/kmesh/kmesh.ko)")
	fs.StringVar(&f.opts.BPFFS, "bpffs", probe.DefaultBPFFS, "bpffs mount (mounted if needed)")
	fs.StringVar(&f.opts.PinDir, "pin-dir", "kmesh", "pin directory, relative to --bpffs or absolute")
	fs.StringVar(&f.opts.Cgroup2, "cgroup2", "", "cgroup v2 mount (default: autodetect)")
	fs.StringVar(&f.opts.Cgroup, "cgroup", "", "cgroup the programs attach to, relative to the cgroup2 mount (default: its root)")
	fs.StringVar(&f.opts.StateDir, "state-dir", dataplane.DefaultStateDir, "directory for ids and the applied model")
	fs.BoolVar(&f.opts.Accel, "accel", false, "same-node acceleration: sk_msg redirect between enrolled local sockets "+
		"(breaks applications that relay with splice(2), e.g. Go io.Copy between TCP conns)")
	fs.DurationVar(&f.opts.ReportInterval, "report-interval", 10*time.Second, "periodic connection records (metrics, long-lived connections); 0 = only at open and close")
	fs.BoolVar(&f.opts.BPFStats, "bpf-stats", false, "keep BPF run-time accounting on (per-program cost for metrics)")
	fs.StringVar(&f.opts.WaypointProtocol, "waypoint-protocol", dataplane.WaypointProxyV2, "header telling a waypoint the original destination: "+
		"proxy-v2 (PROXY protocol v2: HAProxy, nginx, Envoy) or kmesh-tlv (upstream Kmesh's waypoint image)")
	fs.StringVar(&f.modelFile, "model-file", "", "debugging/test source: apply a model.Snapshot from this JSON/YAML file, re-applied on change")
	fs.StringVar(&f.xds.XDSAddress, "xds-address", "", "xDS server (istiod, e.g. istiod.istio-system.svc:15012); default: the embedded control plane serving --config")
	fs.StringVar(&f.xds.XDSCA, "xds-ca", "", "PEM root certificate of the xDS server (TLS when set; plaintext otherwise, for local servers)")
	fs.StringVar(&f.xds.XDSToken, "xds-token-file", "", "bearer token file sent to the xDS server (re-read per stream)")
	fs.StringVar(&f.xds.ConfigFile, "config", "", "mesh file served by the embedded control plane (default "+xdssource.DefaultConfig+"; see docs/config.md)")
	fs.StringVar(&f.xds.Listen, "xds-listen", controlplane.DefaultListen, "address of the embedded control plane (loopback only)")
	fs.StringVar(&f.opts.Observability.AdminAddress, "admin-address", admin.DefaultAddress, "admin API (kmeshctl): loopback host:port or unix:/path; off disables")
	fs.StringVar(&f.opts.Observability.MetricsAddress, "metrics-address", telemetry.DefaultMetricsAddress, "Prometheus metrics at "+telemetry.MetricsPath+"; off disables")
	fs.BoolVar(&f.opts.Observability.AccessLog, "access-log", false, "JSON access log on stdout, one line per closed connection (switch at runtime: kmeshctl monitoring)")
	fs.StringVar(&f.logLevel, "log-level", "info", "debug, info, warn or error (per component at runtime: kmeshctl log --set xds:debug)")
	fs.Int64Var(&f.memLimit, "memory-limit-mib", 0, "soft memory limit for the Go runtime in MiB (0 = none; GOMEMLIMIT overrides). Keep it well above the peak of a full config push, or parsing it thrashes the GC")
	fs.StringVar(&f.logFormat, "log-format", "text", "text or json")
	fs.BoolVar(&f.heapProf, "heap-profile", false, "sample allocations for the admin API's /debug/pprof/heap and allocs profiles (empty without it; "+
		"costs ~1.5 MB of memory on a large mesh; GODEBUG=memprofilerate=N overrides)")
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("unexpected arguments: %v", fs.Args())
	}
	return f, nil
}

// logging builds the registry of named loggers (levels changeable at runtime).
func (f *flags) logging() (*logging.Registry, error) {
	level, err := logging.ParseLevel(f.logLevel)
	if err != nil {
		return nil, fmt.Errorf("--log-level: %w", err)
	}
	if f.logFormat != "text" && f.logFormat != "json" {
		return nil, fmt.Errorf("--log-format: %q (text or json)", f.logFormat)
	}
	reg := logging.New(logging.Options{Output: os.Stderr, JSON: f.logFormat == "json", Level: level})
	for _, name := range []string{"kmeshd", "dataplane", "xds", "telemetry"} {
		reg.Logger(name) // listed by kmeshctl log from the start
	}
	return reg, nil
}

// source picks the configuration source: --model-file for debugging, else
// the xDS client, connected to --xds-address or to the embedded control plane.
func (f *flags) source(log *slog.Logger) (daemon.Source, error) {
	if f.modelFile != "" {
		if f.xds.XDSAddress != "" || f.xds.ConfigFile != "" {
			return nil, errors.New("--model-file cannot be combined with --xds-address or --config")
		}
		return daemon.ModelFile{Path: f.modelFile, Logger: log}, nil
	}
	f.xds.Mode, f.xds.Logger = f.opts.Mode, log
	return xdssource.New(f.xds)
}

func run(args []string) error {
	cmd := "run"
	if len(args) > 0 && (args[0] == "uninstall" || args[0] == "version") {
		cmd, args = args[0], args[1:]
	}
	if cmd == "version" {
		fmt.Println("kmeshd", version.Get())
		return nil
	}
	f, err := parseFlags(args)
	if err != nil {
		return err
	}
	logs, err := f.logging()
	if err != nil {
		return err
	}
	log := logs.Logger("kmeshd")
	slog.SetDefault(log)
	f.opts.Logger = log
	f.opts.Observability.Logging = logs
	if f.heapProf && !strings.Contains(os.Getenv("GODEBUG"), "memprofilerate=") {
		runtime.MemProfileRate = 512 << 10 // the runtime's default
	}
	if _, set := os.LookupEnv("GOMEMLIMIT"); !set && f.memLimit > 0 {
		debug.SetMemoryLimit(f.memLimit << 20)
	}
	if cmd == "uninstall" {
		if err := daemon.Uninstall(f.opts); err != nil {
			return err
		}
		log.Info("kmesh dataplane uninstalled")
		return nil
	}
	// Metrics registered before the daemon starts (the xDS client's hooks).
	f.opts.Observability.Registry = telemetry.NewRegistry()
	xm := telemetry.NewXDSMetrics(f.opts.Observability.Registry)
	f.xds.Hooks = xds.Hooks{OnConnect: xm.OnConnect, OnDisconnect: xm.OnDisconnect, OnACK: xm.OnACK, OnNACK: xm.OnNACK}
	if f.opts.Source, err = f.source(logs.Logger("xds")); err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	return daemon.Run(ctx, f.opts)
}

func main() {
	if err := run(os.Args[1:]); err != nil {
		if !errors.Is(err, flag.ErrHelp) {
			fmt.Fprintln(os.Stderr, "kmeshd:", err)
		}
		os.Exit(1)
	}
}
