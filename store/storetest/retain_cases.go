package storetest

import (
	"bytes"
	"context"
	"testing"
	"time"

	"github.com/hygiene/pseudonymizer/store"
)

// retaining is a forget request that retains its key, from partition p at
// offset o.
func retaining(reqID, subjectID string, at time.Time, p int32, o int64) store.ForgetRequest {
	return store.ForgetRequest{RequestID: reqID, SubjectID: subjectID, RequestedAt: at, Retain: true, Partition: p, Offset: o}
}

func mustRetained(t *testing.T, ks store.KeyStore, committed map[int32]int64) int {
	t.Helper()
	n, err := ks.SettleCommitted(context.Background(), committed)
	if err != nil {
		t.Fatalf("SettleCommitted: %v", err)
	}
	return n
}

func mustSettle(t *testing.T, ks store.KeyStore, reqs ...store.ForgetRequest) {
	t.Helper()
	if err := ks.Settle(context.Background(), reqs); err != nil {
		t.Fatalf("Settle: %v", err)
	}
}

// wantKey checks that a result returns want (nil: no key).
func wantKey(t *testing.T, what string, res store.ForgetResult, want []byte) {
	t.Helper()
	switch {
	case want == nil && res.Key != nil:
		t.Errorf("%s: a key was returned, want none", what)
	case want != nil && !bytes.Equal(res.Key, want):
		t.Errorf("%s: returned key %v, want the destroyed key", what, res.Key != nil)
	}
}

// testRetainUntilSettled: a request that retains gets the key it destroyed,
// on the first call and on every repetition until Settle; other requests
// and statuses get none.
func (s *suite) testRetainUntilSettled(t *testing.T) {
	kr := MustKeyring(t, MustKEK(t, 1))
	ks := s.mustOpen(t, kr)
	alice := bytes.Clone(mustKey(t, ks, "alice", t0))
	mustKey(t, ks, "bob", t0)
	carol := bytes.Clone(mustKey(t, ks, "carol", t0))
	ra, rc := retaining("ra", "alice", t0, 0, 10), retaining("rc", "carol", t0, 1, 5)
	res := mustForget(t, ks, ra, forget("rb", "bob", t0), retaining("rn", "nobody", t0, 0, 11), rc, ra)
	wantStatuses(t, res, store.Forgotten, store.Forgotten, store.UnknownSubject, store.Forgotten, store.Forgotten)
	wantKey(t, "retaining FORGOTTEN", res[0], alice)
	wantKey(t, "FORGOTTEN without Retain", res[1], nil)
	wantKey(t, "retaining UNKNOWN_SUBJECT", res[2], nil)
	wantKey(t, "second retaining FORGOTTEN", res[3], carol)
	wantKey(t, "the same request again in the call", res[4], alice)
	if e := mustResolve(t, ks, lookup("alice", t0))[0]; e.Key != nil {
		t.Fatalf("a retained key is still the subject's key")
	}
	// A later event gets a fresh key; the repeated request still returns
	// the retained old one, and destroys nothing.
	fresh := bytes.Clone(mustKey(t, ks, "alice", t0.Add(time.Second)))
	ks = s.mustReopen(t, ks, kr)
	again := mustForget(t, ks, ra)[0]
	if again.Status != store.Forgotten || !again.CompletedAt.Equal(res[0].CompletedAt) {
		t.Errorf("repeated request: got %v at %v, want its recorded result", again.Status, again.CompletedAt)
	}
	wantKey(t, "repeated retaining request", again, alice)
	if e := mustResolve(t, ks, lookup("alice", t0.Add(time.Second)))[0]; !bytes.Equal(e.Key, fresh) {
		t.Errorf("a repeated retaining request destroyed the subject's newer key")
	}
	// A repetition that does not ask gets no key.
	wantKey(t, "repeated request without Retain", mustForget(t, ks, forget("ra", "alice", t0))[0], nil)
	// ALREADY_FORGOTTEN retains nothing.
	mustKey(t, ks, "dave", t0)
	mustForget(t, ks, forget("rd1", "dave", t0))
	r := mustForget(t, ks, retaining("rd2", "dave", t0, 0, 12))[0]
	wantStatuses(t, []store.ForgetResult{r}, store.AlreadyForgotten)
	wantKey(t, "retaining ALREADY_FORGOTTEN", r, nil)

	if n := mustRetained(t, ks, nil); n != 2 {
		t.Errorf("%d keys retained, want 2 (alice's and carol's)", n)
	}
	mustSettle(t, ks, ra, retaining("never-seen", "nobody", t0, 0, 1))
	again = mustForget(t, ks, ra)[0]
	if again.Status != store.Forgotten || !again.CompletedAt.Equal(res[0].CompletedAt) {
		t.Errorf("request after Settle: got %v at %v, want its recorded result", again.Status, again.CompletedAt)
	}
	wantKey(t, "request after Settle", again, nil)
	if n := mustRetained(t, ks, nil); n != 1 {
		t.Errorf("%d keys retained after Settle, want 1", n)
	}
	wantKey(t, "other request after Settle", mustForget(t, ks, rc)[0], carol)
}

