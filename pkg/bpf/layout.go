package bpf

import (
	"errors"
	"fmt"
	"strings"
	"unsafe"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/btf"
	"golang.org/x/sys/unix"
)

// A map's layout is its type, sizes, flags and the BTF shape of its key and
// value: member names, offsets and sizes, recursively. Two maps with the same
// layout string hold interchangeable entries; when they differ, entries are
// converted member by member (copyPlan).

// mapLayout describes a map as its spec (new build) sees it.
func specLayout(ms *ebpf.MapSpec) string {
	return fmt.Sprintf("%s k%d v%d n%d f%#x key=%s val=%s", ms.Type, ms.KeySize, ms.ValueSize,
		ms.MaxEntries, ms.Flags, describe(ms.Key), describe(ms.Value))
}

// pinnedLayout describes a loaded map from its kernel info and BTF.
func pinnedLayout(m *ebpf.Map) (string, btf.Type, btf.Type, error) {
	info, err := m.Info()
	if err != nil {
		return "", nil, nil, err
	}
	key, val, err := mapKV(m)
	if err != nil {
		return "", nil, nil, err
	}
	return fmt.Sprintf("%s k%d v%d n%d f%#x key=%s val=%s", info.Type, info.KeySize, info.ValueSize,
		info.MaxEntries, info.Flags, describe(key), describe(val)), key, val, nil
}

// describe renders t's memory layout; member names are part of it, so a
// renamed or moved field counts as a change. nil (no BTF) renders as "-".
func describe(t btf.Type) string {
	if t == nil {
		return "-"
	}
	var b strings.Builder
	describeTo(&b, t, 0)
	return b.String()
}

func describeTo(b *strings.Builder, t btf.Type, depth int) {
	if depth > 16 {
		b.WriteString("…")
		return
	}
	t = btf.UnderlyingType(t)
	size, _ := btf.Sizeof(t)
	switch v := t.(type) {
	case *btf.Struct, *btf.Union:
		var members []btf.Member
		if s, ok := v.(*btf.Struct); ok {
			members = s.Members
			b.WriteString("struct")
		} else {
			members = v.(*btf.Union).Members
			b.WriteString("union")
		}
		fmt.Fprintf(b, "%d{", size)
		for i, m := range members {
			if i > 0 {
				b.WriteByte(',')
			}
			fmt.Fprintf(b, "%s@%d", m.Name, m.Offset.Bytes())
			if m.BitfieldSize > 0 {
				fmt.Fprintf(b, ":%db", m.BitfieldSize)
			}
			b.WriteByte('=')
			describeTo(b, m.Type, depth+1)
		}
		b.WriteByte('}')
	case *btf.Array:
		fmt.Fprintf(b, "[%d]", v.Nelems)
		describeTo(b, v.Type, depth+1)
	case *btf.Int:
		fmt.Fprintf(b, "i%d", size)
	case *btf.Enum:
		fmt.Fprintf(b, "e%d", size)
	case *btf.Pointer:
		b.WriteString("ptr")
	default:
		fmt.Fprintf(b, "%T%d", t, size)
	}
}

// copyOp copies n bytes from offset from of an old entry to offset to of a new one.
type copyOp struct{ from, to, n uint32 }

// copyPlan converts entries of type old into type new: members are matched by
// name (recursively into nested structs, and element by element into arrays
// of the same length, such as km_svc_rec's inline slots), members only in new
// are zeroed, members only in old are dropped. A member whose type changed
// cannot be converted generically and is an error naming it.
func copyPlan(old, new btf.Type) ([]copyOp, error) {
	if old == nil || new == nil {
		return nil, errors.New("no BTF type information")
	}
	var ops []copyOp
	if err := planInto(&ops, old, new, 0, 0, ""); err != nil {
		return nil, err
	}
	return ops, nil
}

