// Package dataplane turns the L4 part of the model (services, workloads,
// enrolment) into the kernel maps read by the socket programs, and owns the
// update protocol that keeps every concurrent connect() consistent.
package dataplane

import (
	"context"
	"fmt"

	"github.com/kmesh-go/kmesh/pkg/model"
)

// API is what the config compiler (pkg/compile) lowers into. Every method is
// all-or-nothing: on error the previously applied state keeps serving and the
// error says what was rejected and why.
type API interface {
	// Apply makes the dataplane equal to the L4 part of s: upserts what is new or
	// changed and removes what is absent.
	Apply(ctx context.Context, s *model.Snapshot) error

	// Incremental updates (delta xDS, file edits).
	UpsertService(ctx context.Context, svc model.Service) error
	DeleteService(ctx context.Context, key string) error
	UpsertWorkload(ctx context.Context, wl model.Workload) error
	DeleteWorkload(ctx context.Context, uid string) error
	SetNode(ctx context.Context, n model.Node) error
}

// CapacityError reports that a map or a per-object limit is full. Existing
// entries are untouched.
type CapacityError struct {
	Map   string // map or limit name, e.g. "km_endpoint" or "ports per service"
	Limit int
	What  string // what could not be added, e.g. `service "ns/foo"`
}

func (e *CapacityError) Error() string {
	return fmt.Sprintf("capacity: %s is full (limit %d): cannot add %s", e.Map, e.Limit, e.What)
}

// InvalidError reports input the dataplane cannot represent.
type InvalidError struct {
	Object string // e.g. `service "ns/foo"`
	Reason string
}

func (e *InvalidError) Error() string { return fmt.Sprintf("invalid %s: %s", e.Object, e.Reason) }
