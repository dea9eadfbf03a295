// Package proxy renders configurations for the real userspace proxies the
// benchmark compares against (Debian's HAProxy and nginx) and runs private
// instances of them inside lab namespaces. It never touches the system
// services: every instance gets its own generated config, pid file, logs and
// temp directories in the lab's scratch directory.
package proxy

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"time"

	"github.com/kmesh-go/kmesh/bench/netlab"
)

// Mode is how a proxy handles a connection.
type Mode string

const (
	// L7 parses HTTP/1.1 and forwards requests (sidecar, waypoint).
	L7 Mode = "http"
	// L4 relays bytes (ztunnel-like node proxy, sidecar for raw TCP).
	L4 Mode = "tcp"
)

// Route is one listener forwarding to one upstream.
type Route struct {
	Name     string // [a-z0-9-]+, unique within a proxy
	Listen   netip.AddrPort
	Upstream netip.AddrPort
	Mode     Mode
	// AcceptProxy makes the listener expect a PROXY protocol header (as a
	// kmesh waypoint receives one); HAProxy only.
	AcceptProxy bool
	// OriginalDst forwards to the connection's destination as given by the
	// PROXY header instead of Upstream (which stays unset); HAProxy only.
	OriginalDst bool
}

var routeName = regexp.MustCompile(`^[a-z0-9][a-z0-9-]*$`)

func validate(routes []Route, allowed ...Mode) error {
	if len(routes) == 0 {
		return errors.New("no routes")
	}
	seen := map[string]bool{}
	listens := map[netip.AddrPort]bool{}
	var errs []error
	for _, r := range routes {
		if !routeName.MatchString(r.Name) {
			errs = append(errs, fmt.Errorf("route name %q: want [a-z0-9-]+", r.Name))
		}
		if seen[r.Name] {
			errs = append(errs, fmt.Errorf("route %q defined twice", r.Name))
		}
		seen[r.Name] = true
		if listens[r.Listen] {
			errs = append(errs, fmt.Errorf("route %q: %s already used by another route", r.Name, r.Listen))
		}
		listens[r.Listen] = true
		switch {
		case r.OriginalDst && (r.Upstream.IsValid() || !r.AcceptProxy):
			errs = append(errs, fmt.Errorf("route %q: an original-destination route takes no upstream and needs accept-proxy", r.Name))
		case !r.Listen.IsValid() || r.Listen.Port() == 0 || (!r.OriginalDst && (!r.Upstream.IsValid() || r.Upstream.Port() == 0)):
			errs = append(errs, fmt.Errorf("route %q: listen %s and upstream %s need an address and a port", r.Name, r.Listen, r.Upstream))
		}
		ok := false
		for _, m := range allowed {
			ok = ok || r.Mode == m
		}
		if !ok {
			errs = append(errs, fmt.Errorf("route %q: mode %q not supported here (want one of %v)", r.Name, r.Mode, allowed))
		}
	}
	return errors.Join(errs...)
}

// Timeouts shared by every generated config; long enough that an idle
// keep-alive connection at 1000 req/s over 256 connections is never cut.
const (
	connectTimeout = "5s"
	idleTimeout    = "60s"
	// upstreamIdleTimeout closes pooled upstream connections before the echo
	// server's own idle timeout (fortio: 30 s) can, so a proxy never reuses a
	// connection the server is closing (a POST on it would fail with 502).
	upstreamIdleTimeout = "20s"
)

// Instance describes a proxy process to start in a lab.
type Instance struct {
	Name  string // unique in the lab; names the config and log files
	Netns *netlab.Netns
	CPUs  string // taskset list; empty = not pinned
	Nice  int    // niceness; 0 = inherit
	// Cgroup to start in (a kmesh waypoint runs in an enrolled cgroup);
	// empty = the lab's.
	Cgroup string
}

// ReadyTimeout bounds how long a started proxy may take to listen.
const ReadyTimeout = 10 * time.Second

func start(ctx context.Context, l *netlab.Lab, in Instance, args []string, routes []Route) (*netlab.Proc, error) {
	p, err := l.Start(netlab.Cmd{Name: in.Name, Netns: in.Netns, CPUs: in.CPUs, Nice: in.Nice, Cgroup: in.Cgroup, Args: args})
	if err != nil {
		return nil, err
	}
	for _, r := range routes {
		if err := netlab.WaitListening(ctx, in.Netns, r.Listen.String(), p, ReadyTimeout); err != nil {
			return nil, fmt.Errorf("%s: %w", in.Name, err)
		}
	}
	return p, nil
}

func writeConfig(l *netlab.Lab, name, cfg string) (string, error) {
	path := filepath.Join(l.Dir, name+".conf")
	return path, os.WriteFile(path, []byte(cfg), 0o600)
}

// Versions reports the proxy binaries in use, for the run's environment record.
func Versions() map[string]string {
	v := map[string]string{}
	for name, args := range map[string][]string{"haproxy": {"-v"}, "nginx": {"-v"}} {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		out, err := exec.CommandContext(ctx, name, args...).CombinedOutput()
		cancel()
		if err != nil {
			v[name] = "unavailable: " + err.Error()
			continue
		}
		line, _, _ := strings.Cut(strings.TrimSpace(string(out)), "\n")
		v[name] = strings.TrimSpace(line)
	}
	return v
}

func mkdir(dir string) error { return os.MkdirAll(dir, 0o700) }
