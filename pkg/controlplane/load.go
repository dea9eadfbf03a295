package controlplane

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/kmesh-go/kmesh/pkg/compile"
	"github.com/kmesh-go/kmesh/pkg/model"
)

// FieldError is a rejected config value, located in the file.
type FieldError struct {
	File   string
	Line   int
	Column int
	Field  string // path from the document root, e.g. services[1].vips[0]
	Msg    string
}

func (e *FieldError) Error() string {
	loc := e.File
	if e.Line > 0 {
		loc = fmt.Sprintf("%s:%d:%d", e.File, e.Line, e.Column)
	}
	if e.Field == "" {
		return loc + ": " + e.Msg
	}
	return fmt.Sprintf("%s: %s: %s", loc, e.Field, e.Msg)
}

// LoadFile reads and validates a mesh file.
func LoadFile(path string) (*Config, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	return Load(path, b)
}

// Load parses and validates a mesh file's contents; name is used in errors.
// Errors are *FieldError (or a join of them) with the line and the field.
//
// The parser is go.yaml.in/yaml/v3 (the YAML organisation's continuation of
// gopkg.in/yaml.v3, already in our module graph through sigs.k8s.io/yaml): it
// exposes the node tree with line and column of every value, which
// sigs.k8s.io/yaml (YAML→JSON→struct) loses. Unknown fields are errors.
func Load(name string, data []byte) (*Config, error) {
	var root yaml.Node
	if err := yaml.Unmarshal(data, &root); err != nil {
		return nil, yamlError(name, err)
	}
	cfg := &Config{}
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	if err := dec.Decode(cfg); err != nil && !errors.Is(err, io.EOF) {
		return nil, yamlError(name, err)
	}
	v := &validator{file: name, root: &root}
	v.config(cfg)
	if len(v.errs) > 0 {
		return nil, errors.Join(v.errs...)
	}
	return cfg, nil
}

var yamlLine = regexp.MustCompile(`line (\d+): (.*)`)

// yamlError turns the parser's "yaml: line N: msg" (possibly several) into
// FieldErrors.
func yamlError(file string, err error) error {
	var te *yaml.TypeError
	if errors.As(err, &te) {
		var errs []error
		for _, m := range te.Errors {
			errs = append(errs, lineError(file, m))
		}
		return errors.Join(errs...)
	}
	return lineError(file, strings.TrimPrefix(err.Error(), "yaml: "))
}

func lineError(file, msg string) error {
	if m := yamlLine.FindStringSubmatch(msg); m != nil {
		n, _ := strconv.Atoi(m[1])
		return &FieldError{File: file, Line: n, Column: 1, Msg: m[2]}
	}
	return &FieldError{File: file, Msg: msg}
}

// validator checks a decoded Config and locates errors by path in the node tree.
type validator struct {
	file string
	root *yaml.Node
	errs []error
}

func (v *validator) fail(path, format string, a ...any) {
	n := lookup(v.root, path)
	e := &FieldError{File: v.file, Field: path, Msg: fmt.Sprintf(format, a...)}
	if n != nil {
		e.Line, e.Column = n.Line, n.Column
	}
	v.errs = append(v.errs, e)
}

// lookup finds the node at path ("a.b[2].c"); when a segment is missing it
// returns the deepest node found, so the error still points near the problem.
func lookup(root *yaml.Node, path string) *yaml.Node {
	n := root
	if n.Kind == yaml.DocumentNode && len(n.Content) > 0 {
		n = n.Content[0]
	}
	for _, seg := range splitPath(path) {
		next := child(n, seg)
		if next == nil {
			return n
		}
		n = next
	}
	return n
}

func splitPath(path string) []string {
	var out []string
	for _, part := range strings.Split(path, ".") {
		for part != "" {
			i := strings.IndexByte(part, '[')
			if i < 0 {
				out = append(out, part)
				break
			}
			if i > 0 {
				out = append(out, part[:i])
			}
			j := strings.IndexByte(part, ']')
			if j < i {
				break
			}
			out = append(out, part[i:j+1])
			part = part[j+1:]
		}
	}
	return out
}

func child(n *yaml.Node, seg string) *yaml.Node {
	if strings.HasPrefix(seg, "[") {
		i, err := strconv.Atoi(strings.Trim(seg, "[]"))
		if err != nil || n.Kind != yaml.SequenceNode || i >= len(n.Content) {
			return nil
		}
		return n.Content[i]
	}
	if n.Kind != yaml.MappingNode {
		return nil
	}
	for i := 0; i+1 < len(n.Content); i += 2 {
		if n.Content[i].Value == seg {
			return n.Content[i+1]
		}
	}
	return nil
}

