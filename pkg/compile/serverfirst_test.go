package compile

import (
	"net/netip"
	"strings"
	"testing"

	"istio.io/istio/pkg/workloadapi"

	"github.com/kmesh-go/kmesh/pkg/model"
)

// The server-first extension marks service ports and carries the waypoint's
// policy, also for a waypoint given by address (resolved later).
func TestServerFirstExtension(t *testing.T) {
	svc := &workloadapi.Service{Name: "db", Namespace: "ns", Hostname: "db.ns",
		Addresses: []*workloadapi.NetworkAddress{{Address: []byte{10, 96, 0, 5}}},
		Ports:     []*workloadapi.Port{{ServicePort: 80, TargetPort: 8080}, {ServicePort: 3306, TargetPort: 3306}},
		Waypoint: &workloadapi.GatewayAddress{HboneMtlsPort: 15008, Destination: &workloadapi.GatewayAddress_Address{
			Address: &workloadapi.NetworkAddress{Address: []byte{10, 96, 0, 99}}}},
		Extensions: []*workloadapi.Extension{ServerFirstExtension([]uint16{3306}, model.ServerFirstRefuse)}}
	a, err := ConvertService(svc)
	if err != nil {
		t.Fatal(err)
	}
	if a.Service.Ports[0].ServerFirst || !a.Service.Ports[1].ServerFirst {
		t.Fatalf("ports %+v", a.Service.Ports)
	}
	if a.WaypointServerFirst != model.ServerFirstRefuse || !a.WaypointIP.IsValid() {
		t.Fatalf("address %+v", a)
	}
	ws := &WorkloadState{vipOwner: map[netip.Addr]string{netip.MustParseAddr("10.96.0.99"): "ns/wp.ns"}}
	if ref := ws.resolveWaypoint(a.Service.Key, a); ref == nil || *ref != (model.WaypointRef{Service: "ns/wp.ns", Port: 15008, ServerFirst: model.ServerFirstRefuse}) {
		t.Fatalf("resolved waypoint %+v", ref)
	}
	for _, bad := range []*workloadapi.Extension{
		ServerFirstExtension([]uint16{25}, ""),
		ServerFirstExtension(nil, "sometimes"),
	} {
		svc.Extensions = []*workloadapi.Extension{bad}
		if _, err := ConvertService(svc); err == nil || !strings.Contains(err.Error(), ExtServerFirst) {
			t.Errorf("extension %v: error %v", bad, err)
		}
	}
	w := &workloadapi.Workload{Uid: "w1", Addresses: [][]byte{{10, 0, 0, 1}},
		Waypoint: &workloadapi.GatewayAddress{HboneMtlsPort: 15008, Destination: &workloadapi.GatewayAddress_Hostname{
			Hostname: &workloadapi.NamespacedHostname{Namespace: "ns", Hostname: "wp.ns"}}},
		Extensions: []*workloadapi.Extension{ServerFirstExtension(nil, model.ServerFirstBypass)}}
	wa, err := ConvertWorkload(w)
	if err != nil {
		t.Fatal(err)
	}
	if wa.Workload.Waypoint == nil || *wa.Workload.Waypoint != (model.WaypointRef{Service: "ns/wp.ns", Port: 15008, ServerFirst: model.ServerFirstBypass}) {
		t.Fatalf("workload waypoint %+v", wa.Workload.Waypoint)
	}
}