func planInto(ops *[]copyOp, old, new btf.Type, fromOff, toOff uint32, path string) error {
	old, new = btf.UnderlyingType(old), btf.UnderlyingType(new)
	if describe(old) == describe(new) {
		n, err := btf.Sizeof(new)
		if err != nil {
			return err
		}
		*ops = append(*ops, copyOp{fromOff, toOff, uint32(n)})
		return nil
	}
	if oa, ok := old.(*btf.Array); ok {
		if na, ok := new.(*btf.Array); ok && oa.Nelems == na.Nelems {
			osz, err1 := btf.Sizeof(oa.Type)
			nsz, err2 := btf.Sizeof(na.Type)
			if err := errors.Join(err1, err2); err != nil {
				return err
			}
			if _, isStruct := btf.UnderlyingType(na.Type).(*btf.Struct); isStruct {
				for i := uint32(0); i < na.Nelems; i++ {
					if err := planInto(ops, oa.Type, na.Type, fromOff+i*uint32(osz), toOff+i*uint32(nsz), fmt.Sprintf("%s[%d]", path, i)); err != nil {
						return err
					}
				}
				return nil
			}
		}
	}
	os, ok1 := old.(*btf.Struct)
	ns, ok2 := new.(*btf.Struct)
	if !ok1 || !ok2 {
		return fmt.Errorf("member %q changed from %s to %s: needs an explicit conversion", strings.TrimPrefix(path, "."), describe(old), describe(new))
	}
	byName := map[string]btf.Member{}
	for _, m := range os.Members {
		if m.Name == "" || m.BitfieldSize > 0 {
			return fmt.Errorf("struct %s has unnamed or bitfield members: needs an explicit conversion", os.Name)
		}
		byName[m.Name] = m
	}
	for _, m := range ns.Members {
		if m.Name == "" || m.BitfieldSize > 0 {
			return fmt.Errorf("struct %s has unnamed or bitfield members: needs an explicit conversion", ns.Name)
		}
		om, ok := byName[m.Name]
		if !ok {
			continue // new member: stays zero
		}
		if err := planInto(ops, om.Type, m.Type, fromOff+om.Offset.Bytes(), toOff+m.Offset.Bytes(), path+"."+m.Name); err != nil {
			return err
		}
	}
	return nil
}

// apply converts one entry.
func applyPlan(ops []copyOp, old []byte, newSize int) []byte {
	out := make([]byte, newSize)
	for _, op := range ops {
		copy(out[op.to:op.to+op.n], old[op.from:op.from+op.n])
	}
	return out
}

// mapKV returns the BTF key and value types the kernel recorded for m (nil
// when the map was created without BTF). cilium/ebpf's MapInfo does not carry
// the type ids, so this issues BPF_OBJ_GET_INFO_BY_FD itself.
func mapKV(m *ebpf.Map) (key, val btf.Type, err error) {
	// struct bpf_map_info up to btf_value_type_id (include/uapi/linux/bpf.h).
	var info struct {
		Type, ID, KeySize, ValueSize, MaxEntries, MapFlags uint32
		Name                                               [16]byte
		Ifindex, BtfVmlinuxValueTypeID                     uint32
		NetnsDev, NetnsIno                                 uint64
		BtfID, BtfKeyTypeID, BtfValueTypeID, BtfVmlinuxID  uint32
		MapExtra                                           uint64
	}
	attr := struct {
		fd, infoLen uint32
		info        uint64
	}{uint32(m.FD()), uint32(unsafe.Sizeof(info)), uint64(uintptr(unsafe.Pointer(&info)))}
	const bpfObjGetInfoByFD = 15
	_, _, errno := unix.Syscall(unix.SYS_BPF, bpfObjGetInfoByFD, uintptr(unsafe.Pointer(&attr)), unsafe.Sizeof(attr))
	if errno != 0 {
		return nil, nil, fmt.Errorf("BPF_OBJ_GET_INFO_BY_FD: %w", errno)
	}
	if info.BtfID == 0 {
		return nil, nil, nil
	}
	h, err := btf.NewHandleFromID(btf.ID(info.BtfID))
	if err != nil {
		return nil, nil, fmt.Errorf("map BTF: %w", err)
	}
	defer h.Close()
	spec, err := h.Spec(nil)
	if err != nil {
		return nil, nil, fmt.Errorf("map BTF: %w", err)
	}
	if info.BtfKeyTypeID != 0 {
		if key, err = spec.TypeByID(btf.TypeID(info.BtfKeyTypeID)); err != nil {
			return nil, nil, err
		}
	}
	if info.BtfValueTypeID != 0 {
		if val, err = spec.TypeByID(btf.TypeID(info.BtfValueTypeID)); err != nil {
			return nil, nil, err
		}
	}
	return key, val, nil
}
