package kmod

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/cilium/ebpf/btf"
	"golang.org/x/sys/unix"
)

// Why kernel-native mode cannot start. Ensure and Check return an *Error whose
// Kind is one of these (errors.Is works), with a message naming what is
// missing and what to do.
var (
	ErrNoModuleSupport = errors.New("kernel without loadable module support")
	ErrNoKernelBTF     = errors.New("kernel without BTF")
	ErrKernelTooOld    = errors.New("kernel too old for kmesh.ko")
	ErrModuleAbsent    = errors.New("kmesh.ko not loaded")
	ErrModuleVersion   = errors.New("kmesh.ko of another ABI version")
	ErrNoModuleBTF     = errors.New("kmesh.ko without BTF")
	ErrModuleLoad      = errors.New("kmesh.ko failed to load")
)

// Error is a refusal of kernel-native mode.
type Error struct {
	Kind   error  // one of the Err* values above
	Detail string // what is missing and what to do
	Err    error  // underlying error, if any
}

func (e *Error) Error() string {
	s := "kernel-native mode unavailable: " + e.Detail
	if e.Err != nil {
		s += ": " + e.Err.Error()
	}
	return s
}

func (e *Error) Is(target error) bool { return target == e.Kind }
func (e *Error) Unwrap() error        { return e.Err }

// Options for Ensure. The zero value checks for a loaded, compatible module
// and never loads one.
type Options struct {
	// ModulePath is the kmesh.ko to load with finit_module(2) when the module
	// is not loaded (the daemon's --kmod-path). Empty: do not load.
	ModulePath string
	// Params are module parameters, e.g. "max_deferred=131072".
	Params string

	// root prefixes /proc and /sys paths (tests).
	root string
}

// kernelSymbol is a kernel function module struct_ops registration needs
// (Linux 6.9+); its presence in the kernel's BTF is the feature probe.
const kernelSymbol = "__register_bpf_struct_ops"

// Check reports whether kernel-native mode can run with the module as it is
// now (loaded, right ABI, with BTF), without loading anything.
func Check() error {
	c, err := Ensure(Options{})
	if c != nil {
		c.Close()
	}
	return err
}

// Ensure makes kmesh.ko usable for kernel-native mode: it finds the module by
// its genetlink handshake, loads it from o.ModulePath when absent, and checks
// its ABI version, features and BTF. On success the returned Conn is the
// daemon's control channel to the module. Every refusal is an *Error that
// names what is missing; there is no silent fallback.
func Ensure(o Options) (*Conn, error) {
	if err := checkKernel(o.root); err != nil {
		return nil, err
	}
	c, err := Dial()
	if errors.Is(err, ErrFamilyNotFound) {
		if loadedAt(o.root) {
			return nil, &Error{Kind: ErrModuleVersion, Detail: "a module named kmesh is loaded but does not answer " +
				"the kmesh genetlink handshake (an old or foreign build); unload it (rmmod kmesh)"}
		}
		if o.ModulePath == "" {
			return nil, &Error{Kind: ErrModuleAbsent, Detail: "kmesh.ko is not loaded and no module path was given " +
				"(--kmod-path); load it or use --mode=dual-engine"}
		}
		if err := loadForEnsure(o.ModulePath, o.Params); err != nil {
			return nil, err
		}
		c, err = Dial()
	}
	if err != nil {
		return nil, &Error{Kind: ErrModuleAbsent, Detail: "cannot reach kmesh.ko over generic netlink", Err: err}
	}
	info, err := c.Hello()
	if err != nil {
		c.Close()
		return nil, &Error{Kind: ErrModuleVersion, Detail: "kmesh.ko did not complete the handshake", Err: err}
	}
	if info.ABIVersion != ABIVersion {
		c.Close()
		return nil, &Error{Kind: ErrModuleVersion, Detail: fmt.Sprintf("kmesh.ko %s with ABI version %d is loaded, "+
			"this kmeshd needs ABI version %d; unload it (rmmod kmesh) and load the matching module",
			info.ModuleVersion, info.ABIVersion, ABIVersion)}
	}
	if missing := RequiredFeatures &^ info.Features; missing != 0 {
		c.Close()
		return nil, &Error{Kind: ErrModuleVersion, Detail: fmt.Sprintf("kmesh.ko %s lacks features %s",
			info.ModuleVersion, missing)}
	}
	if _, err := os.Stat(filepath.Join(o.root, "/sys/kernel/btf", ModuleName)); err != nil {
		c.Close()
		return nil, &Error{Kind: ErrNoModuleBTF, Detail: "kmesh.ko has no BTF (/sys/kernel/btf/kmesh), so BPF " +
			"programs cannot call its kfuncs; build it with pahole against the kernel's vmlinux " +
			"(CONFIG_DEBUG_INFO_BTF_MODULES)"}
	}
	return c, nil
}

