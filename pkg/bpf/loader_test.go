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

// reopenWithOldMap replaces the pinned map spec.Name by one of spec's (older)
// layout, filled by fill, as a previous build would have left it, and opens
// the dataplane objects again: Open must migrate that map and only that one.
// The objects are closed when the test ends.
func reopenWithOldMap(t *testing.T, opts bpf.Options, spec *ebpf.MapSpec, fill func(*ebpf.Map) error) *bpf.Objects {
	t.Helper()
	path := filepath.Join(opts.PinDir, "maps", spec.Name)
	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
	om, err := ebpf.NewMap(spec)
	if err != nil {
		t.Fatal(err)
	}
	defer om.Close()
	if err := fill(om); err != nil {
		t.Fatal(err)
	}
	if err := om.Pin(path); err != nil {
		t.Fatal(err)
	}
	o, err := bpf.Open(opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { o.Close() })
	if !slices.Equal(o.Adoption.Migrated, []string{spec.Name}) {
		t.Fatalf("migrated %v, want only %s", o.Adoption.Migrated, spec.Name)
	}
	return o
}

// TestMigratesChangedLayout pins a km_endpoint with an older value layout
// (fields in another order, no addr and flags) and entries, as a previous
// build would have left it. Open must migrate the entries field by field
// into a map of this build's layout, swap the pin, and leave every other map
// alone.
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

	u32 := &btf.Int{Name: "__u32", Size: 4}
	u8 := &btf.Int{Name: "__u8", Size: 1}
	u16 := &btf.Int{Name: "__u16", Size: 2}
	m := func(name string, typ btf.Type, off uint32) btf.Member {
		return btf.Member{Name: name, Type: typ, Offset: btf.Bits(off * 8)}
	}
	key := &btf.Struct{Name: "km_slot_key", Size: 16, Members: []btf.Member{
		m("svc_id", u32, 0), m("gen", u32, 4), m("family", u8, 8), m("tier", u8, 9), m("pad", u16, 10), m("idx", u32, 12)}}
	old := &btf.Struct{Name: "km_slot", Size: 28, Members: []btf.Member{
		m("cum_weight", u32, 0), m("workload_id", u32, 4), m("target", &btf.Array{Index: u32, Type: u16, Nelems: 10}, 8)}}
	type oldSlot struct {
		Cum, Workload uint32
		Target        [10]uint16
	}
	o = reopenWithOldMap(t, opts, &ebpf.MapSpec{Name: bpf.MapEndpoint, Type: ebpf.Hash, KeySize: 16, ValueSize: 28,
		MaxEntries: 1000, Flags: unix.BPF_F_NO_PREALLOC, Key: key, Value: old}, func(om *ebpf.Map) error {
		for i := uint32(0); i < 100; i++ {
			v := oldSlot{Cum: i + 1, Workload: 1000 + i}
			v.Target[0], v.Target[9] = uint16(i), 0xabcd
			if err := om.Put(bpf.SlotKey{SvcId: 7, Gen: 3, Idx: i}, v); err != nil {
				return err
			}
		}
		return nil
	})
	path := filepath.Join(opts.PinDir, "maps", bpf.MapEndpoint)
	if mapID(t, o.Maps[bpf.MapFrontend]) != frontendID {
		t.Fatal("an unchanged map was replaced")
	}
	pinned, err := ebpf.LoadPinnedMap(path, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer pinned.Close()
	if mapID(t, pinned) != mapID(t, o.Maps[bpf.MapEndpoint]) {
		t.Fatal("the pin does not name the migrated map")
	}
	n := 0
	var k bpf.SlotKey
	var v bpf.Slot
	it := pinned.Iterate()
	for it.Next(&k, &v) {
		n++
		if k.SvcId != 7 || k.Gen != 3 || v.WorkloadId != 1000+k.Idx || v.CumWeight != k.Idx+1 ||
			v.Target[0] != uint16(k.Idx) || v.Target[9] != 0xabcd || v.Addr != [4]uint32{} || v.Flags != 0 {
			t.Fatalf("entry %+v migrated to %+v", k, v)
		}
	}
	if it.Err() != nil || n != 100 {
		t.Fatalf("%d entries migrated (%v), want 100", n, it.Err())
	}
}

