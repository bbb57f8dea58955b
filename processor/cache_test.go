package processor

import (
	"bytes"
	"context"
	"fmt"
	"math/rand/v2"
	"runtime"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/hygiene/pseudonymizer/processor/pseudonym"
	"github.com/hygiene/pseudonymizer/store"
)

func testEntry(n byte) *store.Entry {
	e := &store.Entry{Key: bytes.Repeat([]byte{n}, store.KeySize)}
	e.Hash[0] = n
	return e
}

// wiped reports whether s's key material was overwritten.
func wiped(s subject) bool {
	p, _ := s.pseudonyms()
	return s.key() == nil && bytes.Equal(p, make([]byte, len(p))) && bytes.Equal(s.g.slot(s.i)[:store.KeySize], make([]byte, store.KeySize))
}

// putDerived caches e under id, with customer pseudonyms set to n.
func putDerived(c *subjectCache, id string, e *store.Entry) subject {
	s := c.put([]byte(id), e)
	p, _ := s.pseudonyms()
	for i := range p {
		p[i] = e.Key[0]
	}
	s.setPseudonyms()
	return s
}

// TestCacheWipesEvictedKeys (issue 12, case 6): the key material of a
// subject that leaves the cache other than by a forget (evicted, replaced,
// dropped by clear, or never cached) is kept while the running batch may
// use it and overwritten when the batch ends; a subject still cached is
// never wiped.
func TestCacheWipesEvictedKeys(t *testing.T) {
	t.Run("evicted", func(t *testing.T) {
		t.Parallel()
		c := newSubjectCache(2, 3)
		a := putDerived(c, "a", testEntry(1))
		putDerived(c, "b", testEntry(2))
		putDerived(c, "d", testEntry(3)) // a and b move to the cold generation
		putDerived(c, "e", testEntry(4)) // the cold generation (a, b) is dropped
		if _, ok := c.get([]byte("a")); ok {
			t.Fatalf("a is still cached; the test assumes it was evicted")
		}
		if wiped(a) || !bytes.Equal(a.key(), bytes.Repeat([]byte{1}, store.KeySize)) {
			t.Fatalf("an evicted subject was wiped before the batch ended")
		}
		c.wipeEvicted()
		if !wiped(a) {
			t.Errorf("an evicted subject's key was not overwritten when the batch ended")
		}
		for i, id := range []string{"d", "e"} {
			s, ok := c.get([]byte(id))
			if !ok || wiped(s) || s.key()[0] != byte(3+i) {
				t.Errorf("cached subject %s was wiped or dropped", id)
			}
		}
	})
	t.Run("promoted", func(t *testing.T) {
		t.Parallel()
		c := newSubjectCache(4, 3)
		a := putDerived(c, "a", testEntry(1))
		putDerived(c, "b", testEntry(2))
		putDerived(c, "d", testEntry(3)) // a and b move to the cold generation
		s, ok := c.get([]byte("a"))      // a is copied to the hot one
		if !ok || s == a || s.key()[0] != 1 || *s.pseudonym(2) != *a.pseudonym(2) {
			t.Fatalf("promotion lost the entry")
		}
		if wiped(a) {
			t.Fatalf("the promoted entry's old copy was wiped before the batch ended")
		}
		c.wipeEvicted()
		if !wiped(a) || wiped(s) {
			t.Errorf("old copy wiped %v, promoted copy wiped %v; want true, false", wiped(a), wiped(s))
		}
	})
	t.Run("replaced", func(t *testing.T) {
		t.Parallel()
		c := newSubjectCache(10, 3)
		old := putDerived(c, "a", testEntry(1))
		fresh := putDerived(c, "a", testEntry(2))
		c.wipeEvicted()
		if !wiped(old) || wiped(fresh) {
			t.Errorf("replaced subject wiped %v, its replacement wiped %v; want true, false", wiped(old), wiped(fresh))
		}
		if s, ok := c.get([]byte("a")); !ok || s != fresh || c.len() != 1 {
			t.Errorf("the replacement is not the one cached entry")
		}
	})
	t.Run("cleared", func(t *testing.T) {
		t.Parallel()
		c := newSubjectCache(10, 3)
		a := putDerived(c, "a", testEntry(1))
		c.clear()
		c.wipeEvicted()
		if !wiped(a) {
			t.Errorf("a subject dropped by clear was not wiped")
		}
	})
	t.Run("not cached", func(t *testing.T) {
		t.Parallel()
		c := newSubjectCache(0, 3)
		a := putDerived(c, "a", testEntry(1))
		if wiped(a) {
			t.Fatalf("wiped before the batch ended")
		}
		c.wipeEvicted()
		if !wiped(a) {
			t.Errorf("a subject that was never cached (cache disabled) was not wiped")
		}
	})
	t.Run("forgotten", func(t *testing.T) {
		t.Parallel()
		c := newSubjectCache(10, 3)
		a := putDerived(c, "a", testEntry(1))
		b := putDerived(c, "b", testEntry(2))
		c.forget(testEntry(1).Hash)
		if _, ok := c.get([]byte("a")); ok || !wiped(a) {
			t.Errorf("a forgotten subject is still cached or not wiped")
		}
		if s, ok := c.get([]byte("b")); !ok || s != b || wiped(b) {
			t.Errorf("another subject was dropped by the forget")
		}
	})
}

