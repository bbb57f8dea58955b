package postgres

import (
	"bytes"
	"context"
	"errors"
	"maps"
	"slices"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/hygiene/pseudonymizer/store"
)

// selectState reads the keys, tombstones and active objections of a set of
// subjects in one statement. A row with systems is an objection (its time
// is the effective time), one with a time and no systems a tombstone.
const selectState = `
SELECT subject_hash, wrapped_key, NULL::timestamptz, NULL::text[] FROM pz_subject_keys WHERE subject_hash = ANY($1::bytea[])
UNION ALL
SELECT subject_hash, NULL::bytea, requested_at, NULL::text[] FROM pz_tombstones WHERE subject_hash = ANY($1::bytea[])
UNION ALL
SELECT subject_hash, NULL::bytea, effective_at, systems FROM pz_objections WHERE subject_hash = ANY($1::bytea[]) AND cardinality(systems) > 0`

// insertKeys creates keys for the subjects that still need one: no key yet,
// and no tombstone at or after the newest event that asks.
//
// Every key-creating statement inserts in the order of subject_hash (ORDER
// BY: the join with the tombstones reorders its input). An insert waits
// for another transaction's uncommitted key of the same subject; two
// creators with overlapping subjects (the lookup API and the stream, or
// two instances) that inserted in different orders could each wait for
// the other, a deadlock that PostgreSQL breaks only after deadlock_timeout
// by failing one of them. In one order, one of them just waits for the
// other's commit. TestConcurrentCreatorsDoNotDeadlock.
const insertKeys = `
INSERT INTO pz_subject_keys (subject_hash, wrapped_key)
SELECT n.h, n.w
FROM unnest($1::bytea[], $2::bytea[], $3::timestamptz[]) AS n(h, w, latest)
LEFT JOIN pz_tombstones t ON t.subject_hash = n.h
WHERE t.subject_hash IS NULL OR n.latest > t.requested_at
ORDER BY n.h
ON CONFLICT (subject_hash) DO NOTHING`

// insertKeysReturning is insertKeys that also returns each subject it
// created, with the requested_at of the subject's tombstone (NULL if none),
// so that the keys it created need not be read back.
const insertKeysReturning = `
WITH n AS MATERIALIZED (
	SELECT n.h, n.w, t.requested_at
	FROM unnest($1::bytea[], $2::bytea[], $3::timestamptz[]) AS n(h, w, latest)
	LEFT JOIN pz_tombstones t ON t.subject_hash = n.h
	WHERE t.subject_hash IS NULL OR n.latest > t.requested_at
), ins AS (
	INSERT INTO pz_subject_keys (subject_hash, wrapped_key)
	SELECT h, w FROM n ORDER BY h
	ON CONFLICT (subject_hash) DO NOTHING
	RETURNING subject_hash
)
SELECT ins.subject_hash, n.requested_at FROM ins JOIN n ON n.h = ins.subject_hash`

// insertNewKeys is insertKeys for subjects that had no key when read:
// without ON CONFLICT, so that a key created meanwhile by another process
// fails it (a unique violation of subjectKeysPkey, which aborts it whole)
// rather than being skipped. It returns only the subjects that have a
// tombstone, with its requested_at and whether it created their key; it
// created the keys of all the others. Speculative insertion (ON CONFLICT)
// and RETURNING every created row cost the server about 3.5 of the 13 µs
// of CPU time per new key (see docs/performance.md).
const insertNewKeys = `
WITH n AS MATERIALIZED (
	SELECT n.h, n.w, t.requested_at, t.subject_hash IS NULL OR n.latest > t.requested_at AS fresh
	FROM unnest($1::bytea[], $2::bytea[], $3::timestamptz[]) AS n(h, w, latest)
	LEFT JOIN pz_tombstones t ON t.subject_hash = n.h
), ins AS (
	INSERT INTO pz_subject_keys (subject_hash, wrapped_key)
	SELECT h, w FROM n WHERE fresh ORDER BY h
)
SELECT h, requested_at, fresh FROM n WHERE requested_at IS NOT NULL`

// subjectKeysPkey is the primary key constraint of pz_subject_keys.
const subjectKeysPkey = "pz_subject_keys_pkey"

const lockShared = "SELECT pg_advisory_xact_lock_shared($1::int4, $2::int4)"

// subjectState is what the store holds about one subject.
type subjectState struct {
	wrapped     []byte
	forgottenAt time.Time
	objection   *store.Objection // active only
}

