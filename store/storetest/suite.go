package storetest

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
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
	s := &suite{open: open}
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
		{"HashIsKeyedPerStore", s.testHashKeyedPerStore},
		{"ForgetStatuses", s.testForgetStatuses},
		{"ForgetSameSubjectTwiceInOneCall", s.testForgetTwiceInOneCall},
		{"ForgetIdempotentPerRequestID", s.testForgetIdempotent},
		{"ResolveAfterForget", s.testResolveAfterForget},
		{"LaterForgetMovesTombstoneForward", s.testLaterForget},
		{"ForgetRacesResolve", s.testForgetRacesResolve},
		{"GuardListsForgottenSinceSeq", s.testGuardLists},
		{"ForgetWaitsForGuard", s.testForgetWaitsForGuard},
		{"ForgetCanceledWhileGuardedHasNoEffect", s.testForgetCanceled},
		{"GuardIncompleteWhenLogTooLong", s.testGuardIncomplete},
		{"WrongKEKFailsOpen", s.testWrongKEK},
		{"RewrapKeepsKeys", s.testRewrap},
		{"NoRawIDsOrKeysPersisted", s.testNoRawData},
		{"PingAndClose", s.testPingAndClose},
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
	g, err := ks.Guard(context.Background(), since)
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

func (s *suite) testEmptyCalls(t *testing.T) {
	ks := s.mustOpen(t, MustKeyring(t, MustKEK(t, 1)))
	ctx := context.Background()
	entries, err := ks.Resolve(ctx, nil)
	if err != nil || len(entries) != 0 {
		t.Errorf("Resolve(nil): got %d entries, %v; want 0, nil", len(entries), err)
	}
	res, err := ks.Forget(ctx, nil)
	if err != nil || len(res) != 0 {
		t.Errorf("Forget(nil): got %d results, %v; want 0, nil", len(res), err)
	}
	if got := mustSeq(t, ks); got != 0 {
		t.Errorf("fresh store: got Seq %d, want 0", got)
	}
}

func (s *suite) testResolveCreatesStableKeys(t *testing.T) {
	kr := MustKeyring(t, MustKEK(t, 1))
	ks := s.mustOpen(t, kr)
	first := mustResolve(t, ks, lookup("alice", t0), lookup("bob", t0))
	for i, e := range first {
		if e.Key == nil {
			t.Fatalf("entry %d: got no key, want a new one", i)
		}
		if !e.ForgottenAt.IsZero() {
			t.Errorf("entry %d: got ForgottenAt %v, want zero", i, e.ForgottenAt)
		}
	}
	if first[0].Hash == first[1].Hash {
		t.Errorf("alice and bob: got equal hashes")
	}
	if bytes.Equal(first[0].Key, first[1].Key) {
		t.Errorf("alice and bob: got equal keys")
	}
	again := mustResolve(t, ks, lookup("bob", t0.Add(time.Hour)), lookup("alice", t0.Add(-time.Hour)))
	if !bytes.Equal(again[0].Key, first[1].Key) || !bytes.Equal(again[1].Key, first[0].Key) {
		t.Errorf("second Resolve: keys changed")
	}
	ks = s.mustReopen(t, ks, kr)
	if got, want := ks.Hash("alice"), first[0].Hash; got != want {
		t.Errorf("after reopen: Hash(alice) changed")
	}
	reopened := mustResolve(t, ks, lookup("alice", t0), lookup("bob", t0))
	for i := range reopened {
		if !bytes.Equal(reopened[i].Key, first[i].Key) {
			t.Errorf("after reopen: entry %d: key changed", i)
		}
	}
}

func (s *suite) testResolveRepeated(t *testing.T) {
	ks := s.mustOpen(t, MustKeyring(t, MustKEK(t, 1)))
	entries := mustResolve(t, ks,
		lookup("alice", t0), lookup("bob", t0), lookup("alice", t0.Add(time.Minute)), lookup("alice", t0.Add(-time.Minute)))
	for _, i := range []int{2, 3} {
		if entries[i].Hash != entries[0].Hash || !bytes.Equal(entries[i].Key, entries[0].Key) || !entries[i].ForgottenAt.Equal(entries[0].ForgottenAt) {
			t.Errorf("entry %d differs from entry 0 of the same subject", i)
		}
	}
	if entries[0].Key == nil {
		t.Fatalf("alice: got no key")
	}
	if got := mustKey(t, ks, "alice", t0); !bytes.Equal(got, entries[0].Key) {
		t.Errorf("alice: key changed on the next Resolve")
	}
}

