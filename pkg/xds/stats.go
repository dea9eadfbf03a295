package xds

import (
	"sync/atomic"
	"time"
)

// Stats counts what the client did. All fields are safe for concurrent reads;
// the metrics issue (#8) exports them. The zero value is ready to use.
type Stats struct {
	Connects    atomic.Uint64 // streams opened
	Disconnects atomic.Uint64 // streams that ended with an error
	Responses   atomic.Uint64 // responses received
	ACKs        atomic.Uint64
	NACKs       atomic.Uint64
	// LastApplyNanos is how long the handler took for the last accepted response.
	LastApplyNanos atomic.Int64
}

// Hooks are optional callbacks for metrics and tests. Nil fields are skipped.
// They run on the stream goroutine: keep them fast.
type Hooks struct {
	// OnConnect runs when a stream is open and the first requests are sent.
	OnConnect func()
	// OnDisconnect runs when a stream ends; err is why.
	OnDisconnect func(err error)
	// OnACK runs after a response was accepted and applied; took is the time
	// from receiving the response to sending the ACK (propagation inside kmeshd).
	OnACK func(typeURL, version string, took time.Duration)
	// OnNACK runs after a response was rejected; reason is the error_detail.
	OnNACK func(typeURL, version string, reason error)
}
