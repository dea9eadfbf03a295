// Package telemetry turns the dataplane's connection records (a BPF ring
// buffer written by sockops at open, close and periodically) into Prometheus
// metrics with Istio's names and labels, and into a JSON access log with one
// line per closed connection. It also hosts kmesh_* metrics about internals
// (maps, BPF program cost, xDS, kernel module) fed by providers.
package telemetry

import (
	"net/netip"
	"time"
)

// EventType says when a record was emitted.
type EventType uint8

const (
	EventOpen     EventType = 1
	EventClose    EventType = 2
	EventPeriodic EventType = 3
)

// Direction of a connection relative to the enrolled socket that reported it.
type Direction uint8

const (
	DirectionUnknown  Direction = 0
	DirectionOutbound Direction = 1 // the enrolled socket connected out (reporter=source)
	DirectionInbound  Direction = 2 // the enrolled socket accepted it (reporter=destination)
)

// ConnEvent is one decoded connection record. Byte and retransmit counters are
// cumulative since the connection started.
type ConnEvent struct {
	Type          EventType
	Direction     Direction
	Time          time.Time // emission
	Start         time.Time // connect()/accept
	Cookie        uint64    // socket cookie, unique per socket while it lives
	Local         netip.AddrPort
	Remote        netip.AddrPort // the actual peer (the backend for outbound via a VIP)
	Original      netip.AddrPort // what the application dialed (the VIP), if rewritten
	ServiceID     uint32         // 0 when not via a service VIP
	SrcWorkloadID uint32         // the reporting socket's workload
	DstWorkloadID uint32         // the backend workload (outbound via a VIP)
	BytesSent     uint64
	BytesReceived uint64
	Retransmits   uint32
	SRTT          time.Duration
}

// Duration is how long the connection has existed at emission.
func (e *ConnEvent) Duration() time.Duration {
	if e.Start.IsZero() || e.Time.Before(e.Start) {
		return 0
	}
	return e.Time.Sub(e.Start)
}

// WorkloadInfo and ServiceInfo are what labels are made of.
type WorkloadInfo struct {
	Name, Namespace, UID string
}

// ServiceInfo names a service.
type ServiceInfo struct {
	Hostname, Name, Namespace string
}

// Names resolves the IDs and addresses in records to names. It is implemented
// by the daemon over the currently applied model. Lookups must be cheap and
// safe for concurrent use; a miss returns ok=false and the label is "unknown".
type Names interface {
	WorkloadByID(id uint32) (WorkloadInfo, bool)
	WorkloadByAddr(a netip.Addr) (WorkloadInfo, bool)
	ServiceByID(id uint32) (ServiceInfo, bool)
	ServiceByAddr(a netip.AddrPort) (ServiceInfo, bool)
}
