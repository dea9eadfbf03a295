package bpf

import (
	"encoding/binary"
	"fmt"
	"net/netip"
	"sort"
	"strconv"
	"strings"
	"unsafe"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/btf"
)

// MapDump is the decoded content of one map, for the admin API's /debug/bpf.
// Columns are the key's then the value's fields (BTF names, flattened with
// dots); every row has each column.
type MapDump struct {
	Name       string
	Type       string
	MaxEntries uint32
	Entries    int
	Columns    []string
	Rows       []map[string]string
	Truncated  bool
	Note       string // why rows are missing (e.g. the kernel cannot iterate this map type)
}

// Dump decodes every map of the dataplane using the BTF of the objects that
// define them, so it follows any layout without code of its own. At most
// limit rows are kept per map (0 = 1000); Entries counts them all.
func (o *Objects) Dump(limit int) ([]MapDump, error) {
	if limit <= 0 {
		limit = 1000
	}
	specs, err := mapSpecs()
	if err != nil {
		return nil, err
	}
	names := make([]string, 0, len(o.Maps))
	for n := range o.Maps {
		names = append(names, n)
	}
	sort.Strings(names)
	out := make([]MapDump, 0, len(names))
	for _, n := range names {
		var more func(func(k, v []byte) bool) int
		if n == MapEndpoint && o.Maps[MapSvcGen] != nil {
			more = inlineSlots(o.Maps[MapSvcGen])
		}
		out = append(out, dumpMap(n, o.Maps[n], specs[n], limit, more))
	}
	return out, nil
}

// inlineSlots yields the slots of km_svc_gen's inline records (KM_REC_INLINE)
// as km_endpoint keys and values, so the dump shows every service's endpoints
// under km_endpoint, wherever they are stored. It returns how many it found.
func inlineSlots(gens *ebpf.Map) func(yield func(k, v []byte) bool) int {
	return func(yield func(k, v []byte) bool) int {
		var gk SvcKey
		var rec SvcRec
		n := 0
		it := gens.Iterate()
		for it.Next(&gk, &rec) {
			if rec.Flags&RecInline == 0 {
				continue
			}
			i := 0
			for f := range rec.Count {
				for t := range rec.Count[f] {
					for x := uint32(0); x < rec.Count[f][t] && i < InlineSlots; x++ {
						k := SlotKey{SvcId: gk.SvcId, Gen: gk.Gen, Family: uint8(f), Tier: uint8(t), Idx: x}
						n++
						if !yield(rawBytes(&k), rawBytes(&rec.Slots[i])) {
							return n
						}
						i++
					}
				}
			}
		}
		return n
	}
}

func rawBytes[T any](v *T) []byte {
	return unsafe.Slice((*byte)(unsafe.Pointer(v)), unsafe.Sizeof(*v))
}

func mapSpecs() (map[string]*ebpf.MapSpec, error) {
	specs := map[string]*ebpf.MapSpec{}
	for _, obj := range objects {
		cs, err := obj.load()
		if err != nil {
			return nil, fmt.Errorf("dump: loading spec of %s: %w", obj.name, err)
		}
		for name, ms := range cs.Maps {
			if _, ok := specs[name]; !ok {
				specs[name] = ms
			}
		}
	}
	return specs, nil
}

// dumpMap decodes m. more, if set, supplies further rows shaped like m's
// entries that live elsewhere (km_endpoint: the inline slots of km_svc_gen
// records); a column "inline" then tells them apart.
func dumpMap(name string, m *ebpf.Map, spec *ebpf.MapSpec, limit int, more func(func(k, v []byte) bool) int) MapDump {
	d := MapDump{Name: name, Type: m.Type().String(), MaxEntries: m.MaxEntries()}
	switch m.Type() {
	case ebpf.RingBuf, ebpf.SkStorage, ebpf.ProgramArray, ebpf.ArrayOfMaps, ebpf.HashOfMaps,
		ebpf.PerCPUArray, ebpf.PerCPUHash, ebpf.LRUCPUHash, ebpf.SockHash, ebpf.SockMap:
		d.Note = "contents not dumped for this map type"
		if m.Type() == ebpf.SockHash || m.Type() == ebpf.SockMap {
			d.Entries = countKeys(m)
			d.Note = "socket map: entries counted, sockets not shown"
		}
		return d
	}
	var keyT, valT btf.Type
	if spec != nil {
		keyT, valT = spec.Key, spec.Value
	}
	kcols := columns("", keyT, "key")
	vcols := columns("", valT, "value")
	for _, c := range kcols {
		for _, v := range vcols {
			if c == v {
				kcols, vcols = columns("key.", keyT, "key"), columns("value.", valT, "value")
			}
		}
	}
	d.Columns = append(append([]string{}, kcols...), vcols...)
	if more != nil {
		d.Columns = append(d.Columns, "inline")
	}
	kprefix, vprefix := "", ""
	if len(kcols) > 0 && strings.HasPrefix(kcols[0], "key.") {
		kprefix, vprefix = "key.", "value."
	}
	var k, v []byte
	it := m.Iterate()
	for it.Next(&k, &v) {
		d.Entries++
		if len(d.Rows) >= limit {
			d.Truncated = true
			continue
		}
		row := map[string]string{}
		decode(row, kprefix, "key", keyT, k)
		decode(row, vprefix, "value", valT, v)
		if more != nil {
			row["inline"] = "no"
		}
		d.Rows = append(d.Rows, row)
	}
	if err := it.Err(); err != nil {
		d.Note = "iteration stopped: " + err.Error()
	}
	if more != nil {
		n := more(func(k, v []byte) bool {
			if len(d.Rows) >= limit {
				d.Truncated = true
				return true // keep counting
			}
			row := map[string]string{"inline": "yes"}
			decode(row, kprefix, "key", keyT, k)
			decode(row, vprefix, "value", valT, v)
			d.Rows = append(d.Rows, row)
			return true
		})
		if n > 0 {
			if d.Note != "" {
				d.Note += "; "
			}
			d.Note += fmt.Sprintf("also %d inline slots of km_svc_gen records (inline=yes; not entries of this map)", n)
		}
	}
	return d
}

