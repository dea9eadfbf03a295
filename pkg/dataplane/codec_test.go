package dataplane

import (
	"bufio"
	"bytes"
	"net/netip"
	"reflect"
	"strings"
	"testing"

	"github.com/kmesh-go/kmesh/pkg/model"
)

// fill sets every field reachable from v to a non-zero value, so a round
// trip that drops a field (one added to pkg/model later) is noticed.
func fill(v reflect.Value, seed int) {
	switch v.Kind() {
	case reflect.String:
		v.SetString("s" + string(rune('a'+seed%26)))
	case reflect.Bool:
		v.SetBool(true)
	case reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		v.SetUint(uint64(7 + seed))
	case reflect.Int, reflect.Int64:
		v.SetInt(int64(9 + seed))
	case reflect.Struct:
		if v.Type() == reflect.TypeOf(netip.Addr{}) {
			v.Set(reflect.ValueOf(netip.AddrFrom4([4]byte{10, 1, 2, byte(seed)})))
			return
		}
		for i := 0; i < v.NumField(); i++ {
			fill(v.Field(i), seed+i)
		}
	case reflect.Pointer:
		v.Set(reflect.New(v.Type().Elem()))
		fill(v.Elem(), seed)
	case reflect.Slice:
		s := reflect.MakeSlice(v.Type(), 2, 2)
		fill(s.Index(0), seed)
		fill(s.Index(1), seed+1)
		v.Set(s)
	case reflect.Map:
		m := reflect.MakeMap(v.Type())
		k, e := reflect.New(v.Type().Key()).Elem(), reflect.New(v.Type().Elem()).Elem()
		fill(k, seed)
		fill(e, seed)
		m.SetMapIndex(k, e)
		k2 := reflect.New(v.Type().Key()).Elem()
		fill(k2, seed+5)
		m.SetMapIndex(k2, reflect.Zero(v.Type().Elem())) // nil overrides: plain membership
		v.Set(m)
	default:
		panic("fill: unhandled kind " + v.Kind().String())
	}
}

func TestCodecCoversModel(t *testing.T) {
	var svc model.Service
	var wl model.Workload
	var node model.Node
	fill(reflect.ValueOf(&svc).Elem(), 1)
	fill(reflect.ValueOf(&wl).Elem(), 2)
	fill(reflect.ValueOf(&node).Elem(), 3)

	// The workload encoding feeds hashWorkload: it must carry every field.
	var b bytes.Buffer
	e := &encoder{}
	e.workload(&wl)
	d := &decoder{r: bufio.NewReader(bytes.NewReader(e.b))}
	if got := d.workload(); d.err != nil || !reflect.DeepEqual(got, &wl) {
		t.Fatalf("workload round trip (%v):\n in %+v\nout %+v", d.err, wl, got)
	}
	other := wl
	other.Weight++
	var scratch sink
	if hashWorkload(&scratch, &wl) == hashWorkload(&scratch, &other) {
		t.Fatal("a changed workload hashes the same")
	}

	loc := model.Locality{Region: "r", Zone: "z"}
	st := newWlState("u", "n", "ns")
	st.id, st.hash, st.weight, st.loc = 5, 77, 3, &loc
	st.setHealthy(true)
	st.ep = endpoint{addr: [2][4]uint32{{1, 2, 3, 4}, {5, 6, 7, 8}}, has: [2]bool{true, true}, local: true}
	st.svcs = &[]membership{{key: "a"}, {key: "b", ports: []model.WorkloadPort{{ServicePort: 80, TargetPort: 8080}}}, {key: "c", ports: []model.WorkloadPort{}}}
	st.x = &wlRare{enrol: &enrolKey{present: true, cgroup: 99, level: 2, netns: 4096, cgPath: "/x", nsPath: "/y", cgGiven: "x"},
		addrs: &[]netip.Addr{netip.MustParseAddr("fd00::1"), netip.MustParseAddr("10.0.0.1")}}
	bare := newWlState("bare", "", "")
	bare.id, bare.loc = 6, &model.Locality{}
	long := newWlState(strings.Repeat("u", longNames), "name", "ns") // names over 64 KiB live in x
	long.id, long.loc = 7, &model.Locality{}
	in := &persisted{Format: stateFormat, Node: node,
		Services:  []persistedSvc{{ID: 3, Service: &svc}, {ID: 4, Service: &model.Service{Key: "empty"}}},
		Workloads: []*wlState{st, bare, long}}
	if long.uid() != strings.Repeat("u", longNames) || long.name() != "name" || long.namespace() != "ns" ||
		st.uid() != "u" || st.name() != "n" || st.namespace() != "ns" {
		t.Fatal("names of a state are not given back")
	}
	b.Reset()
	if err := encodeState(&b, in); err != nil {
		t.Fatal(err)
	}
	out, err := decodeState(bytes.NewReader(b.Bytes()))
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(in, out) {
		t.Fatalf("state round trip lost data:\n in %+v %+v %+v\nout %+v %+v %+v", in, *in.Services[0].Service, *in.Workloads[0],
			out, *out.Services[0].Service, *out.Workloads[0])
	}
	// Truncated or foreign files are errors, never a partial model.
	for _, n := range []int{0, 3, 10, b.Len() / 2, b.Len() - 1} {
		if _, err := decodeState(bytes.NewReader(b.Bytes()[:n])); err == nil {
			t.Fatalf("a file truncated to %d of %d bytes decoded", n, b.Len())
		}
	}
}

