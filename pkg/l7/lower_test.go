package l7

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/kmesh-go/kmesh/pkg/dataplane"
	"github.com/kmesh-go/kmesh/pkg/kmod"
	"github.com/kmesh-go/kmesh/pkg/model"
)

func rc(name string, vhs ...model.VirtualHost) model.RouteConfig {
	return model.RouteConfig{Name: name, VirtualHosts: vhs}
}

func vh(name string, domains []string, routes ...model.Route) model.VirtualHost {
	return model.VirtualHost{Name: name, Domains: domains, Routes: routes}
}

func to(c string) model.Route {
	return model.Route{Match: model.RouteMatch{PathPrefix: "/"}, Action: model.RouteAction{Cluster: c}}
}

func TestLowerDomainsInEnvoyOrder(t *testing.T) {
	s := &model.Snapshot{
		Listeners: []model.Listener{{Name: "l", Address: netip.MustParseAddrPort("10.0.0.1:80"), RouteConfig: "r"}},
		RouteConfigs: []model.RouteConfig{rc("r",
			vh("a", []string{"Exact.Example", "exact.example:8080"}, to("c1")),
			vh("b", []string{"*.example"}, to("c2")),
			vh("c", []string{"*.deep.example", "api.*"}, to("c3")),
			vh("d", []string{"api.v2.*", "*.x:80"}, to("c4")),
			vh("e", []string{"*"}, to("c5")),
		)},
	}
	tb, err := Lower(s)
	if err != nil {
		t.Fatal(err)
	}
	got := tb.RouteConfigs[0]
	wantExact := []ExactDomain{{"exact.example", 1}, {"exact.example:8080", 1}}
	if !reflect.DeepEqual(got.Exact, wantExact) {
		t.Errorf("exact: %+v", got.Exact)
	}
	// Longest suffix first, then longest prefix; ":port" patterns compare the
	// whole Host.
	var order []string
	for _, w := range got.Wildcard {
		kind := "prefix"
		if w.Suffix {
			kind = "suffix"
		}
		order = append(order, fmt.Sprintf("%s:%s:%d:%v", kind, w.Pattern, w.VH, w.Port))
	}
	want := []string{"suffix:.deep.example:3:false", "suffix:.example:2:false", "suffix:.x:80:4:true",
		"prefix:api.v2.:4:false", "prefix:api.:3:false"}
	if strings.Join(order, " ") != strings.Join(want, " ") {
		t.Errorf("wildcards:\n got  %v\n want %v", order, want)
	}
	if got.AnyVH != 5 {
		t.Errorf("any vhost %d, want 5", got.AnyVH)
	}
	if f := got.Wildcard[0].MatchFlags(); f != kmod.MatchSuffix|kmod.MatchNoPort {
		t.Errorf("suffix flags %#x", f)
	}
	if f := got.Wildcard[2].MatchFlags(); f != kmod.MatchSuffix {
		t.Errorf("suffix with port flags %#x", f)
	}
	if f := got.Wildcard[3].MatchFlags(); f != kmod.MatchPrefix|kmod.MatchNoPort {
		t.Errorf("prefix flags %#x", f)
	}
}

