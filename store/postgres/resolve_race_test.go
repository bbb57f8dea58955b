package postgres_test

import (
	"bytes"
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/hygiene/pseudonymizer/store"
	"github.com/hygiene/pseudonymizer/store/postgres"
	"github.com/hygiene/pseudonymizer/store/postgres/pgtest"
	"github.com/hygiene/pseudonymizer/store/storetest"
)

// TestResolveRacesAfterRead has another store forget subjects, and create
// a key, after Resolve has read them as new and before it creates their
// keys: the case that Resolve's insert without ON CONFLICT fails on (a
// key created meanwhile) and the cases its tombstone rows decide (a
// tombstone at the event: no key; one before it: a key, and the
// tombstone's time). Resolve's entries must agree with what the database
// holds afterwards.
func TestResolveRacesAfterRead(t *testing.T) {
	t0 := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	for _, creator := range []bool{false, true} {
		t.Run(fmt.Sprintf("creator=%v", creator), func(t *testing.T) {
			ctx := context.Background()
			dsn := pgtest.MustTempSchemaDSN(t)
			kr := storetest.MustKeyring(t, storetest.MustKEK(t, 1))
			var stores []*postgres.Store
			for range 2 {
				s, err := postgres.Open(ctx, dsn, kr)
				if err != nil {
					t.Fatalf("Open: %v", err)
				}
				t.Cleanup(func() { _ = s.Close() })
				stores = append(stores, s)
			}
			a, b := stores[0], stores[1]
			lookups := []store.Lookup{
				{SubjectID: "forgotten", Latest: t0},             // tombstone at its event: no key
				{SubjectID: "reborn", Latest: t0.Add(time.Hour)}, // tombstone before: a key
				{SubjectID: "taken", Latest: t0},                 // created by b meanwhile (creator)
				{SubjectID: "plain", Latest: t0},
			}
			var takenKey []byte
			var hookErr error
			calls := 0
			postgres.SetAfterRead(a, func() {
				calls++
				if _, err := b.Forget(ctx, []store.ForgetRequest{
					{RequestID: "r1", SubjectID: "forgotten", RequestedAt: t0},
					{RequestID: "r2", SubjectID: "reborn", RequestedAt: t0},
				}); err != nil {
					hookErr = err
					return
				}
				if creator {
					e, err := b.Resolve(ctx, []store.Lookup{{SubjectID: "taken", Latest: t0}})
					if err != nil {
						hookErr = err
						return
					}
					takenKey = e[0].Key
				}
			})
			got, err := a.Resolve(ctx, lookups)
			postgres.SetAfterRead(a, nil)
			if err != nil || hookErr != nil || calls != 1 {
				t.Fatalf("Resolve: %v; in between: %v (%d calls)", err, hookErr, calls)
			}
			if e := got[0]; e.Key != nil || !e.ForgottenAt.Equal(t0) {
				t.Errorf("forgotten: key %v, ForgottenAt %v; want none, %v", e.Key != nil, e.ForgottenAt, t0)
			}
			if e := got[1]; e.Key == nil || !e.ForgottenAt.Equal(t0) {
				t.Errorf("reborn: key %v, ForgottenAt %v; want a key, %v", e.Key != nil, e.ForgottenAt, t0)
			}
			if creator && (takenKey == nil || !bytes.Equal(got[2].Key, takenKey)) {
				t.Errorf("taken: got another key than the store that created it first")
			}
			want, err := b.Resolve(ctx, lookups)
			if err != nil {
				t.Fatalf("Resolve again: %v", err)
			}
			for i, e := range got {
				if !bytes.Equal(e.Key, want[i].Key) || !e.ForgottenAt.Equal(want[i].ForgottenAt) {
					t.Errorf("%s: Resolve returned key %v, ForgottenAt %v; the store holds key %v, ForgottenAt %v (same key: %v)",
						lookups[i].SubjectID, e.Key != nil, e.ForgottenAt, want[i].Key != nil, want[i].ForgottenAt, bytes.Equal(e.Key, want[i].Key))
				}
			}
		})
	}
}

// TestConcurrentCreatorsDoNotDeadlock has two stores create the keys of
// overlapping sets of new subjects at the same moment, as the lookup API
// and the stream do when a shop asks for a first-time buyer's pseudonyms
// while the order is processed, or two instances during a rebalance: a
// large batch against small ones that share some of its subjects. Each
// insert waits for the other's uncommitted keys; unless both insert in
// the same order, two of them can wait for each other, and PostgreSQL
// breaks the cycle after deadlock_timeout (1 s) by failing one.
func TestConcurrentCreatorsDoNotDeadlock(t *testing.T) {
	ctx := context.Background()
	dsn := pgtest.MustTempSchemaDSN(t)
	kr := storetest.MustKeyring(t, storetest.MustKEK(t, 1))
	open := func() *postgres.Store {
		s, err := postgres.Open(ctx, dsn, kr)
		if err != nil {
			t.Fatalf("Open: %v", err)
		}
		t.Cleanup(func() { _ = s.Close() })
		return s
	}
	big, small := open(), open()
	now := time.Now()
	for round := range 32 {
		const n = 4096
		all := make([]store.Lookup, n)
		for i := range all {
			all[i] = store.Lookup{SubjectID: fmt.Sprintf("dl-%d-%d", round, i), Latest: now}
		}
		errs := make(chan error, 2)
		start := make(chan struct{})
		go func() {
			<-start
			_, err := big.Resolve(ctx, all)
			errs <- err
		}()
		go func() {
			<-start
			// Small batches of every 37th subject, from the end.
			var err error
			for j := n - 1; j >= 0 && err == nil; j -= 37 * 16 {
				var part []store.Lookup
				for k := j; k >= 0 && k > j-37*16; k -= 37 {
					part = append(part, all[k])
				}
				_, err = small.Resolve(ctx, part)
			}
			errs <- err
		}()
		close(start)
		for range 2 {
			if err := <-errs; err != nil {
				t.Fatalf("round %d: concurrent Resolve: %v", round, err)
			}
		}
	}
}
