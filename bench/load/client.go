package load

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"fortio.org/fortio/fhttp"
	"fortio.org/fortio/periodic"
	"fortio.org/fortio/tcprunner"
	"fortio.org/log"

	"github.com/kmesh-go/kmesh/bench/procstat"
)

// Run performs the warm-up and then the measured window of s against s.Addr.
// It returns an error only when the run could not be performed at all (bad
// spec, no connection could be primed); request failures during the run are
// counted in the Result, which the caller marks as failed.
func Run(ctx context.Context, s Spec) (Result, error) {
	if err := s.Validate(); err != nil {
		return Result{}, err
	}
	log.SetLogLevelQuiet(log.Error)
	payload := Payload(s.Payload)
	var res Result
	if s.Warmup > 0 {
		w, err := runPhase(ctx, s, payload, s.Warmup, nil)
		if err != nil {
			return res, fmt.Errorf("warm-up: %w", err)
		}
		res.WarmupRequests, res.WarmupErrors = w.requests, w.errors
	}
	budget := &atomic.Int64{}
	budget.Store(int64(s.MaxSamples))
	m, err := runPhase(ctx, s, payload, s.Duration, budget)
	if err != nil {
		return res, err
	}
	res.Requests, res.OK, res.Errors = m.requests, m.ok, m.errors
	res.Codes, res.FirstError = m.codes, m.firstErr
	res.Conns, res.Elapsed, res.CPU, res.Truncated = m.conns, m.elapsed.Seconds(), m.cpu, m.truncated
	res.LabCPU = m.labCPU
	if res.Elapsed > 0 {
		res.Throughput = float64(res.OK) / res.Elapsed
	}
	res.Latency = Summarize(m.samples)
	if res.FirstError == "" && res.WarmupErrors > 0 {
		res.FirstError = fmt.Sprintf("%d errors during warm-up", res.WarmupErrors)
	}
	return res, nil
}

// Payload returns the n request bytes every scenario sends: printable and
// position dependent, so a proxy that reorders or truncates is caught by the
// echo check.
func Payload(n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = 'a' + byte(i%26)
	}
	return b
}

type phase struct {
	requests, ok, errors int64
	codes                map[string]int64
	firstErr             string
	samples              []time.Duration
	truncated            bool
	conns                int
	elapsed              time.Duration
	cpu                  procstat.Sample
	labCPU               *procstat.CgroupCPU
}

// runPhase opens s.Conns connections, primes each with one request (so
// connection setup is never in the samples, as fortio itself does), then lets
// fortio's periodic runner pace requests for d. budget == nil means "do not
// record" (warm-up).
func runPhase(ctx context.Context, s Spec, payload []byte, d time.Duration, budget *atomic.Int64) (phase, error) {
	workers := make([]*worker, s.Conns)
	defer func() {
		for _, w := range workers {
			if w != nil {
				w.close()
			}
		}
	}()
	for i := range workers {
		w, err := newWorker(s, payload, budget)
		if err != nil {
			return phase{}, fmt.Errorf("client %d: %w", i, err)
		}
		workers[i] = w
	}
	if err := prime(ctx, workers); err != nil {
		return phase{}, err
	}

	opts := periodic.RunnerOptions{
		RunType:     string(s.Proto),
		QPS:         s.Rate,
		Duration:    d,
		NumThreads:  s.Conns,
		Out:         io.Discard,
		Percentiles: []float64{50},
	}
	if s.Rate == 0 {
		opts.QPS = -1 // fortio: negative means no pacing
	} else {
		// Stagger the connections evenly over each period. Unstaggered, all
		// connections fire at the same instant and the server queues them:
		// that measures the burst, not the path.
		opts.Uniform = true
	}
	r := periodic.NewPeriodicRunner(&opts)
	// NewPeriodicRunner moves the options: the runners must be set on its copy.
	for i, w := range workers {
		r.Options().Runners[i] = w
	}
	stop := context.AfterFunc(ctx, func() { r.Options().Abort() })
	defer stop()

	var labBefore, labAfter procstat.CgroupCPU
	before, err := procstat.Read()
	if err == nil && s.CPUCgroupFD > 0 {
		labBefore, err = procstat.ReadCgroupCPUAt(s.CPUCgroupFD)
	}
	if err != nil {
		r.Options().Abort()
		return phase{}, err
	}
	start := time.Now()
	rr := r.Run()
	elapsed := time.Since(start)
	after, err := procstat.Read()
	if err == nil && s.CPUCgroupFD > 0 {
		labAfter, err = procstat.ReadCgroupCPUAt(s.CPUCgroupFD)
	}
	if err != nil {
		return phase{}, err
	}
	if ctx.Err() != nil {
		return phase{}, ctx.Err()
	}
	cpu, err := after.Sub(before)
	if err != nil {
		return phase{}, err
	}
	p := phase{codes: map[string]int64{}, conns: rr.NumThreads, elapsed: elapsed, cpu: cpu}
	if s.CPUCgroupFD > 0 {
		d, err := labAfter.Sub(labBefore)
		if err != nil {
			return phase{}, err
		}
		p.labCPU = &d
	}
	if rr.ActualDuration > 0 {
		p.elapsed = rr.ActualDuration
	}
	total := 0
	for _, w := range workers {
		total += len(w.samples)
	}
	p.samples = make([]time.Duration, 0, total)
	for _, w := range workers {
		p.requests += w.ok + w.errors
		p.ok += w.ok
		p.errors += w.errors
		for k, v := range w.codes {
			p.codes[k] += v
		}
		if p.firstErr == "" {
			p.firstErr = w.firstErr
		}
		p.samples = append(p.samples, w.samples...)
		p.truncated = p.truncated || w.truncated
	}
	return p, nil
}

