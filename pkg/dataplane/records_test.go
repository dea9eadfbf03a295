package dataplane

import (
	"errors"
	"net/netip"
	"os"
	"testing"
	"time"

	"github.com/kmesh-go/kmesh/pkg/bpf"
	"github.com/kmesh-go/kmesh/pkg/model"
	"github.com/kmesh-go/kmesh/pkg/probe"
	"github.com/kmesh-go/kmesh/pkg/testutil"
)

// TestConnectionRecords streams over one connection through a VIP to an
// enrolled local backend and checks the records of both ends: OPEN, PERIODIC
// while it lasts, CLOSE with exact byte counts; with acceleration the data
// is redirected by sk_msg (and still counted).
func TestConnectionRecords(t *testing.T) {
	for _, accel := range []bool{false, true} {
		name := "Plain"
		if accel {
			name = "Accelerated"
		}
		t.Run(name, func(t *testing.T) { testRecords(t, accel) })
	}
}

func testRecords(t *testing.T, accel bool) {
	e := newEnv(t, func(o *Options) { o.Accel = accel; o.ReportInterval = 100 * time.Millisecond })
	srv := e.attach.Child(t, "srv-")
	vip := netip.MustParseAddr("10.96.0.30")
	be := e.be[0]
	snap := &model.Snapshot{
		Services: []model.Service{{Key: "default/acc", VIPs: []netip.Addr{vip}, Ports: []model.ServicePort{{Port: 70, TargetPort: 7070}}}},
		Workloads: []model.Workload{e.clientWorkload(), {UID: "uid-acc", Addresses: []netip.Addr{be.IP4}, Healthy: true,
			Services: map[string][]model.WorkloadPort{"default/acc": nil}, Enrolment: &model.Enrolment{CgroupPath: srv.Path}}},
	}
	e.apply(snap)
	// Without acceleration the server is a Go default listener (MPTCP where
	// the kernel has it), recognised through km_listen by its process's
	// cgroup, which needs cgroup helpers in sock_ops; kernels without them
	// recognise only plain TCP listeners (their socket storage). Acceleration
	// needs plain TCP sockets on both ends.
	plainTCP := accel
	if err := probe.HaveSockopsCurrentCgroup(); err != nil {
		t.Logf("sock_ops cannot read the current cgroup (%v): the server uses a plain TCP listener", err)
		plainTCP = true
	}
	startServer(t, srv, be.NS, "[::]:7070", "acc", plainTCP)
	rd, err := e.dp.Events()
	if err != nil {
		t.Fatal(err)
	}
	defer rd.Close()

	dur := 600 * time.Millisecond
	var res streamResult
	testutil.RunHelper(t, "stream", streamArgs{Addr: "10.96.0.30:70", Chunk: 4096, Duration: dur},
		testutil.HelperOptions{Netns: e.cl.NS, Cgroup: e.client}, &res)
	if res.ID != "acc" || res.Peer != "10.96.0.30:70" || res.Sent == 0 {
		t.Fatalf("stream: %+v", res)
	}
	clientAddr := netip.MustParseAddrPort(res.Local)
	backendAddr := netip.AddrPortFrom(be.IP4, 7070)

	var client, server []ConnEvent
	deadline := time.Now().Add(10 * time.Second)
	for !(hasClose(client) && hasClose(server)) {
		rd.SetDeadline(deadline)
		ev, err := rd.Read()
		if errors.Is(err, os.ErrDeadlineExceeded) {
			t.Fatalf("records missing: client %+v server %+v", client, server)
		}
		if err != nil {
			t.Fatal(err)
		}
		switch {
		case ev.Local == clientAddr:
			client = append(client, ev)
		case ev.Local == backendAddr && ev.Remote == clientAddr:
			server = append(server, ev)
		}
	}
	svcID, _ := e.dp.svcs.lookup("default/acc")
	clID := e.dp.wls.get("uid-client").id
	beID := e.dp.wls.get("uid-acc").id

	check := func(side string, evs []ConnEvent, dir Direction, src, dst uint32, sent, recv int64) {
		t.Helper()
		if evs[0].Type != EventOpen || evs[len(evs)-1].Type != EventClose {
			t.Fatalf("%s: records %v, want OPEN ... CLOSE", side, types(evs))
		}
		periodic := 0
		for _, ev := range evs {
			if ev.Direction != dir || ev.SrcWorkloadID != src || ev.DstWorkloadID != dst || ev.Accelerated != accel {
				t.Fatalf("%s: %+v (want direction %d, workloads %d->%d, accelerated %v)", side, ev, dir, src, dst, accel)
			}
			if ev.Type == EventPeriodic {
				periodic++
			}
		}
		last := evs[len(evs)-1]
		t.Logf("%s: %v; close: sent %d received %d srtt %v duration %v", side, types(evs), last.BytesSent, last.BytesReceived, last.SRTT, last.Duration())
		if periodic == 0 {
			t.Errorf("%s: no PERIODIC record during a %v connection with a 100ms interval", side, dur)
		}
		if int64(last.BytesSent) != sent || int64(last.BytesReceived) != recv {
			t.Errorf("%s: close record counts sent %d received %d, want %d and %d", side, last.BytesSent, last.BytesReceived, sent, recv)
		}
		if d := last.Duration(); d < dur || d > dur+5*time.Second {
			t.Errorf("%s: duration %v, the stream lasted >= %v", side, d, dur)
		}
	}
	check("client", client, DirectionOutbound, clID, beID, res.Sent, res.Received)
	check("server", server, DirectionInbound, beID, 0, res.Received, res.Sent)
	open := client[0]
	if open.Original != netip.AddrPortFrom(vip, 70) || open.Remote != backendAddr || open.ServiceID != svcID {
		t.Fatalf("client OPEN: original %v remote %v service %d, want %v %v %d", open.Original, open.Remote, open.ServiceID, netip.AddrPortFrom(vip, 70), backendAddr, svcID)
	}
	if key, _ := e.dp.ServiceKey(open.ServiceID); key != "default/acc" {
		t.Fatalf("service id %d resolves to %q", open.ServiceID, key)
	}
	if server[0].Original.IsValid() || server[0].ServiceID != 0 {
		t.Fatalf("server records carry no VIP: %+v", server[0])
	}
	if open.Cookie == 0 || open.NetnsCookie == 0 || open.CgroupID == 0 {
		t.Fatalf("client OPEN lacks ids: %+v", open)
	}
	if !accel && client[len(client)-1].SRTT == 0 {
		t.Errorf("client CLOSE without srtt")
	}
	st := stats(t, e.dp)
	if accel && (st[bpf.StatAccelRedirect] == 0 || st[bpf.StatAccelInsert] < 2) {
		t.Fatalf("acceleration on, but stats %v", st)
	}
	if !accel && st[bpf.StatAccelRedirect] != 0 {
		t.Fatalf("acceleration off, but stats %v", st)
	}
	if st[bpf.StatEventsDropped] != 0 {
		t.Fatalf("records dropped: %v", st)
	}
}

