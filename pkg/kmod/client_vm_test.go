//go:build vmguest

package kmod

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/kmesh-go/kmesh/pkg/testutil"
)

// The "l7client" helper runs inside the test's netns and cgroup (where the
// deferral program is attached) and drives one TCP socket with raw system
// calls, step by step, logging what each step saw. Raw syscalls, because the
// point is to observe exactly what connect(), poll(), send() and friends
// return on a deferred socket.
//
// Steps:
//
//	socket | socket-nb     blocking / non-blocking socket of the address family
//	connect                connect(Addr)                   -> connect=<0|ERRNO>
//	snmp                   TCP ActiveOpens/PassiveOpens of the netns since the
//	                       helper started                  -> snmp=<active>/<passive>
//	poll                   poll(POLLIN|POLLOUT, 0)           -> poll=<flags>
//	epoll-out              epoll_wait for EPOLLOUT, 5 s       -> epoll=<flags>
//	getpeername                                              -> getpeername=<0|ERRNO>
//	sleep                  300 ms
//	send                   write(Request)                    -> send=<n|ERRNO>
//	send0                  write of zero bytes               -> send0=<n|ERRNO>
//	send-nb                non-blocking write of Request until done, waiting
//	                       for POLLOUT on EAGAIN          -> send-nb=<first result>,<final>
//	sendfile | splice      Request from a file / a pipe      -> sendfile=<n|ERRNO>
//	recv                   read until EOF (10 s)             -> body=<text after the head>
//	recv-raw               read until EOF                    -> raw=<text>
//	recv-nb                poll+read until EOF               -> body=<...>
//	so_error               getsockopt(SO_ERROR)              -> so_error=<0|ERRNO>
//	shutdown-wr, disconnect (connect AF_UNSPEC), ulp-tls (setsockopt TCP_ULP),
//	bind-listen (bind port 0 + listen)                       -> <step>=<0|ERRNO>
//	gate                   wait (60 s) until the file Gate exists
//	close
type clientArgs struct {
	Addr    string
	Steps   []string
	Request []byte
	Gate    string
}

type clientResult struct {
	Events []string
}

func init() {
	testutil.RegisterHelper("l7client", func(raw json.RawMessage) (any, error) {
		var a clientArgs
		if err := json.Unmarshal(raw, &a); err != nil {
			return nil, err
		}
		return runClient(a)
	})
	testutil.RegisterHelper("l7parallel", func(raw json.RawMessage) (any, error) {
		var a parallelArgs
		if err := json.Unmarshal(raw, &a); err != nil {
			return nil, err
		}
		return runParallel(a), nil
	})
}

func errnoName(err error) string {
	var en unix.Errno
	if errors.As(err, &en) {
		if n := unix.ErrnoName(en); n != "" {
			return n
		}
	}
	return err.Error()
}

func result(n int, err error) string {
	if err != nil {
		return errnoName(err)
	}
	return strconv.Itoa(n)
}

func pollText(re int16) string {
	var f []string
	for _, b := range []struct {
		bit  int16
		name string
	}{{unix.POLLIN, "IN"}, {unix.POLLOUT, "OUT"}, {unix.POLLERR, "ERR"}, {unix.POLLHUP, "HUP"}} {
		if re&b.bit != 0 {
			f = append(f, b.name)
		}
	}
	if len(f) == 0 {
		return "-"
	}
	return strings.Join(f, "|")
}

// tcpOpens reads ActiveOpens (SYNs sent) and PassiveOpens (SYNs accepted) of
// this netns from /proc/net/snmp.
func tcpOpens() (active, passive int64, err error) {
	b, err := os.ReadFile("/proc/net/snmp")
	if err != nil {
		return 0, 0, err
	}
	var names, vals []string
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) > 0 && f[0] == "Tcp:" {
			if names == nil {
				names = f
			} else {
				vals = f
			}
		}
	}
	for i := range names {
		if i < len(vals) {
			v, _ := strconv.ParseInt(vals[i], 10, 64)
			switch names[i] {
			case "ActiveOpens":
				active = v
			case "PassiveOpens":
				passive = v
			}
		}
	}
	return active, passive, nil
}

func sockaddr(addr string) (unix.Sockaddr, int, error) {
	ap, err := netip.ParseAddrPort(addr)
	if err != nil {
		return nil, 0, err
	}
	if ap.Addr().Is4() {
		return &unix.SockaddrInet4{Port: int(ap.Port()), Addr: ap.Addr().As4()}, unix.AF_INET, nil
	}
	return &unix.SockaddrInet6{Port: int(ap.Port()), Addr: ap.Addr().As16()}, unix.AF_INET6, nil
}

