package storetest

import (
	"bytes"
	"context"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/hygiene/pseudonymizer/store"
)

func objection(reqID, subjectID string, at time.Time, systems ...string) store.ObjectionRequest {
	return store.ObjectionRequest{RequestID: reqID, SubjectID: subjectID, EffectiveAt: at, Systems: append([]string{}, systems...)}
}

func mustObject(t *testing.T, ks store.KeyStore, reqs ...store.ObjectionRequest) []store.ObjectionResult {
	t.Helper()
	res, err := ks.Object(context.Background(), reqs)
	if err != nil {
		t.Fatalf("Object: %v", err)
	}
	if got, want := len(res), len(reqs); got != want {
		t.Fatalf("Object: got %d results, want %d", got, want)
	}
	for i, r := range res {
		if r.AppliedAt.IsZero() {
			t.Fatalf("Object: result %d has zero AppliedAt", i)
		}
	}
	return res
}

// wantObjection checks the objection state Resolve returns for id: nil
// when systems is nil.
func wantObjection(t *testing.T, ks store.KeyStore, id string, at time.Time, systems []string) {
	t.Helper()
	e := mustResolve(t, ks, lookup(id, t0))[0]
	o := e.Objection
	switch {
	case systems == nil && o != nil:
		t.Errorf("Resolve(%s): got objection %v from %v, want none", id, o.Systems, o.EffectiveAt)
	case systems == nil:
	case o == nil:
		t.Errorf("Resolve(%s): got no objection, want %v from %v", id, systems, at)
	case !o.EffectiveAt.Equal(at) || !slices.Equal(o.Systems, systems):
		t.Errorf("Resolve(%s): got objection %v from %v, want %v from %v", id, o.Systems, o.EffectiveAt, systems, at)
	}
}

func wantObjectionResult(t *testing.T, r store.ObjectionResult, status store.ObjectionStatus, superseded bool) {
	t.Helper()
	if r.Status != status || r.Superseded != superseded {
		t.Errorf("Object: got %v superseded=%v, want %v superseded=%v", r.Status, r.Superseded, status, superseded)
	}
}

// testObjectionStates: an objection is recorded for a known subject
// (APPLIED) and an unknown one (UNKNOWN_SUBJECT, and its first key comes
// with it), survives a reopen, and leaves the key alone.
func (s *suite) testObjectionStates(t *testing.T) {
	kr := MustKeyring(t, MustKEK(t, 1))
	ks := s.mustOpen(t, kr)
	key := mustKey(t, ks, "alice", t0)
	wantObjection(t, ks, "alice", time.Time{}, nil)

	res := mustObject(t, ks,
		objection("o1", "alice", t0.Add(time.Hour), "meta", "crm"),
		objection("o2", "nobody", t0.Add(time.Hour), store.AllSystems))
	wantObjectionResult(t, res[0], store.ObjectionApplied, false)
	wantObjectionResult(t, res[1], store.ObjectionUnknownSubject, false)
	if res[0].Key != nil {
		t.Errorf("Object returned a key without WithKey")
	}
	wantObjection(t, ks, "alice", t0.Add(time.Hour), []string{"meta", "crm"})
	if got := mustKey(t, ks, "alice", t0); !bytes.Equal(got, key) {
		t.Errorf("an objection changed the key")
	}
	// The unknown subject's first key comes with its objection.
	e := mustResolve(t, ks, lookup("nobody", t0.Add(2*time.Hour)))[0]
	if e.Key == nil || e.Objection == nil || !e.Objection.All() {
		t.Errorf("first Resolve of a subject that objected before its first event: key %v, objection %+v", e.Key != nil, e.Objection)
	}
	// Lookups of one subject in one call share the state.
	es := mustResolve(t, ks, lookup("alice", t0), lookup("bob", t0), lookup("alice", t0))
	if es[0].Objection == nil || es[2].Objection == nil || es[1].Objection != nil {
		t.Errorf("Resolve of alice, bob, alice: objections %v, %v, %v", es[0].Objection != nil, es[1].Objection != nil, es[2].Objection != nil)
	}

	ks = s.mustReopen(t, ks, kr)
	wantObjection(t, ks, "alice", t0.Add(time.Hour), []string{"meta", "crm"})
	st := mustSubject(t, mustAuditor(t, ks), "alice")
	if st.Objection == nil || st.Objection.RequestID != "o1" || !slices.Equal(st.Objection.Systems, []string{"meta", "crm"}) || st.Objection.RecordedAt.IsZero() {
		t.Errorf("Subject: got objection %+v, want o1's", st.Objection)
	}
	if st := mustSubject(t, mustAuditor(t, ks), "bob"); st.Objection != nil {
		t.Errorf("Subject(bob): got objection %+v, want none", st.Objection)
	}
}

