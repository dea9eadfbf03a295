package bpf

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/fnv"
	"io/fs"
	"log/slog"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/btf"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"

	"github.com/kmesh-go/kmesh/pkg/probe"
	"github.com/kmesh-go/kmesh/pkg/version"
)

// Options say where the dataplane lives. The zero value pins under
// /sys/fs/bpf/kmesh and attaches to the root of the cgroup2 mount.
type Options struct {
	// BPFFS is the bpffs mount (mounted if needed). Default /sys/fs/bpf.
	BPFFS string
	// PinDir is the pin directory: relative to BPFFS, or absolute inside a
	// bpffs. Default "kmesh".
	PinDir string
	// Cgroup2 overrides the cgroup v2 mount (autodetected otherwise).
	Cgroup2 string
	// Cgroup is the cgroup the programs attach to: absolute, or relative to
	// the cgroup2 mount. Default: the mount's root, so every process on the
	// node is seen and enrolment (maps) decides which ones are meshed.
	Cgroup string
	// SetRetval is the outcome of the bpf_set_retval feature probe: when
	// false a refused connect() fails with EPERM instead of ECONNREFUSED.
	// nil means probe it.
	SetRetval *bool
	Logger    *slog.Logger
}

// Paths resolves the options into absolute paths.
func (o Options) Paths() (pinDir, cgroupDir string, err error) {
	bpffs := o.BPFFS
	if bpffs == "" {
		bpffs = probe.DefaultBPFFS
	}
	pinDir = o.PinDir
	if pinDir == "" {
		pinDir = "kmesh"
	}
	if !filepath.IsAbs(pinDir) {
		pinDir = filepath.Join(bpffs, pinDir)
	}
	mount, err := probe.Cgroup2Mount(o.Cgroup2)
	if err != nil {
		return "", "", err
	}
	cgroupDir = o.Cgroup
	if cgroupDir == "" {
		cgroupDir = mount
	} else if !filepath.IsAbs(cgroupDir) {
		cgroupDir = filepath.Join(mount, cgroupDir)
	}
	return pinDir, cgroupDir, nil
}

// Objects is an opened dataplane: its maps and programs. Closing it releases
// this process's handles only; the pinned state keeps serving.
type Objects struct {
	// Maps by name (MapFrontend, ...).
	Maps map[string]*ebpf.Map
	// Programs by name (attached ones, see AttachedPrograms).
	Programs map[string]*ebpf.Program
	// Adoption describes what Open found and did.
	Adoption Adoption

	PinDir    string
	CgroupDir string

	flip    *ebpf.Program
	barrier *ebpf.Map
	inner   *ebpf.Map
	links   map[string]link.Link
	log     *slog.Logger
}

// Adoption reports how Open treated pre-existing pinned state.
type Adoption struct {
	// FromLayout is the layout version recorded by the previous daemon (0 for
	// a fresh install).
	FromLayout uint32
	FromBuild  string
	// Reused, Created and Migrated list maps by name.
	Reused, Created, Migrated []string
	// Updated lists programs replaced in place (link update); Attached the
	// ones newly attached.
	Updated, Attached []string
}

// Fresh reports whether there was no pinned state to adopt.
func (a Adoption) Fresh() bool { return len(a.Reused)+len(a.Migrated) == 0 }

