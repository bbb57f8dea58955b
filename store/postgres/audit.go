package postgres

import (
	"context"
	"errors"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/hygiene/pseudonymizer/store"
)

var _ store.Auditor = (*Store)(nil)

// selectSubject reads one subject's key, tombstone and the forget result of
// the request that wrote the tombstone, in one statement.
const selectSubject = `
SELECT k.wrapped_key, k.created_at, t.requested_at, r.request_id, r.completed_at
FROM (SELECT $1::bytea AS h) q
LEFT JOIN pz_subject_keys k ON k.subject_hash = q.h
LEFT JOIN pz_tombstones t ON t.subject_hash = q.h
LEFT JOIN pz_forget_results r ON r.request_hash = t.request_hash`

// selectForgetLog lists forget results in order of completion.
const selectForgetLog = `
SELECT request_id, subject_hash, status, requested_at, completed_at
FROM pz_forget_results WHERE completed_at >= $1
ORDER BY completed_at, request_hash`

// Subject reports what the store holds about subjectID, in two read-only
// statements: the key and tombstone, then the objection state.
func (s *Store) Subject(ctx context.Context, subjectID string) (store.SubjectState, error) {
	st := store.SubjectState{Hash: s.hasher.Hash(subjectID)}
	var (
		wrapped                       []byte
		created, requested, completed *time.Time
		requestID                     *string
	)
	err := s.with(ctx, func(conn *pgx.Conn) error {
		if err := conn.QueryRow(ctx, selectSubject, st.Hash[:]).Scan(&wrapped, &created, &requested, &requestID, &completed); err != nil {
			return err
		}
		var err error
		st.Objection, err = objectionState(ctx, conn, st.Hash[:])
		return err
	})
	if err != nil {
		return store.SubjectState{}, wrapErr("subject", err)
	}
	if wrapped != nil {
		if st.Key, err = s.kr.Unwrap(wrapped, store.PurposeSubjectKey, st.Hash[:]); err != nil {
			return store.SubjectState{}, wrongKEK("subject", err)
		}
		if created != nil {
			st.KeyCreatedAt = created.UTC()
		}
	}
	if requested != nil {
		st.Forgotten = &store.Tombstone{RequestedAt: requested.UTC()}
		if requestID != nil {
			st.Forgotten.RequestID = *requestID
		}
		if completed != nil {
			st.Forgotten.CompletedAt = completed.UTC()
		}
	}
	return st, nil
}

// ForgetLog streams the forget results completed at or after since.
func (s *Store) ForgetLog(ctx context.Context, since time.Time, fn func(store.ForgetRecord) error) error {
	var fnErr error
	err := s.with(ctx, func(conn *pgx.Conn) error {
		rows, err := conn.Query(ctx, selectForgetLog, since)
		if err != nil {
			return err
		}
		defer rows.Close()
		for rows.Next() {
			var (
				id        *string
				subject   []byte
				status    int16
				requested *time.Time
				completed time.Time
			)
			if err := rows.Scan(&id, &subject, &status, &requested, &completed); err != nil {
				return err
			}
			rec := store.ForgetRecord{Status: store.ForgetStatus(status), CompletedAt: completed.UTC()}
			if id != nil {
				rec.RequestID = *id
			}
			if len(subject) == len(rec.Subject) {
				rec.Subject = store.SubjectHash(subject)
			}
			if requested != nil {
				rec.RequestedAt = requested.UTC()
			}
			if fnErr = fn(rec); fnErr != nil {
				return fnErr
			}
		}
		return rows.Err()
	})
	if fnErr != nil && errors.Is(err, fnErr) {
		return fnErr
	}
	return wrapErr("forget log", err)
}
