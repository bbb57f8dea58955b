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
	selectIndexKey    = "SELECT value FROM pz_meta WHERE name = 'index_key'"
	selectStaleKeys   = "SELECT subject_hash, wrapped_key FROM pz_subject_keys WHERE substring(wrapped_key FROM 2 FOR 4) <> $1::bytea LIMIT $2"
	updateIndexKey    = "UPDATE pz_meta SET value = $2 WHERE name = 'index_key' AND value = $1"
	updateWrappedKeys = `
UPDATE pz_subject_keys k SET wrapped_key = u.w
FROM unnest($1::bytea[], $2::bytea[], $3::bytea[]) AS u(h, old, w)
WHERE k.subject_hash = u.h AND k.wrapped_key = u.old`
)

// Rewrap re-wraps up to limit keys (the index key counts as one) that are
// not wrapped by the keyring's active KEK, in two round trips: one read, one
// compare-and-swap write, so concurrent Forgets and Rewraps stay correct.
func (s *Store) Rewrap(ctx context.Context, limit int) (int, error) {
	if limit <= 0 {
		return 0, fmt.Errorf("postgres: rewrap: limit must be positive, got %d", limit)
	}
	active := make([]byte, 4)
	binary.BigEndian.PutUint32(active, s.kr.ActiveID())
	changed := 0
	err := s.with(ctx, func(conn *pgx.Conn) error {
		var index []byte
		var hashes, olds [][]byte
		b := &pgx.Batch{}
		b.Queue(selectIndexKey).QueryRow(func(row pgx.Row) error { return row.Scan(&index) })
		b.Queue(selectStaleKeys, active, limit).Query(func(rows pgx.Rows) error {
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

		b = &pgx.Batch{}
		if id, _ := store.WrappedBy(index); id != s.kr.ActiveID() {
			w, err := rewrap(s.kr, index, store.PurposeIndexKey, nil)
			if err != nil {
				return err
			}
			b.Queue(updateIndexKey, index, w).Exec(func(ct pgconn.CommandTag) error {
				changed += int(ct.RowsAffected())
				return nil
			})
			if len(hashes) == limit {
				hashes, olds = hashes[:limit-1], olds[:limit-1]
			}
		}
		if len(hashes) > 0 {
			news := make([][]byte, len(hashes))
			for i := range hashes {
				var err error
				if news[i], err = rewrap(s.kr, olds[i], store.PurposeSubjectKey, hashes[i]); err != nil {
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
		if errors.Is(err, store.ErrWrongKEK) {
			return 0, fmt.Errorf("postgres: rewrap: %w", err)
		}
		return 0, wrapErr("rewrap", err)
	}
	return changed, nil
}

// rewrap unwraps a key and wraps it again with the active KEK. The error
// always matches store.ErrWrongKEK.
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
