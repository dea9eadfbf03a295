package telemetry

import (
	"net/netip"
	"sync"
	"sync/atomic"

	"github.com/prometheus/client_golang/prometheus"
)

// tcpLabels are Istio's standard TCP metric labels (a subset ztunnel also
// emits); values we cannot know without identities are "unknown".
var tcpLabels = []string{
	"reporter",
	"source_workload", "source_workload_namespace", "source_principal", "source_app",
	"destination_service", "destination_service_name", "destination_service_namespace",
	"destination_workload", "destination_workload_namespace", "destination_principal", "destination_app",
	"request_protocol", "response_flags", "connection_security_policy",
}

// DefaultMaxSeries bounds the distinct label sets per metric. A mesh has
// services × workloads × reporters combinations at most; past the bound new
// combinations are counted under labels "overflow" so memory stays bounded and
// the loss is visible (kmesh_telemetry_label_overflow_total).
const DefaultMaxSeries = 10000

// TCPMetrics are the Istio-compatible connection metrics.
type TCPMetrics struct {
	opened, closed, sent, received *prometheus.CounterVec
	overflow                       prometheus.Counter
	events                         *prometheus.CounterVec
	// The events counters, resolved once.
	evOpen, evClose, evPeriodic, evUnknown prometheus.Counter

	mu sync.Mutex
	// series holds each label set's four counters, resolved once: looking
	// them up by 15 label values on every record would cost more than the
	// rest of the record's accounting.
	series    map[[len15]string]*seriesCounters
	maxSeries int
	names     atomic.Pointer[namesBox]
	// last cumulative byte counts per socket cookie, so periodic and close
	// records add only the delta. Entries are removed at close.
	last map[uint64][2]uint64
}

const len15 = 15

type seriesCounters struct{ opened, closed, sent, received prometheus.Counter }

// maxTracked bounds the per-connection byte state (one entry per live
// connection that has reported).
const maxTracked = 1 << 20

type namesBox struct{ n Names }

// NewTCPMetrics registers the metrics on reg.
func NewTCPMetrics(reg prometheus.Registerer, maxSeries int) *TCPMetrics {
	if maxSeries <= 0 {
		maxSeries = DefaultMaxSeries
	}
	m := &TCPMetrics{
		opened: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "istio_tcp_connections_opened_total",
			Help: "TCP connections opened, by the enrolled end that reported them."}, tcpLabels),
		closed: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "istio_tcp_connections_closed_total",
			Help: "TCP connections closed."}, tcpLabels),
		sent: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "istio_tcp_sent_bytes_total",
			Help: "Bytes sent by the reporting end (acknowledged by the peer), reported at close and periodically for long-lived connections."}, tcpLabels),
		received: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "istio_tcp_received_bytes_total",
			Help: "Bytes received by the reporting end."}, tcpLabels),
		overflow: prometheus.NewCounter(prometheus.CounterOpts{Name: "kmesh_telemetry_label_overflow_total",
			Help: "Records counted under overflow labels because the series limit was reached."}),
		events: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "kmesh_telemetry_events_total",
			Help: "Connection records read from the dataplane, by type."}, []string{"type"}),
		series:    map[[len15]string]*seriesCounters{},
		maxSeries: maxSeries,
		last:      map[uint64][2]uint64{},
	}
	reg.MustRegister(m.opened, m.closed, m.sent, m.received, m.overflow, m.events)
	m.evOpen, m.evClose = m.events.WithLabelValues("open"), m.events.WithLabelValues("close")
	m.evPeriodic, m.evUnknown = m.events.WithLabelValues("periodic"), m.events.WithLabelValues("unknown")
	return m
}

// seriesFor returns the counters of a label set, creating them within the
// series bound (past it: the overflow set). Called with m.mu held.
func (m *TCPMetrics) seriesFor(lv [len15]string) *seriesCounters {
	if c, ok := m.series[lv]; ok {
		return c
	}
	if len(m.series) >= m.maxSeries {
		m.overflow.Inc()
		lv = overflowLabels(lv[0])
		if c, ok := m.series[lv]; ok {
			return c
		}
		// The overflow sets (one per reporter) live beyond the bound.
	}
	l := lv[:]
	c := &seriesCounters{opened: m.opened.WithLabelValues(l...), closed: m.closed.WithLabelValues(l...),
		sent: m.sent.WithLabelValues(l...), received: m.received.WithLabelValues(l...)}
	m.series[lv] = c
	return c
}