func (s *suite) testResolveConcurrent(t *testing.T) {
	kr := MustKeyring(t, MustKEK(t, 1))
	stores := s.mustStores(t, s.mustOpen(t, kr), kr, 3)
	const workers = 24
	keys := make([][]byte, workers)
	errs := make([]error, workers)
	start := make(chan struct{})
	var wg sync.WaitGroup
	for i := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			lookups := []store.Lookup{lookup(fmt.Sprintf("other-%d", i), t0), lookup("carol", t0)}
			entries, err := stores[i%len(stores)].Resolve(context.Background(), lookups)
			if err != nil {
				errs[i] = err
				return
			}
			keys[i] = entries[1].Key
		}()
	}
	close(start)
	wg.Wait()
	for i := range workers {
		if errs[i] != nil {
			t.Fatalf("worker %d: Resolve: %v", i, errs[i])
		}
		if keys[i] == nil || !bytes.Equal(keys[i], keys[0]) {
			t.Fatalf("worker %d: got a different key for carol than worker 0", i)
		}
	}
	for i, ks := range stores {
		if got := mustKey(t, ks, "carol", t0); !bytes.Equal(got, keys[0]) {
			t.Errorf("store %d: carol's key changed after the race", i)
		}
	}
}

func (s *suite) testHashKeyedPerStore(t *testing.T) {
	ks := s.mustOpen(t, MustKeyring(t, MustKEK(t, 1)))
	h := ks.Hash("alice")
	if h != ks.Hash("alice") {
		t.Fatalf("Hash is not deterministic")
	}
	if h == ks.Hash("alice ") || h == ks.Hash("bob") {
		t.Errorf("different subjects got equal hashes")
	}
	t.Run("OtherStorage", func(t *testing.T) {
		other := s.mustOpen(t, MustKeyring(t, MustKEK(t, 1)))
		if other.Hash("alice") == h {
			t.Errorf("two stores with the same KEK got the same Hash: the index key is not random per store")
		}
	})
}

func (s *suite) testForgetStatuses(t *testing.T) {
	ks := s.mustOpen(t, MustKeyring(t, MustKEK(t, 1)))
	mustKey(t, ks, "alice", t0)
	wantStatuses(t, mustForget(t, ks, forget("r1", "alice", t0)), store.Forgotten)
	wantStatuses(t, mustForget(t, ks, forget("r2", "alice", t0)), store.AlreadyForgotten)
	wantStatuses(t, mustForget(t, ks, forget("r3", "nobody", t0)), store.UnknownSubject)
	wantStatuses(t, mustForget(t, ks, forget("r4", "nobody", t0)), store.AlreadyForgotten)
	// A subject with a fresh key after its tombstone is forgotten again.
	mustKey(t, ks, "alice", t0.Add(time.Second))
	wantStatuses(t, mustForget(t, ks, forget("r5", "alice", t0.Add(time.Minute))), store.Forgotten)
	// One call mixes all three.
	mustKey(t, ks, "bob", t0)
	wantStatuses(t, mustForget(t, ks,
		forget("r6", "bob", t0), forget("r7", "alice", t0), forget("r8", "dave", t0)),
		store.Forgotten, store.AlreadyForgotten, store.UnknownSubject)
}

