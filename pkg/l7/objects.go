package l7

import (
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"unsafe"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"

	"github.com/kmesh-go/kmesh/pkg/bpf"
	"github.com/kmesh-go/kmesh/pkg/bpf/objs"
)

// Program and map names of the kernel-native objects (bpf/kn_*.c).
const (
	ProgConnect4 = "kn_connect4"
	ProgConnect6 = "kn_connect6"
	ProgSockops  = "kn_sockops"
	ProgRelease  = "kn_sock_release"
	MapRouter    = "kn_router" // the kmesh_l7_ops struct_ops map
	linkRouter   = "kn_router"

	MapActive    = "kn_active"
	MapListeners = "kn_listeners"
	MapRCs       = "kn_rcs"
	MapHosts     = "kn_hosts"
	MapWilds     = "kn_wilds"
	MapVHosts    = "kn_vhosts"
	MapRoutes    = "kn_routes"
	MapHdrs      = "kn_hdrs"
	MapActions   = "kn_actions"
	MapClusters  = "kn_clusters"
	MapClActive  = "kn_cl_active"
	MapConns     = "kn_conns"
	MapStats     = "kn_stats"
)

// Map capacities (bpf/lib/kn.h). A configuration may use half of each: the
// old and the new generation coexist while an update is written.
var mapLimits = map[string]int{
	MapListeners: 16384, MapRCs: 8192, MapHosts: 131072, MapWilds: 16384, MapVHosts: 65536,
	MapRoutes: 131072, MapHdrs: 65536, MapActions: 131072, MapClusters: 2 * MaxClusters,
}

// tableMaps are the generation-keyed configuration tables.
var tableMaps = []string{MapListeners, MapRCs, MapHosts, MapWilds, MapVHosts, MapRoutes, MapHdrs, MapActions, MapClusters}

type cgroupProg struct {
	prog   string
	attach ebpf.AttachType
}

// cgroupProgs are attached to the L4 dataplane's cgroup, next to its own
// programs. Order does not matter (see kn_connect.c); readers before writers
// anyway, as the L4 loader does.
var cgroupProgs = []cgroupProg{
	{ProgRelease, ebpf.AttachCgroupInetSockRelease},
	{ProgSockops, ebpf.AttachCGroupSockOps},
	{ProgConnect4, ebpf.AttachCGroupInet4Connect},
	{ProgConnect6, ebpf.AttachCGroupInet6Connect},
}

// objects are the loaded kernel-native programs and maps.
type objects struct {
	maps    map[string]*ebpf.Map // kn_* maps (pinned)
	progs   map[string]*ebpf.Program
	router  *ebpf.Map // struct_ops map (not pinned: its link is)
	links   map[string]link.Link
	fresh   map[string]*ebpf.Map // maps created to replace a pinned map of another layout
	adopted []string
	pinDir  string
	cgroup  string
	log     *slog.Logger
}

func (o *objects) close() {
	for _, l := range o.links {
		l.Close()
	}
	for _, p := range o.progs {
		p.Close()
	}
	for _, m := range o.maps {
		m.Close()
	}
	if o.router != nil {
		o.router.Close()
	}
}

// specs of the kernel-native objects (the build's L4 layout).
func loadSpecs() (map[string]*ebpf.CollectionSpec, error) {
	out := map[string]*ebpf.CollectionSpec{}
	for name, load := range map[string]func() (*ebpf.CollectionSpec, error){
		"kn_connect": objs.LoadKnConnect, "kn_route": objs.LoadKnRoute,
		"kn_sockops": objs.LoadKnSockops, "kn_release": objs.LoadKnRelease,
	} {
		s, err := load()
		if err != nil {
			return nil, fmt.Errorf("%s: %w", name, err)
		}
		out[name] = s
	}
	return out, nil
}

