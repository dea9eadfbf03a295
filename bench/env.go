package bench

import (
	"bufio"
	"context"
	"os"
	"os/exec"
	"runtime"
	"runtime/debug"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/kmesh-go/kmesh/bench/proxy"
	"github.com/kmesh-go/kmesh/bench/report"
)

// CaptureEnvironment records the machine, the software versions and the git
// revision the numbers belong to. Missing facts are recorded as "unknown",
// never guessed.
func CaptureEnvironment(command string) report.Environment {
	e := report.Environment{
		Time:      time.Now().UTC().Format(time.RFC3339),
		CPUs:      runtime.NumCPU(),
		GoVersion: runtime.Version(),
		Command:   command,
		Versions:  proxy.Versions(),
		CPUModel:  "unknown",
		MemTotal:  "unknown",
		Kernel:    "unknown",
	}
	e.Hostname, _ = os.Hostname()
	var u unix.Utsname
	if unix.Uname(&u) == nil {
		e.Kernel = unix.ByteSliceToString(u.Release[:]) + " " + unix.ByteSliceToString(u.Version[:])
	}
	if v := procField("/proc/cpuinfo", "model name"); v != "" {
		e.CPUModel = v
	}
	if v := procField("/proc/meminfo", "MemTotal"); v != "" {
		e.MemTotal = v
	}
	if la := loadAvg(); la != "" {
		e.Notes = append(e.Notes, "load average at start (1/5/15 min): "+la)
	}
	if bi, ok := debug.ReadBuildInfo(); ok {
		for _, d := range bi.Deps {
			switch d.Path {
			case "fortio.org/fortio", "gonum.org/v1/plot":
				e.Versions[d.Path] = d.Version
			}
		}
	}
	e.GitRevision, e.GitDirty = gitRevision()
	return e
}

// procField returns the value of the first "key : value" line of a /proc file.
func procField(path, key string) string {
	f, err := os.Open(path)
	if err != nil {
		return ""
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), ":")
		if ok && strings.TrimSpace(k) == key {
			return strings.TrimSpace(v)
		}
	}
	return ""
}

// gitRevision asks git directly: the build's VCS stamp is absent under
// `go run` with -buildvcs=false.
func gitRevision() (string, bool) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, "git", "rev-parse", "HEAD").Output()
	if err != nil {
		return "unknown (not a git checkout)", false
	}
	st, err := exec.CommandContext(ctx, "git", "status", "--porcelain", "--untracked-files=no").Output()
	return strings.TrimSpace(string(out)), err == nil && len(strings.TrimSpace(string(st))) > 0
}

// DefaultPlacement splits the CPUs this process may use into two halves,
// node A and node B. With a single CPU nothing is pinned.
func DefaultPlacement() Placement {
	var set unix.CPUSet
	if err := unix.SchedGetaffinity(0, &set); err != nil {
		return Placement{}
	}
	var cpus []int
	for i := 0; i < 1024 && len(cpus) < set.Count(); i++ {
		if set.IsSet(i) {
			cpus = append(cpus, i)
		}
	}
	if len(cpus) < 2 {
		return Placement{}
	}
	half := len(cpus) / 2
	return Placement{NodeA: cpuList(cpus[:half]), NodeB: cpuList(cpus[half:])}
}

func cpuList(cpus []int) string {
	s := make([]string, len(cpus))
	for i, c := range cpus {
		s[i] = strconv.Itoa(c)
	}
	return strings.Join(s, ",")
}

// loadAvg is the 1/5/15-minute load average, or "".
func loadAvg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return ""
	}
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return ""
	}
	return strings.Join(f[:3], " ")
}