func (s *suite) testForgetTwiceInOneCall(t *testing.T) {
	ks := s.mustOpen(t, MustKeyring(t, MustKEK(t, 1)))
	mustKey(t, ks, "bob", t0)
	res := mustForget(t, ks, forget("r1", "bob", t0), forget("r2", "bob", t0.Add(time.Second)), forget("r1", "bob", t0))
	wantStatuses(t, res, store.Forgotten, store.AlreadyForgotten, store.Forgotten)
	if !res[2].CompletedAt.Equal(res[0].CompletedAt) {
		t.Errorf("same request ID twice in one call: got CompletedAt %v and %v", res[0].CompletedAt, res[2].CompletedAt)
	}
	if got, want := mustResolve(t, ks, lookup("bob", t0))[0].ForgottenAt, t0.Add(time.Second); !got.Equal(want) {
		t.Errorf("ForgottenAt: got %v, want %v (the later request)", got, want)
	}
	if got, want := mustSeq(t, ks), uint64(2); got != want {
		t.Errorf("Seq: got %d, want %d (one per applied request)", got, want)
	}
}

func (s *suite) testForgetIdempotent(t *testing.T) {
	kr := MustKeyring(t, MustKEK(t, 1))
	ks := s.mustOpen(t, kr)
	mustKey(t, ks, "alice", t0)
	first := mustForget(t, ks, forget("req-1", "alice", t0))[0]
	if first.Status != store.Forgotten {
		t.Fatalf("first Forget: got %v, want FORGOTTEN", first.Status)
	}
	seq := mustSeq(t, ks)
	// A fresh key for a later event must survive a retry of the old request.
	fresh := mustKey(t, ks, "alice", t0.Add(time.Second))
	ks = s.mustReopen(t, ks, kr)
	for _, retry := range []store.ForgetRequest{forget("req-1", "alice", t0), forget("req-1", "alice", t0.Add(time.Hour))} {
		got := mustForget(t, ks, retry)[0]
		if got.Status != first.Status || !got.CompletedAt.Equal(first.CompletedAt) {
			t.Errorf("retry: got %v at %v, want %v at %v", got.Status, got.CompletedAt, first.Status, first.CompletedAt)
		}
	}
	if got := mustSeq(t, ks); got != seq {
		t.Errorf("retries changed Seq from %d to %d", seq, got)
	}
	e := mustResolve(t, ks, lookup("alice", t0.Add(time.Second)))[0]
	if !bytes.Equal(e.Key, fresh) {
		t.Errorf("a retried request destroyed the subject's newer key")
	}
	if !e.ForgottenAt.Equal(t0) {
		t.Errorf("ForgottenAt: got %v, want %v", e.ForgottenAt, t0)
	}
}

func (s *suite) testResolveAfterForget(t *testing.T) {
	kr := MustKeyring(t, MustKEK(t, 1))
	ks := s.mustOpen(t, kr)
	old := mustKey(t, ks, "alice", t0.Add(-time.Hour))
	at := t0
	wantStatuses(t, mustForget(t, ks, forget("r1", "alice", at)), store.Forgotten)
	for _, latest := range []time.Time{at, at.Add(-time.Millisecond), at.Add(-24 * time.Hour)} {
		e := mustResolve(t, ks, lookup("alice", latest))[0]
		if e.Key != nil {
			t.Errorf("Resolve(Latest=%v) after forget at %v: got a key, want none", latest, at)
		}
		if !e.ForgottenAt.Equal(at) {
			t.Errorf("Resolve(Latest=%v): got ForgottenAt %v, want %v", latest, e.ForgottenAt, at)
		}
	}
	ks = s.mustReopen(t, ks, kr)
	if e := mustResolve(t, ks, lookup("alice", at))[0]; e.Key != nil {
		t.Errorf("after reopen: got a key for an event at the tombstone")
	}
	fresh := mustKey(t, ks, "alice", at.Add(time.Millisecond))
	if bytes.Equal(fresh, old) {
		t.Fatalf("the fresh key equals the forgotten one")
	}
	for _, latest := range []time.Time{at.Add(time.Hour), at, at.Add(-time.Hour)} {
		e := mustResolve(t, ks, lookup("alice", latest))[0]
		if !bytes.Equal(e.Key, fresh) {
			t.Errorf("Resolve(Latest=%v) after the fresh key: got a different key", latest)
		}
		if !e.ForgottenAt.Equal(at) {
			t.Errorf("Resolve(Latest=%v): got ForgottenAt %v, want %v", latest, e.ForgottenAt, at)
		}
	}
	ks = s.mustReopen(t, ks, kr)
	if got := mustKey(t, ks, "alice", at.Add(time.Hour)); !bytes.Equal(got, fresh) {
		t.Errorf("after reopen: the fresh key changed")
	}
	// A batch where one lookup is newer than the tombstone gets the key for all.
	mustForget(t, ks, forget("r2", "bob", at))
	entries := mustResolve(t, ks, lookup("bob", at), lookup("bob", at.Add(time.Second)))
	if entries[0].Key == nil || !bytes.Equal(entries[0].Key, entries[1].Key) {
		t.Errorf("bob: lookups of one subject in one call got different entries")
	}
}