// testObjectionLatestWins: the state with the latest EffectiveAt wins
// whatever the order of the calls; a withdrawal is a state too.
func (s *suite) testObjectionLatestWins(t *testing.T) {
	ks := s.mustOpen(t, MustKeyring(t, MustKEK(t, 1)))
	mustKey(t, ks, "alice", t0)
	at := func(m int) time.Time { return t0.Add(time.Duration(m) * time.Minute) }
	wantObjectionResult(t, mustObject(t, ks, objection("o2", "alice", at(2), "meta"))[0], store.ObjectionApplied, false)
	// An older state arriving later changes nothing.
	wantObjectionResult(t, mustObject(t, ks, objection("o1", "alice", at(1), store.AllSystems))[0], store.ObjectionApplied, true)
	wantObjection(t, ks, "alice", at(2), []string{"meta"})
	// A withdrawal.
	wantObjectionResult(t, mustObject(t, ks, objection("o3", "alice", at(3)))[0], store.ObjectionApplied, false)
	wantObjection(t, ks, "alice", time.Time{}, nil)
	st := mustSubject(t, mustAuditor(t, ks), "alice")
	if st.Objection == nil || len(st.Objection.Systems) != 0 || !st.Objection.EffectiveAt.Equal(at(3)) {
		t.Errorf("Subject after a withdrawal: got %+v, want the withdrawn state at %v", st.Objection, at(3))
	}
	// The objection the withdrawal replaced cannot come back.
	wantObjectionResult(t, mustObject(t, ks, objection("o2b", "alice", at(2), "meta"))[0], store.ObjectionApplied, true)
	wantObjection(t, ks, "alice", time.Time{}, nil)
	// In one call, in any order: the latest wins; a tie goes to the later
	// request.
	res := mustObject(t, ks,
		objection("o5", "alice", at(5), "crm"),
		objection("o4", "alice", at(4), "meta"),
		objection("o5b", "alice", at(5), "tiktok"))
	wantObjectionResult(t, res[0], store.ObjectionApplied, false)
	wantObjectionResult(t, res[1], store.ObjectionApplied, true)
	wantObjectionResult(t, res[2], store.ObjectionApplied, false)
	wantObjection(t, ks, "alice", at(5), []string{"tiktok"})
}

// testObjectionIdempotent: a repeated request returns its first result and
// changes nothing (no forget-log entry).
func (s *suite) testObjectionIdempotent(t *testing.T) {
	ks := s.mustOpen(t, MustKeyring(t, MustKEK(t, 1)))
	mustKey(t, ks, "alice", t0)
	first := mustObject(t, ks, objection("o1", "alice", t0, "meta"))[0]
	seq := mustSeq(t, ks)
	if seq != 1 {
		t.Errorf("Seq after one objection: got %d, want 1", seq)
	}
	// A newer state, then o1 again: o1's result, and o1 does not come back.
	mustObject(t, ks, objection("o2", "alice", t0.Add(time.Minute), "crm"))
	again := mustObject(t, ks, objection("o1", "alice", t0, "meta"), objection("o1", "alice", t0, "meta"))
	for i, r := range again {
		if r.Status != first.Status || r.Superseded != first.Superseded || !r.AppliedAt.Equal(first.AppliedAt) {
			t.Errorf("repeat %d: got %+v, want %+v", i, r, first)
		}
	}
	wantObjection(t, ks, "alice", t0.Add(time.Minute), []string{"crm"})
	if got := mustSeq(t, ks); got != seq+1 {
		t.Errorf("Seq: got %d, want %d (repeats log nothing)", got, seq+1)
	}
	// The same request ID with another state is another request.
	wantObjectionResult(t, mustObject(t, ks, objection("o1", "alice", t0.Add(2*time.Minute), "meta"))[0], store.ObjectionApplied, false)
	wantObjection(t, ks, "alice", t0.Add(2*time.Minute), []string{"meta"})
}

