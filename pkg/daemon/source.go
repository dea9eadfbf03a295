// Package daemon is kmeshd's core: it checks the kernel, opens (or adopts) the
// pinned dataplane, and runs one configuration source that drives it until the
// context ends. Everything kmeshd does at runtime hangs off Run; the main
// package only turns flags into Options.
package daemon

import (
	"context"

	"github.com/kmesh-go/kmesh/pkg/dataplane"
)

// Source feeds mesh configuration into the dataplane. Run blocks until ctx is
// done (returning nil or ctx.Err()) or the source fails for good. A source
// should call dp.Apply with a complete snapshot as soon as it has one, then
// incremental updates; the dataplane keeps the last good state when a call is
// rejected, so a source reports rejections (logs, NACKs) and keeps running.
//
// Implementations: the model-file source in this package (debugging and
// tests), and the xDS client / embedded control plane (pkg/xds,
// pkg/controlplane), which the daemon uses by default once it is available.
type Source interface {
	Run(ctx context.Context, dp dataplane.API) error
}

// SourceFunc adapts a function to Source.
type SourceFunc func(ctx context.Context, dp dataplane.API) error

// Run calls f.
func (f SourceFunc) Run(ctx context.Context, dp dataplane.API) error { return f(ctx, dp) }
