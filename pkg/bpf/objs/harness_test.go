package objs

import (
	"fmt"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"

	"github.com/kmesh-go/kmesh/pkg/testutil"
)

// TestHarnessConnectCounted is the host tier's self-test: a real cgroup/connect4
// program attached to a test-owned cgroup sees exactly the connect() calls made
// from that cgroup (in a test-owned netns) and none made from outside it.
func TestHarnessConnectCounted(t *testing.T) {
	testutil.Privileged(t)

	var objs HarnessObjects
	if err := LoadHarnessObjects(&objs, nil); err != nil {
		t.Fatalf("loading harness objects: %v", err)
	}
	defer objs.Close()

	cg := testutil.NewCgroup(t)
	l, err := link.AttachCgroup(link.CgroupOptions{Path: cg.Path, Attach: ebpf.AttachCGroupInet4Connect, Program: objs.HarnessConnect4})
	if err != nil {
		t.Fatalf("attaching connect4: %v", err)
	}
	defer l.Close()

	topo := testutil.NewTopology(t)
	client := topo.AddHost("client")
	server := topo.AddHost("server")
	const port = 18080
	ln := server.NS.Listen(t, "tcp4", fmt.Sprintf("%s:%d", server.IP4, port))
	testutil.ServeIdentity(t, ln, "server")

	args := testutil.DialArgs{Addr: fmt.Sprintf("%s:%d", server.IP4, port), Count: 5}
	var in testutil.DialResult
	testutil.RunHelper(t, "dial", args, testutil.HelperOptions{Netns: client.NS, Cgroup: cg}, &in)
	if in.Identities["server"] != 5 || len(in.Errors) != 0 {
		t.Fatalf("dials from the cgroup: %+v, want 5 replies from server", in)
	}

	// The same dials from outside the cgroup must not be seen.
	var out testutil.DialResult
	testutil.RunHelper(t, "dial", args, testutil.HelperOptions{Netns: client.NS}, &out)
	if out.Identities["server"] != 5 {
		t.Fatalf("dials from outside the cgroup: %+v", out)
	}

	var got uint64
	if err := objs.HarnessConnects.Lookup(uint16(port), &got); err != nil {
		t.Fatalf("looking up port %d: %v", port, err)
	}
	if got != 5 {
		t.Fatalf("connect4 counted %d connects to port %d, want 5", got, port)
	}
}
