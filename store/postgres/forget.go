package postgres

import (
	"context"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/hygiene/pseudonymizer/store"
)

const lockExclusive = "SELECT pg_advisory_xact_lock($1::int4, $2::int4)"

const (
	selectResults   = "SELECT request_hash, status, completed_at FROM pz_forget_results WHERE request_hash = ANY($1::bytea[])"
	selectKeyHashes = "SELECT subject_hash FROM pz_subject_keys WHERE subject_hash = ANY($1::bytea[])"
	selectTombs     = "SELECT subject_hash, requested_at FROM pz_tombstones WHERE subject_hash = ANY($1::bytea[])"
	selectCounter   = "SELECT seq FROM pz_forget_counter"

	deleteKeys  = "DELETE FROM pz_subject_keys WHERE subject_hash = ANY($1::bytea[])"
	upsertTombs = `
INSERT INTO pz_tombstones (subject_hash, requested_at, request_hash)
SELECT * FROM unnest($1::bytea[], $2::timestamptz[], $3::bytea[])
ON CONFLICT (subject_hash) DO UPDATE
SET requested_at = EXCLUDED.requested_at, request_hash = EXCLUDED.request_hash
WHERE EXCLUDED.requested_at > pz_tombstones.requested_at`
	insertLog     = "INSERT INTO pz_forget_log (seq, subject_hash, tag) SELECT * FROM unnest($1::int8[], $2::bytea[], $3::bytea[])"
	insertResults = `
INSERT INTO pz_forget_results (request_hash, status, completed_at, request_id, subject_hash, requested_at)
SELECT * FROM unnest($1::bytea[], $2::int2[], $3::timestamptz[], $4::text[], $5::bytea[], $6::timestamptz[])`
	// advanceCounter stores the new sequence number and prunes the forget
	// log to the newest $3 rows (the store's forget-log limit) of the last
	// logRetention, recording the highest pruned sequence number.
	advanceCounter = `
WITH cut AS (
	SELECT GREATEST($1::int8 - $3::int8,
		COALESCE((SELECT max(seq) FROM pz_forget_log WHERE logged_at < now() - interval '` + logRetention + `'), 0)) AS upto
), pruned AS (
	DELETE FROM pz_forget_log WHERE seq <= (SELECT upto FROM cut)
)
UPDATE pz_forget_counter SET seq = $1::int8, tag = $2::bytea, pruned_through = GREATEST(pruned_through, (SELECT upto FROM cut))`
)

// forgetSubject is the state of one subject during Forget.
type forgetSubject struct {
	hasKey      bool
	tombstoned  bool
	requestedAt time.Time
	requestHash []byte
	dirty       bool
	wrapped     []byte // the wrapped key, read only when a request retains it
}

