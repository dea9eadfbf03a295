package main

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/kmesh-go/kmesh/pkg/admin"
	"github.com/kmesh-go/kmesh/pkg/logging"
	"github.com/kmesh-go/kmesh/pkg/model"
)

var update = flag.Bool("update", false, "rewrite the golden files")

type monitor struct {
	mu sync.Mutex
	on bool
}

func (m *monitor) MonitoringEnabled() bool { m.mu.Lock(); defer m.mu.Unlock(); return m.on }
func (m *monitor) SetMonitoring(on bool) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.on = on
	return nil
}

func fixtureSnapshot() *model.Snapshot {
	return &model.Snapshot{
		Version: "v7",
		Services: []model.Service{{
			Key: "default/web.default.svc.cluster.local", VIPs: []netip.Addr{netip.MustParseAddr("10.96.0.10")},
			Ports: []model.ServicePort{{Port: 80, TargetPort: 8080}, {Port: 443}},
			LB:    model.LoadBalancing{Algorithm: model.LBWeighted, Locality: model.LocalityFailover, RoutingPreference: []model.LocalityScope{model.ScopeRegion, model.ScopeZone}},
		}, {
			Key: "default/db.default.svc.cluster.local", VIPs: []netip.Addr{netip.MustParseAddr("10.96.0.20"), netip.MustParseAddr("fd00::20")},
			Ports:    []model.ServicePort{{Port: 5432}},
			Waypoint: &model.WaypointRef{Service: "default/waypoint", Port: 15019},
		}},
		Workloads: []model.Workload{{
			UID: "web-1", Addresses: []netip.Addr{netip.MustParseAddr("10.77.0.2")}, Healthy: true, Weight: 3,
			Locality:  model.Locality{Region: "eu", Zone: "eu-1"},
			Services:  map[string][]model.WorkloadPort{"default/web.default.svc.cluster.local": nil},
			Enrolment: &model.Enrolment{CgroupPath: "/kmesh/web-1"},
		}, {
			UID: "db-1", Addresses: []netip.Addr{netip.MustParseAddr("10.77.0.3")}, Healthy: false,
			Services:  map[string][]model.WorkloadPort{"default/db.default.svc.cluster.local": nil},
			Enrolment: &model.Enrolment{NetnsPath: "/run/netns/db"},
		}},
		Listeners:    []model.Listener{{Name: "web-80", Address: netip.MustParseAddrPort("10.96.0.10:80"), RouteConfig: "web"}},
		RouteConfigs: []model.RouteConfig{{Name: "web", VirtualHosts: []model.VirtualHost{{Name: "web", Domains: []string{"web.example", "*.web.example"}, Routes: []model.Route{{Match: model.RouteMatch{PathPrefix: "/api", Headers: []model.HeaderMatch{{Name: "x-canary", Present: true}}}, Action: model.RouteAction{WeightedClusters: []model.WeightedCluster{{Name: "v1", Weight: 90}, {Name: "v2", Weight: 10}}}}}}}}},
		Clusters:     []model.Cluster{{Name: "v1", Endpoints: []model.Endpoint{{Address: netip.MustParseAddrPort("10.77.0.2:8080")}}, MaxConnections: 100}},
	}
}

func fixtureBPF() *admin.BPFDump {
	return &admin.BPFDump{Layout: "v1", Maps: []admin.MapDump{
		{Name: "km_frontend", Type: "Hash", MaxEntries: 65536, Entries: 1, Columns: []string{"vip", "port", "service"},
			Rows: []map[string]string{{"vip": "10.96.0.10", "port": "80", "service": "1"}}},
		{Name: "km_service", Type: "Hash", MaxEntries: 16384, Entries: 1, Columns: []string{"id", "lb", "endpoints"},
			Rows: []map[string]string{{"id": "1", "lb": "random", "endpoints": "2"}}},
	}}
}