// Open creates or adopts the pinned dataplane and attaches its programs. On a
// fresh node it creates and pins everything; with pinned state it reuses maps
// whose layout is unchanged, migrates maps whose layout changed into new ones,
// loads the new programs against the final maps and swaps them into the
// existing links (atomic per hook). The old maps are released only after the
// new programs are live, so no connect() ever runs against an empty map.
func Open(opts Options) (obj *Objects, err error) {
	log := opts.Logger
	if log == nil {
		log = slog.Default()
	}
	pinDir, cgroupDir, err := opts.Paths()
	if err != nil {
		return nil, err
	}
	bpffs := opts.BPFFS
	if bpffs == "" {
		bpffs = probe.DefaultBPFFS
	}
	if err := probe.EnsureBPFFS(bpffs); err != nil {
		return nil, err
	}
	for _, d := range []string{"maps", "links", "progs"} {
		if err := os.MkdirAll(filepath.Join(pinDir, d), 0o700); err != nil {
			return nil, fmt.Errorf("creating pin directory: %w", err)
		}
	}
	setRetval := opts.SetRetval
	if setRetval == nil {
		ok := probe.HaveSetRetval() == nil
		setRetval = &ok
	}
	sockopsCgroup := probe.HaveSockopsCurrentCgroup() == nil

	o := &Objects{
		Maps: map[string]*ebpf.Map{}, Programs: map[string]*ebpf.Program{}, links: map[string]link.Link{},
		PinDir: pinDir, CgroupDir: cgroupDir, log: log,
	}
	defer func() {
		if err != nil {
			o.Close()
		}
	}()

	specs := map[string]*ebpf.CollectionSpec{}
	for _, ob := range objects {
		s, err := ob.load()
		if err != nil {
			return nil, err
		}
		specs[ob.name] = s
	}
	mapSpecs, err := canonicalMaps(specs)
	if err != nil {
		return nil, err
	}

	record, err := openLayoutRecord(pinDir)
	if err != nil {
		return nil, err
	}
	defer record.m.Close()
	prevVersion := record.version
	o.Adoption.FromLayout, o.Adoption.FromBuild = record.version, record.build

	// Maps: reuse, create, or migrate into a staged replacement.
	var staged []stagedMap
	defer func() {
		for _, s := range staged {
			s.old.Close()
			if err != nil {
				s.new.Close()
			}
		}
	}()
	for _, name := range slices.Sorted(maps.Keys(mapSpecs)) {
		ms := mapSpecs[name]
		path := filepath.Join(pinDir, "maps", name)
		pinned, lerr := ebpf.LoadPinnedMap(path, nil)
		switch {
		case errors.Is(lerr, fs.ErrNotExist):
			m, err := ebpf.NewMap(ms)
			if err != nil {
				return nil, fmt.Errorf("creating map %s: %w", name, err)
			}
			if err := m.Pin(path); err != nil {
				m.Close()
				return nil, fmt.Errorf("pinning map %s: %w", name, err)
			}
			o.Maps[name] = m
			o.Adoption.Created = append(o.Adoption.Created, name)
		case lerr != nil:
			return nil, fmt.Errorf("opening pinned map %s: %w", path, lerr)
		default:
			m, migrated, err := adoptMap(name, ms, pinned, record.mapHash[name], log)
			if err != nil {
				pinned.Close()
				return nil, err
			}
			o.Maps[name] = m
			if migrated {
				staged = append(staged, stagedMap{name: name, old: pinned, new: m})
				o.Adoption.Migrated = append(o.Adoption.Migrated, name)
			} else {
				o.Adoption.Reused = append(o.Adoption.Reused, name)
			}
		}
	}

	// Programs, loaded against the final maps.
	for _, ob := range objects {
		spec := specs[ob.name]
		for name, on := range map[string]bool{"km_has_set_retval": *setRetval, "km_sockops_has_cgroup": sockopsCgroup} {
			if v, ok := spec.Variables[name]; ok {
				if err := v.Set(boolU32(on)); err != nil {
					return nil, err
				}
			}
		}
		coll, err := ebpf.NewCollectionWithOptions(spec, ebpf.CollectionOptions{MapReplacements: replacementsFor(spec, o.Maps)})
		if err != nil {
			return nil, fmt.Errorf("loading %s programs: %w", ob.name, VerifierDetail(err))
		}
		for name, p := range coll.Programs {
			o.Programs[name] = p
		}
		coll.Programs = nil
		coll.Close() // maps are held by o.Maps (replacements are clones)
	}

	// Attach, or swap into the existing links.
	cgID, err := cgroupID(cgroupDir)
	if err != nil {
		return nil, fmt.Errorf("attach cgroup %s: %w", cgroupDir, err)
	}
	for _, ob := range objects {
		for _, ap := range ob.progs {
			prog := o.Programs[ap.prog]
			if ap.sockhash {
				if err := o.attachSockhash(ap, prog); err != nil {
					return nil, err
				}
				continue
			}
			updated, err := o.attachCgroup(ap, prog, cgroupDir, cgID)
			if err != nil {
				return nil, err
			}
			if updated {
				o.Adoption.Updated = append(o.Adoption.Updated, ap.prog)
			} else {
				o.Adoption.Attached = append(o.Adoption.Attached, ap.prog)
			}
		}
	}

	// The new programs are live: move the migrated maps onto the canonical
	// pins (rename replaces atomically); the old maps die with their last
	// program reference.
	for _, s := range staged {
		path := filepath.Join(pinDir, "maps", s.name)
		if err := replacePin(s.new.Pin, path); err != nil {
			return nil, fmt.Errorf("pinning migrated map %s: %w", s.name, err)
		}
	}
	if err := record.write(mapSpecs); err != nil {
		return nil, err
	}

	if err := o.openControl(); err != nil {
		return nil, err
	}
	log.Info("dataplane objects ready", "pin_dir", pinDir, "cgroup", cgroupDir,
		"layout", LayoutVersion, "previous_layout", prevVersion, "created", len(o.Adoption.Created),
		"reused", len(o.Adoption.Reused), "migrated", o.Adoption.Migrated, "programs_updated", len(o.Adoption.Updated))
	return o, nil
}

