package bench

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"

	"github.com/kmesh-go/kmesh/bench/load"
	"github.com/kmesh-go/kmesh/bench/report"
	"github.com/kmesh-go/kmesh/pkg/dataplane"
	"github.com/kmesh-go/kmesh/pkg/kmod"
	"github.com/kmesh-go/kmesh/pkg/l7"
	"github.com/kmesh-go/kmesh/pkg/model"
)

// kernelNative is scenario 7: HTTP routing in the kernel (kmesh.ko and the
// kernel-native programs, driven through pkg/l7 as kmeshd drives them). The
// client dials a VIP routed nowhere; its connect is deferred, the first
// request is parsed and matched against an Envoy-style route table in the
// kernel, and the connection goes straight to the server. kmesh.ko loads only
// on the Debian 6.12 VM tier (`bench -vm`), so its numbers are ratios to
// direct and to the HAProxy L7 hop measured in the same guest run.
type kernelNative struct {
	vip      netip.Addr
	clientCg string
	eng      *l7.Engine
	mod      *kmod.Conn
}

func newKernelNative() *kernelNative { return &kernelNative{vip: netip.MustParseAddr("10.96.0.12")} }

func (k *kernelNative) Info() report.ScenarioInfo {
	return report.ScenarioInfo{Name: report.KernelNative, Title: "kernel-native (kmesh.ko)", Protos: httpOnly,
		Description: fmt.Sprintf("client → VIP %s; the first request of each connection is routed in the kernel (kmesh.ko parser kfuncs, "+
			"deferred connect, route table of 4 virtual hosts / 6 routes) straight to the server; no proxy (pkg/l7)", k.vip)}
}

var errKernelNativeVM = errors.New("needs kmesh.ko, which loads only in the Debian 6.12 VM tier: run `bench -vm` (docs/bench.md, kernel-native)")

func (k *kernelNative) Available(e *Env) error {
	if err := kmod.Check(); err != nil && !(errors.Is(err, kmod.ErrModuleAbsent) && os.Getenv("KMESH_KMOD_PATH") != "") {
		return fmt.Errorf("%w: %v", errKernelNativeVM, err)
	}
	if e == nil || e.Lab == nil || e.Lab.Cgroup == "" {
		return fmt.Errorf("needs cgroup v2 (the programs attach to a cgroup)")
	}
	return nil // kmesh.ko is loaded, or Setup loads it from KMESH_KMOD_PATH
}

func (k *kernelNative) Setup(ctx context.Context, e *Env) error {
	name := report.KernelNative
	c, err := kmod.Ensure(kmod.Options{ModulePath: os.Getenv("KMESH_KMOD_PATH")})
	if err != nil {
		return err
	}
	k.mod = c
	e.Lab.Defer("close kmesh.ko control", c.Close)
	attach, err := e.Lab.SubCgroup(name)
	if err != nil {
		return err
	}
	if k.clientCg, err = e.Lab.SubCgroup(filepath.Join(name, "client")); err != nil {
		return err
	}
	dp, log, err := openDataplane(e, name, attach, dataplane.Options{}, l7.Uninstall)
	if err != nil {
		return err
	}
	eng, err := l7.Open(l7.Options{Dataplane: dp, StateDir: filepath.Join(e.Lab.Dir, name+"-state"), Logger: log})
	if err != nil {
		return fmt.Errorf("kernel-native: %w", err)
	}
	e.Lab.Defer("close kernel-native engine", eng.Close)
	k.eng = eng
	if err := eng.Apply(ctx, &model.Snapshot{Workloads: []model.Workload{{UID: "bench/client", Name: "client", Namespace: "bench",
		Healthy: true, Enrolment: &model.Enrolment{NetnsPath: e.Client.NS.Path()}}}}); err != nil {
		return fmt.Errorf("enrolling the client: %w", err)
	}
	// A route table where the benchmark's requests (Host = the VIP, fortio's
	// paths) miss an exact domain, two wildcards, an exact path and a
	// header match before they reach their route, so the measured decision
	// does real matching work.
	to := func(c string) model.RouteAction { return model.RouteAction{Cluster: c} }
	all := model.RouteMatch{PathPrefix: "/"}
	srv := model.Cluster{Name: "bench-server", Endpoints: []model.Endpoint{{Address: e.ServerAddr(load.HTTP), Weight: 1}}}
	other := model.Cluster{Name: "bench-other", Endpoints: []model.Endpoint{{Address: e.ServerAddr(load.HTTP), Weight: 1}}}
	snap := &model.Snapshot{
		Version:   "bench-kernel-native",
		Clusters:  []model.Cluster{srv, other},
		Listeners: []model.Listener{{Name: "bench", Address: netip.AddrPortFrom(k.vip, 80), RouteConfig: "bench", TCPRoute: &model.RouteAction{Cluster: "bench-other"}}},
		RouteConfigs: []model.RouteConfig{{Name: "bench", VirtualHosts: []model.VirtualHost{
			{Name: "api", Domains: []string{"api.bench.example"}, Routes: []model.Route{{Match: all, Action: to("bench-other")}}},
			{Name: "static", Domains: []string{"*.static.bench.example"}, Routes: []model.Route{{Match: all, Action: to("bench-other")}}},
			{Name: "admin", Domains: []string{"admin.*"}, Routes: []model.Route{{Match: all, Action: to("bench-other")}}},
			{Name: "default", Domains: []string{"*"}, Routes: []model.Route{
				{Match: model.RouteMatch{PathExact: "/healthz"}, Action: to("bench-other")},
				{Match: model.RouteMatch{PathPrefix: "/", Headers: []model.HeaderMatch{{Name: "x-canary", Exact: "true"}}}, Action: to("bench-other")},
				{Match: all, Action: to("bench-server")},
			}},
		}}},
	}
	if err := eng.ApplyL7(ctx, snap); err != nil {
		return fmt.Errorf("kernel-native routes: %w", err)
	}
	return nil
}

func (k *kernelNative) Target(load.Proto) Target {
	return Target{Addr: netip.AddrPortFrom(k.vip, 80), Cgroup: k.clientCg}
}

// Check reads the kernel's own counters: connections must have been
// deferred and redirected by the router, which decided by an HTTP route.
func (k *kernelNative) Check(*Env) (string, error) {
	if k.eng == nil || k.mod == nil {
		return "", fmt.Errorf("kernel-native not set up")
	}
	st, err := k.eng.Stats()
	if err != nil {
		return "", err
	}
	ms, err := k.mod.Stats()
	if err != nil {
		return "", err
	}
	evidence := fmt.Sprintf("kernel counters: deferred=%d routed_http=%d no_route=%d; kmesh.ko redirects=%d parsed=%d",
		st["deferred"], st["routed_http"], st["no_route"], ms.Redirects, ms.Parsed)
	if st["routed_http"] == 0 || ms.Redirects == 0 {
		return evidence, fmt.Errorf("no connection was routed by the kernel")
	}
	return evidence, nil
}
