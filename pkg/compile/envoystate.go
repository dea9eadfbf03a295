package compile

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"

	cluster "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	endpoint "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listener "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	route "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	"google.golang.org/protobuf/proto"

	"github.com/kmesh-go/kmesh/pkg/model"
	"github.com/kmesh-go/kmesh/pkg/xds"
)

// L7Sink receives the kernel-native model (listeners, route configurations,
// clusters). The in-kernel route tables that implement it are issue #6; until
// then EnvoyState compiles and validates, and keeps the result for inspection.
type L7Sink interface {
	ApplyL7(ctx context.Context, s *model.Snapshot) error
}

// EnvoyState compiles Envoy xDS (kernel-native mode) into the L7 model. It
// implements xds.SotWHandler.
type EnvoyState struct {
	sink L7Sink
	log  *slog.Logger

	mu      sync.Mutex
	last    *model.Snapshot
	skipped []Skipped
}

// NewEnvoyState returns a state feeding sink (may be nil).
func NewEnvoyState(sink L7Sink, log *slog.Logger) *EnvoyState {
	if log == nil {
		log = slog.Default()
	}
	return &EnvoyState{sink: sink, log: log, last: &model.Snapshot{}}
}

// CheckSotW converts every resource of a response on its own, so a malformed
// resource is NACKed when it arrives, before any warming.
func (e *EnvoyState) CheckSotW(typeURL string, resources map[string]proto.Message) error {
	var errs []error
	for _, name := range sortedNames(resources) {
		var err error
		switch r := resources[name].(type) {
		case *cluster.Cluster:
			_, _, err = ConvertCluster(r, nil)
		case *endpoint.ClusterLoadAssignment:
			_, err = ConvertEndpoints(r)
			if err != nil {
				err = fmt.Errorf("cluster load assignment %q: %w", name, err)
			}
		case *listener.Listener:
			_, _, _, err = ConvertListener(r)
		case *route.RouteConfiguration:
			_, err = ConvertRouteConfig(r)
			if err != nil {
				err = fmt.Errorf("route config %q: %w", name, err)
			}
		default:
			err = fmt.Errorf("%s: unexpected %T", name, r)
		}
		if err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// Compile builds and validates the L7 model of a complete configuration.
func Compile(cfg *xds.EnvoyConfig) (*model.Snapshot, []Skipped, error) {
	snap := &model.Snapshot{Version: cfg.Versions[xds.ListenerType] + "/" + cfg.Versions[xds.ClusterType]}
	var skipped []Skipped
	for _, name := range sortedNames(cfg.Clusters) {
		c := cfg.Clusters[name]
		var cla *endpoint.ClusterLoadAssignment
		if n := xds.EDSName(c); n != "" {
			cla = cfg.Endpoints[n]
		}
		mc, skip, err := ConvertCluster(c, cla)
		if err != nil {
			return nil, nil, err
		}
		if skip != nil {
			skipped = append(skipped, *skip)
			continue
		}
		snap.Clusters = append(snap.Clusters, *mc)
	}
	for _, name := range sortedNames(cfg.Listeners) {
		ls, inline, skip, err := ConvertListener(cfg.Listeners[name])
		if err != nil {
			return nil, nil, err
		}
		snap.Listeners = append(snap.Listeners, ls...)
		snap.RouteConfigs = append(snap.RouteConfigs, inline...)
		skipped = append(skipped, skip...)
	}
	for _, name := range sortedNames(cfg.Routes) {
		rc, err := ConvertRouteConfig(cfg.Routes[name])
		if err != nil {
			return nil, nil, fmt.Errorf("route config %q: %w", name, err)
		}
		snap.RouteConfigs = append(snap.RouteConfigs, rc)
	}
	if err := ValidateSnapshot(snap); err != nil {
		return nil, nil, err
	}
	return snap, skipped, nil
}

// ApplySotW compiles a complete configuration and hands it to the sink. On
// error nothing changes.
func (e *EnvoyState) ApplySotW(ctx context.Context, cfg *xds.EnvoyConfig) error {
	snap, skipped, err := Compile(cfg)
	if err != nil {
		return err
	}
	if e.sink != nil {
		if err := e.sink.ApplyL7(ctx, snap); err != nil {
			return err
		}
	}
	for _, s := range skipped {
		e.log.Warn("envoy config not implemented in the kernel; left out", "what", s.What, "reason", s.Reason)
	}
	e.mu.Lock()
	e.last, e.skipped = snap, skipped
	e.mu.Unlock()
	return nil
}

// Snapshot returns the last applied L7 model and what was left out of it.
func (e *EnvoyState) Snapshot() (*model.Snapshot, []Skipped) {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.last, e.skipped
}

var _ xds.SotWHandler = (*EnvoyState)(nil)
