package testutil

import (
	"bufio"
	"encoding/json"
	"errors"
	"net"
	"strings"
	"sync"
	"testing"
	"time"
)

// ServeIdentity serves ln until cleanup: each connection first receives id and
// a newline, then everything it sends is echoed back. The echo is a plain
// Read/Write loop, never io.Copy: io.Copy between TCP sockets uses splice(2),
// which does not see data an sk_msg program redirected into the socket.
func ServeIdentity(tb testing.TB, ln net.Listener, id string) {
	tb.Helper()
	var wg sync.WaitGroup
	done := make(chan struct{})
	tb.Cleanup(func() {
		close(done)
		ln.Close()
		wg.Wait()
	})
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer c.Close()
				go func() { <-done; c.Close() }()
				c.SetDeadline(time.Now().Add(5 * time.Minute))
				if _, err := c.Write([]byte(id + "\n")); err != nil {
					return
				}
				EchoLoop(c)
			}()
		}
	}()
}

// EchoLoop echoes c's input back until EOF or error, without splice.
func EchoLoop(c net.Conn) {
	buf := make([]byte, 64<<10)
	for {
		n, err := c.Read(buf)
		if n > 0 {
			if _, werr := c.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			return
		}
	}
}

// DialArgs are the arguments of the built-in "dial" helper.
type DialArgs struct {
	Network string        // "tcp", "tcp4", "tcp6"; default "tcp"
	Addr    string        // host:port to dial
	Count   int           // connections to make, one after another; default 1
	Timeout time.Duration // per connection; default 5 s
}

// DialResult counts, per identity line received, the connections made; failed
// dials are counted by error text. Peers counts RemoteAddr() values, which
// shows what getpeername returned.
type DialResult struct {
	Identities map[string]int
	Errors     map[string]int
	Peers      map[string]int
}

func init() {
	RegisterHelper("dial", func(raw json.RawMessage) (any, error) {
		var a DialArgs
		if err := json.Unmarshal(raw, &a); err != nil {
			return nil, err
		}
		return Dial(a), nil
	})
}

// Dial runs the dial loop in the current process (the "dial" helper calls it).
func Dial(a DialArgs) DialResult {
	if a.Network == "" {
		a.Network = "tcp"
	}
	if a.Count == 0 {
		a.Count = 1
	}
	if a.Timeout == 0 {
		a.Timeout = 5 * time.Second
	}
	res := DialResult{Identities: map[string]int{}, Errors: map[string]int{}, Peers: map[string]int{}}
	for i := 0; i < a.Count; i++ {
		id, peer, err := dialOnce(a)
		if err != nil {
			res.Errors[errText(err)]++
			continue
		}
		res.Identities[id]++
		res.Peers[peer]++
	}
	return res
}

func dialOnce(a DialArgs) (id, peer string, err error) {
	c, err := net.DialTimeout(a.Network, a.Addr, a.Timeout)
	if err != nil {
		return "", "", err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(a.Timeout))
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		return "", "", err
	}
	return strings.TrimSpace(line), c.RemoteAddr().String(), nil
}

// errText strips addresses from dial errors so counts aggregate by cause.
func errText(err error) string {
	var op *net.OpError
	if errors.As(err, &op) && op.Err != nil {
		return op.Op + ": " + op.Err.Error()
	}
	return err.Error()
}
