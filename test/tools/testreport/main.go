// Command testreport reads `go test -json` on stdin and prints a short report:
// the full output of failed tests, skipped tests with their reasons, and a
// per-package and per-tier summary. Host-tier tests are recognised by the
// marker testutil.Privileged logs. It exits non-zero if anything failed, a
// package did not build, or (with CI=true) any test was skipped.
package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"strings"
)

const tierMarker = "kmesh-tier: host"

type event struct {
	Action  string
	Package string
	Test    string
	Output  string
	Elapsed float64
}

type testState struct {
	out     strings.Builder
	host    bool
	result  string
	elapsed float64
}

type pkgState struct {
	tests   map[string]*testState
	order   []string
	out     strings.Builder
	result  string
	elapsed float64
}

func main() {
	ci := os.Getenv("CI") == "true"
	code := run(os.Stdin, os.Stdout, ci)
	os.Exit(code)
}

func run(r io.Reader, w io.Writer, ci bool) int {
	pkgs := map[string]*pkgState{}
	var pkgOrder []string
	get := func(name string) *pkgState {
		p := pkgs[name]
		if p == nil {
			p = &pkgState{tests: map[string]*testState{}}
			pkgs[name] = p
			pkgOrder = append(pkgOrder, name)
		}
		return p
	}
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 1<<20), 16<<20)
	for sc.Scan() {
		line := sc.Bytes()
		var ev event
		if err := json.Unmarshal(line, &ev); err != nil || ev.Action == "" {
			// Not test2json (e.g. a build error printed directly): pass it through.
			fmt.Fprintln(w, string(line))
			continue
		}
		if ev.Package == "" {
			continue
		}
		p := get(ev.Package)
		if ev.Test == "" {
			switch ev.Action {
			case "output", "build-output":
				p.out.WriteString(ev.Output)
			case "pass", "fail", "skip", "build-fail":
				p.result, p.elapsed = ev.Action, ev.Elapsed
			}
			continue
		}
		t := p.tests[ev.Test]
		if t == nil {
			t = &testState{}
			p.tests[ev.Test] = t
			p.order = append(p.order, ev.Test)
		}
		switch ev.Action {
		case "output":
			t.out.WriteString(ev.Output)
			if strings.Contains(ev.Output, tierMarker) {
				t.host = true // subtests inherit the tier from their parent below
			}
		case "pass", "fail", "skip":
			t.result, t.elapsed = ev.Action, ev.Elapsed
		}
	}

	var unitPass, hostPass, skips, fails, buildFails int
	// Each package is reported the way `go test -v` closes it: one result line
	// per test (subtests only when they did not pass), the output of skipped
	// and failed tests, then go test's own package line. Readers of go test
	// output count the tests from these lines.
	fmt.Fprintln(w)
	for _, name := range pkgOrder {
		p := pkgs[name]
		var up, hp, sk, fl int
		for _, tn := range p.order {
			t := p.tests[tn]
			top := !strings.Contains(tn, "/")
			host := t.host || p.tests[strings.SplitN(tn, "/", 2)[0]].host
			switch t.result {
			case "pass":
				if top {
					if host {
						hp++
					} else {
						up++
					}
				}
			case "skip":
				sk++
			case "fail":
				fl++
			}
			if t.result != "" && (top || t.result != "pass") {
				fmt.Fprint(w, resultLine(tn, t))
			}
		}
		status := p.result
		if status == "" {
			status = "fail"
		}
		if (status == "fail" || status == "build-fail") && fl == 0 {
			buildFails++
			fmt.Fprintf(w, "FAIL %s (package did not build or crashed)\n%s", name, indent(p.out.String()))
		}
		if len(p.order) == 0 && status != "fail" && status != "build-fail" {
			continue // no test files
		}
		word := "ok  "
		if status != "pass" {
			word = "FAIL"
		}
		fmt.Fprintf(w, "%s\t%s\t%.3fs\n", word, name, p.elapsed)
		unitPass += up
		hostPass += hp
		skips += sk
		fails += fl
	}
	fmt.Fprintf(w, "\ntiers: unit %d passed; host %d passed; %d skipped; %d failed; %d packages failed to build\n",
		unitPass, hostPass, skips, fails, buildFails)
	switch {
	case fails > 0 || buildFails > 0:
		return 1
	case ci && skips > 0:
		fmt.Fprintln(w, "CI=true: skipped tests count as failures")
		return 1
	}
	return 0
}

// resultLine is go test -v's line for one finished test, indented by subtest
// depth, followed by the test's output when it was skipped or failed.
func resultLine(name string, t *testState) string {
	depth := strings.Count(name, "/")
	pad := strings.Repeat("    ", depth)
	line := fmt.Sprintf("%s--- %s: %s (%.2fs)\n", pad, strings.ToUpper(t.result), name, t.elapsed)
	if t.result == "pass" {
		return line
	}
	return line + indent(t.out.String())
}

func indent(s string) string {
	if s == "" {
		return ""
	}
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	return "    " + strings.Join(lines, "\n    ") + "\n"
}