func (s *suite) testLaterForget(t *testing.T) {
	ks := s.mustOpen(t, MustKeyring(t, MustKEK(t, 1)))
	t1, t2 := t0, t0.Add(time.Hour)
	k1 := mustKey(t, ks, "alice", t1.Add(-time.Second))
	wantStatuses(t, mustForget(t, ks, forget("r1", "alice", t1)), store.Forgotten)
	k2 := mustKey(t, ks, "alice", t1.Add(time.Second))
	wantStatuses(t, mustForget(t, ks, forget("r2", "alice", t2)), store.Forgotten)
	e := mustResolve(t, ks, lookup("alice", t2))[0]
	if e.Key != nil || !e.ForgottenAt.Equal(t2) {
		t.Errorf("after second forget: got key=%v ForgottenAt=%v, want none and %v", e.Key != nil, e.ForgottenAt, t2)
	}
	// An older request does not move the tombstone back.
	wantStatuses(t, mustForget(t, ks, forget("r3", "alice", t1.Add(time.Minute))), store.AlreadyForgotten)
	if e := mustResolve(t, ks, lookup("alice", t1.Add(2*time.Minute)))[0]; e.Key != nil || !e.ForgottenAt.Equal(t2) {
		t.Errorf("after an older request: got key=%v ForgottenAt=%v, want none and %v", e.Key != nil, e.ForgottenAt, t2)
	}
	k3 := mustKey(t, ks, "alice", t2.Add(time.Millisecond))
	if bytes.Equal(k3, k1) || bytes.Equal(k3, k2) {
		t.Errorf("third key repeats an earlier one")
	}
	// Sub-millisecond request times are never rounded down past an event.
	odd := t2.Add(time.Hour + 1500*time.Microsecond)
	mustForget(t, ks, forget("r4", "alice", odd))
	if e := mustResolve(t, ks, lookup("alice", odd))[0]; e.Key != nil || e.ForgottenAt.Before(odd) {
		t.Errorf("forget at %v: got key=%v ForgottenAt=%v, want no key and ForgottenAt >= request", odd, e.Key != nil, e.ForgottenAt)
	}
}

func (s *suite) testForgetRacesResolve(t *testing.T) {
	kr := MustKeyring(t, MustKEK(t, 1))
	stores := s.mustStores(t, s.mustOpen(t, kr), kr, 3)
	ks := stores[0]
	var ids []string
	var lookups []store.Lookup
	for i := range 20 {
		id := fmt.Sprintf("racer-%d", i)
		ids = append(ids, id)
		lookups = append(lookups, lookup(id, t0))
	}
	// Half have keys, half are new: resolvers keep trying to create them.
	mustResolve(t, ks, lookups[:10]...)
	stop := make(chan struct{})
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for i := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				if _, err := stores[i%len(stores)].Resolve(context.Background(), lookups); err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	var reqs []store.ForgetRequest
	for i, id := range ids {
		reqs = append(reqs, forget(fmt.Sprintf("r%d", i), id, t0))
	}
	_, ferr := ks.Forget(context.Background(), reqs)
	close(stop)
	wg.Wait()
	close(errs)
	if ferr != nil {
		t.Fatalf("Forget: %v", ferr)
	}
	for err := range errs {
		t.Fatalf("Resolve: %v", err)
	}
	for i, e := range mustResolve(t, ks, lookups...) {
		if e.Key != nil {
			t.Errorf("%s: a key for an event at the tombstone survived a racing Forget", ids[i])
		}
	}
}

