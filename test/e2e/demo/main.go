// Command demo is `sudo make demo`: it builds a small network-namespace
// topology, starts kmeshd on the embedded control plane with
// deploy/standalone/demo.yaml (demo-kn.yaml with -mode kernel-native, which
// `make demo MODE=kernel-native` runs inside the Debian 6.12 VM with kmesh.ko), sends traffic from the client namespace to the
// service VIP (which is routed nowhere: only kmesh's connect-time rewrite makes
// it reachable), prints per-backend counts and latency, edits the config live
// (a weight change, then a bad edit that is rejected) and shows the effect,
// and removes everything it created, also on Ctrl-C.
package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/kmesh-go/kmesh/pkg/kmod"
	"github.com/kmesh-go/kmesh/pkg/netns"
	"github.com/kmesh-go/kmesh/pkg/probe"
)

// The topology (also described in deploy/standalone/demo.yaml).
const (
	nsBridge = "kmdemo-br"
	nsClient = "kmdemo-client"
	vip      = "10.96.78.10:80"
	subnet   = "10.78.0.%d/24"
)

// kmodPath is kmeshd's --kmod-path in kernel-native mode.
var kmodPath string

var backends = []struct{ ns, ip, name string }{
	{"kmdemo-be1", "10.78.0.2", "echo-v1"},
	{"kmdemo-be2", "10.78.0.3", "echo-v2"},
}

func main() {
	if len(os.Args) > 1 && os.Args[1] == "client" {
		clientMain(os.Args[2:])
		return
	}
	mode := flag.String("mode", "dual-engine", "dual-engine, or kernel-native (needs kmesh.ko: make demo MODE=kernel-native runs it in the 6.12 VM)")
	kmeshd := flag.String("kmeshd", ".build/kmeshd", "kmeshd binary (make demo builds it)")
	config := flag.String("config", "", "demo config (copied; the copy is edited); default deploy/standalone/demo.yaml, demo-kn.yaml for kernel-native")
	flag.StringVar(&kmodPath, "kmod-path", os.Getenv("KMESH_KMOD_PATH"), "kernel-native: kmesh.ko for kmeshd --kmod-path")
	requests := flag.Int("n", 200, "requests per phase")
	flag.Parse()
	if *config == "" {
		*config = "deploy/standalone/demo.yaml"
		if *mode == "kernel-native" {
			*config = "deploy/standalone/demo-kn.yaml"
		}
	}
	if err := run(*mode, *kmeshd, *config, *requests); err != nil {
		fmt.Fprintln(os.Stderr, "demo:", err)
		os.Exit(1)
	}
}

// cleanup runs registered undo steps in reverse, once.
type cleanup struct {
	mu    sync.Mutex
	steps []func()
	done  bool
}

func (c *cleanup) add(f func()) { c.mu.Lock(); c.steps = append(c.steps, f); c.mu.Unlock() }

func (c *cleanup) run() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.done {
		return
	}
	c.done = true
	for i := len(c.steps) - 1; i >= 0; i-- {
		c.steps[i]()
	}
}

func step(format string, a ...any) { fmt.Printf("\n==> "+format+"\n", a...) }

