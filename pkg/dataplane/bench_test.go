package dataplane

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/netip"
	"runtime"
	"slices"
	"sort"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"golang.org/x/sys/unix"

	"github.com/kmesh-go/kmesh/pkg/bpf"
	"github.com/kmesh-go/kmesh/pkg/bpf/bpftest"
	"github.com/kmesh-go/kmesh/pkg/model"
	"github.com/kmesh-go/kmesh/pkg/testutil"
)

// Benchmarks for docs/performance.md. Reproduce with
//
//	sudo go test -run '^$' -bench . -benchtime 20000x ./pkg/dataplane/
//
// (BenchmarkApply10kServices runs once per iteration; use -benchtime 3x.)

// BenchmarkConnectHook reports the kernel's own accounting (bpf_stats
// run_time_ns / run_cnt) of cgroup/connect4 for connects through a VIP by an
// enrolled process (the load-balancing path) and for connects to a non-mesh
// address (the pass-through path). The b.N connects of each kind run in
// batches of 250, alternating; the median batch is reported (the machine is
// shared: a batch that met a busy neighbour is an outlier, not the cost).
// For reference it also reports an empty program's cost, which is the
// accounting's own overhead (two clock reads) included in every number.
func BenchmarkConnectHook(b *testing.B) {
	e := newEnv(b)
	e.apply(e.snapshot(model.LoadBalancing{Algorithm: model.LBRandom}))
	stats, err := bpf.EnableStats()
	if err != nil {
		b.Fatal(err)
	}
	defer stats.Close()
	batch := func(addr string, n int) float64 {
		before := progStats(b, e.dp, "km_connect4")
		e.dialBatch(b, addr, n)
		after := progStats(b, e.dp, "km_connect4")
		if runs := after.RunCount - before.RunCount; runs != uint64(n) {
			b.Fatalf("%d connects ran connect4 %d times", n, runs)
		}
		return nsPerRunBetween(before, after)
	}
	var lb, pass []float64
	b.ResetTimer()
	for done := 0; done < b.N; done += 250 {
		n := min(250, b.N-done)
		lb = append(lb, batch(vipAddr(vip4, port80), n))
		pass = append(pass, batch(fmt.Sprintf("%s:9090", e.plain.IP4), n))
	}
	b.StopTimer()
	b.ReportMetric(median(lb), "ns/connect4-lb")
	b.ReportMetric(median(pass), "ns/connect4-passthrough")
	b.ReportMetric(slices.Min(lb), "ns/connect4-lb-best-batch")
	b.ReportMetric(emptyProgramCost(b), "ns/empty-program")
}

// BenchmarkSelectHot runs the selection code of the connect hook (lib/lb.h,
// through the lb_select shim) back to back with BPF_PROG_RUN: the cost of the
// logic with warm caches, next to BenchmarkConnectHook's cost inside real
// connect() calls. Reported per run, bpf_stats overhead included (see
// ns/empty-program).
func BenchmarkSelectHot(b *testing.B) {
	s := newSelector(b)
	snap := &model.Snapshot{Services: []model.Service{{Key: "s", VIPs: []netip.Addr{vip4}, Ports: []model.ServicePort{{Port: 80, TargetPort: 8080}}}}}
	for i := 0; i < 10; i++ {
		snap.Workloads = append(snap.Workloads, wl(fmt.Sprintf("w%d", i), fmt.Sprintf("10.0.0.%d", i+1), "s", 0, model.Locality{}))
	}
	if err := s.dp.Apply(context.Background(), snap); err != nil {
		b.Fatal(err)
	}
	stats, err := bpf.EnableStats()
	if err != nil {
		b.Fatal(err)
	}
	defer stats.Close()
	for _, tc := range []struct {
		name string
		dst  netip.AddrPort
	}{{"lb", netip.AddrPortFrom(vip4, 80)}, {"passthrough", netip.MustParseAddrPort("10.1.1.1:80")}} {
		st0, _ := s.prog.Stats()
		for i := 0; i < b.N; i++ {
			s.pick(tc.dst, -1)
		}
		st1, _ := s.prog.Stats()
		b.ReportMetric(bpf.ProgramStats{RunCount: st1.RunCount - st0.RunCount, RunTime: st1.Runtime - st0.Runtime}.NsPerRun(), "ns/select-"+tc.name)
	}
}

func median(v []float64) float64 {
	s := slices.Clone(v)
	slices.Sort(s)
	return s[len(s)/2]
}

