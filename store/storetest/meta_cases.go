package storetest

import (
	"bytes"
	"context"
	"fmt"
	"sync"
	"testing"

	"gocloud.dev/secrets"
	"gocloud.dev/secrets/localsecrets"

	"github.com/hygiene/pseudonymizer/store"
)

// MetaOpener opens the store.Meta of test t's storage without a keyring,
// as a program does before it knows its KEK; the suite closes it.
type MetaOpener func(t *testing.T) (store.Meta, func() error, error)

// WithMeta gives the suite the store's keyring-less store.Meta. Without it
// the cases that need one are skipped.
func WithMeta(open MetaOpener) Option {
	return func(c *config) { c.meta = open }
}

// mustMeta opens t's keyring-less Meta and closes it at cleanup; the
// returned func closes it early.
func (s *suite) mustMeta(t *testing.T) (store.Meta, func()) {
	t.Helper()
	m, closeFn, err := s.cfg.meta(t)
	if err != nil {
		t.Fatalf("open meta: %v", err)
	}
	var once sync.Once
	done := func() {
		once.Do(func() {
			if err := closeFn(); err != nil {
				t.Errorf("close meta: %v", err)
			}
		})
	}
	t.Cleanup(done)
	return m, done
}

func storeMeta(t *testing.T, ks store.KeyStore) store.Meta {
	t.Helper()
	if c, ok := ks.(*closer); ok {
		ks = c.KeyStore
	}
	m, ok := ks.(store.Meta)
	if !ok {
		t.Fatalf("%T does not implement store.Meta", ks)
	}
	return m
}

func mustGetMeta(t *testing.T, m store.Meta, name string) []byte {
	t.Helper()
	v, err := m.GetMeta(context.Background(), name)
	if err != nil {
		t.Fatalf("GetMeta(%q): %v", name, err)
	}
	return v
}

func mustSwapMeta(t *testing.T, m store.Meta, name string, old, value []byte, want bool) {
	t.Helper()
	ok, err := m.SwapMeta(context.Background(), name, old, value)
	if err != nil {
		t.Fatalf("SwapMeta(%q, %q, %q): %v", name, old, value, err)
	}
	if ok != want {
		t.Fatalf("SwapMeta(%q, %q, %q) = %v, want %v", name, old, value, ok, want)
	}
}

// testMetaSwap: Meta is a compare-and-swap register per name that survives
// a reopen, cannot reach the store's own entries, and lets exactly one of
// concurrent creators win.
func (s *suite) testMetaSwap(t *testing.T) {
	kr := MustKeyring(t, MustKEK(t, 1))
	ks := s.mustOpen(t, kr)
	h := ks.Hash("alice")
	m := storeMeta(t, ks)
	if v := mustGetMeta(t, m, "a"); v != nil {
		t.Fatalf("GetMeta of an unset name: %q, want nil", v)
	}
	mustSwapMeta(t, m, "a", []byte("x"), []byte("v1"), false) // nothing stored yet
	mustSwapMeta(t, m, "a", nil, []byte("v1"), true)
	mustSwapMeta(t, m, "a", nil, []byte("v2"), false) // already set
	mustSwapMeta(t, m, "a", []byte("v0"), []byte("v2"), false)
	mustSwapMeta(t, m, "a", []byte("v1"), []byte("v2"), true)
	mustSwapMeta(t, m, "b", nil, []byte("other"), true)
	// Names that a store uses for itself are a separate namespace.
	for _, own := range []string{"index_key", "schema_version"} {
		if v := mustGetMeta(t, m, own); v != nil {
			t.Errorf("GetMeta(%q) = %d bytes: Meta reaches the store's own entries", own, len(v))
		}
		mustSwapMeta(t, m, own, nil, []byte("junk"), true)
	}
	if _, err := m.SwapMeta(context.Background(), "", nil, []byte("v")); err == nil {
		t.Error("SwapMeta with an empty name: no error")
	}
	if _, err := m.SwapMeta(context.Background(), "c", nil, nil); err == nil {
		t.Error("SwapMeta with a nil value: no error")
	}
	if _, err := m.SwapMeta(context.Background(), "c", nil, make([]byte, store.MaxMetaSize+1)); err == nil {
		t.Error("SwapMeta with an oversized value: no error")
	}

	ks = s.mustReopen(t, ks, kr)
	if got := ks.Hash("alice"); got != h {
		t.Fatal("the index key changed after Meta writes named like the store's entries")
	}
	m = storeMeta(t, ks)
	if got, want := mustGetMeta(t, m, "a"), []byte("v2"); !bytes.Equal(got, want) {
		t.Errorf("after reopen: GetMeta(a) = %q, want %q", got, want)
	}
	if got, want := mustGetMeta(t, m, "b"), []byte("other"); !bytes.Equal(got, want) {
		t.Errorf("after reopen: GetMeta(b) = %q, want %q", got, want)
	}

	const n = 8
	var wg sync.WaitGroup
	wins := make(chan int, n)
	for i, st := range s.mustStores(t, ks, kr, n) {
		wg.Go(func() {
			ok, err := storeMeta(t, st).SwapMeta(context.Background(), "race", nil, fmt.Appendf(nil, "v%d", i))
			if err != nil {
				t.Errorf("concurrent SwapMeta: %v", err)
			}
			if ok {
				wins <- i
			}
		})
	}
	wg.Wait()
	close(wins)
	var won []int
	for i := range wins {
		won = append(won, i)
	}
	if len(won) != 1 {
		t.Fatalf("concurrent creators: %v won, want exactly one", won)
	}
	if got, want := mustGetMeta(t, m, "race"), fmt.Appendf(nil, "v%d", won[0]); !bytes.Equal(got, want) {
		t.Errorf("GetMeta(race) = %q, want the winner's %q", got, want)
	}
}

