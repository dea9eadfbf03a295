//go:build vmguest

package kmod

import (
	"testing"
	"time"
)

// TestOldKernelRefused runs in the Debian 6.1 guest only (suite kmodold in
// test/vm/suites.txt; the 6.12 suite skips it): kernel-native mode must be
// refused with a message that says why, before anything is loaded, and
// never fall back silently. kmeshd --mode=kernel-native exits non-zero with
// this error (kmod.Ensure).
func TestOldKernelRefused(t *testing.T) {
	path := modulePath(t)
	_, err := Ensure(Options{ModulePath: path})
	wantRefusal(t, err, ErrKernelTooOld, "too old", "6.12", kernelSymbol, "dual-engine")
	if Loaded() {
		t.Fatal("Ensure loaded the module on a kernel it refused")
	}
	if err := Check(); err == nil {
		t.Fatal("Check accepted this kernel")
	}
	// The refusal matters: a module built for 6.12 cannot run here anyway.
	if err := Load(path, ""); err == nil {
		Unload(5 * time.Second)
		t.Fatal("kmesh.ko built for 6.12 loaded on this kernel")
	} else {
		t.Logf("loading it anyway fails: %v", err)
	}
	t.Logf("refusal: %v", err)
}