func (v *validator) config(c *Config) {
	svcKeys := map[string]int{}
	vipOwner := map[netip.Addr]string{}
	if c.Node != nil && c.Node.Name != "" && strings.ContainsAny(c.Node.Name, " \t~") {
		v.fail("node.name", "%q must not contain spaces or ~", c.Node.Name)
	}
	for i := range c.Services {
		s := &c.Services[i]
		at := fmt.Sprintf("services[%d]", i)
		v.name(at+".name", s.Name)
		if s.Namespace != "" {
			v.name(at+".namespace", s.Namespace)
		}
		key := ServiceKey(s)
		if j, dup := svcKeys[key]; dup {
			v.fail(at+".hostname", "service %q is also defined at services[%d]", key, j)
		}
		svcKeys[key] = i
		if len(s.VIPs) == 0 {
			v.fail(at+".vips", "at least one VIP is needed")
		}
		for j, vip := range s.VIPs {
			ip, ok := v.ip(fmt.Sprintf("%s.vips[%d]", at, j), vip)
			if !ok {
				continue
			}
			if o, dup := vipOwner[ip]; dup {
				v.fail(fmt.Sprintf("%s.vips[%d]", at, j), "VIP %s is already used by service %q", ip, o)
			}
			vipOwner[ip] = key
		}
		if len(s.Ports) == 0 {
			v.fail(at+".ports", "at least one port is needed")
		}
		seen := map[int]bool{}
		for j, p := range s.Ports {
			pat := fmt.Sprintf("%s.ports[%d]", at, j)
			v.port(pat+".port", p.Port, false)
			v.port(pat+".targetPort", p.TargetPort, true)
			if seen[p.Port] {
				v.fail(pat+".port", "port %d is listed twice", p.Port)
			}
			seen[p.Port] = true
		}
		if lb := s.LB; lb != nil {
			switch lb.Algorithm {
			case "", "random", "round_robin", "weighted":
			default:
				v.fail(at+".lb.algorithm", "%q is not one of random, round_robin, weighted", lb.Algorithm)
			}
			switch lb.Locality {
			case "":
				if len(lb.RoutingPreference) > 0 {
					v.fail(at+".lb.locality", "routingPreference needs locality: strict or failover")
				}
			case "strict", "failover":
				if len(lb.RoutingPreference) == 0 {
					v.fail(at+".lb.routingPreference", "locality %q needs a routing preference, e.g. [region, zone]", lb.Locality)
				}
			default:
				v.fail(at+".lb.locality", "%q is not one of strict, failover", lb.Locality)
			}
			sc := map[string]bool{}
			for j, p := range lb.RoutingPreference {
				switch p {
				case "region", "zone", "subzone", "node", "cluster", "network":
				default:
					v.fail(fmt.Sprintf("%s.lb.routingPreference[%d]", at, j), "%q is not one of region, zone, subzone, node, cluster, network", p)
				}
				if sc[p] {
					v.fail(fmt.Sprintf("%s.lb.routingPreference[%d]", at, j), "%q is listed twice", p)
				}
				sc[p] = true
			}
		}
	}
	for i := range c.Services {
		if cc := c.Services[i].Cluster; cc != nil {
			at := fmt.Sprintf("services[%d].cluster", i)
			if cc.MaxConnections < 0 || cc.MaxConnections >= 1<<32-1 {
				v.fail(at+".maxConnections", "%d is not in 0..4294967294 (0: no limit)", cc.MaxConnections)
			}
			if cc.ConnectTimeout != "" {
				if d, err := time.ParseDuration(cc.ConnectTimeout); err != nil || d <= 0 || d > time.Hour {
					v.fail(at+".connectTimeout", "%q is not a duration between 1ms and 1h (e.g. 2s, 500ms)", cc.ConnectTimeout)
				}
			}
		}
	}
	// Waypoints and workload bindings refer to services: check after all are known.
	ix := indexServices(c)
	for i := range c.Services {
		s := &c.Services[i]
		if s.Waypoint != nil {
			v.waypoint(fmt.Sprintf("services[%d].waypoint", i), s.Waypoint, ix, c, namespace(s.Namespace), ServiceKey(s))
		}
	}
	uids := map[string]int{}
	for i := range c.Workloads {
		w := &c.Workloads[i]
		at := fmt.Sprintf("workloads[%d]", i)
		v.name(at+".name", w.Name)
		if w.Namespace != "" {
			v.name(at+".namespace", w.Namespace)
		}
		uid := WorkloadUID(w)
		if j, dup := uids[uid]; dup {
			v.fail(at+".name", "workload %q is also defined at workloads[%d]", uid, j)
		}
		uids[uid] = i
		for j, a := range w.Addresses {
			ip, ok := v.ip(fmt.Sprintf("%s.addresses[%d]", at, j), a)
			if ok {
				if o, dup := vipOwner[ip]; dup {
					v.fail(fmt.Sprintf("%s.addresses[%d]", at, j), "%s is the VIP of service %q", ip, o)
				}
			}
		}
		if len(w.Services) > 0 && len(w.Addresses) == 0 {
			v.fail(at+".addresses", "a workload that backs services needs an address")
		}
		for j, ws := range w.Services {
			sat := fmt.Sprintf("%s.services[%d]", at, j)
			key, si, ok := ix.resolve(ws.Service, namespace(w.Namespace))
			if !ok {
				v.fail(sat+".service", "no service %q", ws.Service)
				continue
			}
			for k, p := range ws.Ports {
				pat := fmt.Sprintf("%s.ports[%d]", sat, k)
				if !hasPort(&c.Services[si], p.Port) {
					v.fail(pat+".port", "service %q has no port %d", key, p.Port)
				}
				v.port(pat+".targetPort", p.TargetPort, false)
			}
		}
		if w.Waypoint != nil {
			v.waypoint(at+".waypoint", w.Waypoint, ix, c, namespace(w.Namespace), "")
		}
		if w.Weight != nil && (*w.Weight < 1 || *w.Weight > 1<<20) {
			v.fail(at+".weight", "%d is not in 1..1048576", *w.Weight)
		}
		if e := w.Enrolment; e != nil {
			switch {
			case e.Cgroup == "" && e.Netns == "":
				v.fail(at+".enrolment", "set cgroup or netns")
			case e.Cgroup != "" && e.Netns != "":
				v.fail(at+".enrolment", "set either cgroup or netns, not both")
			case e.Cgroup != "" && strings.Contains("/"+e.Cgroup+"/", "/../"):
				v.fail(at+".enrolment.cgroup", "%q must not contain ..", e.Cgroup)
			case e.Netns != "" && !filepath.IsAbs(e.Netns):
				v.fail(at+".enrolment.netns", "%q must be an absolute path such as /run/netns/NAME", e.Netns)
			}
		}
	}
	listenAt := map[netip.AddrPort]int{}
	for i := range c.HTTP {
		h := &c.HTTP[i]
		at := fmt.Sprintf("http[%d]", i)
		v.name(at+".name", h.Name)
		ip, ok := v.ip(at+".address", h.Address)
		v.port(at+".port", h.Port, false)
		if ok {
			ap := netip.AddrPortFrom(ip, uint16(h.Port))
			if j, dup := listenAt[ap]; dup {
				v.fail(at+".address", "%s is also used by http[%d]", ap, j)
			}
			listenAt[ap] = i
		}
		if len(h.VirtualHosts) == 0 {
			v.fail(at+".virtualHosts", "at least one virtual host is needed")
		}
		if b := h.TCP; b != nil {
			key, si, ok := ix.resolve(b.Service, "default")
			port := b.Port
			if port == 0 {
				port = h.Port
			}
			if !ok {
				v.fail(at+".tcp.service", "no service %q", b.Service)
			} else if !hasPort(&c.Services[si], port) {
				v.fail(at+".tcp.port", "service %q has no port %d", key, port)
			}
		}
		domains := map[string]int{}
		for j, vh := range h.VirtualHosts {
			vat := fmt.Sprintf("%s.virtualHosts[%d]", at, j)
			if len(vh.Domains) == 0 {
				v.fail(vat+".domains", `at least one domain is needed ("*" matches all)`)
			}
			for k, d := range vh.Domains {
				dat := fmt.Sprintf("%s.domains[%d]", vat, k)
				if err := compile.CheckDomain(d); err != nil {
					v.fail(dat, "%v", err)
				}
				if o, dup := domains[strings.ToLower(d)]; dup {
					v.fail(dat, "%q is also a domain of virtualHosts[%d]", d, o)
				}
				domains[strings.ToLower(d)] = j
			}
			for k, r := range vh.Routes {
				rat := fmt.Sprintf("%s.routes[%d]", vat, k)
				if (r.Match.Prefix == "") == (r.Match.Path == "") {
					v.fail(rat+".match", "set exactly one of prefix and path")
				}
				for _, p := range []string{r.Match.Prefix, r.Match.Path} {
					if p != "" && !strings.HasPrefix(p, "/") {
						v.fail(rat+".match", "%q must start with /", p)
					}
				}
				for hi, hm := range r.Match.Headers {
					n := 0
					for _, set := range []bool{hm.Exact != "", hm.Prefix != "", hm.Present} {
						if set {
							n++
						}
					}
					if hm.Name == "" || n != 1 {
						v.fail(fmt.Sprintf("%s.match.headers[%d]", rat, hi), "needs a name and exactly one of exact, prefix, present")
					}
				}
				if len(r.To) == 0 {
					v.fail(rat+".to", "at least one backend is needed")
				}
				for bi, b := range r.To {
					bat := fmt.Sprintf("%s.to[%d]", rat, bi)
					key, si, ok := ix.resolve(b.Service, "default")
					if !ok {
						v.fail(bat+".service", "no service %q", b.Service)
						continue
					}
					port := b.Port
					if port == 0 {
						port = h.Port
					}
					if !hasPort(&c.Services[si], port) {
						v.fail(bat+".port", "service %q has no port %d", key, port)
					}
					if b.Weight < 0 {
						v.fail(bat+".weight", "must not be negative")
					}
				}
			}
		}
	}
}

