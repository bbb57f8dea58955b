package embedded

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/hygiene/pseudonymizer/store"
)

// A retained key (store.ForgetRequest.Retain) is an entry of
// bucketRetained: key the request hash, value the request's source
// partition (4 bytes) and offset (8), the time it was retained (8), the
// subject hash (32) the key is bound to, and the wrapped key as it was in
// bucketKeys.
const retainedHead = 4 + 8 + 8 + len(store.SubjectHash{})

// retain keeps the wrapped key that request r is destroying, if it asks to.
func retain(tx *bolt.Tx, r store.ForgetRequest, rh []byte, h store.SubjectHash, wrapped []byte, now time.Time) error {
	if !r.Retain || wrapped == nil {
		return nil
	}
	v := binary.BigEndian.AppendUint32(nil, uint32(r.Partition))
	v = binary.BigEndian.AppendUint64(v, uint64(r.Offset))
	v = putTime(v, now)
	v = append(v, h[:]...)
	v = append(v, wrapped...)
	return tx.Bucket(bucketRetained).Put(rh, v)
}

// giveRetained sets res.Key to the key retained for request r (request
// hash rh), unwrapped, if r asks for it.
func (s *Store) giveRetained(tx *bolt.Tx, res *store.ForgetResult, r store.ForgetRequest, rh []byte) error {
	if !r.Retain {
		return nil
	}
	v := tx.Bucket(bucketRetained).Get(rh)
	if len(v) <= retainedHead {
		return nil
	}
	key, err := s.kr.Unwrap(v[retainedHead:], store.PurposeSubjectKey, v[20:retainedHead])
	if err != nil {
		return wrongKEK("forget: retained key", err)
	}
	res.Key = key
	return nil
}

// Settle deletes the keys retained for reqs, in one write transaction.
func (s *Store) Settle(ctx context.Context, reqs []store.ForgetRequest) error {
	if len(reqs) == 0 {
		return nil
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("embedded: settle: %w", err)
	}
	err := s.db.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketRetained)
		for _, r := range reqs {
			if err := b.Delete(store.ForgetResultKey(r.RequestID, s.hasher.Hash(r.SubjectID))); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("embedded: settle: %w", err)
	}
	return nil
}

// SettleCommitted deletes the retained keys whose request lies below its
// partition's committed offset, and returns how many remain.
func (s *Store) SettleCommitted(ctx context.Context, committed map[int32]int64) (int, error) {
	if err := ctx.Err(); err != nil {
		return 0, fmt.Errorf("embedded: settle: %w", err)
	}
	remain := 0
	err := s.db.Update(func(tx *bolt.Tx) error {
		remain = 0
		b := tx.Bucket(bucketRetained)
		var doomed [][]byte
		c := b.Cursor()
		for k, v := c.First(); k != nil; k, v = c.Next() {
			if len(v) < 12 {
				doomed = append(doomed, bytes.Clone(k))
				continue
			}
			part := int32(binary.BigEndian.Uint32(v))
			off := int64(binary.BigEndian.Uint64(v[4:]))
			if o, ok := committed[part]; ok && off < o {
				doomed = append(doomed, bytes.Clone(k))
				continue
			}
			remain++
		}
		for _, k := range doomed {
			if err := b.Delete(k); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return 0, fmt.Errorf("embedded: settle: %w", err)
	}
	return remain, nil
}

// rewrapRetained re-wraps up to limit retained keys that are not wrapped
// by the active KEK, so that a KEK rotation never strands one, and reports
// how many it changed.
func (s *Store) rewrapRetained(limit int) (int, error) {
	active := s.kr.ActiveID()
	changed := 0
	err := s.db.Update(func(tx *bolt.Tx) error {
		changed = 0
		b := tx.Bucket(bucketRetained)
		type update struct{ k, v []byte }
		var updates []update
		c := b.Cursor()
		for k, v := c.First(); k != nil && len(updates) < limit; k, v = c.Next() {
			if len(v) <= retainedHead || current(v[retainedHead:], active) {
				continue
			}
			nw, err := s.kr.Rewrap(v[retainedHead:], store.PurposeSubjectKey, v[20:retainedHead])
			if err != nil {
				return err
			}
			updates = append(updates, update{bytes.Clone(k), append(bytes.Clone(v[:retainedHead]), nw...)})
		}
		for _, u := range updates {
			if err := b.Put(u.k, u.v); err != nil {
				return err
			}
		}
		changed = len(updates)
		return nil
	})
	return changed, err
}
