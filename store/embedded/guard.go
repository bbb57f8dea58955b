package embedded

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"

	bolt "go.etcd.io/bbolt"

	"github.com/hygiene/pseudonymizer/store"
)

// Guard takes the guard lock shared (waiting while a Forget runs or waits)
// and reads the forget log after since (and the tag of since).
func (s *Store) Guard(ctx context.Context, since store.Position) (store.Guard, error) {
	if err := s.guard.Acquire(ctx, 1); err != nil {
		return nil, fmt.Errorf("embedded: guard: %w", err)
	}
	g := &guard{s: s}
	err := s.db.View(func(tx *bolt.Tx) error {
		meta := tx.Bucket(bucketMeta)
		log := tx.Bucket(bucketLog)
		g.pos.Seq = getUint(meta.Get(metaSeq))
		if g.pos.Seq == 0 {
			copy(g.pos.Tag[:], meta.Get(metaEpoch))
		} else {
			copy(g.pos.Tag[:], meta.Get(metaTag))
		}
		pruned := getUint(meta.Get(metaPruned))
		// The tag of since: the newest entry's, the epoch, or the log entry's.
		var stored [store.TagSize]byte
		known := true
		switch {
		case since.Seq == g.pos.Seq:
			stored = g.pos.Tag
		case since.Seq == 0:
			copy(stored[:], meta.Get(metaEpoch))
		default:
			v := log.Get(putUint(since.Seq))
			known = v != nil
			if len(v) >= 40+store.TagSize {
				copy(stored[:], v[40:])
			}
		}
		g.diverged, g.complete = store.CheckSince(since, g.pos, pruned, s.maxLog, stored, known)
		if !g.complete {
			return nil
		}
		c := log.Cursor()
		for k, v := c.Seek(putUint(since.Seq + 1)); k != nil; k, v = c.Next() {
			if len(v) >= 32 {
				g.forgotten = append(g.forgotten, store.SubjectHash(v[:32]))
			}
		}
		return nil
	})
	if err != nil {
		s.guard.Release(1)
		return nil, fmt.Errorf("embedded: guard: %w", err)
	}
	return g, nil
}

// guard is a held shared guard lock.
type guard struct {
	s         *Store
	pos       store.Position
	forgotten []store.SubjectHash
	complete  bool
	diverged  bool
	once      sync.Once
	released  atomic.Bool
}

// Seq returns the newest forget sequence number at the time of the guard.
func (g *guard) Seq() uint64 { return g.pos.Seq }

// Position returns the newest position of the forget log at the time of the
// guard.
func (g *guard) Position() store.Position { return g.pos }

// Diverged reports that the forget log does not continue the requested
// position (the store file was replaced by an older copy, or recreated).
func (g *guard) Diverged() bool { return g.diverged }

// Forgotten returns the subjects forgotten after the requested sequence
// number, oldest first.
func (g *guard) Forgotten() []store.SubjectHash { return g.forgotten }

// Complete reports whether Forgotten lists every subject forgotten after the
// requested sequence number.
func (g *guard) Complete() bool { return g.complete }

// Check reports whether the guard is still held: an embedded guard lives
// in this process and is lost only by Release.
func (g *guard) Check(context.Context) error {
	if g.released.Load() {
		return errors.New("embedded: guard: already released")
	}
	return nil
}

// Release gives the guard up; later calls do nothing.
func (g *guard) Release(context.Context) error {
	g.once.Do(func() {
		g.released.Store(true)
		g.s.guard.Release(1)
	})
	return nil
}
