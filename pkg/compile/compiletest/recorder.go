// Package compiletest has test doubles for the compile passes' unit tests.
// Tests that claim "the maps reflect each change" use the real dataplane
// (host tier); the Recorder is for logic that does not depend on the kernel.
package compiletest

import (
	"context"
	"fmt"
	"maps"
	"sync"

	"github.com/kmesh-go/kmesh/pkg/dataplane"
	"github.com/kmesh-go/kmesh/pkg/model"
)

// Recorder is an in-memory dataplane.API: it keeps the current services,
// workloads and node, counts calls, and can be told to fail.
type Recorder struct {
	mu        sync.Mutex
	Services  map[string]model.Service
	Workloads map[string]model.Workload
	Node      model.Node
	Calls     map[string]int
	// FailUpsert makes UpsertService/UpsertWorkload of these keys fail with
	// a CapacityError, as a full map would.
	FailUpsert map[string]bool
	// FailApply, if set, is returned by Apply (an error naming no object).
	FailApply error
	// Changed receives (non-blocking) after every successful call.
	Changed chan struct{}
}

// NewRecorder returns an empty recorder.
func NewRecorder() *Recorder {
	return &Recorder{Services: map[string]model.Service{}, Workloads: map[string]model.Workload{},
		Calls: map[string]int{}, FailUpsert: map[string]bool{}, Changed: make(chan struct{}, 1)}
}

func (r *Recorder) changed() {
	select {
	case r.Changed <- struct{}{}:
	default:
	}
}

func (r *Recorder) Apply(_ context.Context, s *model.Snapshot) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.Calls["Apply"]++
	if r.FailApply != nil {
		return r.FailApply
	}
	for _, svc := range s.Services {
		if r.FailUpsert[svc.Key] {
			return &dataplane.CapacityError{Map: "km_service", Limit: len(r.Services), What: fmt.Sprintf("service %q", svc.Key)}
		}
	}
	for _, w := range s.Workloads {
		if r.FailUpsert[w.UID] {
			return &dataplane.CapacityError{Map: "km_backend", Limit: len(r.Workloads), What: fmt.Sprintf("workload %q", w.UID)}
		}
	}
	r.Services, r.Workloads = map[string]model.Service{}, map[string]model.Workload{}
	for _, svc := range s.Services {
		r.Services[svc.Key] = svc
	}
	for _, w := range s.Workloads {
		r.Workloads[w.UID] = w
	}
	r.Node = s.Node
	r.changed()
	return nil
}

func (r *Recorder) UpsertService(_ context.Context, svc model.Service) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.Calls["UpsertService"]++
	if r.FailUpsert[svc.Key] {
		return &dataplane.CapacityError{Map: "km_service", Limit: len(r.Services), What: fmt.Sprintf("service %q", svc.Key)}
	}
	r.Services[svc.Key] = svc
	r.changed()
	return nil
}

func (r *Recorder) DeleteService(_ context.Context, key string) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.Calls["DeleteService"]++
	delete(r.Services, key)
	r.changed()
	return nil
}

func (r *Recorder) UpsertWorkload(_ context.Context, w model.Workload) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.Calls["UpsertWorkload"]++
	if r.FailUpsert[w.UID] {
		return &dataplane.CapacityError{Map: "km_backend", Limit: len(r.Workloads), What: fmt.Sprintf("workload %q", w.UID)}
	}
	r.Workloads[w.UID] = w
	r.changed()
	return nil
}

func (r *Recorder) DeleteWorkload(_ context.Context, uid string) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.Calls["DeleteWorkload"]++
	delete(r.Workloads, uid)
	r.changed()
	return nil
}

func (r *Recorder) SetNode(_ context.Context, n model.Node) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.Calls["SetNode"]++
	r.Node = n
	r.changed()
	return nil
}

// State returns copies of the current services and workloads.
func (r *Recorder) State() (map[string]model.Service, map[string]model.Workload) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return maps.Clone(r.Services), maps.Clone(r.Workloads)
}

// CallCount returns how often method was called.
func (r *Recorder) CallCount(method string) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.Calls[method]
}

var _ dataplane.API = (*Recorder)(nil)