// prime sends one request on every connection in parallel and fails if any
// does not succeed: a scenario whose path does not work at all is reported
// with the reason instead of as a run full of errors.
func prime(ctx context.Context, workers []*worker) error {
	errs := make([]error, len(workers))
	var wg sync.WaitGroup
	for i, w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if ok, code := w.fetch(ctx); !ok {
				errs[i] = fmt.Errorf("connection %d: first request failed: %s", i, code)
			}
		}()
	}
	wg.Wait()
	return errors.Join(errs...)
}

// worker is one connection: a fortio client plus what it measured. The
// periodic runner calls Run from one goroutine per worker, so no locking.
type worker struct {
	fetch     func(context.Context) (ok bool, code string)
	close     func()
	budget    *atomic.Int64
	samples   []time.Duration
	codes     map[string]int64
	ok        int64
	errors    int64
	firstErr  string
	truncated bool
}

func (w *worker) Run(ctx context.Context, _ periodic.ThreadID) (bool, string) {
	start := time.Now()
	ok, code := w.fetch(ctx)
	lat := time.Since(start)
	w.codes[code]++
	if !ok {
		w.errors++
		if w.firstErr == "" {
			w.firstErr = code
		}
		return false, code
	}
	w.ok++
	if w.budget != nil {
		if w.budget.Add(-1) >= 0 {
			w.samples = append(w.samples, lat)
		} else {
			w.truncated = true
		}
	}
	return true, code
}

func newWorker(s Spec, payload []byte, budget *atomic.Int64) (*worker, error) {
	w := &worker{budget: budget, codes: map[string]int64{}}
	switch s.Proto {
	case HTTP, HTTPClose:
		o := &fhttp.HTTPOptions{
			Payload:          payload,
			HTTPReqTimeOut:   s.RequestTimeout,
			ContentType:      "application/octet-stream",
			DisableKeepAlive: s.Proto == HTTPClose,
		}
		o.InitHeaders()
		o.Init("http://" + s.Addr + "/echo")
		c, err := fhttp.NewClient(o)
		if err != nil {
			return nil, err
		}
		want := int64(len(payload))
		w.close = c.Close
		w.fetch = func(ctx context.Context) (bool, string) {
			code, size, header := c.StreamFetch(ctx)
			if code < 200 || code > 299 {
				return false, strconv.Itoa(code)
			}
			// The fast client reports header+body; the echo must return the body intact.
			if body := size - int64(header); body != want {
				return false, fmt.Sprintf("%d-body-%dB-want-%dB", code, body, want)
			}
			return true, strconv.Itoa(code)
		}
	case TCP:
		c, err := tcprunner.NewTCPClient(&tcprunner.TCPOptions{
			Destination: s.Addr,
			Payload:     payload,
			ReqTimeout:  s.RequestTimeout,
		})
		if err != nil {
			return nil, err
		}
		w.close = func() { c.Close() }
		w.fetch = func(context.Context) (bool, string) {
			// TCPClient.Fetch compares the echo with what it sent.
			if _, err := c.Fetch(); err != nil {
				return false, "tcp: " + err.Error()
			}
			return true, tcprunner.TCPStatusOK
		}
	default:
		return nil, fmt.Errorf("proto %q", s.Proto)
	}
	return w, nil
}
