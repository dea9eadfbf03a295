package compile

import (
	"fmt"
	"math/rand/v2"
	"net/netip"
	"reflect"
	"testing"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/wrapperspb"
	"istio.io/istio/pkg/workloadapi"

	"github.com/kmesh-go/kmesh/pkg/model"
)

// checkQuick fails t if quickAddress accepts b but proto.Unmarshal +
// ConvertAddress would not give exactly the same Address.
func checkQuick(t *testing.T, b []byte, name string) bool {
	t.Helper()
	fast, ok := quickAddress(b, name)
	if !ok {
		return false
	}
	slow, err := decodeAddress(b, name)
	if err != nil {
		t.Fatalf("quick path accepted what the general path rejects (%v): %x", err, b)
	}
	if !reflect.DeepEqual(fast, slow) {
		t.Fatalf("quick path differs:\n%+v %+v\n%+v %+v\nbytes %x", fast, fast.Workload, slow, slow.Workload, b)
	}
	return true
}

// Random Workload API objects, plain and with the fields the quick path
// leaves to proto, marshalled and then mutated byte by byte: whatever the
// quick path accepts converts exactly as the general path does, and it does
// accept the plain forms.
func TestQuickAddressMatchesProto(t *testing.T) {
	rnd := rand.New(rand.NewPCG(4, 4))
	plain, quick := 0, 0
	for i := 0; i < 20000; i++ {
		a, name, isPlain := randomAddress(rnd)
		b, err := proto.Marshal(a)
		if err != nil {
			t.Fatal(err)
		}
		got := checkQuick(t, b, name)
		if _, err := decodeAddress(b, name); err == nil && isPlain {
			plain++
			if got {
				quick++
			}
		}
		for range 3 {
			m := append([]byte(nil), b...)
			if len(m) == 0 {
				break
			}
			switch rnd.IntN(3) {
			case 0:
				m[rnd.IntN(len(m))] = byte(rnd.Uint32())
			case 1:
				m = m[:rnd.IntN(len(m))]
			default:
				j := rnd.IntN(len(m))
				m = append(m[:j:j], append([]byte{byte(rnd.Uint32())}, m[j:]...)...)
			}
			checkQuick(t, m, name)
		}
		// Fields repeated by concatenation: singular messages merge, the
		// oneof switches, scalars take the last value.
		checkQuick(t, append(append([]byte(nil), b...), b...), name)
	}
	if quick != plain || plain < 1000 {
		t.Fatalf("quick path took %d of %d valid plain objects", quick, plain)
	}
}

