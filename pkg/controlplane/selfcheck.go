package controlplane

import (
	"errors"
	"fmt"
	"sort"

	cluster "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	endpoint "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listener "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	route "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/kmesh-go/kmesh/pkg/compile"
	"github.com/kmesh-go/kmesh/pkg/model"
	"github.com/kmesh-go/kmesh/pkg/xds"
)

// selfCheck runs the daemon's own compile passes over the translated
// resources, so the embedded server never pushes what kmeshd would NACK.
// Errors name the YAML entry that produced the object.
func selfCheck(file string, c *Config, r *Resources, nodeName string) error {
	var errs []error
	where := map[string]string{}
	for i := range c.Services {
		where[ServiceKey(&c.Services[i])] = fmt.Sprintf("services[%d]", i)
	}
	for i := range c.Workloads {
		where[WorkloadUID(&c.Workloads[i])] = fmt.Sprintf("workloads[%d]", i)
	}
	snap := &model.Snapshot{Node: model.Node{Name: nodeName}}
	for _, name := range sortedKeys(r.Addresses) {
		body, err := anypb.New(r.Addresses[name])
		if err != nil {
			return err
		}
		a, err := compile.ConvertAddress(&discovery.Resource{Name: name, Resource: body})
		if err == nil {
			if a.Service != nil {
				err = compile.ValidateService(a.Service)
				snap.Services = append(snap.Services, *a.Service)
			} else {
				err = compile.ValidateWorkload(a.Workload)
				snap.Workloads = append(snap.Workloads, *a.Workload)
			}
		}
		if err != nil {
			errs = append(errs, &FieldError{File: file, Field: where[name], Msg: err.Error()})
		}
	}
	if len(errs) == 0 {
		if err := compile.ValidateSnapshot(snap); err != nil {
			errs = append(errs, &FieldError{File: file, Msg: err.Error()})
		}
	}
	cfg := &xds.EnvoyConfig{
		Clusters: map[string]*cluster.Cluster{}, Endpoints: map[string]*endpoint.ClusterLoadAssignment{},
		Listeners: map[string]*listener.Listener{}, Routes: map[string]*route.RouteConfiguration{},
	}
	for _, res := range r.Envoy[xds.ClusterType] {
		cfg.Clusters[res.(*cluster.Cluster).GetName()] = res.(*cluster.Cluster)
	}
	for _, res := range r.Envoy[xds.EndpointType] {
		cfg.Endpoints[res.(*endpoint.ClusterLoadAssignment).GetClusterName()] = res.(*endpoint.ClusterLoadAssignment)
	}
	for _, res := range r.Envoy[xds.ListenerType] {
		cfg.Listeners[res.(*listener.Listener).GetName()] = res.(*listener.Listener)
	}
	for _, res := range r.Envoy[xds.RouteType] {
		cfg.Routes[res.(*route.RouteConfiguration).GetName()] = res.(*route.RouteConfiguration)
	}
	if _, _, err := compile.Compile(cfg); err != nil {
		errs = append(errs, &FieldError{File: file, Field: "http", Msg: err.Error()})
	}
	return errors.Join(errs...)
}

func sortedKeys[T any](m map[string]T) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}
