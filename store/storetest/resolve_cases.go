package storetest

import (
	"bytes"
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/hygiene/pseudonymizer/store"
)

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

// testResolveManyNewSubjects: one Resolve of thousands of new subjects
// (more than one write of an implementation may take: PostgreSQL splits
// them over connections), mixed with a subject that has a key, one whose
// tombstone is newer than its events and one whose events are newer than
// its tombstone, while a second store creates keys for some of the same
// subjects. Every subject ends with exactly one key, the same in both
// stores' answers and on the next Resolve.
func (s *suite) testResolveManyNewSubjects(t *testing.T) {
	kr := MustKeyring(t, MustKEK(t, 1))
	stores := s.mustStores(t, s.mustOpen(t, kr), kr, 2)
	ks := stores[0]
	alice := mustKey(t, ks, "alice", t0)
	at := t0.Add(time.Hour)
	wantStatuses(t, mustForget(t, ks, forget("r1", "bob", at), forget("r2", "carol", at)), store.UnknownSubject, store.UnknownSubject)

	const n = 5000
	lookups := make([]store.Lookup, 0, n+3)
	for i := range n {
		lookups = append(lookups, lookup(fmt.Sprintf("many-%d", i), t0))
		switch i {
		case n / 3:
			lookups = append(lookups, lookup("alice", t0))
		case n / 2:
			lookups = append(lookups, lookup("bob", at.Add(-time.Minute))) // before its tombstone: no key
		case 2 * n / 3:
			lookups = append(lookups, lookup("carol", at.Add(time.Minute))) // after it: a fresh key
		}
	}
	// The second store races for every third subject.
	var racing []store.Lookup
	for i := 0; i < n; i += 3 {
		racing = append(racing, lookup(fmt.Sprintf("many-%d", i), t0))
	}
	var other []store.Entry
	var otherErr error
	var wg sync.WaitGroup
	wg.Go(func() { other, otherErr = stores[1].Resolve(context.Background(), racing) })
	entries := mustResolve(t, ks, lookups...)
	wg.Wait()
	if otherErr != nil {
		t.Fatalf("racing Resolve: %v", otherErr)
	}

	keys := map[string][]byte{}
	seen := map[string]bool{}
	for i, e := range entries {
		id := lookups[i].SubjectID
		switch {
		case id == "bob":
			if e.Key != nil || !e.ForgottenAt.Equal(at) {
				t.Errorf("bob, before his tombstone: got key %v, ForgottenAt %v; want none, %v", e.Key != nil, e.ForgottenAt, at)
			}
			continue
		case id == "carol":
			if !e.ForgottenAt.Equal(at) {
				t.Errorf("carol: got ForgottenAt %v, want %v", e.ForgottenAt, at)
			}
		case id == "alice":
			if !bytes.Equal(e.Key, alice) {
				t.Errorf("alice: her key changed")
			}
		}
		if e.Key == nil {
			t.Fatalf("%s: got no key", id)
		}
		if e.Hash != ks.Hash(id) {
			t.Fatalf("%s: entry has another subject's hash", id)
		}
		if seen[string(e.Key)] {
			t.Fatalf("%s: a key handed to another subject too", id)
		}
		seen[string(e.Key)] = true
		keys[id] = e.Key
	}
	for i, e := range other {
		if id := racing[i].SubjectID; !bytes.Equal(e.Key, keys[id]) {
			t.Fatalf("%s: the racing store got a different key", id)
		}
	}
	again := mustResolve(t, ks, lookups...)
	for i, e := range again {
		if id := lookups[i].SubjectID; !bytes.Equal(e.Key, keys[id]) {
			t.Fatalf("%s: key changed on the next Resolve", id)
		}
	}
}
