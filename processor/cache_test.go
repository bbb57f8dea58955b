package processor

import (
	"bytes"
	"testing"

	"github.com/hygiene/pseudonymizer/store"
)

func testSubject(id string, n byte) *subject {
	var h store.SubjectHash
	h[0] = n
	return &subject{id: id, hash: h, key: bytes.Repeat([]byte{n}, store.KeySize), pseudo: bytes.Repeat([]byte{n}, 16)}
}

func wiped(s *subject) bool { return s.key == nil && s.pseudo == nil }

// TestCacheWipesEvictedKeys (issue 12, case 6): the key material of a
// subject that leaves the cache other than by a forget (evicted, replaced,
// dropped by clear, or never cached) is kept while the running batch may
// use it and overwritten when the batch ends; a subject still cached is
// never wiped.
func TestCacheWipesEvictedKeys(t *testing.T) {
	t.Run("evicted", func(t *testing.T) {
		t.Parallel()
		c := newSubjectCache(2)
		a, b, d := testSubject("a", 1), testSubject("b", 2), testSubject("d", 3)
		keyOfA := a.key
		c.put(a)
		c.put(b)
		c.put(d) // a and b move to the cold generation
		e := testSubject("e", 4)
		c.put(e) // the cold generation (a, b) is dropped
		if c.get([]byte("a")) != nil {
			t.Fatalf("a is still cached; the test assumes it was evicted")
		}
		if wiped(a) || !bytes.Equal(keyOfA, bytes.Repeat([]byte{1}, store.KeySize)) {
			t.Fatalf("an evicted subject was wiped before the batch ended")
		}
		c.wipeEvicted()
		if !wiped(a) || !bytes.Equal(keyOfA, make([]byte, store.KeySize)) {
			t.Errorf("an evicted subject's key was not overwritten when the batch ended")
		}
		for _, s := range []*subject{d, e} {
			if c.get([]byte(s.id)) != s || wiped(s) {
				t.Errorf("cached subject %s was wiped or dropped", s.id)
			}
		}
	})
	t.Run("replaced", func(t *testing.T) {
		t.Parallel()
		c := newSubjectCache(10)
		old, fresh := testSubject("a", 1), testSubject("a", 1)
		c.put(old)
		c.put(fresh)
		c.wipeEvicted()
		if !wiped(old) || wiped(fresh) {
			t.Errorf("replaced subject wiped %v, its replacement wiped %v; want true, false", wiped(old), wiped(fresh))
		}
	})
	t.Run("cleared", func(t *testing.T) {
		t.Parallel()
		c := newSubjectCache(10)
		a := testSubject("a", 1)
		c.put(a)
		c.clear()
		c.wipeEvicted()
		if !wiped(a) {
			t.Errorf("a subject dropped by clear was not wiped")
		}
	})
	t.Run("not cached", func(t *testing.T) {
		t.Parallel()
		c := newSubjectCache(0)
		a := testSubject("a", 1)
		c.put(a)
		if wiped(a) {
			t.Fatalf("wiped before the batch ended")
		}
		c.wipeEvicted()
		if !wiped(a) {
			t.Errorf("a subject that was never cached (cache disabled) was not wiped")
		}
	})
}