// TestCacheTombstones: the tombstone time and the key rule survive the
// cache, promotion included.
func TestCacheTombstones(t *testing.T) {
	c := newSubjectCache(4, 1)
	at := time.UnixMilli(1_700_000_000_123).Add(456 * time.Microsecond)
	gone := &store.Entry{ForgottenAt: at}
	gone.Hash[0] = 9
	s := c.put([]byte("gone"), gone)
	if s.key() != nil || !s.suppresses(at.UnixMilli()) || s.suppresses(at.UnixMilli()+1) {
		t.Fatalf("tombstone at %v: suppresses(ms) wrong", at)
	}
	if s.needsKey(at.UnixMilli()) || !s.needsKey(at.UnixMilli()+1) {
		t.Fatalf("tombstone at %v: needsKey(ms) wrong", at)
	}
	never := c.put([]byte("never"), &store.Entry{})
	if never.suppresses(-1_000_000) || !never.needsKey(-1_000_000) {
		t.Fatalf("a subject without tombstone suppresses an event before 1970, or needs no key")
	}
	putDerived(c, "x", testEntry(1))
	putDerived(c, "y", testEntry(2)) // gone, never, x, y: gone and never are cold
	s, ok := c.get([]byte("gone"))
	if !ok || !s.suppresses(at.UnixMilli()) || s.suppresses(at.UnixMilli()+1) {
		t.Fatalf("the tombstone was lost in promotion")
	}
}

// TestCacheModel checks the cache against a map, over random operations
// and sizes: every hit is the newest entry put for its ID and not
// forgotten since, and the bound holds.
func TestCacheModel(t *testing.T) {
	r := rand.New(rand.NewPCG(3, 4))
	for _, max := range []int{1, 2, 7, 100, 5000} {
		c := newSubjectCache(max, 2)
		model := map[string]byte{} // ID -> key byte of the newest put
		hashOf := func(id string) store.SubjectHash {
			var h store.SubjectHash
			copy(h[:], id)
			return h
		}
		ids := 3 * max
		for op := range 40 * max {
			id := fmt.Sprintf("id-%d", r.IntN(ids))
			switch x := r.IntN(10); {
			case x < 5:
				s, ok := c.get([]byte(id))
				if !ok {
					continue
				}
				want, in := model[id]
				if !in || s.key()[0] != want || *s.hash() != hashOf(id) {
					t.Fatalf("max %d op %d: get(%s) = key %d, model %d (%v)", max, op, id, s.key()[0], want, in)
				}
			case x < 9:
				k := byte(r.IntN(256))
				e := &store.Entry{Hash: hashOf(id), Key: bytes.Repeat([]byte{k}, store.KeySize)}
				c.put([]byte(id), e)
				model[id] = k
			default:
				c.forget(hashOf(id))
				delete(model, id)
			}
			if n := c.len(); n > max {
				t.Fatalf("max %d: %d entries", max, n)
			}
			if op%97 == 0 {
				c.wipeEvicted()
			}
		}
	}
}