func (s *suite) testGuardLists(t *testing.T) {
	ks := s.mustOpen(t, MustKeyring(t, MustKEK(t, 1)))
	g := mustGuard(t, ks, 0)
	if g.Seq() != 0 || len(g.Forgotten()) != 0 || !g.Complete() {
		t.Errorf("fresh store: got Seq %d, %d forgotten, complete %v; want 0, 0, true", g.Seq(), len(g.Forgotten()), g.Complete())
	}
	for range 2 {
		if err := g.Release(context.Background()); err != nil {
			t.Errorf("Release: %v", err)
		}
	}
	mustKey(t, ks, "alice", t0)
	mustForget(t, ks, forget("r1", "alice", t0), forget("r2", "nobody", t0))
	mustForget(t, ks, forget("r3", "bob", t0))
	g = mustGuard(t, ks, 0)
	want := []store.SubjectHash{ks.Hash("alice"), ks.Hash("nobody"), ks.Hash("bob")}
	if got := g.Forgotten(); fmt.Sprint(got) != fmt.Sprint(want) || g.Seq() != 3 || !g.Complete() {
		t.Errorf("Guard(0): got Seq %d, complete %v, %d forgotten; want 3, true, alice nobody bob in order", g.Seq(), g.Complete(), len(got))
	}
	mustRelease(t, g)
	g = mustGuard(t, ks, 1)
	if got := g.Forgotten(); fmt.Sprint(got) != fmt.Sprint(want[1:]) || g.Seq() != 3 || !g.Complete() {
		t.Errorf("Guard(1): got Seq %d, complete %v, %d forgotten; want 3, true, nobody bob", g.Seq(), g.Complete(), len(got))
	}
	mustRelease(t, g)
	g = mustGuard(t, ks, 3)
	if len(g.Forgotten()) != 0 || g.Seq() != 3 || !g.Complete() {
		t.Errorf("Guard(3): got Seq %d, complete %v, %d forgotten; want 3, true, 0", g.Seq(), g.Complete(), len(g.Forgotten()))
	}
	mustRelease(t, g)
	g = mustGuard(t, ks, 7)
	if g.Complete() {
		t.Errorf("Guard(7) beyond Seq 3: got complete, want incomplete")
	}
	mustRelease(t, g)
	// Several guards may be held at once.
	g1, g2 := mustGuard(t, ks, 3), mustGuard(t, ks, 3)
	mustRelease(t, g1)
	mustRelease(t, g2)
}

func mustRelease(t *testing.T, g store.Guard) {
	t.Helper()
	if err := g.Release(context.Background()); err != nil {
		t.Fatalf("Release: %v", err)
	}
}

func (s *suite) testForgetWaitsForGuard(t *testing.T) {
	kr := MustKeyring(t, MustKEK(t, 1))
	stores := s.mustStores(t, s.mustOpen(t, kr), kr, 2)
	old := mustKey(t, stores[0], "alice", t0)
	g := mustGuard(t, stores[0], 0)
	type result struct {
		res []store.ForgetResult
		err error
	}
	done := make(chan result, 1)
	go func() {
		res, err := stores[len(stores)-1].Forget(context.Background(), []store.ForgetRequest{forget("r1", "alice", t0)})
		done <- result{res, err}
	}()
	select {
	case r := <-done:
		t.Fatalf("Forget completed while a Guard was held (err %v)", r.err)
	case <-time.After(waitShort):
	}
	// The guard's holder still sees the key it checked.
	if got := mustKey(t, stores[0], "alice", t0); !bytes.Equal(got, old) {
		t.Errorf("key changed while the Guard was held")
	}
	mustRelease(t, g)
	select {
	case r := <-done:
		if r.err != nil {
			t.Fatalf("Forget after Release: %v", r.err)
		}
		wantStatuses(t, r.res, store.Forgotten)
	case <-time.After(waitLong):
		t.Fatalf("Forget still blocked %v after the Guard was released", waitLong)
	}
	g = mustGuard(t, stores[0], 0)
	if fmt.Sprint(g.Forgotten()) != fmt.Sprint([]store.SubjectHash{stores[0].Hash("alice")}) {
		t.Errorf("the next Guard does not list the forgotten subject")
	}
	mustRelease(t, g)
}

