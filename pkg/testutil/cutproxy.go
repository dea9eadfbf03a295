package testutil

import (
	"net"
	"sync"
	"testing"
	"time"
)

// CutProxy forwards TCP to a target; Cut drops every connection and refuses
// new ones (a network cut as the client sees it), Restore listens again on the
// same address.
type CutProxy struct {
	tb     testing.TB
	target string
	mu     sync.Mutex
	lis    net.Listener
	Addr   string
	conns  []net.Conn
}

// NewCutProxy starts forwarding to target on a free loopback port.
func NewCutProxy(tb testing.TB, target string) *CutProxy {
	p := &CutProxy{tb: tb, target: target}
	p.listen("127.0.0.1:0")
	tb.Cleanup(p.Cut)
	return p
}

func (p *CutProxy) listen(addr string) {
	var lis net.Listener
	var err error
	for i := 0; i < 100; i++ {
		if lis, err = net.Listen("tcp", addr); err == nil {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err != nil {
		p.tb.Fatal(err)
	}
	p.mu.Lock()
	p.lis, p.Addr = lis, lis.Addr().String()
	p.mu.Unlock()
	go func() {
		for {
			in, err := lis.Accept()
			if err != nil {
				return
			}
			out, err := net.DialTimeout("tcp", p.target, time.Second)
			if err != nil {
				in.Close()
				continue
			}
			p.mu.Lock()
			p.conns = append(p.conns, in, out)
			p.mu.Unlock()
			go pipe(in, out)
			go pipe(out, in)
		}
	}()
}

// pipe copies with Read/Write (no splice), closing both ends when done.
func pipe(a, b net.Conn) {
	buf := make([]byte, 32<<10)
	for {
		n, err := a.Read(buf)
		if n > 0 {
			if _, werr := b.Write(buf[:n]); werr != nil {
				break
			}
		}
		if err != nil {
			break
		}
	}
	a.Close()
	b.Close()
}

// Cut closes the listener and every forwarded connection.
func (p *CutProxy) Cut() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.lis != nil {
		p.lis.Close()
		p.lis = nil
	}
	for _, c := range p.conns {
		c.Close()
	}
	p.conns = nil
}

// Restore listens again on the original address.
func (p *CutProxy) Restore() { p.listen(p.Addr) }