// testMetaBeforeOpen: the keyring-less Meta reads nothing and creates
// nothing on empty storage, its writes are what an opened store reads (and
// the other way round), and a data key made through it on empty storage is
// the KEK that then opens the store.
func (s *suite) testMetaBeforeOpen(t *testing.T) {
	if s.cfg.meta == nil {
		t.Skip("the store under test has no WithMeta")
	}
	ctx := context.Background()
	m, done := s.mustMeta(t)
	if v := mustGetMeta(t, m, "a"); v != nil {
		t.Fatalf("GetMeta on empty storage: %q, want nil", v)
	}
	kms := MustLocalKMS(t, 7)
	name := store.DataKeyName("base64key://test")
	if _, err := store.DataKey(ctx, m, kms, name, false); err != store.ErrNoDataKey {
		t.Fatalf("DataKey(create=false) on empty storage: %v, want ErrNoDataKey", err)
	}
	kek, err := store.DataKey(ctx, m, kms, name, true)
	if err != nil {
		t.Fatalf("DataKey(create=true): %v", err)
	}
	mustSwapMeta(t, m, "a", nil, []byte("before open"), true)
	done()

	ks := s.mustOpen(t, MustKeyring(t, kek))
	sm := storeMeta(t, ks)
	if got, want := mustGetMeta(t, sm, "a"), []byte("before open"); !bytes.Equal(got, want) {
		t.Errorf("opened store: GetMeta(a) = %q, want %q", got, want)
	}
	again, err := store.DataKey(ctx, sm, kms, name, true)
	if err != nil {
		t.Fatalf("DataKey from the opened store: %v", err)
	}
	if again.ID() != kek.ID() {
		t.Fatalf("DataKey made a second data key %08x; want the stored %08x", again.ID(), kek.ID())
	}
	mustSwapMeta(t, sm, "a", []byte("before open"), []byte("while open"), true)
	mustResolve(t, ks, lookup("alice", t0))
	if err := ks.Close(); err != nil {
		t.Fatalf("close: %v", err)
	}
	m, _ = s.mustMeta(t)
	if got, want := mustGetMeta(t, m, "a"), []byte("while open"); !bytes.Equal(got, want) {
		t.Errorf("keyring-less GetMeta after close: %q, want %q", got, want)
	}
}

// testDataKeyCreatedOnce: processes that start together on empty storage
// agree on one data key.
func (s *suite) testDataKeyCreatedOnce(t *testing.T) {
	if s.cfg.meta == nil {
		t.Skip("the store under test has no WithMeta")
	}
	kms := MustLocalKMS(t, 9)
	name := store.DataKeyName("base64key://race")
	const n = 6
	ids := make([]uint32, n)
	var wg sync.WaitGroup
	var mu sync.Mutex // a file store admits one opener at a time per process
	for i := range n {
		wg.Go(func() {
			if !s.cfg.multi {
				mu.Lock()
				defer mu.Unlock()
			}
			m, done := s.mustMeta(t)
			defer done()
			kek, err := store.DataKey(context.Background(), m, kms, name, true)
			if err != nil {
				t.Errorf("DataKey: %v", err)
				return
			}
			ids[i] = kek.ID()
		})
	}
	wg.Wait()
	for i := range ids {
		if ids[i] != ids[0] {
			t.Fatalf("data keys %08x: want one for all", ids)
		}
	}
}

// MustLocalKMS returns a gocloud base64key:// keeper (a KMS key held
// locally) derived from seed, for tests only.
func MustLocalKMS(t testing.TB, seed byte) *secrets.Keeper {
	t.Helper()
	key := make([]byte, 32)
	for i := range key {
		key[i] = seed ^ byte(i*17+3)
	}
	k := localsecrets.NewKeeper([32]byte(key))
	t.Cleanup(func() { _ = k.Close() })
	return k
}
