package storetest

import (
	"bytes"
	"context"
	"testing"
	"time"

	"github.com/hygiene/pseudonymizer/store"
)

// mustAuditor returns ks as a store.Auditor.
func mustAuditor(t *testing.T, ks store.KeyStore) store.Auditor {
	t.Helper()
	if c, ok := ks.(*closer); ok {
		ks = c.KeyStore
	}
	a, ok := ks.(store.Auditor)
	if !ok {
		t.Fatalf("%T does not implement store.Auditor", ks)
	}
	return a
}

func mustSubject(t *testing.T, a store.Auditor, id string) store.SubjectState {
	t.Helper()
	st, err := a.Subject(context.Background(), id)
	if err != nil {
		t.Fatalf("Subject: %v", err)
	}
	return st
}

func (s *suite) testSubject(t *testing.T) {
	ks := s.mustOpen(t, MustKeyring(t, MustKEK(t, 1)))
	a := mustAuditor(t, ks)

	// Unknown, and asking does not create anything.
	st := mustSubject(t, a, "carol")
	if st.Key != nil || st.Forgotten != nil || !st.KeyCreatedAt.IsZero() || st.Hash != ks.Hash("carol") {
		t.Fatalf("unknown subject: got %+v", st)
	}
	wantStatuses(t, mustForget(t, ks, forget("r0", "carol", t0)), store.UnknownSubject)

	// Active: the key Resolve returns, and when it was created.
	before := time.Now().Add(-time.Second)
	key := mustKey(t, ks, "alice", t0)
	after := time.Now().Add(time.Second)
	st = mustSubject(t, a, "alice")
	if !bytes.Equal(st.Key, key) || st.Forgotten != nil {
		t.Fatalf("active subject: got key %v, forgotten %+v; want its key and no tombstone", st.Key != nil, st.Forgotten)
	}
	if st.KeyCreatedAt.Before(before) || st.KeyCreatedAt.After(after) {
		t.Errorf("KeyCreatedAt %v not within [%v, %v]", st.KeyCreatedAt, before, after)
	}

	// Forgotten: no key, the tombstone with the request that made it.
	res := mustForget(t, ks, forget("req-alice-1", "alice", t0.Add(time.Minute)))
	st = mustSubject(t, a, "alice")
	switch {
	case st.Key != nil || !st.KeyCreatedAt.IsZero():
		t.Errorf("forgotten subject still reports a key")
	case st.Forgotten == nil:
		t.Fatalf("forgotten subject: no tombstone")
	case !st.Forgotten.RequestedAt.Equal(t0.Add(time.Minute)):
		t.Errorf("tombstone RequestedAt %v, want %v", st.Forgotten.RequestedAt, t0.Add(time.Minute))
	case st.Forgotten.RequestID != "req-alice-1":
		t.Errorf("tombstone RequestID %q, want req-alice-1", st.Forgotten.RequestID)
	case !st.Forgotten.CompletedAt.Equal(res[0].CompletedAt):
		t.Errorf("tombstone CompletedAt %v, want %v", st.Forgotten.CompletedAt, res[0].CompletedAt)
	}

	// An earlier request does not move the tombstone back; a fresh key after
	// the tombstone is active again, and the tombstone is still reported.
	mustForget(t, ks, forget("req-alice-0", "alice", t0))
	fresh := mustKey(t, ks, "alice", t0.Add(time.Hour))
	st = mustSubject(t, a, "alice")
	if !bytes.Equal(st.Key, fresh) || bytes.Equal(fresh, key) {
		t.Errorf("after a fresh key: Subject returns another key")
	}
	if st.Forgotten == nil || st.Forgotten.RequestID != "req-alice-1" {
		t.Errorf("after a fresh key: tombstone %+v, want the one of req-alice-1", st.Forgotten)
	}
}

func (s *suite) testForgetLog(t *testing.T) {
	ks := s.mustOpen(t, MustKeyring(t, MustKEK(t, 1)))
	a := mustAuditor(t, ks)
	mustKey(t, ks, "alice", t0)
	var want []store.ForgetRecord
	for i, r := range []store.ForgetRequest{
		forget("r1", "alice", t0.Add(time.Second)),
		forget("r2", "alice", t0.Add(2*time.Second)),
		forget("r3", "bob", t0.Add(3*time.Second)),
	} {
		res := mustForget(t, ks, r)
		want = append(want, store.ForgetRecord{RequestID: r.RequestID, Subject: ks.Hash(r.SubjectID),
			Status: res[0].Status, RequestedAt: r.RequestedAt, CompletedAt: res[0].CompletedAt})
		if i == 0 {
			// Separate the completion times, so that "since" splits them.
			for !time.Now().After(res[0].CompletedAt.Add(2 * time.Millisecond)) {
				time.Sleep(time.Millisecond)
			}
		}
	}
	// A repeated request is not logged twice.
	mustForget(t, ks, forget("r1", "alice", t0.Add(time.Second)))

	list := func(since time.Time) []store.ForgetRecord {
		t.Helper()
		var got []store.ForgetRecord
		if err := a.ForgetLog(context.Background(), since, func(r store.ForgetRecord) error {
			got = append(got, r)
			return nil
		}); err != nil {
			t.Fatalf("ForgetLog: %v", err)
		}
		for i := 1; i < len(got); i++ {
			if got[i].CompletedAt.Before(got[i-1].CompletedAt) {
				t.Errorf("ForgetLog out of completion order at %d", i)
			}
		}
		return got
	}
	same := func(what string, got, want []store.ForgetRecord) {
		t.Helper()
		if len(got) != len(want) {
			t.Fatalf("%s: %d records, want %d: %+v", what, len(got), len(want), got)
		}
		byID := map[string]store.ForgetRecord{}
		for _, r := range got {
			byID[r.RequestID] = r
		}
		for _, w := range want {
			g, ok := byID[w.RequestID]
			if !ok || g.Subject != w.Subject || g.Status != w.Status || !g.RequestedAt.Equal(w.RequestedAt) || !g.CompletedAt.Equal(w.CompletedAt) {
				t.Errorf("%s: request %s: got %+v, want %+v", what, w.RequestID, g, w)
			}
		}
	}
	same("all", list(time.Time{}), want)
	same("since the second", list(want[1].CompletedAt), want[1:])
	if got := list(time.Now().Add(time.Hour)); len(got) != 0 {
		t.Errorf("since the future: %d records", len(got))
	}
	// fn's error stops the listing and is returned as is.
	stop := context.Canceled
	n := 0
	if err := a.ForgetLog(context.Background(), time.Time{}, func(store.ForgetRecord) error { n++; return stop }); err != stop || n != 1 {
		t.Errorf("ForgetLog with a failing fn: err %v after %d calls; want %v after 1", err, n, stop)
	}
}
