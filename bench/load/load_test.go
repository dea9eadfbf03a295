package load

import (
	"context"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

func TestPercentileNearestRank(t *testing.T) {
	var s []time.Duration
	for i := 1; i <= 1000; i++ {
		s = append(s, time.Duration(i)*time.Microsecond)
	}
	for _, c := range []struct {
		p    float64
		want time.Duration
	}{
		{50, 500 * time.Microsecond},
		{90, 900 * time.Microsecond},
		{99, 990 * time.Microsecond},
		{99.9, 999 * time.Microsecond},
		{100, 1000 * time.Microsecond},
		{0, 1 * time.Microsecond},
		{0.01, 1 * time.Microsecond},
	} {
		if got := Percentile(s, c.p); got != c.want {
			t.Errorf("p%v = %v, want %v", c.p, got, c.want)
		}
	}
	if got := Percentile(nil, 50); got != 0 {
		t.Errorf("p50 of nothing = %v", got)
	}
	one := []time.Duration{7}
	if Percentile(one, 50) != 7 || Percentile(one, 99.9) != 7 {
		t.Error("single sample must be every percentile")
	}
}

func TestSummarize(t *testing.T) {
	s := []time.Duration{40 * time.Microsecond, 10 * time.Microsecond, 30 * time.Microsecond, 20 * time.Microsecond}
	l := Summarize(s)
	want := Latency{P50: 20, P90: 40, P99: 40, P999: 40, Min: 10, Max: 40, Mean: 25}
	if l != want {
		t.Fatalf("Summarize = %+v, want %+v", l, want)
	}
	if (Summarize(nil) != Latency{}) {
		t.Fatal("Summarize(nil) not zero")
	}
}

func validSpec() Spec {
	return Spec{Proto: HTTP, Addr: "127.0.0.1:1", Conns: 1, Payload: 64, Duration: time.Second,
		RequestTimeout: time.Second, MaxSamples: 10}
}

func TestSpecValidate(t *testing.T) {
	if err := validSpec().Validate(); err != nil {
		t.Fatalf("valid spec rejected: %v", err)
	}
	bad := map[string]func(*Spec){
		"proto":    func(s *Spec) { s.Proto = "udp" },
		"addr":     func(s *Spec) { s.Addr = "" },
		"conns0":   func(s *Spec) { s.Conns = 0 },
		"connsBig": func(s *Spec) { s.Conns = MaxConns + 1 },
		"rate":     func(s *Spec) { s.Rate = -1 },
		"payload":  func(s *Spec) { s.Payload = 0 },
		"duration": func(s *Spec) { s.Duration = 0 },
		"forever":  func(s *Spec) { s.Duration = MaxDuration + 1 },
		"warmup":   func(s *Spec) { s.Warmup = -1 },
		"timeout":  func(s *Spec) { s.RequestTimeout = 0 },
		"samples":  func(s *Spec) { s.MaxSamples = 0 },
	}
	for name, mutate := range bad {
		s := validSpec()
		mutate(&s)
		if err := s.Validate(); err == nil {
			t.Errorf("%s: invalid spec accepted: %+v", name, s)
		}
	}
}

func TestPayloadDeterministic(t *testing.T) {
	p := Payload(30)
	if string(p) != "abcdefghijklmnopqrstuvwxyzabcd" {
		t.Fatalf("Payload(30) = %q", p)
	}
}

// The real client against the real fortio echo servers on loopback: a short,
// paced run must complete with every request answered and counted.
func TestRunAgainstEchoServers(t *testing.T) {
	httpAddr, tcpAddr, err := Serve("127.0.0.1:0", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		proto Proto
		addr  string
	}{{HTTP, httpAddr.String()}, {HTTPClose, httpAddr.String()}, {TCP, tcpAddr.String()}} {
		t.Run(string(c.proto), func(t *testing.T) {
			s := Spec{Proto: c.proto, Addr: c.addr, Conns: 2, Rate: 400, Payload: 1024,
				Warmup: 50 * time.Millisecond, Duration: 250 * time.Millisecond,
				RequestTimeout: 2 * time.Second, MaxSamples: 100000}
			res, err := Run(context.Background(), s)
			if err != nil {
				t.Fatal(err)
			}
			if res.Errors != 0 || res.OK == 0 || res.Requests != res.OK {
				t.Fatalf("ok=%d errors=%d requests=%d codes=%v first=%q", res.OK, res.Errors, res.Requests, res.Codes, res.FirstError)
			}
			// 400 req/s for 250 ms is 100 requests. Pacing must never go
			// faster than asked (edges allowed for); a loaded machine may fall
			// behind, which is not what this test is about, so the lower bound
			// only says the run was not stalled.
			if res.OK < 20 || res.OK > 120 {
				t.Errorf("paced run did %d requests, want at most about 100 (and not stalled)", res.OK)
			}
			if res.WarmupRequests == 0 {
				t.Error("warm-up sent nothing")
			}
			l := res.Latency
			if !(l.Min > 0 && l.Min <= l.P50 && l.P50 <= l.P90 && l.P90 <= l.P99 && l.P99 <= l.P999 && l.P999 <= l.Max) {
				t.Errorf("latency summary not ordered: %+v", l)
			}
			if res.Conns != 2 || res.Throughput <= 0 || res.Elapsed <= 0 {
				t.Errorf("conns=%d throughput=%v elapsed=%v", res.Conns, res.Throughput, res.Elapsed)
			}
		})
	}
}

// A server that answers the first requests and then starts failing: the run
// completes and every failure is counted with its code, never dropped.
func TestRunCountsHTTPErrors(t *testing.T) {
	var n atomic.Int64
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		if n.Add(1)%2 == 0 {
			http.Error(w, "flaky", http.StatusServiceUnavailable)
			return
		}
		w.Write(body)
	}))
	defer srv.Close()
	s := Spec{Proto: HTTP, Addr: strings.TrimPrefix(srv.URL, "http://"), Conns: 1, Rate: 200, Payload: 64,
		Duration: 200 * time.Millisecond, RequestTimeout: 2 * time.Second, MaxSamples: 1000}
	res, err := Run(context.Background(), s)
	if err != nil {
		t.Fatal(err)
	}
	if res.Errors == 0 || res.Codes["503"] != res.Errors || res.OK == 0 || res.FirstError != "503" {
		t.Fatalf("errors=%d ok=%d codes=%v first=%q", res.Errors, res.OK, res.Codes, res.FirstError)
	}
}

