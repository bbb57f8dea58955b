package postgres

import (
	"context"

	"github.com/jackc/pgx/v5"

	"github.com/hygiene/pseudonymizer/store"
)

// Retained keys (store.ForgetRequest.Retain): a forget that destroys a key
// moves its wrapped bytes, as they were, into pz_forget_retained, keyed by
// the request hash, with the request's source partition and offset; Settle
// and SettleCommitted delete them.
const (
	selectKeysWrapped = "SELECT subject_hash, wrapped_key FROM pz_subject_keys WHERE subject_hash = ANY($1::bytea[])"
	selectRetained    = "SELECT request_hash, subject_hash, wrapped_key FROM pz_forget_retained WHERE request_hash = ANY($1::bytea[])"
	insertRetained    = `
INSERT INTO pz_forget_retained (request_hash, subject_hash, wrapped_key, source_partition, source_offset)
SELECT * FROM unnest($1::bytea[], $2::bytea[], $3::bytea[], $4::int4[], $5::int8[])
ON CONFLICT (request_hash) DO NOTHING`
	deleteRetained = "DELETE FROM pz_forget_retained WHERE request_hash = ANY($1::bytea[])"
	// deleteCommitted deletes the retained keys whose request lies below
	// its partition's committed offset and returns how many remain (the
	// outer SELECT sees the table as it was before the DELETE).
	deleteCommitted = `
WITH c AS (SELECT * FROM unnest($1::int4[], $2::int8[]) AS c(p, o)),
d AS (
	DELETE FROM pz_forget_retained r USING c
	WHERE r.source_partition = c.p AND r.source_offset < c.o
	RETURNING 1
)
SELECT (SELECT count(*) FROM pz_forget_retained) - (SELECT count(*) FROM d)`
)

// retainedKey is a retained wrapped key and the subject it is bound to.
type retainedKey struct {
	subject, wrapped []byte
}

// retention is Forget's bookkeeping of retained keys; nil when no request
// of the call retains (then Forget reads and writes exactly what it did
// before retention existed). Its methods are no-ops on nil.
type retention struct {
	reqs                 []store.ForgetRequest
	reqHashes, subHashes [][]byte
	stored               map[string]retainedKey // by request hash
	newRH, newSH, newW   [][]byte
	newPart              []int32
	newOff               []int64
}

func newRetention(reqs []store.ForgetRequest, reqHashes, subHashes [][]byte) *retention {
	for _, r := range reqs {
		if r.Retain {
			return &retention{reqs: reqs, reqHashes: reqHashes, subHashes: subHashes, stored: map[string]retainedKey{}}
		}
	}
	return nil
}

// queueReads queues the reads of the first round trip: the subjects' keys
// with their wrapped bytes, and the keys retained for the requests.
func (r *retention) queueReads(b *pgx.Batch, subjects map[store.SubjectHash]*forgetSubject, subHashes [][]byte) {
	b.Queue(selectKeysWrapped, subHashes).Query(func(rows pgx.Rows) error {
		for rows.Next() {
			var h, w []byte
			if err := rows.Scan(&h, &w); err != nil {
				return err
			}
			sub := subjects[store.SubjectHash(h)]
			sub.hasKey, sub.wrapped = true, w
		}
		return rows.Err()
	})
	b.Queue(selectRetained, r.reqHashes).Query(func(rows pgx.Rows) error {
		for rows.Next() {
			var rh, h, w []byte
			if err := rows.Scan(&rh, &h, &w); err != nil {
				return err
			}
			r.stored[string(rh)] = retainedKey{subject: h, wrapped: w}
		}
		return rows.Err()
	})
}

// keep retains wrapped, the key that request i destroyed, if it asked to.
func (r *retention) keep(i int, wrapped []byte) {
	if r == nil || !r.reqs[i].Retain || wrapped == nil {
		return
	}
	rh := r.reqHashes[i]
	r.stored[string(rh)] = retainedKey{subject: r.subHashes[i], wrapped: wrapped}
	r.newRH = append(r.newRH, rh)
	r.newSH = append(r.newSH, r.subHashes[i])
	r.newW = append(r.newW, wrapped)
	r.newPart = append(r.newPart, r.reqs[i].Partition)
	r.newOff = append(r.newOff, r.reqs[i].Offset)
}

