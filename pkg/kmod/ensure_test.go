package kmod

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/cilium/ebpf/btf"
)

// fakeRoot builds a /proc and /sys skeleton: modules says whether
// /proc/modules exists, funcs are the functions its vmlinux BTF declares
// (nil: no BTF file at all).
func fakeRoot(t *testing.T, modules bool, funcs []string) string {
	t.Helper()
	root := t.TempDir()
	if err := os.MkdirAll(filepath.Join(root, "proc"), 0o755); err != nil {
		t.Fatal(err)
	}
	if modules {
		if err := os.WriteFile(filepath.Join(root, "proc/modules"), nil, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if funcs != nil {
		b, err := btf.NewBuilder(nil, nil)
		if err != nil {
			t.Fatal(err)
		}
		proto := &btf.FuncProto{Return: &btf.Int{Name: "int", Size: 4, Encoding: btf.Signed}}
		for _, f := range funcs {
			if _, err := b.Add(&btf.Func{Name: f, Type: proto, Linkage: btf.GlobalFunc}); err != nil {
				t.Fatal(err)
			}
		}
		raw, err := b.Marshal(nil, nil)
		if err != nil {
			t.Fatal(err)
		}
		dir := filepath.Join(root, "sys/kernel/btf")
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, "vmlinux"), raw, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return root
}

func wantRefusal(t *testing.T, err error, kind error, words ...string) {
	t.Helper()
	var e *Error
	if !errors.As(err, &e) || !errors.Is(err, kind) {
		t.Fatalf("got %v, want an *Error of kind %q", err, kind)
	}
	for _, w := range words {
		if !strings.Contains(err.Error(), w) {
			t.Errorf("message %q does not mention %q", err.Error(), w)
		}
	}
}

// The kernel probes in the order the daemon meets them. Real kernels are
// covered in the VM tier (6.12 accepted, 6.1 refused as too old) and by
// TestCheckOnThisKernel.
func TestEnsureKernelProbes(t *testing.T) {
	_, err := Ensure(Options{root: fakeRoot(t, false, []string{kernelSymbol})})
	wantRefusal(t, err, ErrNoModuleSupport, "CONFIG_MODULES", "dual-engine")

	_, err = Ensure(Options{root: fakeRoot(t, true, nil)})
	wantRefusal(t, err, ErrNoKernelBTF, "/sys/kernel/btf/vmlinux", "dual-engine")

	_, err = Ensure(Options{root: fakeRoot(t, true, []string{"tcp_v4_connect"})})
	wantRefusal(t, err, ErrKernelTooOld, "too old", "6.12", kernelSymbol, "dual-engine")
}

// With a kernel that passes the probes and no kmesh family in reach, Ensure
// refuses for want of the module, or loads the given path. The genetlink
// lookup is real (this host has no kmesh family).
func TestEnsureModuleAbsent(t *testing.T) {
	root := fakeRoot(t, true, []string{kernelSymbol})
	if _, err := Dial(); !errors.Is(err, ErrFamilyNotFound) {
		t.Fatalf("this test needs a machine without kmesh.ko loaded; Dial: %v", err)
	}
	_, err := Ensure(Options{root: root})
	wantRefusal(t, err, ErrModuleAbsent, "--kmod-path", "dual-engine")

	_, err = Ensure(Options{root: root, ModulePath: filepath.Join(t.TempDir(), "kmesh.ko")})
	wantRefusal(t, err, ErrModuleAbsent, "no module file at")

	// A file that is not a module (or a kernel that cannot load one): a load
	// failure with the path in the message.
	bogus := filepath.Join(t.TempDir(), "kmesh.ko")
	if err := os.WriteFile(bogus, []byte("not an ELF module"), 0o644); err != nil {
		t.Fatal(err)
	}
	_, err = Ensure(Options{root: root, ModulePath: bogus})
	wantRefusal(t, err, ErrModuleLoad, bogus)
}

// TestCheckOnThisKernel runs the real probes on the running kernel. On the
// development and CI hosts (no CONFIG_MODULES) the answer is known; elsewhere
// it must at least be a refusal with a reason (the module is never loaded
// outside the VM tier).
func TestCheckOnThisKernel(t *testing.T) {
	err := Check()
	if err == nil {
		t.Fatal("Check succeeded on a machine where kmesh.ko is not loaded")
	}
	var e *Error
	if !errors.As(err, &e) || e.Detail == "" {
		t.Fatalf("Check: %v is not a refusal with a reason", err)
	}
	if _, statErr := os.Stat("/proc/modules"); statErr != nil {
		wantRefusal(t, err, ErrNoModuleSupport, "CONFIG_MODULES")
	}
	t.Logf("this kernel: %v", err)
}
