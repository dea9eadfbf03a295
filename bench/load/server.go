package load

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"time"

	"fortio.org/fortio/fhttp"
	"fortio.org/fortio/fnet"
	"fortio.org/log"
)

// DebugPath is fortio's debug handler on the echo server: it answers with
// the request as the server saw it, including the peer address, which tells
// which hop the request came from (see Probe).
const DebugPath = "/debug"

// Serve starts fortio's HTTP echo server on httpAddr and its TCP echo server
// on tcpAddr (both host:port) and returns once both listen. The servers run
// until the process exits. fortio's TCP echo copies through a userspace
// buffer, never splice(2), so it also works when sk_msg redirects data into
// the socket's ingress queue.
func Serve(httpAddr, tcpAddr string) (httpBound, tcpBound net.Addr, err error) {
	log.SetLogLevelQuiet(log.Error)
	_, httpBound = fhttp.Serve(httpAddr, DebugPath)
	if httpBound == nil {
		return nil, nil, fmt.Errorf("http echo server: cannot listen on %s", httpAddr)
	}
	tcpBound = fnet.TCPEchoServer("tcp-echo", tcpAddr)
	if tcpBound == nil {
		return nil, nil, fmt.Errorf("tcp echo server: cannot listen on %s", tcpAddr)
	}
	return httpBound, tcpBound, nil
}

// Probe sends one GET for DebugPath to addr and returns the address the
// server saw the request come from (host only).
func Probe(ctx context.Context, addr string, timeout time.Duration) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+addr+DebugPath, nil)
	if err != nil {
		return "", err
	}
	c := &http.Client{Transport: &http.Transport{DisableKeepAlives: true, Proxy: nil}}
	resp, err := c.Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	if err != nil {
		return "", err
	}
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("GET %s: %s", DebugPath, resp.Status)
	}
	_, rest, ok := strings.Cut(string(body), " - request from ")
	if !ok {
		return "", fmt.Errorf("GET %s: no peer in the answer %q", DebugPath, body)
	}
	peer, _, _ := strings.Cut(rest, "\n")
	host, _, err := net.SplitHostPort(strings.TrimSpace(peer))
	if err != nil {
		return "", fmt.Errorf("GET %s: peer %q: %w", DebugPath, peer, err)
	}
	return host, nil
}
