package bench

import (
	"fmt"
	"slices"

	"github.com/kmesh-go/kmesh/bench/load"
	"github.com/kmesh-go/kmesh/bench/report"
)

// Sweep describes which points to measure.
type Sweep struct {
	Protos   []load.Proto
	Conns    []int
	Rates    []float64 // 0 = maximum rate
	Payloads []int
	// Headline is Istio's published configuration (HTTP/1.1, 16 connections,
	// 1000 req/s, 1 KiB); targets are judged there.
	Headline report.Point
	// Matrix measures the full cross product; otherwise a "star" around the
	// headline: every connection count at the headline payload, and every
	// payload at the headline connection count, for each protocol and rate.
	Matrix bool
	// Extra points measured after the sweep (by the scenarios that carry
	// their protocol): the telemetry overhead point.
	Extra []report.Point
}

// FullSweep is `make bench`: 24 points (star) or 48 (matrix).
func FullSweep() Sweep {
	return Sweep{
		Protos:   []load.Proto{load.HTTP, load.TCP},
		Conns:    []int{1, 16, 64, 256},
		Rates:    []float64{1000, 0},
		Payloads: []int{64, 1024, 16384},
		Headline: Headline,
		Extra:    []report.Point{report.TelemetryPoint},
	}
}

// Headline is where the targets are judged.
var Headline = report.Point{Proto: load.HTTP, Conns: 16, Rate: 1000, Payload: 1024}

// SmokePoints is `make bench-smoke`: the headline for HTTP and maximum rate
// for TCP echo, so both protocols, both rate modes and every scenario run.
func SmokePoints() []report.Point {
	return []report.Point{Headline, {Proto: load.TCP, Conns: 16, Rate: 0, Payload: 1024}, report.TelemetryPoint}
}

// Points expands the sweep in run order (protocol, rate, connections, payload).
func (s Sweep) Points() ([]report.Point, error) {
	if len(s.Protos) == 0 || len(s.Conns) == 0 || len(s.Rates) == 0 || len(s.Payloads) == 0 {
		return nil, fmt.Errorf("sweep: protocols, connections, rates and payloads must each list at least one value")
	}
	var pts []report.Point
	add := func(p report.Point) {
		if !slices.Contains(pts, p) {
			pts = append(pts, p)
		}
	}
	hc, hp := s.Headline.Conns, s.Headline.Payload
	if !slices.Contains(s.Conns, hc) {
		hc = s.Conns[0]
	}
	if !slices.Contains(s.Payloads, hp) {
		hp = s.Payloads[0]
	}
	for _, proto := range s.Protos {
		if proto != load.HTTP && proto != load.TCP && proto != load.HTTPClose {
			return nil, fmt.Errorf("sweep: protocol %q: want http, tcp or http-close", proto)
		}
		for _, rate := range s.Rates {
			for _, c := range s.Conns {
				if s.Matrix {
					for _, pl := range s.Payloads {
						add(report.Point{Proto: proto, Conns: c, Rate: rate, Payload: pl})
					}
					continue
				}
				add(report.Point{Proto: proto, Conns: c, Rate: rate, Payload: hp})
			}
			if !s.Matrix {
				for _, pl := range s.Payloads {
					add(report.Point{Proto: proto, Conns: hc, Rate: rate, Payload: pl})
				}
			}
		}
	}
	for _, p := range s.Extra {
		add(p)
	}
	return pts, nil
}
