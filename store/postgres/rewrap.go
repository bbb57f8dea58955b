package postgres

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/hygiene/pseudonymizer/store"
)

const (
	selectIndexKey = "SELECT value FROM pz_meta WHERE name = 'index_key'"
	// selectStaleKeys walks the keys in hash order from a cursor, so that a
	// full rotation reads each row about once.
	selectStaleKeys = `
SELECT subject_hash, wrapped_key FROM pz_subject_keys
WHERE subject_hash > $1::bytea AND substring(wrapped_key FROM 2 FOR 4) <> $2::bytea
ORDER BY subject_hash LIMIT $3`
	updateIndexKey    = "UPDATE pz_meta SET value = $2 WHERE name = 'index_key' AND value = $1"
	updateWrappedKeys = `
UPDATE pz_subject_keys k SET wrapped_key = u.w
FROM unnest($1::bytea[], $2::bytea[], $3::bytea[]) AS u(h, old, w)
WHERE k.subject_hash = u.h AND k.wrapped_key = u.old`
)

// Rewrap re-wraps up to limit keys (the index key counts as one) that are
// not wrapped by the keyring's active KEK: retained keys first, then
// subject keys, and the index key last, in a call that found no other key
// to change. It reads in one round trip and
// writes with compare-and-swap in another, so concurrent Forgets and Rewraps
// stay correct. Successive calls continue where the last one stopped; 0
// means a pass over every key found none to change.
func (s *Store) Rewrap(ctx context.Context, limit int) (int, error) {
	if limit <= 0 {
		return 0, fmt.Errorf("postgres: rewrap: limit must be positive, got %d", limit)
	}
	s.rewrapMu.Lock()
	defer s.rewrapMu.Unlock()
	active := make([]byte, 4)
	binary.BigEndian.PutUint32(active, s.kr.ActiveID())
	// Keys retained for erasure notices first (normally none): a call
	// that changed some reports them, so 0 still means all are current.
	if n, err := s.rewrapRetained(ctx, active, limit); err != nil || n > 0 {
		if err != nil {
			if errors.Is(err, store.ErrWrongKEK) {
				return 0, fmt.Errorf("postgres: rewrap: %w", err)
			}
			return 0, wrapErr("rewrap", err)
		}
		return n, nil
	}
	changed := 0
	err := s.with(ctx, func(conn *pgx.Conn) error {
		var index []byte
		var hashes, olds [][]byte
		for {
			from := s.rewrapAfter
			if from == nil {
				from = []byte{}
			}
			hashes, olds = hashes[:0], olds[:0]
			b := &pgx.Batch{}
			b.Queue(selectIndexKey).QueryRow(func(row pgx.Row) error { return row.Scan(&index) })
			b.Queue(selectStaleKeys, from, active, limit).Query(func(rows pgx.Rows) error {
				for rows.Next() {
					var h, w []byte
					if err := rows.Scan(&h, &w); err != nil {
						return err
					}
					hashes, olds = append(hashes, h), append(olds, w)
				}
				return rows.Err()
			})
			if err := conn.SendBatch(ctx, b).Close(); err != nil {
				return err
			}
			wrapped := s.rewrapAfter != nil
			if len(hashes) < limit {
				s.rewrapAfter = nil // reached the end: start over next time
			} else {
				s.rewrapAfter = hashes[len(hashes)-1]
			}
			if len(hashes) == 0 && wrapped {
				continue // nothing after the cursor: check from the start once
			}
			break
		}

		b := &pgx.Batch{}
		// The index key last, once a scan from the start found no stale
		// subject key: until then the old KEK is still needed, and
		// Open's check (checkKEKs) says so by name. A rotation killed at
		// any point thus leaves keys that the configured KEKs unwrap.
		if len(hashes) == 0 && !current(index, s.kr.ActiveID()) {
			w, err := s.kr.Rewrap(index, store.PurposeIndexKey, nil)
			if err != nil {
				return err
			}
			b.Queue(updateIndexKey, index, w).Exec(func(ct pgconn.CommandTag) error {
				changed += int(ct.RowsAffected())
				return nil
			})
		}
		if len(hashes) > 0 {
			news := make([][]byte, len(hashes))
			for i := range hashes {
				var err error
				if news[i], err = s.kr.Rewrap(olds[i], store.PurposeSubjectKey, hashes[i]); err != nil {
					return err
				}
			}
			b.Queue(updateWrappedKeys, hashes, olds, news).Exec(func(ct pgconn.CommandTag) error {
				changed += int(ct.RowsAffected())
				return nil
			})
		}
		if b.Len() == 0 {
			return nil
		}
		return conn.SendBatch(ctx, b).Close()
	})
	if err != nil {
		s.rewrapAfter = nil
		if errors.Is(err, store.ErrWrongKEK) {
			return 0, fmt.Errorf("postgres: rewrap: %w", err)
		}
		return 0, wrapErr("rewrap", err)
	}
	return changed, nil
}

// current reports whether wrapped names the active KEK.
func current(wrapped []byte, active uint32) bool {
	id, ok := store.WrappedBy(wrapped)
	return ok && id == active
}
