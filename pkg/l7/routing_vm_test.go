//go:build vmguest

package l7

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/kmesh-go/kmesh/pkg/model"
)

// routingSnapshot: listener "web" on vipWeb:80 and [vipWeb6]:80 with HTTP
// routes and a TCP route for non-HTTP bytes, and a TCP-only listener.
//
//	exact.example (and :8080)        -> be1
//	*.wild.example                   -> be2
//	*.deep.wild.example (longer)     -> be3
//	api.*                            -> be3
//	*: /v2/... -> be2; path /exact -> be3; x-canary: true -> be3;
//	   x-tier: gold* -> be2; x-debug present AND x-user: alice -> be2; / -> be1
func (e *knEnv) routingSnapshot() *model.Snapshot {
	route := func(c string) model.RouteAction { return model.RouteAction{Cluster: c} }
	return &model.Snapshot{
		Version: "routing",
		Clusters: []model.Cluster{e.cluster("c-be1", httpPort, 0), e.cluster("c-be2", httpPort, 1),
			e.cluster("c-be3", httpPort, 2), e.cluster("c-tcp", echoPort, 0)},
		Listeners: []model.Listener{
			{Name: "web", Address: ap(vipWeb, 80), RouteConfig: "web", TCPRoute: &model.RouteAction{Cluster: "c-tcp"}},
			{Name: "web6", Address: ap(vipWeb6, 80), RouteConfig: "web"},
			{Name: "tcp", Address: ap(vipTCP, echoPort), TCPRoute: &model.RouteAction{Cluster: "c-tcp"}},
		},
		RouteConfigs: []model.RouteConfig{{Name: "web", VirtualHosts: []model.VirtualHost{
			{Name: "exact", Domains: []string{"exact.example", "exact.example:8080"},
				Routes: []model.Route{{Match: model.RouteMatch{PathPrefix: "/"}, Action: route("c-be1")}}},
			{Name: "wild", Domains: []string{"*.wild.example"},
				Routes: []model.Route{{Match: model.RouteMatch{PathPrefix: "/"}, Action: route("c-be2")}}},
			{Name: "deep", Domains: []string{"*.deep.wild.example"},
				Routes: []model.Route{{Match: model.RouteMatch{PathPrefix: "/"}, Action: route("c-be3")}}},
			{Name: "api", Domains: []string{"api.*"},
				Routes: []model.Route{{Match: model.RouteMatch{PathPrefix: "/"}, Action: route("c-be3")}}},
			{Name: "any", Domains: []string{"*"}, Routes: []model.Route{
				{Match: model.RouteMatch{PathPrefix: "/v2/"}, Action: route("c-be2")},
				{Match: model.RouteMatch{PathExact: "/exact"}, Action: route("c-be3")},
				{Match: model.RouteMatch{PathPrefix: "/", Headers: []model.HeaderMatch{{Name: "x-canary", Exact: "true"}}}, Action: route("c-be3")},
				{Match: model.RouteMatch{PathPrefix: "/", Headers: []model.HeaderMatch{{Name: "x-tier", Prefix: "gold"}}}, Action: route("c-be2")},
				{Match: model.RouteMatch{PathPrefix: "/", Headers: []model.HeaderMatch{{Name: "x-debug", Present: true},
					{Name: "x-user", Exact: "alice"}}}, Action: route("c-be2")},
				{Match: model.RouteMatch{PathPrefix: "/"}, Action: route("c-be1")},
			}},
		}}},
	}
}

