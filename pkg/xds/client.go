package xds

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
)

// Client is an ADS client. Run it with RunDelta (Workload API) or RunSotW
// (Envoy xDS); state that must survive reconnects (accepted versions, the last
// good config) lives in the Client, so one Client is run by one Run call.
type Client struct {
	opts  Options
	log   *slog.Logger
	Stats Stats
}

// New checks the options; it does not connect.
func New(opts Options) (*Client, error) {
	if err := opts.validate(); err != nil {
		return nil, err
	}
	return &Client{opts: opts, log: opts.Logger.With("xds", opts.Address)}, nil
}

// errNoProgress marks a stream that ended before any response: the next
// attempt keeps backing off instead of starting again from Initial.
type streamResult struct {
	err      error
	progress bool // at least one response was handled
}

// run dials and runs stream until ctx ends, reconnecting with backoff.
func (c *Client) run(ctx context.Context, what string, stream func(ctx context.Context, conn *grpc.ClientConn) streamResult) error {
	dopts, err := c.opts.dialOptions()
	if err != nil {
		return err
	}
	attempt := 0
	for {
		res := c.once(ctx, dopts, stream)
		if ctx.Err() != nil {
			return nil
		}
		c.Stats.Disconnects.Add(1)
		if h := c.opts.Hooks.OnDisconnect; h != nil {
			h(res.err)
		}
		if res.progress {
			attempt = 0
		}
		d := c.opts.Backoff.Delay(attempt)
		attempt++
		c.log.Warn("xds stream ended; reconnecting", "protocol", what, "err", res.err, "in", d.Round(time.Millisecond))
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(d):
		}
	}
}

// once makes one connection (a fresh channel per attempt, so our backoff and
// not gRPC's own reconnect timer decides when to retry) and runs one stream.
func (c *Client) once(ctx context.Context, dopts []grpc.DialOption, stream func(context.Context, *grpc.ClientConn) streamResult) streamResult {
	conn, err := grpc.NewClient(c.opts.Address, dopts...)
	if err != nil {
		return streamResult{err: fmt.Errorf("dial %s: %w", c.opts.Address, err)}
	}
	defer conn.Close()
	sctx, cancel := context.WithCancel(metadata.AppendToOutgoingContext(ctx, "ClusterID", c.opts.ClusterID))
	defer cancel()
	return stream(sctx, conn)
}

// nackStatus is the error_detail of a NACK: a human-readable reason.
func nackStatus(err error) *status.Status {
	return &status.Status{Code: int32(codes.InvalidArgument), Message: err.Error()}
}

// RunDelta runs the Workload API over delta ADS until ctx ends. types defaults
// to WorkloadTypes. It returns an error only for unusable options.
func (c *Client) RunDelta(ctx context.Context, h DeltaHandler, types ...string) error {
	if len(types) == 0 {
		types = WorkloadTypes
	}
	d := newDeltaState(types)
	return c.run(ctx, "delta", func(ctx context.Context, conn *grpc.ClientConn) streamResult {
		s, err := discovery.NewAggregatedDiscoveryServiceClient(conn).DeltaAggregatedResources(ctx)
		if err != nil {
			return streamResult{err: err}
		}
		return c.deltaStream(ctx, s, d, h)
	})
}

// RunSotW runs Envoy xDS over SotW ADS until ctx ends.
func (c *Client) RunSotW(ctx context.Context, h SotWHandler) error {
	st := newSotwState()
	return c.run(ctx, "sotw", func(ctx context.Context, conn *grpc.ClientConn) streamResult {
		s, err := discovery.NewAggregatedDiscoveryServiceClient(conn).StreamAggregatedResources(ctx)
		if err != nil {
			return streamResult{err: err}
		}
		return c.sotwStream(ctx, s, st, h)
	})
}

func (c *Client) acked(typeURL, version string, took time.Duration) {
	c.Stats.ACKs.Add(1)
	c.Stats.LastApplyNanos.Store(int64(took))
	if h := c.opts.Hooks.OnACK; h != nil {
		h(typeURL, version, took)
	}
}

func (c *Client) nacked(typeURL, version string, reason error) {
	c.Stats.NACKs.Add(1)
	c.log.Error("xds config rejected (NACK); the last good config stays in force", "type", ShortType(typeURL), "version", version, "reason", reason)
	if h := c.opts.Hooks.OnNACK; h != nil {
		h(typeURL, version, reason)
	}
}

func (c *Client) connected() {
	c.Stats.Connects.Add(1)
	c.log.Info("xds stream open")
	if h := c.opts.Hooks.OnConnect; h != nil {
		h()
	}
}

var errStreamClosed = errors.New("server closed the stream")
