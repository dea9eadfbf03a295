package logging

import (
	"bytes"
	"log/slog"
	"strings"
	"testing"
)

func TestSetLevelChangesOnlyThatLogger(t *testing.T) {
	var buf bytes.Buffer
	r := New(Options{Output: &buf, Level: slog.LevelInfo})
	xds, dp := r.Logger("xds"), r.Logger("dataplane")
	xds.Debug("hidden")
	if err := r.SetLevel("xds", "DEBUG"); err != nil {
		t.Fatal(err)
	}
	xds.Debug("shown", "k", 1)
	dp.Debug("still hidden")
	out := buf.String()
	if strings.Contains(out, "hidden") || !strings.Contains(out, "msg=shown") || !strings.Contains(out, "scope=xds") {
		t.Fatalf("unexpected output:\n%s", out)
	}
	if got := r.Levels(); got["xds"] != "debug" || got["dataplane"] != "info" {
		t.Fatalf("levels = %v", got)
	}
}

func TestSetLevelErrorsNameTheProblem(t *testing.T) {
	r := New(Options{})
	r.Logger("xds")
	if err := r.SetLevel("nope", "info"); err == nil || !strings.Contains(err.Error(), "known: xds") {
		t.Fatalf("unknown logger: %v", err)
	}
	if err := r.SetLevel("xds", "loud"); err == nil || !strings.Contains(err.Error(), `"loud"`) {
		t.Fatalf("bad level: %v", err)
	}
	if err := r.SetLevel("*", "warning"); err != nil || r.Levels()["xds"] != "warn" {
		t.Fatalf("set all: %v %v", err, r.Levels())
	}
}
