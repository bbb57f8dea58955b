package postgres

import (
	"context"
	"errors"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/hygiene/pseudonymizer/store"
)

var _ store.Objector = (*Store)(nil)

const (
	selectObjectionResults = "SELECT request_hash, status, superseded, applied_at FROM pz_objection_log WHERE request_hash = ANY($1::bytea[])"
	selectObjectionStates  = "SELECT subject_hash, effective_at FROM pz_objections WHERE subject_hash = ANY($1::bytea[])"
	upsertObjections       = `
INSERT INTO pz_objections (subject_hash, effective_at, systems, request_id, recorded_at)
SELECT h, at, (SELECT coalesce(array_agg(x), '{}') FROM jsonb_array_elements_text(sys) AS x), id, $5::timestamptz
FROM unnest($1::bytea[], $2::timestamptz[], $3::jsonb[], $4::text[]) AS n(h, at, sys, id)
ON CONFLICT (subject_hash) DO UPDATE
SET effective_at = EXCLUDED.effective_at, systems = EXCLUDED.systems, request_id = EXCLUDED.request_id, recorded_at = EXCLUDED.recorded_at`
	insertObjectionLog = `
INSERT INTO pz_objection_log (request_hash, request_id, subject_hash, effective_at, systems, status, superseded, applied_at)
SELECT rh, id, h, at, (SELECT coalesce(array_agg(x), '{}') FROM jsonb_array_elements_text(sys) AS x), st, sup, $8::timestamptz
FROM unnest($1::bytea[], $2::text[], $3::bytea[], $4::timestamptz[], $5::jsonb[], $6::int2[], $7::bool[]) AS n(rh, id, h, at, sys, st, sup)`
	// deleteObjectionsUpTo is Forget's: a forget removes the objection
	// states that took effect at or before its tombstone.
	deleteObjectionsUpTo = `
DELETE FROM pz_objections o USING unnest($1::bytea[], $2::timestamptz[]) AS n(h, at)
WHERE o.subject_hash = n.h AND o.effective_at <= n.at`
	selectSubjectObjection = "SELECT request_id, effective_at, systems, recorded_at FROM pz_objections WHERE subject_hash = $1"
	selectObjectionLog     = `
SELECT request_id, subject_hash, effective_at, systems, status, superseded, applied_at
FROM pz_objection_log WHERE applied_at >= $1
ORDER BY applied_at, request_hash`
)

// objectSubject is the state of one subject during Object.
type objectSubject struct {
	wrapped     []byte
	forgottenAt time.Time
	hasState    bool
	effectiveAt time.Time
	dirty       bool
	req         int // the request whose state is written, when dirty
}

