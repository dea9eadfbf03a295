package telemetry

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
)

// Reader yields decoded connection records; it is implemented over the
// dataplane's ring buffer. Read blocks until a record arrives or Close is
// called, which makes Read return ErrClosed.
type Reader interface {
	Read() (ConnEvent, error)
	Close() error
}

// ErrClosed is returned by a Reader after Close.
var ErrClosed = errors.New("telemetry: reader closed")

// Pipeline feeds records from a Reader to the metrics and the access log. When
// monitoring is switched off, records are drained and dropped, so the ring
// buffer never stalls the dataplane.
type Pipeline struct {
	Metrics   *TCPMetrics
	AccessLog *AccessLog
	// Kernel, if set, is switched with monitoring, so that with monitoring
	// off the kernel writes no records at all (the dataplane implements it).
	Kernel  EventSwitch
	enabled atomic.Bool
	names   atomic.Pointer[namesBox]
}

// NewPipeline returns a pipeline, monitoring on.
func NewPipeline(m *TCPMetrics, a *AccessLog) *Pipeline {
	p := &Pipeline{Metrics: m, AccessLog: a}
	p.enabled.Store(true)
	return p
}

// SetNames sets the name resolver for metrics and access log.
func (p *Pipeline) SetNames(n Names) {
	p.names.Store(&namesBox{n})
	if p.Metrics != nil {
		p.Metrics.SetNames(n)
	}
}

// MonitoringEnabled and SetMonitoring implement admin.Monitoring.
func (p *Pipeline) MonitoringEnabled() bool { return p.enabled.Load() }

// EventSwitch turns connection records on or off at their source.
type EventSwitch interface {
	SetEvents(on bool) error
}

// SetMonitoring switches the kernel's records, metrics accounting and the
// access log together. If the kernel cannot be switched nothing changes.
func (p *Pipeline) SetMonitoring(on bool) error {
	if p.Kernel != nil {
		if err := p.Kernel.SetEvents(on); err != nil {
			return fmt.Errorf("switching connection records in the kernel: %w", err)
		}
	}
	p.enabled.Store(on)
	if p.AccessLog != nil {
		p.AccessLog.SetEnabled(on)
	}
	return nil
}

// Handle accounts one record.
func (p *Pipeline) Handle(ev *ConnEvent) {
	if !p.enabled.Load() {
		return
	}
	if p.Metrics != nil {
		p.Metrics.Observe(ev)
	}
	if p.AccessLog != nil {
		var n Names
		if b := p.names.Load(); b != nil {
			n = b.n
		}
		p.AccessLog.Observe(ev, n)
	}
}

// Run reads until ctx is done or the reader fails.
func (p *Pipeline) Run(ctx context.Context, r Reader) error {
	go func() {
		<-ctx.Done()
		r.Close()
	}()
	for {
		ev, err := r.Read()
		if err != nil {
			if errors.Is(err, ErrClosed) || ctx.Err() != nil {
				return nil
			}
			return err
		}
		p.Handle(&ev)
	}
}
