package daemon

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"runtime/debug"
	"time"

	"sigs.k8s.io/yaml"

	"github.com/kmesh-go/kmesh/pkg/compile"
	"github.com/kmesh-go/kmesh/pkg/dataplane"
	"github.com/kmesh-go/kmesh/pkg/model"
)

// ModelFile is a debugging and test source: it applies a model.Snapshot
// written as JSON or YAML (field names as in pkg/model's json tags), and
// re-applies it whenever the file changes. A file that fails to parse or is
// rejected by the dataplane is logged and the last good model keeps serving.
// Write the file atomically (write a temporary file, rename it over); an
// empty file is refused. Production nodes use the xDS client or the embedded
// control plane.
type ModelFile struct {
	Path string
	// Poll is how often the file is checked for changes (default 1 s).
	Poll   time.Duration
	Logger *slog.Logger
}

// LoadModelFile reads a snapshot from a JSON or YAML file.
func LoadModelFile(path string) (*model.Snapshot, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	// An empty file is almost always a write in progress (truncate, then
	// write); applying it would delete everything. An intentionally empty
	// model is written as {}.
	if len(bytes.TrimSpace(b)) == 0 {
		return nil, fmt.Errorf("%s is empty (write {} for an empty model)", path)
	}
	var s model.Snapshot
	if trimmed := bytes.TrimSpace(b); trimmed[0] == '{' {
		// JSON: decoded directly (converting a large file through YAML
		// costs several times its size in memory and time).
		dec := json.NewDecoder(bytes.NewReader(trimmed))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&s); err != nil {
			return nil, fmt.Errorf("%s: %w", path, err)
		}
		return &s, nil
	}
	if err := yaml.UnmarshalStrict(b, &s); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return &s, nil
}

func (m ModelFile) Run(ctx context.Context, dp dataplane.API) error {
	log := m.Logger
	if log == nil {
		log = slog.Default()
	}
	poll := m.Poll
	if poll == 0 {
		poll = time.Second
	}
	var last os.FileInfo
	apply := func() error {
		st, err := os.Stat(m.Path)
		if err != nil {
			return err
		}
		if last != nil && st.ModTime().Equal(last.ModTime()) && st.Size() == last.Size() {
			return nil
		}
		last = st
		start := time.Now()
		s, err := LoadModelFile(m.Path)
		if err != nil {
			return err
		}
		if err := dp.Apply(ctx, s); err != nil {
			return fmt.Errorf("%s rejected: %w", m.Path, err)
		}
		// Kernel-native mode: the dataplane also takes the L7 part.
		if l7, ok := dp.(compile.L7Sink); ok && (len(s.Listeners) > 0 || len(s.Clusters) > 0 || len(s.RouteConfigs) > 0) {
			if err := l7.ApplyL7(ctx, s); err != nil {
				return fmt.Errorf("%s rejected: %w", m.Path, err)
			}
		}
		log.Info("model applied", "file", m.Path, "version", s.Version, "services", len(s.Services),
			"workloads", len(s.Workloads), "took", time.Since(start).Round(time.Millisecond))
		// The parsed snapshot is garbage now; give its memory back.
		debug.FreeOSMemory()
		return nil
	}
	if err := apply(); err != nil {
		return err
	}
	t := time.NewTicker(poll)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
			if err := apply(); err != nil {
				log.Error("model file not applied; the last good model keeps serving", "err", err)
			}
		}
	}
}