// testSettleCommitted: leftovers are released by partition and offset.
func (s *suite) testSettleCommitted(t *testing.T) {
	ks := s.mustOpen(t, MustKeyring(t, MustKEK(t, 1)))
	var reqs []store.ForgetRequest
	for i, id := range []string{"p0-a", "p0-b", "p1-a", "p2-a"} {
		mustKey(t, ks, id, t0)
		p := int32(i / 2)
		if i == 3 {
			p = 2
		}
		reqs = append(reqs, retaining("r-"+id, id, t0, p, int64(100+i)))
	}
	// offsets: p0-a 100, p0-b 101 (partition 0), p1-a 102 (1), p2-a 103 (2)
	mustForget(t, ks, reqs...)
	if n := mustRetained(t, ks, map[int32]int64{0: 101, 1: 102, 5: 1000}); n != 3 {
		t.Errorf("%d retained, want 3: only offset 100 of partition 0 is below the committed offsets", n)
	}
	res := mustForget(t, ks, reqs...)
	for i, want := range []bool{false, true, true, true} {
		if got := res[i].Key != nil; got != want {
			t.Errorf("%s after SettleCommitted: key returned %v, want %v", reqs[i].SubjectID, got, want)
		}
	}
	if n := mustRetained(t, ks, map[int32]int64{0: 102, 1: 103, 2: 104}); n != 0 {
		t.Errorf("%d retained, want 0", n)
	}
}

// testNothingRetainedWithoutRetain: Forget without Retain keeps nothing.
func (s *suite) testNothingRetainedWithoutRetain(t *testing.T) {
	ks := s.mustOpen(t, MustKeyring(t, MustKEK(t, 1)))
	mustKey(t, ks, "alice", t0)
	wantKey(t, "FORGOTTEN without Retain", mustForget(t, ks, forget("r1", "alice", t0))[0], nil)
	if n := mustRetained(t, ks, nil); n != 0 {
		t.Errorf("%d keys retained without Retain, want 0", n)
	}
	// Asking later does not bring the key back.
	wantKey(t, "retaining repetition", mustForget(t, ks, retaining("r1", "alice", t0, 0, 1))[0], nil)
}

// testRewrapRetained: Rewrap re-wraps retained keys too, so a retained key
// still comes back after the old KEK is gone.
func (s *suite) testRewrapRetained(t *testing.T) {
	oldKEK, newKEK := MustKEK(t, 1), MustKEK(t, 2)
	ks := s.mustOpen(t, MustKeyring(t, oldKEK))
	alice := bytes.Clone(mustKey(t, ks, "alice", t0))
	mustKey(t, ks, "bob", t0)
	ra := retaining("ra", "alice", t0, 0, 1)
	mustForget(t, ks, ra)
	ks = s.mustReopen(t, ks, MustKeyring(t, newKEK, oldKEK))
	ctx := context.Background()
	for round := 0; ; round++ {
		n, err := ks.Rewrap(ctx, 1)
		if err != nil {
			t.Fatalf("Rewrap: %v", err)
		}
		if n == 0 {
			break
		}
		if round > 10 {
			t.Fatalf("Rewrap does not finish")
		}
	}
	ks = s.mustReopen(t, ks, MustKeyring(t, newKEK))
	wantKey(t, "retained key after rotation", mustForget(t, ks, ra)[0], alice)
}