// startDaemonAPI runs the real admin server with fixture providers.
func startDaemonAPI(t *testing.T) string {
	t.Helper()
	reg := logging.New(logging.Options{})
	reg.Logger("xds")
	reg.Logger("dataplane")
	s, err := admin.Listen(admin.Options{
		Address:    "127.0.0.1:0",
		Logging:    reg,
		ConfigDump: func(context.Context) (any, error) { return fixtureSnapshot(), nil },
		BPFDump:    func(context.Context) (*admin.BPFDump, error) { return fixtureBPF(), nil },
		Ready:      func() error { return errors.New("waiting for the first xDS sync") },
		Monitoring: &monitor{on: true},
		Status:     func() map[string]any { return map[string]any{"mode": "dual-engine", "source": "embedded"} },
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { s.Serve(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	return s.Addr().String()
}

func runCtl(t *testing.T, args ...string) (string, error) {
	t.Helper()
	cmd := newRootCommand()
	var out bytes.Buffer
	cmd.SetOut(&out)
	cmd.SetErr(&out)
	cmd.SetArgs(args)
	err := cmd.ExecuteContext(context.Background())
	return out.String(), err
}

func golden(t *testing.T, name, got string) {
	t.Helper()
	path := filepath.Join("testdata", name+".golden")
	if *update {
		if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run go test ./daemon/kmeshctl -update)", err)
	}
	if got != string(want) {
		t.Fatalf("%s differs from golden\n--- got\n%s\n--- want\n%s", name, got, want)
	}
}

func TestGoldenOutputs(t *testing.T) {
	cases := map[string][]string{
		"dump_config_table": {"dump", "config"},
		"dump_config_json":  {"dump", "config", "-o", "json"},
		"dump_config_yaml":  {"dump", "config", "-o", "yaml"},
		"dump_bpf_table":    {"dump", "bpf"},
		"dump_bpf_json":     {"dump", "bpf", "-o", "json"},
		"dump_bpf_yaml":     {"dump", "bpf", "-o", "yaml", "--map", "km_service"},
		"log_get":           {"log"},
		"log_set":           {"log", "--set", "xds:debug"},
		"monitoring_off":    {"monitoring", "disable"},
	}
	for name, args := range cases {
		t.Run(name, func(t *testing.T) {
			addr := startDaemonAPI(t) // each case gets fresh state (log levels, monitoring)
			out, err := runCtl(t, append(args, "--admin", addr)...)
			if err != nil {
				t.Fatalf("%v\n%s", err, out)
			}
			golden(t, name, out)
		})
	}
}

func TestStatusShowsReadinessAndDaemonFields(t *testing.T) {
	addr := startDaemonAPI(t)
	out, err := runCtl(t, "status", "--admin", addr)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"no (waiting for the first xDS sync)", "mode", "dual-engine", "monitoring   true"} {
		if !strings.Contains(out, want) {
			t.Fatalf("status lacks %q:\n%s", want, out)
		}
	}
}

func TestUsefulErrors(t *testing.T) {
	addr := startDaemonAPI(t)
	cases := []struct {
		args []string
		want string
	}{
		{[]string{"dump", "config", "--admin", "127.0.0.1:1"}, "is kmeshd running?"},
		{[]string{"dump", "config", "--admin", "unix:/nonexistent/kmesh.sock"}, "is kmeshd running?"},
		{[]string{"dump", "config", "--admin", "10.0.0.1:15200"}, "loopback or a unix socket only"},
		{[]string{"dump", "config", "-o", "xml", "--admin", addr}, `unknown output format "xml"`},
		{[]string{"dump", "bpf", "--map", "nope", "--admin", addr}, "no map \"nope\" (maps: km_frontend, km_service)"},
		{[]string{"log", "--set", "xds", "--admin", addr}, "want name:level"},
		{[]string{"log", "--set", "nope:debug", "--admin", addr}, `no logger named "nope"`},
		{[]string{"log", "--set", "xds:loud", "--admin", addr}, `unknown log level "loud"`},
	}
	for _, c := range cases {
		_, err := runCtl(t, c.args...)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("kmeshctl %s: got %v, want error containing %q", strings.Join(c.args, " "), err, c.want)
		}
	}
}
