package main

import (
	"encoding/json"
	"fmt"
	"io"
	"net/netip"
	"sort"
	"strings"
	"text/tabwriter"

	"sigs.k8s.io/yaml"

	"github.com/kmesh-go/kmesh/pkg/admin"
	"github.com/kmesh-go/kmesh/pkg/model"
)

func writeStructured(w io.Writer, format string, v any) error {
	switch format {
	case "json":
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		return enc.Encode(v)
	case "yaml":
		b, err := yaml.Marshal(v)
		if err != nil {
			return err
		}
		_, err = w.Write(b)
		return err
	}
	return fmt.Errorf("unknown output format %q", format)
}

func reencode(in, out any) error {
	b, err := json.Marshal(in)
	if err != nil {
		return err
	}
	return json.Unmarshal(b, out)
}

// table prints kubectl-style columns.
type table struct{ tw *tabwriter.Writer }

func newTable(w io.Writer, header ...string) *table {
	t := &table{tw: tabwriter.NewWriter(w, 0, 0, 3, ' ', 0)}
	t.row(header...)
	return t
}

func (t *table) row(cols ...string) {
	for i, c := range cols {
		if c == "" {
			cols[i] = "-"
		}
	}
	fmt.Fprintln(t.tw, strings.Join(cols, "\t"))
}

func (t *table) flush() error { return t.tw.Flush() }

func addrs(a []netip.Addr) string {
	s := make([]string, len(a))
	for i, x := range a {
		s[i] = x.String()
	}
	return strings.Join(s, ",")
}

func lbString(lb model.LoadBalancing) string {
	alg := string(lb.Algorithm)
	if alg == "" {
		alg = string(model.LBRandom)
	}
	if lb.Locality != model.LocalityNone {
		alg += "+" + string(lb.Locality)
		if len(lb.RoutingPreference) > 0 {
			p := make([]string, len(lb.RoutingPreference))
			for i, s := range lb.RoutingPreference {
				p[i] = string(s)
			}
			alg += "(" + strings.Join(p, ">") + ")"
		}
	}
	return alg
}

func writeConfigTables(w io.Writer, s *model.Snapshot) error {
	if s.Version != "" {
		fmt.Fprintf(w, "VERSION %s\n\n", s.Version)
	}
	endpoints := map[string]int{}
	for _, wl := range s.Workloads {
		if !wl.Healthy {
			continue
		}
		for key := range wl.Services {
			endpoints[key]++
		}
	}
	t := newTable(w, "SERVICE", "VIPS", "PORTS", "LB", "ENDPOINTS", "WAYPOINT")
	for _, svc := range sorted(s.Services, func(x model.Service) string { return x.Key }) {
		ports := make([]string, len(svc.Ports))
		for i, p := range svc.Ports {
			tp := p.TargetPort
			if tp == 0 {
				tp = p.Port
			}
			ports[i] = fmt.Sprintf("%d->%d", p.Port, tp)
		}
		wp := ""
		if svc.Waypoint != nil {
			wp = fmt.Sprintf("%s:%d", svc.Waypoint.Service, svc.Waypoint.Port)
		}
		t.row(svc.Key, addrs(svc.VIPs), strings.Join(ports, ","), lbString(svc.LB), fmt.Sprint(endpoints[svc.Key]), wp)
	}
	if err := t.flush(); err != nil {
		return err
	}
	fmt.Fprintln(w)
	t = newTable(w, "WORKLOAD", "ADDRESSES", "SERVICES", "LOCALITY", "WEIGHT", "HEALTHY", "ENROLMENT")
	for _, wl := range sorted(s.Workloads, func(x model.Workload) string { return x.UID }) {
		svcs := make([]string, 0, len(wl.Services))
		for k := range wl.Services {
			svcs = append(svcs, k)
		}
		sort.Strings(svcs)
		loc := strings.Trim(strings.Join([]string{wl.Locality.Region, wl.Locality.Zone, wl.Locality.Subzone}, "/"), "/")
		weight := wl.Weight
		if weight == 0 {
			weight = 1
		}
		enr := ""
		if e := wl.Enrolment; e != nil {
			switch {
			case e.CgroupPath != "":
				enr = "cgroup:" + e.CgroupPath
			case e.NetnsPath != "":
				enr = "netns:" + e.NetnsPath
			}
		}
		t.row(wl.UID, addrs(wl.Addresses), strings.Join(svcs, ","), loc, fmt.Sprint(weight), fmt.Sprint(wl.Healthy), enr)
	}
	if err := t.flush(); err != nil {
		return err
	}
	if len(s.Listeners)+len(s.RouteConfigs)+len(s.Clusters) == 0 {
		return nil
	}
	fmt.Fprintln(w)
	t = newTable(w, "LISTENER", "ADDRESS", "ROUTES", "TCP ROUTE")
	for _, l := range sorted(s.Listeners, func(x model.Listener) string { return x.Name }) {
		tcp := ""
		if l.TCPRoute != nil {
			tcp = actionString(*l.TCPRoute)
		}
		t.row(l.Name, l.Address.String(), l.RouteConfig, tcp)
	}
	if err := t.flush(); err != nil {
		return err
	}
	fmt.Fprintln(w)
	t = newTable(w, "ROUTE CONFIG", "VIRTUAL HOST", "DOMAINS", "MATCH", "ACTION")
	for _, rc := range sorted(s.RouteConfigs, func(x model.RouteConfig) string { return x.Name }) {
		for _, vh := range rc.VirtualHosts {
			for _, r := range vh.Routes {
				t.row(rc.Name, vh.Name, strings.Join(vh.Domains, ","), matchString(r.Match), actionString(r.Action))
			}
		}
	}
	if err := t.flush(); err != nil {
		return err
	}
	fmt.Fprintln(w)
	t = newTable(w, "CLUSTER", "LB", "ENDPOINTS", "MAX CONNS", "CONNECT TIMEOUT")
	for _, c := range sorted(s.Clusters, func(x model.Cluster) string { return x.Name }) {
		eps := make([]string, len(c.Endpoints))
		for i, e := range c.Endpoints {
			eps[i] = e.Address.String()
		}
		maxc := ""
		if c.MaxConnections > 0 {
			maxc = fmt.Sprint(c.MaxConnections)
		}
		to := ""
		if c.ConnectTimeout > 0 {
			to = c.ConnectTimeout.String()
		}
		t.row(c.Name, lbString(c.LB), strings.Join(eps, ","), maxc, to)
	}
	return t.flush()
}

