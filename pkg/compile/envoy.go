package compile

import (
	"errors"
	"fmt"
	"math"
	"net/netip"
	"sort"
	"strings"

	cluster "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpoint "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listener "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	route "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	hcm "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	tcpproxy "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/tcp_proxy/v3"
	matcher "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"

	"github.com/kmesh-go/kmesh/pkg/model"
)

// Envoy filter names (typed_config type URLs identify them).
const (
	tcpProxyTypeURL = "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy"
	hcmTypeURL      = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
)

// Skipped reports a part of the Envoy config the in-kernel dataplane does not
// implement and leaves out, as a NOTE rather than a rejection: istiod sends
// such parts to every proxy (passthrough clusters, TLS filter chains) and
// rejecting them would reject all of its config. Skips are logged.
type Skipped struct {
	What   string // e.g. `cluster "PassthroughCluster"`
	Reason string
}

func (s Skipped) String() string { return s.What + ": " + s.Reason }

// ConvertCluster converts a Cluster and, for EDS clusters, its
// ClusterLoadAssignment (nil while warming: endpoints are then left empty).
// A cluster kind the dataplane cannot serve returns a Skipped and no error.
func ConvertCluster(c *cluster.Cluster, cla *endpoint.ClusterLoadAssignment) (*model.Cluster, *Skipped, error) {
	out := &model.Cluster{Name: c.GetName(), ConnectTimeout: c.GetConnectTimeout().AsDuration()}
	what := fmt.Sprintf("cluster %q", c.GetName())
	switch t := c.GetClusterDiscoveryType().(type) {
	case *cluster.Cluster_Type:
		switch t.Type {
		case cluster.Cluster_EDS:
		case cluster.Cluster_STATIC:
			cla = c.GetLoadAssignment()
		default:
			return nil, &Skipped{what, fmt.Sprintf("discovery type %v is not supported (EDS and STATIC are)", t.Type)}, nil
		}
	default:
		return nil, &Skipped{what, "custom cluster types are not supported"}, nil
	}
	switch c.GetLbPolicy() {
	case cluster.Cluster_ROUND_ROBIN:
		out.LB.Algorithm = model.LBRoundRobin
	case cluster.Cluster_RANDOM, cluster.Cluster_LEAST_REQUEST:
		// LEAST_REQUEST (istiod's default) needs per-endpoint request counts the
		// kernel does not keep; uniform random is its documented fallback here.
		out.LB.Algorithm = model.LBRandom
	default:
		return nil, nil, fmt.Errorf("%s: lb_policy %v is not supported (ROUND_ROBIN, RANDOM, LEAST_REQUEST)", what, c.GetLbPolicy())
	}
	for _, th := range c.GetCircuitBreakers().GetThresholds() {
		if th.GetPriority() == core.RoutingPriority_DEFAULT && th.GetMaxConnections() != nil {
			if v := th.GetMaxConnections().GetValue(); v != math.MaxUint32 { // istiod's "unlimited"
				out.MaxConnections = v
			}
		}
	}
	if cla != nil {
		eps, err := ConvertEndpoints(cla)
		if err != nil {
			return nil, nil, fmt.Errorf("%s: %w", what, err)
		}
		out.Endpoints = eps
	}
	weighted := false
	for _, e := range out.Endpoints {
		if e.Weight != out.Endpoints[0].Weight {
			weighted = true
		}
	}
	if weighted {
		out.LB.Algorithm = model.LBWeighted
	}
	return out, nil, nil
}

// ConvertEndpoints converts a ClusterLoadAssignment. Endpoints Envoy would not
// use (unhealthy, draining, timed out) are left out.
func ConvertEndpoints(cla *endpoint.ClusterLoadAssignment) ([]model.Endpoint, error) {
	var out []model.Endpoint
	for li, lle := range cla.GetEndpoints() {
		loc := model.Locality{Region: lle.GetLocality().GetRegion(), Zone: lle.GetLocality().GetZone(), Subzone: lle.GetLocality().GetSubZone()}
		for ei, lbe := range lle.GetLbEndpoints() {
			at := fmt.Sprintf("endpoints[%d].lb_endpoints[%d]", li, ei)
			switch lbe.GetHealthStatus() {
			case core.HealthStatus_UNHEALTHY, core.HealthStatus_DRAINING, core.HealthStatus_TIMEOUT:
				continue
			}
			ap, err := socketAddr(lbe.GetEndpoint().GetAddress())
			if err != nil {
				return nil, fmt.Errorf("%s.endpoint.address: %w", at, err)
			}
			if !ap.Addr().IsValid() || ap.Addr().IsUnspecified() || ap.Port() == 0 {
				return nil, fmt.Errorf("%s.endpoint.address: %s is not a usable endpoint", at, ap)
			}
			w := uint32(1)
			if lw := lbe.GetLoadBalancingWeight(); lw != nil {
				w = lw.GetValue()
			}
			out = append(out, model.Endpoint{Address: ap, Weight: w, Locality: loc, Priority: lle.GetPriority()})
		}
	}
	return out, nil
}

