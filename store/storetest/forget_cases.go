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

func (s *suite) testForgetRequestIDReusedForAnotherSubject(t *testing.T) {
	ks := s.mustOpen(t, MustKeyring(t, MustKEK(t, 1)))
	mustKey(t, ks, "alice", t0)
	mustKey(t, ks, "bob", t0)
	wantStatuses(t, mustForget(t, ks, forget("same", "alice", t0)), store.Forgotten)
	wantStatuses(t, mustForget(t, ks, forget("same", "bob", t0)), store.Forgotten)
	if e := mustResolve(t, ks, lookup("bob", t0))[0]; e.Key != nil || e.ForgottenAt.IsZero() {
		t.Errorf("bob still has a key after a request that reused alice's request ID")
	}
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
