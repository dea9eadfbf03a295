// Package procstat reads the aggregate CPU counters of /proc/stat, so a
// benchmark can charge every CPU cycle spent during a measured window to the
// scenario under test, including kernel softirq work that no process owns
// (veth and TCP receive processing, BPF programs run from the network stack).
package procstat

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
)

// UserHZ is the unit of /proc/stat (USER_HZ). It is 100 on every Linux ABI
// Go supports; the kernel converts to it regardless of CONFIG_HZ.
const UserHZ = 100

// Sample is the "cpu" line of /proc/stat: the sum over all CPUs, in ticks of
// 1/UserHZ seconds since boot.
type Sample struct {
	User    uint64 `json:"user"`
	Nice    uint64 `json:"nice"`
	System  uint64 `json:"system"`
	Idle    uint64 `json:"idle"`
	IOWait  uint64 `json:"iowait"`
	IRQ     uint64 `json:"irq"`
	SoftIRQ uint64 `json:"softirq"`
	Steal   uint64 `json:"steal"`
}

// Read samples /proc/stat.
func Read() (Sample, error) {
	f, err := os.Open("/proc/stat")
	if err != nil {
		return Sample{}, err
	}
	defer f.Close()
	return Parse(f)
}

// Parse reads the aggregate "cpu" line. Fields after steal (guest, guest_nice)
// are already included in user and nice and are ignored; kernels older than
// 2.6.11 with fewer than 8 fields are rejected rather than guessed.
func Parse(r io.Reader) (Sample, error) {
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) == 0 || fields[0] != "cpu" {
			continue
		}
		if len(fields) < 9 {
			return Sample{}, fmt.Errorf("procstat: cpu line has %d counters, need at least 8: %q", len(fields)-1, sc.Text())
		}
		var v [8]uint64
		for i := range v {
			n, err := strconv.ParseUint(fields[i+1], 10, 64)
			if err != nil {
				return Sample{}, fmt.Errorf("procstat: counter %d of the cpu line: %w", i+1, err)
			}
			v[i] = n
		}
		return Sample{User: v[0], Nice: v[1], System: v[2], Idle: v[3], IOWait: v[4], IRQ: v[5], SoftIRQ: v[6], Steal: v[7]}, nil
	}
	if err := sc.Err(); err != nil {
		return Sample{}, err
	}
	return Sample{}, errors.New("procstat: no aggregate cpu line")
}

// Sub returns the ticks spent between before and s. Counters are monotonic;
// a counter that went backwards (a bad pair of samples) is an error, not a
// huge unsigned wrap-around.
func (s Sample) Sub(before Sample) (Sample, error) {
	var d Sample
	pairs := []struct {
		name     string
		out      *uint64
		now, was uint64
	}{
		{"user", &d.User, s.User, before.User},
		{"nice", &d.Nice, s.Nice, before.Nice},
		{"system", &d.System, s.System, before.System},
		{"idle", &d.Idle, s.Idle, before.Idle},
		{"iowait", &d.IOWait, s.IOWait, before.IOWait},
		{"irq", &d.IRQ, s.IRQ, before.IRQ},
		{"softirq", &d.SoftIRQ, s.SoftIRQ, before.SoftIRQ},
		{"steal", &d.Steal, s.Steal, before.Steal},
	}
	for _, p := range pairs {
		if p.now < p.was {
			return Sample{}, fmt.Errorf("procstat: %s went backwards (%d -> %d)", p.name, p.was, p.now)
		}
		*p.out = p.now - p.was
	}
	return d, nil
}

// CPU is a delta expressed in CPU-seconds.
type CPU struct {
	User    float64 `json:"user_s"`    // user + nice
	System  float64 `json:"system_s"`  // kernel on behalf of processes
	SoftIRQ float64 `json:"softirq_s"` // softirq (network receive, timers)
	IRQ     float64 `json:"irq_s"`
	Idle    float64 `json:"idle_s"` // idle + iowait
	Steal   float64 `json:"steal_s"`
}

// Busy is the CPU time the machine actually worked: user, system, softirq and
// irq. Steal is time the hypervisor gave to someone else and is not counted.
func (c CPU) Busy() float64 { return c.User + c.System + c.SoftIRQ + c.IRQ }

// Seconds converts a delta to CPU-seconds.
func (s Sample) Seconds() CPU {
	t := func(v uint64) float64 { return float64(v) / UserHZ }
	return CPU{
		User:    t(s.User + s.Nice),
		System:  t(s.System),
		SoftIRQ: t(s.SoftIRQ),
		IRQ:     t(s.IRQ),
		Idle:    t(s.Idle + s.IOWait),
		Steal:   t(s.Steal),
	}
}
