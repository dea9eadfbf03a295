package netlab

import (
	"context"
	"errors"
	"io"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/kmesh-go/kmesh/pkg/testutil"
)

func exists(path string) bool { _, err := os.Stat(path); return err == nil }

// The whole lab life cycle on the real kernel: namespaces on a bridge, TCP
// between them, processes placed in the lab cgroup and pinned, timeouts, and
// a Close that leaves nothing behind.
func TestLabLifecycle(t *testing.T) {
	testutil.Privileged(t)
	l, err := New()
	if err != nil {
		t.Fatal(err)
	}
	closed := false
	defer func() {
		if !closed {
			l.Close()
		}
	}()
	br, err := l.NewBridge(netip.MustParsePrefix("10.79.0.0/24"))
	if err != nil {
		t.Fatal(err)
	}
	a, err := br.AddHost("a")
	if err != nil {
		t.Fatal(err)
	}
	b, err := br.AddHost("b")
	if err != nil {
		t.Fatal(err)
	}
	if a.IP.String() != "10.79.0.1" || b.IP.String() != "10.79.0.2" || a.NS.Name != l.Name("a") {
		t.Fatalf("hosts %s=%s %s=%s", a.NS.Name, a.IP, b.NS.Name, b.IP)
	}

	// An echo listener in b, reached from a over the bridge.
	var ln net.Listener
	if err := b.NS.Do(func() (err error) { ln, err = net.Listen("tcp", b.IP.String()+":9000"); return err }); err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.SetDeadline(time.Now().Add(5 * time.Second))
			io.CopyN(c, c, 5)
			c.Close()
		}
	}()
	if err := WaitListening(context.Background(), a.NS, b.IP.String()+":9000", nil, 5*time.Second); err != nil {
		t.Fatal(err)
	}
	c, err := a.NS.Dial(b.IP.String()+":9000", 2*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	c.SetDeadline(time.Now().Add(5 * time.Second))
	c.Write([]byte("hello"))
	got, _ := io.ReadAll(c)
	c.Close()
	if string(got) != "hello" {
		t.Fatalf("echo over the bridge = %q", got)
	}
	// No default route: an off-subnet address never leaves the lab.
	if _, err := a.NS.Dial("10.96.0.10:80", time.Second); err == nil || !strings.Contains(err.Error(), "unreachable") {
		t.Fatalf("dial off-subnet: %v, want network unreachable", err)
	}

	// One-shot process: in a's namespace, the lab cgroup, pinned to CPU 0.
	out, err := l.Output(context.Background(), Cmd{Name: "probe", Netns: a.NS, CPUs: "0", Nice: -5,
		Args: []string{"sh", "-c", "cat /proc/self/cgroup; grep Cpus_allowed_list /proc/self/status; ip -o -4 addr show dev eth0; echo nice=$(cut -d' ' -f19 /proc/self/stat)"}}, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"/" + filepath.Base(l.Cgroup) + "\n", "Cpus_allowed_list:\t0\n", "10.79.0.1/24", "nice=-5\n"} {
		if !strings.Contains(string(out), want) {
			t.Errorf("probe output lacks %q:\n%s", want, out)
		}
	}
	// Bounded: a hung child is killed at the timeout.
	start := time.Now()
	if _, err := l.Output(context.Background(), Cmd{Name: "hang", Args: []string{"sleep", "30"}}, 200*time.Millisecond); err == nil || !strings.Contains(err.Error(), "timed out") {
		t.Errorf("hung child: %v", err)
	}
	if time.Since(start) > 5*time.Second {
		t.Errorf("timeout took %v", time.Since(start))
	}
	// A failing child reports its stderr.
	if _, err := l.Output(context.Background(), Cmd{Name: "fail", Args: []string{"sh", "-c", "echo broken >&2; exit 3"}}, 5*time.Second); err == nil || !strings.Contains(err.Error(), "broken") {
		t.Errorf("failing child: %v", err)
	}

	// Long-running process, in a sub-cgroup: stopped by Close.
	sub, err := l.SubCgroup("sub")
	if err != nil {
		t.Fatal(err)
	}
	p, err := l.Start(Cmd{Name: "sleeper", Netns: b.NS, Cgroup: sub, Args: []string{"sleep", "300"}})
	if err != nil {
		t.Fatal(err)
	}
	procs, _ := os.ReadFile(filepath.Join(sub, "cgroup.procs"))
	if !strings.Contains(string(procs), strconv.Itoa(p.Pid())) {
		t.Errorf("sleeper %d not in %s: %q", p.Pid(), sub, procs)
	}

	paths := []string{l.Dir, l.Cgroup, a.NS.Path(), b.NS.Path(), br.NS.Path()}
	closed = true
	if err := l.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	select {
	case <-p.Done():
	default:
		t.Error("sleeper still running after Close")
	}
	for _, path := range paths {
		if exists(path) {
			t.Errorf("%s left behind", path)
		}
	}
	if err := l.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
}

// Leftovers of a dead owner are swept; a live owner's (ours) are not.
func TestSweepStale(t *testing.T) {
	testutil.Privileged(t)
	// A pid above pid_max can never belong to a live process.
	raw, err := os.ReadFile("/proc/sys/kernel/pid_max")
	if err != nil {
		t.Fatal(err)
	}
	pidMax, err := strconv.Atoi(strings.TrimSpace(string(raw)))
	if err != nil {
		t.Fatal(err)
	}
	deadPid := pidMax + 1000
	if !errors.Is(syscall.Kill(deadPid, 0), syscall.ESRCH) {
		t.Fatalf("pid %d above pid_max exists?", deadPid)
	}
	stale := NamePrefix + strconv.Itoa(deadPid) + "-x"
	if err := run("ip", "netns", "add", stale); err != nil {
		t.Fatal(err)
	}
	defer run("ip", "netns", "del", stale)
	staleDir := filepath.Join(os.TempDir(), NamePrefix+strconv.Itoa(deadPid)+"-123")
	if err := os.Mkdir(staleDir, 0o700); err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(staleDir)

	l, err := New()
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	live, err := l.NewNetns("live")
	if err != nil {
		t.Fatal(err)
	}
	if !DeadOwner(stale) || DeadOwner(live.Name) || DeadOwner("unrelated-name") {
		t.Errorf("DeadOwner: stale %v, live %v, unrelated %v", DeadOwner(stale), DeadOwner(live.Name), DeadOwner("unrelated-name"))
	}
	removed, err := SweepStale()
	if err != nil {
		t.Fatal(err)
	}
	joined := strings.Join(removed, "\n")
	if !strings.Contains(joined, "netns "+stale) || !strings.Contains(joined, "dir "+staleDir) {
		t.Errorf("removed %q, want the stale netns and dir", removed)
	}
	if exists("/run/netns/"+stale) || exists(staleDir) {
		t.Error("stale leftovers still present")
	}
	if !exists(live.Path()) || !exists(l.Dir) || !exists(l.Cgroup) {
		t.Error("SweepStale removed a live lab's resources")
	}
}
