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
// and reads the forget log after since.
func (s *Store) Guard(ctx context.Context, since uint64) (store.Guard, error) {
	if err := s.guard.Acquire(ctx, 1); err != nil {
		return nil, fmt.Errorf("embedded: guard: %w", err)
	}
	g := &guard{s: s}
	err := s.db.View(func(tx *bolt.Tx) error {
		meta := tx.Bucket(bucketMeta)
		g.seq = getUint(meta.Get(metaSeq))
		pruned := getUint(meta.Get(metaPruned))
		g.complete = since <= g.seq && since >= pruned && g.seq-since <= maxLog
		if since >= g.seq || g.seq-since > maxLog {
			return nil
		}
		c := tx.Bucket(bucketLog).Cursor()
		for k, v := c.Seek(putUint(since + 1)); k != nil; k, v = c.Next() {
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
	seq       uint64
	forgotten []store.SubjectHash
	complete  bool
	once      sync.Once
	released  atomic.Bool
}

// Seq returns the newest forget sequence number at the time of the guard.
func (g *guard) Seq() uint64 { return g.seq }

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