func (s *suite) testForgetCanceled(t *testing.T) {
	ks := s.mustOpen(t, MustKeyring(t, MustKEK(t, 1)))
	old := mustKey(t, ks, "alice", t0)
	g := mustGuard(t, ks, 0)
	ctx, cancel := context.WithTimeout(context.Background(), waitShort)
	defer cancel()
	if _, err := ks.Forget(ctx, []store.ForgetRequest{forget("r1", "alice", t0)}); err == nil {
		t.Fatalf("Forget with a context that ends while a Guard is held: got nil error")
	}
	mustRelease(t, g)
	if got := mustKey(t, ks, "alice", t0); !bytes.Equal(got, old) {
		t.Errorf("a canceled Forget destroyed the key")
	}
	if got := mustSeq(t, ks); got != 0 {
		t.Errorf("a canceled Forget advanced Seq to %d", got)
	}
	wantStatuses(t, mustForget(t, ks, forget("r1", "alice", t0)), store.Forgotten)
}

func (s *suite) testGuardIncomplete(t *testing.T) {
	if testing.Short() {
		t.Skip("forgets 100001 subjects; skipped in -short mode")
	}
	ks := s.mustOpen(t, MustKeyring(t, MustKEK(t, 1)))
	const total, chunk = 100_001, 25_000
	for start := 0; start < total; start += chunk {
		var reqs []store.ForgetRequest
		for i := start; i < min(start+chunk, total); i++ {
			reqs = append(reqs, forget(fmt.Sprintf("bulk-%d", i), fmt.Sprintf("subject-%d", i), t0))
		}
		mustForget(t, ks, reqs...)
	}
	g := mustGuard(t, ks, 0)
	if g.Seq() != total || g.Complete() {
		t.Errorf("Guard(0) after %d forgets: got Seq %d, complete %v; want %d, false", total, g.Seq(), g.Complete(), total)
	}
	mustRelease(t, g)
	g = mustGuard(t, ks, total-100_000)
	if !g.Complete() || len(g.Forgotten()) != 100_000 {
		t.Errorf("Guard(Seq-100000): got complete %v, %d forgotten; want true, 100000", g.Complete(), len(g.Forgotten()))
	} else if got, want := g.Forgotten()[99_999], ks.Hash(fmt.Sprintf("subject-%d", total-1)); got != want {
		t.Errorf("Guard(Seq-100000): the last entry is not the last subject forgotten")
	}
	mustRelease(t, g)
}

func (s *suite) testWrongKEK(t *testing.T) {
	ks := s.mustOpen(t, MustKeyring(t, MustKEK(t, 1)))
	mustKey(t, ks, "alice", t0)
	if err := ks.Close(); err != nil {
		t.Fatalf("close: %v", err)
	}
	other, err := s.open(t, MustKeyring(t, MustKEK(t, 2)))
	if err == nil {
		other.Close()
		t.Fatalf("open with a foreign KEK: got nil error, want ErrWrongKEK")
	}
	if !errors.Is(err, store.ErrWrongKEK) {
		t.Errorf("open with a foreign KEK: got %v, want an error matching ErrWrongKEK", err)
	}
	if strings.Contains(err.Error(), "\n") {
		t.Errorf("open with a foreign KEK: error is not one line: %q", err)
	}
	// The right KEK still opens it.
	mustKey(t, s.mustOpen(t, MustKeyring(t, MustKEK(t, 1))), "alice", t0)
}