func TestLowerRoutesHeadersAndActions(t *testing.T) {
	s := &model.Snapshot{
		Listeners: []model.Listener{
			{Name: "web", Address: netip.MustParseAddrPort("10.0.0.1:80"), RouteConfig: "r", TCPRoute: &model.RouteAction{Cluster: "tcp"}},
			{Name: "any", Address: netip.MustParseAddrPort("0.0.0.0:8080"), RouteConfig: "r"},
			{Name: "raw", Address: netip.MustParseAddrPort("[::ffff:10.0.0.2]:9000"), TCPRoute: &model.RouteAction{
				WeightedClusters: []model.WeightedCluster{{Name: "a", Weight: 1}, {Name: "zero", Weight: 0}, {Name: "b", Weight: 3}}}},
		},
		RouteConfigs: []model.RouteConfig{rc("r", vh("v", []string{"*"},
			model.Route{Match: model.RouteMatch{PathExact: "/exact"}, Action: model.RouteAction{Cluster: "a"}},
			model.Route{Name: "h", Match: model.RouteMatch{PathPrefix: "/p/", Headers: []model.HeaderMatch{
				{Name: "X-Canary", Exact: "true"}, {Name: "x-tier", Prefix: "gold"}, {Name: "x-debug", Present: true}}},
				Action: model.RouteAction{WeightedClusters: []model.WeightedCluster{{Name: "a", Weight: 10}, {Name: "b", Weight: 30}}}},
			to("b"),
		))},
		Clusters: []model.Cluster{{Name: "b"}, {Name: "a"}},
	}
	tb, err := Lower(s)
	if err != nil {
		t.Fatal(err)
	}
	if len(tb.Routes) != 3 || !tb.Routes[0].Exact || tb.Routes[0].Path != "/exact" || tb.Routes[1].Exact || tb.Routes[2].Path != "/" {
		t.Fatalf("routes %+v", tb.Routes)
	}
	for i, r := range tb.Routes {
		if r.VH != 1 || r.Idx != uint32(i) {
			t.Errorf("route %d: vh %d idx %d", i, r.VH, r.Idx)
		}
	}
	if h := tb.Routes[1].Headers; len(h) != 3 || h[0].Name != "x-canary" || h[1].Prefix != "gold" || !h[2].Present {
		t.Errorf("headers %+v", h)
	}
	act := func(id uint32) Action { return tb.Actions[id-1] }
	if a := act(tb.Routes[1].Action); !reflect.DeepEqual(a, Action{Clusters: []string{"a", "b"}, Weights: []uint32{10, 30}}) {
		t.Errorf("weighted action %+v", a)
	}
	// Listeners sorted by name; v4-mapped addresses become IPv4; a
	// weight-0 branch is never chosen (Envoy) and is left out.
	if l := tb.Listeners; len(l) != 3 || l[0].Name != "any" || !l[0].Addr.IsUnspecified() || l[0].TCPAction != 0 ||
		l[1].Name != "raw" || l[1].Addr != netip.MustParseAddr("10.0.0.2") || l[1].RC != 0 ||
		l[2].Name != "web" || l[2].RC != 1 || l[2].TCPAction == 0 {
		t.Fatalf("listeners %+v", l)
	}
	if a := act(tb.Listeners[1].TCPAction); !reflect.DeepEqual(a, Action{Clusters: []string{"a", "b"}, Weights: []uint32{1, 3}}) {
		t.Errorf("tcp weighted action %+v", a)
	}
	if tb.Clusters[0].Name != "a" || tb.Clusters[1].Name != "b" {
		t.Errorf("clusters not sorted: %v", tb.Clusters)
	}
}

// Every per-object limit is reported by name.
func TestLowerLimits(t *testing.T) {
	base := func() *model.Snapshot {
		return &model.Snapshot{Listeners: []model.Listener{{Name: "l", Address: netip.MustParseAddrPort("10.0.0.1:80"), RouteConfig: "r"}},
			RouteConfigs: []model.RouteConfig{rc("r", vh("v", []string{"*"}, to("c")))}}
	}
	var capErr *dataplane.CapacityError
	var invErr *dataplane.InvalidError

	s := base()
	for i := 0; i <= MaxRoutes; i++ {
		s.RouteConfigs[0].VirtualHosts[0].Routes = append(s.RouteConfigs[0].VirtualHosts[0].Routes, to("c"))
	}
	if _, err := Lower(s); !errors.As(err, &capErr) || capErr.Map != "routes per virtual host" || capErr.Limit != MaxRoutes ||
		!strings.Contains(err.Error(), `route config "r" virtual host "v"`) {
		t.Errorf("too many routes: %v", err)
	}

	s = base()
	var wild []string
	for i := 0; i <= MaxWildcards; i++ {
		wild = append(wild, fmt.Sprintf("*.d%d.example", i))
	}
	s.RouteConfigs[0].VirtualHosts = append(s.RouteConfigs[0].VirtualHosts, vh("w", wild, to("c")))
	if _, err := Lower(s); !errors.As(err, &capErr) || capErr.Map != "wildcard domains per route configuration" ||
		!strings.Contains(err.Error(), `route config "r"`) {
		t.Errorf("too many wildcards: %v", err)
	}

	s = base()
	r := to("c")
	for i := 0; i <= MaxHeaders; i++ {
		r.Match.Headers = append(r.Match.Headers, model.HeaderMatch{Name: fmt.Sprintf("h%d", i), Present: true})
	}
	s.RouteConfigs[0].VirtualHosts[0].Routes = []model.Route{r}
	if _, err := Lower(s); !errors.As(err, &capErr) || capErr.Map != "header matches per route" {
		t.Errorf("too many headers: %v", err)
	}

	s = base()
	s.RouteConfigs[0].VirtualHosts[0].Routes[0].Match.PathPrefix = "/" + strings.Repeat("p", MaxPath)
	if _, err := Lower(s); !errors.As(err, &invErr) || !strings.Contains(err.Error(), "path longer than 256") {
		t.Errorf("long path: %v", err)
	}

	s = base()
	s.RouteConfigs[0].VirtualHosts[0].Domains = []string{strings.Repeat("d", MaxHost+1) + ".example"}
	if _, err := Lower(s); !errors.As(err, &invErr) || !strings.Contains(err.Error(), "longer than 256 bytes") {
		t.Errorf("long domain: %v", err)
	}

	s = base()
	var split []model.WeightedCluster
	for i := 0; i <= MaxSplit; i++ {
		split = append(split, model.WeightedCluster{Name: fmt.Sprintf("c%d", i), Weight: 1})
	}
	s.RouteConfigs[0].VirtualHosts[0].Routes[0].Action = model.RouteAction{WeightedClusters: split}
	if _, err := Lower(s); !errors.As(err, &capErr) || capErr.Map != "clusters per weighted split" {
		t.Errorf("too many split clusters: %v", err)
	}

	s = base()
	s.Clusters = []model.Cluster{{Name: "c", ConnectTimeout: -time.Second}}
	if _, err := Lower(s); !errors.As(err, &invErr) || !strings.Contains(err.Error(), `cluster "c"`) {
		t.Errorf("negative timeout: %v", err)
	}
}

