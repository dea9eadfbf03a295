package procstat

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// CgroupCPU is the cpu.stat of a cgroup v2 directory (present with or
// without the cpu controller), in microseconds. It covers every process in
// the cgroup and its descendants, so on a shared machine it isolates the
// benchmark's own processes from everyone else's. Without
// CONFIG_IRQ_TIME_ACCOUNTING, softirq work done while one of those processes
// is current (veth, TCP receive) is included in usage.
type CgroupCPU struct {
	Usage  uint64 `json:"usage_usec"`
	User   uint64 `json:"user_usec"`
	System uint64 `json:"system_usec"`
}

// ReadCgroupCPU reads dir/cpu.stat.
func ReadCgroupCPU(dir string) (CgroupCPU, error) {
	f, err := os.Open(filepath.Join(dir, "cpu.stat"))
	if err != nil {
		return CgroupCPU{}, err
	}
	defer f.Close()
	return ParseCgroupCPU(f)
}

// ReadCgroupCPUAt reads cpu.stat relative to an open cgroup directory. A
// process started by `ip netns exec` sees a fresh /sys without the cgroup
// mount, so the harness hands it the directory as an inherited descriptor.
func ReadCgroupCPUAt(dirfd int) (CgroupCPU, error) {
	fd, err := unix.Openat(dirfd, "cpu.stat", unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return CgroupCPU{}, fmt.Errorf("cpu.stat: %w", err)
	}
	f := os.NewFile(uintptr(fd), "cpu.stat")
	defer f.Close()
	return ParseCgroupCPU(f)
}

// ParseCgroupCPU parses the three always-present cpu.stat keys; other keys
// (nr_periods, throttled_usec, ...) are ignored.
func ParseCgroupCPU(r io.Reader) (CgroupCPU, error) {
	var c CgroupCPU
	found := 0
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) != 2 {
			continue
		}
		var dst *uint64
		switch f[0] {
		case "usage_usec":
			dst = &c.Usage
		case "user_usec":
			dst = &c.User
		case "system_usec":
			dst = &c.System
		default:
			continue
		}
		v, err := strconv.ParseUint(f[1], 10, 64)
		if err != nil {
			return CgroupCPU{}, fmt.Errorf("cpu.stat %s: %w", f[0], err)
		}
		*dst = v
		found++
	}
	if err := sc.Err(); err != nil {
		return CgroupCPU{}, err
	}
	if found != 3 {
		return CgroupCPU{}, fmt.Errorf("cpu.stat: found %d of usage_usec, user_usec, system_usec", found)
	}
	return c, nil
}

// Sub returns the delta since before; counters going backwards are an error.
func (c CgroupCPU) Sub(before CgroupCPU) (CgroupCPU, error) {
	if c.Usage < before.Usage || c.User < before.User || c.System < before.System {
		return CgroupCPU{}, fmt.Errorf("cpu.stat went backwards: %+v -> %+v", before, c)
	}
	return CgroupCPU{Usage: c.Usage - before.Usage, User: c.User - before.User, System: c.System - before.System}, nil
}
