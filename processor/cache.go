package processor

import (
	"time"

	"github.com/hygiene/pseudonymizer/processor/pseudonym"
	"github.com/hygiene/pseudonymizer/store"
)

// subject is what the processor knows about one customer: the key it
// derives pseudonyms from, and its newest tombstone.
type subject struct {
	id          string
	hash        store.SubjectHash
	key         []byte    // nil: no key (forgotten, nothing newer asked for one)
	forgottenAt int64     // ms since epoch of the newest tombstone; 0 if none
	tombstone   time.Time // the newest tombstone; zero if none
	// pseudo holds the subject's customer pseudonym in each system, in plan
	// order, pseudonym.Size bytes each: the record key of every output of
	// this subject, derived once per cached key (nil until first needed).
	// It goes with the entry, so forget drops it with the key.
	pseudo []byte
	// pk is key prepared for derivation (pseudonym.Key), set with pseudo.
	pk pseudonym.Key
}

// needsKey reports whether an event that occurred at ms needs a key that
// this subject does not have yet.
func (s *subject) needsKey(ms int64) bool {
	return s.key == nil && store.NeedsKey(false, s.tombstone, time.UnixMilli(ms))
}

// subjectCache is a bounded two-generation cache of subjects: lookups hit the
// hot generation, or the cold one and are promoted; when the hot generation
// is full it becomes the cold one and the old cold one is dropped. It costs
// two map operations per hit and bounds memory to max entries.
//
// Entries are invalidated by subject hash when the store reports forgets
// (see Guard in doc.go). Not safe for concurrent use; the batch loop owns it.
//
// A forgotten subject's key material is wiped at once. Subjects that are
// evicted, dropped by clear or never cached (max 0) may still be used by
// the running batch, whose output records point into their pseudonyms:
// they are wiped by wipeEvicted, which the batch loop calls when the batch
// has ended.
type subjectCache struct {
	max       int
	hot, cold generation
	evicted   []*subject
}

type generation struct {
	byID   map[string]*subject
	byHash map[store.SubjectHash]*subject
}

func newGeneration(n int) generation {
	return generation{byID: make(map[string]*subject, n), byHash: make(map[store.SubjectHash]*subject, n)}
}

func newSubjectCache(max int) *subjectCache {
	c := &subjectCache{max: max}
	c.hot, c.cold = newGeneration(0), newGeneration(0)
	return c
}

// get returns the cached subject for a raw ID given as bytes, without
// allocating.
func (c *subjectCache) get(id []byte) *subject {
	if s := c.hot.byID[string(id)]; s != nil {
		return s
	}
	s := c.cold.byID[string(id)]
	if s != nil {
		delete(c.cold.byID, s.id)
		delete(c.cold.byHash, s.hash)
		c.put(s)
	}
	return s
}

func (c *subjectCache) put(s *subject) {
	if c.max <= 0 {
		c.evicted = append(c.evicted, s)
		return
	}
	// The hot generation holds up to half of max, and never more than the
	// cold one leaves: the two never hold more than max entries together.
	half := (c.max + 1) / 2
	if h := len(c.hot.byID); c.hot.byID[s.id] == nil && (h >= half || h+len(c.cold.byID) >= c.max) {
		c.evict(c.cold)
		c.cold = c.hot
		if len(c.cold.byID) >= c.max {
			c.evict(c.cold)
			c.cold = newGeneration(0) // max 1: only the newest entry fits
		}
		c.hot = newGeneration(min(half, c.max-len(c.cold.byID)))
	}
	if old := c.hot.byID[s.id]; old != nil && old != s {
		delete(c.hot.byHash, old.hash)
		c.evicted = append(c.evicted, old)
	}
	c.hot.byID[s.id] = s
	c.hot.byHash[s.hash] = s
}

// forget drops the subject with hash h, reporting whether it was cached.
func (c *subjectCache) forget(h store.SubjectHash) bool {
	found := false
	for _, g := range []generation{c.hot, c.cold} {
		if s := g.byHash[h]; s != nil {
			delete(g.byHash, h)
			delete(g.byID, s.id)
			s.wipe()
			found = true
		}
	}
	return found
}

// wipe overwrites the subject's key material: after a forget no copy of the
// destroyed key should linger in memory.
func (s *subject) wipe() {
	clear(s.key)
	s.key = nil
	clear(s.pseudo)
	s.pseudo = nil
	s.pk.Wipe()
}

// evict queues the subjects of a generation that is being dropped.
func (c *subjectCache) evict(g generation) {
	for _, s := range g.byID {
		c.evicted = append(c.evicted, s)
	}
}

// clear drops every entry.
func (c *subjectCache) clear() {
	c.evict(c.hot)
	c.evict(c.cold)
	c.hot, c.cold = newGeneration(0), newGeneration(0)
}

// wipeEvicted wipes the key material of the subjects evicted, dropped or
// not cached since the last call. The caller must no longer use them: the
// batch loop calls it when a batch has ended and its records are done.
func (c *subjectCache) wipeEvicted() {
	for i, s := range c.evicted {
		s.wipe()
		c.evicted[i] = nil
	}
	c.evicted = c.evicted[:0]
}

// len returns the number of cached subjects.
func (c *subjectCache) len() int { return len(c.hot.byID) + len(c.cold.byID) }