func run(mode, kmeshd, config string, n int) error {
	if os.Geteuid() != 0 {
		return errors.New("needs root (sudo make demo)")
	}
	if mode != "dual-engine" && mode != "kernel-native" {
		return fmt.Errorf("mode %q: dual-engine or kernel-native", mode)
	}
	if _, err := os.Stat(kmeshd); err != nil {
		return fmt.Errorf("%s: %w (run make build)", kmeshd, err)
	}
	kmeshd, _ = filepath.Abs(kmeshd)
	cl := &cleanup{}
	defer cl.run()
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, os.Interrupt, syscall.SIGTERM)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() {
		if _, ok := <-sigs; ok {
			fmt.Println("\ninterrupted: cleaning up")
			cancel()
		}
	}()

	tmp, err := os.MkdirTemp("", "kmesh-demo-")
	if err != nil {
		return err
	}
	cl.add(func() { os.RemoveAll(tmp) })

	step("creating the topology: %s (client, 10.78.0.1), %s, %s on a bridge in %s", nsClient, backends[0].ns, backends[1].ns, nsBridge)
	if err := topology(cl); err != nil {
		return err
	}
	for _, b := range backends {
		if err := serveBackend(cl, b.ns, b.ip, b.name); err != nil {
			return err
		}
	}
	fmt.Printf("    backends: echo-v1 at 10.78.0.2:8080, echo-v2 at 10.78.0.3:8080; service VIP %s (routed nowhere)\n", vip)

	// A dedicated cgroup for kmeshd's programs, so the demo touches no other process.
	mount, err := probe.Cgroup2Mount(os.Getenv("KMESH_CGROUP2"))
	if err != nil {
		return err
	}
	cg := filepath.Join(mount, "kmesh-demo")
	os.Remove(cg)
	if err := os.Mkdir(cg, 0o755); err != nil {
		return fmt.Errorf("cgroup: %w", err)
	}
	cl.add(func() { killCgroup(cg) })

	step("without kmesh: the client cannot reach the VIP")
	if r := clientRun(ctx, cg, 1); r.Errors == 0 {
		return errors.New("the VIP answered without kmesh; is another mesh running?")
	} else {
		fmt.Printf("    connect %s: %s\n", vip, r.FirstError)
	}

	cfg := filepath.Join(tmp, "demo.yaml")
	orig, err := os.ReadFile(config)
	if err != nil {
		return err
	}
	if err := os.WriteFile(cfg, orig, 0o644); err != nil {
		return err
	}
	step("starting kmeshd (embedded control plane on %s)", cfg)
	logPath := filepath.Join(tmp, "kmeshd.log")
	pinDir := fmt.Sprintf("kmesh-demo-%d", os.Getpid())
	args := []string{"--config", cfg, "--xds-listen", "127.0.0.1:0", "--cgroup", "kmesh-demo",
		"--pin-dir", pinDir, "--state-dir", filepath.Join(tmp, "state")}
	if mode == "kernel-native" {
		args = append(args, "--mode=kernel-native", "--kmod-path", kmodPath, "--admin-address", "off", "--metrics-address", "off")
	}
	logf, err := os.Create(logPath)
	if err != nil {
		return err
	}
	d := exec.Command(kmeshd, args...)
	d.Stdout, d.Stderr = logf, logf
	if err := d.Start(); err != nil {
		return err
	}
	fmt.Printf("    %s %s\n    log: %s\n", kmeshd, strings.Join(args, " "), logPath)
	exited := make(chan error, 1)
	go func() { exited <- d.Wait() }()
	cl.add(func() {
		d.Process.Signal(syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(10 * time.Second):
			d.Process.Kill()
			<-exited
		}
		// Detach and unpin everything kmeshd created.
		u := exec.Command(kmeshd, append([]string{"uninstall"}, args[4:]...)...)
		if out, err := u.CombinedOutput(); err != nil {
			fmt.Printf("kmeshd uninstall: %v: %s\n", err, out)
		}
	})

	// Ready when the client gets an answer through the VIP.
	deadline := time.Now().Add(30 * time.Second)
	for {
		if r := clientRun(ctx, cg, 1); r.Errors == 0 {
			break
		}
		select {
		case err := <-exited:
			exited <- err
			tail(logPath)
			return fmt.Errorf("kmeshd exited: %v", err)
		case <-ctx.Done():
			return ctx.Err()
		default:
		}
		if time.Now().After(deadline) {
			tail(logPath)
			return errors.New("kmeshd did not start serving the VIP within 30 s")
		}
		time.Sleep(200 * time.Millisecond)
	}

	if mode == "kernel-native" {
		return kernelNativePhases(ctx, cg, cfg, string(orig), logPath, n)
	}
	step("phase 1: %d requests from %s to http://%s/ (weights echo-v1=1 echo-v2=1)", n, nsClient, vip)
	if err := phase(ctx, cg, n); err != nil {
		return err
	}

	step("live edit: echo-v2 weight 1 -> 3 (the file is rewritten; kmeshd applies it within ~100 ms)")
	edited := strings.Replace(string(orig), "    addresses: [10.78.0.3]\n    services: [{service: echo}]\n    weight: 1",
		"    addresses: [10.78.0.3]\n    services: [{service: echo}]\n    weight: 3", 1)
	if edited == string(orig) {
		return errors.New("demo.yaml does not have the expected echo-v2 entry")
	}
	if err := replaceFile(cfg, edited); err != nil {
		return err
	}
	waitLog(logPath, "config reloaded", 5*time.Second)
	time.Sleep(300 * time.Millisecond) // the push reaches the daemon's maps within milliseconds; leave margin
	step("phase 2: %d requests (expect about 25%% echo-v1, 75%% echo-v2)", n)
	if err := phase(ctx, cg, n); err != nil {
		return err
	}

	step("bad edit: the VIP becomes 10.96.78.999")
	if err := replaceFile(cfg, strings.Replace(edited, "vips: [10.96.78.10]", "vips: [10.96.78.999]", 1)); err != nil {
		return err
	}
	if line := waitLog(logPath, "config rejected", 5*time.Second); line != "" {
		fmt.Println("    kmeshd:", line)
	}
	fmt.Println("    the last good config keeps serving:")
	if err := phase(ctx, cg, n/4); err != nil {
		return err
	}
	step("cleaning up (kmeshd stopped and uninstalled, namespaces and cgroup removed)")
	return nil
}

