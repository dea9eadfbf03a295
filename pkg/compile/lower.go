package compile

import (
	"context"
	"sort"

	"github.com/kmesh-go/kmesh/pkg/dataplane"
	"github.com/kmesh-go/kmesh/pkg/model"
)

// Change is a set of L4 model changes, the unit of incremental lowering.
type Change struct {
	Services         []model.Service
	Workloads        []model.Workload
	DeletedServices  []string
	DeletedWorkloads []string
}

// Empty reports whether there is nothing to lower.
func (c *Change) Empty() bool {
	return len(c.Services)+len(c.Workloads)+len(c.DeletedServices)+len(c.DeletedWorkloads) == 0
}

// Size is the number of objects touched.
func (c *Change) Size() int {
	return len(c.Services) + len(c.Workloads) + len(c.DeletedServices) + len(c.DeletedWorkloads)
}

// Lower applies c to the dataplane one object at a time, in an order that
// never leaves a dangling reference visible to connect(): services first (a
// workload's endpoints hang off them), then workloads; workloads are removed
// before services. Within each group objects go in key order, so a replay is
// deterministic. Failures are returned by xDS resource name (service key or
// workload uid); every other object is applied.
func Lower(ctx context.Context, api dataplane.API, c Change) map[string]error {
	fail := map[string]error{}
	sort.Slice(c.Services, func(i, j int) bool { return c.Services[i].Key < c.Services[j].Key })
	sort.Slice(c.Workloads, func(i, j int) bool { return c.Workloads[i].UID < c.Workloads[j].UID })
	sort.Strings(c.DeletedServices)
	sort.Strings(c.DeletedWorkloads)
	for _, s := range c.Services {
		if err := api.UpsertService(ctx, s); err != nil {
			fail[s.Key] = err
		}
	}
	for _, w := range c.Workloads {
		if err := api.UpsertWorkload(ctx, w); err != nil {
			fail[w.UID] = err
		}
	}
	for _, uid := range c.DeletedWorkloads {
		if err := api.DeleteWorkload(ctx, uid); err != nil {
			fail[uid] = err
		}
	}
	for _, key := range c.DeletedServices {
		if err := api.DeleteService(ctx, key); err != nil {
			fail[key] = err
		}
	}
	return fail
}
