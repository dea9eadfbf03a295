package xds

import (
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"sort"
	"strings"
	"time"

	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
)

// DeltaUpdate is one delta response of one type.
type DeltaUpdate struct {
	TypeURL string
	Version string // system_version_info, for logs
	// Resources are added or changed; each has a Name, a Version and a body.
	Resources []*discovery.Resource
	// Removed are names the server no longer has.
	Removed []string
	// Resync is set on the first response of the type on a new stream: the
	// handler now knows every resource the server has (after
	// initial_resource_versions, only changes are sent, so the handler combines
	// this with what it already holds).
	Resync bool
}

// DeltaHandler applies delta responses. It returns per-resource rejections
// (those resources were not applied; the previous version of each stays in
// force) or, with err, the rejection of the whole response (nothing applied).
// Either makes the client NACK with the reasons; accepted resources are applied
// even when others in the same response are rejected, as ztunnel does.
type DeltaHandler interface {
	HandleDelta(ctx context.Context, u *DeltaUpdate) (rejected map[string]error, err error)
}

// deltaState survives reconnects: the versions of the resources this client
// holds, sent as initial_resource_versions so that a new stream carries only
// what changed, including removals made while disconnected.
type deltaState struct {
	types    []string
	versions map[string]map[string]string // type → name → version
}

func newDeltaState(types []string) *deltaState {
	d := &deltaState{types: types, versions: map[string]map[string]string{}}
	for _, t := range types {
		d.versions[t] = map[string]string{}
	}
	return d
}

func (c *Client) deltaStream(ctx context.Context, s discovery.AggregatedDiscoveryService_DeltaAggregatedResourcesClient, d *deltaState, h DeltaHandler) streamResult {
	// Subscribe to every type as a (legacy) wildcard: an empty subscribe list
	// on the first request, which istiod and go-control-plane both treat as
	// "everything". initial_resource_versions lists what we already hold.
	for i, t := range d.types {
		req := &discovery.DeltaDiscoveryRequest{TypeUrl: t, InitialResourceVersions: maps.Clone(d.versions[t])}
		if i == 0 {
			req.Node = c.opts.Node
		}
		if err := s.Send(req); err != nil {
			return streamResult{err: fmt.Errorf("sending %s subscription: %w", ShortType(t), err)}
		}
	}
	c.connected()
	synced := map[string]bool{}
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
		t := resp.GetTypeUrl()
		known, ok := d.versions[t]
		if !ok {
			// Not subscribed: NACK so the server learns, but keep the stream.
			if err := s.Send(&discovery.DeltaDiscoveryRequest{TypeUrl: t, ResponseNonce: resp.GetNonce(),
				ErrorDetail: nackStatus(fmt.Errorf("type %s was not subscribed", t))}); err != nil {
				return streamResult{err: err, progress: progress}
			}
			c.nacked(t, resp.GetSystemVersionInfo(), fmt.Errorf("unexpected type %s", t))
			continue
		}
		u := &DeltaUpdate{TypeURL: t, Version: resp.GetSystemVersionInfo(), Resources: resp.GetResources(),
			Removed: resp.GetRemovedResources(), Resync: !synced[t]}
		synced[t] = true
		rejected, herr := h.HandleDelta(ctx, u)
		if ctx.Err() != nil {
			return streamResult{err: ctx.Err(), progress: progress}
		}
		progress = true
		ack := &discovery.DeltaDiscoveryRequest{TypeUrl: t, ResponseNonce: resp.GetNonce()}
		if herr == nil {
			// Record what we now hold: everything not rejected.
			for _, r := range u.Resources {
				if _, bad := rejected[r.GetName()]; !bad {
					known[r.GetName()] = r.GetVersion()
				}
			}
			for _, name := range u.Removed {
				if _, bad := rejected[name]; !bad {
					delete(known, name)
				}
			}
		}
		reason := herr
		if herr == nil && len(rejected) > 0 {
			reason = joinRejections(rejected)
		}
		if reason != nil {
			ack.ErrorDetail = nackStatus(reason)
		}
		if err := s.Send(ack); err != nil {
			return streamResult{err: fmt.Errorf("sending ACK: %w", err), progress: progress}
		}
		if reason != nil {
			c.nacked(t, u.Version, reason)
		} else {
			c.acked(t, u.Version, time.Since(start))
		}
	}
}

// joinRejections makes one readable, deterministic error_detail.
func joinRejections(rejected map[string]error) error {
	names := make([]string, 0, len(rejected))
	for n := range rejected {
		names = append(names, n)
	}
	sort.Strings(names)
	var b strings.Builder
	fmt.Fprintf(&b, "%d resource(s) rejected: ", len(names))
	for i, n := range names {
		if i > 0 {
			b.WriteString("; ")
		}
		fmt.Fprintf(&b, "%s: %v", n, rejected[n])
	}
	return errors.New(b.String())
}
