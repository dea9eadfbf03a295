package main

import (
	"strings"
	"testing"
)

func events(lines ...string) string { return strings.Join(lines, "\n") + "\n" }

func TestReportCountsTiersAndFailures(t *testing.T) {
	in := events(
		`{"Action":"run","Package":"p","Test":"TestUnit"}`,
		`{"Action":"pass","Package":"p","Test":"TestUnit","Elapsed":0.25}`,
		`{"Action":"run","Package":"p","Test":"TestHost"}`,
		`{"Action":"output","Package":"p","Test":"TestHost","Output":"    x_test.go:1: kmesh-tier: host\n"}`,
		`{"Action":"run","Package":"p","Test":"TestHost/sub"}`,
		`{"Action":"pass","Package":"p","Test":"TestHost/sub"}`,
		`{"Action":"pass","Package":"p","Test":"TestHost"}`,
		`{"Action":"pass","Package":"p","Elapsed":0.5}`,
	)
	var out strings.Builder
	if code := run(strings.NewReader(in), &out, false); code != 0 {
		t.Fatalf("exit %d, want 0:\n%s", code, out.String())
	}
	if !strings.Contains(out.String(), "tiers: unit 1 passed; host 1 passed; 0 skipped; 0 failed") {
		t.Fatalf("summary wrong:\n%s", out.String())
	}
	// go test -v's closing shape, so CI tools that read go test output count
	// the tests: a result line per top-level test, then the package line.
	for _, want := range []string{"--- PASS: TestUnit (0.25s)\n", "--- PASS: TestHost (0.00s)\n", "ok  \tp\t0.500s\n"} {
		if !strings.Contains(out.String(), want) {
			t.Fatalf("no %q line:\n%s", want, out.String())
		}
	}
	if strings.Contains(out.String(), "TestHost/sub") {
		t.Fatalf("passing subtest listed:\n%s", out.String())
	}
}

func TestReportFailsOnFailureBuildErrorAndCISkip(t *testing.T) {
	cases := map[string]struct {
		in   string
		ci   bool
		want int
		text string
	}{
		"failed test": {events(
			`{"Action":"output","Package":"p","Test":"TestX","Output":"boom\n"}`,
			`{"Action":"fail","Package":"p","Test":"TestX"}`,
			`{"Action":"fail","Package":"p"}`), false, 1, "boom"},
		"build failure": {events(
			`{"Action":"output","Package":"q","Output":"q.go:1: syntax error\n"}`,
			`{"Action":"fail","Package":"q"}`), false, 1, "syntax error"},
		"skip outside CI": {events(
			`{"Action":"output","Package":"p","Test":"TestS","Output":"needs root\n"}`,
			`{"Action":"skip","Package":"p","Test":"TestS"}`,
			`{"Action":"pass","Package":"p"}`), false, 0, "needs root"},
		"skip in CI": {events(
			`{"Action":"skip","Package":"p","Test":"TestS"}`,
			`{"Action":"pass","Package":"p"}`), true, 1, "CI=true"},
	}
	for name, c := range cases {
		t.Run(name, func(t *testing.T) {
			var out strings.Builder
			if code := run(strings.NewReader(c.in), &out, c.ci); code != c.want {
				t.Fatalf("exit %d, want %d:\n%s", code, c.want, out.String())
			}
			if !strings.Contains(out.String(), c.text) {
				t.Fatalf("output lacks %q:\n%s", c.text, out.String())
			}
		})
	}
}
