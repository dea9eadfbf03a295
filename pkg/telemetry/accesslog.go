package telemetry

import (
	"context"
	"io"
	"log/slog"
	"sync/atomic"
)

// AccessLog writes one JSON line per closed connection. It can be switched on
// and off at runtime; off costs one atomic load per record.
type AccessLog struct {
	on  atomic.Bool
	log *slog.Logger
}

// NewAccessLog returns an access log writing JSON lines to w, initially on or off.
func NewAccessLog(w io.Writer, on bool) *AccessLog {
	a := &AccessLog{log: slog.New(slog.NewJSONHandler(w, nil))}
	a.on.Store(on)
	return a
}

// SetEnabled switches the log.
func (a *AccessLog) SetEnabled(on bool) { a.on.Store(on) }

// Enabled reports whether the log is on.
func (a *AccessLog) Enabled() bool { return a.on.Load() }

// Observe logs close records while enabled.
func (a *AccessLog) Observe(ev *ConnEvent, names Names) {
	if ev.Type != EventClose || !a.on.Load() {
		return
	}
	dir := "outbound"
	if ev.Direction == DirectionInbound {
		dir = "inbound"
	}
	attrs := []slog.Attr{
		slog.String("direction", dir),
		slog.String("src", ev.Local.String()),
		slog.String("dst", ev.Remote.String()),
		slog.Uint64("bytes_sent", ev.BytesSent),
		slog.Uint64("bytes_received", ev.BytesReceived),
		slog.Uint64("retransmits", uint64(ev.Retransmits)),
		slog.Duration("srtt", ev.SRTT),
		slog.Duration("duration", ev.Duration()),
	}
	if ev.Direction == DirectionInbound {
		attrs[1], attrs[2] = slog.String("src", ev.Remote.String()), slog.String("dst", ev.Local.String())
	}
	if ev.Original.IsValid() {
		attrs = append(attrs, slog.String("original_dst", ev.Original.String()))
	}
	if names != nil {
		if s, ok := lookupService(names, ev); ok {
			attrs = append(attrs, slog.String("service", s.Hostname))
		}
		if w, ok := lookupWorkload(names, ev.SrcWorkloadID, ev.Local.Addr()); ok {
			key := "src_workload"
			if ev.Direction == DirectionInbound {
				key = "dst_workload"
			}
			attrs = append(attrs, slog.String(key, w.Namespace+"/"+w.Name))
		}
	}
	a.log.LogAttrs(context.Background(), slog.LevelInfo, "connection", attrs...)
}
