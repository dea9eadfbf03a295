// Package controlplane is kmesh's embedded xDS server for a single host: it
// serves a YAML mesh file over the same protocols istiod speaks (the Istio
// Workload API over delta xDS, Envoy's resources over SotW), built on
// go-control-plane's server and caches, so kmeshd's own xDS client connects
// to it exactly as to istiod. The file is watched: a good edit is pushed, a
// bad one is rejected with file, line and field, and the last good config keeps
// serving.
package controlplane

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"reflect"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	"github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	"github.com/envoyproxy/go-control-plane/pkg/server/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/keepalive"
	"istio.io/istio/pkg/workloadapi"

	"github.com/kmesh-go/kmesh/pkg/compile"
	"github.com/kmesh-go/kmesh/pkg/xds"
)

// DefaultListen is the embedded server's address: loopback only, plaintext.
const DefaultListen = "127.0.0.1:15010"

// Options configures a Server. The zero value serves on DefaultListen.
type Options struct {
	Listen string
	// ConfigFile is loaded by LoadFile and watched by Run ("" = no file; feed
	// configs with SetConfig).
	ConfigFile string
	// NodeName is the node enrolled workloads run on (the daemon's).
	NodeName string
	// Debounce coalesces bursts of file events (editors write in steps);
	// default 100 ms.
	Debounce time.Duration
	Logger   *slog.Logger
}

// Stats counts what the server did (exported by the metrics issue, #8).
type Stats struct {
	Pushes   atomic.Uint64 // configs accepted and pushed
	Rejected atomic.Uint64 // configs rejected (bad file)
	NACKs    atomic.Uint64 // NACKs received from clients
	Streams  atomic.Int64  // open streams
}

// Server is the embedded control plane.
type Server struct {
	opts Options
	log  *slog.Logger

	addrCache  *cache.LinearCache
	authzCache *cache.LinearCache
	envoyCache cache.SnapshotCache
	xds        server.Server

	mu      sync.Mutex
	current *Resources
	version int
	grpc    *grpc.Server
	// What the current resources were made from, so an edit re-translates and
	// re-checks only the objects it changed.
	prevSvc   map[string]ServiceConfig
	prevWl    map[string]WorkloadConfig
	prevNames map[string]string // service references (namespace/name → key)
	prevNode  string
	prevHTTP  []HTTPListenerConfig
	models    map[string]compile.Address

	// sotwSent remembers the version of every SotW response by stream and
	// nonce, so a NACK can be pinned to the version it rejects (see onRequest).
	sotwMu   sync.Mutex
	sotwSent map[int64]map[string]string

	Stats Stats
}

// envoyNode is the single snapshot key: every client gets the same config.
const envoyNode = "kmesh"

type oneNode struct{}

func (oneNode) ID(*core.Node) string { return envoyNode }

// New creates a server with an empty config.
func New(opts Options) *Server {
	if opts.Listen == "" {
		opts.Listen = DefaultListen
	}
	if opts.Debounce <= 0 {
		opts.Debounce = 100 * time.Millisecond
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	s := &Server{
		opts:       opts,
		log:        opts.Logger.With("component", "controlplane"),
		addrCache:  cache.NewLinearCache(xds.AddressType),
		authzCache: cache.NewLinearCache(xds.AuthorizationType),
		envoyCache: cache.NewSnapshotCache(true, oneNode{}, nil),
		sotwSent:   map[int64]map[string]string{},
		current:    &Resources{Addresses: map[string]*workloadapi.Address{}, Envoy: map[string][]types.Resource{}},
	}
	mux := &cache.MuxCache{
		Classify:      func(r *cache.Request) string { return r.GetTypeUrl() },
		ClassifyDelta: func(r *cache.DeltaRequest) string { return r.GetTypeUrl() },
		Caches: map[string]cache.Cache{
			xds.AddressType: s.addrCache, xds.AuthorizationType: s.authzCache,
			xds.ClusterType: s.envoyCache, xds.EndpointType: s.envoyCache,
			xds.ListenerType: s.envoyCache, xds.RouteType: s.envoyCache,
		},
	}
	s.xds = server.NewServer(context.Background(), mux, server.CallbackFuncs{
		StreamOpenFunc:          func(context.Context, int64, string) error { s.Stats.Streams.Add(1); return nil },
		StreamClosedFunc:        func(id int64, _ *core.Node) { s.Stats.Streams.Add(-1); s.forget(id) },
		DeltaStreamOpenFunc:     func(context.Context, int64, string) error { s.Stats.Streams.Add(1); return nil },
		DeltaStreamClosedFunc:   func(int64, *core.Node) { s.Stats.Streams.Add(-1) },
		StreamRequestFunc:       s.onRequest,
		StreamResponseFunc:      s.onResponse,
		StreamDeltaRequestFunc:  s.onDeltaRequest,
		StreamDeltaResponseFunc: nil,
	})
	// An empty but valid Envoy snapshot, so SotW clients warm at once.
	_ = s.pushEnvoy(map[string][]types.Resource{})
	return s
}

// RegisterGRPC adds the ADS service to a gRPC server.
func (s *Server) RegisterGRPC(g *grpc.Server) {
	discovery.RegisterAggregatedDiscoveryServiceServer(g, s.xds)
}

// Serve serves on lis until ctx ends (then stops gracefully).
func (s *Server) Serve(ctx context.Context, lis net.Listener) error {
	g := grpc.NewServer(
		grpc.MaxRecvMsgSize(64<<20),
		// Allow the clients' keepalive pings (they detect cut networks).
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: 5 * time.Second, PermitWithoutStream: true}),
	)
	s.RegisterGRPC(g)
	s.mu.Lock()
	s.grpc = g
	s.mu.Unlock()
	done := make(chan struct{})
	go func() {
		select {
		case <-ctx.Done():
			// Streams never end by themselves: stop, do not wait for them.
			g.Stop()
		case <-done:
		}
	}()
	s.log.Info("embedded xDS server listening", "address", lis.Addr().String())
	err := g.Serve(lis)
	close(done)
	if ctx.Err() != nil || errors.Is(err, grpc.ErrServerStopped) {
		return nil
	}
	return err
}

