package dataplane

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand"
	"net"
	"net/netip"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/kmesh-go/kmesh/pkg/bpf"
	"github.com/kmesh-go/kmesh/pkg/model"
	"github.com/kmesh-go/kmesh/pkg/testutil"
)

// monoNow is CLOCK_MONOTONIC in ns: comparable across the test process and
// its helper processes.
func monoNow() int64 {
	var ts unix.Timespec
	unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts)
	return ts.Nano()
}

type churnDialArgs struct {
	Addr    string
	Count   int
	Workers int
}

// churnConn is one connect: [T0, T1] brackets the connect() call (and so the
// run of the connect hook), ID is the backend that answered.
type churnConn struct {
	T0, T1 int64
	ID     string `json:",omitempty"`
	Err    string `json:",omitempty"`
}

func init() {
	testutil.RegisterHelper("churn-dial", func(raw json.RawMessage) (any, error) {
		var a churnDialArgs
		if err := json.Unmarshal(raw, &a); err != nil {
			return nil, err
		}
		out := make([]churnConn, a.Count)
		var next int64 = -1
		var mu sync.Mutex
		var wg sync.WaitGroup
		for w := 0; w < a.Workers; w++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for {
					mu.Lock()
					next++
					i := next
					mu.Unlock()
					if i >= int64(a.Count) {
						return
					}
					out[i] = churnOnce(a.Addr)
				}
			}()
		}
		wg.Wait()
		return out, nil
	})
}

func churnOnce(addr string) churnConn {
	c := churnConn{T0: monoNow()}
	conn, err := net.DialTimeout("tcp4", addr, 3*time.Second)
	c.T1 = monoNow()
	if err != nil {
		c.Err = errText(err)
		return c
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(3 * time.Second))
	line, err := bufio.NewReader(conn).ReadString('\n')
	if err != nil {
		c.Err = "read: " + err.Error()
		return c
	}
	c.ID = strings.TrimSpace(line)
	return c
}

func errText(err error) string {
	var op *net.OpError
	if errors.As(err, &op) && op.Err != nil {
		return op.Op + ": " + op.Err.Error()
	}
	return err.Error()
}

// incarnation is one life of a churned endpoint: from the start of the
// UpsertWorkload that added it to the return of the DeleteWorkload that
// removed it (0 = still present).
type incarnation struct {
	id             string // backend identity host:port
	addStart       int64
	removeReturned int64
}

