package xds

import (
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"slices"
	"time"

	cluster "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	endpoint "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listener "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	route "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
)

// EnvoyConfig is a complete, warmed Envoy configuration: every EDS cluster has
// its ClusterLoadAssignment and every RDS listener its RouteConfiguration.
// Handlers must not modify it.
type EnvoyConfig struct {
	Clusters  map[string]*cluster.Cluster
	Endpoints map[string]*endpoint.ClusterLoadAssignment
	Listeners map[string]*listener.Listener
	Routes    map[string]*route.RouteConfiguration
	// Versions holds the version_info of each type.
	Versions map[string]string
}

// SotWHandler validates and applies Envoy configuration.
type SotWHandler interface {
	// CheckSotW is called for every response with its decoded resources keyed
	// by name; an error NACKs the response and nothing of it is kept.
	CheckSotW(typeURL string, resources map[string]proto.Message) error
	// ApplySotW is called with each new complete configuration. An error NACKs
	// the response that completed it, and that response's changes are dropped;
	// the previously applied configuration stays in force.
	ApplySotW(ctx context.Context, cfg *EnvoyConfig) error
}

// sotwType is the client's view of one type.
type sotwType struct {
	version   string                   // last accepted version_info
	nonce     string                   // nonce of the last response (for the next request)
	names     []string                 // subscription (EDS, RDS); nil = wildcard
	resources map[string]proto.Message // accepted resources
}

type sotwState struct {
	types map[string]*sotwType
	// applied is true once a complete config was applied; on a reconnect the
	// client then asks for every type at once instead of warming from scratch.
	applied bool
}

func newSotwState() *sotwState {
	st := &sotwState{types: map[string]*sotwType{}}
	for _, t := range EnvoyTypes {
		st.types[t] = &sotwType{resources: map[string]proto.Message{}}
	}
	return st
}

func (c *Client) sotwRequest(s discovery.AggregatedDiscoveryService_StreamAggregatedResourcesClient, typeURL string, st *sotwType, errDetail error) error {
	req := &discovery.DiscoveryRequest{
		Node:          c.opts.Node, // small; sent every time so any request can open a type
		TypeUrl:       typeURL,
		VersionInfo:   st.version,
		ResourceNames: st.names,
		ResponseNonce: st.nonce,
	}
	if errDetail != nil {
		req.ErrorDetail = nackStatus(errDetail)
	}
	return s.Send(req)
}

func (c *Client) sotwStream(ctx context.Context, s discovery.AggregatedDiscoveryService_StreamAggregatedResourcesClient, st *sotwState, h SotWHandler) streamResult {
	// Nonces belong to a stream.
	for _, t := range st.types {
		t.nonce = ""
	}
	requested := map[string]bool{}
	// A fresh client warms in Envoy's order: CDS first; EDS for the EDS clusters
	// once known; LDS once clusters are warm; RDS for the listeners' route
	// names. A client that already applied a config re-subscribes to all types.
	first := []string{ClusterType}
	if st.applied {
		first = EnvoyTypes
	}
	for _, t := range first {
		if t == EndpointType || t == RouteType {
			if len(st.types[t].names) == 0 {
				continue
			}
		}
		if err := c.subscribe(s, st, t, requested); err != nil {
			return streamResult{err: fmt.Errorf("sending %s request: %w", ShortType(t), err)}
		}
	}
	c.connected()
	progress := false
	for {
		resp, err := s.Recv()
		if err != nil {
			if errors.Is(err, io.EOF) {
				err = errStreamClosed
			}
			return streamResult{err: err, progress: progress}
		}
		start := time.Now()
		c.Stats.Responses.Add(1)
		progress = true
		if err := c.sotwResponse(ctx, s, st, h, resp, requested, start); err != nil {
			return streamResult{err: err, progress: progress}
		}
	}
}

