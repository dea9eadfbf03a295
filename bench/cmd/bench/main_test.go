package main

import (
	"testing"

	"github.com/kmesh-go/kmesh/bench/load"
	"github.com/kmesh-go/kmesh/bench/report"
)

func TestShellJoin(t *testing.T) {
	got := shellJoin([]string{"-out", "docs/bench", "-note", "shared VM: it's busy", ""})
	want := `-out docs/bench -note 'shared VM: it'\''s busy' ''`
	if got != want {
		t.Errorf("shellJoin = %s, want %s", got, want)
	}
}

func TestParseSweep(t *testing.T) {
	sw, err := parseSweep("http,tcp", "1, 16", "1000,max", "64,1024")
	if err != nil {
		t.Fatal(err)
	}
	if len(sw.Protos) != 2 || sw.Protos[1] != load.TCP || len(sw.Conns) != 2 || sw.Conns[1] != 16 ||
		len(sw.Rates) != 2 || sw.Rates[0] != 1000 || sw.Rates[1] != 0 || len(sw.Payloads) != 2 {
		t.Fatalf("sweep %+v", sw)
	}
	for _, bad := range [][4]string{
		{"http", "x", "1000", "64"}, {"http", "1", "-5", "64"}, {"http", "1", "fast", "64"}, {"http", "1", "1000", "1k"},
	} {
		if _, err := parseSweep(bad[0], bad[1], bad[2], bad[3]); err == nil {
			t.Errorf("accepted %v", bad)
		}
	}
}

func TestSelectScenarios(t *testing.T) {
	all, err := selectScenarios("all")
	if err != nil || len(all) < 8 {
		t.Fatalf("all: %d, %v", len(all), err)
	}
	two, err := selectScenarios("direct, waypoint")
	if err != nil || len(two) != 2 || two[1].Info().Name != "waypoint" {
		t.Fatalf("two: %v", err)
	}
	if _, err := selectScenarios("direct,nope"); err == nil {
		t.Error("unknown scenario accepted")
	}
}

func TestParsePoint(t *testing.T) {
	p, err := parsePoint("http,4,100,1024")
	if err != nil || p != (report.Point{Proto: load.HTTP, Conns: 4, Rate: 100, Payload: 1024}) {
		t.Fatalf("parsePoint: %+v %v", p, err)
	}
	if p, err := parsePoint("http-close,16,max,64"); err != nil || p.Rate != 0 || p.Proto != load.HTTPClose {
		t.Fatalf("parsePoint max: %+v %v", p, err)
	}
	for _, bad := range []string{"http,4,100", "http,x,100,1", "http,4,-1,1"} {
		if _, err := parsePoint(bad); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}