var dnsLabel = regexp.MustCompile(`^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$`)

func (v *validator) name(path, s string) {
	if s == "" {
		v.fail(path, "is required")
	} else if !dnsLabel.MatchString(s) || len(s) > 253 {
		v.fail(path, "%q must be lower-case letters, digits, '-' and '.'", s)
	}
}

func (v *validator) ip(path, s string) (netip.Addr, bool) {
	ip, err := netip.ParseAddr(s)
	switch {
	case err != nil:
		v.fail(path, "%q is not an IP address", s)
	case ip.Zone() != "":
		v.fail(path, "%q: zones are not supported", s)
	case ip.IsUnspecified() || ip.IsMulticast():
		v.fail(path, "%s is not a unicast address", ip)
	default:
		return ip.Unmap(), true
	}
	return netip.Addr{}, false
}

func (v *validator) port(path string, p int, optional bool) {
	if optional && p == 0 {
		return
	}
	if p < 1 || p > 65535 {
		v.fail(path, "%d is not a port (1-65535)", p)
	}
}

// waypoint checks a waypoint reference at path; self is the referring
// service's key ("" for a workload).
func (v *validator) waypoint(at string, wp *WaypointConfig, ix *services, c *Config, ns, self string) {
	v.port(at+".port", wp.Port, true)
	key, si, ok := ix.resolve(wp.Service, ns)
	switch {
	case !ok:
		v.fail(at+".service", "no service %q", wp.Service)
	case key == self:
		v.fail(at+".service", "a service cannot be its own waypoint")
	default:
		port := wp.Port
		if port == 0 {
			port = DefaultWaypointPort
		}
		if !hasPort(&c.Services[si], port) {
			v.fail(at+".port", "waypoint service %q has no port %d", key, port)
		}
	}
	switch wp.ServerFirst {
	case "", string(model.ServerFirstBypass), string(model.ServerFirstRefuse):
	default:
		v.fail(at+".serverFirst", "%q is not one of bypass, refuse", wp.ServerFirst)
	}
}

