package dataplane

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"sync/atomic"
	"time"
	"unsafe"

	"github.com/cilium/ebpf/ringbuf"
	"golang.org/x/sys/unix"

	"github.com/kmesh-go/kmesh/pkg/bpf"
)

// EventType says when a connection record was emitted.
type EventType uint8

const (
	EventOpen     EventType = 1 // established
	EventClose    EventType = 2 // closed (final counters)
	EventPeriodic EventType = 3 // long-lived connection, every Options.ReportInterval
)

// Direction of a connection relative to the enrolled socket that reported it.
type Direction uint8

const (
	DirectionUnknown  Direction = 0
	DirectionOutbound Direction = 1 // the enrolled socket connected out
	DirectionInbound  Direction = 2 // the enrolled socket accepted it
)

// ConnEvent is one decoded connection record (bpf/lib/events.h). Counters are
// cumulative since the connection started. Ids resolve with ServiceKey and
// WorkloadUID.
type ConnEvent struct {
	Type          EventType
	Direction     Direction
	Time          time.Time // emission
	Start         time.Time // connect() (outbound) or establishment (inbound)
	Cookie        uint64    // socket cookie
	NetnsCookie   uint64
	CgroupID      uint64 // cgroup of the process that owns the socket (0 if unknown)
	Local         netip.AddrPort
	Remote        netip.AddrPort // the actual peer: the backend for outbound via a VIP
	Original      netip.AddrPort // the VIP:port dialed, when the connect was load-balanced
	ServiceID     uint32         // 0 when not via a service VIP
	SrcWorkloadID uint32         // the reporting socket's workload
	DstWorkloadID uint32         // the backend's workload (outbound via a VIP)
	BytesSent     uint64         // acknowledged by the peer
	BytesReceived uint64
	Retransmits   uint32
	SRTT          time.Duration
	Accelerated   bool // in the same-node sockhash
}

// Duration is how long the connection had existed at emission.
func (e *ConnEvent) Duration() time.Duration {
	if e.Start.IsZero() || e.Time.Before(e.Start) {
		return 0
	}
	return e.Time.Sub(e.Start)
}

// ErrEventsClosed is returned by EventReader.Read after Close.
var ErrEventsClosed = errors.New("dataplane: event reader closed")

// EventReader reads connection records from the km_events ring buffer. One
// reader per daemon: records are consumed, not broadcast.
type EventReader struct {
	rd       *ringbuf.Reader
	deadline atomic.Pointer[time.Time] // the caller's deadline (nil: none)
	rec      ringbuf.Record            // reused: Read is called from one goroutine, and a record per read was the pipeline's largest allocation
	// the BPF clock (CLOCK_MONOTONIC) at wall time base
	monoBase int64
	wallBase time.Time
}

// Events opens a reader on the connection records.
func (d *Dataplane) Events() (*EventReader, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.obj == nil {
		return nil, errors.New("dataplane is closed")
	}
	rd, err := ringbuf.NewReader(d.obj.Maps[bpf.MapEvents])
	if err != nil {
		return nil, fmt.Errorf("opening %s: %w", bpf.MapEvents, err)
	}
	var ts unix.Timespec
	unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts)
	return &EventReader{rd: rd, monoBase: ts.Nano(), wallBase: time.Now()}, nil
}

// EventPollInterval bounds how late a record is read: the kernel writes
// records without waking the reader (a wakeup per record cost more than the
// rest of the telemetry path) unless a quarter of the ring is pending, so
// the reader also looks every EventPollInterval.
const EventPollInterval = 20 * time.Millisecond

// Read blocks until a record arrives, the deadline passes, or Close. It must
// not be called concurrently (one reader goroutine, as the pipeline has).
func (r *EventReader) Read() (ConnEvent, error) {
	rec := &r.rec
	for {
		next := time.Now().Add(EventPollInterval)
		dl := r.deadline.Load()
		if dl != nil && dl.Before(next) {
			next = *dl
		}
		r.rd.SetDeadline(next)
		err := r.rd.ReadInto(rec)
		if errors.Is(err, os.ErrDeadlineExceeded) {
			if dl != nil && !time.Now().Before(*dl) {
				return ConnEvent{}, err
			}
			continue // a poll found nothing: look again
		}
		if err != nil {
			if errors.Is(err, ringbuf.ErrClosed) {
				return ConnEvent{}, ErrEventsClosed
			}
			return ConnEvent{}, err
		}
		break
	}
	var raw bpf.ConnEventRaw
	if len(rec.RawSample) < int(unsafe.Sizeof(raw)) {
		return ConnEvent{}, fmt.Errorf("short connection record: %d bytes", len(rec.RawSample))
	}
	raw = *(*bpf.ConnEventRaw)(unsafe.Pointer(&rec.RawSample[0]))
	return r.decode(&raw), nil
}

// SetDeadline makes Read return os.ErrDeadlineExceeded after t (zero: none).
func (r *EventReader) SetDeadline(t time.Time) {
	if t.IsZero() {
		r.deadline.Store(nil)
		return
	}
	r.deadline.Store(&t)
}

// Close unblocks Read.
func (r *EventReader) Close() error { return r.rd.Close() }

func (r *EventReader) wall(mono uint64) time.Time {
	if mono == 0 {
		return time.Time{}
	}
	return r.wallBase.Add(time.Duration(int64(mono) - r.monoBase))
}

func (r *EventReader) decode(raw *bpf.ConnEventRaw) ConnEvent {
	ev := ConnEvent{
		Type: EventType(raw.Type), Direction: Direction(raw.Direction),
		Time: r.wall(raw.TsNs), Start: r.wall(raw.StartNs),
		Cookie: raw.SockCookie, NetnsCookie: raw.NetnsCookie, CgroupID: raw.CgroupId,
		Local:     netip.AddrPortFrom(addrFrom16(raw.LocalAddr), raw.LocalPort),
		Remote:    netip.AddrPortFrom(addrFrom16(raw.RemoteAddr), raw.RemotePort),
		ServiceID: raw.SvcId, SrcWorkloadID: raw.SrcWorkload, DstWorkloadID: raw.DstWorkload,
		BytesSent: raw.BytesSent, BytesReceived: raw.BytesReceived, Retransmits: raw.TotalRetrans,
		SRTT:        time.Duration(raw.SrttUs) * time.Microsecond,
		Accelerated: raw.Flags&bpf.SockAccel != 0,
	}
	if raw.Flags&bpf.SockRewritten != 0 {
		ev.Original = netip.AddrPortFrom(addrFrom16(raw.OrigAddr), raw.OrigPort)
	}
	return ev
}
