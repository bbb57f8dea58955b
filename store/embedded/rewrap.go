package embedded

import (
	"bytes"
	"context"
	"fmt"

	bolt "go.etcd.io/bbolt"

	"github.com/hygiene/pseudonymizer/store"
)

// Rewrap re-wraps up to limit keys (the index key counts as one) that are
// not wrapped by the keyring's active KEK, in one write transaction:
// retained keys first, then subject keys, and the index key last, in a
// call that found no other key to change.
// Successive calls continue where the last one stopped; 0 means a pass over
// every key found none to change.
func (s *Store) Rewrap(ctx context.Context, limit int) (int, error) {
	if limit <= 0 {
		return 0, fmt.Errorf("embedded: rewrap: limit must be positive, got %d", limit)
	}
	if err := ctx.Err(); err != nil {
		return 0, fmt.Errorf("embedded: rewrap: %w", err)
	}
	s.rewrapMu.Lock()
	defer s.rewrapMu.Unlock()
	// Keys retained for erasure notices first (normally none): a call
	// that changed some reports them, so 0 still means all are current.
	if n, err := s.rewrapRetained(limit); err != nil || n > 0 {
		if err != nil {
			return 0, fmt.Errorf("embedded: rewrap: %w", err)
		}
		return n, nil
	}
	for {
		from := s.rewrapAfter
		n, next, err := s.rewrapFrom(from, limit)
		if err != nil {
			s.rewrapAfter = nil
			return 0, fmt.Errorf("embedded: rewrap: %w", err)
		}
		s.rewrapAfter = next
		if n == 0 && from != nil {
			continue // nothing after the cursor: check from the start once
		}
		return n, nil
	}
}

// rewrapFrom re-wraps up to limit keys after the subject hash from (nil:
// from the start) and returns how many it changed and where the next call
// continues (nil: from the start).
func (s *Store) rewrapFrom(from []byte, limit int) (changed int, next []byte, err error) {
	active := s.kr.ActiveID()
	err = s.db.Update(func(tx *bolt.Tx) error {
		changed, next = 0, nil
		keys := tx.Bucket(bucketKeys)
		type update struct{ h, w []byte }
		var updates []update
		c := keys.Cursor()
		k, v := c.First()
		if from != nil {
			if k, v = c.Seek(from); bytes.Equal(k, from) {
				k, v = c.Next()
			}
		}
		for ; k != nil && changed+len(updates) < limit; k, v = c.Next() {
			if current(v, active) {
				continue
			}
			nw, err := s.kr.Rewrap(v, store.PurposeSubjectKey, k)
			if err != nil {
				return err
			}
			updates = append(updates, update{h: bytes.Clone(k), w: nw})
		}
		if k != nil { // stopped at the limit
			next = from
			if len(updates) > 0 {
				next = updates[len(updates)-1].h
			}
		}
		for _, u := range updates {
			if err := keys.Put(u.h, u.w); err != nil {
				return err
			}
		}
		changed += len(updates)
		// The index key last, once a scan from the start found no stale
		// subject key: until then the old KEK is still needed, and Open's
		// check says so by name, so a rotation killed at any point
		// leaves keys that the configured KEKs unwrap.
		meta := tx.Bucket(bucketMeta)
		if w := meta.Get(metaIndexKey); from == nil && k == nil && changed == 0 && !current(w, active) {
			nw, err := s.kr.Rewrap(w, store.PurposeIndexKey, nil)
			if err != nil {
				return err
			}
			if err := meta.Put(metaIndexKey, nw); err != nil {
				return err
			}
			changed++
		}
		return nil
	})
	return changed, next, err
}

// current reports whether wrapped names the active KEK.
func current(wrapped []byte, active uint32) bool {
	id, ok := store.WrappedBy(wrapped)
	return ok && id == active
}
