//go:build vmguest

package kmod

import (
	"errors"
	"os"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

func dialModule(t *testing.T) *Conn {
	t.Helper()
	c, err := Dial()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// TestGenlHandshake: the version and feature handshake, and the module-side
// ABI check a client may ask for.
func TestGenlHandshake(t *testing.T) {
	loadModule(t)
	c := dialModule(t)
	in, err := c.Hello()
	if err != nil {
		t.Fatal(err)
	}
	if in.ABIVersion != ABIVersion || in.Features&RequiredFeatures != RequiredFeatures || in.ModuleVersion == "" ||
		in.MaxHead != HTTPMaxHead || in.MaxHeaders != HTTPMaxHeaders || in.MaxDeferred == 0 || in.SafeMode {
		t.Fatalf("handshake: %+v", in)
	}
	if _, err := c.hello(ABIVersion); err != nil {
		t.Fatalf("hello with the right ABI: %v", err)
	}
	_, err = c.hello(ABIVersion + 1)
	if !errors.Is(err, unix.EPROTO) || !strings.Contains(err.Error(), "client needs") {
		t.Fatalf("hello with ABI %d: %v, want EPROTO naming both versions", ABIVersion+1, err)
	}
	t.Logf("kmesh.ko %s abi %d features %s limits head=%d headers=%d deferred=%d", in.ModuleVersion, in.ABIVersion,
		in.Features, in.MaxHead, in.MaxHeaders, in.MaxDeferred)
}

// TestEnsureLoadsAndFindsModule: kmod.Ensure as the daemon runs it on 6.12:
// finds nothing, loads the module from the path, completes the handshake.
func TestEnsureLoadsAndFindsModule(t *testing.T) {
	path := modulePath(t)
	if Loaded() {
		t.Fatal("module loaded before the test")
	}
	if err := Check(); !errors.Is(err, ErrModuleAbsent) {
		t.Fatalf("Check without the module: %v, want ErrModuleAbsent", err)
	}
	c, err := Ensure(Options{ModulePath: path, Params: "max_deferred=1000"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		c.Close()
		if err := Unload(5 * time.Second); err != nil {
			t.Error(err)
		}
	})
	in, err := c.Hello()
	if err != nil || in.MaxDeferred != 1000 {
		t.Fatalf("after Ensure: %+v %v (want max_deferred=1000 from the parameters)", in, err)
	}
	// Already loaded: Ensure just connects.
	c2, err := Ensure(Options{ModulePath: path})
	if err != nil {
		t.Fatal(err)
	}
	c2.Close()
	if err := Check(); err != nil {
		t.Fatalf("Check with the module loaded: %v", err)
	}
}

// TestGenlCounters: parse counters follow real kfunc calls.
func TestGenlCounters(t *testing.T) {
	loadModule(t)
	c := dialModule(t)
	p := newKernelParser(t)
	before, err := c.Stats()
	if err != nil {
		t.Fatal(err)
	}
	p.run(t, []byte("GET / HTTP/1.1\r\nHost: a\r\n\r\n"), opInfo, 0, 0, "")
	p.run(t, []byte("GET / HTTP/1.1\r\nHost: a\r\n\r\n"), opInfo, 0, 0, "")
	p.run(t, []byte("\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03"), opInfo, 0, 0, "")
	after, err := c.Stats()
	if err != nil {
		t.Fatal(err)
	}
	if after.Parsed-before.Parsed != 3 || after.ParseErrors-before.ParseErrors != 1 {
		t.Fatalf("counters: before %+v after %+v; want 3 parsed, 1 error", before, after)
	}
}

// TestGenlSafeModeSwitch: the switch and its state in the handshake and stats
// (its effect on sockets is in TestDeferredConnect/safe_mode).
func TestGenlSafeModeSwitch(t *testing.T) {
	loadModule(t)
	c := dialModule(t)
	if err := c.SetSafeMode(true); err != nil {
		t.Fatal(err)
	}
	in, _ := c.Hello()
	st, _ := c.Stats()
	if !in.SafeMode || !st.SafeMode {
		t.Fatalf("safe mode not reported: hello %+v stats %+v", in, st)
	}
	if err := c.SetSafeMode(false); err != nil {
		t.Fatal(err)
	}
	if in, _ := c.Hello(); in.SafeMode {
		t.Fatal("safe mode still on")
	}
}

// TestInsmodRmmodLoop loads and unloads the module 50 times, with a handshake
// each time; the harness fails the run on any oops, WARN or leak in dmesg.
func TestInsmodRmmodLoop(t *testing.T) {
	path := modulePath(t)
	const rounds = 50
	start := time.Now()
	for i := 0; i < rounds; i++ {
		if err := Load(path, ""); err != nil {
			t.Fatalf("round %d: %v", i, err)
		}
		c, err := Dial()
		if err != nil {
			t.Fatalf("round %d: %v", i, err)
		}
		if in, err := c.Hello(); err != nil || in.ABIVersion != ABIVersion {
			t.Fatalf("round %d: handshake %+v %v", i, in, err)
		}
		c.Close()
		if err := Unload(5 * time.Second); err != nil {
			t.Fatalf("round %d: %v", i, err)
		}
		if Loaded() {
			t.Fatalf("round %d: still loaded", i)
		}
		if _, err := os.Stat("/sys/kernel/btf/" + ModuleName); err == nil {
			t.Fatalf("round %d: module BTF still present after unload", i)
		}
	}
	t.Logf("%d insmod/rmmod rounds in %.1fs", rounds, time.Since(start).Seconds())
}
