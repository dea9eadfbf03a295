package dataplane

import (
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/kmesh-go/kmesh/pkg/model"
)

// The state file (<state-dir>/dataplane.state, see codec.go) lets a restarted daemon carry
// on where the last one stopped: the ids behind the pinned maps and the model
// they were rendered from, so incremental updates work before the source's
// first full sync. It is written in the background at most every
// stateDebounce after a change (no fsync: pinned BPF state does not survive a
// reboot either). After a crash it can be up to that old; the pinned maps
// stay authoritative (see adopt) and a full Apply converges everything.
const (
	stateFile     = "dataplane.state"
	stateFormat   = 3 // 2: waypoint server-first policy, workload waypoints; 3: names, address lists, enrolment as given (read: 2, 3)
	stateDebounce = 300 * time.Millisecond
)

type persisted struct {
	Format    int
	Node      model.Node
	Services  []persistedSvc
	Workloads []*wlState // read from a file
	wls       *wlTable   // to write: the workloads (encoded under the dataplane's lock)
}

type persistedSvc struct {
	ID      uint32
	Service *model.Service // read from a file
	enc     string         // to write: the service's encoding (svcTable.enc, valid under the dataplane's lock)
}

// snapshotState is the state to write, called under d.mu and encoded before
// it is released: the workloads are read from the table itself.
func (d *Dataplane) snapshotState() *persisted {
	p := &persisted{Format: stateFormat, Node: d.node, wls: &d.wls}
	p.Services = make([]persistedSvc, 0, d.svcs.nSvc)
	for s := range d.svcs.services() {
		p.Services = append(p.Services, persistedSvc{ID: d.svcs.rec(s).id, enc: d.svcs.enc(s)})
	}
	return p
}

type stateWriter struct {
	path  string
	log   *slog.Logger
	write func(path string) error
	mu    sync.Mutex
	dirty bool
	wake  chan struct{}
	done  chan struct{}
	wg    sync.WaitGroup
}

func newStateWriter(dir string, log *slog.Logger, write func(path string) error) *stateWriter {
	w := &stateWriter{path: filepath.Join(dir, stateFile), log: log, write: write,
		wake: make(chan struct{}, 1), done: make(chan struct{})}
	w.wg.Add(1)
	go w.loop()
	return w
}

// mark notes a change; the file is rewritten shortly after.
func (w *stateWriter) mark() {
	w.mu.Lock()
	w.dirty = true
	w.mu.Unlock()
	select {
	case w.wake <- struct{}{}:
	default:
	}
}

func (w *stateWriter) loop() {
	defer w.wg.Done()
	for {
		select {
		case <-w.done:
			return
		case <-w.wake:
		}
		select {
		case <-w.done:
			return
		case <-time.After(stateDebounce):
		}
		w.flush()
	}
}

func (w *stateWriter) flush() {
	w.mu.Lock()
	dirty := w.dirty
	w.dirty = false
	w.mu.Unlock()
	if !dirty {
		return
	}
	if err := w.write(w.path); err != nil {
		w.log.Error("writing dataplane state", "path", w.path, "err", err)
	}
}

// close stops the writer and writes pending changes.
func (w *stateWriter) close() {
	close(w.done)
	w.wg.Wait()
	w.flush()
}

func writeState(path string, p *persisted) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return err
	}
	tmp := path + ".tmp"
	f, err := os.OpenFile(tmp, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o600)
	if err != nil {
		return err
	}
	err = encodeState(f, p)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(tmp)
		return err
	}
	return os.Rename(tmp, path)
}

// readState loads the state file; a missing file is (nil, nil).
func readState(dir string) (*persisted, error) {
	f, err := os.Open(filepath.Join(dir, stateFile))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	defer f.Close()
	p, err := decodeState(f)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", f.Name(), err)
	}
	return p, nil
}

// RemoveState deletes the state file (kmeshd uninstall).
func RemoveState(dir string) error {
	if dir == "" {
		dir = DefaultStateDir
	}
	for _, f := range []string{stateFile, stateFile + ".tmp"} {
		if err := os.Remove(filepath.Join(dir, f)); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return err
		}
	}
	return nil
}
