package storetest

import (
	"bytes"
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/hygiene/pseudonymizer/store"
)

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
	if err := g.Check(context.Background()); err != nil {
		t.Errorf("Check of a held Guard: %v", err)
	}
	mustRelease(t, g)
	if err := g.Check(context.Background()); err == nil {
		t.Errorf("Check of a released Guard succeeded")
	}
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

// testGuardIncomplete: a guard further behind than the forget-log limit is
// not Complete; one exactly at the limit gets every entry.
func (s *suite) testGuardIncomplete(t *testing.T) {
	limit := s.cfg.maxLog
	if testing.Short() && limit > 10_000 {
		t.Skipf("forgets %d subjects; skipped in -short mode", limit+1)
	}
	ks := s.mustOpen(t, MustKeyring(t, MustKEK(t, 1)))
	total, chunk := limit+1, 25_000
	for start := 0; start < total; start += chunk {
		var reqs []store.ForgetRequest
		for i := start; i < min(start+chunk, total); i++ {
			reqs = append(reqs, forget(fmt.Sprintf("bulk-%d", i), fmt.Sprintf("subject-%d", i), t0))
		}
		mustForget(t, ks, reqs...)
	}
	g := mustGuard(t, ks, 0)
	if g.Seq() != uint64(total) || g.Complete() {
		t.Errorf("Guard(0) after %d forgets: got Seq %d, complete %v; want %d, false", total, g.Seq(), g.Complete(), total)
	}
	mustRelease(t, g)
	g = mustGuard(t, ks, uint64(total-limit))
	if !g.Complete() || len(g.Forgotten()) != limit {
		t.Errorf("Guard(Seq-%d): got complete %v, %d forgotten; want true, %d", limit, g.Complete(), len(g.Forgotten()), limit)
	} else if got, want := g.Forgotten()[limit-1], ks.Hash(fmt.Sprintf("subject-%d", total-1)); got != want {
		t.Errorf("Guard(Seq-%d): the last entry is not the last subject forgotten", limit)
	}
	mustRelease(t, g)
}
