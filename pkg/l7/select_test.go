package l7

import (
	"context"
	"encoding/binary"
	"fmt"
	"math"
	"net/netip"
	"testing"
	"unsafe"

	"github.com/cilium/ebpf"

	"github.com/kmesh-go/kmesh/pkg/bpf/bpftest"
	"github.com/kmesh-go/kmesh/pkg/bpf/objs"
	"github.com/kmesh-go/kmesh/pkg/dataplane"
	"github.com/kmesh-go/kmesh/pkg/model"
	"github.com/kmesh-go/kmesh/pkg/testutil"
)

// Host tier: clusters lowered into the real L4 dataplane (VIP-less services,
// one workload per endpoint) and selected by the kernel-native selection code
// (kn_action_cluster, kn_cluster_pick over km_lb_pick), run with BPF_PROG_RUN
// through a syscall shim. The shim needs no kmesh.ko; the route tables it
// reads are written here the way the engine writes them.

type knSelector struct {
	t    *testing.T
	dp   *dataplane.Dataplane
	prog *ebpf.Program
	coll *ebpf.Collection
}

func newKnSelector(t *testing.T) *knSelector {
	t.Helper()
	testutil.Privileged(t)
	cg := testutil.NewCgroup(t)
	dp, err := dataplane.Open(dataplane.Options{BPF: bpftest.Options(t, cg), StateDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { dp.Close() })
	spec, err := objs.LoadKnSelect()
	if err != nil {
		t.Fatal(err)
	}
	repl := map[string]*ebpf.Map{}
	for name := range spec.Maps {
		if m, ok := dp.Objects().Maps[name]; ok {
			repl[name] = m
		}
	}
	coll, err := ebpf.NewCollectionWithOptions(spec, ebpf.CollectionOptions{MapReplacements: repl})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { coll.Close() })
	return &knSelector{t: t, dp: dp, prog: coll.Programs["kn_select"], coll: coll}
}

// apply lowers clusters into the dataplane and writes their kn_clusters
// entries (generation 1, ids 1..n in order) and the actions given.
func (s *knSelector) apply(clusters []model.Cluster, actions ...Action) {
	s.t.Helper()
	svcs, wls := L4(clusters)
	if err := s.dp.Apply(context.Background(), &model.Snapshot{Services: svcs, Workloads: wls}); err != nil {
		s.t.Fatal(err)
	}
	ids := map[string]uint32{}
	for i, c := range clusters {
		svc, ok := s.dp.ServiceID(ClusterServiceKey(c.Name))
		if !ok {
			s.t.Fatalf("cluster %q has no L4 service", c.Name)
		}
		ids[c.Name] = uint32(i + 1)
		v := objs.KnRouteKnCluster{SvcId: svc, LbPort: htons(ClusterPort)}
		if err := s.coll.Maps[MapClusters].Put(objs.KnRouteKnKey{Gen: 1, Id: uint32(i + 1)}, v); err != nil {
			s.t.Fatal(err)
		}
	}
	for i, a := range actions {
		var v objs.KnRouteKnAction
		v.N = uint32(len(a.Clusters))
		var sum uint32
		for j, c := range a.Clusters {
			v.Cluster[j] = ids[c]
			if a.Weights != nil {
				sum += a.Weights[j]
				v.Cum[j] = sum
			}
		}
		v.Total = sum
		if err := s.coll.Maps[MapActions].Put(objs.KnRouteKnKey{Gen: 1, Id: uint32(i + 1)}, v); err != nil {
			s.t.Fatal(err)
		}
	}
}

func (s *knSelector) run(a objs.KnSelectKnSelectArgs) objs.KnSelectKnSelectArgs {
	s.t.Helper()
	a.Gen = 1
	buf := unsafe.Slice((*byte)(unsafe.Pointer(&a)), unsafe.Sizeof(a))
	if _, err := s.prog.Run(&ebpf.RunOptions{Context: buf, ContextOut: buf}); err != nil {
		s.t.Fatal(err)
	}
	return a
}

