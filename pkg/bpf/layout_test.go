package bpf

import (
	"strings"
	"testing"

	"github.com/cilium/ebpf/btf"
)

func u32(name string, off uint32) btf.Member {
	return btf.Member{Name: name, Type: &btf.Int{Name: "__u32", Size: 4}, Offset: btf.Bits(off * 8)}
}

func TestCopyPlanByName(t *testing.T) {
	addr := &btf.Array{Type: &btf.Int{Name: "__u32", Size: 4}, Nelems: 4}
	old := &btf.Struct{Name: "km_be", Size: 28, Members: []btf.Member{
		u32("workload_id", 0), u32("addr4", 4), {Name: "addr6", Type: addr, Offset: btf.Bits(8 * 8)}, u32("flags", 24)}}
	// A field inserted in the middle moves everything after it.
	next := &btf.Struct{Name: "km_be", Size: 32, Members: []btf.Member{
		u32("workload_id", 0), u32("next_marker", 4), u32("addr4", 8), {Name: "addr6", Type: addr, Offset: btf.Bits(12 * 8)}, u32("flags", 28)}}
	ops, err := copyPlan(old, next)
	if err != nil {
		t.Fatal(err)
	}
	in := make([]byte, 28)
	for i := range in {
		in[i] = byte(i + 1)
	}
	out := applyPlan(ops, in, 32)
	want := append(append(append([]byte{1, 2, 3, 4}, 0, 0, 0, 0), in[4:24]...), in[24:28]...)
	if string(out) != string(want) {
		t.Fatalf("migrated entry\n got %v\nwant %v", out, want)
	}
	// And back (a downgrade drops the new field).
	ops, err = copyPlan(next, old)
	if err != nil {
		t.Fatal(err)
	}
	if back := applyPlan(ops, out, 28); string(back) != string(in) {
		t.Fatalf("round trip: %v != %v", back, in)
	}
	// A field whose type changed cannot be converted generically.
	changed := &btf.Struct{Name: "km_be", Size: 28, Members: []btf.Member{
		u32("workload_id", 0), u32("addr4", 4), {Name: "addr6", Type: &btf.Array{Type: &btf.Int{Size: 1}, Nelems: 16}, Offset: btf.Bits(8 * 8)}, u32("flags", 24)}}
	if _, err := copyPlan(old, changed); err == nil || !strings.Contains(err.Error(), `"addr6"`) {
		t.Fatalf("type change: %v, want an error naming addr6", err)
	}
	// Identical layouts copy in one piece.
	ops, _ = copyPlan(old, old)
	if len(ops) != 1 || ops[0] != (copyOp{0, 0, 28}) {
		t.Fatalf("identical: %v", ops)
	}
}

// An array of structs whose element layout changed (km_svc_rec's inline
// km_slot array in the layout-next build) is converted element by element.
func TestCopyPlanArrayOfStructs(t *testing.T) {
	el := &btf.Struct{Name: "km_slot", Size: 8, Members: []btf.Member{u32("workload_id", 0), u32("flags", 4)}}
	elNext := &btf.Struct{Name: "km_slot", Size: 12, Members: []btf.Member{u32("workload_id", 0), u32("next_marker", 4), u32("flags", 8)}}
	rec := func(e *btf.Struct) *btf.Struct {
		return &btf.Struct{Name: "km_svc_rec", Size: 4 + 3*e.Size, Members: []btf.Member{u32("count", 0),
			{Name: "slots", Type: &btf.Array{Index: &btf.Int{Size: 4}, Type: e, Nelems: 3}, Offset: btf.Bits(4 * 8)}}}
	}
	ops, err := copyPlan(rec(el), rec(elNext))
	if err != nil {
		t.Fatal(err)
	}
	in := make([]byte, 28)
	for i := range in {
		in[i] = byte(i + 1)
	}
	out := applyPlan(ops, in, 40)
	want := []byte{1, 2, 3, 4}
	for i := 0; i < 3; i++ {
		e := in[4+8*i:]
		want = append(append(append(want, e[0:4]...), 0, 0, 0, 0), e[4:8]...)
	}
	if string(out) != string(want) {
		t.Fatalf("migrated entry\n got %v\nwant %v", out, want)
	}
	// Arrays of another length are a type change.
	short := rec(elNext)
	short.Members[1].Type = &btf.Array{Index: &btf.Int{Size: 4}, Type: elNext, Nelems: 2}
	if _, err := copyPlan(rec(el), short); err == nil || !strings.Contains(err.Error(), `"slots"`) {
		t.Fatalf("length change: %v, want an error naming slots", err)
	}
}

func TestDescribeNamesFields(t *testing.T) {
	a := &btf.Struct{Name: "s", Size: 8, Members: []btf.Member{u32("a", 0), u32("b", 4)}}
	b := &btf.Struct{Name: "s", Size: 8, Members: []btf.Member{u32("b", 0), u32("a", 4)}}
	if describe(a) == describe(b) {
		t.Fatal("swapped fields must describe differently")
	}
	if describe(nil) != "-" {
		t.Fatal(describe(nil))
	}
}
