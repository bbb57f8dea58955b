package embedded

import (
	"context"
	"fmt"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/hygiene/pseudonymizer/store"
)

var _ store.Auditor = (*Store)(nil)

// A forget result's value: the status (1 byte) and completion time (8),
// then, from layout 2 on, requested_at (8), the subject hash (32) and the
// request ID.
const (
	resultHead = 1 + 8
	resultFull = resultHead + 8 + len(store.SubjectHash{})
)

// encodeResult encodes a forget result.
func encodeResult(status store.ForgetStatus, completed, requested time.Time, subject store.SubjectHash, requestID string) []byte {
	v := make([]byte, 0, resultFull+len(requestID))
	v = putTime(append(v, byte(status)), completed)
	v = putTime(v, requested)
	v = append(v, subject[:]...)
	return append(v, requestID...)
}

// decodeResult decodes a forget result written by any layout.
func decodeResult(v []byte) (store.ForgetRecord, bool) {
	if len(v) < resultHead {
		return store.ForgetRecord{}, false
	}
	rec := store.ForgetRecord{Status: store.ForgetStatus(v[0]), CompletedAt: getTime(v[1:])}
	if len(v) >= resultFull {
		rec.RequestedAt = getTime(v[resultHead:])
		copy(rec.Subject[:], v[resultHead+8:])
		rec.RequestID = string(v[resultFull:])
	}
	return rec, true
}

// upgradeHistory fills the forget history from the forget results of a
// layout 1 file (which carry neither request IDs nor subjects).
func upgradeHistory(tx *bolt.Tx) error {
	hist := tx.Bucket(bucketHistory)
	return tx.Bucket(bucketResults).ForEach(func(rh, v []byte) error {
		rec, ok := decodeResult(v)
		if !ok {
			return nil
		}
		return hist.Put(append(putTime(nil, rec.CompletedAt), rh...), nil)
	})
}

// Subject reports what the store holds about subjectID, in one read
// transaction.
func (s *Store) Subject(ctx context.Context, subjectID string) (store.SubjectState, error) {
	if err := ctx.Err(); err != nil {
		return store.SubjectState{}, fmt.Errorf("embedded: subject: %w", err)
	}
	st := store.SubjectState{Hash: s.hasher.Hash(subjectID)}
	var wrapped []byte
	err := s.db.View(func(tx *bolt.Tx) error {
		h := st.Hash[:]
		if w := tx.Bucket(bucketKeys).Get(h); w != nil {
			wrapped = append([]byte(nil), w...)
			if c := tx.Bucket(bucketCreated).Get(h); len(c) == 8 {
				st.KeyCreatedAt = getTime(c)
			}
		}
		st.Objection = subjectObjection(tx, st.Hash)
		t := tx.Bucket(bucketTombs).Get(h)
		if len(t) < 8 {
			return nil
		}
		st.Forgotten = &store.Tombstone{RequestedAt: getTime(t)}
		if rec, ok := decodeResult(tx.Bucket(bucketResults).Get(t[8:])); ok {
			st.Forgotten.RequestID, st.Forgotten.CompletedAt = rec.RequestID, rec.CompletedAt
		}
		return nil
	})
	if err != nil {
		return store.SubjectState{}, fmt.Errorf("embedded: subject: %w", err)
	}
	if wrapped != nil {
		if st.Key, err = s.kr.Unwrap(wrapped, store.PurposeSubjectKey, st.Hash[:]); err != nil {
			return store.SubjectState{}, wrongKEK("subject", err)
		}
	}
	return st, nil
}

// ForgetLog calls fn for the forget results completed at or after since,
// in order of completion, from one read transaction.
func (s *Store) ForgetLog(ctx context.Context, since time.Time, fn func(store.ForgetRecord) error) error {
	return readLog(ctx, s.db, "forget log", bucketHistory, bucketResults, since, decodeResult,
		func(r store.ForgetRecord) time.Time { return r.CompletedAt }, fn)
}

// readLog calls fn, from one read transaction, for the records of a log:
// history holds keys of an 8-byte time and the record's key in records,
// in time order; decode reads a record and at is its time. Records before
// since are skipped.
func readLog[R any](ctx context.Context, db *bolt.DB, what string, history, records []byte, since time.Time,
	decode func([]byte) (R, bool), at func(R) time.Time, fn func(R) error) error {
	var fnErr error
	err := db.View(func(tx *bolt.Tx) error {
		recs := tx.Bucket(records)
		c := tx.Bucket(history).Cursor()
		k, _ := c.First()
		if since.After(time.UnixMilli(0)) {
			k, _ = c.Seek(putTime(nil, since.Truncate(time.Millisecond)))
		}
		for ; k != nil; k, _ = c.Next() {
			if err := ctx.Err(); err != nil {
				return err
			}
			rec, ok := decode(recs.Get(k[8:]))
			if !ok || at(rec).Before(since) {
				continue
			}
			if fnErr = fn(rec); fnErr != nil {
				return fnErr
			}
		}
		return nil
	})
	if fnErr != nil {
		return fnErr
	}
	if err != nil {
		return fmt.Errorf("embedded: %s: %w", what, err)
	}
	return nil
}