type stagedMap struct {
	name     string
	old, new *ebpf.Map
}

// canonicalMaps returns the map specs shared by all objects, checking that
// every object agrees on them (they all include bpf/lib/maps.h).
func canonicalMaps(specs map[string]*ebpf.CollectionSpec) (map[string]*ebpf.MapSpec, error) {
	out := map[string]*ebpf.MapSpec{}
	for _, oname := range slices.Sorted(maps.Keys(specs)) {
		for name, ms := range specs[oname].Maps {
			if strings.HasPrefix(name, ".") {
				continue // per-object data sections (.rodata)
			}
			if prev, ok := out[name]; ok {
				if specLayout(prev) != specLayout(ms) {
					return nil, fmt.Errorf("objects disagree on map %s: %s vs %s", name, specLayout(prev), specLayout(ms))
				}
				continue
			}
			out[name] = ms
		}
	}
	return out, nil
}

func replacementsFor(spec *ebpf.CollectionSpec, maps map[string]*ebpf.Map) map[string]*ebpf.Map {
	r := map[string]*ebpf.Map{}
	for name := range spec.Maps {
		if m, ok := maps[name]; ok {
			r[name] = m
		}
	}
	return r
}

// adoptMap returns the pinned map when its layout matches the spec, or a new
// map holding its converted entries (migrated=true).
func adoptMap(name string, ms *ebpf.MapSpec, pinned *ebpf.Map, recorded uint64, log *slog.Logger) (*ebpf.Map, bool, error) {
	oldLayout, oldKey, oldVal, err := pinnedLayout(pinned)
	if err != nil {
		return nil, false, fmt.Errorf("reading layout of pinned map %s: %w", name, err)
	}
	newLayout := specLayout(ms)
	// Same layout: type, sizes, limits and flags match; the member layout
	// read back from the kernel matches where the kernel kept BTF (sockhash
	// and ringbuf maps keep none); and the layout record agrees.
	same := ms.Compatible(pinned) == nil
	if oldKey != nil || oldVal != nil {
		same = same && oldLayout == newLayout
	}
	if recorded != 0 {
		same = same && recorded == layoutHash(newLayout)
		oldLayout = fmt.Sprintf("%s (recorded hash %#x)", oldLayout, recorded)
	}
	if same {
		return pinned, false, nil
	}
	log.Info("map layout changed: migrating", "map", name, "from", oldLayout, "to", newLayout)
	switch ms.Type {
	case ebpf.SkStorage, ebpf.SockHash:
		return nil, false, fmt.Errorf("map %s changed layout (%s -> %s), but socket-bound maps cannot be "+
			"migrated from userspace; keep their layout stable (add a new map instead) or run `kmeshd uninstall` "+
			"first, which drops established same-node acceleration", name, oldLayout, newLayout)
	}
	m, err := ebpf.NewMap(ms)
	if err != nil {
		return nil, false, fmt.Errorf("creating migrated map %s: %w", name, err)
	}
	switch ms.Type {
	case ebpf.RingBuf, ebpf.PerCPUArray, ebpf.PerCPUHash:
		// Event streams and per-CPU counters start afresh.
		return m, true, nil
	}
	if err := migrateEntries(name, pinned, m, oldKey, ms.Key, oldVal, ms.Value, int(ms.KeySize), int(ms.ValueSize)); err != nil {
		m.Close()
		return nil, false, err
	}
	return m, true, nil
}