// Object applies the requests in order in one transaction of two round
// trips, like Forget: the first begins it, takes the exclusive guard lock
// and reads the subjects' keys, tombstones and objection states; the
// second writes the states that changed, appends their subjects to the
// forget log (every guard after it reports them) and commits. A third
// checks for lost guards (lostguard.go), whose transactions Object then
// waits for, as Forget does.
func (s *Store) Object(ctx context.Context, reqs []store.ObjectionRequest) ([]store.ObjectionResult, error) {
	results := make([]store.ObjectionResult, len(reqs))
	if len(reqs) == 0 {
		return results, nil
	}
	reqHashes := make([][]byte, len(reqs))
	subHashes := make([][]byte, len(reqs))
	for i := range reqs {
		h := s.hasher.Hash(reqs[i].SubjectID)
		reqHashes[i] = store.ObjectionResultKey(&reqs[i], h)
		subHashes[i] = h[:]
	}
	var wait time.Duration
	err := s.with(ctx, func(conn *pgx.Conn) error {
		done := map[string]store.ObjectionResult{}
		subjects := map[store.SubjectHash]*objectSubject{}
		for _, h := range subHashes {
			subjects[store.SubjectHash(h)] = &objectSubject{}
		}
		var seq int64
		b := &pgx.Batch{}
		b.Queue("BEGIN")
		b.Queue(lockExclusive, guardLockClass, s.lockKey)
		s.queueMarkGone(b, conn, &wait)
		b.Queue(selectObjectionResults, reqHashes).Query(func(rows pgx.Rows) error {
			for rows.Next() {
				var rh []byte
				var r store.ObjectionResult
				var status int16
				if err := rows.Scan(&rh, &status, &r.Superseded, &r.AppliedAt); err != nil {
					return err
				}
				r.Status, r.AppliedAt = store.ObjectionStatus(status), r.AppliedAt.UTC()
				done[string(rh)] = r
			}
			return rows.Err()
		})
		b.Queue(selectKeysWrapped, subHashes).Query(func(rows pgx.Rows) error {
			for rows.Next() {
				var h, w []byte
				if err := rows.Scan(&h, &w); err != nil {
					return err
				}
				subjects[store.SubjectHash(h)].wrapped = w
			}
			return rows.Err()
		})
		b.Queue(selectTombs, subHashes).Query(func(rows pgx.Rows) error {
			for rows.Next() {
				var h []byte
				var at time.Time
				if err := rows.Scan(&h, &at); err != nil {
					return err
				}
				subjects[store.SubjectHash(h)].forgottenAt = at.UTC()
			}
			return rows.Err()
		})
		b.Queue(selectObjectionStates, subHashes).Query(func(rows pgx.Rows) error {
			for rows.Next() {
				var h []byte
				var at time.Time
				if err := rows.Scan(&h, &at); err != nil {
					return err
				}
				sub := subjects[store.SubjectHash(h)]
				sub.hasState, sub.effectiveAt = true, at.UTC()
			}
			return rows.Err()
		})
		b.Queue(selectCounter).QueryRow(func(row pgx.Row) error { return row.Scan(&seq) })
		if err := conn.SendBatch(ctx, b).Close(); err != nil {
			return err
		}

		now := time.Now().UTC().Truncate(time.Millisecond)
		var logSeqs []int64
		var logHashes, logTags, lrh, lh [][]byte
		var lid, lsys []string
		var lat []time.Time
		var lst []int16
		var lsup []bool
		for i := range reqs {
			r := &reqs[i]
			sub := subjects[store.SubjectHash(subHashes[i])]
			res, repeated := done[string(reqHashes[i])]
			if !repeated {
				at := r.EffectiveAt.UTC().Truncate(time.Millisecond)
				res = store.ObjectionResult{Status: store.ObjectionUnknownSubject, AppliedAt: now}
				if sub.wrapped != nil {
					res.Status = store.ObjectionApplied
				}
				res.Superseded = store.ObjectionSupersedes(at, sub.hasState, sub.effectiveAt, sub.forgottenAt)
				if !res.Superseded {
					sub.hasState, sub.effectiveAt, sub.dirty, sub.req = true, at, true, i
					seq++
					tag, err := store.NewTag()
					if err != nil {
						return err
					}
					logSeqs = append(logSeqs, seq)
					logTags = append(logTags, tag[:])
					logHashes = append(logHashes, subHashes[i])
				}
				done[string(reqHashes[i])] = res
				lrh, lid, lh = append(lrh, reqHashes[i]), append(lid, r.RequestID), append(lh, subHashes[i])
				lat, lsys = append(lat, at), append(lsys, systemsJSON(r.Systems))
				lst, lsup = append(lst, int16(res.Status)), append(lsup, res.Superseded)
			}
			results[i] = res
			if r.WithKey && !res.Superseded && sub.wrapped != nil {
				key, err := s.kr.Unwrap(sub.wrapped, store.PurposeSubjectKey, subHashes[i])
				if err != nil {
					return wrongKEK("object", err)
				}
				results[i].Key = key
			}
		}
		b = &pgx.Batch{}
		if len(lrh) > 0 {
			var sh [][]byte
			var sat []time.Time
			var ssys, sid []string
			for h, sub := range subjects {
				if sub.dirty {
					r := &reqs[sub.req]
					sh = append(sh, h[:])
					sat = append(sat, sub.effectiveAt)
					ssys = append(ssys, systemsJSON(r.Systems))
					sid = append(sid, r.RequestID)
				}
			}
			if len(sh) > 0 {
				b.Queue(upsertObjections, sh, sat, ssys, sid, now)
				b.Queue(insertLog, logSeqs, logHashes, logTags)
				b.Queue(advanceCounter, seq, logTags[len(logTags)-1], int64(s.maxLog))
			}
			b.Queue(insertObjectionLog, lrh, lid, lh, lat, lsys, lst, lsup, now)
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
		return nil, wrapErr("object", err)
	}
	if err := sleepCtx(ctx, wait); err != nil {
		for i := range results {
			clear(results[i].Key)
		}
		return nil, wrapErr("object: committed, waiting for a lost guard's transaction to end", err)
	}
	return results, nil
}

// systemsJSON encodes systems as a JSON array of strings: pgx cannot pass
// an array of arrays of differing lengths, so each state's systems travel
// as one jsonb value and are unpacked by the statement.
func systemsJSON(systems []string) string {
	b := []byte{'['}
	for i, s := range systems {
		if i > 0 {
			b = append(b, ',')
		}
		b = appendJSONString(b, s)
	}
	return string(append(b, ']'))
}

// appendJSONString appends s as a JSON string (s is valid UTF-8 without
// NUL: the processor refuses other IDs).
func appendJSONString(b []byte, s string) []byte {
	const hex = "0123456789abcdef"
	b = append(b, '"')
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c == '"' || c == '\\':
			b = append(b, '\\', c)
		case c < 0x20:
			b = append(b, '\\', 'u', '0', '0', hex[c>>4], hex[c&0xf])
		default:
			b = append(b, c)
		}
	}
	return append(b, '"')
}

// objectionState reads a subject's objection state for Subject.
func objectionState(ctx context.Context, conn *pgx.Conn, h []byte) (*store.Objection, error) {
	var o store.Objection
	err := conn.QueryRow(ctx, selectSubjectObjection, h).Scan(&o.RequestID, &o.EffectiveAt, &o.Systems, &o.RecordedAt)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	o.EffectiveAt, o.RecordedAt = o.EffectiveAt.UTC(), o.RecordedAt.UTC()
	if o.Systems == nil {
		o.Systems = []string{}
	}
	return &o, nil
}

// ObjectionLog streams the objection state changes carried out at or after
// since.
func (s *Store) ObjectionLog(ctx context.Context, since time.Time, fn func(store.ObjectionRecord) error) error {
	var fnErr error
	err := s.with(ctx, func(conn *pgx.Conn) error {
		rows, err := conn.Query(ctx, selectObjectionLog, since)
		if err != nil {
			return err
		}
		defer rows.Close()
		for rows.Next() {
			var rec store.ObjectionRecord
			var subject []byte
			var status int16
			if err := rows.Scan(&rec.RequestID, &subject, &rec.EffectiveAt, &rec.Systems, &status, &rec.Superseded, &rec.AppliedAt); err != nil {
				return err
			}
			rec.Subject = store.SubjectHash(subject)
			rec.Status = store.ObjectionStatus(status)
			rec.EffectiveAt, rec.AppliedAt = rec.EffectiveAt.UTC(), rec.AppliedAt.UTC()
			if rec.Systems == nil {
				rec.Systems = []string{}
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
	return wrapErr("objection log", err)
}
