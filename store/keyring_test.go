package store_test

import (
	"bytes"
	"crypto/hmac"
	"crypto/sha256"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/hygiene/pseudonymizer/store"
	"github.com/hygiene/pseudonymizer/store/storetest"
)

// TestFillEntries: entries of one subject get equal keys in separate
// slices (clearing one leaves the others intact), and a failed unwrap
// leaves no unwrapped key behind in the entries (issue 12, case 6).
func TestFillEntries(t *testing.T) {
	kr := storetest.MustKeyring(t, storetest.MustKEK(t, 1))
	other := storetest.MustKeyring(t, storetest.MustKEK(t, 2))
	var h1, h2 store.SubjectHash
	h1[0], h2[0] = 1, 2
	key := bytes.Repeat([]byte{7}, store.KeySize)
	w1, err := kr.Wrap(key, store.PurposeSubjectKey, h1[:])
	if err != nil {
		t.Fatal(err)
	}
	w2, err := other.Wrap(key, store.PurposeSubjectKey, h2[:])
	if err != nil {
		t.Fatal(err)
	}
	state := map[store.SubjectHash][]byte{h1: w1, h2: w2}
	stateOf := func(h store.SubjectHash) ([]byte, time.Time) { return state[h], time.Time{} }

	entries := []store.Entry{{Hash: h1}, {Hash: h1}}
	if err := kr.FillEntries(entries, stateOf); err != nil {
		t.Fatalf("FillEntries: %v", err)
	}
	if !bytes.Equal(entries[0].Key, key) || !bytes.Equal(entries[1].Key, key) {
		t.Fatalf("entries do not hold the key")
	}
	clear(entries[0].Key)
	if !bytes.Equal(entries[1].Key, key) {
		t.Errorf("two entries share one key slice")
	}

	entries = []store.Entry{{Hash: h1}, {Hash: h2}}
	if err := kr.FillEntries(entries, stateOf); !errors.Is(err, store.ErrWrongKEK) {
		t.Fatalf("FillEntries with a foreign key: got %v, want ErrWrongKEK", err)
	}
	if entries[0].Key != nil {
		t.Errorf("a failed FillEntries left an unwrapped key in an entry")
	}
}

// TestHasherHash: Hash is HMAC-SHA-256 under the index key, however often
// and from however many goroutines it is called.
func TestHasherHash(t *testing.T) {
	key := bytes.Repeat([]byte{7}, store.KeySize)
	h, err := store.NewHasher(key)
	if err != nil {
		t.Fatal(err)
	}
	want := func(id string) store.SubjectHash {
		m := hmac.New(sha256.New, key)
		m.Write([]byte("subject\x00" + id))
		return store.SubjectHash(m.Sum(nil))
	}
	var wg sync.WaitGroup
	for g := range 4 {
		wg.Go(func() {
			for i := range 500 {
				id := fmt.Sprintf("c-%d-%d", g, i%37)
				if got := h.Hash(id); got != want(id) {
					t.Errorf("Hash(%q) = %x, want %x", id, got, want(id))
					return
				}
			}
		})
	}
	wg.Wait()
	h.Wipe()
	if got := h.Hash("x"); got == want("x") {
		t.Errorf("Hash after Wipe still uses the index key")
	}
}

func BenchmarkHasherHash(b *testing.B) {
	h, err := store.NewHasher(bytes.Repeat([]byte{7}, store.KeySize))
	if err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for b.Loop() {
		h.Hash("cust-123456")
	}
}

// TestNewWrappedKeys: every wrapped key unwraps under its own binding (and
// not under another's), the keys differ, and the wrapped keys do not share
// capacity (appending to one leaves the next intact).
func TestNewWrappedKeys(t *testing.T) {
	kr := storetest.MustKeyring(t, storetest.MustKEK(t, 1))
	bindings := make([][]byte, 5)
	for i := range bindings {
		var h store.SubjectHash
		h[0] = byte(i + 1)
		bindings[i] = h[:]
	}
	wrapped, err := kr.NewWrappedKeys(store.PurposeSubjectKey, bindings)
	if err != nil {
		t.Fatal(err)
	}
	if len(wrapped) != len(bindings) {
		t.Fatalf("got %d wrapped keys, want %d", len(wrapped), len(bindings))
	}
	seen := map[string]bool{}
	for i, w := range wrapped {
		if len(w) != store.WrappedSize || cap(w) != store.WrappedSize {
			t.Fatalf("wrapped key %d: len %d cap %d, want %d", i, len(w), cap(w), store.WrappedSize)
		}
		if id, ok := store.WrappedBy(w); !ok || id != kr.ActiveID() {
			t.Errorf("wrapped key %d: not wrapped by the active KEK", i)
		}
		key, err := kr.Unwrap(w, store.PurposeSubjectKey, bindings[i])
		if err != nil {
			t.Fatalf("unwrap %d: %v", i, err)
		}
		if len(key) != store.KeySize || seen[string(key)] {
			t.Errorf("key %d: wrong size or repeated", i)
		}
		seen[string(key)] = true
		if _, err := kr.Unwrap(w, store.PurposeSubjectKey, bindings[(i+1)%len(bindings)]); err == nil {
			t.Errorf("wrapped key %d unwraps under another subject's binding", i)
		}
	}
	if w, err := kr.NewWrappedKeys(store.PurposeSubjectKey, nil); err != nil || w != nil {
		t.Errorf("no bindings: got %v, %v", w, err)
	}
}

// BenchmarkNewWrappedKeys compares making and wrapping 1,024 keys one by
// one (NewKey and Wrap) with NewWrappedKeys.
func BenchmarkNewWrappedKeys(b *testing.B) {
	kr := storetest.MustKeyring(b, storetest.MustKEK(b, 1))
	bindings := make([][]byte, 1024)
	for i := range bindings {
		bindings[i] = bytes.Repeat([]byte{byte(i)}, 32)
	}
	b.Run("each", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			for _, bd := range bindings {
				key, err := store.NewKey()
				if err != nil {
					b.Fatal(err)
				}
				if _, err := kr.Wrap(key, store.PurposeSubjectKey, bd); err != nil {
					b.Fatal(err)
				}
				clear(key)
			}
		}
	})
	b.Run("batch", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if _, err := kr.NewWrappedKeys(store.PurposeSubjectKey, bindings); err != nil {
				b.Fatal(err)
			}
		}
	})
}
