// Package netns runs code inside another network namespace.
//
// A Go program cannot switch a whole process into a network namespace, only
// one OS thread. Do locks a thread, switches it, runs the function and
// switches it back. Sockets created inside keep their namespace after Do
// returns, so a caller can open listeners or connections "in" a namespace and
// use them from anywhere.
package netns

import (
	"errors"
	"fmt"
	"os"
	"runtime"

	"golang.org/x/sys/unix"
)

// Do runs fn on an OS thread switched into the network namespace at path
// (/run/netns/NAME, /proc/PID/ns/net) and returns fn's error. If switching
// back fails, the thread is never unlocked: it exits with its goroutine
// instead of running other goroutines in the wrong namespace.
func Do(path string, fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := os.Open("/proc/thread-self/ns/net")
		if err != nil {
			errc <- err
			return
		}
		defer orig.Close()
		target, err := os.Open(path)
		if err != nil {
			errc <- fmt.Errorf("netns %s: %w", path, err)
			return
		}
		defer target.Close()
		if err := unix.Setns(int(target.Fd()), unix.CLONE_NEWNET); err != nil {
			errc <- fmt.Errorf("entering netns %s: %w", path, err)
			return
		}
		ferr := fn()
		if err := unix.Setns(int(orig.Fd()), unix.CLONE_NEWNET); err != nil {
			errc <- errors.Join(ferr, fmt.Errorf("returning from netns %s: %w", path, err))
			return
		}
		runtime.UnlockOSThread()
		errc <- ferr
	}()
	return <-errc
}
