package compile

import (
	"context"
	"fmt"
	"net/netip"
	"testing"

	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"

	"github.com/kmesh-go/kmesh/pkg/compile/compiletest"
	"github.com/kmesh-go/kmesh/pkg/xds"
)

func bigResources(b *testing.B) []*discovery.Resource {
	var rs []*discovery.Resource
	vip, be := netip.MustParseAddr("10.96.0.1"), netip.MustParseAddr("10.128.0.1")
	for i := 0; i < 10000; i++ {
		host := fmt.Sprintf("svc-%d.ns", i)
		rs = append(rs, res(b, "ns/"+host, svcAddr("ns", host, []string{vip.String()}, 80)))
		vip = vip.Next()
		for j := 0; j < 10; j++ {
			uid := fmt.Sprintf("w-%d-%d", i, j)
			rs = append(rs, res(b, uid, wlAddr(uid, be.String(), "ns/"+host)))
			be = be.Next()
		}
	}
	return rs
}

// BenchmarkHandleDeltaOneUpdate10kx10: one changed workload in a mesh of
// 10 000 services × 10 endpoints (istiod's usual delta push); its cost must
// not grow with the mesh.
func BenchmarkHandleDeltaOneUpdate10kx10(b *testing.B) {
	s := NewWorkloadState(compiletest.NewRecorder(), WorkloadOptions{})
	if _, err := s.HandleDelta(context.Background(), &xds.DeltaUpdate{TypeURL: xds.AddressType, Resync: true, Resources: bigResources(b)}); err != nil {
		b.Fatal(err)
	}
	ups := []*discovery.Resource{
		res(b, "w-5-5", wlAddr("w-5-5", "10.200.0.1", "ns/svc-5.ns")),
		res(b, "w-5-5", wlAddr("w-5-5", "10.200.0.2", "ns/svc-5.ns")),
	}
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		rej, err := s.HandleDelta(context.Background(), &xds.DeltaUpdate{TypeURL: xds.AddressType, Resources: ups[i%2 : i%2+1]})
		if err != nil || len(rej) > 0 {
			b.Fatal(err, rej)
		}
	}
}

// BenchmarkHandleDelta10kx10 is the compiler's share of a full push: 10 000
// services and 100 000 workloads converted, validated and applied at once.
func BenchmarkHandleDelta10kx10(b *testing.B) {
	var rs []*discovery.Resource
	vip, be := netip.MustParseAddr("10.96.0.1"), netip.MustParseAddr("10.128.0.1")
	for i := 0; i < 10000; i++ {
		host := fmt.Sprintf("svc-%d.ns", i)
		rs = append(rs, res(b, "ns/"+host, svcAddr("ns", host, []string{vip.String()}, 80)))
		vip = vip.Next()
		for j := 0; j < 10; j++ {
			uid := fmt.Sprintf("w-%d-%d", i, j)
			rs = append(rs, res(b, uid, wlAddr(uid, be.String(), "ns/"+host)))
			be = be.Next()
		}
	}
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		s := NewWorkloadState(compiletest.NewRecorder(), WorkloadOptions{})
		if _, err := s.HandleDelta(context.Background(), &xds.DeltaUpdate{TypeURL: xds.AddressType, Resync: true, Resources: rs}); err != nil {
			b.Fatal(err)
		}
	}
}
