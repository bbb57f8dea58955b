package storetest

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/hygiene/pseudonymizer/store"
)

// t0 is the base time of the suite's events and requests.
var t0 = time.Date(2025, 3, 1, 12, 0, 0, 0, time.UTC)

// waitLong bounds waits for something that must happen (it is not a speed
// assertion); waitShort is how long the suite watches for something that
// must not happen.
const (
	waitLong  = 30 * time.Second
	waitShort = 300 * time.Millisecond
)

// suite holds what every case needs.
type suite struct {
	open Opener
	cfg  config
}

// Run runs the conformance cases against the store that open opens. Each
// case runs as a parallel subtest with its own storage.
func Run(t *testing.T, open Opener, opts ...Option) {
	s := &suite{open: open, cfg: config{maxLog: store.DefaultForgetLogLimit}}
	for _, opt := range opts {
		opt(&s.cfg)
	}
	cases := []struct {
		name string
		fn   func(t *testing.T)
	}{
		{"EmptyCalls", s.testEmptyCalls},
		{"ResolveCreatesStableKeys", s.testResolveCreatesStableKeys},
		{"ResolveRepeatedSubjectInOneCall", s.testResolveRepeated},
		{"ResolveConcurrentNewSubject", s.testResolveConcurrent},
		{"ResolveManyNewSubjects", s.testResolveManyNewSubjects},
		{"HashIsKeyedPerStore", s.testHashKeyedPerStore},
		{"ForgetStatuses", s.testForgetStatuses},
		{"ForgetSameSubjectTwiceInOneCall", s.testForgetTwiceInOneCall},
		{"ForgetIdempotentPerRequestID", s.testForgetIdempotent},
		{"ForgetRequestIDReusedForAnotherSubject", s.testForgetRequestIDReusedForAnotherSubject},
		{"ResolveAfterForget", s.testResolveAfterForget},
		{"ForgetRetainsKeyUntilSettled", s.testRetainUntilSettled},
		{"SettleCommittedByOffset", s.testSettleCommitted},
		{"ForgetWithoutRetainKeepsNothing", s.testNothingRetainedWithoutRetain},
		{"RewrapRetainedKeys", s.testRewrapRetained},
		{"LaterForgetMovesTombstoneForward", s.testLaterForget},
		{"ForgetRacesResolve", s.testForgetRacesResolve},
		{"GuardListsForgottenSinceSeq", s.testGuardLists},
		{"ForgetWaitsForGuard", s.testForgetWaitsForGuard},
		{"ForgetCanceledWhileGuardedHasNoEffect", s.testForgetCanceled},
		{"GuardIncompleteWhenLogTooLong", s.testGuardIncomplete},
		{"GuardDetectsRestoredLog", s.testGuardDetectsRestore},
		{"WrongKEKFailsOpen", s.testWrongKEK},
		{"RewrapKeepsKeys", s.testRewrap},
		{"RewrapOneAtATime", s.testRewrapOneAtATime},
		{"RotationKilledAnywhere", s.testRotationKilledAnywhere},
		{"NoRawIDsOrKeysPersisted", s.testNoRawData},
		{"PingAndClose", s.testPingAndClose},
		{"CloseWipesIndexKey", s.testCloseWipesIndexKey},
		{"SubjectReportsStateReadOnly", s.testSubject},
		{"ForgetLogListsResultsInOrder", s.testForgetLog},
		{"MetaIsACompareAndSwapRegister", s.testMetaSwap},
		{"MetaBeforeOpen", s.testMetaBeforeOpen},
		{"DataKeyCreatedOnce", s.testDataKeyCreatedOnce},
		{"ObjectionStates", s.testObjectionStates},
		{"ObjectionLatestEffectiveWins", s.testObjectionLatestWins},
		{"ObjectionIdempotent", s.testObjectionIdempotent},
		{"ObjectionForgetWins", s.testObjectionForgetWins},
		{"ObjectionGuard", s.testObjectionGuard},
		{"ObjectionWithKey", s.testObjectionWithKey},
		{"ObjectionLog", s.testObjectionLog},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			c.fn(t)
		})
	}
}

// closer makes Close of a store under test idempotent, so the suite can
// close early and still close at cleanup.
type closer struct {
	store.KeyStore
	once sync.Once
	err  error
}

func (c *closer) Close() error {
	c.once.Do(func() { c.err = c.KeyStore.Close() })
	return c.err
}

