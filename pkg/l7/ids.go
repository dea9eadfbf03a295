package l7

import (
	"encoding/json"
	"errors"
	"fmt"
	"hash/fnv"
	"io/fs"
	"os"
	"path/filepath"

	"github.com/kmesh-go/kmesh/pkg/model"
)

// clusterIDs hands out the stable ids that index kn_cl_active (live
// connections per cluster, the circuit breaker's counter). A cluster keeps its
// id across config updates and daemon restarts (persisted in the state
// directory), and an id is not given to another cluster while connections of
// the old one may still be open, so counts never mix.
type clusterIDs struct {
	path   string
	byName map[string]uint32
	byID   map[uint32]string
	// applied is what the engine last applied, so a restarted daemon
	// converges from it without removing live state before its sources
	// have synced (the L4 objects of the clusters, the enrolment).
	applied applied
}

type applied struct {
	Clusters []model.Cluster           `json:"clusters,omitempty"`
	Enrol    map[string]model.Workload `json:"enrolment,omitempty"`
	Node     model.Node                `json:"node"`
}

const idsFile = "l7.json"

type idsState struct {
	Format   int               `json:"format"`
	Clusters map[string]uint32 `json:"clusters"`
	Applied  applied           `json:"applied"`
}

func loadClusterIDs(dir string) (*clusterIDs, error) {
	ids := &clusterIDs{byName: map[string]uint32{}, byID: map[uint32]string{}}
	if dir == "" {
		return ids, nil
	}
	ids.path = filepath.Join(dir, idsFile)
	b, err := os.ReadFile(ids.path)
	if errors.Is(err, fs.ErrNotExist) {
		return ids, nil
	}
	if err != nil {
		return nil, err
	}
	var st idsState
	if err := json.Unmarshal(b, &st); err != nil {
		return nil, fmt.Errorf("%s: %w", ids.path, err)
	}
	if st.Format != 1 {
		return nil, fmt.Errorf("%s: unknown format %d", ids.path, st.Format)
	}
	for name, id := range st.Clusters {
		if id == 0 || id >= MaxClusters {
			return nil, fmt.Errorf("%s: cluster %q has id %d out of range", ids.path, name, id)
		}
		ids.byName[name] = id
		ids.byID[id] = name
	}
	ids.applied = st.Applied
	return ids, nil
}

func (s *clusterIDs) lookup(name string) uint32 { return s.byName[name] }

// assign gives every name an id (FNV-1a, linear probing). busy reports ids
// that must not be reused yet (a released cluster with open connections).
// It returns the names that got a new id.
func (s *clusterIDs) assign(names []string, busy func(id uint32) bool) ([]string, error) {
	var added []string
	for _, name := range names {
		if _, ok := s.byName[name]; ok {
			continue
		}
		h := fnv.New32a()
		h.Write([]byte(name))
		n := uint32(MaxClusters - 1)
		start := h.Sum32() % n
		var id uint32
		for i := uint32(0); i < n; i++ {
			c := (start+i)%n + 1
			if _, used := s.byID[c]; used || busy(c) {
				continue
			}
			id = c
			break
		}
		if id == 0 {
			s.release(added)
			return nil, fmt.Errorf("capacity: cluster ids are exhausted (limit %d): cannot add cluster %q", MaxClusters-1, name)
		}
		s.byName[name] = id
		s.byID[id] = name
		added = append(added, name)
	}
	return added, nil
}

func (s *clusterIDs) release(names []string) {
	for _, n := range names {
		if id, ok := s.byName[n]; ok {
			delete(s.byName, n)
			delete(s.byID, id)
		}
	}
}

// retain keeps the ids of keep and drops the others (their counters may
// still drain: assign checks busy before reusing an id).
func (s *clusterIDs) retain(keep map[string]bool) {
	var drop []string
	for n := range s.byName {
		if !keep[n] {
			drop = append(drop, n)
		}
	}
	s.release(drop)
}

func (s *clusterIDs) save() error {
	if s.path == "" {
		return nil
	}
	st := idsState{Format: 1, Clusters: s.byName, Applied: s.applied}
	b, err := json.Marshal(st)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(s.path), 0o700); err != nil {
		return err
	}
	tmp := s.path + ".tmp"
	if err := os.WriteFile(tmp, b, 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, s.path)
}
