package telemetry

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// MapUsage is one BPF map's fill level.
type MapUsage struct {
	Name              string
	Entries, Capacity int
}

// ProgramCost is one BPF program's accumulated run time (bpf_stats).
type ProgramCost struct {
	Name    string
	Runs    uint64
	RunTime time.Duration
}

// Internals are the providers of kmesh_* metrics about the daemon's own
// machinery. They are called at scrape time; nil ones are skipped. Errors make
// the scrape report the metric as missing (Prometheus shows it), never fail it.
type Internals struct {
	Maps     func() []MapUsage
	Programs func() ([]ProgramCost, error)
	// Counters are dataplane counters kept by the BPF programs (km_stats).
	Counters func() (map[string]uint64, error)
	// Module returns kmesh.ko's counters over genetlink (kernel-native mode).
	Module func() (map[string]uint64, error)
}

var (
	descMapEntries  = prometheus.NewDesc("kmesh_bpf_map_entries", "Entries in a dataplane BPF map.", []string{"map"}, nil)
	descMapCapacity = prometheus.NewDesc("kmesh_bpf_map_capacity", "Capacity (max_entries) of a dataplane BPF map.", []string{"map"}, nil)
	descProgRuns    = prometheus.NewDesc("kmesh_bpf_program_runs_total", "Runs of a BPF program since stats were enabled (kernel.bpf_stats_enabled / --bpf-stats).", []string{"program"}, nil)
	descProgTime    = prometheus.NewDesc("kmesh_bpf_program_run_seconds_total", "Time spent in a BPF program since stats were enabled.", []string{"program"}, nil)
	descCounters    = prometheus.NewDesc("kmesh_dataplane_events_total", "Dataplane decisions counted in BPF (connects load-balanced, refused, ...).", []string{"event"}, nil)
	descModule      = prometheus.NewDesc("kmesh_kmod_events_total", "kmesh.ko counters read over generic netlink.", []string{"counter"}, nil)
)

// Describe implements prometheus.Collector.
func (in *Internals) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descMapEntries, descMapCapacity, descProgRuns, descProgTime, descCounters, descModule} {
		ch <- d
	}
}

// Collect implements prometheus.Collector.
func (in *Internals) Collect(ch chan<- prometheus.Metric) {
	if in.Maps != nil {
		for _, m := range in.Maps() {
			ch <- prometheus.MustNewConstMetric(descMapEntries, prometheus.GaugeValue, float64(m.Entries), m.Name)
			ch <- prometheus.MustNewConstMetric(descMapCapacity, prometheus.GaugeValue, float64(m.Capacity), m.Name)
		}
	}
	if in.Programs != nil {
		if progs, err := in.Programs(); err == nil {
			for _, p := range progs {
				ch <- prometheus.MustNewConstMetric(descProgRuns, prometheus.CounterValue, float64(p.Runs), p.Name)
				ch <- prometheus.MustNewConstMetric(descProgTime, prometheus.CounterValue, p.RunTime.Seconds(), p.Name)
			}
		}
	}
	emit := func(f func() (map[string]uint64, error), d *prometheus.Desc) {
		if f == nil {
			return
		}
		vals, err := f()
		if err != nil {
			return
		}
		for k, v := range vals {
			ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(v), k)
		}
	}
	emit(in.Counters, descCounters)
	emit(in.Module, descModule)
}

// XDSMetrics count what the configuration client did. Its methods match the
// xDS client's hooks.
type XDSMetrics struct {
	connects    prometheus.Counter
	disconnects prometheus.Counter
	pushes      *prometheus.CounterVec
	nacks       *prometheus.CounterVec
	propagation *prometheus.HistogramVec
}

// NewXDSMetrics registers the xDS metrics on reg.
func NewXDSMetrics(reg prometheus.Registerer) *XDSMetrics {
	m := &XDSMetrics{
		connects: prometheus.NewCounter(prometheus.CounterOpts{Name: "kmesh_xds_connects_total",
			Help: "xDS streams opened."}),
		disconnects: prometheus.NewCounter(prometheus.CounterOpts{Name: "kmesh_xds_disconnects_total",
			Help: "xDS streams that ended with an error."}),
		pushes: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "kmesh_xds_pushes_total",
			Help: "xDS responses accepted and applied (ACKed), by type."}, []string{"type"}),
		nacks: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "kmesh_xds_nacks_total",
			Help: "xDS responses rejected (NACKed), by type."}, []string{"type"}),
		propagation: prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "kmesh_xds_propagation_seconds",
			Help:    "Time from receiving an xDS response to having it applied to the kernel maps and ACKed.",
			Buckets: prometheus.ExponentialBuckets(0.0001, 2, 18)}, []string{"type"}),
	}
	reg.MustRegister(m.connects, m.disconnects, m.pushes, m.nacks, m.propagation)
	return m
}

// OnConnect, OnDisconnect, OnACK and OnNACK match xds.Hooks.
func (m *XDSMetrics) OnConnect()           { m.connects.Inc() }
func (m *XDSMetrics) OnDisconnect(_ error) { m.disconnects.Inc() }
func (m *XDSMetrics) OnACK(typeURL, _ string, took time.Duration) {
	t := shortType(typeURL)
	m.pushes.WithLabelValues(t).Inc()
	m.propagation.WithLabelValues(t).Observe(took.Seconds())
}
func (m *XDSMetrics) OnNACK(typeURL, _ string, _ error) {
	m.nacks.WithLabelValues(shortType(typeURL)).Inc()
}

// shortType turns type.googleapis.com/istio.workload.Address into Address.
func shortType(u string) string {
	for i := len(u) - 1; i >= 0; i-- {
		if u[i] == '.' || u[i] == '/' {
			return u[i+1:]
		}
	}
	return u
}
