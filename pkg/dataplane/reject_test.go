package dataplane

import (
	"context"
	"errors"
	"testing"

	"github.com/kmesh-go/kmesh/pkg/model"
)

// TestRejectedApplyKeepsServing: input the dataplane refuses (a missing
// enrolment cgroup, a duplicate service port) is an error naming the object —
// never a panic — and the last good state keeps serving connections.
func TestRejectedApplyKeepsServing(t *testing.T) {
	e := newEnv(t)
	good := e.snapshot(model.LoadBalancing{})
	e.apply(good)

	bad := e.snapshot(model.LoadBalancing{})
	bad.Workloads = append(bad.Workloads, model.Workload{UID: "uid-ghost", Healthy: true,
		Enrolment: &model.Enrolment{CgroupPath: "/does/not/exist/kmesh-test"}})
	if err := e.dp.Apply(context.Background(), bad); err == nil {
		t.Fatal("apply with a missing enrolment cgroup succeeded")
	}
	dupPort := e.snapshot(model.LoadBalancing{})
	dupPort.Services[0].Ports = append(dupPort.Services[0].Ports, model.ServicePort{Port: port80})
	err := e.dp.Apply(context.Background(), dupPort)
	var inv *InvalidError
	if !errors.As(err, &inv) {
		t.Fatalf("apply of a service with a duplicate port: %v, want an InvalidError", err)
	}

	res := e.dial(e.client, "tcp4", vipAddr(vip4, port80), 30)
	if len(res.Errors) != 0 || len(res.Identities) == 0 {
		t.Fatalf("after rejected applies the last good config must serve: %+v", res)
	}
}