func socketAddr(a *core.Address) (netip.AddrPort, error) {
	sa := a.GetSocketAddress()
	if sa == nil {
		return netip.AddrPort{}, errors.New("not a socket address")
	}
	if sa.GetProtocol() != core.SocketAddress_TCP {
		return netip.AddrPort{}, fmt.Errorf("protocol %v is not supported (TCP)", sa.GetProtocol())
	}
	ip, err := netip.ParseAddr(sa.GetAddress())
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("%q is not an IP address", sa.GetAddress())
	}
	port, err := port16(sa.GetPortValue())
	if err != nil {
		return netip.AddrPort{}, err
	}
	return netip.AddrPortFrom(ip.Unmap(), port), nil
}

// ConvertListener turns one Envoy listener into model listeners: one per
// destination its filter chains match (a chain matching prefix_ranges of single
// VIPs yields a listener per VIP, as istiod's outbound TCP listeners do), plus
// the route configurations defined inline in HTTP connection managers.
func ConvertListener(l *listener.Listener) ([]model.Listener, []model.RouteConfig, []Skipped, error) {
	what := fmt.Sprintf("listener %q", l.GetName())
	base, err := socketAddr(l.GetAddress())
	if err != nil {
		return nil, nil, nil, fmt.Errorf("%s: address: %w", what, err)
	}
	var (
		byAddr  = map[netip.AddrPort]*model.Listener{}
		order   []netip.AddrPort
		inline  []model.RouteConfig
		skipped []Skipped
	)
	chains := l.GetFilterChains()
	if dc := l.GetDefaultFilterChain(); dc != nil {
		chains = append(chains[:len(chains):len(chains)], dc)
	}
	for ci, fc := range chains {
		cwhat := fmt.Sprintf("%s filter_chains[%d]", what, ci)
		m := fc.GetFilterChainMatch()
		if m.GetTransportProtocol() != "" && m.GetTransportProtocol() != "raw_buffer" || len(m.GetServerNames()) > 0 {
			skipped = append(skipped, Skipped{cwhat, "TLS filter chains cannot be routed in the kernel"})
			continue
		}
		port := base.Port()
		if dp := m.GetDestinationPort(); dp != nil {
			if port, err = port16(dp.GetValue()); err != nil {
				return nil, nil, nil, fmt.Errorf("%s: destination_port: %w", cwhat, err)
			}
		}
		addrs := []netip.Addr{base.Addr().Unmap()}
		if pr := m.GetPrefixRanges(); len(pr) > 0 {
			addrs = addrs[:0]
			for ri, r := range pr {
				ip, err := netip.ParseAddr(r.GetAddressPrefix())
				if err != nil {
					return nil, nil, nil, fmt.Errorf("%s: prefix_ranges[%d]: %q is not an IP", cwhat, ri, r.GetAddressPrefix())
				}
				ip = ip.Unmap()
				if pl := r.GetPrefixLen(); pl != nil && int(pl.GetValue()) != ip.BitLen() {
					return nil, nil, nil, fmt.Errorf("%s: prefix_ranges[%d]: only single addresses (/%d) can be matched, not /%d", cwhat, ri, ip.BitLen(), pl.GetValue())
				}
				addrs = append(addrs, ip)
			}
		}
		// The terminal (last) network filter decides what the chain does.
		fs := fc.GetFilters()
		if len(fs) == 0 {
			skipped = append(skipped, Skipped{cwhat, "no filters"})
			continue
		}
		term := fs[len(fs)-1]
		var rc string
		var tcp *model.RouteAction
		switch term.GetTypedConfig().GetTypeUrl() {
		case tcpProxyTypeURL:
			var tp tcpproxy.TcpProxy
			if err := term.GetTypedConfig().UnmarshalTo(&tp); err != nil {
				return nil, nil, nil, fmt.Errorf("%s: tcp_proxy: %w", cwhat, err)
			}
			tcp, err = tcpRoute(&tp)
			if err != nil {
				return nil, nil, nil, fmt.Errorf("%s: tcp_proxy: %w", cwhat, err)
			}
		case hcmTypeURL:
			var h hcm.HttpConnectionManager
			if err := term.GetTypedConfig().UnmarshalTo(&h); err != nil {
				return nil, nil, nil, fmt.Errorf("%s: http_connection_manager: %w", cwhat, err)
			}
			switch {
			case h.GetRds() != nil:
				rc = h.GetRds().GetRouteConfigName()
			case h.GetRouteConfig() != nil:
				r, err := ConvertRouteConfig(h.GetRouteConfig())
				if err != nil {
					return nil, nil, nil, fmt.Errorf("%s: inline route_config: %w", cwhat, err)
				}
				// Inline configs get a listener-scoped name so they cannot clash with RDS names.
				r.Name = fmt.Sprintf("%s/inline/%d", l.GetName(), ci)
				inline = append(inline, r)
				rc = r.Name
			default:
				return nil, nil, nil, fmt.Errorf("%s: http_connection_manager: scoped routes are not supported", cwhat)
			}
		default:
			skipped = append(skipped, Skipped{cwhat, fmt.Sprintf("terminal filter %q is neither tcp_proxy nor http_connection_manager", term.GetName())})
			continue
		}
		for _, ip := range addrs {
			ap := netip.AddrPortFrom(ip, port)
			ml, ok := byAddr[ap]
			if !ok {
				ml = &model.Listener{Address: ap}
				byAddr[ap] = ml
				order = append(order, ap)
			}
			switch {
			case rc != "" && ml.RouteConfig == "":
				ml.RouteConfig = rc
			case tcp != nil && ml.TCPRoute == nil:
				ml.TCPRoute = tcp
			default:
				return nil, nil, nil, fmt.Errorf("%s: a second chain for %s of the same kind; kmesh routes one HTTP and one TCP chain per address", cwhat, ap)
			}
		}
	}
	out := make([]model.Listener, 0, len(order))
	for _, ap := range order {
		ml := byAddr[ap]
		ml.Name = l.GetName()
		if len(order) > 1 {
			ml.Name = l.GetName() + "@" + ap.String()
		}
		out = append(out, *ml)
	}
	return out, inline, skipped, nil
}