func matchString(m model.RouteMatch) string {
	var parts []string
	switch {
	case m.PathExact != "":
		parts = append(parts, "path="+m.PathExact)
	case m.PathPrefix != "":
		parts = append(parts, "prefix="+m.PathPrefix)
	}
	for _, h := range m.Headers {
		switch {
		case h.Present:
			parts = append(parts, h.Name+" present")
		case h.Exact != "":
			parts = append(parts, h.Name+"="+h.Exact)
		case h.Prefix != "":
			parts = append(parts, h.Name+"^="+h.Prefix)
		}
	}
	return strings.Join(parts, " ")
}

func actionString(a model.RouteAction) string {
	if a.Cluster != "" {
		return a.Cluster
	}
	parts := make([]string, len(a.WeightedClusters))
	for i, wc := range a.WeightedClusters {
		parts[i] = fmt.Sprintf("%s:%d", wc.Name, wc.Weight)
	}
	return strings.Join(parts, ",")
}

func sorted[T any](in []T, key func(T) string) []T {
	out := append([]T(nil), in...)
	sort.SliceStable(out, func(i, j int) bool { return key(out[i]) < key(out[j]) })
	return out
}

func writeBPFTables(w io.Writer, d *admin.BPFDump) error {
	if d.Layout != "" {
		fmt.Fprintf(w, "LAYOUT %s\n", d.Layout)
	}
	for i, m := range d.Maps {
		if i > 0 || d.Layout != "" {
			fmt.Fprintln(w)
		}
		note := ""
		if m.Truncated {
			note = fmt.Sprintf(", showing %d", len(m.Rows))
		}
		if m.Note != "" {
			note += "; " + m.Note
		}
		fmt.Fprintf(w, "MAP %s (%s, %d/%d entries%s)\n", m.Name, m.Type, m.Entries, m.MaxEntries, note)
		cols := m.Columns
		if len(cols) == 0 && len(m.Rows) > 0 {
			for k := range m.Rows[0] {
				cols = append(cols, k)
			}
			sort.Strings(cols)
		}
		if len(cols) == 0 {
			continue
		}
		hdr := make([]string, len(cols))
		for j, c := range cols {
			hdr[j] = strings.ToUpper(c)
		}
		t := newTable(w, hdr...)
		for _, r := range m.Rows {
			vals := make([]string, len(cols))
			for j, c := range cols {
				vals[j] = r[c]
			}
			t.row(vals...)
		}
		if err := t.flush(); err != nil {
			return err
		}
	}
	return nil
}

func writeStatus(w io.Writer, st *admin.Status) error {
	ready := "yes"
	if !st.Ready {
		ready = "no (" + st.NotReady + ")"
	}
	t := newTable(w, "FIELD", "VALUE")
	t.row("version", st.Version.String())
	t.row("uptime", st.Uptime)
	t.row("ready", ready)
	if st.Monitor != nil {
		t.row("monitoring", fmt.Sprint(*st.Monitor))
	}
	keys := make([]string, 0, len(st.Daemon))
	for k := range st.Daemon {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		t.row(k, fmt.Sprint(st.Daemon[k]))
	}
	return t.flush()
}