func waitPoll(fd int, events int16, timeout time.Duration) int16 {
	pfd := []unix.PollFd{{Fd: int32(fd), Events: events}}
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		n, err := unix.Poll(pfd, int(time.Until(deadline).Milliseconds())+1)
		if err == unix.EINTR {
			continue
		}
		if n > 0 || err != nil {
			break
		}
	}
	return pfd[0].Revents
}

func body(resp []byte) string {
	if i := bytes.Index(resp, []byte("\r\n\r\n")); i >= 0 {
		return strings.TrimSpace(string(resp[i+4:]))
	}
	return strings.TrimSpace(string(resp))
}

func runClient(a clientArgs) (clientResult, error) {
	var res clientResult
	log := func(format string, args ...any) { res.Events = append(res.Events, fmt.Sprintf(format, args...)) }
	sa, family, err := sockaddr(a.Addr)
	if err != nil {
		return res, err
	}
	a0, p0, err := tcpOpens()
	if err != nil {
		return res, err
	}
	fd := -1
	defer func() {
		if fd >= 0 {
			unix.Close(fd)
		}
	}()
	for _, step := range a.Steps {
		switch step {
		case "socket", "socket-nb":
			flags := unix.SOCK_STREAM | unix.SOCK_CLOEXEC
			if step == "socket-nb" {
				flags |= unix.SOCK_NONBLOCK
			}
			if fd, err = unix.Socket(family, flags, 0); err != nil {
				return res, err
			}
			tv := unix.Timeval{Sec: 10}
			unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv)
			unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_SNDTIMEO, &tv)
		case "connect":
			log("connect=%s", result(0, unix.Connect(fd, sa)))
		case "snmp":
			ac, pc, err := tcpOpens()
			if err != nil {
				return res, err
			}
			log("snmp=%d/%d", ac-a0, pc-p0)
		case "poll":
			pfd := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN | unix.POLLOUT}}
			unix.Poll(pfd, 0)
			log("poll=%s", pollText(pfd[0].Revents))
		case "epoll-out":
			ep, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
			if err != nil {
				return res, err
			}
			ev := unix.EpollEvent{Events: unix.EPOLLOUT | unix.EPOLLIN | unix.EPOLLRDHUP, Fd: int32(fd)}
			unix.EpollCtl(ep, unix.EPOLL_CTL_ADD, fd, &ev)
			evs := make([]unix.EpollEvent, 1)
			n, err := unix.EpollWait(ep, evs, 5000)
			unix.Close(ep)
			if err != nil || n != 1 {
				log("epoll=none")
				break
			}
			var f []string
			for _, b := range []struct {
				bit  uint32
				name string
			}{{unix.EPOLLIN, "IN"}, {unix.EPOLLOUT, "OUT"}, {unix.EPOLLERR, "ERR"}, {unix.EPOLLHUP, "HUP"}, {unix.EPOLLRDHUP, "RDHUP"}} {
				if evs[0].Events&b.bit != 0 {
					f = append(f, b.name)
				}
			}
			log("epoll=%s", strings.Join(f, "|"))
		case "getpeername":
			_, err := unix.Getpeername(fd)
			log("getpeername=%s", result(0, err))
		case "sleep":
			time.Sleep(300 * time.Millisecond)
		case "send":
			n, err := unix.Write(fd, a.Request)
			log("send=%s", result(n, err))
		case "send0":
			n, err := unix.Write(fd, nil)
			log("send0=%s", result(n, err))
		case "send-nb":
			log("send-nb=%s", sendNonBlocking(fd, a.Request))
		case "sendfile":
			f, err := os.CreateTemp("", "l7req")
			if err != nil {
				return res, err
			}
			f.Write(a.Request)
			var o int64
			n, err := unix.Sendfile(fd, int(f.Fd()), &o, len(a.Request))
			f.Close()
			os.Remove(f.Name())
			log("sendfile=%s", result(n, err))
		case "splice":
			var p [2]int
			if err := unix.Pipe2(p[:], unix.O_CLOEXEC); err != nil {
				return res, err
			}
			unix.Write(p[1], a.Request)
			n, err := unix.Splice(p[0], nil, fd, nil, len(a.Request), 0)
			unix.Close(p[0])
			unix.Close(p[1])
			log("splice=%s", result(int(n), err))
		case "recv", "recv-raw", "recv-nb":
			var resp []byte
			buf := make([]byte, 4096)
			deadline := time.Now().Add(10 * time.Second)
			var rerr error
			for time.Now().Before(deadline) {
				if step == "recv-nb" {
					waitPoll(fd, unix.POLLIN, time.Until(deadline))
				}
				n, err := unix.Read(fd, buf)
				if err == unix.EAGAIN && step == "recv-nb" {
					continue
				}
				// With SO_RCVTIMEO set the kernel does not restart a read
				// that a signal interrupts (signal(7)), and the Go runtime
				// preempts with SIGURG: nothing was read, read again.
				if err == unix.EINTR {
					continue
				}
				if err != nil {
					rerr = err
					break
				}
				if n == 0 {
					break
				}
				resp = append(resp, buf[:n]...)
				if step == "recv-raw" && bytes.HasSuffix(resp, []byte("\r\n")) {
					break // a banner line; the server keeps the connection open
				}
			}
			switch {
			case rerr != nil && len(resp) == 0:
				log("recv=%s", errnoName(rerr))
			case step == "recv-raw":
				log("raw=%s", strings.TrimSpace(string(resp)))
			default:
				log("body=%s", body(resp))
			}
		case "so_error":
			v, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_ERROR)
			if err == nil && v != 0 {
				err = unix.Errno(v)
			}
			log("so_error=%s", result(0, err))
		case "shutdown-wr":
			log("shutdown-wr=%s", result(0, unix.Shutdown(fd, unix.SHUT_WR)))
		case "disconnect":
			// connect() with AF_UNSPEC dissolves the association.
			rsa := unix.RawSockaddrInet4{Family: unix.AF_UNSPEC}
			_, _, e := unix.Syscall(unix.SYS_CONNECT, uintptr(fd), uintptr(unsafe.Pointer(&rsa)), unsafe.Sizeof(rsa))
			var err error
			if e != 0 {
				err = e
			}
			log("disconnect=%s", result(0, err))
		case "ulp-tls":
			log("ulp-tls=%s", result(0, unix.SetsockoptString(fd, unix.IPPROTO_TCP, unix.TCP_ULP, "tls")))
		case "bind-listen":
			var bsa unix.Sockaddr = &unix.SockaddrInet4{}
			if family == unix.AF_INET6 {
				bsa = &unix.SockaddrInet6{}
			}
			err := unix.Bind(fd, bsa)
			if err == nil {
				err = unix.Listen(fd, 4)
			}
			log("bind-listen=%s", result(0, err))
		case "gate":
			deadline := time.Now().Add(60 * time.Second)
			for {
				if _, err := os.Stat(a.Gate); err == nil {
					break
				}
				if time.Now().After(deadline) {
					return res, fmt.Errorf("gate %s never opened", a.Gate)
				}
				time.Sleep(20 * time.Millisecond)
			}
		case "close":
			unix.Close(fd)
			fd = -1
		default:
			return res, fmt.Errorf("unknown step %q", step)
		}
	}
	return res, nil
}

