package restart

import (
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/kmesh-go/kmesh/pkg/model"
	"github.com/kmesh-go/kmesh/pkg/probe"
	"github.com/kmesh-go/kmesh/pkg/testutil"
)

// BenchmarkDaemonRSS starts the real kmeshd with a model file of 10 000
// services x 10 endpoints (100 000 workloads), waits until it is applied,
// and reports the daemon's resident memory then and after the first state
// write (target <= 40 MB), its anonymous and file-backed parts
// (smaps_rollup Pss_Anon, Pss_File), and the time from start to applied.
// KMESH_RSS_BIN measures a prebuilt kmeshd instead (before/after runs).
//
//	sudo go test -run '^$' -bench DaemonRSS -benchtime 1x ./test/e2e/restart/
func BenchmarkDaemonRSS(b *testing.B) {
	testutil.Privileged(b)
	bin := os.Getenv("KMESH_RSS_BIN")
	if bin == "" {
		bin = build(b, b.TempDir(), "kmeshd")
	}
	s := &model.Snapshot{Version: "rss"}
	for i := 0; i < 10000; i++ {
		key := fmt.Sprintf("ns%d/svc-%d", i%100, i)
		s.Services = append(s.Services, model.Service{Key: key, VIPs: []netip.Addr{netip.AddrFrom4([4]byte{10, 128 + byte(i>>16), byte(i >> 8), byte(i)})},
			Ports: []model.ServicePort{{Port: 80, TargetPort: 8080}, {Port: 443, TargetPort: 8443}}})
		for j := 0; j < 10; j++ {
			w := i*10 + j
			s.Workloads = append(s.Workloads, model.Workload{UID: fmt.Sprintf("cluster/apps/Pod/ns%d/pod-%d", i%100, w), Healthy: true,
				Addresses: []netip.Addr{netip.AddrFrom4([4]byte{10, 64 + byte(w>>16), byte(w >> 8), byte(w)})},
				Services:  map[string][]model.WorkloadPort{key: nil}})
		}
	}
	work := b.TempDir()
	file := filepath.Join(work, "model.json")
	raw, _ := json.Marshal(s)
	os.WriteFile(file, raw, 0o644)
	s = nil
	cg := testutil.NewCgroup(b)
	for i := 0; i < b.N; i++ {
		pin := filepath.Join(probe.DefaultBPFFS, testutil.UniqueName("kmesh-rss-"))
		args := []string{"--pin-dir", pin, "--cgroup", cg.Path, "--state-dir", filepath.Join(work, fmt.Sprint(i))}
		start := time.Now()
		d := startDaemon(b, bin, append(args, "--model-file", file)...)
		d.waitLog("model applied", 5*time.Minute)
		b.ReportMetric(time.Since(start).Seconds(), "s-start-to-applied")
		b.ReportMetric(rssMB(b, d.cmd.Process.Pid), "MB-rss-applied")
		time.Sleep(3 * time.Second) // state file written, GC settled
		b.ReportMetric(rssMB(b, d.cmd.Process.Pid), "MB-rss-settled")
		roll := smapsRollupMB(b, d.cmd.Process.Pid)
		b.ReportMetric(roll["Pss_Anon"], "MB-anon-settled")
		b.ReportMetric(roll["Pss_File"], "MB-file-settled")
		d.signal(9)
		if out, err := testutil.Run(bin, append([]string{"uninstall"}, args...)...); err != nil {
			b.Fatalf("uninstall: %v %s", err, out)
		}
	}
}

func rssMB(tb testing.TB, pid int) float64 {
	tb.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		tb.Fatal(err)
	}
	for _, l := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(l, "VmRSS:") {
			kb, _ := strconv.Atoi(strings.Fields(l)[1])
			return float64(kb) / 1024
		}
	}
	tb.Fatal("no VmRSS")
	return 0
}

// smapsRollupMB reads /proc/PID/smaps_rollup's kB fields, in MB.
func smapsRollupMB(tb testing.TB, pid int) map[string]float64 {
	tb.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/smaps_rollup", pid))
	if err != nil {
		tb.Fatal(err)
	}
	out := map[string]float64{}
	for _, l := range strings.Split(string(b), "\n") {
		f := strings.Fields(l)
		if len(f) == 3 && f[2] == "kB" {
			kb, _ := strconv.Atoi(f[1])
			out[strings.TrimSuffix(f[0], ":")] = float64(kb) / 1024
		}
	}
	return out
}
