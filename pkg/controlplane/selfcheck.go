package controlplane

import (
	"errors"
	"fmt"
	"maps"
	"net/netip"
	"slices"

	cluster "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	endpoint "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listener "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	route "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	"google.golang.org/protobuf/types/known/anypb"
	"istio.io/istio/pkg/workloadapi"

	"github.com/kmesh-go/kmesh/pkg/compile"
	"github.com/kmesh-go/kmesh/pkg/model"
	"github.com/kmesh-go/kmesh/pkg/xds"
)

// selfCheck runs the daemon's compile passes over a whole translated config
// (SetConfig does the same per changed object); errors name the YAML entry.
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
	for _, name := range slices.Sorted(maps.Keys(r.Addresses)) {
		m, err := convertChecked(name, r.Addresses[name])
		if err != nil {
			errs = append(errs, &FieldError{File: file, Field: where[name], Msg: err.Error()})
			continue
		}
		if m.Service != nil {
			snap.Services = append(snap.Services, *m.Service)
		} else {
			snap.Workloads = append(snap.Workloads, *m.Workload)
		}
	}
	if len(errs) == 0 {
		if err := compile.ValidateSnapshot(snap); err != nil {
			errs = append(errs, &FieldError{File: file, Msg: err.Error()})
		}
	}
	if err := checkEnvoy(r.Envoy); err != nil {
		errs = append(errs, &FieldError{File: file, Field: "http", Msg: err.Error()})
	}
	return errors.Join(errs...)
}

// convertChecked runs the daemon's convert and validate passes on one
// translated resource.
func convertChecked(name string, a *workloadapi.Address) (compile.Address, error) {
	body, err := anypb.New(a)
	if err != nil {
		return compile.Address{}, err
	}
	m, err := compile.ConvertAddress(&discovery.Resource{Name: name, Resource: body})
	if err == nil {
		if m.Service != nil {
			err = compile.ValidateService(m.Service)
		} else {
			err = compile.ValidateWorkload(m.Workload)
		}
	}
	return m, err
}

// crossCheck runs the daemon's cross-object rule for the changed objects:
// a VIP belongs to one service, and no workload uses a VIP.
func crossCheck(models map[string]compile.Address, changed map[string]types.Resource) error {
	owner := map[netip.Addr]string{}
	for name, m := range models {
		if m.Service == nil {
			continue
		}
		for _, ip := range m.Service.VIPs {
			if o, ok := owner[ip]; ok {
				return fmt.Errorf("service %q: VIP %s is already used by service %q", name, ip, o)
			}
			owner[ip] = name
		}
	}
	for name := range changed {
		if w := models[name].Workload; w != nil {
			for _, ip := range w.Addresses {
				if o, ok := owner[ip]; ok {
					return fmt.Errorf("workload %q: address %s is the VIP of service %q", name, ip, o)
				}
			}
		}
	}
	return nil
}

// checkEnvoy runs the kernel-native compile passes over the Envoy resources.
func checkEnvoy(res map[string][]types.Resource) error {
	cfg := &xds.EnvoyConfig{
		Clusters: map[string]*cluster.Cluster{}, Endpoints: map[string]*endpoint.ClusterLoadAssignment{},
		Listeners: map[string]*listener.Listener{}, Routes: map[string]*route.RouteConfiguration{},
	}
	for _, r := range res[xds.ClusterType] {
		cfg.Clusters[r.(*cluster.Cluster).GetName()] = r.(*cluster.Cluster)
	}
	for _, r := range res[xds.EndpointType] {
		cfg.Endpoints[r.(*endpoint.ClusterLoadAssignment).GetClusterName()] = r.(*endpoint.ClusterLoadAssignment)
	}
	for _, r := range res[xds.ListenerType] {
		cfg.Listeners[r.(*listener.Listener).GetName()] = r.(*listener.Listener)
	}
	for _, r := range res[xds.RouteType] {
		cfg.Routes[r.(*route.RouteConfiguration).GetName()] = r.(*route.RouteConfiguration)
	}
	_, _, err := compile.Compile(cfg)
	return err
}