// testObjectionForgetWins: a forget removes the objection state with the
// key, an objection from before the forget cannot bring it back, and one
// after the forget is recorded for the subject's next key.
func (s *suite) testObjectionForgetWins(t *testing.T) {
	ks := s.mustOpen(t, MustKeyring(t, MustKEK(t, 1)))
	a := mustAuditor(t, ks)
	mustKey(t, ks, "alice", t0)
	mustObject(t, ks, objection("o1", "alice", t0.Add(time.Minute), "meta"))
	wantStatuses(t, mustForget(t, ks, forget("f1", "alice", t0.Add(time.Hour))), store.Forgotten)
	if st := mustSubject(t, a, "alice"); st.Objection != nil {
		t.Errorf("Subject after a forget: got objection %+v, want none", st.Objection)
	}
	// Replayed, or a new one from before the forget: no effect.
	res := mustObject(t, ks, objection("o1", "alice", t0.Add(time.Minute), "meta"), objection("o0", "alice", t0.Add(time.Hour), "crm"))
	wantObjectionResult(t, res[0], store.ObjectionApplied, false) // o1's first result
	wantObjectionResult(t, res[1], store.ObjectionUnknownSubject, true)
	if st := mustSubject(t, a, "alice"); st.Objection != nil {
		t.Errorf("Subject after objections older than the forget: got %+v, want none", st.Objection)
	}
	// After the forget: recorded, and the next key comes with it.
	wantObjectionResult(t, mustObject(t, ks, objection("o2", "alice", t0.Add(2*time.Hour), store.AllSystems))[0], store.ObjectionUnknownSubject, false)
	e := mustResolve(t, ks, lookup("alice", t0.Add(3*time.Hour)))[0]
	if e.Key == nil || e.Objection == nil || !e.Objection.EffectiveAt.Equal(t0.Add(2*time.Hour)) {
		t.Errorf("after forget then objection: key %v, objection %+v", e.Key != nil, e.Objection)
	}
	// An objection newer than a later forget's requested_at survives it.
	mustObject(t, ks, objection("o3", "alice", t0.Add(5*time.Hour), "meta"))
	mustForget(t, ks, forget("f2", "alice", t0.Add(4*time.Hour)))
	if st := mustSubject(t, a, "alice"); st.Objection == nil || st.Objection.RequestID != "o3" {
		t.Errorf("an objection effective after the forget's requested_at: got %+v, want o3", st.Objection)
	}
}

// testObjectionGuard: a state change is listed by the next Guard, waits
// for a held Guard, and a superseded one lists nothing.
func (s *suite) testObjectionGuard(t *testing.T) {
	kr := MustKeyring(t, MustKEK(t, 1))
	stores := s.mustStores(t, s.mustOpen(t, kr), kr, 2)
	mustKey(t, stores[0], "alice", t0)
	seq := mustSeq(t, stores[0])
	g := mustGuard(t, stores[0], seq)
	done := make(chan error, 1)
	go func() {
		_, err := stores[1].Object(context.Background(), []store.ObjectionRequest{objection("o1", "alice", t0, "meta")})
		done <- err
	}()
	select {
	case err := <-done:
		t.Fatalf("Object completed while a Guard was held (err %v)", err)
	case <-time.After(waitShort):
	}
	wantObjection(t, stores[0], "alice", time.Time{}, nil)
	mustRelease(t, g)
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Object after Release: %v", err)
		}
	case <-time.After(waitLong):
		t.Fatalf("Object still blocked %v after the Guard was released", waitLong)
	}
	g = mustGuard(t, stores[0], seq)
	if fmt.Sprint(g.Forgotten()) != fmt.Sprint([]store.SubjectHash{stores[0].Hash("alice")}) {
		t.Errorf("the next Guard does not list the subject whose objection changed")
	}
	next := g.Position().Seq
	mustRelease(t, g)
	mustObject(t, stores[0], objection("o0", "alice", t0.Add(-time.Minute), "crm")) // superseded
	g = mustGuard(t, stores[0], next)
	if len(g.Forgotten()) != 0 {
		t.Errorf("a superseded state is listed by the next Guard")
	}
	mustRelease(t, g)
}

