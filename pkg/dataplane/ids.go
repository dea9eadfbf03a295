package dataplane

// Service ids: stable numeric ids for service keys, kept in the service
// table (svcTable.id, and the id → slot index). An id is derived from the
// key (FNV-1a, linear probing on collision, as Kmesh does), so the same key
// gets the same id on every node and every restart unless it collided; the
// assignments are persisted in the state file so collisions resolve the
// same way after a restart too. Ids in [1, limit); 0 means none. Ids found
// in pinned maps but not (yet) owned by a key are reserved (adopt).

// lookup is key's id.
func (t *svcTable) lookup(key string) (uint32, bool) {
	s, ok := t.slotOf(key)
	if !ok || t.recs[s].id == 0 {
		return 0, false
	}
	return t.recs[s].id, true
}

// idKey is the key owning id (pointing into the arena).
func (t *svcTable) idKey(id uint32) (string, bool) {
	s, ok := t.slotOfID(id)
	if !ok {
		return "", false
	}
	return t.key(s), true
}

// assign returns key's id, allocating one if needed; ok is false when the
// space is full.
func (t *svcTable) assign(key string) (id uint32, isNew, ok bool) {
	if id, ok := t.lookup(key); ok {
		return id, false, true
	}
	n := t.limit - 1
	start := fnv32a(key) % n
	for i := uint32(0); i < n; i++ {
		id := (start+i)%n + 1
		if _, used := t.slotOfID(id); used || t.reserved[id] {
			continue
		}
		t.setID(key, id)
		return id, true, true
	}
	return 0, false, false
}

// setID records an assignment (from persisted state); id must be free and
// key without one.
func (t *svcTable) setID(key string, id uint32) {
	s := t.ensure(key)
	t.recs[s].id = id
	t.insertID(s)
	delete(t.reserved, id)
	if g, ok := t.seqs[id]; ok {
		t.recs[s].seq = g
		delete(t.seqs, id)
	}
}

// release drops key's id.
func (t *svcTable) release(key string) {
	if s, ok := t.slotOf(key); ok && t.recs[s].id != 0 {
		t.removeID(s)
		t.removeIfUnused(s)
	}
}