func (c *Client) sotwResponse(ctx context.Context, s discovery.AggregatedDiscoveryService_StreamAggregatedResourcesClient,
	st *sotwState, h SotWHandler, resp *discovery.DiscoveryResponse, requested map[string]bool, start time.Time) error {
	typeURL := resp.GetTypeUrl()
	cur, ok := st.types[typeURL]
	if !ok {
		return fmt.Errorf("server sent unrequested type %s", typeURL)
	}
	cur.nonce = resp.GetNonce()
	nack := func(reason error) error {
		if err := c.sotwRequest(s, typeURL, cur, reason); err != nil {
			return err
		}
		c.nacked(typeURL, resp.GetVersionInfo(), reason)
		return nil
	}

	got, err := decodeSotw(typeURL, resp.GetResources())
	if err == nil {
		err = h.CheckSotW(typeURL, got)
	}
	if err != nil {
		return nack(err)
	}

	// The candidate state: LDS and CDS responses carry the full set; EDS and RDS
	// responses may carry only changed resources, so they are merged.
	cand := map[string]map[string]proto.Message{}
	for t, ts := range st.types {
		cand[t] = ts.resources
	}
	if typeURL == ClusterType || typeURL == ListenerType {
		cand[typeURL] = got
	} else {
		merged := maps.Clone(cur.resources)
		maps.Copy(merged, got)
		cand[typeURL] = merged
	}
	// Follow dependencies: clusters name their CLAs, listeners their routes.
	edsNames, rdsNames := slices.Sorted(maps.Keys(edsDeps(cand[ClusterType]))), slices.Sorted(maps.Keys(rdsDeps(cand[ListenerType])))
	cand[EndpointType] = keep(cand[EndpointType], edsNames)
	cand[RouteType] = keep(cand[RouteType], rdsNames)

	// Complete means listeners too: a configuration applied after CDS/EDS but
	// before the first LDS response would have no listeners, and would take
	// down what a restarted daemon's dataplane is still serving.
	ldsSeen := st.types[ListenerType].version != "" || typeURL == ListenerType
	warm := ldsSeen && hasAll(cand[EndpointType], edsNames) && hasAll(cand[RouteType], rdsNames)
	if warm {
		cfg := &EnvoyConfig{
			Clusters: typed[*cluster.Cluster](cand[ClusterType]), Endpoints: typed[*endpoint.ClusterLoadAssignment](cand[EndpointType]),
			Listeners: typed[*listener.Listener](cand[ListenerType]), Routes: typed[*route.RouteConfiguration](cand[RouteType]),
			Versions: map[string]string{},
		}
		for t, ts := range st.types {
			cfg.Versions[t] = ts.version
		}
		cfg.Versions[typeURL] = resp.GetVersionInfo()
		if err := h.ApplySotW(ctx, cfg); err != nil {
			return nack(err)
		}
	}
	// Accept: the response's resources become this type's state (also while
	// warming; the applied config changes only once everything is present).
	for t := range cand {
		st.types[t].resources = cand[t]
	}
	cur.version = resp.GetVersionInfo()
	if err := c.sotwRequest(s, typeURL, cur, nil); err != nil {
		return err
	}
	c.acked(typeURL, cur.version, time.Since(start))
	if warm {
		st.applied = true
	}

	// Subscription changes after the ACK.
	if !slices.Equal(st.types[EndpointType].names, edsNames) {
		st.types[EndpointType].names = edsNames
		if len(edsNames) > 0 || requested[EndpointType] {
			if err := c.subscribe(s, st, EndpointType, requested); err != nil {
				return err
			}
		}
	}
	clustersWarm := hasAll(cand[EndpointType], edsNames)
	if clustersWarm && !requested[ListenerType] && (typeURL == ClusterType || typeURL == EndpointType) {
		if err := c.subscribe(s, st, ListenerType, requested); err != nil {
			return err
		}
	}
	if !slices.Equal(st.types[RouteType].names, rdsNames) {
		st.types[RouteType].names = rdsNames
		if len(rdsNames) > 0 || requested[RouteType] {
			if err := c.subscribe(s, st, RouteType, requested); err != nil {
				return err
			}
		}
	}
	return nil
}