func tcpRoute(tp *tcpproxy.TcpProxy) (*model.RouteAction, error) {
	switch cs := tp.GetClusterSpecifier().(type) {
	case *tcpproxy.TcpProxy_Cluster:
		return &model.RouteAction{Cluster: cs.Cluster}, nil
	case *tcpproxy.TcpProxy_WeightedClusters:
		var a model.RouteAction
		for _, c := range cs.WeightedClusters.GetClusters() {
			a.WeightedClusters = append(a.WeightedClusters, model.WeightedCluster{Name: c.GetName(), Weight: c.GetWeight()})
		}
		return &a, nil
	}
	return nil, errors.New("no cluster")
}

// ConvertRouteConfig converts a RouteConfiguration. Route features the
// in-kernel router cannot honour are errors, not skips: leaving out a route
// would send its requests to whatever route comes next.
func ConvertRouteConfig(rc *route.RouteConfiguration) (model.RouteConfig, error) {
	out := model.RouteConfig{Name: rc.GetName()}
	for vi, vh := range rc.GetVirtualHosts() {
		mv := model.VirtualHost{Name: vh.GetName(), Domains: vh.GetDomains()}
		for ri, r := range vh.GetRoutes() {
			mr, err := convertRoute(r)
			if err != nil {
				return out, fmt.Errorf("virtual_hosts[%d] (%q).routes[%d] (%q): %w", vi, vh.GetName(), ri, r.GetName(), err)
			}
			mv.Routes = append(mv.Routes, mr)
		}
		out.VirtualHosts = append(out.VirtualHosts, mv)
	}
	return out, nil
}