// Listen opens the configured address.
func (s *Server) Listen() (net.Listener, error) {
	return net.Listen("tcp", s.opts.Listen)
}

// Run loads the config file (it must be valid), serves, and watches the
// file until ctx ends. ready, if non-nil, receives the listening address.
func (s *Server) Run(ctx context.Context, ready chan<- string) error {
	if s.opts.ConfigFile != "" {
		if err := s.LoadFile(); err != nil {
			return err
		}
	}
	lis, err := s.Listen()
	if err != nil {
		return fmt.Errorf("embedded control plane: %w", err)
	}
	if ready != nil {
		ready <- lis.Addr().String()
	}
	errc := make(chan error, 2)
	go func() { errc <- s.Serve(ctx, lis) }()
	if s.opts.ConfigFile != "" {
		go func() { errc <- s.Watch(ctx) }()
	}
	err = <-errc
	if ctx.Err() != nil {
		return nil
	}
	return err
}

// LoadFile loads, checks and pushes the config file. On error the previous
// config keeps serving.
func (s *Server) LoadFile() error {
	cfg, err := LoadFile(s.opts.ConfigFile)
	if err == nil {
		err = s.SetConfig(cfg)
	}
	if err != nil {
		s.Stats.Rejected.Add(1)
		return err
	}
	return nil
}

// SetConfig translates and checks cfg (a config from Load: the loader's
// cross-object checks are assumed) through the same compile passes as the
// daemon, and pushes the changes to every connected client. Only the objects
// the edit changed are translated and checked again, so a one-line edit of a
// big file costs little. On error nothing is pushed. SetConfig keeps cfg to
// compare the next one with: the caller must not modify it afterwards (Load
// returns a fresh Config each time).
func (s *Server) SetConfig(cfg *Config) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	ix := indexServices(cfg)
	node := effectiveNode(cfg, s.opts.NodeName)
	// Re-translate everything when what references resolve to, or the node
	// enrolled workloads run on, changed.
	full := s.models == nil || node != s.prevNode
	for name, key := range s.prevNames {
		if k, ok := ix.byName[name]; ok && k != key {
			full = true
		}
	}
	addrs := make(map[string]*workloadapi.Address, len(cfg.Services)+len(cfg.Workloads))
	models := make(map[string]compile.Address, len(addrs))
	prevSvc := make(map[string]ServiceConfig, len(cfg.Services))
	prevWl := make(map[string]WorkloadConfig, len(cfg.Workloads))
	upd := map[string]types.Resource{}
	var errs []error
	check := func(name, where string, a *workloadapi.Address) {
		m, err := convertChecked(name, a)
		if err != nil {
			errs = append(errs, &FieldError{File: s.opts.ConfigFile, Field: where, Msg: err.Error()})
			return
		}
		addrs[name], models[name], upd[name] = a, m, a
	}
	for i := range cfg.Services {
		sc := &cfg.Services[i]
		key := ServiceKey(sc)
		prevSvc[key] = *sc
		if old, ok := s.prevSvc[key]; ok && !full && reflect.DeepEqual(old, *sc) {
			addrs[key], models[key] = s.current.Addresses[key], s.models[key]
			continue
		}
		check(key, fmt.Sprintf("services[%d]", i), translateService(sc, ix))
	}
	for i := range cfg.Workloads {
		wc := &cfg.Workloads[i]
		uid := WorkloadUID(wc)
		prevWl[uid] = *wc
		if old, ok := s.prevWl[uid]; ok && !full && reflect.DeepEqual(old, *wc) {
			addrs[uid], models[uid] = s.current.Addresses[uid], s.models[uid]
			continue
		}
		check(uid, fmt.Sprintf("workloads[%d]", i), translateWorkload(wc, ix, node))
	}
	if len(errs) == 0 {
		if err := crossCheck(models, upd); err != nil {
			errs = append(errs, &FieldError{File: s.opts.ConfigFile, Msg: err.Error()})
		}
	}
	if len(errs) > 0 {
		return errors.Join(errs...)
	}

	var del []string
	for name := range s.current.Addresses {
		if _, ok := addrs[name]; !ok {
			del = append(del, name)
		}
	}
	if len(upd)+len(del) > 0 {
		if err := s.addrCache.UpdateResources(upd, del); err != nil {
			return fmt.Errorf("updating the address cache: %w", err)
		}
	}
	s.current = &Resources{Addresses: addrs, Envoy: s.current.Envoy}
	s.prevSvc, s.prevWl, s.prevNames, s.prevNode, s.models = prevSvc, prevWl, ix.byName, node, models

	// The kernel-native view (clusters, endpoints, listeners, routes) is derived
	// from the whole config and rebuilt after the Workload API push, so
	// dual-engine clients do not wait for it. The loader has checked the http
	// section; if the compile passes still reject the result, kernel-native
	// clients keep the previous Envoy config.
	if len(upd) > 0 || len(del) > 0 || full || !reflect.DeepEqual(s.prevHTTP, cfg.HTTP) {
		envoy := translateEnvoy(cfg, ix)
		if err := checkEnvoy(envoy); err != nil {
			return &FieldError{File: s.opts.ConfigFile, Field: "http",
				Msg: "the Workload API part was applied, the kernel-native part rejected: " + err.Error()}
		}
		if err := s.pushEnvoy(envoy); err != nil {
			return err
		}
		s.current.Envoy, s.prevHTTP = envoy, cfg.HTTP
	}
	s.Stats.Pushes.Add(1)
	s.log.Info("config pushed", "addresses_changed", len(upd), "addresses_removed", len(del))
	return nil
}

