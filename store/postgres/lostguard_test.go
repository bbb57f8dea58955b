package postgres_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/hygiene/pseudonymizer/store"
	"github.com/hygiene/pseudonymizer/store/postgres"
	"github.com/hygiene/pseudonymizer/store/postgres/pgtest"
	"github.com/hygiene/pseudonymizer/store/storetest"
)

// lostGuardWait is the tests' WithLostGuardWait: long enough to tell a
// wait from none, short enough for a test.
const lostGuardWait = 1500 * time.Millisecond

// openPair opens two stores on one fresh schema, as two instances would.
func openPair(t *testing.T) (a, b *postgres.Store) {
	t.Helper()
	dsn := pgtest.MustTempSchemaDSN(t)
	kr := storetest.MustKeyring(t, storetest.MustKEK(t, 1))
	open := func() *postgres.Store {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		s, err := postgres.Open(ctx, dsn, kr, postgres.WithLostGuardWait(lostGuardWait))
		if err != nil {
			t.Fatalf("Open: %v", err)
		}
		t.Cleanup(func() { s.Close() })
		return s
	}
	return open(), open()
}

// guardConns counts the registered guard connections of s's schema, and
// those a Forget found gone.
func guardConns(t *testing.T, s *postgres.Store) (all, gone int) {
	t.Helper()
	ctx := context.Background()
	err := postgres.QueryRow(ctx, s, "SELECT count(*), count(dead_since) FROM pz_guard_conns", &all, &gone)
	if err != nil {
		t.Fatal(err)
	}
	return all, gone
}

// TestForgetWaitsForLostGuard: a guard whose connection dies (here: its
// backend is terminated, as if the server restarted or a proxy cut it)
// while its holder may be committing to Kafka makes the next Forget wait,
// after committing and outside the lock, until that commit is certainly
// decided; a redone Forget waits for the rest of the same time. The
// processor's end-to-end test is TestLostGuardDelaysConfirmation.
func TestForgetWaitsForLostGuard(t *testing.T) {
	a, b := openPair(t)
	ctx := context.Background()
	g, err := a.Guard(ctx, store.Position{})
	if err != nil {
		t.Fatalf("Guard: %v", err)
	}
	defer g.Release(ctx) // Close waits for held guards
	conn := pgtest.MustConnect(t)
	if _, err := conn.Exec(ctx, "SELECT pg_terminate_backend($1)", int32(postgres.GuardPID(g))); err != nil {
		t.Fatalf("terminate the guard's backend: %v", err)
	}
	start := time.Now()
	// The first attempt gives up before the wait is over (a batch
	// deadline, a shutdown): Forget has committed, and says so.
	short, cancel := context.WithTimeout(ctx, 200*time.Millisecond)
	_, err = b.Forget(short, []store.ForgetRequest{{RequestID: "r1", SubjectID: "alice"}})
	cancel()
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Forget with a lost guard and a short deadline: got %v, want a deadline error", err)
	}
	if all, gone := guardConns(t, b); all != 1 || gone != 1 {
		t.Fatalf("guard connections: %d registered, %d gone; want 1 and 1", all, gone)
	}
	// The redone call waits for the rest of the same time.
	res, err := b.Forget(ctx, []store.ForgetRequest{{RequestID: "r1", SubjectID: "alice"}})
	if err != nil {
		t.Fatalf("redone Forget: %v", err)
	}
	if waited := time.Since(start); waited < lostGuardWait-50*time.Millisecond {
		t.Errorf("Forget returned %v after the guard was lost; want at least the lost-guard wait %v", waited, lostGuardWait)
	}
	if res[0].Status != store.UnknownSubject {
		t.Errorf("status %v, want %v", res[0].Status, store.UnknownSubject)
	}
	if err := g.Release(ctx); !errors.Is(err, store.ErrUnavailable) {
		t.Errorf("Release of the lost guard: got %v, want ErrUnavailable", err)
	}
	// Once its wait is over, the next Forget deletes the row.
	if _, err := b.Forget(ctx, []store.ForgetRequest{{RequestID: "r2", SubjectID: "bob"}}); err != nil {
		t.Fatalf("Forget: %v", err)
	}
	if all, gone := guardConns(t, b); all != 0 || gone != 0 {
		t.Errorf("after the wait: %d registered, %d gone; want none", all, gone)
	}
}

// TestLiveGuardConnectionsAreNotWaitedFor: connections that took guards
// and are alive, including the caller's own, are never taken for lost, and
// a store that is closed in good health removes its registrations.
func TestLiveGuardConnectionsAreNotWaitedFor(t *testing.T) {
	a, b := openPair(t)
	ctx := context.Background()
	for _, s := range []*postgres.Store{a, b} {
		g, err := s.Guard(ctx, store.Position{})
		if err != nil {
			t.Fatalf("Guard: %v", err)
		}
		if err := g.Release(ctx); err != nil {
			t.Fatalf("Release: %v", err)
		}
	}
	for i, s := range []*postgres.Store{a, b} {
		// The pool hands Forget the connection that took the guard.
		if _, err := s.Forget(ctx, []store.ForgetRequest{{RequestID: "r" + string(rune('1'+i)), SubjectID: "alice"}}); err != nil {
			t.Fatalf("Forget: %v", err)
		}
	}
	if all, gone := guardConns(t, b); all != 2 || gone != 0 {
		t.Fatalf("guard connections: %d registered, %d gone; want 2 and 0", all, gone)
	}
	a.Close()
	if all, gone := guardConns(t, b); all != 1 || gone != 0 {
		t.Errorf("after closing one store: %d registered, %d gone; want 1 and 0", all, gone)
	}
}