// sendNonBlocking writes all of req, waiting for POLLOUT on EAGAIN. Returns
// "<first write result>,<bytes written or final error>".
func sendNonBlocking(fd int, req []byte) string {
	first := ""
	off := 0
	deadline := time.Now().Add(10 * time.Second)
	for off < len(req) && time.Now().Before(deadline) {
		n, err := unix.Write(fd, req[off:])
		if first == "" {
			first = result(n, err)
		}
		if err == unix.EAGAIN {
			waitPoll(fd, unix.POLLOUT, time.Until(deadline))
			continue
		}
		if err != nil {
			return first + "," + errnoName(err)
		}
		off += n
	}
	return first + "," + strconv.Itoa(off)
}

// l7parallel: Conns concurrent deferred connections, request i with
// Hosts[i % len(Hosts)]; counts the bodies received.
type parallelArgs struct {
	Addr  string
	Conns int
	Hosts []string
}

type parallelResult struct {
	Bodies map[string]int
	Errors map[string]int
}

func runParallel(a parallelArgs) parallelResult {
	res := parallelResult{Bodies: map[string]int{}, Errors: map[string]int{}}
	var mu sync.Mutex
	var wg sync.WaitGroup
	for i := 0; i < a.Conns; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			req := fmt.Sprintf("GET /p/%d HTTP/1.1\r\nHost: %s\r\n\r\n", i, a.Hosts[i%len(a.Hosts)])
			r, err := runClient(clientArgs{Addr: a.Addr, Steps: []string{"socket", "connect", "send", "recv"}, Request: []byte(req)})
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				res.Errors[err.Error()]++
				return
			}
			last := r.Events[len(r.Events)-1]
			if strings.HasPrefix(last, "body=") {
				res.Bodies[strings.TrimPrefix(last, "body=")]++
			} else {
				res.Errors[strings.Join(r.Events, " ")]++
			}
		}(i)
	}
	wg.Wait()
	return res
}