func migrateEntries(name string, from, to *ebpf.Map, oldKey, newKey, oldVal, newVal btf.Type, keySize, valSize int) error {
	kplan, err := copyPlan(oldKey, newKey)
	if err != nil {
		return fmt.Errorf("migrating map %s key: %w", name, err)
	}
	vplan, err := copyPlan(oldVal, newVal)
	if err != nil {
		return fmt.Errorf("migrating map %s value: %w", name, err)
	}
	var k, v []byte
	it := from.Iterate()
	n := 0
	for it.Next(&k, &v) {
		if err := to.Put(applyPlan(kplan, k, keySize), applyPlan(vplan, v, valSize)); err != nil {
			return fmt.Errorf("migrating map %s entry %d: %w (the new map may be smaller than the old one's contents)", name, n, err)
		}
		n++
	}
	if err := it.Err(); err != nil {
		return fmt.Errorf("migrating map %s: %w", name, err)
	}
	return nil
}

// attachCgroup swaps prog into the pinned link of its hook, or attaches and
// pins a new link. A pinned link on another cgroup is replaced by one on the
// requested cgroup (attach first, then drop the old one).
func (o *Objects) attachCgroup(ap attachPoint, prog *ebpf.Program, cgroupDir string, cgID uint64) (updated bool, err error) {
	path := filepath.Join(o.PinDir, "links", ap.prog)
	old, err := link.LoadPinnedLink(path, nil)
	if err == nil {
		info, ierr := old.Info()
		if ierr == nil {
			if cg := info.Cgroup(); cg != nil && cg.CgroupId == cgID {
				if err := old.Update(prog); err != nil {
					old.Close()
					return false, fmt.Errorf("replacing program %s in its link: %w", ap.prog, err)
				}
				o.links[ap.prog] = old
				return true, nil
			}
		}
		defer old.Close()
	} else if !errors.Is(err, fs.ErrNotExist) {
		return false, fmt.Errorf("opening pinned link %s: %w", path, err)
	}
	l, err := link.AttachCgroup(link.CgroupOptions{Path: cgroupDir, Attach: ap.attach, Program: prog})
	if err != nil {
		return false, fmt.Errorf("attaching %s to cgroup %s: %w", ap.prog, cgroupDir, err)
	}
	if err := replacePin(l.Pin, path); err != nil {
		l.Close()
		return false, fmt.Errorf("pinning link %s: %w (kmesh needs bpf_link support for cgroup programs)", ap.prog, err)
	}
	o.links[ap.prog] = l
	return false, nil
}