// give sets res.Key to the key retained for request i, unwrapped, if the
// request asks for it.
func (r *retention) give(kr *store.Keyring, res *store.ForgetResult, i int) error {
	if r == nil || !r.reqs[i].Retain {
		return nil
	}
	k, ok := r.stored[string(r.reqHashes[i])]
	if !ok {
		return nil
	}
	key, err := kr.Unwrap(k.wrapped, store.PurposeSubjectKey, k.subject)
	if err != nil {
		return wrongKEK("forget: retained key", err)
	}
	res.Key = key
	return nil
}

// queueWrites queues the insert of the keys retained by this call.
func (r *retention) queueWrites(b *pgx.Batch) {
	if r == nil || len(r.newRH) == 0 {
		return
	}
	b.Queue(insertRetained, r.newRH, r.newSH, r.newW, r.newPart, r.newOff)
}

// Settle deletes the keys retained for reqs, in one statement.
func (s *Store) Settle(ctx context.Context, reqs []store.ForgetRequest) error {
	if len(reqs) == 0 {
		return nil
	}
	hashes := make([][]byte, len(reqs))
	for i, r := range reqs {
		hashes[i] = store.ForgetResultKey(r.RequestID, s.hasher.Hash(r.SubjectID))
	}
	err := s.with(ctx, func(conn *pgx.Conn) error {
		_, err := conn.Exec(ctx, deleteRetained, hashes)
		return err
	})
	return wrapErr("settle", err)
}

// SettleCommitted deletes the retained keys whose request lies below its
// partition's committed offset, and returns how many remain.
func (s *Store) SettleCommitted(ctx context.Context, committed map[int32]int64) (int, error) {
	parts := make([]int32, 0, len(committed))
	offs := make([]int64, 0, len(committed))
	for p, o := range committed {
		parts = append(parts, p)
		offs = append(offs, o)
	}
	var n int64
	err := s.with(ctx, func(conn *pgx.Conn) error {
		return conn.QueryRow(ctx, deleteCommitted, parts, offs).Scan(&n)
	})
	if err != nil {
		return 0, wrapErr("settle", err)
	}
	return int(n), nil
}

const (
	selectStaleRetained = `
SELECT request_hash, subject_hash, wrapped_key FROM pz_forget_retained
WHERE substring(wrapped_key FROM 2 FOR 4) <> $1::bytea LIMIT $2`
	updateRetained = `
UPDATE pz_forget_retained r SET wrapped_key = u.w
FROM unnest($1::bytea[], $2::bytea[], $3::bytea[]) AS u(h, old, w)
WHERE r.request_hash = u.h AND r.wrapped_key = u.old`
)

// rewrapRetained re-wraps up to limit retained keys that are not wrapped
// by the active KEK (compare-and-swap, like the subject keys), so that a
// KEK rotation never strands one, and reports how many it changed.
func (s *Store) rewrapRetained(ctx context.Context, active []byte, limit int) (int, error) {
	changed := 0
	err := s.with(ctx, func(conn *pgx.Conn) error {
		rows, err := conn.Query(ctx, selectStaleRetained, active, limit)
		if err != nil {
			return err
		}
		var hashes, olds, news [][]byte
		for rows.Next() {
			var rh, h, w []byte
			if err := rows.Scan(&rh, &h, &w); err != nil {
				return err
			}
			nw, err := s.kr.Rewrap(w, store.PurposeSubjectKey, h)
			if err != nil {
				rows.Close()
				return err
			}
			hashes, olds, news = append(hashes, rh), append(olds, w), append(news, nw)
		}
		if err := rows.Err(); err != nil {
			return err
		}
		if len(hashes) == 0 {
			return nil
		}
		ct, err := conn.Exec(ctx, updateRetained, hashes, olds, news)
		changed = int(ct.RowsAffected())
		return err
	})
	return changed, err
}