// Resolve returns one Entry per lookup. It reads every subject in one
// statement; subjects that need a fresh key are created in one more round
// trip: a pipelined implicit transaction that takes the shared guard lock
// and inserts the keys, returning the tombstones it found (split over a
// few connections when there are thousands, see resolveStates). If
// another process created one of the keys since the read, that insert
// fails whole and is repeated, skipping existing keys. Only subjects that
// it did not create (another process created a key first, or a forget
// came in between) take one more round trip, which inserts again and
// re-reads them under the lock.
func (s *Store) Resolve(ctx context.Context, lookups []store.Lookup) ([]store.Entry, error) {
	entries := make([]store.Entry, len(lookups))
	if len(lookups) == 0 {
		return entries, nil
	}
	latest := make(map[store.SubjectHash]time.Time, len(lookups))
	hashes := make([][]byte, 0, len(lookups))
	for i, l := range lookups {
		h := s.hasher.Hash(l.SubjectID)
		entries[i].Hash = h
		if t, seen := latest[h]; !seen || l.Latest.After(t) {
			if !seen {
				hashes = append(hashes, h[:])
			}
			latest[h] = l.Latest
		}
	}

	states, err := s.resolveStates(ctx, hashes, latest)
	if err != nil {
		return nil, wrapErr("resolve", err)
	}

	stateOf := func(h store.SubjectHash) ([]byte, time.Time) {
		st := states[h]
		return st.wrapped, st.forgottenAt
	}
	if err := s.kr.FillEntries(entries, stateOf); err != nil {
		return nil, wrongKEK("resolve", err)
	}
	for i := range entries {
		entries[i].Objection = states[entries[i].Hash].objection
	}
	return entries, nil
}

// resolveShard is the least number of new keys worth a connection of
// their own in one Resolve, and maxResolveShards the most connections one
// Resolve uses. Creating a key costs the server about 40 µs of CPU (index
// probes of two tables, a random B-tree insert, its WAL; measured by
// TestSizing, see docs/sizing.md), so a poll batch of 10,000 new customers
// would keep one backend busy for about 400 ms while the caller waits;
// shards spread that over the server's cores.
// Reading is cheaper and stays one statement.
const (
	resolveShard     = 1024
	maxResolveShards = 4
)

// resolveStates reads the state of the subjects in hashes in one
// statement and creates the keys that latest says are needed: on the same
// connection, or, for many, in up to s.shards concurrent shards of
// disjoint subjects, each on a connection of its own (see createKeys).
// Each shard takes the guard lock shared in an implicit transaction of its
// own and never waits for another shard while holding it, so a Forget
// queued between them delays them but cannot deadlock with them.
func (s *Store) resolveStates(ctx context.Context, hashes [][]byte, latest map[store.SubjectHash]time.Time) (map[store.SubjectHash]subjectState, error) {
	states := make(map[store.SubjectHash]subjectState, len(hashes))
	err := s.with(ctx, func(conn *pgx.Conn) error {
		// In key order, each shard inserts into a range of the index of
		// its own, and neighbouring keys share its pages; and the server,
		// which sorts the array of each = ANY probe, finds it sorted
		// (about 1 µs of its CPU time less per subject read).
		slices.SortFunc(hashes, bytes.Compare)
		if err := readStates(ctx, conn, hashes, states); err != nil {
			return err
		}
		if s.afterRead != nil {
			s.afterRead()
		}
		var need [][]byte
		for _, hb := range hashes {
			h := store.SubjectHash(hb)
			if st := states[h]; store.NeedsKey(st.wrapped != nil, st.forgottenAt, latest[h]) {
				need = append(need, hb)
			}
		}
		n := min(s.shards, len(need)/resolveShard)
		if n <= 1 {
			return s.createKeys(ctx, conn, need, latest, states)
		}
		// Each shard updates a map of its own subjects' states; the first
		// runs here, on conn, the others on connections of their own.
		per := (len(need) + n - 1) / n
		parts := make([]map[store.SubjectHash]subjectState, n)
		errs := make([]error, n)
		var wg sync.WaitGroup
		for i := n - 1; i >= 0; i-- {
			shard := need[min(i*per, len(need)):min((i+1)*per, len(need))]
			parts[i] = make(map[store.SubjectHash]subjectState, len(shard))
			for _, hb := range shard {
				parts[i][store.SubjectHash(hb)] = states[store.SubjectHash(hb)]
			}
			create := func(c *pgx.Conn) error { return s.createKeys(ctx, c, shard, latest, parts[i]) }
			if i == 0 {
				errs[0] = create(conn)
			} else {
				wg.Go(func() { errs[i] = s.with(ctx, create) })
			}
		}
		wg.Wait()
		for _, part := range parts {
			maps.Copy(states, part)
		}
		return errors.Join(errs...)
	})
	return states, err
}