// randomAddress is a service or workload with random fields, some of them
// invalid; plain reports whether it uses only what the quick path handles.
func randomAddress(rnd *rand.Rand) (*workloadapi.Address, string, bool) {
	maybe := func() bool { return rnd.IntN(4) == 0 }
	str := func() string {
		return []string{"", "a", "ns1", "zone-1", "x.y.svc.cluster.local", "é"}[rnd.IntN(6)]
	}
	ip := func() []byte {
		switch rnd.IntN(12) {
		case 0:
			return []byte{1, 2, 3}
		case 1:
			return netip.MustParseAddr("::ffff:10.0.0.1").AsSlice()
		case 2:
			return netip.MustParseAddr("fd00::7").AsSlice()
		}
		return netip.AddrFrom4([4]byte{10, byte(rnd.IntN(4)), 0, byte(rnd.IntN(250))}).AsSlice()
	}
	port := func() *workloadapi.Port {
		p := &workloadapi.Port{ServicePort: uint32(rnd.IntN(100)), TargetPort: uint32(8000 + rnd.IntN(100))}
		if rnd.IntN(20) == 0 {
			p.TargetPort = 70000
		}
		if maybe() {
			p.AppProtocol = workloadapi.AppProtocol_HTTP11
		}
		return p
	}
	plain := true
	odd := func() bool {
		if rnd.IntN(10) == 0 {
			plain = false
			return true
		}
		return false
	}
	if rnd.IntN(3) == 0 {
		s := &workloadapi.Service{Name: str(), Namespace: str(), Hostname: str(), Canonical: maybe()}
		for range rnd.IntN(3) {
			s.Addresses = append(s.Addresses, &workloadapi.NetworkAddress{Network: str(), Address: ip()})
		}
		for range rnd.IntN(3) {
			s.Ports = append(s.Ports, port())
		}
		if maybe() {
			s.SubjectAltNames = []string{str(), str()}
		}
		if maybe() {
			s.IpFamilies = workloadapi.IPFamilies_DUAL
		}
		if odd() {
			s.Waypoint = &workloadapi.GatewayAddress{HboneMtlsPort: 15008, Destination: &workloadapi.GatewayAddress_Hostname{
				Hostname: &workloadapi.NamespacedHostname{Namespace: "ns", Hostname: "wp"}}}
		}
		if odd() {
			s.LoadBalancing = &workloadapi.LoadBalancing{Mode: workloadapi.LoadBalancing_FAILOVER}
		}
		if odd() {
			l := uint32(24)
			s.Addresses = append(s.Addresses, &workloadapi.NetworkAddress{Address: ip(), Length: &l})
		}
		name := s.Namespace + "/" + s.Hostname
		if maybe() {
			name = "other"
		}
		return &workloadapi.Address{Type: &workloadapi.Address_Service{Service: s}}, name, plain
	}
	w := &workloadapi.Workload{Uid: fmt.Sprintf("c//Pod/ns/p%d", rnd.IntN(100)), Name: str(), Namespace: str(), Network: str(),
		Node: str(), ClusterId: str(), TrustDomain: str(), ServiceAccount: str(), CanonicalName: str(), WorkloadName: str(),
		Status: workloadapi.WorkloadStatus(rnd.IntN(3)), WorkloadType: workloadapi.WorkloadType(rnd.IntN(3)),
		TunnelProtocol: workloadapi.TunnelProtocol(rnd.IntN(2)), NativeTunnel: maybe()}
	if rnd.IntN(10) == 0 {
		w.Uid = ""
	}
	for range rnd.IntN(3) {
		w.Addresses = append(w.Addresses, ip())
	}
	if n := rnd.IntN(4); n > 0 {
		w.Services = map[string]*workloadapi.PortList{}
		for range n {
			pl := &workloadapi.PortList{}
			for range rnd.IntN(3) {
				pl.Ports = append(pl.Ports, port())
			}
			w.Services["ns/"+str()] = pl
		}
	}
	if maybe() {
		w.Locality = &workloadapi.Locality{Region: str(), Zone: str(), Subzone: str()}
	}
	if maybe() {
		w.Capacity = wrapperspb.UInt32(uint32(rnd.IntN(3)))
	}
	if maybe() {
		w.AuthorizationPolicies = []string{str()}
	}
	if odd() {
		w.Hostname = "db.example.com"
	}
	if odd() {
		w.Waypoint = &workloadapi.GatewayAddress{HboneMtlsPort: 15008, Destination: &workloadapi.GatewayAddress_Address{
			Address: &workloadapi.NetworkAddress{Address: ip()}}}
	}
	if odd() {
		w.Extensions = []*workloadapi.Extension{EnrolmentExtension(model.Enrolment{CgroupPath: "/x"})}
	}
	if odd() {
		w.ApplicationTunnel = &workloadapi.ApplicationTunnel{Port: 15008}
	}
	name := w.Uid
	if maybe() {
		name = "other"
	}
	return &workloadapi.Address{Type: &workloadapi.Address_Workload{Workload: w}}, name, plain
}

// FuzzQuickAddress: on any bytes, the quick path either declines or agrees
// with proto.Unmarshal + ConvertAddress.
func FuzzQuickAddress(f *testing.F) {
	rnd := rand.New(rand.NewPCG(1, 1))
	for range 20 {
		a, name, _ := randomAddress(rnd)
		b, _ := proto.Marshal(a)
		f.Add(b, name)
	}
	f.Fuzz(func(t *testing.T, b []byte, name string) { checkQuick(t, b, name) })
}