// attachSockhash attaches an sk_msg program to km_sockhash, replacing the one
// attached before (sockets already in the map keep the program they got).
func (o *Objects) attachSockhash(ap attachPoint, prog *ebpf.Program) error {
	sh := o.Maps[MapSockhash]
	if err := link.RawAttachProgram(link.RawAttachProgramOptions{Target: sh.FD(), Program: prog, Attach: ap.attach}); err != nil {
		return fmt.Errorf("attaching %s to %s: %w", ap.prog, MapSockhash, err)
	}
	path := filepath.Join(o.PinDir, "progs", ap.prog)
	if err := replacePin(prog.Pin, path); err != nil {
		return fmt.Errorf("pinning %s: %w", ap.prog, err)
	}
	return nil
}

// replacePin pins via pin at a temporary name and renames it over path, so
// path always names a live object.
func replacePin(pin func(string) error, path string) error {
	tmp := path + "_new" // bpffs reserves names with a dot
	os.Remove(tmp)
	if err := pin(tmp); err != nil {
		return err
	}
	if err := os.Rename(tmp, path); err != nil {
		os.Remove(tmp)
		return err
	}
	return nil
}

func cgroupID(dir string) (uint64, error) {
	var st unix.Stat_t
	if err := unix.Stat(dir, &st); err != nil {
		return 0, err
	}
	return st.Ino, nil
}

// Close releases this process's handles. Pinned maps, links and programs stay.
func (o *Objects) Close() error {
	for _, l := range o.links {
		l.Close()
	}
	for _, p := range o.Programs {
		p.Close()
	}
	for _, m := range o.Maps {
		m.Close()
	}
	for _, c := range []interface{ Close() error }{o.flip, o.barrier, o.inner} {
		if c != nil && !isNilCloser(c) {
			c.Close()
		}
	}
	return nil
}

func isNilCloser(c interface{ Close() error }) bool {
	switch v := c.(type) {
	case *ebpf.Program:
		return v == nil
	case *ebpf.Map:
		return v == nil
	}
	return false
}