// TestMigratesLayout1SvcGen pins a km_svc_gen as layout 1 left it (records
// without the inline slot array). Open migrates the records member by
// member: policy, ports and counts kept, flags 0 (no KM_REC_INLINE) and the
// slot array zero, so the programs keep reading those generations' slots
// from km_endpoint.
func TestMigratesLayout1SvcGen(t *testing.T) {
	testutil.Privileged(t)
	cg := testutil.NewCgroup(t)
	opts := bpftest.Options(t, cg)
	o, err := bpf.Open(opts)
	if err != nil {
		t.Fatal(err)
	}
	o.Close()

	u8 := &btf.Int{Name: "__u8", Size: 1}
	u16 := &btf.Int{Name: "__u16", Size: 2}
	u32 := &btf.Int{Name: "__u32", Size: 4}
	idx := &btf.Int{Name: "__ARRAY_SIZE_TYPE__", Size: 4}
	tiers := &btf.Array{Index: idx, Type: &btf.Array{Index: idx, Type: u32, Nelems: 8}, Nelems: 2}
	m := func(name string, typ btf.Type, off uint32) btf.Member {
		return btf.Member{Name: name, Type: typ, Offset: btf.Bits(off * 8)}
	}
	key := &btf.Struct{Name: "km_svc_key", Size: 8, Members: []btf.Member{m("svc_id", u32, 0), m("gen", u32, 4)}}
	old := &btf.Struct{Name: "km_svc_rec", Size: 152, Members: []btf.Member{
		m("algorithm", u8, 0), m("locality", u8, 1), m("nports", u8, 2), m("flags", u8, 3),
		m("port", &btf.Array{Index: idx, Type: u16, Nelems: 10}, 4), m("count", tiers, 24), m("wsum", tiers, 88)}}
	type oldRec struct {
		Alg, Loc, Nports, Flags uint8
		Port                    [10]uint16
		Count, Wsum             [2][8]uint32
	}
	o = reopenWithOldMap(t, opts, &ebpf.MapSpec{Name: bpf.MapSvcGen, Type: ebpf.Hash, KeySize: 8, ValueSize: 152,
		MaxEntries: 131072, Flags: unix.BPF_F_NO_PREALLOC, Key: key, Value: old}, func(om *ebpf.Map) error {
		for i := uint32(1); i <= 50; i++ {
			v := oldRec{Alg: bpf.AlgWeighted, Loc: bpf.LocFailover, Nports: 2}
			v.Port[0], v.Port[1] = 0x5000, uint16(i)
			v.Count[0][1], v.Count[1][0], v.Wsum[0][1], v.Wsum[1][7] = 3, 17, 30, 1000+i
			if err := om.Put(bpf.SvcKey{SvcId: i, Gen: 2}, v); err != nil {
				return err
			}
		}
		return nil
	})
	n := 0
	var k bpf.SvcKey
	var v bpf.SvcRec
	it := o.Maps[bpf.MapSvcGen].Iterate()
	for it.Next(&k, &v) {
		n++
		if k.Gen != 2 || v.Algorithm != bpf.AlgWeighted || v.Locality != bpf.LocFailover || v.Nports != 2 ||
			v.Port[0] != 0x5000 || v.Port[1] != uint16(k.SvcId) || v.Count[0][1] != 3 || v.Count[1][0] != 17 ||
			v.Wsum[0][1] != 30 || v.Wsum[1][7] != 1000+k.SvcId || v.Flags != 0 || v.Slots != ([bpf.InlineSlots]bpf.Slot{}) {
			t.Fatalf("record %+v migrated to %+v", k, v)
		}
	}
	if it.Err() != nil || n != 50 {
		t.Fatalf("%d records migrated (%v), want 50", n, it.Err())
	}
}
