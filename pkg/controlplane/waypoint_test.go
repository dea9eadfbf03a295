package controlplane

import (
	"context"
	"log/slog"
	"strings"
	"testing"

	"github.com/kmesh-go/kmesh/pkg/compile"
	"github.com/kmesh-go/kmesh/pkg/compile/compiletest"
	"github.com/kmesh-go/kmesh/pkg/model"
	"github.com/kmesh-go/kmesh/pkg/xds"
)

const waypointYAML = `
services:
  - name: web
    vips: [10.96.0.10]
    ports:
      - {port: 80, targetPort: 8080}
      - {port: 3306, serverFirst: true}
    waypoint: {service: waypoint, serverFirst: refuse}
  - name: waypoint
    vips: [10.96.0.99]
    ports: [{port: 15008}]
workloads:
  - name: web1
    addresses: [10.0.0.1]
    services: [{service: web}]
    waypoint: {service: waypoint}
  - name: wp1
    addresses: [10.0.0.9]
    services: [{service: waypoint}]
    enrolment: {cgroup: /waypoints}
`

// The waypoint entries of the standalone file travel through the Workload
// API (GatewayAddress by hostname, the server-first extension) into the
// model exactly as written.
func TestWaypointConfigToModel(t *testing.T) {
	srv := New(Options{NodeName: "host1", Logger: slog.New(slog.DiscardHandler)})
	if err := srv.SetConfig(mustLoad(t, waypointYAML)); err != nil {
		t.Fatal(err)
	}
	addr := serve(t, srv)
	rec := compiletest.NewRecorder()
	st := compile.NewWorkloadState(rec, compile.WorkloadOptions{NodeName: "host1"})
	c := client(t, addr, xds.Hooks{})
	run(t, func(ctx context.Context) { c.RunDelta(ctx, st) })
	waitFor(t, "config", func() bool { s, w := rec.State(); return len(s) == 2 && len(w) == 2 })

	svcs, wls := rec.State()
	wpKey := "default/waypoint.default.svc.cluster.local"
	web := svcs["default/web.default.svc.cluster.local"]
	if w := web.Waypoint; w == nil || *w != (model.WaypointRef{Service: wpKey, Port: 15008, ServerFirst: model.ServerFirstRefuse}) {
		t.Fatalf("web waypoint %+v", web.Waypoint)
	}
	if web.Ports[0].ServerFirst || !web.Ports[1].ServerFirst {
		t.Fatalf("web ports %+v: want only 3306 server-first", web.Ports)
	}
	if w := wls["standalone/default/web1"].Waypoint; w == nil || *w != (model.WaypointRef{Service: wpKey, Port: 15008}) {
		t.Fatalf("web1 waypoint %+v", w)
	}
	if w := svcs[wpKey].Waypoint; w != nil {
		t.Fatalf("the waypoint service has a waypoint: %+v", w)
	}
}

func TestWaypointConfigErrors(t *testing.T) {
	const edit = "waypoint: {service: waypoint, serverFirst: refuse}"
	for _, c := range []struct {
		name, repl, want string
	}{
		{"no such port", "waypoint: {service: waypoint, port: 15009}", "has no port 15009"},
		{"bad policy", "waypoint: {service: waypoint, serverFirst: sometimes}", `"sometimes" is not one of bypass, refuse`},
		{"self", "waypoint: {service: web}", "its own waypoint"},
		{"unknown", "waypoint: {service: nope}", `no service "nope"`},
	} {
		t.Run(c.name, func(t *testing.T) {
			y := strings.Replace(waypointYAML, edit, c.repl, 1)
			_, err := Load("mesh.yaml", []byte(y))
			if err == nil || !strings.Contains(err.Error(), c.want) || !strings.Contains(err.Error(), "services[0].waypoint") {
				t.Fatalf("error %v, want %q at services[0].waypoint", err, c.want)
			}
		})
	}
	// The same checks apply to a workload's waypoint.
	y := strings.Replace(waypointYAML, "    waypoint: {service: waypoint}\n", "    waypoint: {service: waypoint, port: 1}\n", 1)
	if _, err := Load("mesh.yaml", []byte(y)); err == nil || !strings.Contains(err.Error(), "workloads[0].waypoint.port") {
		t.Fatalf("workload waypoint without the port: %v", err)
	}
}
