package dataplane

import (
	"context"
	"testing"

	"github.com/kmesh-go/kmesh/pkg/model"
)

// TestReopenKeepsState closes the dataplane (as a stopping daemon does) and
// opens it again: the pinned state keeps serving with no Apply, and
// incremental updates work at once on the restored model (here: removing
// one endpoint re-renders the service from the restored membership).
func TestReopenKeepsState(t *testing.T) {
	e := newEnv(t)
	e.apply(e.snapshot(model.LoadBalancing{Algorithm: model.LBRoundRobin}))
	before := e.dp.Usage()
	id, _ := e.dp.svcs.lookup(svcKey)
	if err := e.dp.Close(); err != nil {
		t.Fatal(err)
	}
	e.open()
	if e.dp.Objects().Adoption.Fresh() {
		t.Fatal("reopen did not adopt the pinned state")
	}
	if got, _ := e.dp.svcs.lookup(svcKey); got != id {
		t.Fatalf("service id %d after reopen, was %d", got, id)
	}
	if u := e.dp.Usage(); u.Services != before.Services || u.Workloads != before.Workloads || u.Frontends != before.Frontends || u.Slots != before.Slots {
		t.Fatalf("usage after reopen %+v, before %+v", u, before)
	}
	res := e.dial(e.client, "tcp4", vipAddr(vip4, port80), 30)
	checkShares(t, res, 30, map[string]float64{"be1:8080": 1.0 / 3, "be2:8080": 1.0 / 3, "be3:8080": 1.0 / 3}, 0.05, false)

	if err := e.dp.DeleteWorkload(context.Background(), "uid-be3"); err != nil {
		t.Fatal(err)
	}
	res = e.dial(e.client, "tcp4", vipAddr(vip4, port80), 20)
	checkShares(t, res, 20, map[string]float64{"be1:8080": 0.5, "be2:8080": 0.5}, 0.05, false)
	if err := e.dp.Sync(); err != nil {
		t.Fatal(err)
	}
	checkMapCounts(t, e.dp)
}
