package dataplane

import (
	"bufio"
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/kmesh-go/kmesh/pkg/testutil"
)

// A waypoint played by Go ("wp-proxy"): it reads the waypoint header (PROXY
// v2 or Kmesh TLV, told apart by the first byte), answers the client with a
// line describing it, dials the original destination (as an enrolled
// waypoint instance, so kmesh load-balances that connect and must not send
// it back to a waypoint) and relays both ways with plain Read/Write loops:
// io.Copy between TCP conns would splice, which misses sk_msg-redirected
// data.

type wpProxyArgs struct {
	Addr, ID, Ready string
}

// wpLine is what the Go waypoint tells the client first.
type wpLine struct {
	ID    string `json:"id"`
	Hdr   string `json:"hdr"` // the header bytes, hex
	Proto string `json:"proto"`
	Src   string `json:"src,omitempty"`
	Dst   string `json:"dst"`
	Err   string `json:"err,omitempty"`
}

// wpDialArgs: a client ("wp-dial") making Count connections. Unless
// ServerFirst is set it sends "ping\n" at once and expects, in order, the
// waypoint's line (when one is in the path), the backend's identity line and
// the echo. With ServerFirst it sends nothing and reads one line: the
// greeting. Mapped dials an IPv4 address from a dual-stack IPv6 socket.
type wpDialArgs struct {
	Addr        string
	Count       int
	ServerFirst bool
	Mapped      bool
}

type wpConnResult struct {
	Local, Peer string
	WP          *wpLine
	Backend     string
	Err         string
}

func init() {
	testutil.RegisterHelper("wp-proxy", func(raw json.RawMessage) (any, error) {
		var a wpProxyArgs
		if err := json.Unmarshal(raw, &a); err != nil {
			return nil, err
		}
		var lc net.ListenConfig
		lc.SetMultipathTCP(false)
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
			go serveWaypoint(c, a.ID)
		}
	})
	testutil.RegisterHelper("wp-dial", func(raw json.RawMessage) (any, error) {
		var a wpDialArgs
		if err := json.Unmarshal(raw, &a); err != nil {
			return nil, err
		}
		var out []wpConnResult
		for i := 0; i < a.Count; i++ {
			out = append(out, wpDialOnce(a))
		}
		return out, nil
	})
}

func serveWaypoint(c net.Conn, id string) {
	defer c.Close()
	c.SetDeadline(time.Now().Add(2 * time.Minute))
	br := bufio.NewReader(c)
	line := wpLine{ID: id}
	first, err := br.Peek(1)
	var h testutil.WaypointHeader
	if err == nil && first[0] == 0x0D {
		line.Proto = "proxy-v2"
		h, err = testutil.ReadProxyV2(br)
	} else if err == nil {
		line.Proto = "kmesh-tlv"
		h, err = testutil.ReadKmeshTLV(br)
	}
	line.Hdr = hex.EncodeToString(h.Raw)
	if h.Src.IsValid() {
		line.Src = h.Src.String()
	}
	if h.Dst.IsValid() {
		line.Dst = h.Dst.String()
	}
	var up net.Conn
	if err == nil {
		up, err = net.DialTimeout("tcp", line.Dst, 3*time.Second)
	}
	if err != nil {
		line.Err = err.Error()
	}
	b, _ := json.Marshal(line)
	if _, werr := c.Write(append(b, '\n')); werr != nil || err != nil {
		return
	}
	defer up.Close()
	up.SetDeadline(time.Now().Add(2 * time.Minute))
	relay(c, br, up)
}

// relay copies client (read through br) <-> up until both directions end.
func relay(client net.Conn, br io.Reader, up net.Conn) {
	done := make(chan struct{}, 2)
	pipe := func(dst net.Conn, src io.Reader) {
		buf := make([]byte, 32<<10)
		for {
			n, err := src.Read(buf)
			if n > 0 {
				if _, werr := dst.Write(buf[:n]); werr != nil {
					break
				}
			}
			if err != nil {
				break
			}
		}
		if tc, ok := dst.(*net.TCPConn); ok {
			tc.CloseWrite()
		}
		done <- struct{}{}
	}
	go pipe(up, br)
	go pipe(client, up)
	<-done
	<-done
}

func wpDialOnce(a wpDialArgs) (r wpConnResult) {
	c, err := wpConnect(a)
	if err != nil {
		r.Err = err.Error()
		return r
	}
	defer c.Close()
	r.Local = c.LocalAddr().String()
	r.Peer = c.RemoteAddr().String()
	c.SetDeadline(time.Now().Add(3 * time.Second))
	br := bufio.NewReader(c)
	if !a.ServerFirst {
		if _, err := c.Write([]byte("ping\n")); err != nil {
			r.Err = "write: " + err.Error()
			return r
		}
	}
	line, err := br.ReadString('\n')
	if err != nil {
		r.Err = "read: " + err.Error()
		return r
	}
	if strings.HasPrefix(line, "{") {
		var w wpLine
		if err := json.Unmarshal([]byte(line), &w); err != nil {
			r.Err = "waypoint line: " + err.Error()
			return r
		}
		r.WP = &w
		if w.Err != "" {
			return r
		}
		if line, err = br.ReadString('\n'); err != nil {
			r.Err = "read backend: " + err.Error()
			return r
		}
	}
	r.Backend = strings.TrimSpace(line)
	if !a.ServerFirst {
		echo, err := br.ReadString('\n')
		if err != nil || echo != "ping\n" {
			r.Err = fmt.Sprintf("echo %q: %v", echo, err)
		}
	}
	return r
}

// wpConnect dials a.Addr; errors keep only the cause (errno text).
func wpConnect(a wpDialArgs) (net.Conn, error) {
	if !a.Mapped {
		c, err := net.DialTimeout("tcp", a.Addr, 3*time.Second)
		if err != nil {
			return nil, errors.New(errnoText(err))
		}
		return c, nil
	}
	ap, err := netip.ParseAddrPort(a.Addr)
	if err != nil {
		return nil, err
	}
	fd, err := unix.Socket(unix.AF_INET6, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, err
	}
	if err := unix.SetsockoptInt(fd, unix.IPPROTO_IPV6, unix.IPV6_V6ONLY, 0); err != nil {
		unix.Close(fd)
		return nil, err
	}
	sa := &unix.SockaddrInet6{Port: int(ap.Port()), Addr: netip.AddrFrom16(ap.Addr().As16()).As16()}
	if err := unix.Connect(fd, sa); err != nil {
		unix.Close(fd)
		return nil, err
	}
	f := os.NewFile(uintptr(fd), "mapped")
	defer f.Close()
	return net.FileConn(f)
}

func errnoText(err error) string {
	var errno syscall.Errno
	if errors.As(err, &errno) {
		return errno.Error()
	}
	return err.Error()
}

// startWaypoint runs the Go waypoint in cgroup cg and netns ns and waits
// until it listens.
func startWaypoint(t *testing.T, cg *testutil.Cgroup, ns *testutil.Netns, addr, id string) *testutil.Helper {
	t.Helper()
	ready := filepath.Join(t.TempDir(), "ready")
	h := testutil.StartHelper(t, "wp-proxy", wpProxyArgs{Addr: addr, ID: id, Ready: ready},
		testutil.HelperOptions{Netns: ns, Cgroup: cg, Timeout: 15 * time.Minute})
	deadline := time.Now().Add(time.Minute)
	for {
		if b, err := os.ReadFile(ready); err == nil && len(b) > 0 {
			return h
		}
		if time.Now().After(deadline) {
			t.Fatalf("waypoint %s did not start", id)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
