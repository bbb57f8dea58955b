// Package storetest is the conformance suite that every store.KeyStore
// implementation must pass, plus small helpers for tests that need keys and
// stores.
//
// An implementation's test calls Run with a function that opens the store
// under test:
//
//	func TestConformance(t *testing.T) {
//		var files storetest.PerTest[string]
//		files.New = func(t *testing.T) string { return filepath.Join(t.TempDir(), "keys.db") }
//		storetest.Run(t, func(t *testing.T, kr *store.Keyring) (store.KeyStore, error) {
//			return embedded.Open(files.Get(t), kr)
//		}, storetest.WithRaw(func(t *testing.T) []byte { ... }))
//	}
package storetest

import (
	"sync"
	"testing"

	"github.com/hygiene/pseudonymizer/store"
)

// Opener opens the store under test with keyring kr. The first call for a
// test t must open fresh, empty storage that belongs to t; later calls with
// the same t must open that same storage again (a reopen, or with
// WithMultipleOpen another process). The suite closes every store it opens.
type Opener func(t *testing.T, kr *store.Keyring) (store.KeyStore, error)

// Option configures Run.
type Option func(*config)

type config struct {
	raw      func(t *testing.T) []byte
	multi    bool
	snapshot func(t *testing.T) (restore func())
	maxLog   int
	meta     MetaOpener
}

// WithSnapshot lets the suite restore test t's storage to an older state,
// as an operator restoring a backup does: snapshot copies the storage as it
// is now (stores may be open), and the restore func it returns, called
// while every store of t is closed, puts that copy back. Without it the
// restore cases are skipped.
func WithSnapshot(snapshot func(t *testing.T) (restore func())) Option {
	return func(c *config) { c.snapshot = snapshot }
}

// WithRaw gives the suite a dump of every byte the storage of test t
// persists (for a file store the file, for a database its rows as text), so
// it can check that no raw subject ID, request ID or plaintext key is stored.
func WithRaw(raw func(t *testing.T) []byte) Option {
	return func(c *config) { c.raw = raw }
}

// WithForgetLogLimit declares that the Opener opens stores with a
// forget-log limit of n (postgres.WithForgetLogLimit,
// embedded.WithForgetLogLimit) instead of store.DefaultForgetLogLimit; the
// case that goes past the limit then forgets n+1 subjects instead of
// 100,001. Every case keeps below 1,000 forgets otherwise.
func WithForgetLogLimit(n int) Option {
	return func(c *config) { c.maxLog = n }
}

// WithMultipleOpen declares that the storage may be open several times at
// once (as by several processes); the suite then also runs its concurrency
// cases across several open stores.
func WithMultipleOpen() Option {
	return func(c *config) { c.multi = true }
}

// PerTest maps each test to its own value (such as a storage location),
// made by New on first use. It is safe for concurrent use.
type PerTest[T any] struct {
	// New makes the value for a test that has none yet.
	New func(t *testing.T) T

	mu sync.Mutex
	m  map[*testing.T]T
}

// Get returns t's value, making it on first use.
func (p *PerTest[T]) Get(t *testing.T) T {
	p.mu.Lock()
	defer p.mu.Unlock()
	if v, ok := p.m[t]; ok {
		return v
	}
	if p.m == nil {
		p.m = make(map[*testing.T]T)
	}
	v := p.New(t)
	p.m[t] = v
	return v
}

// MustKEK returns a deterministic KEK derived from seed (for tests only).
func MustKEK(t testing.TB, seed byte) *store.KEK {
	t.Helper()
	key := make([]byte, store.KeySize)
	for i := range key {
		key[i] = seed ^ byte(i*31+7)
	}
	k, err := store.NewKEK(key)
	if err != nil {
		t.Fatalf("MustKEK: %v", err)
	}
	return k
}

// MustKeyring returns a keyring that wraps with active and also unwraps
// with older.
func MustKeyring(t testing.TB, active *store.KEK, older ...*store.KEK) *store.Keyring {
	t.Helper()
	kr, err := store.NewKeyring(active, older...)
	if err != nil {
		t.Fatalf("MustKeyring: %v", err)
	}
	return kr
}
