package dataplane

import (
	"encoding/binary"
	"slices"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/link"

	"github.com/kmesh-go/kmesh/pkg/bpf"
	"github.com/kmesh-go/kmesh/pkg/model"
)

// BenchmarkConnectHookFloor measures what any connect4 hook costs on this
// machine, next to ours, in the same real connect() calls: two extra
// cgroup/connect4 programs are attached to the client's own cgroup (so they
// run before km_connect4, which is attached higher up, and see the VIP):
//
//   - an empty program (return 1): the price of being called at all;
//   - a program doing one array read indexed by the low 16 bits of the
//     destination (a 65 536-entry array like km_svc_active): the cheapest
//     lookup any design could use to recognise a service address;
//   - a program doing one hash lookup that hits, with the key and the map
//     (131 072 entries, no prealloc, 20-byte key) shaped like km_frontend:
//     what a load balancer pays to learn that the destination is a service.
//
// The differences to the empty program are one cold lookup each in a real
// connect(); km_connect4's load-balancing path is a chain of such lookups
// (docs/performance.md).
func BenchmarkConnectHookFloor(b *testing.B) {
	e := newEnv(b)
	e.apply(e.snapshot(model.LoadBalancing{Algorithm: model.LBRandom}))
	stats, err := bpf.EnableStats()
	if err != nil {
		b.Fatal(err)
	}
	defer stats.Close()

	fe, err := ebpf.NewMap(&ebpf.MapSpec{Type: ebpf.Hash, KeySize: 20, ValueSize: 24, MaxEntries: 131072, Flags: 1 /* BPF_F_NO_PREALLOC */})
	if err != nil {
		b.Fatal(err)
	}
	defer fe.Close()
	if err := fe.Put(floorKey(vip4.As4(), port80), make([]byte, 24)); err != nil {
		b.Fatal(err)
	}
	arr, err := ebpf.NewMap(&ebpf.MapSpec{Type: ebpf.Array, KeySize: 4, ValueSize: 4, MaxEntries: 65536})
	if err != nil {
		b.Fatal(err)
	}
	defer arr.Close()
	empty := floorProgram(b, asm.Instructions{asm.Mov.Imm(asm.R0, 1), asm.Return()})
	array := floorProgram(b, asm.Instructions{
		asm.LoadMem(asm.R2, asm.R1, 4, asm.Word), // user_ip4
		asm.RSh.Imm32(asm.R2, 16),                // the last two address bytes (network order)
		asm.StoreMem(asm.RFP, -4, asm.R2, asm.Word),
		asm.LoadMapPtr(asm.R1, arr.FD()),
		asm.Mov.Reg(asm.R2, asm.RFP),
		asm.Add.Imm(asm.R2, -4),
		asm.FnMapLookupElem.Call(),
		asm.JEq.Imm(asm.R0, 0, "out"),
		asm.LoadMem(asm.R0, asm.R0, 0, asm.Word), // read the value, as a user would
		asm.Mov.Imm(asm.R0, 1).WithSymbol("out"),
		asm.Return(),
	})
	lookup := floorProgram(b, asm.Instructions{
		// key = {addr[16] (v4 in the last word), port (network order), proto, pad}
		asm.Mov.Imm(asm.R3, 0),
		asm.StoreMem(asm.RFP, -24, asm.R3, asm.DWord),
		asm.StoreMem(asm.RFP, -16, asm.R3, asm.DWord),
		asm.StoreMem(asm.RFP, -8, asm.R3, asm.DWord),
		asm.LoadMem(asm.R2, asm.R1, 4, asm.Word), // user_ip4
		asm.StoreMem(asm.RFP, -12, asm.R2, asm.Word),
		asm.LoadMem(asm.R2, asm.R1, 24, asm.Word), // user_port
		asm.StoreMem(asm.RFP, -8, asm.R2, asm.Half),
		asm.Mov.Imm(asm.R3, 6), // IPPROTO_TCP
		asm.StoreMem(asm.RFP, -6, asm.R3, asm.Byte),
		asm.LoadMapPtr(asm.R1, fe.FD()),
		asm.Mov.Reg(asm.R2, asm.RFP),
		asm.Add.Imm(asm.R2, -24),
		asm.FnMapLookupElem.Call(),
		// A miss would make the floor cheaper than the hit it stands for.
		asm.JEq.Imm(asm.R0, 0, "miss"),
		asm.Mov.Imm(asm.R0, 1),
		asm.Return(),
		asm.Mov.Imm(asm.R0, 0).WithSymbol("miss"),
		asm.Return(),
	})
	ours := func() bpf.ProgramStats { return progStats(b, e.dp, "km_connect4") }
	floor := func(p *ebpf.Program) bpf.ProgramStats {
		st, err := p.Stats()
		if err != nil {
			b.Fatal(err)
		}
		return bpf.ProgramStats{RunCount: st.RunCount, RunTime: st.Runtime}
	}
	// One floor program at a time, rotating per batch, so each is the first
	// program a connect() runs (the first pays for entering BPF at all).
	progs := []*ebpf.Program{empty, array, lookup}
	costs := make([][]float64, len(progs))
	var lb []float64
	b.ResetTimer()
	for done, round := 0, 0; done < b.N || round < len(progs); round++ {
		n := max(1, min(250, b.N-done)) // every program gets a batch
		done += n
		i := round % len(progs)
		l, err := link.AttachCgroup(link.CgroupOptions{Path: e.client.Path, Attach: ebpf.AttachCGroupInet4Connect, Program: progs[i]})
		if err != nil {
			b.Fatal(err)
		}
		o0, f0 := ours(), floor(progs[i])
		func() {
			defer l.Close()
			// The hash program denies (returns 0) on a miss: a dial
			// error means the floor did not measure a hit.
			e.dialBatch(b, vipAddr(vip4, port80), n)
		}()
		o1, f1 := ours(), floor(progs[i])
		if o1.RunCount-o0.RunCount != uint64(n) || f1.RunCount-f0.RunCount != uint64(n) {
			b.Fatalf("%d connects ran km_connect4 %d times, the floor program %d times", n, o1.RunCount-o0.RunCount, f1.RunCount-f0.RunCount)
		}
		lb = append(lb, nsPerRunBetween(o0, o1))
		costs[i] = append(costs[i], nsPerRunBetween(f0, f1))
	}
	b.StopTimer()
	b.ReportMetric(median(lb), "ns/connect4-lb")
	b.ReportMetric(median(costs[0]), "ns/floor-empty")
	b.ReportMetric(median(costs[1]), "ns/floor-one-array-read")
	b.ReportMetric(median(costs[2]), "ns/floor-one-hash-lookup")
	b.ReportMetric(slices.Min(costs[2]), "ns/floor-one-hash-lookup-best-batch")
}

func floorProgram(b *testing.B, insns asm.Instructions) *ebpf.Program {
	b.Helper()
	p, err := ebpf.NewProgram(&ebpf.ProgramSpec{Type: ebpf.CGroupSockAddr, AttachType: ebpf.AttachCGroupInet4Connect,
		License: "GPL", Instructions: insns})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { p.Close() })
	return p
}

// floorKey is the lookup program's key for a v4 address and port.
func floorKey(a [4]byte, port int) []byte {
	k := make([]byte, 20)
	copy(k[12:16], a[:])
	binary.BigEndian.PutUint16(k[16:18], uint16(port))
	k[18] = 6
	return k
}
