package main

import (
	"os"
	"os/exec"
	"regexp"
	"strings"
	"testing"
)

// kmeshd is built with -tags grpcnotrace (Makefile GO_TAGS, the tests'
// builds): gRPC then leaves out its request tracing, whose
// golang.org/x/net/trace pulls in html/template and registers debug pages.
// Every package linked costs the daemon's RSS the pages its initialisers
// touch (docs/performance.md); this fails when a dependency brings them back
// or the Makefile stops passing the tag.
func TestDaemonLeavesOutRequestTracing(t *testing.T) {
	out, err := exec.Command("go", "list", "-deps", "-tags", "grpcnotrace", ".").CombinedOutput()
	if err != nil {
		t.Fatalf("go list: %v\n%s", err, out)
	}
	for _, pkg := range strings.Fields(string(out)) {
		switch pkg {
		case "golang.org/x/net/trace", "html/template", "text/template":
			t.Errorf("kmeshd links %s", pkg)
		}
	}
	mk, err := os.ReadFile("../../Makefile")
	if err != nil {
		t.Fatal(err)
	}
	if !regexp.MustCompile(`(?m)^GO_TAGS\s*:=.*\bgrpcnotrace\b`).Match(mk) ||
		!strings.Contains(string(mk), "build -trimpath -tags $(GO_TAGS)") {
		t.Error("the Makefile does not build the daemons with GO_TAGS containing grpcnotrace")
	}
}
