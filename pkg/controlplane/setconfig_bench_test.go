package controlplane_test

import (
	"context"
	"log/slog"
	"testing"
	"time"

	"github.com/kmesh-go/kmesh/pkg/compile"
	"github.com/kmesh-go/kmesh/pkg/compile/compiletest"
	"github.com/kmesh-go/kmesh/pkg/controlplane"
	"github.com/kmesh-go/kmesh/pkg/controlplane/cptest"
	"github.com/kmesh-go/kmesh/pkg/model"
	"github.com/kmesh-go/kmesh/pkg/xds"
)

// signalling reports every workload upsert.
type signalling struct {
	*compiletest.Recorder
	upserts chan upsert
}

type upsert struct {
	uid string
	at  time.Time
}

func (s *signalling) UpsertWorkload(ctx context.Context, w model.Workload) error {
	err := s.Recorder.UpsertWorkload(ctx, w)
	s.upserts <- upsert{w.UID, time.Now()}
	return err
}

// BenchmarkEditPropagation10kx10: in a 10 000 × 10 mesh served by the
// embedded control plane, one workload's weight is edited; the clock runs
// from SetConfig (what the file watcher calls) until the connected daemon's
// dataplane has the change. ms/edit is the mean.
func BenchmarkEditPropagation10kx10(b *testing.B) {
	srv := controlplane.New(controlplane.Options{NodeName: cptest.Node.NodeName, Logger: slog.New(slog.DiscardHandler)})
	cfg := cptest.BigConfig(10000, 10)
	if err := srv.SetConfig(cfg); err != nil {
		b.Fatal(err)
	}
	addr := cptest.Serve(b, srv)
	dp := &signalling{Recorder: compiletest.NewRecorder(), upserts: make(chan upsert, 16)}
	synced := make(chan struct{}, 1)
	st := compile.NewWorkloadState(dp, compile.WorkloadOptions{NodeName: cptest.Node.NodeName, Logger: slog.New(slog.DiscardHandler),
		OnApplied: func(typ string, n int, _ time.Duration) {
			if n > 1000 {
				synced <- struct{}{}
			}
		}})
	c, err := xds.New(xds.Options{Address: addr, Node: cptest.Node.ZtunnelNode(), Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { c.RunDelta(ctx, st); close(done) }()
	defer func() { cancel(); <-done }()
	<-synced
	uid := controlplane.WorkloadUID(&cfg.Workloads[0])
	b.ResetTimer()
	var total time.Duration
	for i := 0; i < b.N; i++ {
		w := 2 + i%2
		cfg.Workloads[0].Weight = &w
		start := time.Now()
		if err := srv.SetConfig(cfg); err != nil {
			b.Fatal(err)
		}
		got := <-dp.upserts
		for got.uid != uid {
			got = <-dp.upserts
		}
		total += got.at.Sub(start)
	}
	b.ReportMetric(float64(total.Microseconds())/1000/float64(b.N), "ms/edit")
}
