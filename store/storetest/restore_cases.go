package storetest

import (
	"context"
	"fmt"
	"testing"

	"github.com/hygiene/pseudonymizer/store"
)

// guardAt takes a guard at position since and releases it at once.
func guardAt(t *testing.T, ks store.KeyStore, since store.Position) (pos store.Position, forgotten []store.SubjectHash, diverged, complete bool) {
	t.Helper()
	g, err := ks.Guard(context.Background(), since)
	if err != nil {
		t.Fatalf("Guard(%d): %v", since.Seq, err)
	}
	defer mustRelease(t, g)
	if g.Position().Seq != g.Seq() {
		t.Errorf("Guard(%d): Position().Seq %d, Seq() %d", since.Seq, g.Position().Seq, g.Seq())
	}
	return g.Position(), g.Forgotten(), g.Diverged(), g.Complete()
}

// testGuardDetectsRestore: a store restored to an older state while an
// instance runs makes the instance's next guard report Diverged (and not
// Complete), both before and after new forgets bring the sequence number
// back to where the instance last saw it. An instance
// whose last position predates the restore point is unaffected.
func (s *suite) testGuardDetectsRestore(t *testing.T) {
	if s.cfg.snapshot == nil {
		t.Skip("the store under test has no WithSnapshot")
	}
	kr := MustKeyring(t, MustKEK(t, 1))
	ks := s.mustOpen(t, kr)
	mustKey(t, ks, "alice", t0)
	mustForget(t, ks, forget("r1", "bob", t0))
	p1, _, _, _ := guardAt(t, ks, store.Position{})
	if p1.Seq != 1 || p1.Tag == ([store.TagSize]byte{}) {
		t.Fatalf("after one forget: got position %d with a zero tag %v; want 1 with a tag", p1.Seq, p1.Tag == [store.TagSize]byte{})
	}
	p0, _, div, complete := guardAt(t, ks, store.Position{Seq: 0})
	if p0 != p1 || div || !complete {
		t.Errorf("Guard(0 untagged): got %d, diverged %v, complete %v; want position 1, false, true", p0.Seq, div, complete)
	}

	restore := s.cfg.snapshot(t) // the backup: alice has a key, seq 1
	mustForget(t, ks, forget("r2", "alice", t0))
	// The running instance learns that alice was forgotten.
	p2, forgotten, div, complete := guardAt(t, ks, p1)
	if p2.Seq != 2 || div || !complete || fmt.Sprint(forgotten) != fmt.Sprint([]store.SubjectHash{ks.Hash("alice")}) {
		t.Fatalf("Guard(p1) before the restore: got seq %d, diverged %v, complete %v, %d forgotten; want 2, false, true, alice",
			p2.Seq, div, complete, len(forgotten))
	}
	if _, _, div, complete := guardAt(t, ks, p2); div || !complete {
		t.Errorf("Guard(p2) with no change: got diverged %v, complete %v; want false, true", div, complete)
	}

	// The operator restores the backup while the instance runs.
	if err := ks.Close(); err != nil {
		t.Fatalf("close: %v", err)
	}
	restore()
	ks = s.mustOpen(t, kr)
	if e := mustResolve(t, ks, lookup("alice", t0))[0]; e.Key == nil {
		t.Fatalf("the restored store has no key of alice; the snapshot did not restore")
	}
	pos, _, div, complete := guardAt(t, ks, p2)
	if pos.Seq != 1 || !div || complete {
		t.Errorf("Guard(p2) after the restore: got seq %d, diverged %v, complete %v; want 1, true, false", pos.Seq, div, complete)
	}
	// New forgets bring the counter back to where the instance was: the
	// sequence number alone can no longer tell.
	mustForget(t, ks, forget("r3", "carol", t0))
	pos, forgotten, div, complete = guardAt(t, ks, p2)
	if pos.Seq != p2.Seq || !div || complete {
		t.Errorf("Guard(p2) after the restore and one forget: got seq %d (%d forgotten), diverged %v, complete %v; want %d, true, false",
			pos.Seq, len(forgotten), div, complete, p2.Seq)
	}
	if pos == p2 {
		t.Errorf("the position after the restore and one forget equals the one before the restore")
	}
	// Once the instance took the new position, it follows the new log.
	if _, _, div, complete := guardAt(t, ks, pos); div || !complete {
		t.Errorf("Guard(new position): got diverged %v, complete %v; want false, true", div, complete)
	}
	// An instance that saw only p1 (the backup's state) missed nothing.
	_, forgotten, div, complete = guardAt(t, ks, p1)
	if div || !complete || fmt.Sprint(forgotten) != fmt.Sprint([]store.SubjectHash{ks.Hash("carol")}) {
		t.Errorf("Guard(p1) after the restore: got diverged %v, complete %v, %d forgotten; want false, true, carol", div, complete, len(forgotten))
	}
	// A store created afresh (another epoch) is detected too.
	p0.Seq, p0.Tag[0] = 0, p0.Tag[0]^1
	if _, _, div, complete := guardAt(t, ks, p0); !div || complete {
		t.Errorf("Guard(position 0 of another log): got diverged %v, complete %v; want true, false", div, complete)
	}
}

// testCloseWipesIndexKey: Close overwrites the store's index key in memory
// (see processor/doc.go, "Key material in memory"), so Hash no longer computes the stored hashes.
func (s *suite) testCloseWipesIndexKey(t *testing.T) {
	kr := MustKeyring(t, MustKEK(t, 1))
	ks := s.mustOpen(t, kr)
	before := ks.Hash("alice")
	if err := ks.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if after := ks.Hash("alice"); after == before {
		t.Errorf("Hash after Close still uses the index key: it was not wiped")
	}
}
