package testutil

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"net"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/kmesh-go/kmesh/pkg/netns"
)

// Netns is a test-owned, named network namespace (/run/netns/<Name>), removed on
// cleanup. Its loopback is up.
type Netns struct {
	Name string
}

// Path is the bind-mounted namespace file.
func (n *Netns) Path() string { return "/run/netns/" + n.Name }

// UniqueName returns prefix plus a random suffix, short enough for interface
// and namespace names.
func UniqueName(prefix string) string {
	var b [3]byte
	rand.Read(b[:])
	return prefix + hex.EncodeToString(b[:])
}

// NewNetns creates a namespace named prefix-<random>.
func NewNetns(tb testing.TB, prefix string) *Netns {
	tb.Helper()
	n := &Netns{Name: UniqueName(prefix)}
	MustRun(tb, "ip", "netns", "add", n.Name)
	tb.Cleanup(func() {
		if out, err := Run("ip", "netns", "del", n.Name); err != nil {
			tb.Errorf("deleting netns %s: %v: %s", n.Name, err, out)
		}
	})
	MustRun(tb, "ip", "-n", n.Name, "link", "set", "lo", "up")
	return n
}

// Do runs fn on an OS thread switched into the namespace. Sockets created in fn
// stay in the namespace after fn returns, so tests can run servers in-process.
func (n *Netns) Do(fn func() error) error { return netns.Do(n.Path(), fn) }

// Listen opens a listener inside the namespace; it is closed on cleanup.
func (n *Netns) Listen(tb testing.TB, network, addr string) net.Listener {
	tb.Helper()
	var ln net.Listener
	err := n.Do(func() (err error) {
		ln, err = net.Listen(network, addr)
		return err
	})
	if err != nil {
		tb.Fatalf("listen %s %s in %s: %v", network, addr, n.Name, err)
	}
	tb.Cleanup(func() { ln.Close() })
	return ln
}

// Command returns a command that runs inside the namespace (via ip netns exec).
func (n *Netns) Command(ctx context.Context, name string, args ...string) *exec.Cmd {
	return exec.CommandContext(ctx, "ip", append([]string{"netns", "exec", n.Name, name}, args...)...)
}

// Run runs a command with a 30 s timeout and returns its combined output.
func Run(name string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, name, args...).CombinedOutput()
	return strings.TrimSpace(string(out)), err
}

// MustRun is Run that fails the test on error.
func MustRun(tb testing.TB, name string, args ...string) string {
	tb.Helper()
	out, err := Run(name, args...)
	if err != nil {
		tb.Fatalf("%s %s: %v: %s", name, strings.Join(args, " "), err, out)
	}
	return out
}
