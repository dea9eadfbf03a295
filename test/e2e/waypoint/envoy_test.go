package waypoint

import (
	"os"
	"path/filepath"
	"testing"

	bootstrapv3 "github.com/envoyproxy/go-control-plane/envoy/config/bootstrap/v3"
	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/known/anypb"
	"sigs.k8s.io/yaml"

	// The typed configs testdata/envoy.yaml uses.
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/access_loggers/stream/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/router/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/listener/proxy_protocol/v3"
)

// TestEnvoyConfigValid checks testdata/envoy.yaml (quoted in
// docs/waypoint.md) against Envoy v1.40's API: it must decode strictly as a
// Bootstrap, pass Envoy's own field validation (protoc-gen-validate rules),
// including inside every typed_config, and carry the pieces the waypoint
// depends on. No Envoy binary is available on these machines (Debian does
// not package it), so unlike HAProxy and nginx it is not run here.
func TestEnvoyConfigValid(t *testing.T) {
	y, err := os.ReadFile(filepath.Join("testdata", "envoy.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	j, err := yaml.YAMLToJSON(y)
	if err != nil {
		t.Fatal(err)
	}
	var b bootstrapv3.Bootstrap
	if err := protojson.Unmarshal(j, &b); err != nil {
		t.Fatalf("not an Envoy v3 bootstrap: %v", err)
	}
	validateDeep(t, b.ProtoReflect(), "bootstrap")

	ls := b.GetStaticResources().GetListeners()
	if len(ls) != 1 || ls[0].GetAddress().GetSocketAddress().GetPortValue() != wpPort {
		t.Fatalf("want one listener on %d", wpPort)
	}
	if lf := ls[0].GetListenerFilters(); len(lf) != 1 || lf[0].GetName() != "envoy.filters.listener.proxy_protocol" {
		t.Fatalf("listener filters %v: want the PROXY protocol filter", lf)
	}
	var hcm hcmv3.HttpConnectionManager
	if err := ls[0].GetFilterChains()[0].GetFilters()[0].GetTypedConfig().UnmarshalTo(&hcm); err != nil {
		t.Fatal(err)
	}
	routes := map[string]string{}
	for _, vh := range hcm.GetRouteConfig().GetVirtualHosts() {
		for _, r := range vh.GetRoutes() {
			routes[vh.GetDomains()[0]+r.GetMatch().GetPrefix()] = r.GetRoute().GetCluster()
		}
	}
	want := map[string]string{"api.example/": "api", "*/static/": "static", "*/": "original_destination"}
	for k, v := range want {
		if routes[k] != v {
			t.Errorf("route %s -> %q, want %q (all: %v)", k, routes[k], v, routes)
		}
	}
	var orig *clusterv3.Cluster
	for _, c := range b.GetStaticResources().GetClusters() {
		if c.GetName() == "original_destination" {
			orig = c
		}
	}
	if orig.GetType() != clusterv3.Cluster_ORIGINAL_DST || orig.GetLbPolicy() != clusterv3.Cluster_CLUSTER_PROVIDED {
		t.Errorf("original_destination cluster %v: want ORIGINAL_DST with CLUSTER_PROVIDED", orig)
	}
}

// validateDeep runs protoc-gen-validate's ValidateAll on m and on every
// message packed in an Any below it.
func validateDeep(t *testing.T, m protoreflect.Message, path string) {
	t.Helper()
	if v, ok := m.Interface().(interface{ ValidateAll() error }); ok {
		if err := v.ValidateAll(); err != nil {
			t.Errorf("%s: %v", path, err)
		}
	}
	if a, ok := m.Interface().(*anypb.Any); ok {
		inner, err := a.UnmarshalNew()
		if err != nil {
			t.Errorf("%s: %s: %v", path, a.GetTypeUrl(), err)
			return
		}
		validateDeep(t, inner.ProtoReflect(), path+"("+string(proto.MessageName(inner))+")")
		return
	}
	m.Range(func(fd protoreflect.FieldDescriptor, v protoreflect.Value) bool {
		if fd.Message() == nil {
			return true
		}
		p := path + "." + string(fd.Name())
		switch {
		case fd.IsList():
			for i := 0; i < v.List().Len(); i++ {
				validateDeep(t, v.List().Get(i).Message(), p)
			}
		case fd.IsMap():
			v.Map().Range(func(_ protoreflect.MapKey, mv protoreflect.Value) bool {
				if fd.MapValue().Message() != nil {
					validateDeep(t, mv.Message(), p)
				}
				return true
			})
		default:
			validateDeep(t, v.Message(), p)
		}
		return true
	})
}
