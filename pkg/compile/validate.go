package compile

import (
	"errors"
	"fmt"
	"net/netip"
	"path/filepath"
	"strings"

	"github.com/kmesh-go/kmesh/pkg/model"
)

// ValidateService checks one service on its own.
func ValidateService(s *model.Service) error {
	if !IsServiceKey(s.Key) {
		return fmt.Errorf("service key %q is not namespace/hostname", s.Key)
	}
	at := func(f string, a ...any) error {
		return fmt.Errorf("service %q: %s", s.Key, fmt.Sprintf(f, a...))
	}
	seenIP := map[netip.Addr]bool{}
	for i, ip := range s.VIPs {
		if err := checkUnicast(ip); err != nil {
			return at("vips[%d]: %v", i, err)
		}
		if seenIP[ip] {
			return at("vips[%d]: %s listed twice", i, ip)
		}
		seenIP[ip] = true
	}
	seenPort := map[uint16]bool{}
	for i, p := range s.Ports {
		if p.Port == 0 {
			return at("ports[%d].port: must be 1-65535", i)
		}
		if seenPort[p.Port] {
			return at("ports[%d].port: %d listed twice", i, p.Port)
		}
		seenPort[p.Port] = true
		if p.Protocol != "" && p.Protocol != model.TCP {
			return at("ports[%d].protocol: %q is not supported (TCP)", i, p.Protocol)
		}
	}
	if err := validateLB(s.LB); err != nil {
		return at("lb: %v", err)
	}
	if s.Waypoint != nil {
		if !IsServiceKey(s.Waypoint.Service) {
			return at("waypoint.service: %q is not namespace/hostname", s.Waypoint.Service)
		}
		if s.Waypoint.Service == s.Key {
			return at("waypoint: a service cannot be its own waypoint")
		}
	}
	return nil
}

func validateLB(lb model.LoadBalancing) error {
	switch lb.Algorithm {
	case "", model.LBRandom, model.LBRoundRobin, model.LBWeighted:
	default:
		return fmt.Errorf("algorithm: %q is not one of random, round_robin, weighted", lb.Algorithm)
	}
	switch lb.Locality {
	case model.LocalityNone:
		if len(lb.RoutingPreference) > 0 {
			return fmt.Errorf("routingPreference needs locality strict or failover")
		}
	case model.LocalityStrict, model.LocalityFailover:
		if len(lb.RoutingPreference) == 0 {
			return fmt.Errorf("locality %q needs a routingPreference", lb.Locality)
		}
	default:
		return fmt.Errorf("locality: %q is not one of strict, failover", lb.Locality)
	}
	seen := map[model.LocalityScope]bool{}
	for i, sc := range lb.RoutingPreference {
		switch sc {
		case model.ScopeRegion, model.ScopeZone, model.ScopeSubzone, model.ScopeNode, model.ScopeCluster, model.ScopeNetwork:
		default:
			return fmt.Errorf("routingPreference[%d]: %q is not a scope", i, sc)
		}
		if seen[sc] {
			return fmt.Errorf("routingPreference[%d]: %q listed twice", i, sc)
		}
		seen[sc] = true
	}
	return nil
}

// ValidateWorkload checks one workload on its own.
func ValidateWorkload(w *model.Workload) error {
	if w.UID == "" {
		return errors.New("workload has no uid")
	}
	at := func(f string, a ...any) error {
		return fmt.Errorf("workload %q: %s", w.UID, fmt.Sprintf(f, a...))
	}
	seen := map[netip.Addr]bool{}
	for i, ip := range w.Addresses {
		if err := checkUnicast(ip); err != nil {
			return at("addresses[%d]: %v", i, err)
		}
		if seen[ip] {
			return at("addresses[%d]: %s listed twice", i, ip)
		}
		seen[ip] = true
	}
	if len(w.Services) > 0 && len(w.Addresses) == 0 {
		return at("backs services but has no address")
	}
	for key, ports := range w.Services {
		if !IsServiceKey(key) {
			return at("services: key %q is not namespace/hostname", key)
		}
		for i, p := range ports {
			if p.ServicePort == 0 {
				return at("services[%q][%d].servicePort: must be 1-65535", key, i)
			}
		}
	}
	if w.Waypoint != nil && !IsServiceKey(w.Waypoint.Service) {
		return at("waypoint.service: %q is not namespace/hostname", w.Waypoint.Service)
	}
	if e := w.Enrolment; e != nil {
		if e.CgroupPath == "" && e.NetnsPath == "" {
			return at("enrolment: needs a cgroup or a netns")
		}
		if e.CgroupPath != "" && e.NetnsPath != "" {
			return at("enrolment: set either cgroup or netns, not both")
		}
		if e.CgroupPath != "" && hasDotDot(e.CgroupPath) {
			return at("enrolment.cgroup: %q must not contain ..", e.CgroupPath)
		}
		if e.NetnsPath != "" && !filepath.IsAbs(e.NetnsPath) {
			return at("enrolment.netns: %q must be an absolute path (e.g. /run/netns/NAME)", e.NetnsPath)
		}
	}
	return nil
}

func hasDotDot(p string) bool {
	for _, part := range strings.Split(p, "/") {
		if part == ".." {
			return true
		}
	}
	return false
}

func checkUnicast(ip netip.Addr) error {
	switch {
	case !ip.IsValid():
		return errors.New("not an IP address")
	case ip.IsUnspecified():
		return fmt.Errorf("%s is unspecified", ip)
	case ip.IsMulticast():
		return fmt.Errorf("%s is multicast", ip)
	}
	return nil
}

// ValidateSnapshot checks a whole snapshot: every object, then what only the
// whole can show (duplicate keys, a VIP owned by two services, L7 references).
// Dangling references that Envoy also tolerates (a workload naming an unknown
// service, a route to a missing cluster) are not errors.
func ValidateSnapshot(s *model.Snapshot) error {
	var errs []error
	vipOwner := map[netip.Addr]string{}
	keys := map[string]bool{}
	for i := range s.Services {
		svc := &s.Services[i]
		if err := ValidateService(svc); err != nil {
			errs = append(errs, err)
			continue
		}
		if keys[svc.Key] {
			errs = append(errs, fmt.Errorf("service %q defined twice", svc.Key))
		}
		keys[svc.Key] = true
		for _, ip := range svc.VIPs {
			if o, ok := vipOwner[ip]; ok {
				errs = append(errs, fmt.Errorf("service %q: VIP %s is already used by service %q", svc.Key, ip, o))
			}
			vipOwner[ip] = svc.Key
		}
	}
	uids := map[string]bool{}
	for i := range s.Workloads {
		w := &s.Workloads[i]
		if err := ValidateWorkload(w); err != nil {
			errs = append(errs, err)
			continue
		}
		if uids[w.UID] {
			errs = append(errs, fmt.Errorf("workload %q defined twice", w.UID))
		}
		uids[w.UID] = true
		for _, ip := range w.Addresses {
			if o, ok := vipOwner[ip]; ok {
				errs = append(errs, fmt.Errorf("workload %q: address %s is the VIP of service %q", w.UID, ip, o))
			}
		}
	}
	errs = append(errs, ValidateL7(s)...)
	return errors.Join(errs...)
}
