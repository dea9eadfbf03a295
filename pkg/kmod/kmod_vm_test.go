//go:build vmguest

package kmod

import (
	"fmt"
	"os"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"

	"github.com/kmesh-go/kmesh/pkg/bpf/objs"
	"github.com/kmesh-go/kmesh/pkg/testutil"
)

// Guest-only tests (VM tier, Debian 6.12): they need module loading, which the
// host kernel lacks. The VM harness passes the module as KMESH_KMOD_PATH.

// modulePath is the kmesh.ko the VM harness put into the guest.
func modulePath(t *testing.T) string {
	t.Helper()
	testutil.Privileged(t)
	path := os.Getenv("KMESH_KMOD_PATH")
	if path == "" {
		t.Fatal("KMESH_KMOD_PATH is not set (the VM harness sets it)")
	}
	return path
}

// loadModule loads the module for one test and unloads it at cleanup, which
// fails the test if the module cannot be unloaded.
func loadModule(t *testing.T) {
	t.Helper()
	path := modulePath(t)
	if err := Load(path, ""); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := Unload(5 * time.Second); err != nil {
			t.Errorf("unload: %v", err)
		}
		if Loaded() {
			t.Errorf("module still loaded after unload")
		}
	})
	if !Loaded() {
		t.Fatal("module not live after load")
	}
}

// TestKfuncFromSyscallProgram proves module BTF and kfunc registration: a
// syscall program run with BPF_PROG_RUN calls bpf_kmesh_abi_version.
func TestKfuncFromSyscallProgram(t *testing.T) {
	loadModule(t)
	var o objs.KmodAbiObjects
	if err := objs.LoadKmodAbiObjects(&o, nil); err != nil {
		t.Fatalf("loading kfunc-calling objects: %v", err)
	}
	defer o.Close()
	in := objs.KmodAbiKmodAbiArgs{}
	var out objs.KmodAbiKmodAbiArgs
	ret, err := o.KmodAbiProbe.Run(&ebpf.RunOptions{Context: in, ContextOut: &out})
	if err != nil || ret != 0 {
		t.Fatalf("running probe: ret=%d err=%v", ret, err)
	}
	if out.AbiVersion != ABIVersion {
		t.Fatalf("kfunc returned abi %d, want %d", out.AbiVersion, ABIVersion)
	}
}

// TestKfuncFromConnectHook calls the kfunc from a cgroup/connect4 program on a
// real connect(), the hook kernel-native routing uses.
func TestKfuncFromConnectHook(t *testing.T) {
	loadModule(t)
	var o objs.KmodAbiObjects
	if err := objs.LoadKmodAbiObjects(&o, nil); err != nil {
		t.Fatalf("loading kfunc-calling objects: %v", err)
	}
	defer o.Close()
	cg := testutil.NewCgroup(t)
	l, err := link.AttachCgroup(link.CgroupOptions{Path: cg.Path, Attach: ebpf.AttachCGroupInet4Connect, Program: o.KmodAbiConnect4})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()

	ns := testutil.NewNetns(t, "kmvm-")
	ln := ns.Listen(t, "tcp4", "127.0.0.1:0")
	testutil.ServeIdentity(t, ln, "srv")
	var res testutil.DialResult
	testutil.RunHelper(t, "dial", testutil.DialArgs{Addr: ln.Addr().String(), Count: 3},
		testutil.HelperOptions{Netns: ns, Cgroup: cg}, &res)
	if res.Identities["srv"] != 3 {
		t.Fatalf("dials: %+v", res)
	}
	var calls uint64
	var abi uint32
	if err := o.ConnectCalls.Get(&calls); err != nil {
		t.Fatal(err)
	}
	if err := o.ConnectAbi.Get(&abi); err != nil {
		t.Fatal(err)
	}
	if calls != 3 || abi != ABIVersion {
		t.Fatalf("connect hook: calls=%d abi=%d, want 3 and %d", calls, abi, ABIVersion)
	}
	fmt.Println("kfunc called from cgroup/connect4 on", calls, "real connects")
}