// TestRouting: requests with different Host, paths and headers land on the
// expected backends (the body is the backend's identity), from curl, wget
// and a raw client, over IPv4 and IPv6.
func TestRouting(t *testing.T) {
	e := newKnEnv(t, 3)
	e.apply(e.routingSnapshot())
	web := ap(vipWeb, 80).String()

	cases := []struct {
		host, path string
		hdr        []string
		want       string
	}{
		{"exact.example", "/", nil, "be1"},
		{"EXACT.Example", "/anything", nil, "be1"}, // Host is case-insensitive
		{"exact.example:8080", "/", nil, "be1"},    // a domain with its port
		{"exact.example:80", "/", nil, "be1"},      // no such domain: matched without the port
		{"a.wild.example", "/", nil, "be2"},
		{"x.y.wild.example", "/", nil, "be2"},
		{"a.deep.wild.example", "/", nil, "be3"}, // the longest suffix wins
		{"wild.example", "/", nil, "be1"},        // "*.wild.example" needs a non-empty prefix
		{"api.corp", "/", nil, "be3"},
		{"api.corp:8080", "/", nil, "be3"},
		{"other.example", "/v2/items?id=1", nil, "be2"},
		{"other.example", "/v2", nil, "be1"},
		{"other.example", "/exact", nil, "be3"},
		{"other.example", "/exact?q=1", nil, "be3"}, // exact ignores the query, like Envoy
		{"other.example", "/exact/more", nil, "be1"},
		{"other.example", "/", []string{"X-Canary", "true"}, "be3"},
		{"other.example", "/", []string{"x-canary", "false"}, "be1"},
		{"other.example", "/", []string{"X-Tier", "golden"}, "be2"},
		{"other.example", "/", []string{"X-Tier", "silver"}, "be1"},
		{"other.example", "/", []string{"X-Debug", "", "X-User", "alice"}, "be2"},
		{"other.example", "/", []string{"X-Debug", "1"}, "be1"}, // both headers needed
		{"other.example", "/", nil, "be1"},
	}
	for _, c := range cases {
		got, err := e.get(web, c.host, c.path, c.hdr...)
		if err != nil || got != c.want {
			t.Errorf("Host %s %s %v: got %q (%v), want %s", c.host, c.path, c.hdr, got, err, c.want)
		}
	}

	t.Run("curl", func(t *testing.T) {
		for _, c := range []struct {
			args []string
			want string
		}{
			{[]string{"-H", "Host: exact.example", "http://" + web + "/"}, "be1"},
			{[]string{"-H", "Host: b.wild.example", "http://" + web + "/"}, "be2"},
			{[]string{"http://" + web + "/v2/x"}, "be2"},
			{[]string{"-H", "X-Canary: true", "http://" + web + "/"}, "be3"},
			{[]string{"-X", "POST", "-d", "payload=1", "-H", "Host: api.example", "http://" + web + "/submit"}, "be3"},
			{[]string{"-g", "-H", "Host: exact.example", "http://" + ap(vipWeb6, 80).String() + "/"}, "be1"},
			{[]string{"-g", "http://" + ap(vipWeb6, 80).String() + "/v2/"}, "be2"},
		} {
			got, err := e.command("curl", append([]string{"-sS", "--max-time", "10"}, c.args...)...)
			if err != nil || got != c.want {
				t.Errorf("curl %s: %q (%v), want %s", strings.Join(c.args, " "), got, err, c.want)
			}
		}
	})
	t.Run("wget", func(t *testing.T) {
		for _, c := range []struct {
			args []string
			want string
		}{
			{[]string{"--header", "Host: x.deep.wild.example", "http://" + web + "/"}, "be3"},
			{[]string{"http://" + web + "/exact"}, "be3"},
			{[]string{"--header", "X-Tier: gold", "http://" + web + "/"}, "be2"},
			{[]string{"http://" + web + "/"}, "be1"},
		} {
			got, err := e.command("wget", append([]string{"-q", "-T", "10", "-O", "-"}, c.args...)...)
			if err != nil || got != c.want {
				t.Errorf("wget %s: %q (%v), want %s", strings.Join(c.args, " "), got, err, c.want)
			}
		}
	})
	// Go's net/http (and any client with a reader thread) reads before the
	// request is written: the receive waits for the first send (the
	// module's recv_grace_ms) instead of connecting to the TCP route.
	t.Run("a reader that starts before the writer", func(t *testing.T) {
		before := e.moduleStats()
		tr := &http.Transport{DisableKeepAlives: true, DialContext: func(ctx context.Context, _, addr string) (net.Conn, error) {
			return e.dial(addr)
		}}
		defer tr.CloseIdleConnections()
		hc := &http.Client{Transport: tr, Timeout: 10 * time.Second}
		for i := 0; i < 20; i++ {
			for _, c := range []struct{ host, path, want string }{{"exact.example", "/", "be1"}, {"other.example", "/v2/x", "be2"}} {
				req, _ := http.NewRequest(http.MethodGet, "http://"+web+c.path, nil)
				req.Host = c.host
				resp, err := hc.Do(req)
				if err != nil {
					t.Fatalf("net/http %s%s: %v", c.host, c.path, err)
				}
				b, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				if got := strings.TrimSpace(string(b)); got != c.want {
					t.Fatalf("net/http %s%s (request %d): %q, want %s", c.host, c.path, i, got, c.want)
				}
			}
		}
		// The same, made deterministic: a read is pending 20 ms before the write.
		c, err := e.dial(web)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		br := bufio.NewReader(c)
		peeked := make(chan error, 1)
		go func() { _, err := br.Peek(1); peeked <- err }()
		time.Sleep(20 * time.Millisecond)
		if _, err := io.WriteString(c, "GET / HTTP/1.1\r\nHost: api.corp\r\n\r\n"); err != nil {
			t.Fatal(err)
		}
		if err := <-peeked; err != nil {
			t.Fatal(err)
		}
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if got := strings.TrimSpace(string(b)); got != "be3" {
			t.Fatalf("read pending before the write: %q, want be3 (routed by Host)", got)
		}
		after := e.moduleStats()
		if after.Fallbacks != before.Fallbacks || after.Decisions-before.Decisions != 41 {
			t.Fatalf("module counters: fallbacks %d -> %d, decisions +%d; want no fallback and 41 decisions",
				before.Fallbacks, after.Fallbacks, after.Decisions-before.Decisions)
		}
	})
	t.Run("non-HTTP bytes follow the TCP route", func(t *testing.T) {
		c, err := e.dial(web)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		hello := "\x16\x03\x01\x00\x2a\x01\x00\x00\x26\x03\x03binary-client-hello"
		if _, err := c.Write([]byte(hello)); err != nil {
			t.Fatal(err)
		}
		buf := make([]byte, 256)
		got := ""
		for !strings.Contains(got, hello) {
			n, err := c.Read(buf)
			if err != nil {
				t.Fatalf("read: %v (got %q)", err, got)
			}
			got += string(buf[:n])
		}
		if !strings.HasPrefix(got, "be1-tcp\n") {
			t.Fatalf("non-HTTP bytes reached %q, want the TCP route's echo server be1-tcp", got)
		}
	})
	t.Run("TCP-only listener is balanced at connect", func(t *testing.T) {
		c, err := e.dial(ap(vipTCP, echoPort).String())
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		// connect() already reached the backend: it speaks first.
		buf := make([]byte, 64)
		n, err := c.Read(buf)
		if err != nil || string(buf[:n]) != "be1-tcp\n" {
			t.Fatalf("TCP listener: %q %v", buf[:n], err)
		}
		if p := c.RemoteAddr().String(); p != ap(vipTCP, echoPort).String() {
			t.Errorf("getpeername says %s, want the VIP", p)
		}
	})
	s := e.stats()
	if s["routed_http"] == 0 || s["routed_tcp"] < 2 || s["no_route"] != 0 {
		t.Errorf("kernel-native counters: %v", s)
	}
	t.Logf("counters: %v", s)
	_ = time.Second
	_ = netip.Addr{}
	_ = fmt.Sprint
}