func convertRoute(r *route.Route) (model.Route, error) {
	out := model.Route{Name: r.GetName()}
	m := r.GetMatch()
	switch p := m.GetPathSpecifier().(type) {
	case *route.RouteMatch_Prefix:
		out.Match.PathPrefix = p.Prefix
		if p.Prefix == "" {
			out.Match.PathPrefix = "/"
		}
	case *route.RouteMatch_Path:
		out.Match.PathExact = p.Path
	default:
		return out, fmt.Errorf("match: only prefix and path matches are supported in the kernel, not %T", p)
	}
	if cs := m.GetCaseSensitive(); cs != nil && !cs.GetValue() {
		return out, errors.New("match.case_sensitive=false is not supported")
	}
	if len(m.GetQueryParameters()) > 0 || m.GetRuntimeFraction() != nil || m.GetGrpc() != nil || m.GetTlsContext() != nil || len(m.GetDynamicMetadata()) > 0 {
		return out, errors.New("match: query, runtime, gRPC, TLS and metadata matches are not supported")
	}
	for hi, h := range m.GetHeaders() {
		hm, err := convertHeader(h)
		if err != nil {
			return out, fmt.Errorf("match.headers[%d] (%q): %w", hi, h.GetName(), err)
		}
		out.Match.Headers = append(out.Match.Headers, hm)
	}
	ra := r.GetRoute()
	if ra == nil {
		return out, errors.New("action: only route actions are supported (not redirect, direct_response or filter actions)")
	}
	switch cs := ra.GetClusterSpecifier().(type) {
	case *route.RouteAction_Cluster:
		out.Action.Cluster = cs.Cluster
	case *route.RouteAction_WeightedClusters:
		for _, c := range cs.WeightedClusters.GetClusters() {
			w := uint32(0)
			if c.GetWeight() != nil {
				w = c.GetWeight().GetValue()
			}
			out.Action.WeightedClusters = append(out.Action.WeightedClusters, model.WeightedCluster{Name: c.GetName(), Weight: w})
		}
	default:
		return out, fmt.Errorf("route: cluster specifier %T is not supported", cs)
	}
	if ra.GetPrefixRewrite() != "" || ra.GetRegexRewrite() != nil || ra.GetHostRewriteSpecifier() != nil {
		return out, errors.New("route: rewrites need a proxy; they are not supported in the kernel")
	}
	return out, nil
}

func convertHeader(h *route.HeaderMatcher) (model.HeaderMatch, error) {
	out := model.HeaderMatch{Name: strings.ToLower(h.GetName())}
	if h.GetInvertMatch() {
		return out, errors.New("invert_match is not supported")
	}
	switch s := h.GetHeaderMatchSpecifier().(type) {
	case *route.HeaderMatcher_ExactMatch:
		//lint:ignore SA1019 older control planes still send the deprecated form
		out.Exact = s.ExactMatch
	case *route.HeaderMatcher_PrefixMatch:
		//lint:ignore SA1019 older control planes still send the deprecated form
		out.Prefix = s.PrefixMatch
	case *route.HeaderMatcher_PresentMatch:
		if !s.PresentMatch {
			return out, errors.New("present_match=false is not supported")
		}
		out.Present = true
	case *route.HeaderMatcher_StringMatch:
		if s.StringMatch.GetIgnoreCase() {
			return out, errors.New("string_match.ignore_case is not supported")
		}
		switch p := s.StringMatch.GetMatchPattern().(type) {
		case *matcher.StringMatcher_Exact:
			out.Exact = p.Exact
		case *matcher.StringMatcher_Prefix:
			out.Prefix = p.Prefix
		default:
			return out, fmt.Errorf("string_match %T is not supported (exact, prefix)", p)
		}
	default:
		return out, fmt.Errorf("%T is not supported (exact, prefix, present)", s)
	}
	return out, nil
}

