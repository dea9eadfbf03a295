package testutil

import (
	"fmt"
	"net/netip"
	"testing"
)

// Topology is a set of network namespaces ("hosts") joined by a Linux bridge
// that lives in its own namespace, so nothing is created in the root netns.
// Hosts get addresses from 10.77.0.0/24 and fd77::/64 and no default route:
// an address outside the subnet (a service VIP) is unreachable unless a BPF
// program rewrites it.
type Topology struct {
	tb     testing.TB
	Bridge *Netns
	Hosts  map[string]*Host
	next   int
}

// Host is one namespace on the topology's bridge.
type Host struct {
	Name string // logical name given to AddHost
	NS   *Netns
	IP4  netip.Addr
	IP6  netip.Addr
}

// Subnet4 and Subnet6 are the topology's address ranges.
var (
	Subnet4 = netip.MustParsePrefix("10.77.0.0/24")
	Subnet6 = netip.MustParsePrefix("fd77::/64")
)

// NewTopology creates the bridge namespace; add hosts with AddHost.
func NewTopology(tb testing.TB) *Topology {
	tb.Helper()
	br := NewNetns(tb, "kmbr-")
	MustRun(tb, "ip", "-n", br.Name, "link", "add", "br0", "type", "bridge")
	MustRun(tb, "ip", "-n", br.Name, "link", "set", "br0", "up")
	return &Topology{tb: tb, Bridge: br, Hosts: map[string]*Host{}, next: 1}
}

// AddHost creates a namespace with eth0 on the bridge and the next free
// addresses (10.77.0.N, fd77::N).
func (t *Topology) AddHost(name string) *Host {
	t.tb.Helper()
	n := t.next
	t.next++
	if n > 250 {
		t.tb.Fatalf("topology: too many hosts")
	}
	ns := NewNetns(t.tb, "kmh-")
	peer := fmt.Sprintf("p%d", n)
	MustRun(t.tb, "ip", "link", "add", "eth0", "netns", ns.Name, "type", "veth", "peer", "name", peer, "netns", t.Bridge.Name)
	MustRun(t.tb, "ip", "-n", t.Bridge.Name, "link", "set", peer, "master", "br0", "up")
	ip4 := netip.AddrFrom4([4]byte{10, 77, 0, byte(n)})
	ip6 := netip.AddrFrom16([16]byte{0: 0xfd, 1: 0x77, 15: byte(n)})
	MustRun(t.tb, "ip", "-n", ns.Name, "addr", "add", ip4.String()+"/24", "dev", "eth0")
	MustRun(t.tb, "ip", "-n", ns.Name, "addr", "add", ip6.String()+"/64", "dev", "eth0", "nodad")
	MustRun(t.tb, "ip", "-n", ns.Name, "link", "set", "eth0", "up")
	h := &Host{Name: name, NS: ns, IP4: ip4, IP6: ip6}
	t.Hosts[name] = h
	return h
}
