package postgres

import (
	"bytes"
	"context"
	"slices"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/hygiene/pseudonymizer/store"
)

// SessionSetting returns a run-time setting of one of s's sessions.
func SessionSetting(ctx context.Context, s *Store, name string) (string, error) {
	var v string
	err := s.with(ctx, func(conn *pgx.Conn) error {
		return conn.QueryRow(ctx, "SELECT current_setting($1)", name).Scan(&v)
	})
	return v, err
}

// SelectState is the statement Resolve reads subjects with.
const SelectState = selectState

// GuardPID returns the server process ID of a held guard's connection.
func GuardPID(g store.Guard) uint32 {
	gg := g.(*guard)
	gg.mu.Lock()
	defer gg.mu.Unlock()
	return gg.conn.PgConn().PID()
}

// QueryRow runs a query on one of s's connections and scans its row.
func QueryRow(ctx context.Context, s *Store, sql string, dest ...any) error {
	return s.with(ctx, func(conn *pgx.Conn) error {
		return conn.QueryRow(ctx, sql).Scan(dest...)
	})
}

// SetAfterRead makes Resolve call f between reading the subjects and
// creating their keys (nil: nothing).
func SetAfterRead(s *Store, f func()) { s.afterRead = f }

// SetResolveShards sets the most connections one Resolve creates keys on.
func SetResolveShards(s *Store, n int) { s.shards = n }

// Statement variants that CreateKeysStepwise compares with Resolve's.
const (
	// selectKeysOnly is selectState without the tombstone and objection
	// probes (not a correct read: for measuring their share).
	selectKeysOnly = `SELECT subject_hash, wrapped_key, NULL::timestamptz, NULL::text[] FROM pz_subject_keys WHERE subject_hash = ANY($1::bytea[])`
	// selectJoined is selectState as one pass over the array with a
	// left join per table.
	selectJoined = `
SELECT n.h, k.wrapped_key, t.requested_at, o.effective_at, o.systems
FROM unnest($1::bytea[]) AS n(h)
LEFT JOIN pz_subject_keys k ON k.subject_hash = n.h
LEFT JOIN pz_tombstones t ON t.subject_hash = n.h
LEFT JOIN pz_objections o ON o.subject_hash = n.h AND cardinality(o.systems) > 0
WHERE k.subject_hash IS NOT NULL OR t.subject_hash IS NOT NULL OR o.subject_hash IS NOT NULL`
	createStaging = `CREATE TEMP TABLE IF NOT EXISTS pz_new_keys (h bytea, w bytea, latest timestamptz) ON COMMIT DELETE ROWS`
	// insertFromStaging is insertKeysReturning reading pz_new_keys.
	insertFromStaging = `
WITH n AS MATERIALIZED (
	SELECT n.h, n.w, t.requested_at
	FROM pz_new_keys AS n
	LEFT JOIN pz_tombstones t ON t.subject_hash = n.h
	WHERE t.subject_hash IS NULL OR n.latest > t.requested_at
), ins AS (
	INSERT INTO pz_subject_keys (subject_hash, wrapped_key)
	SELECT h, w FROM n
	ON CONFLICT (subject_hash) DO NOTHING
	RETURNING subject_hash
)
SELECT ins.subject_hash, n.requested_at FROM ins JOIN n ON n.h = ins.subject_hash`
	// insertPlain is insertKeysReturning without ON CONFLICT.
	insertPlain = `
WITH n AS MATERIALIZED (
	SELECT n.h, n.w, t.requested_at
	FROM unnest($1::bytea[], $2::bytea[], $3::timestamptz[]) AS n(h, w, latest)
	LEFT JOIN pz_tombstones t ON t.subject_hash = n.h
	WHERE t.subject_hash IS NULL OR n.latest > t.requested_at
), ins AS (
	INSERT INTO pz_subject_keys (subject_hash, wrapped_key)
	SELECT h, w FROM n
	RETURNING subject_hash
)
SELECT ins.subject_hash, n.requested_at FROM ins JOIN n ON n.h = ins.subject_hash`
	// insertBare is insertKeys without the tombstone join.
	insertBare = `
INSERT INTO pz_subject_keys (subject_hash, wrapped_key)
SELECT n.h, n.w FROM unnest($1::bytea[], $2::bytea[]) AS n(h, w)
ON CONFLICT (subject_hash) DO NOTHING`
)

