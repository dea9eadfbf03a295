package l7

import (
	"cmp"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"time"

	"github.com/kmesh-go/kmesh/pkg/dataplane"
	"github.com/kmesh-go/kmesh/pkg/kmod"
	"github.com/kmesh-go/kmesh/pkg/model"
)

// Limits compiled into the kernel-native programs (bpf/lib/kn.h). Per-object
// limits are checked here, map sizes when a generation is written.
const (
	MaxHost      = 256 // bytes of an exact or wildcard domain
	MaxPath      = 256 // bytes of a path pattern
	MaxHeader    = 256 // bytes of a header name + value
	MaxWildcards = 64  // wildcard domains per route configuration
	MaxRoutes    = 128 // routes per virtual host
	MaxHeaders   = 8   // header matches per route
	MaxSplit     = 16  // clusters of a weighted split
	MaxClusters  = 16384
)

// Tables is a configuration lowered into the shape of the kernel tables, one
// generation's worth. Ids are 1-based positions: route configuration i has id
// i+1, and so on. Clusters are referenced by name; the engine maps names to
// stable cluster ids when it writes the tables.
type Tables struct {
	Listeners    []Listener
	RouteConfigs []RouteConfig
	VHosts       []VHost
	Routes       []Route
	Actions      []Action
	Clusters     []model.Cluster
}

// Listener is a kn_listeners entry.
type Listener struct {
	Name      string
	Addr      netip.Addr // unspecified: any address
	Port      uint16
	RC        uint32 // route configuration id; 0: TCP only (decided at connect())
	TCPAction uint32 // 0: none
}

// RouteConfig is a kn_rcs entry and its domains.
type RouteConfig struct {
	Name     string
	Exact    []ExactDomain // kn_hosts
	Wildcard []Wildcard    // kn_wilds, in evaluation order
	AnyVH    uint32        // the "*" virtual host, 0 = none
}

// ExactDomain maps a lower-case domain to its virtual host.
type ExactDomain struct {
	Host string
	VH   uint32
}

// Wildcard is a "*.suffix" or "prefix.*" domain.
type Wildcard struct {
	Pattern string // the domain without its '*', lower case
	Suffix  bool   // "*suffix" (else "prefix*")
	Port    bool   // the pattern includes ":port"
	VH      uint32
}

// VHost is a kn_vhosts entry: its routes are Routes[First:First+N].
type VHost struct {
	Name  string // route configuration / virtual host
	First int
	N     int
}

// Route is a kn_routes entry; its header matches follow it.
type Route struct {
	VH      uint32
	Idx     uint32 // position in its virtual host
	Exact   bool   // exact path (else prefix)
	Path    string
	Headers []model.HeaderMatch
	Action  uint32
}

// Action is a kn_actions entry: one cluster, or a weighted split.
type Action struct {
	Clusters []string
	Weights  []uint32 // nil for a single cluster
}

// MatchFlags returns a wildcard's kfunc match flags.
func (w Wildcard) MatchFlags() uint32 {
	f := uint32(kmod.MatchPrefix)
	if w.Suffix {
		f = kmod.MatchSuffix
	}
	if !w.Port {
		f |= kmod.MatchNoPort
	}
	return f
}