// loadObjects creates or adopts the pinned kn_* maps and loads the programs
// against them and the L4 dataplane's maps. Nothing is attached yet.
func loadObjects(l4 *bpf.Objects, log *slog.Logger) (*objects, error) {
	specs, err := loadSpecs()
	if err != nil {
		return nil, err
	}
	o := &objects{maps: map[string]*ebpf.Map{}, progs: map[string]*ebpf.Program{}, links: map[string]link.Link{},
		fresh: map[string]*ebpf.Map{}, pinDir: l4.PinDir, cgroup: l4.CgroupDir, log: log}
	ok := false
	defer func() {
		if !ok {
			o.close()
		}
	}()
	// The kn_* maps, once: every object includes bpf/lib/kn.h.
	mine := map[string]*ebpf.MapSpec{}
	for _, sn := range slices.Sorted(maps.Keys(specs)) {
		for name, ms := range specs[sn].Maps {
			if !strings.HasPrefix(name, "kn_") || ms.Type == ebpf.StructOpsMap || name == "kn_scratch" {
				continue
			}
			mine[name] = ms
		}
	}
	for _, name := range slices.Sorted(maps.Keys(mine)) {
		m, adopted, err := openPinnedMap(filepath.Join(o.pinDir, "maps", name), mine[name], log)
		if err != nil {
			return nil, err
		}
		if adopted {
			o.adopted = append(o.adopted, name)
			o.maps[name] = m
		} else if _, statErr := os.Stat(filepath.Join(o.pinDir, "maps", name)); statErr == nil {
			o.fresh[name] = m // a pinned map of another layout: replaced once the programs are live
			o.maps[name] = m
		} else {
			if err := m.Pin(filepath.Join(o.pinDir, "maps", name)); err != nil {
				m.Close()
				return nil, fmt.Errorf("pinning %s: %w", name, err)
			}
			o.maps[name] = m
		}
	}
	repl := map[string]*ebpf.Map{}
	for name, m := range l4.Maps {
		repl[name] = m
	}
	for name, m := range o.maps {
		repl[name] = m
	}
	for _, sn := range slices.Sorted(maps.Keys(specs)) {
		spec := specs[sn]
		r := map[string]*ebpf.Map{}
		for name := range spec.Maps {
			if m, ok := repl[name]; ok {
				r[name] = m
			}
		}
		coll, err := ebpf.NewCollectionWithOptions(spec, ebpf.CollectionOptions{MapReplacements: r})
		if err != nil {
			return nil, fmt.Errorf("loading %s (kernel-native, needs kmesh.ko): %w", sn, bpf.VerifierDetail(err))
		}
		for name, p := range coll.Programs {
			o.progs[name] = p
		}
		coll.Programs = nil
		if m, ok := coll.Maps[MapRouter]; ok {
			o.router = m
			delete(coll.Maps, MapRouter)
		}
		coll.Close()
	}
	if o.router == nil {
		return nil, errors.New("kn_route has no struct_ops map " + MapRouter)
	}
	ok = true
	return o, nil
}

// openPinnedMap adopts the pinned map at path when it has the spec's shape,
// and otherwise returns a new (unpinned) map.
func openPinnedMap(path string, spec *ebpf.MapSpec, log *slog.Logger) (*ebpf.Map, bool, error) {
	m, err := ebpf.LoadPinnedMap(path, nil)
	if err == nil {
		info, ierr := m.Info()
		if ierr == nil && info.Type == spec.Type && info.KeySize == spec.KeySize && info.ValueSize == spec.ValueSize &&
			info.MaxEntries == spec.MaxEntries && info.Flags == spec.Flags {
			return m, true, nil
		}
		m.Close()
		log.Warn("kernel-native map has another layout: replaced by an empty one", "map", filepath.Base(path))
	} else if !errors.Is(err, fs.ErrNotExist) {
		return nil, false, fmt.Errorf("opening %s: %w", path, err)
	}
	nm, err := ebpf.NewMap(spec)
	if err != nil {
		return nil, false, fmt.Errorf("creating map %s: %w", spec.Name, err)
	}
	return nm, false, nil
}

// attach puts the programs live: the router first (so no deferred socket
// misses its decision), then the cgroup programs; each swaps into its pinned
// link when there is one. Maps created to replace another layout take over
// their pins afterwards.
func (o *objects) attach() error {
	if err := o.attachRouter(); err != nil {
		return err
	}
	for _, cp := range cgroupProgs {
		if err := o.attachCgroup(cp); err != nil {
			return err
		}
	}
	for _, name := range slices.Sorted(maps.Keys(o.fresh)) {
		path := filepath.Join(o.pinDir, "maps", name)
		tmp := path + "_new"
		os.Remove(tmp)
		if err := o.fresh[name].Pin(tmp); err != nil {
			return fmt.Errorf("pinning %s: %w", name, err)
		}
		if err := os.Rename(tmp, path); err != nil {
			return err
		}
	}
	o.fresh = map[string]*ebpf.Map{}
	return nil
}

