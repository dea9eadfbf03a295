// Package restart is the end-to-end test of restart and upgrade without
// loss: real kmeshd binaries (the release build and the layout-next test
// build) run against a test-owned cgroup and pin directory while an enrolled
// client sends short requests and streams over long-lived connections.
package restart

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/cilium/ebpf"

	"github.com/kmesh-go/kmesh/pkg/bpf"
	"github.com/kmesh-go/kmesh/pkg/model"
	"github.com/kmesh-go/kmesh/pkg/probe"
	"github.com/kmesh-go/kmesh/pkg/testutil"
)

func TestMain(m *testing.M) { testutil.HelperMain(m) }

// build compiles kmeshd into dir as the Makefile does (tag grpcnotrace),
// plus the given build tags.
func build(t testing.TB, dir, name string, tags ...string) string {
	t.Helper()
	out := filepath.Join(dir, name)
	args := []string{"build", "-o", out, "-tags", strings.Join(append([]string{"grpcnotrace"}, tags...), ",")}
	args = append(args, "github.com/kmesh-go/kmesh/daemon/kmeshd")
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "go", args...)
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go %v: %v\n%s", args, err, b)
	}
	return out
}

// daemon is one running kmeshd process; its JSON log lines are collected.
type daemon struct {
	t    testing.TB
	cmd  *exec.Cmd
	mu   sync.Mutex
	logs []map[string]any
	raw  []string
	done chan struct{}
}

func startDaemon(t testing.TB, bin string, args ...string) *daemon {
	t.Helper()
	d := &daemon{t: t, done: make(chan struct{})}
	d.cmd = exec.Command(bin, append(args, "--log-format=json")...)
	stderr, err := d.cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := d.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		defer close(d.done)
		sc := bufio.NewScanner(stderr)
		sc.Buffer(make([]byte, 1<<20), 1<<20)
		for sc.Scan() {
			var m map[string]any
			line := sc.Text()
			json.Unmarshal([]byte(line), &m)
			d.mu.Lock()
			d.logs = append(d.logs, m)
			d.raw = append(d.raw, line)
			d.mu.Unlock()
		}
	}()
	t.Cleanup(func() {
		d.cmd.Process.Kill()
		d.cmd.Wait()
	})
	return d
}