func FuzzDecodeState(f *testing.F) {
	var b bytes.Buffer
	encodeState(&b, &persisted{Format: stateFormat, Services: []persistedSvc{{ID: 1, Service: &model.Service{Key: "a", VIPs: []netip.Addr{netip.MustParseAddr("10.0.0.1")}}}}})
	f.Add(b.Bytes())
	f.Fuzz(func(t *testing.T, data []byte) {
		decodeState(bytes.NewReader(data)) // must not panic or allocate without bound
	})
}

// TestWorkloadModelRoundTrip: the dataplane's state of a workload is the
// daemon's only copy of it (config dump, telemetry names), so it must give
// back exactly the workload applied, also after a restart (state file).
func TestWorkloadModelRoundTrip(t *testing.T) {
	var full model.Workload
	fill(reflect.ValueOf(&full).Elem(), 4)
	full.Enrolment = nil // resolving one needs a real cgroup or netns (host tier)
	plain := model.Workload{UID: "u1", Healthy: true, Addresses: []netip.Addr{netip.MustParseAddr("10.0.0.7"), netip.MustParseAddr("fd00::7")},
		Services: map[string][]model.WorkloadPort{"a": nil, "b": {}}}
	mapped := model.Workload{UID: "u2", Addresses: []netip.Addr{netip.MustParseAddr("::ffff:10.0.0.8")}}
	v6first := model.Workload{UID: "u3", Addresses: []netip.Addr{netip.MustParseAddr("fd00::9"), netip.MustParseAddr("10.0.0.9")}}
	d := &Dataplane{
		locs: map[model.Locality]*model.Locality{}, enrolCg: map[uint64]uint32{}, enrolNs: map[uint64]uint32{}}
	p := &plan{wlUpByID: map[uint32]*wlState{}}
	var scratch sink
	var states []*wlState
	for _, wl := range []model.Workload{full, plain, mapped, v6first} {
		h := hashWorkload(&scratch, &wl)
		st, err := d.planWorkload(p, &wl, h)
		if err != nil {
			t.Fatal(err)
		}
		p.wlUpByID[st.id] = st
		if got := st.model(); !reflect.DeepEqual(got, wl) || hashWorkload(&scratch, &got) != h {
			t.Fatalf("model of the state differs:\n in %+v\nout %+v", wl, got)
		}
		states = append(states, st)
	}
	if states[1].givenAddrs() != nil {
		t.Error("an IPv4+IPv6 workload keeps a copy of its address list")
	}
	var b bytes.Buffer
	if err := encodeState(&b, &persisted{Format: stateFormat, Workloads: states}); err != nil {
		t.Fatal(err)
	}
	out, err := decodeState(bytes.NewReader(b.Bytes()))
	if err != nil {
		t.Fatal(err)
	}
	for i, st := range out.Workloads {
		if got, want := st.model(), states[i].model(); !reflect.DeepEqual(got, want) || st.hash != states[i].hash {
			t.Fatalf("model after the state file differs:\n in %+v\nout %+v", want, got)
		}
	}
}

// TestServiceKeptEncoded: a service kept as its encoding comes back as the
// copy the dataplane used to keep (copyService: every field, empty slices
// as nil), also with a zoned VIP and empty lists.
func TestServiceKeptEncoded(t *testing.T) {
	var full model.Service
	fill(reflect.ValueOf(&full).Elem(), 4)
	empty := model.Service{Key: "k", VIPs: []netip.Addr{}, Ports: []model.ServicePort{}}
	empty.LB.RoutingPreference = []model.LocalityScope{}
	zoned := model.Service{Key: "z", VIPs: []netip.Addr{netip.MustParseAddr("fe80::1%eth0"), netip.MustParseAddr("10.0.0.1")}}
	for _, s := range []*model.Service{&full, &empty, &zoned, {}} {
		enc := encodeService(s)
		if got, want := decodeService(enc), copyService(s); !reflect.DeepEqual(got, want) {
			t.Fatalf("kept service:\n got %+v\nwant %+v", got, want)
		}
		if localityMode(enc) != s.LB.Locality {
			t.Fatal("locality mode")
		}
	}
}