// ValidateL7 checks the kernel-native part of a snapshot: unique names and
// addresses, listeners whose route configuration exists, well-formed routes.
// A route to a cluster that does not exist is tolerated (the connection fails
// at runtime, as Envoy answers 503).
func ValidateL7(s *model.Snapshot) []error {
	var errs []error
	rcs := map[string]bool{}
	for _, rc := range s.RouteConfigs {
		if rcs[rc.Name] {
			errs = append(errs, fmt.Errorf("route config %q defined twice", rc.Name))
		}
		rcs[rc.Name] = true
		errs = append(errs, validateRouteConfig(&rc)...)
	}
	names := map[string]bool{}
	addrs := map[netip.AddrPort]string{}
	for _, l := range s.Listeners {
		if names[l.Name] {
			errs = append(errs, fmt.Errorf("listener %q defined twice", l.Name))
		}
		names[l.Name] = true
		if o, ok := addrs[l.Address]; ok {
			errs = append(errs, fmt.Errorf("listener %q: address %s is already used by listener %q", l.Name, l.Address, o))
		}
		addrs[l.Address] = l.Name
		if l.Address.Port() == 0 {
			errs = append(errs, fmt.Errorf("listener %q: port 0", l.Name))
		}
		if l.RouteConfig == "" && l.TCPRoute == nil {
			errs = append(errs, fmt.Errorf("listener %q: neither HTTP routes nor a TCP route", l.Name))
		}
		if l.RouteConfig != "" && !rcs[l.RouteConfig] {
			errs = append(errs, fmt.Errorf("listener %q: route config %q does not exist", l.Name, l.RouteConfig))
		}
		if l.TCPRoute != nil {
			if err := validateAction(l.TCPRoute); err != nil {
				errs = append(errs, fmt.Errorf("listener %q: tcp route: %w", l.Name, err))
			}
		}
	}
	cl := map[string]bool{}
	for _, c := range s.Clusters {
		if cl[c.Name] {
			errs = append(errs, fmt.Errorf("cluster %q defined twice", c.Name))
		}
		cl[c.Name] = true
		if err := validateLB(model.LoadBalancing{Algorithm: c.LB.Algorithm}); err != nil {
			errs = append(errs, fmt.Errorf("cluster %q: %w", c.Name, err))
		}
	}
	return errs
}

func validateRouteConfig(rc *model.RouteConfig) []error {
	var errs []error
	domains := map[string]string{}
	for vi, vh := range rc.VirtualHosts {
		at := fmt.Sprintf("route config %q: virtual host %q", rc.Name, vh.Name)
		if len(vh.Domains) == 0 {
			errs = append(errs, fmt.Errorf("%s: no domains", at))
		}
		for _, d := range vh.Domains {
			ld := strings.ToLower(d)
			if o, ok := domains[ld]; ok {
				errs = append(errs, fmt.Errorf("%s: domain %q is also in virtual host %q", at, d, o))
			}
			domains[ld] = vh.Name
			if err := CheckDomain(d); err != nil {
				errs = append(errs, fmt.Errorf("%s: %w", at, err))
			}
		}
		for ri, r := range vh.Routes {
			rat := fmt.Sprintf("%s: routes[%d]", at, ri)
			if (r.Match.PathPrefix == "") == (r.Match.PathExact == "") {
				errs = append(errs, fmt.Errorf("%s: set exactly one of prefix and path", rat))
			}
			for _, p := range []string{r.Match.PathPrefix, r.Match.PathExact} {
				if p != "" && !strings.HasPrefix(p, "/") {
					errs = append(errs, fmt.Errorf("%s: path %q must start with /", rat, p))
				}
			}
			for hi, h := range r.Match.Headers {
				n := 0
				for _, set := range []bool{h.Exact != "", h.Prefix != "", h.Present} {
					if set {
						n++
					}
				}
				if h.Name == "" || n != 1 {
					errs = append(errs, fmt.Errorf("%s: headers[%d]: needs a name and exactly one of exact, prefix, present", rat, hi))
				}
			}
			if err := validateAction(&r.Action); err != nil {
				errs = append(errs, fmt.Errorf("%s: %w", rat, err))
			}
		}
		_ = vi
	}
	return errs
}

// CheckDomain checks an Envoy virtual-host domain pattern.
func CheckDomain(d string) error {
	if d == "*" {
		return nil
	}
	core := strings.TrimSuffix(strings.TrimPrefix(d, "*"), "*")
	if core == "" || strings.Contains(core, "*") || strings.HasPrefix(d, "*") && strings.HasSuffix(d, "*") {
		return fmt.Errorf("domain %q: a wildcard may only be the whole name, a prefix (*.x) or a suffix (x.*)", d)
	}
	return nil
}

func validateAction(a *model.RouteAction) error {
	if (a.Cluster == "") == (len(a.WeightedClusters) == 0) {
		return errors.New("set exactly one of cluster and weightedClusters")
	}
	var total uint64
	for i, w := range a.WeightedClusters {
		if w.Name == "" {
			return fmt.Errorf("weightedClusters[%d]: no name", i)
		}
		total += uint64(w.Weight)
	}
	if len(a.WeightedClusters) > 0 && total == 0 {
		return errors.New("weightedClusters: weights add up to 0")
	}
	if total > math.MaxUint32 {
		return errors.New("weightedClusters: weights add up to more than 2^32-1")
	}
	return nil
}

// sortedNames returns the keys of m in order (deterministic output).
func sortedNames[T any](m map[string]T) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}