// waitLog waits for a log line with this msg and returns it.
func (d *daemon) waitLog(msg string, timeout time.Duration) map[string]any {
	d.t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		d.mu.Lock()
		for _, m := range d.logs {
			if m["msg"] == msg {
				d.mu.Unlock()
				return m
			}
		}
		d.mu.Unlock()
		select {
		case <-d.done:
			d.t.Fatalf("kmeshd exited before %q:\n%s", msg, d.log())
		default:
		}
		if time.Now().After(deadline) {
			d.t.Fatalf("kmeshd did not log %q within %v:\n%s", msg, timeout, d.log())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func (d *daemon) log() string {
	d.mu.Lock()
	defer d.mu.Unlock()
	return strings.Join(d.raw, "\n")
}

func (d *daemon) signal(sig syscall.Signal) {
	d.t.Helper()
	if err := d.cmd.Process.Signal(sig); err != nil {
		d.t.Fatal(err)
	}
	select {
	case <-d.done:
	case <-time.After(30 * time.Second):
		d.t.Fatalf("kmeshd did not exit after %v", sig)
	}
	d.cmd.Wait()
}

func waitFile(t *testing.T, path string, timeout time.Duration) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		if _, err := os.Stat(path); err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s did not appear", path)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// frontendSvc reads the service id behind vip:port from the pinned map.
func frontendSvc(t *testing.T, pinDir string, vip netip.Addr, port uint16) uint32 {
	t.Helper()
	m, err := ebpf.LoadPinnedMap(filepath.Join(pinDir, "maps", bpf.MapFrontend), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	b := vip.As16()
	var k bpf.FrontendKey
	for i := range k.Addr {
		k.Addr[i] = uint32(b[i*4]) | uint32(b[i*4+1])<<8 | uint32(b[i*4+2])<<16 | uint32(b[i*4+3])<<24
	}
	k.Port, k.Proto = port>>8|port<<8, 6
	var v bpf.FrontendVal
	if err := m.Lookup(&k, &v); err != nil {
		t.Fatalf("frontend %v:%d: %v", vip, port, err)
	}
	return v.SvcId
}

// TestRestartAndUpgradeWithoutLoss: >= 100 short requests/s and 20
// long-lived streaming connections (same-node accelerated) run while kmeshd
// is SIGKILLed and restarted 3 times and then upgraded to a build whose map
// layout differs. Zero requests may fail, zero streams may break, and the
// pinned state (service ids, backends) is kept throughout.
func TestRestartAndUpgradeWithoutLoss(t *testing.T) {
	testutil.Privileged(t)
	bins := t.TempDir()
	release := build(t, bins, "kmeshd")
	next := build(t, bins, "kmeshd-next", "kmesh_layout_next")

	attach := testutil.NewCgroup(t)
	clientCg := attach.Child(t, "client-")
	topo := testutil.NewTopology(t)
	cl := topo.AddHost("client")
	vip := netip.MustParseAddr("10.96.0.50")
	snap := model.Snapshot{
		Version:  "restart-test",
		Services: []model.Service{{Key: "e2e/svc", VIPs: []netip.Addr{vip}, Ports: []model.ServicePort{{Port: 80, TargetPort: 8080}, {Port: 81, TargetPort: 8081}}}},
		Workloads: []model.Workload{{UID: "client", Addresses: []netip.Addr{cl.IP4}, Healthy: true,
			Enrolment: &model.Enrolment{CgroupPath: clientCg.Path}}},
	}
	type backend struct {
		h  *testutil.Host
		cg *testutil.Cgroup
	}
	var bes []backend
	for i := 1; i <= 3; i++ {
		b := backend{topo.AddHost(fmt.Sprintf("be%d", i)), attach.Child(t, "be-")}
		bes = append(bes, b)
		snap.Workloads = append(snap.Workloads, model.Workload{UID: b.h.Name, Addresses: []netip.Addr{b.h.IP4}, Healthy: true,
			Services: map[string][]model.WorkloadPort{"e2e/svc": nil}, Enrolment: &model.Enrolment{CgroupPath: b.cg.Path}})
	}
	work := t.TempDir()
	modelFile := filepath.Join(work, "model.json")
	raw, _ := json.Marshal(snap)
	if err := os.WriteFile(modelFile, raw, 0o644); err != nil {
		t.Fatal(err)
	}
	pinDir := filepath.Join(probe.DefaultBPFFS, testutil.UniqueName("kmesh-e2e-"))
	args := []string{"--pin-dir", pinDir, "--cgroup", attach.Path, "--state-dir", filepath.Join(work, "state"),
		"--model-file", modelFile, "--accel"}
	t.Cleanup(func() {
		cmd := exec.Command(release, append([]string{"uninstall"}, args[:6]...)...)
		if b, err := cmd.CombinedOutput(); err != nil {
			t.Errorf("kmeshd uninstall: %v\n%s", err, b)
		}
		if _, err := os.Stat(pinDir); !os.IsNotExist(err) {
			t.Errorf("pins left after uninstall: %v", err)
		}
	})

	d := startDaemon(t, release, args...)
	d.waitLog("model applied", 2*time.Minute)
	svcID := frontendSvc(t, pinDir, vip, 80)

	// Backends start after the model is applied, so their listeners are
	// recognised as enrolled (same-node acceleration needs both ends).
	for _, b := range bes {
		ready := filepath.Join(work, b.h.Name+".ready")
		testutil.StartHelper(t, "serve", serveArgs{Addrs: []string{"[::]:8080", "[::]:8081"}, ID: b.h.Name, Ready: ready},
			testutil.HelperOptions{Netns: b.h.NS, Cgroup: b.cg, Timeout: 10 * time.Minute})
		waitFile(t, ready, time.Minute)
	}

	trafficReady, stop := filepath.Join(work, "traffic.ready"), filepath.Join(work, "stop")
	tr := testutil.StartHelper(t, "traffic", trafficArgs{Short: "10.96.0.50:80", Stream: "10.96.0.50:81", Rate: 150, Streams: 20,
		Ready: trafficReady, Stop: stop, RequestDeadline: 5 * time.Second},
		testutil.HelperOptions{Netns: cl.NS, Cgroup: clientCg, Timeout: 10 * time.Minute})
	waitFile(t, trafficReady, time.Minute)
	time.Sleep(2 * time.Second)

	for i := 1; i <= 3; i++ {
		d.signal(syscall.SIGKILL)
		t.Logf("restart %d: kmeshd killed; the pinned dataplane serves alone for 1s", i)
		time.Sleep(time.Second)
		d = startDaemon(t, release, args...)
		ready := d.waitLog("dataplane ready", 2*time.Minute)
		if ready["adopted"] != true {
			t.Fatalf("restart %d did not adopt the pinned state: %v", i, ready)
		}
		d.waitLog("model applied", 2*time.Minute)
		if got := frontendSvc(t, pinDir, vip, 80); got != svcID {
			t.Fatalf("restart %d: service id %d, was %d", i, got, svcID)
		}
		time.Sleep(2 * time.Second)
	}

	t.Log("upgrade: SIGTERM, then start the layout-next build")
	d.signal(syscall.SIGTERM)
	d = startDaemon(t, next, args...)
	ready := d.waitLog("dataplane ready", 2*time.Minute)
	migrated, _ := ready["migrated_maps"].([]any)
	// km_slot changed: km_endpoint's values, and km_svc_gen's records, whose
	// inline slots are km_slots.
	if ready["previous_layout"] != float64(bpf.LayoutVersion) || ready["layout"] != float64(bpf.LayoutVersion+1) || len(migrated) != 2 ||
		!slices.Contains(migrated, any(bpf.MapEndpoint)) || !slices.Contains(migrated, any(bpf.MapSvcGen)) {
		t.Fatalf("upgrade: %v, want layout %d -> %d with km_endpoint and km_svc_gen migrated", ready, bpf.LayoutVersion, bpf.LayoutVersion+1)
	}
	d.waitLog("model applied", 2*time.Minute)
	if got := frontendSvc(t, pinDir, vip, 80); got != svcID {
		t.Fatalf("after the upgrade: service id %d, was %d", got, svcID)
	}
	time.Sleep(2 * time.Second)

	if err := os.WriteFile(stop, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	var res trafficResult
	if err := tr.Wait(&res); err != nil {
		t.Fatal(err)
	}
	rate := float64(res.Requests) / res.Elapsed.Seconds()
	t.Logf("%d requests (%.0f/s) over %v, %d failed %v; %d streams, %d broken %v, %d stream messages; backends %v",
		res.Requests, rate, res.Elapsed.Round(time.Millisecond), res.Failed, res.Errors, res.Streams, res.Broken, res.StreamErrors, res.Messages, res.Backends)
	if res.Failed != 0 || res.Broken != 0 || res.Streams != 20 {
		t.Fatalf("lost traffic across restarts and the upgrade")
	}
	if rate < 100 {
		t.Fatalf("the load was %.0f requests/s; the scenario needs >= 100", rate)
	}
	if len(res.Backends) != 3 {
		t.Fatalf("requests reached %v, want all 3 backends", res.Backends)
	}

	// State kept: the service's endpoints are all there, now in the new
	// layout (52-byte slots; 3 endpoints are inline in the generation
	// record, whose slots follow its 152-byte head), and the streams really
	// went through the same-node sk_msg path.
	const nextSlot, recHead = 52, 152
	le32 := func(b []byte) uint32 { return uint32(b[0]) | uint32(b[1])<<8 | uint32(b[2])<<16 | uint32(b[3])<<24 }
	ep, err := ebpf.LoadPinnedMap(filepath.Join(pinDir, "maps", bpf.MapEndpoint), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer ep.Close()
	if info, _ := ep.Info(); info.ValueSize != nextSlot {
		t.Fatalf("km_endpoint value size %d after the upgrade, want the layout-next %d", info.ValueSize, nextSlot)
	}
	gens, err := ebpf.LoadPinnedMap(filepath.Join(pinDir, "maps", bpf.MapSvcGen), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer gens.Close()
	if info, _ := gens.Info(); info.ValueSize != recHead+bpf.InlineSlots*nextSlot {
		t.Fatalf("km_svc_gen value size %d after the upgrade, want the layout-next %d", info.ValueSize, recHead+bpf.InlineSlots*nextSlot)
	}
	active, err := ebpf.LoadPinnedMap(filepath.Join(pinDir, "maps", bpf.MapSvcActive), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer active.Close()
	var gen uint32
	var rec []byte
	if err := active.Lookup(svcID, &gen); err != nil {
		t.Fatal(err)
	}
	if err := gens.Lookup(bpf.SvcKey{SvcId: svcID, Gen: gen}, &rec); err != nil {
		t.Fatal(err)
	}
	wls := map[uint32]bool{}
	if rec[3]&bpf.RecInline == 0 {
		t.Fatalf("the service's record (3 endpoints) is not inline: flags %#x", rec[3])
	}
	total := 0
	for i := 0; i < 2*bpf.MaxTiers; i++ {
		total += int(le32(rec[24+4*i:]))
	}
	for i := 0; i < total && i < bpf.InlineSlots; i++ {
		wls[le32(rec[recHead+i*nextSlot:])] = true
	}
	var k bpf.SlotKey
	var val []byte
	it := ep.Iterate()
	for it.Next(&k, &val) {
		if k.SvcId == svcID && k.Gen == gen {
			wls[le32(val)] = true
		}
	}
	if it.Err() != nil || len(wls) != 3 {
		t.Fatalf("the service's endpoints after the upgrade cover %d workloads (%v), want 3", len(wls), it.Err())
	}
	st, err := ebpf.LoadPinnedMap(filepath.Join(pinDir, "maps", bpf.MapStats), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	var per []uint64
	if err := st.Lookup(uint32(bpf.StatAccelRedirect), &per); err != nil {
		t.Fatal(err)
	}
	var redirects uint64
	for _, v := range per {
		redirects += v
	}
	if redirects == 0 {
		t.Fatal("no sk_msg redirects: the streams were not accelerated")
	}
	t.Logf("%d sk_msg redirects", redirects)
}
