package bpf_test

import (
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/btf"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"

	"github.com/kmesh-go/kmesh/pkg/bpf"
	"github.com/kmesh-go/kmesh/pkg/bpf/bpftest"
	"github.com/kmesh-go/kmesh/pkg/probe"
	"github.com/kmesh-go/kmesh/pkg/testutil"
)

func TestFeatureProbes(t *testing.T) {
	testutil.Privileged(t)
	if err := probe.Check(probe.DualEngine()); err != nil {
		t.Fatalf("this kernel should have every dual-engine feature: %v", err)
	}
	if err := probe.HaveSetRetval(); err != nil {
		t.Fatalf("bpf_set_retval: %v", err)
	}
}

// TestOpenAdoptUninstall: a fresh Open creates and pins everything; a second
// Open adopts the same maps and swaps programs into the same links; Uninstall
// leaves nothing attached or pinned.
func TestOpenAdoptUninstall(t *testing.T) {
	testutil.Privileged(t)
	cg := testutil.NewCgroup(t)
	opts := bpftest.Options(t, cg)

	o1, err := bpf.Open(opts)
	if err != nil {
		t.Fatal(err)
	}
	if !o1.Adoption.Fresh() || len(o1.Adoption.Attached) != len(bpf.AttachedPrograms())-1 {
		t.Fatalf("first open: %+v", o1.Adoption)
	}
	id1 := mapID(t, o1.Maps[bpf.MapFrontend])
	if err := o1.Maps[bpf.MapFrontend].Put(bpf.FrontendKey{Port: 1, Proto: 6}, bpf.FrontendVal{SvcId: 7, Port: 1}); err != nil {
		t.Fatal(err)
	}
	o1.Close()

	for _, p := range bpf.AttachedPrograms() {
		sub := "links"
		if p == "km_sk_msg" {
			sub = "progs"
		}
		if _, err := os.Stat(filepath.Join(opts.PinDir, sub, p)); err != nil {
			t.Fatalf("after close: %v", err)
		}
	}
	if n := attachedCount(t, cg.Path, ebpf.AttachCGroupInet4Connect); n != 1 {
		t.Fatalf("connect4 programs attached after close: %d, want 1", n)
	}

	o2, err := bpf.Open(opts)
	if err != nil {
		t.Fatal(err)
	}
	defer o2.Close()
	if o2.Adoption.Fresh() || len(o2.Adoption.Migrated) != 0 || len(o2.Adoption.Created) != 0 {
		t.Fatalf("second open should reuse every map: %+v", o2.Adoption)
	}
	if !slices.Contains(o2.Adoption.Updated, "km_connect4") || o2.Adoption.FromLayout != bpf.LayoutVersion {
		t.Fatalf("second open: %+v", o2.Adoption)
	}
	if id2 := mapID(t, o2.Maps[bpf.MapFrontend]); id2 != id1 {
		t.Fatalf("frontend map replaced: id %d -> %d", id1, id2)
	}
	var v bpf.FrontendVal
	if err := o2.Maps[bpf.MapFrontend].Lookup(bpf.FrontendKey{Port: 1, Proto: 6}, &v); err != nil || v.SvcId != 7 {
		t.Fatalf("entry lost across reopen: %v %+v", err, v)
	}
	if n := attachedCount(t, cg.Path, ebpf.AttachCGroupInet4Connect); n != 1 {
		t.Fatalf("connect4 programs attached after reopen: %d, want 1", n)
	}
	o2.Close()

	if err := bpf.Uninstall(opts); err != nil {
		t.Fatal(err)
	}
	if n := attachedCount(t, cg.Path, ebpf.AttachCGroupInet4Connect); n != 0 {
		t.Fatalf("connect4 programs attached after uninstall: %d", n)
	}
	if _, err := os.Stat(opts.PinDir); !os.IsNotExist(err) {
		t.Fatalf("pin dir remains: %v", err)
	}
}

func mapID(t *testing.T, m *ebpf.Map) ebpf.MapID {
	t.Helper()
	info, err := m.Info()
	if err != nil {
		t.Fatal(err)
	}
	id, _ := info.ID()
	return id
}

func attachedCount(t *testing.T, cgroup string, at ebpf.AttachType) int {
	t.Helper()
	f, err := os.Open(cgroup)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	res, err := link.QueryPrograms(link.QueryOptions{Target: int(f.Fd()), Attach: at})
	if err != nil {
		t.Fatal(err)
	}
	return len(res.Programs)
}

// TestMigratesChangedLayout pins a km_backend with an older value layout
// (no addr6, fields in another order) and entries, as a previous build
// would have left it. Open must migrate the entries field by field into a
// map of this build's layout, swap the pin, and leave every other map alone.
func TestMigratesChangedLayout(t *testing.T) {
	testutil.Privileged(t)
	cg := testutil.NewCgroup(t)
	opts := bpftest.Options(t, cg)
	o, err := bpf.Open(opts)
	if err != nil {
		t.Fatal(err)
	}
	frontendID := mapID(t, o.Maps[bpf.MapFrontend])
	o.Close()

	u32 := func(name string, off uint32) btf.Member {
		return btf.Member{Name: name, Type: &btf.Int{Name: "__u32", Size: 4}, Offset: btf.Bits(off * 8)}
	}
	old := &btf.Struct{Name: "km_be", Size: 12, Members: []btf.Member{u32("flags", 0), u32("addr4", 4), u32("workload_id", 8)}}
	path := filepath.Join(opts.PinDir, "maps", bpf.MapBackend)
	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
	m, err := ebpf.NewMap(&ebpf.MapSpec{Name: bpf.MapBackend, Type: ebpf.Hash, KeySize: 4, ValueSize: 12, MaxEntries: 1000,
		Flags: unix.BPF_F_NO_PREALLOC, Key: &btf.Int{Name: "__u32", Size: 4}, Value: old})
	if err != nil {
		t.Fatal(err)
	}
	for id := uint32(1); id <= 100; id++ {
		if err := m.Put(id, [3]uint32{bpf.BackendLocal, 0x0100000a + id<<24, 1000 + id}); err != nil {
			t.Fatal(err)
		}
	}
	if err := m.Pin(path); err != nil {
		t.Fatal(err)
	}
	m.Close()

	o, err = bpf.Open(opts)
	if err != nil {
		t.Fatal(err)
	}
	defer o.Close()
	if !slices.Equal(o.Adoption.Migrated, []string{bpf.MapBackend}) {
		t.Fatalf("migrated %v, want only %s", o.Adoption.Migrated, bpf.MapBackend)
	}
	if mapID(t, o.Maps[bpf.MapFrontend]) != frontendID {
		t.Fatal("an unchanged map was replaced")
	}
	pinned, err := ebpf.LoadPinnedMap(path, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer pinned.Close()
	if mapID(t, pinned) != mapID(t, o.Maps[bpf.MapBackend]) {
		t.Fatal("the pin does not name the migrated map")
	}
	n := 0
	var id uint32
	var be bpf.Backend
	it := pinned.Iterate()
	for it.Next(&id, &be) {
		n++
		if be.WorkloadId != 1000+id || be.Addr4 != 0x0100000a+id<<24 || be.Flags != bpf.BackendLocal || be.Addr6 != [4]uint32{} {
			t.Fatalf("entry %d migrated to %+v", id, be)
		}
	}
	if it.Err() != nil || n != 100 {
		t.Fatalf("%d entries migrated (%v), want 100", n, it.Err())
	}
}