// emptyProgramCost is bpf_stats' view of a program that does nothing.
func emptyProgramCost(b *testing.B) float64 {
	p, err := ebpf.NewProgram(&ebpf.ProgramSpec{Type: ebpf.Syscall, Flags: unix.BPF_F_SLEEPABLE, License: "GPL",
		Instructions: asm.Instructions{asm.Mov.Imm(asm.R0, 0), asm.Return()}})
	if err != nil {
		b.Fatal(err)
	}
	defer p.Close()
	for i := 0; i < 100000; i++ {
		if _, err := p.Run(&ebpf.RunOptions{Context: make([]byte, 8)}); err != nil {
			b.Fatal(err)
		}
	}
	st, err := p.Stats()
	if err != nil {
		b.Fatal(err)
	}
	return bpf.ProgramStats{RunCount: st.RunCount, RunTime: st.Runtime}.NsPerRun()
}

// dialBatch makes n connects to addr from the enrolled client and fails the
// benchmark on any error.
func (e *env) dialBatch(b *testing.B, addr string, n int) {
	b.Helper()
	var res testutil.DialResult
	testutil.RunHelper(b, "dial", testutil.DialArgs{Network: "tcp4", Addr: addr, Count: n, Timeout: 3 * time.Second},
		testutil.HelperOptions{Netns: e.cl.NS, Cgroup: e.client, Timeout: 30 * time.Minute}, &res)
	if len(res.Errors) != 0 {
		b.Fatalf("dial %s: %v", addr, res.Errors)
	}
}

// nsPerRunBetween is the cost per run of the runs between two readings.
func nsPerRunBetween(before, after bpf.ProgramStats) float64 {
	return bpf.ProgramStats{RunCount: after.RunCount - before.RunCount, RunTime: after.RunTime - before.RunTime}.NsPerRun()
}

func progStats(tb testing.TB, dp *Dataplane, name string) bpf.ProgramStats {
	tb.Helper()
	all, err := dp.ProgramStats()
	if err != nil {
		tb.Fatal(err)
	}
	for _, s := range all {
		if s.Name == name {
			return s
		}
	}
	tb.Fatalf("no stats for %s", name)
	return bpf.ProgramStats{}
}

// bigSnapshot is n services with e endpoints each (n*e distinct workloads),
// one VIP and two ports per service.
func bigSnapshot(n, e int) *model.Snapshot {
	s := &model.Snapshot{Version: "big"}
	for i := 0; i < n; i++ {
		key := fmt.Sprintf("ns%d/svc-%d", i%100, i)
		s.Services = append(s.Services, model.Service{Key: key, VIPs: []netip.Addr{netip.AddrFrom4([4]byte{10, 128 + byte(i>>16), byte(i >> 8), byte(i)})},
			Ports: []model.ServicePort{{Port: 80, TargetPort: 8080}, {Port: 443, TargetPort: 8443}}})
		for j := 0; j < e; j++ {
			w := i*e + j
			s.Workloads = append(s.Workloads, model.Workload{UID: fmt.Sprintf("cluster/apps/Pod/ns%d/pod-%d", i%100, w), Healthy: true,
				Addresses: []netip.Addr{netip.AddrFrom4([4]byte{10, 64 + byte(w>>16), byte(w >> 8), byte(w)})},
				Services:  map[string][]model.WorkloadPort{key: nil}})
		}
	}
	return s
}

// BenchmarkApply10kServices times a full Apply of 10 000 services x 10
// endpoints into an empty dataplane (target <= 1 s), and reports the Go heap
// the dataplane keeps for it.
func BenchmarkApply10kServices(b *testing.B) {
	testutil.Privileged(b)
	snap := bigSnapshot(10000, 10)
	cg := testutil.NewCgroup(b)
	var total, cpu time.Duration
	var heap uint64
	for i := 0; i < b.N; i++ {
		opts := bpftest.Options(b, cg)
		dp, err := Open(Options{BPF: opts, StateDir: b.TempDir()})
		if err != nil {
			b.Fatal(err)
		}
		runtime.GC()
		var m0 runtime.MemStats
		runtime.ReadMemStats(&m0)
		start, cpu0 := time.Now(), cpuTime()
		if err := dp.Apply(context.Background(), snap); err != nil {
			b.Fatal(err)
		}
		total += time.Since(start)
		cpu += cpuTime() - cpu0
		runtime.GC()
		var m1 runtime.MemStats
		runtime.ReadMemStats(&m1)
		heap = m1.HeapAlloc - m0.HeapAlloc
		// 10 slots per service: inline in the generation records, none
		// in km_endpoint.
		u := dp.Usage()
		if u.Services != 10000 || u.Generations != 10000 || u.Slots != 0 || u.Workloads != 100000 {
			b.Fatalf("usage %+v", u)
		}
		// Re-applying the same snapshot touches nothing.
		start = time.Now()
		if err := dp.Apply(context.Background(), snap); err != nil {
			b.Fatal(err)
		}
		b.ReportMetric(float64(time.Since(start).Milliseconds()), "ms/unchanged-reapply")
		dp.Close()
		if err := bpf.Uninstall(opts); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(total.Milliseconds())/float64(b.N), "ms/apply")
	b.ReportMetric(float64(cpu.Milliseconds())/float64(b.N), "cpu-ms/apply")
	b.ReportMetric(float64(heap)/(1<<20), "MB-heap-kept")
}