// checkKernel probes what the running kernel offers, before any load.
func checkKernel(root string) error {
	rel := release()
	if _, err := os.Stat(filepath.Join(root, "/proc/modules")); err != nil {
		return &Error{Kind: ErrNoModuleSupport, Detail: fmt.Sprintf("kernel %s has no loadable module support "+
			"(CONFIG_MODULES is off), so kmesh.ko cannot run; use --mode=dual-engine", rel)}
	}
	vmlinux := filepath.Join(root, "/sys/kernel/btf/vmlinux")
	if _, err := os.Stat(vmlinux); err != nil {
		return &Error{Kind: ErrNoKernelBTF, Detail: fmt.Sprintf("kernel %s has no BTF (/sys/kernel/btf/vmlinux, "+
			"CONFIG_DEBUG_INFO_BTF); use --mode=dual-engine", rel)}
	}
	spec, err := btf.LoadSpec(vmlinux)
	if err != nil {
		return &Error{Kind: ErrNoKernelBTF, Detail: fmt.Sprintf("reading the BTF of kernel %s", rel), Err: err}
	}
	if _, err := spec.AnyTypeByName(kernelSymbol); err != nil {
		return &Error{Kind: ErrKernelTooOld, Detail: fmt.Sprintf("kernel %s is too old: kmesh.ko registers its "+
			"own struct_ops type and kfuncs, which needs Linux 6.12 or newer (tested: Debian 6.12; this "+
			"kernel lacks %s); use --mode=dual-engine", rel, kernelSymbol)}
	}
	return nil
}

func loadedAt(root string) bool {
	_, err := os.Stat(filepath.Join(root, "/sys/module", ModuleName))
	return err == nil
}

// loadForEnsure loads the module and turns finit_module's errno into advice.
func loadForEnsure(path, params string) error {
	if _, err := os.Stat(path); err != nil {
		return &Error{Kind: ErrModuleAbsent, Detail: fmt.Sprintf("no module file at %s (--kmod-path)", path), Err: err}
	}
	err := Load(path, params)
	switch {
	case err == nil, errors.Is(err, unix.EEXIST): // EEXIST: loaded meanwhile
		return nil
	case errors.Is(err, unix.ENOEXEC), errors.Is(err, unix.EINVAL):
		return &Error{Kind: ErrModuleLoad, Detail: fmt.Sprintf("%s was not built for kernel %s (wrong vermagic "+
			"or symbol versions; see dmesg); rebuild it against this kernel's headers (make kmod)", path, release()),
			Err: err}
	case errors.Is(err, unix.ENOENT):
		return &Error{Kind: ErrModuleLoad, Detail: fmt.Sprintf("%s refers to symbols or BTF this kernel does not "+
			"have (see dmesg); rebuild it against this kernel's headers", path), Err: err}
	case errors.Is(err, unix.EPERM), errors.Is(err, unix.EKEYREJECTED):
		return &Error{Kind: ErrModuleLoad, Detail: fmt.Sprintf("loading %s is not permitted (needs CAP_SYS_MODULE; "+
			"the kernel may require signed modules)", path), Err: err}
	default:
		return &Error{Kind: ErrModuleLoad, Detail: fmt.Sprintf("loading %s failed (see dmesg)", path), Err: err}
	}
}

func release() string {
	var u unix.Utsname
	if err := unix.Uname(&u); err != nil {
		return "(unknown)"
	}
	return unix.ByteSliceToString(u.Release[:])
}
