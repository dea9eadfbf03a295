// Package load generates and serves benchmark traffic with the fortio
// library: fortio's pacing (periodic runner) and its HTTP/1.1 and TCP echo
// clients and servers. Latency is recorded per request, exactly, instead of
// in fortio's histogram, whose buckets are 5-10 µs wide in the 30-100 µs range
// where the differences between our scenarios live.
package load

import (
	"errors"
	"fmt"
	"time"

	"github.com/kmesh-go/kmesh/bench/procstat"
)

// Proto is the application protocol of a run.
type Proto string

const (
	// HTTP is HTTP/1.1 with keep-alive: a POST of Payload bytes answered by an
	// echo of the same body.
	HTTP Proto = "http"
	// TCP is a raw echo: Payload bytes written, the same bytes read back.
	TCP Proto = "tcp"
	// HTTPClose is HTTP without keep-alive: every request on a new TCP
	// connection (connect, request, response, close). It is the worst case for
	// per-connection work such as connect-time balancing and telemetry.
	HTTPClose Proto = "http-close"
)

// Protos lists the protocols in report order.
var Protos = []Proto{HTTP, TCP}

// Spec is one load run. The zero Rate means closed-loop maximum rate.
type Spec struct {
	Proto    Proto         `json:"proto"`
	Addr     string        `json:"addr"`    // host:port the client dials
	Conns    int           `json:"conns"`   // concurrent connections, one request in flight on each
	Rate     float64       `json:"rate"`    // requests per second over all connections; 0 = max
	Payload  int           `json:"payload"` // bytes per request and per response body
	Warmup   time.Duration `json:"warmup"`  // traffic before the measured window, discarded
	Duration time.Duration `json:"duration"`
	// RequestTimeout bounds every request (connect, write, read).
	RequestTimeout time.Duration `json:"request_timeout"`
	// MaxSamples bounds the memory for latency samples; a run that would exceed
	// it is reported as truncated (and fails) rather than silently subsampled.
	MaxSamples int `json:"max_samples"`
	// CPUCgroupFD, if > 0, is an inherited descriptor of a cgroup v2
	// directory whose cpu.stat is sampled together with /proc/stat (the
	// benchmark's own processes).
	CPUCgroupFD int `json:"cpu_cgroup_fd,omitempty"`
}

// Limits that keep a mistyped flag from turning into an unbounded run.
const (
	MaxConns    = 4096
	MaxPayload  = 1 << 20
	MaxDuration = 10 * time.Minute
)

// Validate rejects specs that cannot be run as given.
func (s Spec) Validate() error {
	var errs []error
	if s.Proto != HTTP && s.Proto != TCP && s.Proto != HTTPClose {
		errs = append(errs, fmt.Errorf("proto %q: want http, http-close or tcp", s.Proto))
	}
	if s.Addr == "" {
		errs = append(errs, errors.New("addr is empty"))
	}
	if s.Conns < 1 || s.Conns > MaxConns {
		errs = append(errs, fmt.Errorf("conns %d: want 1..%d", s.Conns, MaxConns))
	}
	if s.Rate < 0 {
		errs = append(errs, fmt.Errorf("rate %v: want >= 0 (0 = max)", s.Rate))
	}
	if s.Payload < 1 || s.Payload > MaxPayload {
		errs = append(errs, fmt.Errorf("payload %d: want 1..%d bytes", s.Payload, MaxPayload))
	}
	if s.Duration <= 0 || s.Duration > MaxDuration {
		errs = append(errs, fmt.Errorf("duration %v: want (0, %v]", s.Duration, MaxDuration))
	}
	if s.Warmup < 0 || s.Warmup > MaxDuration {
		errs = append(errs, fmt.Errorf("warmup %v: want [0, %v]", s.Warmup, MaxDuration))
	}
	if s.RequestTimeout <= 0 {
		errs = append(errs, fmt.Errorf("request timeout %v: want > 0", s.RequestTimeout))
	}
	if s.MaxSamples < 1 {
		errs = append(errs, fmt.Errorf("max samples %d: want >= 1", s.MaxSamples))
	}
	return errors.Join(errs...)
}

// Latency percentiles of the successful requests of a run, in microseconds.
type Latency struct {
	P50  float64 `json:"p50_us"`
	P90  float64 `json:"p90_us"`
	P99  float64 `json:"p99_us"`
	P999 float64 `json:"p999_us"`
	Min  float64 `json:"min_us"`
	Max  float64 `json:"max_us"`
	Mean float64 `json:"mean_us"`
}

// Result is what one run measured. Requests = OK + Errors.
type Result struct {
	Requests int64            `json:"requests"`
	OK       int64            `json:"ok"`
	Errors   int64            `json:"errors"`
	Codes    map[string]int64 `json:"codes"` // HTTP status ("200", "-1" = socket error) or TCP outcome
	// FirstError describes the first failed request, for the report.
	FirstError     string  `json:"first_error,omitempty"`
	WarmupRequests int64   `json:"warmup_requests"`
	WarmupErrors   int64   `json:"warmup_errors"`
	Conns          int     `json:"conns"` // connections actually used (fortio lowers it for tiny runs)
	Elapsed        float64 `json:"elapsed_s"`
	Throughput     float64 `json:"throughput_rps"` // OK / Elapsed
	Latency        Latency `json:"latency"`
	// CPU is the /proc/stat delta over the measured window (all CPUs, ticks).
	CPU procstat.Sample `json:"cpu_ticks"`
	// LabCPU is the CPUCgroup delta over the same window (nil if not asked).
	LabCPU    *procstat.CgroupCPU `json:"lab_cpu,omitempty"`
	Truncated bool                `json:"truncated,omitempty"`
}