func (o *objects) attachCgroup(cp cgroupProg) error {
	prog := o.progs[cp.prog]
	if prog == nil {
		return fmt.Errorf("program %s missing", cp.prog)
	}
	path := filepath.Join(o.pinDir, "links", cp.prog)
	if old, err := link.LoadPinnedLink(path, nil); err == nil {
		if err := old.Update(prog); err == nil {
			o.links[cp.prog] = old
			return nil
		}
		old.Close()
	} else if !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("opening pinned link %s: %w", path, err)
	}
	l, err := link.AttachCgroup(link.CgroupOptions{Path: o.cgroup, Attach: cp.attach, Program: prog})
	if err != nil {
		return fmt.Errorf("attaching %s to cgroup %s: %w", cp.prog, o.cgroup, err)
	}
	if err := replacePin(l.Pin, path); err != nil {
		l.Close()
		return fmt.Errorf("pinning link %s: %w", cp.prog, err)
	}
	o.links[cp.prog] = l
	return nil
}

// attachRouter registers kn_router as the module's kmesh_l7_ops, or swaps it
// into the pinned struct_ops link of a previous daemon (BPF_LINK_UPDATE: the
// module's .update replaces the router atomically).
func (o *objects) attachRouter() error {
	path := filepath.Join(o.pinDir, "links", linkRouter)
	if old, err := link.LoadPinnedLink(path, nil); err == nil {
		if fd, ok := old.(interface{ FD() int }); ok {
			if err := linkUpdateMap(fd.FD(), o.router.FD()); err == nil {
				o.links[linkRouter] = old
				return nil
			} else {
				o.log.Warn("replacing the pinned router failed; registering anew", "err", err)
			}
		}
		old.Detach()
		old.Close()
		os.Remove(path)
	} else if !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("opening pinned link %s: %w", path, err)
	}
	l, err := link.AttachStructOps(link.StructOpsOptions{Map: o.router})
	if err != nil {
		if errors.Is(err, unix.EEXIST) {
			return fmt.Errorf("registering the kernel-native router: another kmesh_l7_ops router is registered "+
				"(another kmeshd, or a test program): %w", err)
		}
		return fmt.Errorf("registering the kernel-native router (kmesh_l7_ops): %w", err)
	}
	if err := replacePin(l.Pin, path); err != nil {
		l.Close()
		return fmt.Errorf("pinning the router link: %w", err)
	}
	o.links[linkRouter] = l
	return nil
}

// linkUpdateMap is BPF_LINK_UPDATE with a new struct_ops map (cilium/ebpf
// updates program links only).
func linkUpdateMap(linkFD, mapFD int) error {
	attr := struct {
		linkFD, newMapFD, flags, oldMapFD uint32
	}{linkFD: uint32(linkFD), newMapFD: uint32(mapFD)}
	const bpfLinkUpdate = 29
	_, _, errno := unix.Syscall(unix.SYS_BPF, bpfLinkUpdate, uintptr(unsafe.Pointer(&attr)), unsafe.Sizeof(attr))
	if errno != 0 {
		return errno
	}
	return nil
}

func replacePin(pin func(string) error, path string) error {
	tmp := path + "_new"
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

// Uninstall detaches the kernel-native programs and removes their pins under
// pinDir (bpf.Uninstall removes the rest). Absent state is not an error.
func Uninstall(pinDir string) error {
	var errs []error
	for _, name := range []string{linkRouter, ProgConnect4, ProgConnect6, ProgSockops, ProgRelease} {
		path := filepath.Join(pinDir, "links", name)
		l, err := link.LoadPinnedLink(path, nil)
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err != nil {
			errs = append(errs, err)
			continue
		}
		if err := l.Detach(); err != nil {
			errs = append(errs, fmt.Errorf("detaching %s: %w", name, err))
		}
		l.Close()
		if err := os.Remove(path); err != nil {
			errs = append(errs, err)
		}
	}
	ents, _ := os.ReadDir(filepath.Join(pinDir, "maps"))
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), "kn_") {
			if err := os.Remove(filepath.Join(pinDir, "maps", e.Name())); err != nil {
				errs = append(errs, err)
			}
		}
	}
	return errors.Join(errs...)
}
