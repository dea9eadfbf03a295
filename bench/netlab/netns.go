package netlab

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"time"

	"github.com/kmesh-go/kmesh/pkg/netns"
)

// Netns is a named network namespace (/run/netns/<Name>) with loopback up.
type Netns struct {
	Name string
}

// Path is the bind-mounted namespace file.
func (n *Netns) Path() string { return "/run/netns/" + n.Name }

// NewNetns creates the namespace for role and registers its removal. Deleting
// a namespace also deletes the veth ends inside it.
func (l *Lab) NewNetns(role string) (*Netns, error) {
	n := &Netns{Name: l.Name(role)}
	if err := run("ip", "netns", "add", n.Name); err != nil {
		return nil, err
	}
	l.Defer("delete netns "+n.Name, func() error { return run("ip", "netns", "del", n.Name) })
	if err := run("ip", "-n", n.Name, "link", "set", "lo", "up"); err != nil {
		return nil, err
	}
	return n, nil
}

// Do runs fn on an OS thread switched into the namespace. Sockets created by
// fn stay in the namespace.
func (n *Netns) Do(fn func() error) error { return netns.Do(n.Path(), fn) }

// Dial opens a TCP connection from inside the namespace.
func (n *Netns) Dial(addr string, timeout time.Duration) (net.Conn, error) {
	var c net.Conn
	err := n.Do(func() (err error) {
		c, err = net.DialTimeout("tcp", addr, timeout)
		return err
	})
	return c, err
}

// Bridge is a Linux bridge in its own namespace; hosts attach with a veth pair
// (eth0 in the host, p<N> on the bridge). Nothing is created in the root netns.
type Bridge struct {
	NS     *Netns
	lab    *Lab
	subnet netip.Prefix
	next   netip.Addr
}

// Host is a namespace on a bridge.
type Host struct {
	Role string
	NS   *Netns
	IP   netip.Addr
}

// NewBridge creates the bridge namespace for an IPv4 subnet (at most /24 hosts
// are handed out in order from .1).
func (l *Lab) NewBridge(subnet netip.Prefix) (*Bridge, error) {
	if !subnet.Addr().Is4() || subnet.Bits() > 24 {
		return nil, fmt.Errorf("bridge subnet %s: want an IPv4 prefix of /24 or larger", subnet)
	}
	ns, err := l.NewNetns("br")
	if err != nil {
		return nil, err
	}
	if err := run("ip", "-n", ns.Name, "link", "add", "br0", "type", "bridge"); err != nil {
		return nil, err
	}
	if err := run("ip", "-n", ns.Name, "link", "set", "br0", "up"); err != nil {
		return nil, err
	}
	return &Bridge{NS: ns, lab: l, subnet: subnet.Masked(), next: subnet.Masked().Addr().Next()}, nil
}

// AddHost creates a namespace for role with eth0 on the bridge and the next
// free address. Hosts have no default route: an address outside the subnet
// (a service VIP) is unreachable unless a BPF program rewrites it.
func (b *Bridge) AddHost(role string) (*Host, error) {
	ip := b.next
	if !b.subnet.Contains(ip.Next()) {
		return nil, fmt.Errorf("bridge %s: out of addresses", b.subnet)
	}
	b.next = ip.Next()
	return b.AddHostIP(role, ip)
}

// AddHostIP is AddHost with a chosen address.
func (b *Bridge) AddHostIP(role string, ip netip.Addr) (*Host, error) {
	if !b.subnet.Contains(ip) {
		return nil, fmt.Errorf("address %s is outside bridge subnet %s", ip, b.subnet)
	}
	ns, err := b.lab.NewNetns(role)
	if err != nil {
		return nil, err
	}
	// The bridge-side name only needs to be unique inside the bridge namespace.
	peer := fmt.Sprintf("p%d", ip.As4()[3])
	steps := [][]string{
		{"link", "add", "eth0", "netns", ns.Name, "type", "veth", "peer", "name", peer, "netns", b.NS.Name},
		{"-n", b.NS.Name, "link", "set", peer, "master", "br0", "up"},
		{"-n", ns.Name, "addr", "add", netip.PrefixFrom(ip, b.subnet.Bits()).String(), "dev", "eth0"},
		{"-n", ns.Name, "link", "set", "eth0", "up"},
	}
	for _, s := range steps {
		if err := run("ip", s...); err != nil {
			return nil, err
		}
	}
	return &Host{Role: role, NS: ns, IP: ip}, nil
}

// WaitListening polls until addr accepts a TCP connection from inside ns, the
// process p (if not nil) exits, or timeout passes.
func WaitListening(ctx context.Context, ns *Netns, addr string, p *Proc, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	var last error
	for {
		c, err := ns.Dial(addr, time.Second)
		if err == nil {
			c.Close()
			return nil
		}
		last = err
		var exited <-chan struct{}
		if p != nil {
			exited = p.Done()
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%s in %s not listening after %v: %v", addr, ns.Name, timeout, last)
		case <-exited:
			return fmt.Errorf("%s exited before listening on %s: %v; log: %s", p.Name, addr, p.Err(), p.LogTail(2048))
		case <-tick.C:
		}
	}
}