func countKeys(m *ebpf.Map) int {
	n := 0
	var k []byte
	var next []byte
	var cur any
	for {
		if err := m.NextKey(cur, &next); err != nil {
			return n
		}
		n++
		k = append(k[:0], next...)
		cur = k
		if n > int(m.MaxEntries()) {
			return n
		}
	}
}

// columns lists the flattened field names of t. A scalar or unknown type is
// one column named def.
func columns(prefix string, t btf.Type, def string) []string {
	st, ok := btf.UnderlyingType(t).(*btf.Struct)
	if !ok || t == nil {
		return []string{prefix + def}
	}
	var out []string
	for _, mb := range st.Members {
		if mb.Name == "" || strings.HasPrefix(mb.Name, "pad") || mb.Name == "_" {
			continue
		}
		if sub, ok := btf.UnderlyingType(mb.Type).(*btf.Struct); ok {
			out = append(out, columns(prefix+mb.Name+".", sub, mb.Name)...)
			continue
		}
		if structArray(mb.Type) {
			continue
		}
		out = append(out, prefix+mb.Name)
	}
	return out
}

// structArray reports an array of structs (km_svc_rec's inline slots): no
// column of its own, it would only be hex; Dump shows such slots as rows of
// the map they stand in for.
func structArray(t btf.Type) bool {
	a, ok := btf.UnderlyingType(t).(*btf.Array)
	if !ok {
		return false
	}
	_, ok = btf.UnderlyingType(a.Type).(*btf.Struct)
	return ok
}

// decode writes the fields of b, typed t, into row.
func decode(row map[string]string, prefix, def string, t btf.Type, b []byte) {
	st, ok := btf.UnderlyingType(t).(*btf.Struct)
	if !ok || t == nil {
		row[prefix+def] = scalar(def, t, b)
		return
	}
	for _, mb := range st.Members {
		if mb.Name == "" || strings.HasPrefix(mb.Name, "pad") || mb.Name == "_" || structArray(mb.Type) {
			continue
		}
		off := int(mb.Offset.Bytes())
		size, err := btf.Sizeof(mb.Type)
		if err != nil || off+size > len(b) || mb.BitfieldSize != 0 {
			row[prefix+mb.Name] = "?"
			continue
		}
		field := b[off : off+size]
		if sub, ok := btf.UnderlyingType(mb.Type).(*btf.Struct); ok {
			decode(row, prefix+mb.Name+".", mb.Name, sub, field)
			continue
		}
		row[prefix+mb.Name] = scalar(mb.Name, mb.Type, field)
	}
}

// scalar renders a non-struct field. Address fields (by name: *addr*) of 4 or
// 16 bytes are shown as IPs (IPv4-mapped IPv6 as IPv4).
func scalar(name string, t btf.Type, b []byte) string {
	lname := strings.ToLower(name)
	if strings.Contains(lname, "addr") && (len(b) == 4 || len(b) == 16) {
		if len(b) == 4 {
			return netip.AddrFrom4([4]byte(b)).String()
		}
		a := netip.AddrFrom16([16]byte(b))
		if a.Is4In6() {
			a = a.Unmap()
		}
		return a.String()
	}
	switch u := btf.UnderlyingType(t).(type) {
	case *btf.Int:
		return intString(b, u.Encoding == btf.Signed)
	case *btf.Enum:
		v := uintOf(b)
		for _, ev := range u.Values {
			if ev.Value == v {
				return ev.Name
			}
		}
		return strconv.FormatUint(v, 10)
	case *btf.Array:
		esz, err := btf.Sizeof(u.Type)
		if err != nil || esz == 0 || int(u.Nelems)*esz > len(b) {
			break
		}
		parts := make([]string, 0, u.Nelems)
		allZero := true
		for i := 0; i < int(u.Nelems); i++ {
			e := b[i*esz : (i+1)*esz]
			s := scalar("", u.Type, e)
			if s != "0" {
				allZero = false
			}
			parts = append(parts, s)
		}
		if allZero {
			return "0"
		}
		// Trailing zeros of fixed-size arrays (port lists, tiers) are noise.
		for len(parts) > 1 && parts[len(parts)-1] == "0" {
			parts = parts[:len(parts)-1]
		}
		return "[" + strings.Join(parts, " ") + "]"
	}
	if len(b) <= 8 {
		return intString(b, false)
	}
	return fmt.Sprintf("%x", b)
}

func uintOf(b []byte) uint64 {
	var buf [8]byte
	copy(buf[:], b)
	return binary.LittleEndian.Uint64(buf[:])
}

func intString(b []byte, signed bool) string {
	v := uintOf(b)
	if signed && len(b) < 8 && len(b) > 0 {
		shift := 64 - 8*uint(len(b))
		return strconv.FormatInt(int64(v<<shift)>>shift, 10)
	}
	if signed {
		return strconv.FormatInt(int64(v), 10)
	}
	return strconv.FormatUint(v, 10)
}