// A TCP "echo" that corrupts the reply after a while must be caught by the
// echo comparison.
func TestRunCountsTCPMismatch(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				buf := make([]byte, 64)
				for i := 0; i < 1000; i++ {
					c.SetDeadline(time.Now().Add(5 * time.Second))
					if _, err := io.ReadFull(c, buf); err != nil {
						return
					}
					if i >= 3 {
						buf[0] ^= 0xff
					}
					if _, err := c.Write(buf); err != nil {
						return
					}
				}
			}()
		}
	}()
	s := Spec{Proto: TCP, Addr: ln.Addr().String(), Conns: 1, Rate: 200, Payload: 64,
		Duration: 100 * time.Millisecond, RequestTimeout: 2 * time.Second, MaxSamples: 1000}
	res, err := Run(context.Background(), s)
	if err != nil {
		t.Fatal(err)
	}
	if res.Errors == 0 || !strings.Contains(res.FirstError, "echoing") {
		t.Fatalf("errors=%d first=%q codes=%v", res.Errors, res.FirstError, res.Codes)
	}
}

func TestRunFailsWhenNothingListens(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	for _, p := range Protos {
		s := Spec{Proto: p, Addr: addr, Conns: 2, Payload: 64, Duration: 100 * time.Millisecond,
			RequestTimeout: time.Second, MaxSamples: 10}
		if _, err := Run(context.Background(), s); err == nil || !strings.Contains(err.Error(), "first request failed") {
			t.Errorf("%s: Run against a closed port: err = %v", p, err)
		}
	}
}

func TestRunTruncatesAtSampleBudget(t *testing.T) {
	httpAddr, _, err := Serve("127.0.0.1:0", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := Spec{Proto: HTTP, Addr: httpAddr.String(), Conns: 1, Rate: 500, Payload: 64,
		Duration: 100 * time.Millisecond, RequestTimeout: time.Second, MaxSamples: 5}
	res, err := Run(context.Background(), s)
	if err != nil {
		t.Fatal(err)
	}
	if !res.Truncated || res.OK <= 5 {
		t.Fatalf("truncated=%v ok=%d", res.Truncated, res.OK)
	}
}

func TestProbeReportsPeer(t *testing.T) {
	httpAddr, _, err := Serve("127.0.0.1:0", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	peer, err := Probe(context.Background(), httpAddr.String(), 2*time.Second)
	if err != nil || peer != "127.0.0.1" {
		t.Fatalf("Probe = %q, %v", peer, err)
	}
	srv := httptest.NewServer(http.NotFoundHandler())
	defer srv.Close()
	if _, err := Probe(context.Background(), strings.TrimPrefix(srv.URL, "http://"), 2*time.Second); err == nil {
		t.Fatal("Probe accepted a 404")
	}
}

// http-close opens a new connection for every request; http reuses them.
func TestHTTPCloseOpensAConnectionPerRequest(t *testing.T) {
	var conns atomic.Int64
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		w.Write(body)
	}))
	srv.Config.ConnState = func(_ net.Conn, st http.ConnState) {
		if st == http.StateNew {
			conns.Add(1)
		}
	}
	srv.Start()
	defer srv.Close()
	for _, c := range []struct {
		proto  Proto
		perReq bool
	}{{HTTP, false}, {HTTPClose, true}} {
		conns.Store(0)
		s := Spec{Proto: c.proto, Addr: strings.TrimPrefix(srv.URL, "http://"), Conns: 2, Rate: 400, Payload: 64,
			Duration: 200 * time.Millisecond, RequestTimeout: 2 * time.Second, MaxSamples: 100000}
		res, err := Run(context.Background(), s)
		if err != nil {
			t.Fatal(err)
		}
		n := conns.Load()
		// Priming sends one request per connection before the measured run.
		reqs := res.Requests + res.WarmupRequests + int64(s.Conns)
		t.Logf("%s: %d requests, %d connections", c.proto, reqs, n)
		if c.perReq && n < reqs {
			t.Errorf("%s: %d connections for %d requests, want one per request", c.proto, n, reqs)
		}
		if !c.perReq && n > int64(s.Conns)+2 {
			t.Errorf("%s: %d connections for %d workers, want them reused", c.proto, n, s.Conns)
		}
	}
}