// CreateKeysStepwise creates keys for the subjects ids (all new) on one
// connection with Resolve's statements or a variant of them, one
// statement at a time in an explicit transaction (Resolve pipelines them
// in an implicit one). The variants: "resolve" (Resolve's: batch sorted
// before the read, insertNewKeys); "sortafter" (sorted after the read);
// "unsorted" (not sorted); "keysonly" and "joined" (other reads);
// "onconflict" (insertKeysReturning, as Resolve did before it tried
// insertNewKeys); "copy" (COPY into a temporary table, then
// insertKeysReturning from it); "plain" (insertKeysReturning without ON
// CONFLICT); "bare" (insertKeys without the tombstone join and
// RETURNING); "noinsert" (no INSERT). It calls mark with the connection's
// backend PID before the first step and after each, naming the step, and
// returns how many keys it created.
func CreateKeysStepwise(ctx context.Context, s *Store, ids []string, latest time.Time, variant string, mark func(step string, pid uint32)) (int, error) {
	hashes := make([][]byte, len(ids))
	for i, id := range ids {
		h := s.hasher.Hash(id)
		hashes[i] = h[:]
	}
	created := 0
	err := s.with(ctx, func(conn *pgx.Conn) error {
		pid := conn.PgConn().PID()
		mark("", pid)
		switch variant {
		case "sortafter", "unsorted":
		default:
			slices.SortFunc(hashes, bytes.Compare)
		}
		read := selectState
		switch variant {
		case "keysonly":
			read = selectKeysOnly
		case "joined":
			read = selectJoined
		}
		rows, err := conn.Query(ctx, read, hashes)
		if err != nil {
			return err
		}
		for rows.Next() {
			created-- // none should exist
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return err
		}
		mark("select", pid)
		if variant == "sortafter" {
			slices.SortFunc(hashes, bytes.Compare)
		}
		wrapped, err := s.kr.NewWrappedKeys(store.PurposeSubjectKey, hashes)
		if err != nil {
			return err
		}
		lat := make([]time.Time, len(hashes))
		for i := range lat {
			lat[i] = latest
		}
		mark("wrap", pid)
		if _, err := conn.Exec(ctx, "BEGIN"); err != nil {
			return err
		}
		if _, err := conn.Exec(ctx, lockShared, guardLockClass, s.lockKey); err != nil {
			return err
		}
		mark("lock", pid)
		insert, args := insertNewKeys, []any{hashes, wrapped, lat}
		switch variant {
		case "onconflict":
			insert = insertKeysReturning
		case "copy":
			if _, err := conn.Exec(ctx, createStaging); err != nil {
				return err
			}
			mark("create", pid)
			if _, err := conn.CopyFrom(ctx, pgx.Identifier{"pz_new_keys"}, []string{"h", "w", "latest"}, pgx.CopyFromSlice(len(hashes), func(i int) ([]any, error) {
				return []any{hashes[i], wrapped[i], lat[i]}, nil
			})); err != nil {
				return err
			}
			mark("copy", pid)
			insert, args = insertFromStaging, nil
		case "plain":
			insert = insertPlain
		case "bare":
			insert, args = insertBare, []any{hashes, wrapped}
		}
		switch {
		case variant == "noinsert":
		case variant == "bare":
			tag, err := conn.Exec(ctx, insert, args...)
			if err != nil {
				return err
			}
			created += int(tag.RowsAffected())
			mark("insert", pid)
		default:
			rows, err := conn.Query(ctx, insert, args...)
			if err != nil {
				return err
			}
			n := 0
			for rows.Next() {
				n++
			}
			rows.Close()
			if err := rows.Err(); err != nil {
				return err
			}
			if insert == insertNewKeys { // it returns the tombstoned subjects
				n = len(hashes) - n
			}
			created += n
			mark("insert", pid)
		}
		if _, err := conn.Exec(ctx, "COMMIT"); err != nil {
			return err
		}
		mark("commit", pid)
		return nil
	})
	return created, err
}