// Forget applies the requests in order in one transaction of two round
// trips: the first begins it, takes the exclusive guard lock (waiting for
// every Guard and key creation) and reads the state; the second writes the
// changes and commits. A third checks once more for connections that took
// guards and were lost (lostguard.go); if there is one, Forget then waits
// until that guard's Kafka commit is certainly decided. A redone call
// waits for the same.
func (s *Store) Forget(ctx context.Context, reqs []store.ForgetRequest) ([]store.ForgetResult, error) {
	results := make([]store.ForgetResult, len(reqs))
	if len(reqs) == 0 {
		return results, nil
	}
	reqHashes := make([][]byte, len(reqs))
	subHashes := make([][]byte, len(reqs))
	for i, r := range reqs {
		h := s.hasher.Hash(r.SubjectID)
		reqHashes[i] = store.ForgetResultKey(r.RequestID, h)
		subHashes[i] = h[:]
	}

	var wait time.Duration // for lost guards, see lostguard.go
	err := s.with(ctx, func(conn *pgx.Conn) error {
		done := make(map[string]store.ForgetResult)
		subjects := make(map[store.SubjectHash]*forgetSubject)
		for _, h := range subHashes {
			subjects[store.SubjectHash(h)] = &forgetSubject{}
		}
		var seq int64
		ret := newRetention(reqs, reqHashes, subHashes)

		b := &pgx.Batch{}
		b.Queue("BEGIN")
		b.Queue(lockExclusive, guardLockClass, s.lockKey)
		s.queueMarkGone(b, conn, &wait)
		b.Queue(selectResults, reqHashes).Query(func(rows pgx.Rows) error {
			for rows.Next() {
				var rh []byte
				var status int16
				var at time.Time
				if err := rows.Scan(&rh, &status, &at); err != nil {
					return err
				}
				done[string(rh)] = store.ForgetResult{Status: store.ForgetStatus(status), CompletedAt: at.UTC()}
			}
			return rows.Err()
		})
		if ret == nil {
			b.Queue(selectKeyHashes, subHashes).Query(func(rows pgx.Rows) error {
				for rows.Next() {
					var h []byte
					if err := rows.Scan(&h); err != nil {
						return err
					}
					subjects[store.SubjectHash(h)].hasKey = true
				}
				return rows.Err()
			})
		} else {
			ret.queueReads(b, subjects, subHashes)
		}
		b.Queue(selectTombs, subHashes).Query(func(rows pgx.Rows) error {
			for rows.Next() {
				var h []byte
				var at time.Time
				if err := rows.Scan(&h, &at); err != nil {
					return err
				}
				sub := subjects[store.SubjectHash(h)]
				sub.tombstoned, sub.requestedAt = true, at.UTC()
			}
			return rows.Err()
		})
		b.Queue(selectCounter).QueryRow(func(row pgx.Row) error { return row.Scan(&seq) })
		if err := conn.SendBatch(ctx, b).Close(); err != nil {
			return err
		}

		now := time.Now().UTC().Truncate(time.Millisecond)
		var del, logHashes, resHashes [][]byte
		var logSeqs []int64
		var logTags [][]byte
		var resStatus []int16
		var resAt, resRequested []time.Time
		var resIDs []string
		var resSubjects [][]byte
		for i, r := range reqs {
			if res, ok := done[string(reqHashes[i])]; ok {
				results[i] = res
				if err := ret.give(s.kr, &results[i], i); err != nil {
					return err
				}
				continue
			}
			sub := subjects[store.SubjectHash(subHashes[i])]
			var status store.ForgetStatus
			switch {
			case sub.hasKey:
				status = store.Forgotten
				del = append(del, subHashes[i])
			case sub.tombstoned:
				status = store.AlreadyForgotten
			default:
				status = store.UnknownSubject
			}
			at := ceilMilli(r.RequestedAt)
			if !sub.tombstoned || at.After(sub.requestedAt) {
				sub.requestedAt, sub.requestHash, sub.dirty = at, reqHashes[i], true
			}
			sub.hasKey, sub.tombstoned = false, true
			seq++
			tag, err := store.NewTag()
			if err != nil {
				return err
			}
			logSeqs = append(logSeqs, seq)
			logTags = append(logTags, tag[:])
			logHashes = append(logHashes, subHashes[i])
			res := store.ForgetResult{Status: status, CompletedAt: now}
			done[string(reqHashes[i])] = res
			if status == store.Forgotten {
				ret.keep(i, sub.wrapped)
			}
			results[i] = res
			if err := ret.give(s.kr, &results[i], i); err != nil {
				return err
			}
			resHashes = append(resHashes, reqHashes[i])
			resStatus = append(resStatus, int16(status))
			resAt = append(resAt, now)
			resIDs = append(resIDs, r.RequestID)
			resSubjects = append(resSubjects, subHashes[i])
			resRequested = append(resRequested, at)
		}

		b = &pgx.Batch{}
		if len(resHashes) > 0 {
			var tombHashes, tombReqs [][]byte
			var tombAt []time.Time
			for h, sub := range subjects {
				if sub.dirty {
					tombHashes = append(tombHashes, h[:])
					tombAt = append(tombAt, sub.requestedAt)
					tombReqs = append(tombReqs, sub.requestHash)
				}
			}
			if len(del) > 0 {
				b.Queue(deleteKeys, del)
			}
			if len(tombHashes) > 0 {
				b.Queue(upsertTombs, tombHashes, tombAt, tombReqs)
				// Forget wins: the objection states up to the tombstone go
				// with the key (objection.go).
				b.Queue(deleteObjectionsUpTo, tombHashes, tombAt)
			}
			b.Queue(insertLog, logSeqs, logHashes, logTags)
			b.Queue(insertResults, resHashes, resStatus, resAt, resIDs, resSubjects, resRequested)
			b.Queue(advanceCounter, seq, logTags[len(logTags)-1], int64(s.maxLog))
			ret.queueWrites(b)
		}
		b.Queue(pruneGoneGuardCons, s.lostGuardWait.Milliseconds())
		b.Queue("COMMIT")
		if err := conn.SendBatch(ctx, b).Close(); err != nil {
			return err
		}
		return s.recheckGone(ctx, conn, &wait)
	})
	if err != nil {
		for i := range results {
			clear(results[i].Key)
		}
		return nil, wrapErr("forget", err)
	}
	// Outside the lock, and also when every request was carried out before
	// (a redone batch): the caller's confirmations must follow the commits
	// of lost guards.
	if err := sleepCtx(ctx, wait); err != nil {
		return nil, wrapErr("forget: committed, waiting for a lost guard's transaction to end", err)
	}
	return results, nil
}