// subscribe sends a request for typeURL with the current subscription.
func (c *Client) subscribe(s discovery.AggregatedDiscoveryService_StreamAggregatedResourcesClient, st *sotwState, typeURL string, requested map[string]bool) error {
	requested[typeURL] = true
	return c.sotwRequest(s, typeURL, st.types[typeURL], nil)
}

// decodeSotw unmarshals, names and structurally validates (protoc-gen-validate
// rules shipped with the Envoy API) every resource of a response.
func decodeSotw(typeURL string, in []*anypb.Any) (map[string]proto.Message, error) {
	out := make(map[string]proto.Message, len(in))
	for i, a := range in {
		if a.GetTypeUrl() != typeURL {
			return nil, fmt.Errorf("resource %d has type %s in a %s response", i, a.GetTypeUrl(), ShortType(typeURL))
		}
		var m proto.Message
		switch typeURL {
		case ClusterType:
			m = &cluster.Cluster{}
		case EndpointType:
			m = &endpoint.ClusterLoadAssignment{}
		case ListenerType:
			m = &listener.Listener{}
		case RouteType:
			m = &route.RouteConfiguration{}
		}
		if err := a.UnmarshalTo(m); err != nil {
			return nil, fmt.Errorf("resource %d: %w", i, err)
		}
		name := resourceName(m)
		if name == "" {
			return nil, fmt.Errorf("resource %d has no name", i)
		}
		if v, ok := m.(interface{ ValidateAll() error }); ok {
			if err := v.ValidateAll(); err != nil {
				return nil, fmt.Errorf("%s %q: %w", ShortType(typeURL), name, err)
			}
		}
		if _, dup := out[name]; dup {
			return nil, fmt.Errorf("%s %q appears twice", ShortType(typeURL), name)
		}
		out[name] = m
	}
	return out, nil
}

func resourceName(m proto.Message) string {
	switch r := m.(type) {
	case *cluster.Cluster:
		return r.GetName()
	case *endpoint.ClusterLoadAssignment:
		return r.GetClusterName()
	case *listener.Listener:
		return r.GetName()
	case *route.RouteConfiguration:
		return r.GetName()
	}
	return ""
}

// EDSName is the ClusterLoadAssignment name an EDS cluster waits for ("" for
// clusters of other discovery types).
func EDSName(c *cluster.Cluster) string {
	if c.GetType() != cluster.Cluster_EDS {
		return ""
	}
	if n := c.GetEdsClusterConfig().GetServiceName(); n != "" {
		return n
	}
	return c.GetName()
}

func edsDeps(clusters map[string]proto.Message) map[string]bool {
	out := map[string]bool{}
	for _, m := range clusters {
		if n := EDSName(m.(*cluster.Cluster)); n != "" {
			out[n] = true
		}
	}
	return out
}

// RDSNames lists the route configurations a listener loads over RDS.
func RDSNames(l *listener.Listener) []string {
	var out []string
	chains := append(slices.Clone(l.GetFilterChains()), l.GetDefaultFilterChain())
	for _, fc := range chains {
		for _, f := range fc.GetFilters() {
			if hcm := resource.GetHTTPConnectionManager(f); hcm != nil {
				if n := hcm.GetRds().GetRouteConfigName(); n != "" {
					out = append(out, n)
				}
			}
		}
	}
	return out
}

func rdsDeps(listeners map[string]proto.Message) map[string]bool {
	out := map[string]bool{}
	for _, m := range listeners {
		for _, n := range RDSNames(m.(*listener.Listener)) {
			out[n] = true
		}
	}
	return out
}

func keep(m map[string]proto.Message, names []string) map[string]proto.Message {
	out := make(map[string]proto.Message, len(names))
	for _, n := range names {
		if r, ok := m[n]; ok {
			out[n] = r
		}
	}
	return out
}

func hasAll(m map[string]proto.Message, names []string) bool {
	for _, n := range names {
		if _, ok := m[n]; !ok {
			return false
		}
	}
	return true
}

func typed[T proto.Message](m map[string]proto.Message) map[string]T {
	out := make(map[string]T, len(m))
	for k, v := range m {
		out[k] = v.(T)
	}
	return out
}