func (s *Server) pushEnvoy(res map[string][]types.Resource) error {
	s.version++
	snap, err := cache.NewSnapshot(strconv.Itoa(s.version), res)
	if err != nil {
		return err
	}
	if err := snap.Consistent(); err != nil {
		return fmt.Errorf("envoy snapshot is inconsistent: %w", err)
	}
	return s.envoyCache.SetSnapshot(context.Background(), envoyNode, snap)
}

// Resources returns what is being served.
func (s *Server) Resources() *Resources {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.current
}

// onResponse remembers which version each SotW nonce carried.
func (s *Server) onResponse(_ context.Context, id int64, _ *discovery.DiscoveryRequest, resp *discovery.DiscoveryResponse) {
	s.sotwMu.Lock()
	defer s.sotwMu.Unlock()
	m := s.sotwSent[id]
	if m == nil {
		m = map[string]string{}
		s.sotwSent[id] = m
	}
	m[resp.GetTypeUrl()+"/"+resp.GetNonce()] = resp.GetVersionInfo()
	// Only the latest nonce per type can be answered; keep the map small.
	if len(m) > 64 {
		for k := range m {
			delete(m, k)
			if len(m) <= 32 {
				break
			}
		}
	}
}

func (s *Server) forget(id int64) {
	s.sotwMu.Lock()
	delete(s.sotwSent, id)
	s.sotwMu.Unlock()
}

// onRequest logs NACKs. go-control-plane's snapshot cache answers any request
// whose version differs from the snapshot's, and a NACK carries the last
// accepted version: it would resend the rejected snapshot at once, forever.
// Like istiod, we wait for the next config instead: the NACK is treated as
// having seen the rejected version.
func (s *Server) onRequest(id int64, req *discovery.DiscoveryRequest) error {
	if req.GetErrorDetail() == nil {
		return nil
	}
	s.Stats.NACKs.Add(1)
	s.sotwMu.Lock()
	v, ok := s.sotwSent[id][req.GetTypeUrl()+"/"+req.GetResponseNonce()]
	s.sotwMu.Unlock()
	s.log.Error("client rejected config (NACK)", "type", xds.ShortType(req.GetTypeUrl()), "version", v,
		"node", req.GetNode().GetId(), "reason", req.GetErrorDetail().GetMessage())
	if ok {
		req.VersionInfo = v
	}
	return nil
}

func (s *Server) onDeltaRequest(_ int64, req *discovery.DeltaDiscoveryRequest) error {
	if req.GetErrorDetail() != nil {
		s.Stats.NACKs.Add(1)
		s.log.Error("client rejected config (NACK)", "type", xds.ShortType(req.GetTypeUrl()),
			"node", req.GetNode().GetId(), "reason", req.GetErrorDetail().GetMessage())
	}
	return nil
}