func hasClose(evs []ConnEvent) bool {
	return len(evs) > 0 && evs[len(evs)-1].Type == EventClose
}

func types(evs []ConnEvent) []string {
	var out []string
	for _, ev := range evs {
		out = append(out, map[EventType]string{EventOpen: "OPEN", EventClose: "CLOSE", EventPeriodic: "PERIODIC"}[ev.Type])
	}
	return out
}

// TestEventsSwitch: with records switched off (monitoring off) the kernel
// writes none, periodic ones included; switched back on, a new connection
// is reported again from OPEN to CLOSE.
func TestEventsSwitch(t *testing.T) {
	e := newEnv(t, func(o *Options) { o.ReportInterval = 50 * time.Millisecond; o.NoEvents = true })
	srv := e.attach.Child(t, "srv-")
	vip := netip.MustParseAddr("10.96.0.31")
	be := e.be[0]
	e.apply(&model.Snapshot{
		Services: []model.Service{{Key: "default/sw", VIPs: []netip.Addr{vip}, Ports: []model.ServicePort{{Port: 71, TargetPort: 7071}}}},
		Workloads: []model.Workload{e.clientWorkload(), {UID: "uid-sw", Addresses: []netip.Addr{be.IP4}, Healthy: true,
			Services: map[string][]model.WorkloadPort{"default/sw": nil}, Enrolment: &model.Enrolment{CgroupPath: srv.Path}}},
	})
	startServer(t, srv, be.NS, "[::]:7071", "sw", true)
	rd, err := e.dp.Events()
	if err != nil {
		t.Fatal(err)
	}
	defer rd.Close()
	stream := func() streamResult {
		var res streamResult
		testutil.RunHelper(t, "stream", streamArgs{Addr: "10.96.0.31:71", Chunk: 1024, Duration: 200 * time.Millisecond},
			testutil.HelperOptions{Netns: e.cl.NS, Cgroup: e.client}, &res)
		if res.ID != "sw" || res.Sent == 0 {
			t.Fatalf("stream: %+v", res)
		}
		return res
	}
	// Records collected until the deadline, or until both ends of the
	// connection from local (when given) have reported their CLOSE.
	collect := func(d time.Duration, local netip.AddrPort) []ConnEvent {
		var out []ConnEvent
		closes := 0
		deadline := time.Now().Add(d)
		for {
			rd.SetDeadline(deadline)
			ev, err := rd.Read()
			if errors.Is(err, os.ErrDeadlineExceeded) {
				return out
			}
			if err != nil {
				t.Fatal(err)
			}
			out = append(out, ev)
			if local.IsValid() && (ev.Local == local || ev.Remote == local) && ev.Type == EventClose {
				if closes++; closes == 2 {
					return out
				}
			}
		}
	}

	if e.dp.EventsEnabled() {
		t.Fatal("Options.NoEvents: records reported as on")
	}
	stream()
	if evs := collect(time.Second, netip.AddrPort{}); len(evs) != 0 {
		t.Fatalf("records off, but the kernel wrote %d records: %v", len(evs), types(evs))
	}
	if err := e.dp.SetEvents(true); err != nil {
		t.Fatal(err)
	}
	res := stream()
	local := netip.MustParseAddrPort(res.Local)
	var mine []ConnEvent
	for _, ev := range collect(10*time.Second, local) {
		if ev.Local == local {
			mine = append(mine, ev)
		}
	}
	if len(mine) < 2 || mine[0].Type != EventOpen || !hasClose(mine) {
		t.Fatalf("records on: client records %v, want OPEN ... CLOSE", types(mine))
	}
	if err := e.dp.SetEvents(false); err != nil {
		t.Fatal(err)
	}
	stream()
	if evs := collect(time.Second, netip.AddrPort{}); len(evs) != 0 {
		t.Fatalf("records off again, but the kernel wrote %d records: %v", len(evs), types(evs))
	}
}
