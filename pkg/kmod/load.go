// Package kmod finds, loads and talks to kmesh.ko, the kernel module behind
// kernel-native mode. dual-engine mode never needs it.
package kmod

import (
	"errors"
	"fmt"
	"os"
	"time"

	"golang.org/x/sys/unix"
)

// ModuleName is the name the kernel knows the module by.
const ModuleName = "kmesh"

// Loaded reports whether kmesh.ko is loaded and live.
func Loaded() bool {
	b, err := os.ReadFile("/sys/module/" + ModuleName + "/initstate")
	return err == nil && string(b) == "live\n"
}

// Load loads the module file at path with finit_module(2). Loading an already
// loaded module returns an error wrapping unix.EEXIST.
func Load(path, params string) error {
	f, err := os.Open(path)
	if err != nil {
		return fmt.Errorf("kmod: opening %s: %w", path, err)
	}
	defer f.Close()
	if err := unix.FinitModule(int(f.Fd()), params, 0); err != nil {
		if errors.Is(err, unix.ENOSYS) {
			return fmt.Errorf("kmod: loading %s: this kernel has no module support (CONFIG_MODULES=n): %w", path, err)
		}
		return fmt.Errorf("kmod: loading %s: %w", path, err)
	}
	return nil
}

// Unload removes the module, retrying for up to timeout while it is still in
// use. BPF programs that call its kfuncs hold a reference that is dropped
// asynchronously (after an RCU grace period) when they are closed, so an unload
// right after closing them may briefly see EWOULDBLOCK.
func Unload(timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		err := unix.DeleteModule(ModuleName, unix.O_NONBLOCK)
		if err == nil {
			return nil
		}
		if !(errors.Is(err, unix.EWOULDBLOCK) || errors.Is(err, unix.EBUSY)) || time.Now().After(deadline) {
			return fmt.Errorf("kmod: unloading %s: %w", ModuleName, err)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