func replaceFile(path, content string) error {
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, []byte(content), 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

// waitLog waits for a log line containing s (after the call) and returns it.
func waitLog(path, s string, timeout time.Duration) string {
	seen := countLines(path, s)
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		if lines := matching(path, s); len(lines) > seen {
			return lines[len(lines)-1]
		}
		time.Sleep(50 * time.Millisecond)
	}
	fmt.Printf("    (no %q in the log after %v)\n", s, timeout)
	tail(path)
	return ""
}

func countLines(path, s string) int { return len(matching(path, s)) }

func matching(path, s string) []string {
	f, err := os.Open(path)
	if err != nil {
		return nil
	}
	defer f.Close()
	var out []string
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		if strings.Contains(sc.Text(), s) {
			out = append(out, sc.Text())
		}
	}
	return out
}

func tail(path string) {
	b, _ := os.ReadFile(path)
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	if len(lines) > 20 {
		lines = lines[len(lines)-20:]
	}
	fmt.Println("--- kmeshd log (last lines) ---")
	fmt.Println(strings.Join(lines, "\n"))
}

func phase(ctx context.Context, cg string, n int) error {
	r := clientRun(ctx, cg, n)
	if ctx.Err() != nil {
		return ctx.Err()
	}
	names := make([]string, 0, len(r.Counts))
	for k := range r.Counts {
		names = append(names, k)
	}
	sort.Strings(names)
	for _, k := range names {
		c := r.Counts[k]
		fmt.Printf("    %-8s %4d  %5.1f%%  %s\n", k, c, 100*float64(c)/float64(n), strings.Repeat("#", c*50/n))
	}
	fmt.Printf("    errors   %4d\n", r.Errors)
	fmt.Printf("    latency per request (new connection each): p50 %v  p90 %v  p99 %v\n", r.P50, r.P90, r.P99)
	if r.Errors > 0 {
		return fmt.Errorf("%d of %d requests failed (first: %s)", r.Errors, n, r.FirstError)
	}
	return nil
}

// ---- topology ----------------------------------------------------------------

func sh(args ...string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, args[0], args[1:]...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s: %v: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}

func topology(cl *cleanup) error {
	all := []string{nsBridge, nsClient}
	for _, b := range backends {
		all = append(all, b.ns)
	}
	for _, ns := range all { // leftovers of an interrupted run
		exec.Command("ip", "netns", "del", ns).Run()
	}
	for _, ns := range all {
		if err := sh("ip", "netns", "add", ns); err != nil {
			return err
		}
		cl.add(func() { exec.Command("ip", "netns", "del", ns).Run() })
		if err := sh("ip", "-n", ns, "link", "set", "lo", "up"); err != nil {
			return err
		}
	}
	if err := sh("ip", "-n", nsBridge, "link", "add", "br0", "type", "bridge"); err != nil {
		return err
	}
	if err := sh("ip", "-n", nsBridge, "link", "set", "br0", "up"); err != nil {
		return err
	}
	hosts := []string{nsClient}
	for _, b := range backends {
		hosts = append(hosts, b.ns)
	}
	for i, ns := range hosts {
		peer := fmt.Sprintf("p%d", i+1)
		for _, c := range [][]string{
			{"ip", "link", "add", "eth0", "netns", ns, "type", "veth", "peer", "name", peer, "netns", nsBridge},
			{"ip", "-n", nsBridge, "link", "set", peer, "master", "br0", "up"},
			{"ip", "-n", ns, "addr", "add", fmt.Sprintf(subnet, i+1), "dev", "eth0"},
			{"ip", "-n", ns, "link", "set", "eth0", "up"},
		} {
			if err := sh(c...); err != nil {
				return err
			}
		}
	}
	return nil
}

// inNetns runs fn on a thread switched into the named namespace; sockets made
// there stay in it.
func inNetns(ns string, fn func() error) error { return netns.Do("/run/netns/"+ns, fn) }

