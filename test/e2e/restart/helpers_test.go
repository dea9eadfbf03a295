package restart

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/kmesh-go/kmesh/pkg/testutil"
)

// serve: a backend process (in an enrolled cgroup and a backend netns) that
// answers each connection with its ID and echoes. Plain TCP listener, so the
// same-node sockhash can take its sockets.
type serveArgs struct {
	Addrs []string
	ID    string
	Ready string
}

// traffic: the client side of the restart test, run in the enrolled client
// cgroup and netns until Stop exists: short requests at Rate per second to
// Short, and Streams long-lived connections to Stream that echo a message
// every 50 ms.
type trafficArgs struct {
	Short, Stream   string
	Rate, Streams   int
	Ready, Stop     string
	RequestDeadline time.Duration
}

type trafficResult struct {
	Requests, Failed int
	Errors           map[string]int
	Elapsed          time.Duration
	Streams          int // established
	Broken           int // ended before Stop
	StreamErrors     map[string]int
	Messages         int64
	Backends         map[string]int
}

func init() {
	testutil.RegisterHelper("serve", func(raw json.RawMessage) (any, error) {
		var a serveArgs
		if err := json.Unmarshal(raw, &a); err != nil {
			return nil, err
		}
		var lc net.ListenConfig
		lc.SetMultipathTCP(false)
		for _, addr := range a.Addrs {
			ln, err := lc.Listen(context.Background(), "tcp", addr)
			if err != nil {
				return nil, err
			}
			go func() {
				for {
					c, err := ln.Accept()
					if err != nil {
						return
					}
					go func() {
						defer c.Close()
						if _, err := c.Write([]byte(a.ID + "\n")); err == nil {
							testutil.EchoLoop(c)
						}
					}()
				}
			}()
		}
		if err := os.WriteFile(a.Ready, []byte("ok"), 0o644); err != nil {
			return nil, err
		}
		select {} // until killed
	})
	testutil.RegisterHelper("traffic", func(raw json.RawMessage) (any, error) {
		var a trafficArgs
		if err := json.Unmarshal(raw, &a); err != nil {
			return nil, err
		}
		return traffic(a)
	})
}

func stopped(path string) bool {
	_, err := os.Stat(path)
	return err == nil
}

func traffic(a trafficArgs) (*trafficResult, error) {
	res := &trafficResult{Errors: map[string]int{}, StreamErrors: map[string]int{}, Backends: map[string]int{}}
	var mu sync.Mutex
	var messages atomic.Int64
	var wg sync.WaitGroup
	established := make(chan error, a.Streams)
	for i := 0; i < a.Streams; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			err := stream(a, i, established, &messages)
			if err != nil {
				mu.Lock()
				res.Broken++
				res.StreamErrors[err.Error()]++
				mu.Unlock()
			}
		}(i)
	}
	for i := 0; i < a.Streams; i++ {
		if err := <-established; err != nil {
			return nil, fmt.Errorf("stream %d: %w", i, err)
		}
	}
	res.Streams = a.Streams
	if err := os.WriteFile(a.Ready, []byte("ok"), 0o644); err != nil {
		return nil, err
	}

	start := time.Now()
	tick := time.NewTicker(time.Second / time.Duration(a.Rate))
	var reqs sync.WaitGroup
	for !stopped(a.Stop) {
		<-tick.C
		reqs.Add(1)
		go func() {
			defer reqs.Done()
			id, err := request(a.Short, a.RequestDeadline)
			mu.Lock()
			defer mu.Unlock()
			res.Requests++
			if err != nil {
				res.Failed++
				res.Errors[err.Error()]++
				return
			}
			res.Backends[id]++
		}()
	}
	tick.Stop()
	res.Elapsed = time.Since(start)
	reqs.Wait()
	wg.Wait()
	res.Messages = messages.Load()
	return res, nil
}

// request is one short request: connect to the VIP, read the backend's
// name, one echo round trip, close.
func request(addr string, deadline time.Duration) (string, error) {
	c, err := net.DialTimeout("tcp", addr, deadline)
	if err != nil {
		return "", err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(deadline))
	br := bufio.NewReader(c)
	line, err := br.ReadString('\n')
	if err != nil {
		return "", fmt.Errorf("read id: %w", err)
	}
	if _, err := c.Write([]byte("ping\n")); err != nil {
		return "", err
	}
	echo, err := br.ReadString('\n')
	if err != nil || echo != "ping\n" {
		return "", fmt.Errorf("echo %q: %v", echo, err)
	}
	return strings.TrimSpace(line), nil
}

// stream keeps one connection busy until Stop; any error is a broken
// long-lived connection.
func stream(a trafficArgs, i int, established chan<- error, messages *atomic.Int64) error {
	c, err := net.DialTimeout("tcp", a.Stream, 5*time.Second)
	if err != nil {
		established <- err
		return err
	}
	defer c.Close()
	br := bufio.NewReader(c)
	c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := br.ReadString('\n'); err != nil {
		established <- err
		return err
	}
	established <- nil
	out, in := make([]byte, 1024), make([]byte, 1024)
	for n := 0; !stopped(a.Stop); n++ {
		for j := range out {
			out[j] = byte(i + n + j)
		}
		c.SetDeadline(time.Now().Add(5 * time.Second))
		if _, err := c.Write(out); err != nil {
			return fmt.Errorf("write: %w", err)
		}
		if _, err := io.ReadFull(br, in); err != nil {
			return fmt.Errorf("read: %w", err)
		}
		if !bytes.Equal(in, out) {
			return fmt.Errorf("echo mismatch")
		}
		messages.Add(1)
		time.Sleep(50 * time.Millisecond)
	}
	return nil
}