// cpuTime is the CPU time this process has used (user + system, all
// threads): on a shared machine it measures the work, where wall time also
// measures the neighbours.
func cpuTime() time.Duration {
	var ru unix.Rusage
	unix.Getrusage(unix.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// BenchmarkUpdateOneEndpoint times the incremental path the churn test
// drives: one workload added to and removed from a 10-endpoint service.
func BenchmarkUpdateOneEndpoint(b *testing.B) {
	testutil.Privileged(b)
	cg := testutil.NewCgroup(b)
	dp, err := Open(Options{BPF: bpftest.Options(b, cg), StateDir: b.TempDir()})
	if err != nil {
		b.Fatal(err)
	}
	defer dp.Close()
	ctx := context.Background()
	if err := dp.Apply(ctx, bigSnapshot(100, 10)); err != nil {
		b.Fatal(err)
	}
	wl := model.Workload{UID: "churn", Healthy: true, Addresses: []netip.Addr{netip.MustParseAddr("10.200.0.1")},
		Services: map[string][]model.WorkloadPort{"ns0/svc-0": nil}}
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if err := dp.UpsertWorkload(ctx, wl); err != nil {
			b.Fatal(err)
		}
		if err := dp.DeleteWorkload(ctx, wl.UID); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(2*b.N)/1e3, "us/update")
}

// latencyArgs: N requests alternating between Via (a VIP) and Direct (the
// backend's own address); each is connect + identity line + one echo +
// close, the "short request" of the mesh.
type latencyArgs struct {
	Via, Direct string
	N           int
}

type latencyResult struct {
	Via, Direct []int64 // ns per request, sorted
}

func init() {
	testutil.RegisterHelper("latency", func(raw json.RawMessage) (any, error) {
		var a latencyArgs
		if err := json.Unmarshal(raw, &a); err != nil {
			return nil, err
		}
		var r latencyResult
		buf := make([]byte, 64)
		one := func(addr string) (int64, error) {
			start := time.Now()
			c, err := net.DialTimeout("tcp4", addr, 3*time.Second)
			if err != nil {
				return 0, err
			}
			defer c.Close()
			c.SetDeadline(time.Now().Add(3 * time.Second))
			if _, err := c.Read(buf); err != nil { // identity line
				return 0, err
			}
			if _, err := c.Write([]byte("ping")); err != nil {
				return 0, err
			}
			if _, err := c.Read(buf); err != nil {
				return 0, err
			}
			return time.Since(start).Nanoseconds(), nil
		}
		for i := 0; i < a.N; i++ {
			for _, via := range []bool{i%2 == 0, i%2 != 0} {
				addr := a.Direct
				if via {
					addr = a.Via
				}
				ns, err := one(addr)
				if err != nil {
					return nil, err
				}
				if via {
					r.Via = append(r.Via, ns)
				} else {
					r.Direct = append(r.Direct, ns)
				}
			}
		}
		sort.Slice(r.Via, func(i, j int) bool { return r.Via[i] < r.Via[j] })
		sort.Slice(r.Direct, func(i, j int) bool { return r.Direct[i] < r.Direct[j] })
		return r, nil
	})
}

// BenchmarkRequestLatencyVIPvsDirect measures short requests through the
// service VIP and directly to the backend in the same run, interleaved, and
// reports both medians and their ratio (target p50 ratio <= 1.03).
func BenchmarkRequestLatencyVIPvsDirect(b *testing.B) {
	e := newEnv(b)
	snap := e.snapshot(model.LoadBalancing{})
	snap.Workloads = []model.Workload{e.backend(0), e.clientWorkload()} // one backend: same path both ways
	e.apply(snap)
	var r latencyResult
	testutil.RunHelper(b, "latency", latencyArgs{Via: vipAddr(vip4, port80), Direct: fmt.Sprintf("%s:%d", e.be[0].IP4, target80), N: b.N},
		testutil.HelperOptions{Netns: e.cl.NS, Cgroup: e.client, Timeout: 30 * time.Minute}, &r)
	p := func(v []int64, q float64) float64 { return float64(v[int(q*float64(len(v)-1))]) / 1e3 }
	b.ReportMetric(p(r.Via, 0.5), "us-p50-vip")
	b.ReportMetric(p(r.Direct, 0.5), "us-p50-direct")
	b.ReportMetric(p(r.Via, 0.5)/p(r.Direct, 0.5), "p50-ratio")
	b.ReportMetric(p(r.Via, 0.99)/p(r.Direct, 0.99), "p99-ratio")
}