func hasPort(s *ServiceConfig, port int) bool {
	for _, p := range s.Ports {
		if p.Port == port {
			return true
		}
	}
	return false
}

func namespace(ns string) string {
	if ns == "" {
		return "default"
	}
	return ns
}

// ServiceKey is the service's Workload API key, namespace/hostname.
func ServiceKey(s *ServiceConfig) string {
	ns := namespace(s.Namespace)
	host := s.Hostname
	if host == "" {
		host = fmt.Sprintf("%s.%s.svc.cluster.local", s.Name, ns)
	}
	return ns + "/" + host
}

// services resolves references to services: a name in the referrer's
// namespace, namespace/name, or the key namespace/hostname.
type services struct {
	byKey  map[string]int
	byName map[string]string // namespace/name → key
}

func indexServices(c *Config) *services {
	ix := &services{byKey: map[string]int{}, byName: map[string]string{}}
	for i := range c.Services {
		k := ServiceKey(&c.Services[i])
		if _, dup := ix.byKey[k]; !dup {
			ix.byKey[k] = i
		}
		ix.byName[namespace(c.Services[i].Namespace)+"/"+c.Services[i].Name] = k
	}
	return ix
}

// resolve returns the key and index of the referenced service.
func (ix *services) resolve(ref, ns string) (string, int, bool) {
	if !strings.Contains(ref, "/") {
		ref = ns + "/" + ref
	}
	key := ref
	if k, ok := ix.byName[ref]; ok {
		key = k
	}
	i, ok := ix.byKey[key]
	return key, i, ok
}

// WorkloadUID is the workload's Workload API uid.
func WorkloadUID(w *WorkloadConfig) string {
	if w.UID != "" {
		return w.UID
	}
	return "standalone/" + namespace(w.Namespace) + "/" + w.Name
}