// createKeys creates keys, in one write round trip on conn, for the
// subjects in need (none of which has a usable key in states) and records
// them in states. If another process created one of the keys since the
// read, the insert fails whole and is repeated with ON CONFLICT DO NOTHING
// (insertSkipping). Only subjects it did not create (another process
// created a key first, or a forget came in between) take another round
// trip, which inserts again and re-reads them under the lock.
func (s *Store) createKeys(ctx context.Context, conn *pgx.Conn, need [][]byte, latest map[store.SubjectHash]time.Time, states map[store.SubjectHash]subjectState) error {
	if len(need) == 0 {
		return nil
	}
	wrapped, err := s.kr.NewWrappedKeys(store.PurposeSubjectKey, need)
	if err != nil {
		return err
	}
	needLatest := make([]time.Time, len(need))
	for i, hb := range need {
		needLatest[i] = latest[store.SubjectHash(hb)]
	}
	created, err := insertNew(ctx, conn, s.lockKey, need, wrapped, needLatest, states)
	if isUniqueViolation(err, subjectKeysPkey) {
		// Another process created some of the keys since they were read.
		created, err = insertSkipping(ctx, conn, s.lockKey, need, wrapped, needLatest, states)
	}
	if err != nil {
		return err
	}
	var again, againWrapped [][]byte
	var againLatest []time.Time
	for i, hb := range need {
		h := store.SubjectHash(hb)
		if created[h] {
			st := states[h]
			st.wrapped = wrapped[i]
			states[h] = st
			continue
		}
		again = append(again, hb)
		againWrapped = append(againWrapped, wrapped[i])
		againLatest = append(againLatest, needLatest[i])
	}
	if len(again) == 0 {
		return nil
	}
	// Rare: insert again (a key destroyed meanwhile is replaced) and
	// read the subjects' state under the lock.
	b := &pgx.Batch{}
	b.Queue(lockShared, guardLockClass, s.lockKey)
	b.Queue(insertKeys, again, againWrapped, againLatest)
	b.Queue(selectState, again).Query(func(rows pgx.Rows) error {
		return scanStates(rows, states)
	})
	return conn.SendBatch(ctx, b).Close()
}

// insertNew creates the keys wrapped of the subjects need (sorted by hash,
// none of which had a key when read) with insertNewKeys, under the shared
// guard lock, in one implicit transaction, and returns the subjects whose
// keys it created; it records the tombstone times of those in states. It
// fails, having created none, with a unique violation of subjectKeysPkey
// if any of the keys exists by now (see insertSkipping).
func insertNew(ctx context.Context, conn *pgx.Conn, lockKey int32, need, wrapped [][]byte, latest []time.Time, states map[store.SubjectHash]subjectState) (map[store.SubjectHash]bool, error) {
	type tombstoned struct {
		h     store.SubjectHash
		at    time.Time
		fresh bool
	}
	var tombs []tombstoned
	b := &pgx.Batch{}
	b.Queue(lockShared, guardLockClass, lockKey)
	b.Queue(insertNewKeys, need, wrapped, latest).Query(func(rows pgx.Rows) error {
		defer rows.Close()
		for rows.Next() {
			var hb []byte
			var t tombstoned
			if err := rows.Scan(&hb, &t.at, &t.fresh); err != nil {
				return err
			}
			t.h = store.SubjectHash(hb)
			tombs = append(tombs, t)
		}
		return rows.Err()
	})
	// The rows can arrive before the insert fails: they count only if
	// the batch succeeds.
	if err := conn.SendBatch(ctx, b).Close(); err != nil {
		return nil, err
	}
	created := make(map[store.SubjectHash]bool, len(need))
	for _, hb := range need {
		created[store.SubjectHash(hb)] = true
	}
	for _, t := range tombs {
		if !t.fresh {
			delete(created, t.h)
			continue
		}
		st := states[t.h]
		st.forgottenAt = t.at.UTC()
		states[t.h] = st
	}
	return created, nil
}

// insertSkipping is insertNew for when some of the keys may exist: with
// insertKeysReturning, which skips them.
func insertSkipping(ctx context.Context, conn *pgx.Conn, lockKey int32, need, wrapped [][]byte, latest []time.Time, states map[store.SubjectHash]subjectState) (map[store.SubjectHash]bool, error) {
	created := make(map[store.SubjectHash]bool, len(need))
	b := &pgx.Batch{}
	b.Queue(lockShared, guardLockClass, lockKey)
	b.Queue(insertKeysReturning, need, wrapped, latest).Query(func(rows pgx.Rows) error {
		defer rows.Close()
		for rows.Next() {
			var hb []byte
			var at *time.Time
			if err := rows.Scan(&hb, &at); err != nil {
				return err
			}
			created[store.SubjectHash(hb)] = true
			if at != nil {
				h := store.SubjectHash(hb)
				st := states[h]
				st.forgottenAt = at.UTC()
				states[h] = st
			}
		}
		return rows.Err()
	})
	if err := conn.SendBatch(ctx, b).Close(); err != nil {
		return nil, err
	}
	return created, nil
}

// readStates reads the state of the subjects in hashes into states.
func readStates(ctx context.Context, conn *pgx.Conn, hashes [][]byte, states map[store.SubjectHash]subjectState) error {
	rows, err := conn.Query(ctx, selectState, hashes)
	if err != nil {
		return err
	}
	return scanStates(rows, states)
}

// scanStates merges rows of selectState into states.
func scanStates(rows pgx.Rows, states map[store.SubjectHash]subjectState) error {
	defer rows.Close()
	for rows.Next() {
		var hb, wrapped []byte
		var at *time.Time
		var systems []string
		if err := rows.Scan(&hb, &wrapped, &at, &systems); err != nil {
			return err
		}
		h := store.SubjectHash(hb)
		st := states[h]
		switch {
		case wrapped != nil:
			st.wrapped = wrapped
		case systems != nil && at != nil:
			st.objection = &store.Objection{EffectiveAt: at.UTC(), Systems: systems}
		case at != nil:
			st.forgottenAt = at.UTC()
		}
		states[h] = st
	}
	return rows.Err()
}