func pickedAddr(a objs.KnSelectKnSelectArgs) netip.AddrPort {
	var b [16]byte
	for i, w := range a.Addr {
		binary.NativeEndian.PutUint32(b[i*4:], w)
	}
	var p [2]byte
	binary.NativeEndian.PutUint16(p[:], a.Port)
	return netip.AddrPortFrom(netip.AddrFrom16(b).Unmap(), binary.BigEndian.Uint16(p[:]))
}

const (
	famV4 = 0
	famV6 = 1
	v4OK  = 1 << 8
	kmOK  = 1
	kmRef = 2
	pickV = 3
)

func TestClusterSelectionOverL4Maps(t *testing.T) {
	s := newKnSelector(t)
	ep := func(a string, w uint32) model.Endpoint {
		return model.Endpoint{Address: netip.MustParseAddrPort(a), Weight: w}
	}
	weighted := model.Cluster{Name: "weighted", LB: model.LoadBalancing{Algorithm: model.LBWeighted}, Endpoints: []model.Endpoint{
		ep("10.0.0.1:8080", 1), ep("10.0.0.1:9090", 3), ep("[fd00::1]:7070", 1)}}
	v4only := model.Cluster{Name: "v4only", Endpoints: []model.Endpoint{ep("10.0.0.2:80", 1)}}
	empty := model.Cluster{Name: "empty"}
	s.apply([]model.Cluster{weighted, v4only, empty},
		Action{Clusters: []string{"weighted"}},
		Action{Clusters: []string{"weighted", "v4only"}, Weights: []uint32{1, 4}})

	// Weighted endpoints of one address with their own ports: 1:3.
	const n = 4000
	counts := map[netip.AddrPort]int{}
	for i := 0; i < n; i++ {
		a := s.run(objs.KnSelectKnSelectArgs{Cluster: 1, FamFlags: famV4})
		if a.Verdict != kmOK {
			t.Fatalf("pick %d: verdict %d", i, a.Verdict)
		}
		counts[pickedAddr(a)]++
	}
	share := float64(counts[netip.MustParseAddrPort("10.0.0.1:9090")]) / n * 100
	if counts[netip.MustParseAddrPort("10.0.0.1:8080")]+counts[netip.MustParseAddrPort("10.0.0.1:9090")] != n || math.Abs(share-75) > 3 {
		t.Fatalf("IPv4 picks %v: want only the two IPv4 endpoints, 25/75 within 3 points", counts)
	}
	// IPv6 sockets get the IPv6 endpoint.
	if a := s.run(objs.KnSelectKnSelectArgs{Cluster: 1, FamFlags: famV6 | v4OK}); a.Verdict != kmOK || pickedAddr(a) != netip.MustParseAddrPort("[fd00::1]:7070") {
		t.Fatalf("IPv6 pick: %d %v", a.Verdict, pickedAddr(a))
	}
	// A cluster with IPv4 endpoints only: refused for an IPV6_V6ONLY socket,
	// a v4-mapped endpoint for a dual-stack one.
	if a := s.run(objs.KnSelectKnSelectArgs{Cluster: 2, FamFlags: famV6}); a.Verdict != kmRef {
		t.Fatalf("v6-only socket, IPv4 cluster: verdict %d, want refused", a.Verdict)
	}
	a := s.run(objs.KnSelectKnSelectArgs{Cluster: 2, FamFlags: famV6 | v4OK})
	if a.Verdict != pickV || pickedAddr(a) != netip.MustParseAddrPort("10.0.0.2:80") || a.Addr[2] != htonl(0xffff) {
		t.Fatalf("dual-stack socket, IPv4 cluster: verdict %d %v %x", a.Verdict, pickedAddr(a), a.Addr)
	}
	// No endpoint; no such cluster.
	if a := s.run(objs.KnSelectKnSelectArgs{Cluster: 3, FamFlags: famV4}); a.Verdict != kmRef {
		t.Fatalf("empty cluster: verdict %d", a.Verdict)
	}
	if a := s.run(objs.KnSelectKnSelectArgs{Cluster: 9, FamFlags: famV4}); a.Verdict != -1 {
		t.Fatalf("missing cluster: verdict %d", a.Verdict)
	}
	// A weighted action: 1:4 between the clusters.
	byCluster := map[uint32]int{}
	for i := 0; i < n; i++ {
		a := s.run(objs.KnSelectKnSelectArgs{Action: 2, FamFlags: famV4})
		byCluster[a.Cid]++
	}
	if share := float64(byCluster[2]) / n * 100; byCluster[1]+byCluster[2] != n || math.Abs(share-80) > 3 {
		t.Fatalf("weighted action picks %v: want 20/80 within 3 points", byCluster)
	}

	// Endpoint changes are the L4 generation protocol's: the removed
	// endpoint is never picked again.
	weighted.Endpoints = weighted.Endpoints[1:]
	s.apply([]model.Cluster{weighted, v4only, empty})
	for i := 0; i < 200; i++ {
		if a := s.run(objs.KnSelectKnSelectArgs{Cluster: 1, FamFlags: famV4}); pickedAddr(a) != netip.MustParseAddrPort("10.0.0.1:9090") {
			t.Fatalf("after removing 10.0.0.1:8080: picked %v", pickedAddr(a))
		}
	}

	// Clusters of up to 16 slots have them inline in the generation record
	// (IPv6 after every IPv4 slot), larger ones in km_endpoint: "mid" has
	// 15 IPv4 endpoints and one IPv6 (16 slots, inline), "big" 20 IPv4 and
	// one IPv6 (21, km_endpoint). Weighted picks follow the weights either
	// way and an IPv6 socket gets the IPv6 endpoint.
	for _, size := range []int{15, 20} {
		c := model.Cluster{Name: fmt.Sprintf("c%d", size), LB: model.LoadBalancing{Algorithm: model.LBWeighted}}
		sum := 0
		for i := 1; i <= size; i++ {
			c.Endpoints = append(c.Endpoints, ep(fmt.Sprintf("10.0.1.%d:80", i), uint32(i)))
			sum += i
		}
		c.Endpoints = append(c.Endpoints, ep("[fd00::9]:80", 1))
		s.apply([]model.Cluster{c})
		counts := map[netip.AddrPort]int{}
		for i := 0; i < n; i++ {
			a := s.run(objs.KnSelectKnSelectArgs{Cluster: 1, FamFlags: famV4})
			if a.Verdict != kmOK {
				t.Fatalf("%s pick %d: verdict %d", c.Name, i, a.Verdict)
			}
			counts[pickedAddr(a)]++
		}
		heavy := netip.MustParseAddrPort(fmt.Sprintf("10.0.1.%d:80", size))
		if share, want := float64(counts[heavy])/n*100, float64(size)/float64(sum)*100; len(counts) > size || math.Abs(share-want) > 2.5 {
			t.Fatalf("%s: IPv4 picks %v: %v has %.1f%%, want %.1f%% within 2.5 points", c.Name, counts, heavy, share, want)
		}
		for i := 0; i < 20; i++ {
			if a := s.run(objs.KnSelectKnSelectArgs{Cluster: 1, FamFlags: famV6}); a.Verdict != kmOK || pickedAddr(a) != netip.MustParseAddrPort("[fd00::9]:80") {
				t.Fatalf("%s: IPv6 pick: %d %v", c.Name, a.Verdict, pickedAddr(a))
			}
		}
	}
}

func htonl(v uint32) uint32 {
	var b [4]byte
	binary.BigEndian.PutUint32(b[:], v)
	return binary.NativeEndian.Uint32(b[:])
}