// Lower turns the L7 part of a validated snapshot (compile.ValidateL7) into
// kernel tables. It fails, naming the object, when something does not fit
// the programs' per-object limits.
func Lower(s *model.Snapshot) (*Tables, error) {
	t := &Tables{Clusters: slices.Clone(s.Clusters)}
	slices.SortFunc(t.Clusters, func(a, b model.Cluster) int { return strings.Compare(a.Name, b.Name) })
	for _, c := range t.Clusters {
		if c.ConnectTimeout < 0 || c.ConnectTimeout > time.Duration(1<<31)*time.Millisecond {
			return nil, &dataplane.InvalidError{Object: fmt.Sprintf("cluster %q", c.Name), Reason: "connect timeout out of range"}
		}
	}
	rcByName := map[string]uint32{}
	rcs := slices.Clone(s.RouteConfigs)
	slices.SortFunc(rcs, func(a, b model.RouteConfig) int { return strings.Compare(a.Name, b.Name) })
	for i := range rcs {
		if err := t.lowerRouteConfig(&rcs[i]); err != nil {
			return nil, err
		}
		rcByName[rcs[i].Name] = uint32(len(t.RouteConfigs))
	}
	ls := slices.Clone(s.Listeners)
	slices.SortFunc(ls, func(a, b model.Listener) int { return cmp.Compare(a.Name, b.Name) })
	for _, l := range ls {
		ml := Listener{Name: l.Name, Addr: l.Address.Addr().Unmap(), Port: l.Address.Port()}
		if l.RouteConfig != "" {
			id, ok := rcByName[l.RouteConfig]
			if !ok {
				return nil, &dataplane.InvalidError{Object: fmt.Sprintf("listener %q", l.Name),
					Reason: fmt.Sprintf("route config %q does not exist", l.RouteConfig)}
			}
			ml.RC = id
		}
		if l.TCPRoute != nil {
			id, err := t.action(*l.TCPRoute, fmt.Sprintf("listener %q: tcp route", l.Name))
			if err != nil {
				return nil, err
			}
			ml.TCPAction = id
		}
		if ml.RC == 0 && ml.TCPAction == 0 {
			return nil, &dataplane.InvalidError{Object: fmt.Sprintf("listener %q", l.Name), Reason: "neither HTTP routes nor a TCP route"}
		}
		t.Listeners = append(t.Listeners, ml)
	}
	return t, nil
}

func (t *Tables) lowerRouteConfig(rc *model.RouteConfig) error {
	out := RouteConfig{Name: rc.Name}
	var suffix, prefix []Wildcard
	for _, vh := range rc.VirtualHosts {
		obj := fmt.Sprintf("route config %q virtual host %q", rc.Name, vh.Name)
		if len(vh.Routes) > MaxRoutes {
			return &dataplane.CapacityError{Map: "routes per virtual host", Limit: MaxRoutes, What: obj}
		}
		id := uint32(len(t.VHosts) + 1)
		t.VHosts = append(t.VHosts, VHost{Name: rc.Name + "/" + vh.Name, First: len(t.Routes), N: len(vh.Routes)})
		for _, d := range vh.Domains {
			ld := strings.ToLower(d)
			switch {
			case ld == "*":
				if out.AnyVH != 0 {
					return &dataplane.InvalidError{Object: obj, Reason: `domain "*" is also in another virtual host`}
				}
				out.AnyVH = id
			case strings.HasPrefix(ld, "*"):
				suffix = append(suffix, Wildcard{Pattern: ld[1:], Suffix: true, Port: strings.Contains(ld, ":"), VH: id})
			case strings.HasSuffix(ld, "*"):
				prefix = append(prefix, Wildcard{Pattern: ld[:len(ld)-1], Port: strings.Contains(ld, ":"), VH: id})
			default:
				out.Exact = append(out.Exact, ExactDomain{Host: ld, VH: id})
			}
			core := strings.Trim(ld, "*")
			if len(core) > MaxHost {
				return &dataplane.InvalidError{Object: obj, Reason: fmt.Sprintf("domain %q is longer than %d bytes", d, MaxHost)}
			}
		}
		for i, r := range vh.Routes {
			if err := t.lowerRoute(obj, id, i, r); err != nil {
				return err
			}
		}
	}
	// Envoy's order: the longest suffix wildcard, then the longest prefix
	// wildcard (stable: equal lengths keep the configuration's order).
	byLen := func(a, b Wildcard) int { return cmp.Compare(len(b.Pattern), len(a.Pattern)) }
	slices.SortStableFunc(suffix, byLen)
	slices.SortStableFunc(prefix, byLen)
	out.Wildcard = append(suffix, prefix...)
	if len(out.Wildcard) > MaxWildcards {
		return &dataplane.CapacityError{Map: "wildcard domains per route configuration", Limit: MaxWildcards,
			What: fmt.Sprintf("route config %q", rc.Name)}
	}
	t.RouteConfigs = append(t.RouteConfigs, out)
	return nil
}

