package controlplane

import (
	"errors"
	"os"
	"strings"
	"testing"
)

func TestShippedConfigsLoad(t *testing.T) {
	for _, f := range []string{"../../deploy/standalone/mesh.yaml", "../../deploy/standalone/demo.yaml", "../../deploy/standalone/demo-kn.yaml"} {
		if _, err := os.Stat(f); errors.Is(err, os.ErrNotExist) {
			t.Fatalf("%s is missing", f)
		}
		cfg, err := LoadFile(f)
		if err != nil {
			t.Fatalf("%s: %v", f, err)
		}
		res := Translate(cfg, "node1")
		if err := selfCheck(f, cfg, res, "node1"); err != nil {
			t.Fatalf("%s: self check: %v", f, err)
		}
		if len(res.Addresses) == 0 {
			t.Fatalf("%s: no addresses", f)
		}
	}
}

// Every rejected value is reported with the file, its line and the field path.
func TestLoadErrorsNameFileLineAndField(t *testing.T) {
	cases := []struct {
		name, yaml string
		want       []string
	}{
		{"bad VIP", `
services:
  - name: a
    vips: [10.0.0.1, 10.0.0.300]
    ports: [{port: 80}]
`, []string{"mesh.yaml:4:", "services[0].vips[1]", `"10.0.0.300" is not an IP address`}},
		{"unknown field", `
services:
  - name: a
    vip: [10.0.0.1]
`, []string{"mesh.yaml:4:", "field vip not found"}},
		{"port out of range", `
services:
  - name: a
    vips: [10.0.0.1]
    ports:
      - port: 70000
`, []string{"mesh.yaml:6:", "services[0].ports[0].port", "70000 is not a port"}},
		{"unknown service", `
services:
  - name: a
    vips: [10.0.0.1]
    ports: [{port: 80}]
workloads:
  - name: w
    addresses: [10.1.0.1]
    services: [{service: nope}]
`, []string{"mesh.yaml:9:", "workloads[0].services[0].service", `no service "nope"`}},
		{"duplicate VIP", `
services:
  - name: a
    vips: [10.0.0.1]
    ports: [{port: 80}]
  - name: b
    vips: [10.0.0.1]
    ports: [{port: 80}]
`, []string{"mesh.yaml:7:", "services[1].vips[0]", "already used by service"}},
		{"bad algorithm", `
services:
  - name: a
    vips: [10.0.0.1]
    ports: [{port: 80}]
    lb: {algorithm: fastest}
`, []string{"mesh.yaml:6:", "services[0].lb.algorithm", `"fastest"`}},
		{"enrolment with both", `
workloads:
  - name: c
    enrolment: {cgroup: /x, netns: /run/netns/y}
`, []string{"mesh.yaml:4:", "workloads[0].enrolment", "not both"}},
		{"syntax", "services:\n  - name: a\n   vips: [1\n", []string{"mesh.yaml:"}},
		{"wrong type", `
services:
  - name: a
    vips: [10.0.0.1]
    ports: [{port: eighty}]
`, []string{"mesh.yaml:5:", "eighty"}},
		{"route to missing port", `
services:
  - name: a
    vips: [10.0.0.1]
    ports: [{port: 80}]
http:
  - name: h
    address: 10.0.0.9
    port: 80
    virtualHosts:
      - name: v
        domains: ["*"]
        routes:
          - match: {prefix: /}
            to: [{service: a, port: 81}]
`, []string{"mesh.yaml:15:", "http[0].virtualHosts[0].routes[0].to[0].port", "no port 81"}},
		{"bad connect timeout", `
services:
  - name: a
    vips: [10.0.0.1]
    ports: [{port: 80}]
    cluster: {connectTimeout: soon}
`, []string{"mesh.yaml:6:", "services[0].cluster.connectTimeout", `"soon" is not a duration`}},
		{"negative max connections", `
services:
  - name: a
    vips: [10.0.0.1]
    ports: [{port: 80}]
    cluster:
      maxConnections: -1
`, []string{"mesh.yaml:7:", "services[0].cluster.maxConnections"}},
		{"tcp backend without the port", `
services:
  - name: a
    vips: [10.0.0.1]
    ports: [{port: 80}]
http:
  - name: h
    address: 10.0.0.9
    port: 80
    tcp: {service: a, port: 81}
    virtualHosts:
      - name: v
        domains: ["*"]
        routes:
          - match: {prefix: /}
            to: [{service: a}]
`, []string{"mesh.yaml:10:", "http[0].tcp.port", "no port 81"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := Load("mesh.yaml", []byte(c.yaml))
			if err == nil {
				t.Fatal("accepted")
			}
			for _, w := range c.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not contain %q", err, w)
				}
			}
		})
	}
}

func TestLoadDefaults(t *testing.T) {
	cfg, err := Load("m.yaml", []byte(`
services:
  - name: echo
    vips: [10.0.0.1]
    ports: [{port: 80}]
workloads:
  - name: e1
    addresses: [10.1.0.1]
    services: [{service: echo}]
  - name: c
    enrolment: {netns: /run/netns/c}
`))
	if err != nil {
		t.Fatal(err)
	}
	res := Translate(cfg, "host1")
	svc := res.Addresses["default/echo.default.svc.cluster.local"].GetService()
	if svc == nil || svc.GetPorts()[0].GetTargetPort() != 80 {
		t.Fatalf("service defaults: %v", svc)
	}
	w := res.Addresses["standalone/default/e1"].GetWorkload()
	if w == nil || w.GetServices()["default/echo.default.svc.cluster.local"] == nil {
		t.Fatalf("workload binding: %v", w)
	}
	if c := res.Addresses["standalone/default/c"].GetWorkload(); c.GetNode() != "host1" {
		t.Fatalf("enrolled workload node %q, want host1", c.GetNode())
	}
	if len(res.Envoy["type.googleapis.com/envoy.config.listener.v3.Listener"]) != 1 {
		t.Fatalf("want one TCP listener for the VIP port: %v", res.Envoy)
	}
}