func serveBackend(cl *cleanup, ns, ip, name string) error {
	var ln net.Listener
	if err := inNetns(ns, func() (err error) { ln, err = net.Listen("tcp", ip+":8080"); return err }); err != nil {
		return fmt.Errorf("backend %s: %w", name, err)
	}
	srv := &http.Server{ReadHeaderTimeout: 5 * time.Second, Handler: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		io.WriteString(w, name+"\n")
	})}
	go srv.Serve(ln)
	cl.add(func() { srv.Close() })
	return nil
}

func killCgroup(path string) {
	os.WriteFile(filepath.Join(path, "cgroup.kill"), []byte("1"), 0)
	for i := 0; i < 100; i++ {
		if err := os.Remove(path); err == nil || errors.Is(err, os.ErrNotExist) {
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// ---- client ------------------------------------------------------------------

type result struct {
	Counts        map[string]int
	Errors        int
	FirstError    string
	P50, P90, P99 time.Duration
}

// clientRun runs this program's client mode inside the client namespace and
// the demo cgroup (clone3 CLONE_INTO_CGROUP on `ip netns exec`, inherited by
// the exec'd client).
func clientRun(ctx context.Context, cg string, n int) result {
	return clientRunReq(ctx, cg, n, request{})
}

// request says what the client sends (kernel-native phases route on it).
type request struct {
	Host, Path string
	Header     map[string]string
	KeepAlive  bool // all n requests on one connection
}

func clientRunReq(ctx context.Context, cg string, n int, rq request) result {
	self, _ := os.Executable()
	cgfd, err := unix.Open(cg, unix.O_DIRECTORY|unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return result{Errors: n, FirstError: err.Error()}
	}
	defer unix.Close(cgfd)
	cctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	rqj, _ := json.Marshal(rq)
	cmd := exec.CommandContext(cctx, "ip", "netns", "exec", nsClient, self, "client", vip, fmt.Sprint(n), string(rqj))
	cmd.SysProcAttr = &syscall.SysProcAttr{UseCgroupFD: true, CgroupFD: cgfd}
	out, err := cmd.Output()
	var r result
	if err == nil {
		err = json.Unmarshal(out, &r)
	}
	if err != nil {
		return result{Errors: n, FirstError: err.Error()}
	}
	return r
}

// clientMain: GET http://VIP/ n times, a new connection each, and report
// which backend answered and how long each request took.
func clientMain(args []string) {
	addr, n := args[0], 0
	fmt.Sscan(args[1], &n)
	var rq request
	if len(args) > 2 {
		json.Unmarshal([]byte(args[2]), &rq)
	}
	if rq.Path == "" {
		rq.Path = "/"
	}
	r := result{Counts: map[string]int{}}
	var lat []time.Duration
	hc := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DisableKeepAlives: !rq.KeepAlive, MaxIdleConnsPerHost: 1}}
	for i := 0; i < n; i++ {
		start := time.Now()
		req, _ := http.NewRequest("GET", "http://"+addr+rq.Path, nil)
		if rq.Host != "" {
			req.Host = rq.Host
		}
		for k, v := range rq.Header {
			req.Header.Set(k, v)
		}
		resp, err := hc.Do(req)
		if err == nil {
			var b []byte
			b, err = io.ReadAll(resp.Body)
			resp.Body.Close()
			if err == nil {
				r.Counts[strings.TrimSpace(string(b))]++
				lat = append(lat, time.Since(start))
				continue
			}
		}
		r.Errors++
		if r.FirstError == "" {
			r.FirstError = err.Error()
		}
	}
	if len(lat) > 0 {
		sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
		pct := func(p float64) time.Duration {
			return lat[min(len(lat)-1, int(p*float64(len(lat))))].Round(time.Microsecond)
		}
		r.P50, r.P90, r.P99 = pct(0.50), pct(0.90), pct(0.99)
	}
	json.NewEncoder(os.Stdout).Encode(r)
}

// ---- kernel-native -----------------------------------------------------------

// kernelNativePhases shows in-kernel HTTP routing: by Host, header and path,
// a weighted split decided per connection, a live route edit, a rejected
// edit, and kmesh.ko's counters (every connection deferred and redirected in
// the kernel: no proxy on the path).
func kernelNativePhases(ctx context.Context, cg, cfg, orig, logPath string, n int) error {
	// want: the backend that must answer at least share of the requests
	// ("" = any single backend answers all of them, a keep-alive connection).
	conns := 0
	table := func(what string, rq request, count int, want string, share float64) error {
		r := clientRunReq(ctx, cg, count, rq)
		if rq.KeepAlive {
			conns++
		} else {
			conns += count
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		var parts []string
		names := make([]string, 0, len(r.Counts))
		for k := range r.Counts {
			names = append(names, k)
		}
		sort.Strings(names)
		for _, k := range names {
			parts = append(parts, fmt.Sprintf("%s %d (%.0f%%)", k, r.Counts[k], 100*float64(r.Counts[k])/float64(count)))
		}
		fmt.Printf("    %-44s -> %s   p50 %v\n", what, strings.Join(parts, ", "), r.P50)
		if r.Errors > 0 {
			return fmt.Errorf("%s: %d of %d requests failed (first: %s)", what, r.Errors, count, r.FirstError)
		}
		if want == "" && len(r.Counts) != 1 {
			return fmt.Errorf("%s: answered by %v, want one backend for the whole connection", what, r.Counts)
		}
		if want != "" && float64(r.Counts[want]) < share*float64(count) {
			return fmt.Errorf("%s: %s answered %d of %d, want at least %.0f%%: not routed as configured", what, want, r.Counts[want], count, 100*share)
		}
		return nil
	}
	step("phase 1: in-kernel routing of http://%s (each request a new connection)", vip)
	for _, c := range []struct {
		what, want string
		rq         request
	}{
		{"GET / (default route)", "echo-v1", request{}},
		{"GET / Host: v2.demo (virtual host)", "echo-v2", request{Host: "v2.demo"}},
		{"GET / Host: canary.v2.demo (*.v2.demo)", "echo-v2", request{Host: "canary.v2.demo"}},
		{"GET / x-version: v2 (header match)", "echo-v2", request{Header: map[string]string{"x-version": "v2"}}},
	} {
		if err := table(c.what, c.rq, n/4, c.want, 1); err != nil {
			return err
		}
	}
	step("phase 2: /api/ is split 90/10 between echo-v1 and echo-v2, decided per connection")
	if err := table("GET /api/items, new connection each", request{Path: "/api/items"}, n, "echo-v1", 0.75); err != nil {
		return err
	}
	if err := table("GET /api/items, one keep-alive connection", request{Path: "/api/items", KeepAlive: true}, n/4, "", 0); err != nil {
		return err
	}
	fmt.Println("    (a keep-alive connection keeps the backend its first request chose)")

	step("live edit: /api/ weights 90/10 -> 10/90")
	edited := strings.Replace(orig, "weight: 90}, {service: demo/echo-v2, weight: 10}", "weight: 10}, {service: demo/echo-v2, weight: 90}", 1)
	if edited == orig {
		return errors.New("demo-kn.yaml does not have the expected /api/ split")
	}
	if err := replaceFile(cfg, edited); err != nil {
		return err
	}
	waitLog(logPath, "kernel-native config applied", 10*time.Second)
	if err := table("GET /api/items, new connection each", request{Path: "/api/items"}, n, "echo-v2", 0.75); err != nil {
		return err
	}

	step("bad edit: a route prefix without its leading /")
	if err := replaceFile(cfg, strings.Replace(edited, "prefix: /api/", "prefix: api/", 1)); err != nil {
		return err
	}
	if line := waitLog(logPath, "config rejected", 10*time.Second); line != "" {
		fmt.Println("    kmeshd:", line)
	}
	fmt.Println("    the last good config keeps serving:")
	if err := table("GET /api/items, new connection each", request{Path: "/api/items"}, n/2, "echo-v2", 0.75); err != nil {
		return err
	}

	step("no proxy on the path: kmesh.ko's counters")
	c, err := kmod.Dial()
	if err != nil {
		return fmt.Errorf("kmesh.ko counters: %w", err)
	}
	st, err := c.Stats()
	c.Close()
	if err != nil {
		return fmt.Errorf("kmesh.ko counters: %w", err)
	}
	fmt.Printf("    %d connections made; connects deferred %d, routing decisions %d, redirected to a backend %d, HTTP heads parsed %d, fallbacks %d\n",
		conns, st.Deferred, st.Decisions, st.Redirects, st.Parsed, st.Fallbacks)
	if st.Fallbacks != 0 || st.Decisions < uint64(conns) || st.Redirects != st.Decisions {
		return fmt.Errorf("not every connection was routed in the kernel (%d connections, %d decisions, %d redirects, %d fallbacks)",
			conns, st.Decisions, st.Redirects, st.Fallbacks)
	}
	fmt.Println("    every connection went from the client's socket straight to the backend; the kernel chose it")
	step("cleaning up (kmeshd stopped and uninstalled, namespaces and cgroup removed)")
	return nil
}
