package dataplane

import (
	"context"
	"fmt"
	"net/netip"
	"reflect"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/kmesh-go/kmesh/pkg/model"
)

// TestConcurrentReadersDuringChurn: the workload table is edited in place,
// so name lookups (telemetry), service lookups and snapshots (config dump)
// run against updates and the state writer under the dataplane's lock. With
// long names the churn rewrites the names arena several times. Readers must
// only ever see a workload as applied (its name follows from its address),
// and the state file written meanwhile restores the final model exactly.
// Run it with -race to check the locking.
func TestConcurrentReadersDuringChurn(t *testing.T) {
	dp, opts := openScratch(t)
	var err error
	defer func() { dp.Close() }()
	ctx := context.Background()
	if err := dp.Apply(ctx, bigSnapshot(20, 10)); err != nil {
		t.Fatal(err)
	}
	const slots = 200
	addr := func(i int) netip.Addr { return netip.AddrFrom4([4]byte{10, 99, byte(i >> 8), byte(i)}) }
	wl := func(i, gen int) model.Workload {
		return model.Workload{UID: fmt.Sprintf("churn/%d", i), Name: fmt.Sprintf("gen%d-", gen) + strings.Repeat("n", 1500),
			Namespace: "churn", Healthy: true, Addresses: []netip.Addr{addr(i)}, Services: map[string][]model.WorkloadPort{"ns1/svc-1": nil}}
	}
	var stop atomic.Bool
	var reads atomic.Int64
	var wg sync.WaitGroup
	errs := make(chan error, 4)
	for r := 0; r < 3; r++ {
		wg.Add(1)
		go func(r int) {
			defer wg.Done()
			for n := 0; !stop.Load(); n++ {
				i := n % slots
				if w, ok := dp.WorkloadByAddr(addr(i)); ok && (w.UID != fmt.Sprintf("churn/%d", i) || w.Namespace != "churn" ||
					!strings.HasPrefix(w.Name, "gen") || len(w.Name) < 1500) {
					errs <- fmt.Errorf("address %v names %q/%q (%d bytes)", addr(i), w.Namespace, w.UID, len(w.Name))
					return
				}
				if _, ok := dp.ServiceByAddr(netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, 128, 0, 1}), 80)); !ok {
					errs <- fmt.Errorf("service 10.128.0.1:80 not found")
					return
				}
				if r == 0 && n%500 == 0 {
					dp.Snapshot()
				}
				reads.Add(1)
			}
		}(r)
	}
	deadline := time.Now().Add(5 * time.Second)
	updates := 0
	for gen := 0; updates < 4000 && time.Now().Before(deadline); gen++ {
		i := gen % slots
		if gen%7 == 3 {
			err = dp.DeleteWorkload(ctx, fmt.Sprintf("churn/%d", i))
		} else {
			err = dp.UpsertWorkload(ctx, wl(i, gen))
		}
		if err != nil {
			t.Fatal(err)
		}
		updates++
	}
	stop.Store(true)
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	t.Logf("%d updates, %d reads", updates, reads.Load())
	if (updates < 500 && !testing.Short()) || updates < 50 || reads.Load() == 0 {
		t.Fatalf("too little work: %d updates, %d reads", updates, reads.Load())
	}
	want := dp.Snapshot()
	if err := dp.Close(); err != nil {
		t.Fatal(err)
	}
	if dp, err = Open(opts); err != nil {
		t.Fatal(err)
	}
	if got := dp.Snapshot(); !reflect.DeepEqual(got, want) {
		t.Fatal("the model read back from the state file differs from the one applied")
	}
}
