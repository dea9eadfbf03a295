package dataplane

import (
	"errors"
	"log/slog"
	"sync"

	"github.com/cilium/ebpf"

	"github.com/kmesh-go/kmesh/pkg/bpf"
)

// retiredGen is a superseded generation of a service: its record and its
// km_endpoint slots (count is zero for an inline record).
type retiredGen struct {
	svc, gen uint32
	count    [bpf.Families][bpf.MaxTiers]uint32
}

func (g retiredGen) slots() int {
	n := 0
	for f := range g.count {
		for t := range g.count[f] {
			n += int(g.count[f][t])
		}
	}
	return n
}

// collector deletes retired generations once no running BPF
// program can still hold them: it waits for an RCU grace period (Barrier)
// that started after the retirement, then deletes. Writers never wait for
// it, except when a map is nearly full (reclaim).
type collector struct {
	obj *bpf.Objects
	log *slog.Logger

	mu   sync.Mutex
	gens []retiredGen
	// pending counts entries retired but not yet deleted, for capacity checks.
	pendingSlots, pendingGens int

	runMu sync.Mutex // one barrier+delete pass at a time
	wake  chan struct{}
	done  chan struct{}
	wg    sync.WaitGroup
}

func newCollector(obj *bpf.Objects, log *slog.Logger) *collector {
	c := &collector{obj: obj, log: log, wake: make(chan struct{}, 1), done: make(chan struct{})}
	c.wg.Add(1)
	go c.loop()
	return c
}

func (c *collector) retireGen(g retiredGen) {
	c.mu.Lock()
	c.gens = append(c.gens, g)
	c.pendingSlots += g.slots()
	c.pendingGens++
	c.mu.Unlock()
	c.kick()
}

func (c *collector) kick() {
	select {
	case c.wake <- struct{}{}:
	default:
	}
}

func (c *collector) pending() (slots, gens int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.pendingSlots, c.pendingGens
}

func (c *collector) loop() {
	defer c.wg.Done()
	for {
		select {
		case <-c.done:
			return
		case <-c.wake:
		}
		if err := c.collect(); err != nil {
			c.log.Error("deleting retired dataplane entries", "err", err)
		}
	}
}

// collect runs one pass: take what is retired now, wait a grace period,
// delete it.
func (c *collector) collect() error {
	c.runMu.Lock()
	defer c.runMu.Unlock()
	c.mu.Lock()
	gens := c.gens
	c.gens = nil
	c.mu.Unlock()
	if len(gens) == 0 {
		return nil
	}
	if err := c.obj.Barrier(); err != nil {
		c.mu.Lock()
		c.gens = append(gens, c.gens...)
		c.mu.Unlock()
		return err
	}
	var slotKeys []bpf.SlotKey
	var genKeys []bpf.SvcKey
	slots := 0
	for _, g := range gens {
		genKeys = append(genKeys, bpf.SvcKey{SvcId: g.svc, Gen: g.gen})
		for f := range g.count {
			for t := range g.count[f] {
				for i := uint32(0); i < g.count[f][t]; i++ {
					slotKeys = append(slotKeys, bpf.SlotKey{SvcId: g.svc, Gen: g.gen, Family: uint8(f), Tier: uint8(t), Idx: i})
				}
			}
		}
		slots += g.slots()
	}
	err := errors.Join(
		deleteKeys(c.obj.Maps[bpf.MapEndpoint], slotKeys),
		deleteKeys(c.obj.Maps[bpf.MapSvcGen], genKeys),
	)
	c.mu.Lock()
	c.pendingSlots -= slots
	c.pendingGens -= len(gens)
	c.mu.Unlock()
	return err
}

// close stops the loop. Entries still retired stay in the maps; the next
// daemon finds them (not active, not referenced) and deletes them.
func (c *collector) close() {
	close(c.done)
	c.wg.Wait()
}

// deleteKeys deletes keys in batches, tolerating keys already gone.
func deleteKeys[K any](m *ebpf.Map, keys []K) error {
	const batch = 4096
	for len(keys) > 0 {
		n := min(batch, len(keys))
		_, err := m.BatchDelete(keys[:n], nil)
		if err != nil {
			// A batch stops at the first missing key; fall back to one by one.
			for i := range keys[:n] {
				if err := m.Delete(&keys[i]); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
					return err
				}
			}
		}
		keys = keys[n:]
	}
	return nil
}

// putBatch writes entries in batches.
func putBatch[K, V any](m *ebpf.Map, keys []K, vals []V) error {
	const batch = 8192
	for len(keys) > 0 {
		n := min(batch, len(keys))
		if _, err := m.BatchUpdate(keys[:n], vals[:n], nil); err != nil {
			if !errors.Is(err, ebpf.ErrNotSupported) {
				return err
			}
			for i := range keys[:n] {
				if err := m.Put(&keys[i], &vals[i]); err != nil {
					return err
				}
			}
		}
		keys, vals = keys[n:], vals[n:]
	}
	return nil
}
