package storetest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/hygiene/pseudonymizer/store"
)

// testRotationKilledAnywhere (issue 24, item 4): the documented KEK
// rotation survives a kill of rewrap after any batch. Ten subject keys,
// two keys retained for erasure notices and the index key are rotated with
// Rewrap(3), killed after each number of batches in turn. Then the store opens
// with the new KEK alone only if rewrap finished; otherwise Open refuses,
// naming the old KEK (the old code opened, because it re-wrapped the index
// key first and checked only that, and then every batch that touched an
// old key failed for ever). With both KEKs configured the rotation
// resumes; once it reports 0, the new KEK alone reads every key, the
// retained ones included.
func (s *suite) testRotationKilledAnywhere(t *testing.T) {
	// Every kill point: before the first batch, after each one, and after
	// the rotation finished (it takes 7 batches of 3).
	for kill := range 9 {
		t.Run(fmt.Sprintf("killed after %d batches", kill), func(t *testing.T) {
			s.rotateKilledAfter(t, kill)
		})
	}
}

func (s *suite) rotateKilledAfter(t *testing.T, kill int) {
	ctx := context.Background()
	oldKEK, newKEK := MustKEK(t, 1), MustKEK(t, 2)
	ks := s.mustOpen(t, MustKeyring(t, oldKEK))
	var lookups []store.Lookup
	for i := range 12 {
		lookups = append(lookups, lookup(fmt.Sprintf("subject-%d", i), t0))
	}
	before := mustResolve(t, ks, lookups...)
	retain := []store.ForgetRequest{
		{RequestID: "r10", SubjectID: "subject-10", RequestedAt: t0.Add(time.Hour), Retain: true},
		{RequestID: "r11", SubjectID: "subject-11", RequestedAt: t0.Add(time.Hour), Retain: true},
	}
	wipe(mustForget(t, ks, retain...))

	ks = s.mustReopen(t, ks, MustKeyring(t, newKEK, oldKEK))
	done := false
	for range kill {
		n, err := ks.Rewrap(ctx, 3)
		if err != nil {
			t.Fatalf("Rewrap: %v", err)
		}
		if n == 0 {
			done = true
			break
		}
	}
	if err := ks.Close(); err != nil { // the kill
		t.Fatalf("close: %v", err)
	}

	// The old KEK removed, maybe too early: the store opens only if the
	// new KEK reads every key, and otherwise names the old KEK.
	only, err := s.open(t, MustKeyring(t, newKEK))
	switch {
	case done && err != nil:
		t.Fatalf("open with the new KEK after rewrap finished: %v", err)
	case err == nil:
		if _, err := only.Resolve(ctx, lookups[:10]); err != nil {
			t.Errorf("the store opened with the new KEK alone, but a key is unreadable: %v", err)
		}
		if res, err := only.Forget(ctx, retain); err != nil {
			t.Errorf("the store opened with the new KEK alone, but a retained key is unreadable: %v", err)
		} else {
			wipe(res)
		}
		only.Close()
	case !errors.Is(err, store.ErrWrongKEK) || !strings.Contains(err.Error(), fmt.Sprintf("%08x", oldKEK.ID())):
		t.Fatalf("open with the new KEK alone: %v; want ErrWrongKEK naming KEK %08x", err, oldKEK.ID())
	}

	// With both KEKs the rotation resumes and completes.
	ks = s.mustOpen(t, MustKeyring(t, newKEK, oldKEK))
	for round := 0; ; round++ {
		if round > 20 {
			t.Fatal("Rewrap does not converge")
		}
		n, err := ks.Rewrap(ctx, 3)
		if err != nil {
			t.Fatalf("Rewrap: %v", err)
		}
		if n == 0 {
			break
		}
	}
	ks = s.mustReopen(t, ks, MustKeyring(t, newKEK))
	for i, e := range mustResolve(t, ks, lookups[:10]...) {
		if !bytes.Equal(e.Key, before[i].Key) {
			t.Errorf("subject %d: key changed across the rotation", i)
		}
	}
	res, err := ks.Forget(ctx, retain)
	if err != nil {
		t.Fatalf("repeated forget with retained keys: %v", err)
	}
	for i, r := range res {
		if !bytes.Equal(r.Key, before[10+i].Key) {
			t.Errorf("retained key of subject %d is not returned after the rotation", 10+i)
		}
		clear(r.Key)
	}
}

// wipe clears the keys that Forget returned.
func wipe(res []store.ForgetResult) {
	for _, r := range res {
		clear(r.Key)
	}
}
