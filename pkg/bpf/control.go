package bpf

import (
	"errors"
	"fmt"
	"io"
	"time"
	"unsafe"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/kmesh-go/kmesh/pkg/bpf/objs"
)

// openControl loads the daemon-side helpers: the km_flip syscall program and
// the map-in-map used as an RCU barrier.
func (o *Objects) openControl() error {
	spec, err := objs.LoadControl()
	if err != nil {
		return err
	}
	coll, err := ebpf.NewCollectionWithOptions(spec, ebpf.CollectionOptions{MapReplacements: replacementsFor(spec, o.Maps)})
	if err != nil {
		return fmt.Errorf("loading control programs: %w", VerifierDetail(err))
	}
	o.flip = coll.Programs["km_flip"]
	delete(coll.Programs, "km_flip")
	coll.Close()

	inner := &ebpf.MapSpec{Type: ebpf.Array, KeySize: 4, ValueSize: 4, MaxEntries: 1}
	if o.inner, err = ebpf.NewMap(inner); err != nil {
		return fmt.Errorf("creating barrier map: %w", err)
	}
	if o.barrier, err = ebpf.NewMap(&ebpf.MapSpec{Name: "km_barrier", Type: ebpf.ArrayOfMaps, KeySize: 4, ValueSize: 4, MaxEntries: 1, InnerMap: inner}); err != nil {
		return fmt.Errorf("creating barrier map: %w", err)
	}
	return nil
}

// Flip makes gen the active generation of service svc with one atomic
// exchange and returns the generation it replaced. Every connect() that
// reads the service after Flip returns uses gen.
func (o *Objects) Flip(svc, gen uint32) (uint32, error) {
	args := FlipArgs{SvcId: svc, Gen: gen}
	buf := unsafe.Slice((*byte)(unsafe.Pointer(&args)), unsafe.Sizeof(args))
	ret, err := o.flip.Run(&ebpf.RunOptions{Context: buf, ContextOut: buf})
	if err != nil {
		return 0, fmt.Errorf("flip service %d to generation %d: %w", svc, gen, err)
	}
	if ret != 0 {
		return 0, fmt.Errorf("flip service %d: id out of range", svc)
	}
	return args.OldGen, nil
}

// Barrier returns once every BPF program that was running when it was called
// has finished: updating a map-in-map makes the kernel wait for an RCU grace
// period (the same trick the kernel's selftests use). After it, nothing can
// still read a generation that was retired before the call.
func (o *Objects) Barrier() error {
	if err := o.barrier.Put(uint32(0), o.inner); err != nil {
		return fmt.Errorf("rcu barrier: %w", err)
	}
	return nil
}

// Stats sums the per-CPU km_stats counters.
func (o *Objects) Stats() (map[Stat]uint64, error) {
	out := map[Stat]uint64{}
	m := o.Maps[MapStats]
	for s := Stat(0); s < StatMax; s++ {
		var per []uint64
		if err := m.Lookup(uint32(s), &per); err != nil {
			return nil, err
		}
		var sum uint64
		for _, v := range per {
			sum += v
		}
		out[s] = sum
	}
	return out, nil
}

// ProgramStats is a program's cumulative run count and run time, as counted
// by the kernel while BPF statistics are enabled (EnableStats).
type ProgramStats struct {
	Name     string
	RunCount uint64
	RunTime  time.Duration
}

// NsPerRun is the mean cost of one run.
func (s ProgramStats) NsPerRun() float64 {
	if s.RunCount == 0 {
		return 0
	}
	return float64(s.RunTime.Nanoseconds()) / float64(s.RunCount)
}

// ProgramStats returns the counters of every attached program.
func (o *Objects) ProgramStats() ([]ProgramStats, error) {
	var out []ProgramStats
	for _, name := range AttachedPrograms() {
		p := o.Programs[name]
		if p == nil {
			continue
		}
		st, err := p.Stats()
		if err != nil {
			return nil, fmt.Errorf("stats of %s: %w", name, err)
		}
		out = append(out, ProgramStats{Name: name, RunCount: st.RunCount, RunTime: st.Runtime})
	}
	return out, nil
}

// EnableStats turns on the kernel's BPF run-time accounting (as the
// kernel.bpf_stats_enabled sysctl does) until the returned Closer is closed.
// It costs two clock reads per program run.
func EnableStats() (io.Closer, error) {
	c, err := ebpf.EnableStats(uint32(unix.BPF_STATS_RUN_TIME))
	if err != nil {
		if errors.Is(err, ebpf.ErrNotSupported) {
			return nil, fmt.Errorf("BPF run-time statistics are not supported by this kernel: %w", err)
		}
		return nil, err
	}
	return c, nil
}
