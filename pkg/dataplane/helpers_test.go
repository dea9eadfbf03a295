package dataplane

import (
	"bufio"
	"encoding/json"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/kmesh-go/kmesh/pkg/testutil"
)

// dial-mapped: connect from a dual-stack AF_INET6 socket (IPV6_V6ONLY off) to
// the IPv4-mapped form of an IPv4 VIP, as a dual-stack application does.
type mappedArgs struct {
	VIP   string // IPv4 ip:port
	Count int
}

type mappedResult struct {
	Identities map[string]int
	Errors     map[string]int
	Peers      map[string]int
}

func init() {
	testutil.RegisterHelper("dial-mapped", func(raw json.RawMessage) (any, error) {
		var a mappedArgs
		if err := json.Unmarshal(raw, &a); err != nil {
			return nil, err
		}
		ap, err := netip.ParseAddrPort(a.VIP)
		if err != nil {
			return nil, err
		}
		res := mappedResult{Identities: map[string]int{}, Errors: map[string]int{}, Peers: map[string]int{}}
		for i := 0; i < a.Count; i++ {
			id, peer, err := dialMapped(ap)
			if err != nil {
				res.Errors[err.Error()]++
				continue
			}
			res.Identities[id]++
			res.Peers[peer]++
		}
		return res, nil
	})
}

func dialMapped(ap netip.AddrPort) (id, peer string, err error) {
	fd, err := unix.Socket(unix.AF_INET6, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return "", "", err
	}
	if err := unix.SetsockoptInt(fd, unix.IPPROTO_IPV6, unix.IPV6_V6ONLY, 0); err != nil {
		unix.Close(fd)
		return "", "", err
	}
	tv := unix.NsecToTimeval((3 * time.Second).Nanoseconds())
	unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv)
	unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_SNDTIMEO, &tv)
	sa := &unix.SockaddrInet6{Port: int(ap.Port()), Addr: netip.AddrFrom16(ap.Addr().As16()).As16()}
	if err := unix.Connect(fd, sa); err != nil {
		unix.Close(fd)
		return "", "", fmt.Errorf("connect: %w", err)
	}
	if p, err := unix.Getpeername(fd); err == nil {
		if s6, ok := p.(*unix.SockaddrInet6); ok {
			peer = netip.AddrPortFrom(netip.AddrFrom16(s6.Addr), uint16(s6.Port)).String()
		}
	}
	f := os.NewFile(uintptr(fd), "mapped")
	c, err := net.FileConn(f)
	f.Close()
	if err != nil {
		return "", "", err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(3 * time.Second))
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		return "", "", err
	}
	return strings.TrimSpace(line), peer, nil
}