func (t *Tables) lowerRoute(vhObj string, vh uint32, i int, r model.Route) error {
	obj := fmt.Sprintf("%s route %d", vhObj, i)
	if r.Name != "" {
		obj += fmt.Sprintf(" (%q)", r.Name)
	}
	mr := Route{VH: vh, Idx: uint32(i), Path: r.Match.PathPrefix}
	if r.Match.PathExact != "" {
		mr.Exact, mr.Path = true, r.Match.PathExact
	}
	if mr.Path == "" {
		mr.Path = "/"
	}
	if len(mr.Path) > MaxPath {
		return &dataplane.InvalidError{Object: obj, Reason: fmt.Sprintf("path longer than %d bytes", MaxPath)}
	}
	if len(r.Match.Headers) > MaxHeaders {
		return &dataplane.CapacityError{Map: "header matches per route", Limit: MaxHeaders, What: obj}
	}
	for _, h := range r.Match.Headers {
		if len(h.Name)+len(h.Exact)+len(h.Prefix) > MaxHeader {
			return &dataplane.InvalidError{Object: obj, Reason: fmt.Sprintf("header %q: name and value longer than %d bytes", h.Name, MaxHeader)}
		}
		if h.Name == "" {
			return &dataplane.InvalidError{Object: obj, Reason: "header match without a name"}
		}
		h.Name = strings.ToLower(h.Name)
		mr.Headers = append(mr.Headers, h)
	}
	act, err := t.action(r.Action, obj)
	if err != nil {
		return err
	}
	mr.Action = act
	t.Routes = append(t.Routes, mr)
	return nil
}

// action appends a route action; weight-0 branches are never chosen (Envoy)
// and are left out.
func (t *Tables) action(a model.RouteAction, obj string) (uint32, error) {
	var out Action
	switch {
	case a.Cluster != "":
		out.Clusters = []string{a.Cluster}
	case len(a.WeightedClusters) > 0:
		var total uint64
		for _, w := range a.WeightedClusters {
			if w.Weight == 0 {
				continue
			}
			out.Clusters = append(out.Clusters, w.Name)
			out.Weights = append(out.Weights, w.Weight)
			total += uint64(w.Weight)
		}
		if len(out.Clusters) > MaxSplit {
			return 0, &dataplane.CapacityError{Map: "clusters per weighted split", Limit: MaxSplit, What: obj}
		}
		if total == 0 || total > 1<<32-1 {
			return 0, &dataplane.InvalidError{Object: obj, Reason: "weighted clusters: weights must add up to 1 .. 2^32-1"}
		}
	default:
		return 0, &dataplane.InvalidError{Object: obj, Reason: "no cluster"}
	}
	t.Actions = append(t.Actions, out)
	return uint32(len(t.Actions)), nil
}

// ---- the L4 part -----------------------------------------------------------

// Keys of the L4 objects a cluster is lowered into.
const (
	clusterKeyPrefix  = "envoy-cluster/"
	endpointUIDPrefix = "envoy-endpoint/"
	// ClusterPort is the service port of a cluster's VIP-less service (the
	// route program asks km_lb_pick for it; each endpoint maps it to its own
	// port).
	ClusterPort = 1
)

// ClusterServiceKey is the L4 service key of cluster name.
func ClusterServiceKey(name string) string { return clusterKeyPrefix + name }

// L4 returns the L4 objects of the clusters: one VIP-less service per
// cluster (its LB policy) and one workload per endpoint address, with the
// endpoint's port, weight and locality. Route programs select endpoints of
// these services with the same code (and maps) as the L4 connect programs.
func L4(clusters []model.Cluster) ([]model.Service, []model.Workload) {
	var svcs []model.Service
	var wls []model.Workload
	for _, c := range clusters {
		key := ClusterServiceKey(c.Name)
		svcs = append(svcs, model.Service{Key: key, Name: c.Name, Ports: []model.ServicePort{{Name: "cluster", Port: ClusterPort}}, LB: c.LB})
		byAddr := map[netip.AddrPort]int{}
		for _, e := range c.Endpoints {
			w := e.Weight
			if w == 0 {
				w = 1
			}
			if i, ok := byAddr[e.Address]; ok { // listed twice: Envoy would pick it twice as often
				wls[i].Weight += w
				continue
			}
			byAddr[e.Address] = len(wls)
			wls = append(wls, model.Workload{
				UID:       endpointUIDPrefix + c.Name + "/" + e.Address.String(),
				Addresses: []netip.Addr{e.Address.Addr().Unmap()},
				Locality:  e.Locality,
				Weight:    w,
				Healthy:   true,
				Services:  map[string][]model.WorkloadPort{key: {{ServicePort: ClusterPort, TargetPort: e.Address.Port()}}},
			})
		}
	}
	return svcs, wls
}
