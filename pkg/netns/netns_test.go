package netns_test

import (
	"errors"
	"os"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/kmesh-go/kmesh/pkg/netns"
	"github.com/kmesh-go/kmesh/pkg/testutil"
)

func cookie(t *testing.T) uint64 {
	t.Helper()
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	c, err := unix.GetsockoptUint64(fd, unix.SOL_SOCKET, unix.SO_NETNS_COOKIE)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func TestDoSwitchesAndRestores(t *testing.T) {
	testutil.Privileged(t)
	ns := testutil.NewNetns(t, "kmns-")

	host := cookie(t)
	var inside uint64
	if err := netns.Do(ns.Path(), func() error { inside = cookie(t); return nil }); err != nil {
		t.Fatal(err)
	}
	if inside == 0 || inside == host {
		t.Fatalf("cookie inside %d, host %d: Do did not switch namespaces", inside, host)
	}
	// Every thread of the process is back home: the locked one was restored.
	for i := 0; i < 20; i++ {
		if c := cookie(t); c != host {
			t.Fatalf("after Do a socket was created in netns cookie %d, want host %d", c, host)
		}
	}

	want := errors.New("from fn")
	if err := netns.Do(ns.Path(), func() error { return want }); !errors.Is(err, want) {
		t.Fatalf("Do returned %v, want fn's error", err)
	}
	if err := netns.Do("/run/netns/kmesh-no-such-netns", func() error { t.Error("fn ran"); return nil }); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("missing namespace: %v, want a not-exist error", err)
	}
}
