package telemetry

import (
	"io"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
)

// BenchmarkPipeline is the userspace cost of one connection's records (OPEN
// and CLOSE of one end): metrics only (kmeshd's default), and with the
// access log on. go test -run '^$' -bench Pipeline ./pkg/telemetry
func BenchmarkPipeline(b *testing.B) {
	for _, c := range []struct {
		name   string
		access bool
	}{{"metrics", false}, {"metrics+accesslog", true}} {
		b.Run(c.name, func(b *testing.B) {
			p := NewPipeline(NewTCPMetrics(prometheus.NewRegistry(), 0), NewAccessLog(io.Discard, c.access))
			p.SetNames(staticNames{})
			open, closed := outbound(EventOpen, 0, 0, 0), outbound(EventClose, 0, 1024, 1100)
			b.ReportAllocs()
			for i := 0; b.Loop(); i++ {
				open.Cookie, closed.Cookie = uint64(i), uint64(i)
				p.Handle(open)
				p.Handle(closed)
			}
		})
	}
}
