package telemetry

import (
	"bytes"
	"encoding/json"
	"errors"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

// staticNames is a fixed table of names: the unit under test here is the
// accounting; the daemon's model-backed Names is tested with the daemon.
type staticNames struct{}

func (staticNames) WorkloadByID(id uint32) (WorkloadInfo, bool) {
	switch id {
	case 1:
		return WorkloadInfo{Name: "client", Namespace: "ns1"}, true
	case 2:
		return WorkloadInfo{Name: "web-1", Namespace: "ns2"}, true
	}
	return WorkloadInfo{}, false
}
func (staticNames) WorkloadByAddr(a netip.Addr) (WorkloadInfo, bool) {
	if a == netip.MustParseAddr("10.77.0.1") {
		return WorkloadInfo{Name: "client", Namespace: "ns1"}, true
	}
	return WorkloadInfo{}, false
}
func (staticNames) ServiceByID(id uint32) (ServiceInfo, bool) {
	if id == 7 {
		return ServiceInfo{Hostname: "web.ns2.svc.cluster.local", Name: "web", Namespace: "ns2"}, true
	}
	return ServiceInfo{}, false
}
func (staticNames) ServiceByAddr(netip.AddrPort) (ServiceInfo, bool) { return ServiceInfo{}, false }

func outbound(t EventType, cookie, sent, recv uint64) *ConnEvent {
	now := time.Unix(100, 0)
	return &ConnEvent{Type: t, Direction: DirectionOutbound, Time: now, Start: now.Add(-time.Second), Cookie: cookie,
		Local: netip.MustParseAddrPort("10.77.0.1:40000"), Remote: netip.MustParseAddrPort("10.77.0.2:8080"),
		Original: netip.MustParseAddrPort("10.96.0.10:80"), ServiceID: 7, SrcWorkloadID: 1, DstWorkloadID: 2,
		BytesSent: sent, BytesReceived: recv}
}

func TestTCPMetricsCountsConnectionsAndByteDeltas(t *testing.T) {
	reg := prometheus.NewRegistry()
	m := NewTCPMetrics(reg, 0)
	m.SetNames(staticNames{})
	for c := uint64(1); c <= 3; c++ {
		m.Observe(outbound(EventOpen, c, 0, 0))
	}
	m.Observe(outbound(EventPeriodic, 1, 1000, 10))
	m.Observe(outbound(EventPeriodic, 1, 1500, 10)) // +500 sent
	m.Observe(outbound(EventClose, 1, 2000, 30))    // +500 sent, +20 received
	m.Observe(outbound(EventClose, 2, 100, 0))

	lv := []string{"source", "client", "ns1", "unknown", "client", "web.ns2.svc.cluster.local", "web", "ns2",
		"web-1", "ns2", "unknown", "web-1", "tcp", "-", "none"}
	check := func(c *prometheus.CounterVec, want float64, what string) {
		t.Helper()
		if got := testutil.ToFloat64(c.WithLabelValues(lv...)); got != want {
			t.Errorf("%s = %v, want %v", what, got, want)
		}
	}
	check(m.opened, 3, "opened")
	check(m.closed, 2, "closed")
	check(m.sent, 2100, "sent bytes")
	check(m.received, 30, "received bytes")
	if n := m.ActiveConnections(); n != 1 {
		t.Errorf("tracked connections = %d, want 1 (cookie 3 still open)", n)
	}
}

func TestTCPMetricsInboundLabelsAndOverflow(t *testing.T) {
	reg := prometheus.NewRegistry()
	m := NewTCPMetrics(reg, 2)
	m.SetNames(staticNames{})
	in := outbound(EventOpen, 9, 0, 0)
	in.Direction = DirectionInbound
	in.Local, in.Remote = in.Remote, in.Local
	in.SrcWorkloadID, in.DstWorkloadID = 2, 0
	m.Observe(in)
	got := testutil.ToFloat64(m.opened.WithLabelValues("destination", "client", "ns1", "unknown", "client",
		"web.ns2.svc.cluster.local", "web", "ns2", "web-1", "ns2", "unknown", "web-1", "tcp", "-", "none"))
	if got != 1 {
		t.Fatalf("inbound series = %v, want 1", got)
	}
	// Two more distinct label sets with a limit of 2: the second overflows.
	a := outbound(EventOpen, 10, 0, 0)
	a.ServiceID = 0
	a.Original = netip.AddrPort{}
	m.Observe(a)
	b := outbound(EventOpen, 11, 0, 0)
	b.SrcWorkloadID, b.Local = 0, netip.MustParseAddrPort("10.77.0.9:1")
	m.Observe(b)
	if testutil.ToFloat64(m.overflow) != 1 {
		t.Fatalf("overflow = %v, want 1", testutil.ToFloat64(m.overflow))
	}
	ov := overflowLabels("source")
	if testutil.ToFloat64(m.opened.WithLabelValues(ov[:]...)) != 1 {
		t.Fatal("overflowed record not counted under overflow labels")
	}
}

func TestPipelineMonitoringSwitchAndAccessLog(t *testing.T) {
	var buf bytes.Buffer
	reg := prometheus.NewRegistry()
	p := NewPipeline(NewTCPMetrics(reg, 0), NewAccessLog(&buf, true))
	p.SetNames(staticNames{})
	p.Handle(outbound(EventOpen, 1, 0, 0))
	p.Handle(outbound(EventClose, 1, 64, 128))
	if err := p.SetMonitoring(false); err != nil {
		t.Fatal(err)
	}
	p.Handle(outbound(EventOpen, 2, 0, 0))
	p.Handle(outbound(EventClose, 2, 1, 1))

	lines := strings.Split(strings.TrimSpace(buf.String()), "\n")
	if len(lines) != 1 {
		t.Fatalf("access log has %d lines, want 1 (monitoring off drops the second):\n%s", len(lines), buf.String())
	}
	var rec map[string]any
	if err := json.Unmarshal([]byte(lines[0]), &rec); err != nil {
		t.Fatal(err)
	}
	for k, want := range map[string]any{"msg": "connection", "direction": "outbound", "src": "10.77.0.1:40000",
		"dst": "10.77.0.2:8080", "original_dst": "10.96.0.10:80", "service": "web.ns2.svc.cluster.local",
		"src_workload": "ns1/client", "bytes_sent": float64(64), "bytes_received": float64(128)} {
		if rec[k] != want {
			t.Errorf("access log %s = %v, want %v", k, rec[k], want)
		}
	}
	if n, _ := testutil.GatherAndCount(reg, "istio_tcp_connections_opened_total"); n != 1 {
		t.Fatalf("series = %d", n)
	}
}

type fakeSwitch struct {
	calls []bool
	err   error
}

func (f *fakeSwitch) SetEvents(on bool) error {
	f.calls = append(f.calls, on)
	return f.err
}

// The monitoring switch turns the kernel's records off with it; if the
// kernel cannot be switched, monitoring stays as it was.
func TestPipelineMonitoringSwitchesKernelRecords(t *testing.T) {
	p := NewPipeline(nil, nil)
	sw := &fakeSwitch{}
	p.Kernel = sw
	if err := p.SetMonitoring(false); err != nil || p.MonitoringEnabled() {
		t.Fatalf("off: err %v enabled %v", err, p.MonitoringEnabled())
	}
	if err := p.SetMonitoring(true); err != nil || !p.MonitoringEnabled() {
		t.Fatalf("on: err %v enabled %v", err, p.MonitoringEnabled())
	}
	if len(sw.calls) != 2 || sw.calls[0] || !sw.calls[1] {
		t.Fatalf("kernel switched %v, want [false true]", sw.calls)
	}
	sw.err = errors.New("map write failed")
	if err := p.SetMonitoring(false); err == nil || !strings.Contains(err.Error(), "map write failed") {
		t.Fatalf("failed switch: err %v", err)
	}
	if !p.MonitoringEnabled() {
		t.Fatal("a failed kernel switch turned monitoring off anyway")
	}
}
