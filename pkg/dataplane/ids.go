package dataplane

import "hash/fnv"

// idSpace hands out stable numeric ids for string keys (service keys,
// workload uids). An id is derived from the key (FNV-1a, linear probing on
// collision, as Kmesh does), so the same key gets the same id on every node
// and every restart unless it collided; the assignments are persisted in the
// state directory so collisions resolve the same way after a restart too.
// Ids in [1, limit); 0 means none.
type idSpace struct {
	limit    uint32
	byKey    map[string]uint32
	byID     map[uint32]string
	reserved map[uint32]bool // ids found in pinned maps but not (yet) owned by a key
}

func newIDSpace(limit uint32) *idSpace {
	return &idSpace{limit: limit, byKey: map[string]uint32{}, byID: map[uint32]string{}, reserved: map[uint32]bool{}}
}

func (s *idSpace) lookup(key string) (uint32, bool) {
	id, ok := s.byKey[key]
	return id, ok
}

func (s *idSpace) key(id uint32) (string, bool) {
	k, ok := s.byID[id]
	return k, ok
}

// assign returns key's id, allocating one if needed; ok is false when the
// space is full.
func (s *idSpace) assign(key string) (id uint32, isNew, ok bool) {
	if id, ok := s.byKey[key]; ok {
		return id, false, true
	}
	h := fnv.New32a()
	h.Write([]byte(key))
	n := s.limit - 1
	start := h.Sum32() % n
	for i := uint32(0); i < n; i++ {
		id := (start+i)%n + 1
		if _, used := s.byID[id]; used || s.reserved[id] {
			continue
		}
		s.set(key, id)
		return id, true, true
	}
	return 0, false, false
}

// set records an assignment (from persisted state).
func (s *idSpace) set(key string, id uint32) {
	s.byKey[key] = id
	s.byID[id] = key
	delete(s.reserved, id)
}

func (s *idSpace) release(key string) {
	if id, ok := s.byKey[key]; ok {
		delete(s.byKey, key)
		delete(s.byID, id)
	}
}
