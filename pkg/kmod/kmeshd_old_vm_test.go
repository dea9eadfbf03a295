//go:build vmguest

package kmod

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestKmeshdRefusesOnOldKernel runs the real kmeshd binary (suite kmodold:
// gobin ./daemon/kmeshd) in the Debian 6.1 guest: --mode=kernel-native exits
// non-zero with the reason before it touches the dataplane, and never falls
// back to dual-engine.
func TestKmeshdRefusesOnOldKernel(t *testing.T) {
	path := modulePath(t)
	bin := "/usr/local/bin/kmeshd"
	if _, err := os.Stat(bin); err != nil {
		t.Fatalf("%s: %v (the kmodold suite builds it)", bin, err)
	}
	dir := t.TempDir()
	model := filepath.Join(dir, "model.yaml")
	if err := os.WriteFile(model, []byte("{}\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, bin, "--mode=kernel-native", "--kmod-path", path, "--model-file", model,
		"--pin-dir", "/sys/fs/bpf/kmeshd-old-kernel", "--state-dir", filepath.Join(dir, "state"),
		"--admin-address", "off", "--metrics-address", "off").CombinedOutput()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() == 0 {
		t.Fatalf("kmeshd --mode=kernel-native on this kernel: %v, want a non-zero exit\n%s", err, out)
	}
	for _, want := range []string{"kernel-native mode unavailable", "too old", "6.12", "--mode=dual-engine"} {
		if !strings.Contains(string(out), want) {
			t.Errorf("kmeshd's message lacks %q:\n%s", want, out)
		}
	}
	if Loaded() {
		t.Fatal("kmeshd loaded kmesh.ko on a kernel it refused")
	}
	if _, err := os.Stat("/sys/fs/bpf/kmeshd-old-kernel"); err == nil {
		t.Fatal("kmeshd created its pin directory before refusing")
	}
	t.Logf("exit %d: %s", ee.ExitCode(), strings.TrimSpace(string(out)))
}
