package embedded

import (
	"bytes"
	"context"
	"errors"
	"fmt"

	bolt "go.etcd.io/bbolt"

	"github.com/hygiene/pseudonymizer/store"
)

// Rewrap re-wraps up to limit keys (the index key counts as one) that are
// not wrapped by the keyring's active KEK, in one write transaction.
func (s *Store) Rewrap(ctx context.Context, limit int) (int, error) {
	if limit <= 0 {
		return 0, fmt.Errorf("embedded: rewrap: limit must be positive, got %d", limit)
	}
	if err := ctx.Err(); err != nil {
		return 0, fmt.Errorf("embedded: rewrap: %w", err)
	}
	active := s.kr.ActiveID()
	changed := 0
	err := s.db.Update(func(tx *bolt.Tx) error {
		changed = 0
		meta := tx.Bucket(bucketMeta)
		if w := meta.Get(metaIndexKey); !current(w, active) {
			nw, err := rewrap(s.kr, w, store.PurposeIndexKey, nil)
			if err != nil {
				return err
			}
			if err := meta.Put(metaIndexKey, nw); err != nil {
				return err
			}
			changed++
		}
		keys := tx.Bucket(bucketKeys)
		type update struct{ h, w []byte }
		var updates []update
		c := keys.Cursor()
		for k, v := c.First(); k != nil && changed+len(updates) < limit; k, v = c.Next() {
			if current(v, active) {
				continue
			}
			nw, err := rewrap(s.kr, v, store.PurposeSubjectKey, k)
			if err != nil {
				return err
			}
			updates = append(updates, update{h: bytes.Clone(k), w: nw})
		}
		for _, u := range updates {
			if err := keys.Put(u.h, u.w); err != nil {
				return err
			}
		}
		changed += len(updates)
		return nil
	})
	if err != nil {
		return 0, fmt.Errorf("embedded: rewrap: %w", err)
	}
	return changed, nil
}

// current reports whether wrapped names the active KEK.
func current(wrapped []byte, active uint32) bool {
	id, ok := store.WrappedBy(wrapped)
	return ok && id == active
}

// rewrap unwraps a key and wraps it again with the active KEK.
func rewrap(kr *store.Keyring, wrapped []byte, purpose string, binding []byte) ([]byte, error) {
	key, err := kr.Unwrap(wrapped, purpose, binding)
	if err != nil {
		if errors.Is(err, store.ErrWrongKEK) {
			return nil, err
		}
		return nil, fmt.Errorf("%w: %v", store.ErrWrongKEK, err)
	}
	defer clear(key)
	return kr.Wrap(key, purpose, binding)
}