// mustOpen opens t's storage with kr and closes it at cleanup.
func (s *suite) mustOpen(t *testing.T, kr *store.Keyring) store.KeyStore {
	t.Helper()
	ks, err := s.open(t, kr)
	if err != nil {
		t.Fatalf("open: %v", err)
	}
	c := &closer{KeyStore: ks}
	t.Cleanup(func() {
		if err := c.Close(); err != nil {
			t.Errorf("close: %v", err)
		}
	})
	return c
}

// mustReopen closes ks and opens t's storage again with kr.
func (s *suite) mustReopen(t *testing.T, ks store.KeyStore, kr *store.Keyring) store.KeyStore {
	t.Helper()
	if err := ks.Close(); err != nil {
		t.Fatalf("close: %v", err)
	}
	return s.mustOpen(t, kr)
}

// mustStores returns n stores open on t's storage: n opens when the store
// allows several at once, else ks n times.
func (s *suite) mustStores(t *testing.T, ks store.KeyStore, kr *store.Keyring, n int) []store.KeyStore {
	t.Helper()
	out := []store.KeyStore{ks}
	for len(out) < n {
		if s.cfg.multi {
			out = append(out, s.mustOpen(t, kr))
		} else {
			out = append(out, ks)
		}
	}
	return out
}

func lookup(id string, latest time.Time) store.Lookup {
	return store.Lookup{SubjectID: id, Latest: latest}
}

func forget(reqID, subjectID string, at time.Time) store.ForgetRequest {
	return store.ForgetRequest{RequestID: reqID, SubjectID: subjectID, RequestedAt: at}
}

func mustResolve(t *testing.T, ks store.KeyStore, lookups ...store.Lookup) []store.Entry {
	t.Helper()
	entries, err := ks.Resolve(context.Background(), lookups)
	if err != nil {
		t.Fatalf("Resolve: %v", err)
	}
	if got, want := len(entries), len(lookups); got != want {
		t.Fatalf("Resolve: got %d entries, want %d", got, want)
	}
	for i, e := range entries {
		if got, want := e.Hash, ks.Hash(lookups[i].SubjectID); got != want {
			t.Fatalf("Resolve: entry %d: hash is not Hash(subject)", i)
		}
		if e.Key != nil && len(e.Key) != store.KeySize {
			t.Fatalf("Resolve: entry %d: got %d-byte key, want %d", i, len(e.Key), store.KeySize)
		}
	}
	return entries
}

// mustKey resolves one subject and returns its key, failing if it has none.
func mustKey(t *testing.T, ks store.KeyStore, id string, latest time.Time) []byte {
	t.Helper()
	e := mustResolve(t, ks, lookup(id, latest))[0]
	if e.Key == nil {
		t.Fatalf("Resolve(%s, %v): got no key, want one", id, latest)
	}
	return e.Key
}

func mustForget(t *testing.T, ks store.KeyStore, reqs ...store.ForgetRequest) []store.ForgetResult {
	t.Helper()
	res, err := ks.Forget(context.Background(), reqs)
	if err != nil {
		t.Fatalf("Forget: %v", err)
	}
	if got, want := len(res), len(reqs); got != want {
		t.Fatalf("Forget: got %d results, want %d", got, want)
	}
	for i, r := range res {
		if r.CompletedAt.IsZero() {
			t.Fatalf("Forget: result %d has zero CompletedAt", i)
		}
	}
	return res
}

func wantStatuses(t *testing.T, res []store.ForgetResult, want ...store.ForgetStatus) {
	t.Helper()
	for i := range want {
		if got := res[i].Status; got != want[i] {
			t.Errorf("Forget: result %d: got status %v, want %v", i, got, want[i])
		}
	}
}

// mustGuard takes a guard and releases it at cleanup.
func mustGuard(t *testing.T, ks store.KeyStore, since uint64) store.Guard {
	t.Helper()
	g, err := ks.Guard(context.Background(), store.Position{Seq: since})
	if err != nil {
		t.Fatalf("Guard(%d): %v", since, err)
	}
	t.Cleanup(func() { _ = g.Release(context.Background()) })
	return g
}

// mustSeq returns the current forget sequence number.
func mustSeq(t *testing.T, ks store.KeyStore) uint64 {
	t.Helper()
	g := mustGuard(t, ks, 0)
	seq := g.Seq()
	if err := g.Release(context.Background()); err != nil {
		t.Fatalf("Release: %v", err)
	}
	return seq
}
