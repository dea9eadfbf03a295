package proxy

import (
	"context"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

var (
	ap = netip.MustParseAddrPort
	l7 = Route{Name: "out-http", Listen: ap("127.0.0.1:15001"), Upstream: ap("10.78.0.2:15006"), Mode: L7}
	l4 = Route{Name: "out-tcp", Listen: ap("127.0.0.1:15002"), Upstream: ap("10.78.0.2:15007"), Mode: L4}
)

func TestHAProxyConfig(t *testing.T) {
	cfg, err := HAProxy{Routes: []Route{l7, l4}}.Config()
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		"nbthread 1\n",
		"listen out-http\n    mode http\n    bind 127.0.0.1:15001\n    option http-keep-alive\n    server upstream 10.78.0.2:15006\n",
		"listen out-tcp\n    mode tcp\n    bind 127.0.0.1:15002\n    server upstream 10.78.0.2:15007\n",
		"timeout client 60s",
	} {
		if !strings.Contains(cfg, want) {
			t.Errorf("config lacks %q:\n%s", want, cfg)
		}
	}
	if cfg2, _ := (HAProxy{Routes: []Route{l7}, Threads: 2}).Config(); !strings.Contains(cfg2, "nbthread 2\n") {
		t.Errorf("Threads not rendered:\n%s", cfg2)
	}
	wp := Route{Name: "waypoint", Listen: ap("0.0.0.0:15088"), Mode: L7, AcceptProxy: true, OriginalDst: true}
	cfg3, err := HAProxy{Routes: []Route{wp}}.Config()
	if err != nil {
		t.Fatal(err)
	}
	if want := "listen waypoint\n    mode http\n    bind 0.0.0.0:15088 accept-proxy\n    option http-keep-alive\n    server upstream 0.0.0.0:0\n"; !strings.Contains(cfg3, want) {
		t.Errorf("waypoint route: config lacks %q:\n%s", want, cfg3)
	}
	for _, bad := range []Route{{Name: "x", Listen: wp.Listen, Mode: L7, OriginalDst: true},
		{Name: "x", Listen: wp.Listen, Upstream: l7.Upstream, Mode: L7, AcceptProxy: true, OriginalDst: true}} {
		if _, err := (HAProxy{Routes: []Route{bad}}).Config(); err == nil {
			t.Errorf("accepted %+v", bad)
		}
	}
	if _, err := (Nginx{Routes: []Route{wp}}).Config(t.TempDir()); err == nil {
		t.Error("nginx accepted a PROXY protocol route")
	}
}

func TestNginxConfig(t *testing.T) {
	dir := t.TempDir()
	cfg, err := Nginx{Routes: []Route{l7}}.Config(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		"daemon off;", "worker_processes 1;", "pid " + filepath.Join(dir, "nginx.pid") + ";",
		"upstream out-http { server 10.78.0.2:15006; keepalive 1024;",
		"listen 127.0.0.1:15001;", "proxy_pass http://out-http;", "proxy_http_version 1.1;",
		"client_body_temp_path " + filepath.Join(dir, "client_body_temp") + ";",
	} {
		if !strings.Contains(cfg, want) {
			t.Errorf("config lacks %q:\n%s", want, cfg)
		}
	}
	if _, err := (Nginx{Routes: []Route{l7}}).Config("relative"); err == nil {
		t.Error("relative scratch dir accepted")
	}
}

func TestRejectsBadRoutes(t *testing.T) {
	dup := l7
	dup.Name = "other"
	cases := map[string][]Route{
		"none":        nil,
		"bad name":    {{Name: "Bad Name", Listen: l7.Listen, Upstream: l7.Upstream, Mode: L7}},
		"same name":   {l7, {Name: l7.Name, Listen: ap("127.0.0.1:1"), Upstream: l7.Upstream, Mode: L7}},
		"same listen": {l7, dup},
		"no port":     {{Name: "x", Listen: ap("127.0.0.1:0"), Upstream: l7.Upstream, Mode: L7}},
		"no upstream": {{Name: "x", Listen: l7.Listen, Mode: L7}},
		"bad mode":    {{Name: "x", Listen: l7.Listen, Upstream: l7.Upstream, Mode: "udp"}},
	}
	for name, routes := range cases {
		if _, err := (HAProxy{Routes: routes}).Config(); err == nil {
			t.Errorf("haproxy %s: accepted", name)
		}
		if _, err := (Nginx{Routes: routes}).Config(t.TempDir()); err == nil {
			t.Errorf("nginx %s: accepted", name)
		}
	}
	if _, err := (Nginx{Routes: []Route{l4}}).Config(t.TempDir()); err == nil {
		t.Error("nginx accepted an L4 route (nginx-light has no stream module)")
	}
}

// The generated configs must pass the real binaries' own checks. make deps
// installs both; their absence is a broken environment, not a reason to skip.
func TestConfigsPassProxyCheck(t *testing.T) {
	dir := t.TempDir()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	hcfg, err := HAProxy{Routes: []Route{l7, l4}}.Config()
	if err != nil {
		t.Fatal(err)
	}
	hpath := filepath.Join(dir, "haproxy.cfg")
	if err := os.WriteFile(hpath, []byte(hcfg), 0o600); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.CommandContext(ctx, "haproxy", "-c", "-f", hpath).CombinedOutput(); err != nil {
		t.Errorf("haproxy -c: %v\n%s\n%s", err, out, hcfg)
	}

	ndir := filepath.Join(dir, "nginx")
	if err := os.Mkdir(ndir, 0o700); err != nil {
		t.Fatal(err)
	}
	ncfg, err := Nginx{Routes: []Route{l7}}.Config(ndir)
	if err != nil {
		t.Fatal(err)
	}
	npath := filepath.Join(ndir, "nginx.conf")
	if err := os.WriteFile(npath, []byte(ncfg), 0o600); err != nil {
		t.Fatal(err)
	}
	out, err := exec.CommandContext(ctx, "nginx", "-t", "-p", ndir, "-e", filepath.Join(ndir, "error.log"), "-c", npath).CombinedOutput()
	if err != nil || !strings.Contains(string(out), "test is successful") {
		t.Errorf("nginx -t: %v\n%s\n%s", err, out, ncfg)
	}
}

func TestVersions(t *testing.T) {
	v := Versions()
	if !strings.HasPrefix(v["haproxy"], "HAProxy version") {
		t.Errorf("haproxy version = %q", v["haproxy"])
	}
	if !strings.HasPrefix(v["nginx"], "nginx version") {
		t.Errorf("nginx version = %q", v["nginx"])
	}
}
