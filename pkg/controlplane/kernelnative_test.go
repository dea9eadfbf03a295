package controlplane

import (
	"net/netip"
	"testing"
	"time"

	cluster "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	endpoint "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listener "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	route "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"

	"github.com/kmesh-go/kmesh/pkg/compile"
	"github.com/kmesh-go/kmesh/pkg/model"
	"github.com/kmesh-go/kmesh/pkg/xds"
)

// compileEnvoy runs the daemon's compiler over what the server would serve.
func compileEnvoy(t *testing.T, yaml string) *model.Snapshot {
	t.Helper()
	res := Translate(mustLoad(t, yaml), "node1")
	cfg := &xds.EnvoyConfig{Clusters: map[string]*cluster.Cluster{}, Endpoints: map[string]*endpoint.ClusterLoadAssignment{},
		Listeners: map[string]*listener.Listener{}, Routes: map[string]*route.RouteConfiguration{}, Versions: map[string]string{}}
	for _, rs := range res.Envoy {
		for _, r := range rs {
			switch m := r.(type) {
			case *cluster.Cluster:
				cfg.Clusters[m.GetName()] = m
			case *endpoint.ClusterLoadAssignment:
				cfg.Endpoints[m.GetClusterName()] = m
			case *listener.Listener:
				cfg.Listeners[m.GetName()] = m
			case *route.RouteConfiguration:
				cfg.Routes[m.GetName()] = m
			}
		}
	}
	snap, _, err := compile.Compile(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return snap
}

// Kernel-native YAML: cluster options become Envoy's connect_timeout and
// circuit breaker, and an http[] listener on a service's VIP:port sends
// non-HTTP bytes to that service (or to its tcp backend).
func TestKernelNativeYAML(t *testing.T) {
	yaml := `
services:
  - name: echo
    vips: [10.96.0.10]
    ports: [{port: 80, targetPort: 8080}]
    cluster: {maxConnections: 7, connectTimeout: 2500ms}
  - name: raw
    vips: [10.96.0.11]
    ports: [{port: 9000}]
workloads:
  - name: e1
    addresses: [10.0.0.1]
    services: [{service: echo}, {service: raw}]
http:
  - name: web
    address: 10.96.0.10
    port: 80
    virtualHosts:
      - name: all
        domains: ["*"]
        routes:
          - match: {prefix: /}
            to: [{service: echo}]
  - name: other
    address: 10.96.0.12
    port: 80
    tcp: {service: raw, port: 9000}
    virtualHosts:
      - name: all
        domains: ["*"]
        routes:
          - match: {prefix: /}
            to: [{service: echo}]
`
	snap := compileEnvoy(t, yaml)
	var echo *model.Cluster
	for i := range snap.Clusters {
		if snap.Clusters[i].Name == ClusterName("echo.default.svc.cluster.local", 80) {
			echo = &snap.Clusters[i]
		}
	}
	if echo == nil || echo.MaxConnections != 7 || echo.ConnectTimeout != 2500*time.Millisecond {
		t.Fatalf("echo cluster %+v", echo)
	}
	byAddr := map[netip.AddrPort]model.Listener{}
	for _, l := range snap.Listeners {
		byAddr[l.Address] = l
	}
	web := byAddr[netip.MustParseAddrPort("10.96.0.10:80")]
	if web.RouteConfig != "web" || web.TCPRoute == nil || web.TCPRoute.Cluster != echo.Name {
		t.Fatalf("the HTTP listener on echo's VIP: %+v (want HTTP routes and echo as the TCP route)", web)
	}
	other := byAddr[netip.MustParseAddrPort("10.96.0.12:80")]
	if other.TCPRoute == nil || other.TCPRoute.Cluster != ClusterName("raw.default.svc.cluster.local", 9000) {
		t.Fatalf("explicit tcp backend: %+v", other)
	}
	if _, ok := byAddr[netip.MustParseAddrPort("10.96.0.11:9000")]; !ok {
		t.Fatal("raw's TCP listener missing")
	}
}