// testObjectionWithKey: WithKey returns the subject's key for an applied
// state, nothing for a superseded one or an unknown subject.
func (s *suite) testObjectionWithKey(t *testing.T) {
	ks := s.mustOpen(t, MustKeyring(t, MustKEK(t, 1)))
	key := mustKey(t, ks, "alice", t0)
	with := func(r store.ObjectionRequest) store.ObjectionRequest { r.WithKey = true; return r }
	res := mustObject(t, ks, with(objection("o2", "alice", t0.Add(time.Minute), "meta")),
		with(objection("o1", "alice", t0, "meta")), with(objection("o3", "nobody", t0, "meta")))
	if !bytes.Equal(res[0].Key, key) {
		t.Errorf("WithKey: applied state did not return the subject's key")
	}
	if res[1].Key != nil || res[2].Key != nil {
		t.Errorf("WithKey: a superseded state or an unknown subject returned a key")
	}
	// A repetition returns it again (a redone batch derives the same notices).
	if res := mustObject(t, ks, with(objection("o2", "alice", t0.Add(time.Minute), "meta"))); !bytes.Equal(res[0].Key, key) {
		t.Errorf("WithKey: a repeated request did not return the key")
	}
}

// testObjectionLog: ObjectionLog lists every carried-out request in
// order, with its outcome, from a given time.
func (s *suite) testObjectionLog(t *testing.T) {
	ks := s.mustOpen(t, MustKeyring(t, MustKEK(t, 1)))
	mustKey(t, ks, "alice", t0)
	mustObject(t, ks, objection("o1", "alice", t0.Add(time.Minute), "meta", "crm"))
	mustObject(t, ks, objection("o0", "alice", t0, "meta"), objection("o2", "bob", t0, store.AllSystems))
	mustObject(t, ks, objection("o1", "alice", t0.Add(time.Minute), "meta", "crm")) // a repeat: not logged again
	var got []store.ObjectionRecord
	a := mustAuditor(t, ks)
	err := a.ObjectionLog(context.Background(), time.Time{}, func(r store.ObjectionRecord) error {
		got = append(got, r)
		return nil
	})
	if err != nil {
		t.Fatalf("ObjectionLog: %v", err)
	}
	if len(got) != 3 {
		t.Fatalf("ObjectionLog: got %d records, want 3", len(got))
	}
	ids := map[string]store.ObjectionRecord{}
	for i, r := range got {
		ids[r.RequestID] = r
		if i > 0 && r.AppliedAt.Before(got[i-1].AppliedAt) {
			t.Errorf("ObjectionLog: not in order of application")
		}
	}
	if r := ids["o1"]; r.Subject != ks.Hash("alice") || r.Status != store.ObjectionApplied || r.Superseded ||
		!slices.Equal(r.Systems, []string{"meta", "crm"}) || !r.EffectiveAt.Equal(t0.Add(time.Minute)) {
		t.Errorf("ObjectionLog o1: got %+v", r)
	}
	if r := ids["o0"]; !r.Superseded {
		t.Errorf("ObjectionLog o0: got %+v, want superseded", r)
	}
	if r := ids["o2"]; r.Status != store.ObjectionUnknownSubject || !slices.Equal(r.Systems, []string{store.AllSystems}) {
		t.Errorf("ObjectionLog o2: got %+v", r)
	}
	// From after the first record: the later ones only.
	var later int
	err = a.ObjectionLog(context.Background(), got[0].AppliedAt.Add(time.Millisecond), func(r store.ObjectionRecord) error {
		later++
		return nil
	})
	if err != nil {
		t.Fatalf("ObjectionLog: %v", err)
	}
	if got[2].AppliedAt.After(got[0].AppliedAt) && later == 0 {
		t.Errorf("ObjectionLog since a later time lists nothing")
	}
}
