package admin

import (
	"context"
	"errors"
	"net/url"
	"path/filepath"
	"strings"
	"testing"

	"github.com/kmesh-go/kmesh/pkg/logging"
)

func serve(t *testing.T, o Options) *Client {
	t.Helper()
	s, err := Listen(o)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { s.Serve(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	addr := o.Address
	if !strings.HasPrefix(addr, "unix:") {
		addr = s.Addr().String()
	}
	c, err := NewClient(addr)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func TestOnlyLoopbackOrUnix(t *testing.T) {
	for _, bad := range []string{"0.0.0.0:15200", ":15200", "10.1.2.3:15200", "[::]:15200", "example.com:15200", "unix:"} {
		if _, err := Listen(Options{Address: bad}); err == nil {
			t.Errorf("Listen(%q) succeeded; the admin API must not be reachable off-host", bad)
		}
	}
	for _, good := range []string{"127.0.0.1:0", "[::1]:0"} {
		s, err := Listen(Options{Address: good})
		if err != nil {
			t.Errorf("Listen(%q): %v", good, err)
			continue
		}
		s.ln.Close()
	}
}

func TestReadyReflectsProvider(t *testing.T) {
	var ready error = errors.New("first xDS sync not applied")
	c := serve(t, Options{Address: "127.0.0.1:0", Ready: func() error { return ready }})
	var body string
	err := c.Get(context.Background(), "/ready", &body)
	if err == nil || !strings.Contains(err.Error(), "503") || !strings.Contains(err.Error(), "first xDS sync") {
		t.Fatalf("not ready: got %v", err)
	}
	ready = nil
	if err := c.Get(context.Background(), "/ready", &body); err != nil || strings.TrimSpace(body) != "ready" {
		t.Fatalf("ready: %q %v", body, err)
	}
	if err := c.Get(context.Background(), "/healthz", &body); err != nil {
		t.Fatal(err)
	}
}

func TestLoggersOverUnixSocket(t *testing.T) {
	reg := logging.New(logging.Options{})
	reg.Logger("xds")
	c := serve(t, Options{Address: "unix:" + filepath.Join(t.TempDir(), "admin.sock"), Logging: reg})
	var levels map[string]string
	if err := c.Post(context.Background(), "/debug/loggers", url.Values{"set": {"xds:debug"}}, &levels); err != nil {
		t.Fatal(err)
	}
	if levels["xds"] != "debug" || reg.Levels()["xds"] != "debug" {
		t.Fatalf("levels after set: %v / %v", levels, reg.Levels())
	}
}

func TestUnwiredEndpointsSay501(t *testing.T) {
	c := serve(t, Options{Address: "127.0.0.1:0"})
	for _, p := range []string{"/debug/config_dump", "/debug/bpf", "/debug/loggers", "/debug/monitoring"} {
		err := c.Get(context.Background(), p, nil)
		if err == nil || !strings.Contains(err.Error(), "not available") {
			t.Errorf("%s: %v", p, err)
		}
	}
}