// TestChurnNeverReachesRemovedBackend: endpoints are added and removed at
// >= 1000 updates/s while >= 10000 connects run. A connect that starts after
// the DeleteWorkload of a backend returned must never reach it ("removed");
// the only errors allowed are refusals while the service was (possibly)
// empty.
func TestChurnNeverReachesRemovedBackend(t *testing.T) {
	e := newEnv(t)
	const portsPerHost = 40
	type ep struct {
		host int
		port uint16
	}
	var pool []ep
	for i, h := range e.be {
		for p := 0; p < portsPerHost; p++ {
			port := uint16(9000 + p)
			testutil.ServeIdentity(t, h.NS.Listen(t, "tcp4", fmt.Sprintf("%s:%d", h.IP4, port)), fmt.Sprintf("%s:%d", h.Name, port))
			pool = append(pool, ep{i, port})
		}
	}
	svc := model.Service{Key: svcKey, VIPs: []netip.Addr{vip4}, Ports: []model.ServicePort{{Port: port80, TargetPort: target80}}}
	e.apply(&model.Snapshot{Services: []model.Service{svc}, Workloads: []model.Workload{e.clientWorkload()}})

	ctx := context.Background()
	rng := rand.New(rand.NewSource(1))
	type live struct {
		uid string
		inc *incarnation
		ep  ep
	}
	var active []live
	inUse := map[ep]bool{}
	var incs []*incarnation
	var emptySince int64 = monoNow() // possibly-empty intervals
	var empty [][2]int64
	seq := 0
	updates := 0
	op := func() {
		// Hover around 3 endpoints, often reaching none.
		add := len(active) == 0 || (len(active) < 6 && rng.Intn(6) >= len(active))
		if add {
			var pick ep
			for {
				pick = pool[rng.Intn(len(pool))]
				if !inUse[pick] {
					break
				}
			}
			seq++
			h := e.be[pick.host]
			inc := &incarnation{id: fmt.Sprintf("%s:%d", h.Name, pick.port), addStart: monoNow()}
			wl := model.Workload{UID: fmt.Sprintf("churn-%d", seq), Addresses: []netip.Addr{h.IP4}, Healthy: true,
				Services: map[string][]model.WorkloadPort{svcKey: {{ServicePort: port80, TargetPort: pick.port}}}}
			if err := e.dp.UpsertWorkload(ctx, wl); err != nil {
				t.Fatalf("upsert: %v", err)
			}
			if len(active) == 0 {
				empty = append(empty, [2]int64{emptySince, monoNow()})
			}
			active = append(active, live{wl.UID, inc, pick})
			inUse[pick] = true
			incs = append(incs, inc)
		} else {
			i := rng.Intn(len(active))
			l := active[i]
			start := monoNow()
			if err := e.dp.DeleteWorkload(ctx, l.uid); err != nil {
				t.Fatalf("delete: %v", err)
			}
			l.inc.removeReturned = monoNow()
			active = append(active[:i], active[i+1:]...)
			delete(inUse, l.ep)
			if len(active) == 0 {
				emptySince = start
			}
		}
		updates++
	}
	for i := 0; i < 6; i++ {
		op()
	}

	n := 10000
	if testing.Short() {
		n = 1000
	}
	h := testutil.StartHelper(t, "churn-dial", churnDialArgs{Addr: vipAddr(vip4, port80), Count: n, Workers: 4},
		testutil.HelperOptions{Netns: e.cl.NS, Cgroup: e.client, Timeout: 5 * time.Minute})
	done := make(chan error, 1)
	var conns []churnConn
	go func() { done <- h.Wait(&conns) }()
	start := time.Now()
	updates = 0
	var werr error
loop:
	for {
		select {
		case werr = <-done:
			break loop
		default:
			op()
		}
	}
	elapsed := time.Since(start)
	if werr != nil {
		t.Fatal(werr)
	}
	if len(active) == 0 {
		empty = append(empty, [2]int64{emptySince, monoNow()})
	}
	rate := float64(updates) / elapsed.Seconds()
	t.Logf("%d connects and %d updates (%.0f/s) in %v; %d endpoint incarnations", len(conns), updates, rate, elapsed.Round(time.Millisecond), len(incs))
	if !testing.Short() && rate < 1000 {
		t.Fatalf("the churn reached only %.0f updates/s; the scenario needs >= 1000", rate)
	}

	byID := map[string][]*incarnation{}
	for _, inc := range incs {
		byID[inc.id] = append(byID[inc.id], inc)
	}
	violations, refused, reached := 0, 0, map[string]bool{}
	for _, c := range conns {
		if c.Err != "" {
			if c.Err == "dial: connect: connection refused" && overlaps(empty, c.T0, c.T1) {
				refused++
				continue
			}
			t.Errorf("connect [%d,%d]: unexpected error %q", c.T0, c.T1, c.Err)
			continue
		}
		legal := false
		for _, inc := range byID[c.ID] {
			if inc.addStart <= c.T1 && (inc.removeReturned == 0 || inc.removeReturned >= c.T0) {
				legal = true
				break
			}
		}
		reached[c.ID] = true
		if !legal {
			violations++
			if violations <= 5 {
				t.Errorf("connect [%d,%d] reached %s, which was not present then (incarnations %+v)", c.T0, c.T1, c.ID, byID[c.ID])
			}
		}
	}
	t.Logf("%d distinct backends reached, %d refusals while the service was empty, %d violations", len(reached), refused, violations)
	if violations != 0 {
		t.Fatalf("%d connects reached a removed backend", violations)
	}
	if len(reached) < 20 {
		t.Fatalf("only %d backends were reached: the churn did not exercise the protocol", len(reached))
	}
	st := stats(t, e.dp)
	if st[bpf.StatLookupMiss] != 0 {
		t.Fatalf("connect hit a missing generation/slot/backend %d times: the update protocol was violated", st[bpf.StatLookupMiss])
	}
	// Everything retired is eventually deleted: nothing leaks.
	if err := e.dp.Sync(); err != nil {
		t.Fatal(err)
	}
	u := e.dp.Usage()
	if u.PendingSlots != 0 || u.PendingGenerations != 0 {
		t.Fatalf("retired entries left after Sync: %+v", u)
	}
	checkMapCounts(t, e.dp)
}

func overlaps(iv [][2]int64, t0, t1 int64) bool {
	i := sort.Search(len(iv), func(i int) bool { return iv[i][1] >= t0 })
	return i < len(iv) && iv[i][0] <= t1
}

// checkMapCounts compares the maps' real entry counts with the dataplane's
// accounting (no leaked or missing entries).
func checkMapCounts(t *testing.T, dp *Dataplane) {
	t.Helper()
	u := dp.Usage()
	for name, want := range map[string]int{bpf.MapEndpoint: u.Slots, bpf.MapSvcGen: u.Generations, bpf.MapFrontend: u.Frontends} {
		got := 0
		it := dp.Objects().Maps[name].Iterate()
		var k, v []byte
		for it.Next(&k, &v) {
			got++
		}
		if err := it.Err(); err != nil {
			t.Fatal(err)
		}
		if got != want {
			t.Errorf("%s holds %d entries, accounting says %d", name, got, want)
		}
	}
}
