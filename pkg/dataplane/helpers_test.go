package dataplane

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
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

// awaitConnect waits for an interrupted connect on fd to finish.
func awaitConnect(fd int, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		ms := int(time.Until(deadline).Milliseconds())
		if ms <= 0 {
			return unix.ETIMEDOUT
		}
		n, err := unix.Poll([]unix.PollFd{{Fd: int32(fd), Events: unix.POLLOUT}}, ms)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return err
		}
		if n > 0 {
			break
		}
	}
	soErr, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_ERROR)
	if err != nil {
		return err
	}
	if soErr != 0 {
		return unix.Errno(soErr)
	}
	return nil
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
	err = unix.Connect(fd, sa)
	if err == unix.EINTR {
		// With SO_SNDTIMEO set, a signal (the Go runtime's preemption
		// signal, frequent under TCG) interrupts connect instead of
		// restarting it; the handshake carries on: wait for it.
		err = awaitConnect(fd, 3*time.Second)
	}
	if err != nil {
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

// serve: a server process (placed in a cgroup/netns by the test) that answers
// each connection with ID and echoes; it touches Ready once listening and
// runs until killed.
type serveArgs struct {
	Addr, ID, Ready string
	PlainTCP        bool
}

// stream: one long-lived connection that sends Chunk-byte messages for
// Duration and checks every echo.
type streamArgs struct {
	Addr     string
	Chunk    int
	Duration time.Duration
}

type streamResult struct {
	ID             string
	Local, Peer    string
	Sent, Received int64 // Received includes the identity line
}

func init() {
	testutil.RegisterHelper("serve", func(raw json.RawMessage) (any, error) {
		var a serveArgs
		if err := json.Unmarshal(raw, &a); err != nil {
			return nil, err
		}
		// Go listens with MPTCP by default where the kernel has it; PlainTCP
		// asks for a TCP listener (MPTCP subflows cannot join a sockhash).
		var lc net.ListenConfig
		if a.PlainTCP {
			lc.SetMultipathTCP(false)
		}
		ln, err := lc.Listen(context.Background(), "tcp", a.Addr)
		if err != nil {
			return nil, err
		}
		if err := os.WriteFile(a.Ready, []byte("ok"), 0o644); err != nil {
			return nil, err
		}
		for {
			c, err := ln.Accept()
			if err != nil {
				return nil, err
			}
			go func() {
				defer c.Close()
				if _, err := c.Write([]byte(a.ID + "\n")); err != nil {
					return
				}
				testutil.EchoLoop(c)
			}()
		}
	})
	testutil.RegisterHelper("stream", func(raw json.RawMessage) (any, error) {
		var a streamArgs
		if err := json.Unmarshal(raw, &a); err != nil {
			return nil, err
		}
		return stream(a)
	})
}

func stream(a streamArgs) (streamResult, error) {
	var r streamResult
	c, err := net.DialTimeout("tcp", a.Addr, 3*time.Second)
	if err != nil {
		return r, err
	}
	defer c.Close()
	r.Local, r.Peer = c.LocalAddr().String(), c.RemoteAddr().String()
	c.SetDeadline(time.Now().Add(a.Duration + 10*time.Second))
	br := bufio.NewReader(c)
	line, err := br.ReadString('\n')
	if err != nil {
		return r, err
	}
	r.ID = strings.TrimSpace(line)
	r.Received = int64(len(line))
	out := make([]byte, a.Chunk)
	in := make([]byte, a.Chunk)
	end := time.Now().Add(a.Duration)
	for i := 0; time.Now().Before(end); i++ {
		for j := range out {
			out[j] = byte(i + j)
		}
		if _, err := c.Write(out); err != nil {
			return r, err
		}
		r.Sent += int64(len(out))
		if _, err := io.ReadFull(br, in); err != nil {
			return r, err
		}
		r.Received += int64(len(in))
		if !bytes.Equal(in, out) {
			return r, fmt.Errorf("message %d: echo differs", i)
		}
		time.Sleep(5 * time.Millisecond)
	}
	return r, nil
}

// startServer runs the serve helper in cgroup cg and netns ns, and waits
// until it listens.
func startServer(t *testing.T, cg *testutil.Cgroup, ns *testutil.Netns, addr, id string, plainTCP bool) {
	t.Helper()
	ready := filepath.Join(t.TempDir(), "ready")
	testutil.StartHelper(t, "serve", serveArgs{Addr: addr, ID: id, Ready: ready, PlainTCP: plainTCP},
		testutil.HelperOptions{Netns: ns, Cgroup: cg, Timeout: 10 * time.Minute})
	deadline := time.Now().Add(time.Minute)
	for {
		if b, err := os.ReadFile(ready); err == nil && len(b) > 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("server %s did not start", id)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