// SetNames sets the resolver used for labels (swap it when the model changes).
func (m *TCPMetrics) SetNames(n Names) { m.names.Store(&namesBox{n}) }

// Observe accounts one record.
func (m *TCPMetrics) Observe(ev *ConnEvent) {
	switch ev.Type {
	case EventOpen:
		m.evOpen.Inc()
	case EventClose:
		m.evClose.Inc()
	case EventPeriodic:
		m.evPeriodic.Inc()
	default:
		m.evUnknown.Inc()
		return
	}
	lv := m.labelValues(ev)
	m.mu.Lock()
	c := m.seriesFor(lv)
	prev, tracked := m.last[ev.Cookie]
	if !tracked && ev.Type == EventPeriodic && len(m.last) >= maxTracked {
		// No room to remember what was counted: leave this connection's bytes
		// to its close record, which carries the full totals.
		m.mu.Unlock()
		return
	}
	var dSent, dRecv uint64
	if ev.BytesSent >= prev[0] {
		dSent = ev.BytesSent - prev[0]
	}
	if ev.BytesReceived >= prev[1] {
		dRecv = ev.BytesReceived - prev[1]
	}
	switch ev.Type {
	case EventOpen, EventPeriodic:
		if tracked || len(m.last) < maxTracked {
			m.last[ev.Cookie] = [2]uint64{ev.BytesSent, ev.BytesReceived}
		}
	case EventClose:
		delete(m.last, ev.Cookie)
	}
	m.mu.Unlock()

	switch ev.Type {
	case EventOpen:
		c.opened.Inc()
	case EventClose:
		c.closed.Inc()
	}
	if dSent > 0 {
		c.sent.Add(float64(dSent))
	}
	if dRecv > 0 {
		c.received.Add(float64(dRecv))
	}
}

func overflowLabels(reporter string) [len15]string {
	var lv [len15]string
	for i := range lv {
		lv[i] = "overflow"
	}
	lv[0] = reporter
	return lv
}

func (m *TCPMetrics) labelValues(ev *ConnEvent) [len15]string {
	var names Names
	if b := m.names.Load(); b != nil {
		names = b.n
	}
	const unknown = "unknown"
	reporter := "source"
	if ev.Direction == DirectionInbound {
		reporter = "destination"
	}
	src := WorkloadInfo{Name: unknown, Namespace: unknown}
	dst := WorkloadInfo{Name: unknown, Namespace: unknown}
	svc := ServiceInfo{Hostname: unknown, Name: unknown, Namespace: unknown}
	if names != nil {
		local, peer := ev.Local.Addr(), ev.Remote.Addr()
		if ev.Direction == DirectionInbound {
			// The reporting socket is the destination; the peer is the source.
			if w, ok := lookupWorkload(names, ev.SrcWorkloadID, local); ok {
				dst = w
			}
			if w, ok := lookupWorkload(names, 0, peer); ok {
				src = w
			}
		} else {
			if w, ok := lookupWorkload(names, ev.SrcWorkloadID, local); ok {
				src = w
			}
			if w, ok := lookupWorkload(names, ev.DstWorkloadID, peer); ok {
				dst = w
			}
		}
		if s, ok := lookupService(names, ev); ok {
			svc = s
		}
	}
	return [len15]string{
		reporter,
		src.Name, src.Namespace, unknown, src.Name,
		svc.Hostname, svc.Name, svc.Namespace,
		dst.Name, dst.Namespace, unknown, dst.Name,
		"tcp", "-", "none",
	}
}

func lookupWorkload(n Names, id uint32, a netip.Addr) (WorkloadInfo, bool) {
	if id != 0 {
		if w, ok := n.WorkloadByID(id); ok {
			return w, true
		}
	}
	if a.IsValid() {
		return n.WorkloadByAddr(a.Unmap())
	}
	return WorkloadInfo{}, false
}

func lookupService(n Names, ev *ConnEvent) (ServiceInfo, bool) {
	if ev.ServiceID != 0 {
		if s, ok := n.ServiceByID(ev.ServiceID); ok {
			return s, true
		}
	}
	if ev.Original.IsValid() {
		return n.ServiceByAddr(netip.AddrPortFrom(ev.Original.Addr().Unmap(), ev.Original.Port()))
	}
	return ServiceInfo{}, false
}

// ActiveConnections is the number of connections with byte state held.
func (m *TCPMetrics) ActiveConnections() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return len(m.last)
}