// Uninstall detaches and removes everything under the pin directory: links
// (detaching the cgroup programs), the sk_msg program, every map and the
// directory itself. Absent state is not an error.
func Uninstall(opts Options) error {
	pinDir, _, err := opts.Paths()
	if err != nil {
		return err
	}
	if _, err := os.Stat(pinDir); errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	var errs []error
	// sk_msg: detach from the sockhash explicitly, then drop the pins.
	if p, err := ebpf.LoadPinnedProgram(filepath.Join(pinDir, "progs", "km_sk_msg"), nil); err == nil {
		if m, err := ebpf.LoadPinnedMap(filepath.Join(pinDir, "maps", MapSockhash), nil); err == nil {
			link.RawDetachProgram(link.RawDetachProgramOptions{Target: m.FD(), Program: p, Attach: ebpf.AttachSkMsgVerdict})
			m.Close()
		}
		p.Close()
	}
	// Links: detach explicitly (BPF_LINK_DETACH); dropping the pin alone
	// releases the link asynchronously.
	if ents, err := os.ReadDir(filepath.Join(pinDir, "links")); err == nil {
		for _, e := range ents {
			l, err := link.LoadPinnedLink(filepath.Join(pinDir, "links", e.Name()), nil)
			if err != nil {
				errs = append(errs, fmt.Errorf("opening link %s: %w", e.Name(), err))
				continue
			}
			if err := l.Detach(); err != nil {
				errs = append(errs, fmt.Errorf("detaching %s: %w", e.Name(), err))
			}
			l.Close()
		}
	}
	for _, sub := range []string{"links", "progs", "maps"} {
		dir := filepath.Join(pinDir, sub)
		ents, err := os.ReadDir(dir)
		if err != nil && !errors.Is(err, fs.ErrNotExist) {
			errs = append(errs, err)
			continue
		}
		for _, e := range ents {
			if err := os.Remove(filepath.Join(dir, e.Name())); err != nil {
				errs = append(errs, err)
			}
		}
		if err := os.Remove(dir); err != nil && !errors.Is(err, fs.ErrNotExist) {
			errs = append(errs, err)
		}
	}
	if err := os.Remove(pinDir); err != nil && !errors.Is(err, fs.ErrNotExist) {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// ---- layout record --------------------------------------------------------

// The layout record (pinned map km_layout) says which layout the pinned maps
// have: per map the hash of its layout string, and under "@build" the layout
// version, the writing build and the time.
const (
	layoutKeySize   = 16
	layoutValueSize = 64
	layoutBuildKey  = "@build"
)

type layoutRecord struct {
	m       *ebpf.Map
	version uint32
	build   string
	mapHash map[string]uint64
}

func layoutHash(layout string) uint64 {
	h := fnv.New64a()
	h.Write([]byte(layout))
	return h.Sum64()
}

func layoutKey(name string) []byte {
	k := make([]byte, layoutKeySize)
	copy(k, name)
	return k
}

// openLayoutRecord opens (or creates) the pinned layout record and reads what
// the previous daemon wrote.
func openLayoutRecord(pinDir string) (*layoutRecord, error) {
	path := filepath.Join(pinDir, "maps", MapLayout)
	r := &layoutRecord{mapHash: map[string]uint64{}}
	m, err := ebpf.LoadPinnedMap(path, nil)
	if errors.Is(err, fs.ErrNotExist) {
		m, err = ebpf.NewMap(&ebpf.MapSpec{Name: MapLayout, Type: ebpf.Hash, KeySize: layoutKeySize, ValueSize: layoutValueSize, MaxEntries: 64})
		if err != nil {
			return nil, fmt.Errorf("creating layout record: %w", err)
		}
		if err := m.Pin(path); err != nil {
			m.Close()
			return nil, err
		}
		r.m = m
		return r, nil
	}
	if err != nil {
		return nil, fmt.Errorf("opening layout record: %w", err)
	}
	r.m = m
	k, v := make([]byte, layoutKeySize), make([]byte, layoutValueSize)
	it := m.Iterate()
	for it.Next(&k, &v) {
		name := strings.TrimRight(string(k), "\x00")
		if name == layoutBuildKey {
			r.version = binary.NativeEndian.Uint32(v[0:4])
			r.build = strings.TrimRight(string(v[16:]), "\x00")
			continue
		}
		r.mapHash[name] = binary.NativeEndian.Uint64(v[0:8])
	}
	if err := it.Err(); err != nil {
		m.Close()
		return nil, fmt.Errorf("reading layout record: %w", err)
	}
	return r, nil
}

// write records the layout of this build's maps.
func (r *layoutRecord) write(specs map[string]*ebpf.MapSpec) error {
	for name, ms := range specs {
		v := make([]byte, layoutValueSize)
		binary.NativeEndian.PutUint64(v[0:8], layoutHash(specLayout(ms)))
		if err := r.m.Put(layoutKey(name), v); err != nil {
			return fmt.Errorf("writing layout record: %w", err)
		}
	}
	v := make([]byte, layoutValueSize)
	binary.NativeEndian.PutUint32(v[0:4], LayoutVersion)
	binary.NativeEndian.PutUint64(v[8:16], uint64(time.Now().UnixNano()))
	copy(v[16:], version.Get().String())
	if err := r.m.Put(layoutKey(layoutBuildKey), v); err != nil {
		return fmt.Errorf("writing layout record: %w", err)
	}
	return nil
}

// ---- misc -----------------------------------------------------------------

func boolU32(b bool) uint32 {
	if b {
		return 1
	}
	return 0
}

// VerifierDetail adds the end of a verifier log, where the reason is, to a
// load error (for every loader of BPF objects).
func VerifierDetail(err error) error {
	var ve *ebpf.VerifierError
	if errors.As(err, &ve) {
		log := ve.Log
		if len(log) > 40 {
			log = log[len(log)-40:]
		}
		return fmt.Errorf("%w\n%s", err, strings.Join(log, "\n"))
	}
	return err
}
