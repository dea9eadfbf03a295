// Package xdssource is kmeshd's default configuration source: the xDS client
// (pkg/xds) feeding the compile passes (pkg/compile) that drive the
// dataplane, connected either to istiod (--xds-address) or, on a single host,
// to the embedded control plane (pkg/controlplane) serving a YAML file. In
// both cases the client speaks the same protocol to a real xDS server.
package xdssource

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/kmesh-go/kmesh/pkg/compile"
	"github.com/kmesh-go/kmesh/pkg/controlplane"
	"github.com/kmesh-go/kmesh/pkg/dataplane"
	"github.com/kmesh-go/kmesh/pkg/xds"
)

// Modes (the same strings as kmeshd's --mode).
const (
	ModeDualEngine   = "dual-engine"
	ModeKernelNative = "kernel-native"
)

// DefaultConfig is the embedded control plane's file when none is given.
const DefaultConfig = "deploy/standalone/mesh.yaml"

// Options configures the source. The zero value runs dual-engine mode against
// the embedded control plane serving DefaultConfig.
type Options struct {
	Mode string
	// XDSAddress of istiod (or any xDS server); empty starts the embedded
	// control plane on Listen and connects to it.
	XDSAddress string
	XDSCA      string // root certificate: TLS when set
	XDSToken   string // bearer token file
	// ConfigFile and Listen configure the embedded control plane.
	ConfigFile string
	Listen     string
	// Identity is the node identity sent to the server (default: from the
	// environment, see xds.IdentityFromEnv).
	Identity *xds.NodeIdentity
	// L7 receives the kernel-native model (issue #6); nil keeps it in the
	// compiler only.
	L7 compile.L7Sink
	// Hooks and OnApplied expose pushes, NACKs and propagation for metrics.
	Hooks     xds.Hooks
	OnApplied func(typeURL string, objects int, took time.Duration)
	Logger    *slog.Logger
}

// Source implements the daemon's Source interface.
type Source struct {
	opts Options
	// Client and Server are set while Run runs (Server only when embedded);
	// exposed for status and metrics.
	Client *xds.Client
	Server *controlplane.Server
	// Workloads/Envoy hold the compiled model of the running mode.
	Workloads *compile.WorkloadState
	Envoy     *compile.EnvoyState
	ready     chan struct{}
}

// New checks what can be checked before the dataplane starts: the embedded
// config file must load (a bad file stops kmeshd with file, line and field).
func New(opts Options) (*Source, error) {
	if opts.Mode == "" {
		opts.Mode = ModeDualEngine
	}
	if opts.Mode != ModeDualEngine && opts.Mode != ModeKernelNative {
		return nil, fmt.Errorf("mode %q: want %s or %s", opts.Mode, ModeDualEngine, ModeKernelNative)
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	if opts.Identity == nil {
		id := xds.IdentityFromEnv()
		opts.Identity = &id
	}
	if opts.XDSAddress == "" {
		if opts.ConfigFile == "" {
			opts.ConfigFile = DefaultConfig
		}
		if _, err := controlplane.LoadFile(opts.ConfigFile); err != nil {
			return nil, fmt.Errorf("embedded control plane config: %w", err)
		}
	} else if opts.ConfigFile != "" {
		return nil, errors.New("--config is for the embedded control plane; it cannot be combined with --xds-address")
	}
	return &Source{opts: opts, ready: make(chan struct{})}, nil
}

// Ready is closed once the client is connecting (the embedded server, if
// any, is listening).
func (s *Source) Ready() <-chan struct{} { return s.ready }

// Run connects and drives dp until ctx ends.
//
// It returns only after the client and the embedded server have stopped, so
// the caller may close the dataplane right after.
func (s *Source) Run(ctx context.Context, dp dataplane.API) error {
	ctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	defer wg.Wait()
	defer cancel()
	addr := s.opts.XDSAddress
	errc := make(chan error, 2)
	if addr == "" {
		s.Server = controlplane.New(controlplane.Options{Listen: s.opts.Listen, ConfigFile: s.opts.ConfigFile,
			NodeName: s.opts.Identity.NodeName, Logger: s.opts.Logger})
		ready := make(chan string, 1)
		wg.Add(1)
		go func() { defer wg.Done(); errc <- s.Server.Run(ctx, ready) }()
		select {
		case addr = <-ready:
		case err := <-errc:
			return fmt.Errorf("embedded control plane: %w", err)
		case <-ctx.Done():
			return nil
		}
	}
	node := s.opts.Identity.ZtunnelNode()
	if s.opts.Mode == ModeKernelNative {
		node = s.opts.Identity.SidecarNode()
	}
	c, err := xds.New(xds.Options{Address: addr, CAFile: s.opts.XDSCA, TokenFile: s.opts.XDSToken, ClusterID: s.opts.Identity.ClusterID,
		Node: node, Logger: s.opts.Logger, Hooks: s.opts.Hooks})
	if err != nil {
		return err
	}
	s.Client = c
	s.opts.Logger.Info("xds source", "mode", s.opts.Mode, "server", addr, "embedded", s.Server != nil, "node", node.GetId())
	wg.Add(1)
	go func() {
		defer wg.Done()
		if s.opts.Mode == ModeKernelNative {
			sink := s.opts.L7
			l7dp, isL7 := dp.(compile.L7Sink)
			if sink == nil && isL7 {
				sink = l7dp
			}
			s.Envoy = compile.NewEnvoyState(sink, s.opts.Logger)
			if isL7 {
				// A kernel-native dataplane (pkg/l7) routes by Envoy config
				// and takes which local processes are meshed (workload
				// enrolment) and the node's locality from the Workload API,
				// as in dual-engine mode: a second stream, as ztunnel.
				if err := s.runEnrolment(ctx, &wg, addr, dp, errc); err != nil {
					errc <- err
					return
				}
			}
			close(s.ready)
			errc <- c.RunSotW(ctx, s.Envoy)
			return
		}
		s.Workloads = compile.NewWorkloadState(dp, compile.WorkloadOptions{NodeName: s.opts.Identity.NodeName,
			Logger: s.opts.Logger, OnApplied: s.opts.OnApplied})
		close(s.ready)
		errc <- c.RunDelta(ctx, s.Workloads)
	}()
	select {
	case err := <-errc:
		if ctx.Err() != nil {
			return nil
		}
		return err
	case <-ctx.Done():
		return nil
	}
}

// runEnrolment starts the Workload API stream of kernel-native mode.
func (s *Source) runEnrolment(ctx context.Context, wg *sync.WaitGroup, addr string, dp dataplane.API, errc chan<- error) error {
	c, err := xds.New(xds.Options{Address: addr, CAFile: s.opts.XDSCA, TokenFile: s.opts.XDSToken, ClusterID: s.opts.Identity.ClusterID,
		Node: s.opts.Identity.ZtunnelNode(), Logger: s.opts.Logger, Hooks: s.opts.Hooks})
	if err != nil {
		return err
	}
	s.Workloads = compile.NewWorkloadState(dp, compile.WorkloadOptions{NodeName: s.opts.Identity.NodeName,
		Logger: s.opts.Logger, OnApplied: s.opts.OnApplied})
	wg.Add(1)
	go func() {
		defer wg.Done()
		if err := c.RunDelta(ctx, s.Workloads); err != nil {
			errc <- err
		}
	}()
	return nil
}