func (s *suite) testRewrap(t *testing.T) {
	oldKEK, newKEK := MustKEK(t, 1), MustKEK(t, 2)
	ks := s.mustOpen(t, MustKeyring(t, oldKEK))
	var lookups []store.Lookup
	for i := range 25 {
		lookups = append(lookups, lookup(fmt.Sprintf("subject-%d", i), t0))
	}
	before := mustResolve(t, ks, lookups...)
	hash := ks.Hash("subject-0")
	mustForget(t, ks, forget("r1", "subject-24", t0)) // a tombstone, no key
	ctx := context.Background()
	if n, err := ks.Rewrap(ctx, 10); err != nil || n != 0 {
		t.Errorf("Rewrap with the active KEK only: got %d, %v; want 0, nil", n, err)
	}

	ks = s.mustReopen(t, ks, MustKeyring(t, newKEK, oldKEK))
	total := 0
	for round := 0; ; round++ {
		n, err := ks.Rewrap(ctx, 10)
		if err != nil {
			t.Fatalf("Rewrap: %v", err)
		}
		if n > 10 {
			t.Fatalf("Rewrap(10): changed %d keys", n)
		}
		if n == 0 {
			break
		}
		total += n
		if round > 10 {
			t.Fatalf("Rewrap does not converge")
		}
	}
	if want := 24 + 1; total != want { // 24 subject keys and the index key
		t.Errorf("Rewrap: changed %d keys in all, want %d", total, want)
	}
	check := func(ks store.KeyStore) {
		t.Helper()
		if ks.Hash("subject-0") != hash {
			t.Errorf("Hash changed across the rewrap")
		}
		after := mustResolve(t, ks, lookups...)
		for i := range after[:24] {
			if !bytes.Equal(after[i].Key, before[i].Key) {
				t.Errorf("subject %d: key changed across the rewrap", i)
			}
		}
		if after[24].Key != nil {
			t.Errorf("forgotten subject got a key back")
		}
	}
	check(ks)
	ks = s.mustReopen(t, ks, MustKeyring(t, newKEK))
	check(ks)
	if err := ks.Close(); err != nil {
		t.Fatalf("close: %v", err)
	}
	if other, err := s.open(t, MustKeyring(t, oldKEK)); !errors.Is(err, store.ErrWrongKEK) {
		if err == nil {
			other.Close()
		}
		t.Errorf("open with only the retired KEK: got %v, want ErrWrongKEK", err)
	}
}

func (s *suite) testNoRawData(t *testing.T) {
	if s.cfg.raw == nil {
		t.Skip("no WithRaw hook")
	}
	ks := s.mustOpen(t, MustKeyring(t, MustKEK(t, 1)))
	var ids []string
	var lookups []store.Lookup
	for i := range 20 {
		id := fmt.Sprintf("Customer-RAW-%04d-zq", i)
		ids = append(ids, id)
		lookups = append(lookups, lookup(id, t0))
	}
	entries := mustResolve(t, ks, lookups...)
	reqs := []store.ForgetRequest{
		forget("Request-RAW-0001-zq", ids[0], t0),
		forget("Request-RAW-0002-zq", "Customer-RAW-never-zq", t0),
	}
	mustForget(t, ks, reqs...)
	mustKey(t, ks, ids[0], t0.Add(time.Second))
	raw := s.cfg.raw(t)
	if len(raw) == 0 {
		t.Fatalf("raw dump is empty")
	}
	lower := bytes.ToLower(raw)
	secrets := map[string][]byte{}
	for _, id := range append(ids, "Customer-RAW-never-zq", reqs[0].RequestID, reqs[1].RequestID) {
		secrets["raw ID "+id] = []byte(id)
	}
	secrets["ID fragment"] = []byte("raw-00")
	for i, e := range entries {
		secrets[fmt.Sprintf("key %d", i)] = e.Key
		secrets[fmt.Sprintf("key %d (hex)", i)] = []byte(hex.EncodeToString(e.Key))
		secrets[fmt.Sprintf("key %d (base64)", i)] = []byte(base64.StdEncoding.EncodeToString(e.Key)[:40])
	}
	for what, b := range secrets {
		if bytes.Contains(raw, b) || bytes.Contains(lower, bytes.ToLower(b)) {
			t.Errorf("persisted bytes contain %s", what)
		}
	}
}

func (s *suite) testPingAndClose(t *testing.T) {
	ks := s.mustOpen(t, MustKeyring(t, MustKEK(t, 1)))
	if err := ks.Ping(context.Background()); err != nil {
		t.Fatalf("Ping: %v", err)
	}
	if err := ks.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if err := ks.Ping(context.Background()); err == nil {
		t.Errorf("Ping after Close: got nil error")
	}
}