// Clusters become VIP-less services with one workload per endpoint address.
func TestL4Lowering(t *testing.T) {
	loc := model.Locality{Region: "r1", Zone: "z1"}
	svcs, wls := L4([]model.Cluster{{
		Name: "outbound|80||echo.demo.svc.cluster.local", LB: model.LoadBalancing{Algorithm: model.LBWeighted},
		Endpoints: []model.Endpoint{
			{Address: netip.MustParseAddrPort("10.0.0.1:8080"), Weight: 2, Locality: loc},
			{Address: netip.MustParseAddrPort("10.0.0.2:8081")},
			{Address: netip.MustParseAddrPort("10.0.0.1:8080"), Weight: 3}, // listed twice
			{Address: netip.MustParseAddrPort("[fd00::1]:8080"), Weight: 1},
		},
	}, {Name: "empty"}})
	key := ClusterServiceKey("outbound|80||echo.demo.svc.cluster.local")
	if len(svcs) != 2 || svcs[0].Key != key || len(svcs[0].VIPs) != 0 || len(svcs[0].Ports) != 1 ||
		svcs[0].Ports[0].Port != ClusterPort || svcs[0].LB.Algorithm != model.LBWeighted || svcs[1].Key != ClusterServiceKey("empty") {
		t.Fatalf("services %+v", svcs)
	}
	if len(wls) != 3 {
		t.Fatalf("workloads %+v", wls)
	}
	w := wls[0]
	if w.Weight != 5 || w.Locality != loc || !w.Healthy || len(w.Addresses) != 1 || w.Addresses[0] != netip.MustParseAddr("10.0.0.1") ||
		!reflect.DeepEqual(w.Services[key], []model.WorkloadPort{{ServicePort: ClusterPort, TargetPort: 8080}}) {
		t.Errorf("endpoint workload %+v", w)
	}
	if wls[1].Weight != 1 || wls[1].Services[key][0].TargetPort != 8081 || wls[2].Addresses[0] != netip.MustParseAddr("fd00::1") {
		t.Errorf("workloads %+v", wls[1:])
	}
	if wls[0].UID == wls[1].UID || !strings.HasPrefix(wls[0].UID, endpointUIDPrefix) {
		t.Errorf("uids %q %q", wls[0].UID, wls[1].UID)
	}
}

func TestClusterIDsStableAndPersisted(t *testing.T) {
	dir := t.TempDir()
	ids, err := loadClusterIDs(dir)
	if err != nil {
		t.Fatal(err)
	}
	never := func(uint32) bool { return false }
	if _, err := ids.assign([]string{"a", "b", "c"}, never); err != nil {
		t.Fatal(err)
	}
	a, b := ids.lookup("a"), ids.lookup("b")
	if a == 0 || b == 0 || a == b || a >= MaxClusters {
		t.Fatalf("ids a=%d b=%d", a, b)
	}
	if err := ids.save(); err != nil {
		t.Fatal(err)
	}
	again, err := loadClusterIDs(dir)
	if err != nil {
		t.Fatal(err)
	}
	if again.lookup("a") != a || again.lookup("b") != b {
		t.Fatal("ids changed across a restart")
	}
	// A dropped cluster's id is not reused while its connections drain.
	again.retain(map[string]bool{"b": true})
	busy := func(id uint32) bool { return id == a }
	// Force a collision: find a name whose hash lands on a.
	var name string
	for i := 0; i < 1_000_000; i++ {
		n := fmt.Sprintf("n%d", i)
		probe := &clusterIDs{byName: map[string]uint32{}, byID: map[uint32]string{}}
		probe.assign([]string{n}, never)
		if probe.lookup(n) == a {
			name = n
			break
		}
	}
	if name == "" {
		t.Fatal("no name hashing to the drained id found")
	}
	if _, err := again.assign([]string{name}, busy); err != nil {
		t.Fatal(err)
	}
	if got := again.lookup(name); got == a || got == 0 {
		t.Fatalf("draining id %d reused (got %d)", a, got)
	}
	os.WriteFile(filepath.Join(dir, idsFile), []byte(`{"format":1,"clusters":{"x":0}}`), 0o600)
	if _, err := loadClusterIDs(dir); err == nil {
		t.Fatal("an id out of range must be refused")
	}
}