// TestOrdersDeriveInParallel: a batch of new subjects (their pseudonyms
// derived in parallel, their events projected with the keys prepared for
// that) and the same batch again from the cache (keys prepared per event)
// give the same records, whose keys are the customers' pseudonyms under
// their store keys; also with a cache far smaller than the batch.
func TestOrdersDeriveInParallel(t *testing.T) {
	for _, cacheSubjects := range []int{1_000_000, 100, 0} {
		t.Run(fmt.Sprint(cacheSubjects), func(t *testing.T) {
			p, recs := benchProcessor(t, 3000, 1500, cacheSubjects)
			p.workers = 2
			ctx := context.Background()
			run := func() []kgo.Record {
				p.b.reset()
				if err := p.orderStep(ctx, &p.b, recs); err != nil {
					t.Fatal(err)
				}
				out := make([]kgo.Record, len(p.b.recs))
				for i, r := range p.b.recs {
					out[i] = kgo.Record{Topic: r.Topic, Key: bytes.Clone(r.Key), Value: bytes.Clone(r.Value)}
				}
				p.cache.wipeEvicted()
				return out
			}
			first, second := run(), run()
			if len(first) != 3*len(recs) || len(second) != len(first) {
				t.Fatalf("%d and %d records, want %d", len(first), len(second), 3*len(recs))
			}
			lookups := make([]store.Lookup, len(recs))
			for i, r := range recs {
				lookups[i] = store.Lookup{SubjectID: string(r.Key), Latest: time.Now()}
			}
			entries, err := p.cfg.Store.Resolve(ctx, lookups)
			if err != nil {
				t.Fatal(err)
			}
			d := pseudonym.NewDeriver()
			for i := range first {
				if first[i].Topic != second[i].Topic || !bytes.Equal(first[i].Key, second[i].Key) || !bytes.Equal(first[i].Value, second[i].Value) {
					t.Fatalf("record %d differs between the new and the cached batch", i)
				}
				ev, sys := i/3, i%3
				want := p.cfg.Plan.SubjectPseudonym(nil, sys, entries[ev].Key, recs[ev].Key, d)
				if !bytes.Equal(first[i].Key, want) {
					t.Fatalf("record %d: key %s, want %s", i, first[i].Key, want)
				}
				if !bytes.Contains(first[i].Value, want) {
					t.Fatalf("record %d: the value does not carry the customer's pseudonym", i)
				}
			}
		})
	}
}

// TestCacheLongIDs (issue 24, item 3): an entry's size does not depend on
// its ID's length, and the cache keeps no raw ID. 20,000 distinct IDs of
// 4,096 bytes take about as much heap as short ones (the old cache kept
// each raw ID: over 4 KiB per entry, 4.2 GiB at the default bound of
// 1,000,000), no chunk of the cache contains an ID, and every entry is
// still found by its ID.
func TestCacheLongIDs(t *testing.T) {
	const n = 20_000
	long := func(i int) []byte {
		id := bytes.Repeat([]byte{'x'}, MaxIDBytes)
		copy(id, fmt.Sprintf("cust-%d-", i))
		return id
	}
	runtime.GC()
	var ms0, ms1 runtime.MemStats
	runtime.ReadMemStats(&ms0)
	c := newSubjectCache(2*n, 3)
	for i := range n {
		_, e := fakeEntry(i)
		c.put(long(i), e)
	}
	runtime.GC()
	runtime.ReadMemStats(&ms1)
	if per := float64(ms1.HeapAlloc-ms0.HeapAlloc) / n; per > 400 {
		t.Errorf("%.0f heap bytes per entry with 4,096-byte IDs, want them independent of the ID's length (under 400)", per)
	}
	for i := range n {
		s, ok := c.get(long(i))
		if !ok || s.key()[0] != byte(i) {
			t.Fatalf("entry %d not found by its ID", i)
		}
	}
	needle := []byte(fmt.Sprintf("cust-%d-xxxxxxxx", n/2))
	for _, g := range []*generation{c.hot, c.cold} {
		for _, chunk := range g.slots {
			if bytes.Contains(chunk, needle) {
				t.Fatal("the cache holds a raw ID")
			}
		}
	}
	runtime.KeepAlive(c)
}
