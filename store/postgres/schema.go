package postgres

import (
	"context"
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5"

	"github.com/hygiene/pseudonymizer/store"
)

const (
	// migrationLock is the advisory lock key (bigint form) that serializes
	// migrations of every store in a database.
	migrationLock int64 = 0x7073_6575_646f_0001
	// guardLockClass is the classid of the (int4, int4) advisory lock that
	// Forget takes exclusively and Guard and key creation take shared; its
	// objid is derived from the schema.
	guardLockClass int32 = 0x7073_6575
	// logRetention is how long forget-log rows are kept at most.
	logRetention = "24 hours"
)

// migrations are applied in order; pz_meta.schema_version counts the applied
// ones. Append, never edit.
var migrations = []string{
	`
CREATE TABLE IF NOT EXISTS pz_subject_keys (
	subject_hash bytea PRIMARY KEY CHECK (octet_length(subject_hash) = 32),
	wrapped_key  bytea NOT NULL
);
CREATE TABLE IF NOT EXISTS pz_tombstones (
	subject_hash bytea PRIMARY KEY CHECK (octet_length(subject_hash) = 32),
	requested_at timestamptz NOT NULL,
	request_hash bytea NOT NULL
);
CREATE TABLE IF NOT EXISTS pz_forget_results (
	request_hash bytea PRIMARY KEY,
	status       smallint NOT NULL,
	completed_at timestamptz NOT NULL
);
CREATE TABLE IF NOT EXISTS pz_forget_log (
	seq          bigint PRIMARY KEY,
	subject_hash bytea NOT NULL,
	logged_at    timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS pz_forget_log_logged_at ON pz_forget_log (logged_at);
CREATE TABLE IF NOT EXISTS pz_forget_counter (
	id             boolean PRIMARY KEY DEFAULT true CHECK (id),
	seq            bigint NOT NULL,
	pruned_through bigint NOT NULL
);
INSERT INTO pz_forget_counter (id, seq, pruned_through) VALUES (true, 0, 0) ON CONFLICT DO NOTHING;
`,
	// Tags of the forget log (store.Position): each entry's, the newest
	// entry's, and the log's epoch (the tag of position 0). migrate fills
	// epoch (and tag, for an empty log) with random bytes.
	`
ALTER TABLE pz_forget_log ADD COLUMN IF NOT EXISTS tag bytea;
ALTER TABLE pz_forget_counter ADD COLUMN IF NOT EXISTS epoch bytea, ADD COLUMN IF NOT EXISTS tag bytea;
`,
	// 3: evidence for the status and forget-log commands. Existing keys keep
	// a NULL creation time (unknown) rather than the time of the upgrade;
	// existing forget results keep NULL request IDs.
	`
ALTER TABLE pz_subject_keys ADD COLUMN IF NOT EXISTS created_at timestamptz;
ALTER TABLE pz_subject_keys ALTER COLUMN created_at SET DEFAULT now();
ALTER TABLE pz_forget_results ADD COLUMN IF NOT EXISTS request_id text;
ALTER TABLE pz_forget_results ADD COLUMN IF NOT EXISTS subject_hash bytea;
ALTER TABLE pz_forget_results ADD COLUMN IF NOT EXISTS requested_at timestamptz;
CREATE INDEX IF NOT EXISTS pz_forget_results_completed_at ON pz_forget_results (completed_at);
`,
	// 4: the connections that take guards, so that Forget can wait for a
	// guard lost with its connection (lostguard.go).
	`
CREATE TABLE IF NOT EXISTS pz_guard_conns (
	lock_key      bigint PRIMARY KEY,
	registered_at timestamptz NOT NULL DEFAULT now(),
	dead_since    timestamptz
);
`,
	// 5: keys retained for erasure notices (store.ForgetRequest.Retain):
	// the destroyed key's wrapped bytes, bound to the subject hash, until
	// the request's Kafka transaction is known committed.
	`
CREATE TABLE IF NOT EXISTS pz_forget_retained (
	request_hash     bytea PRIMARY KEY,
	subject_hash     bytea NOT NULL CHECK (octet_length(subject_hash) = 32),
	wrapped_key      bytea NOT NULL,
	source_partition integer NOT NULL,
	source_offset    bigint NOT NULL,
	retained_at      timestamptz NOT NULL DEFAULT now()
);
`,
	// 6: objection states (store.Objection), one row per subject with a
	// recorded state (also a withdrawn one, so that an older state cannot
	// come back), and the objection log, the evidence for objection-log
	// and the record of carried-out requests (idempotence).
	`
CREATE TABLE IF NOT EXISTS pz_objections (
	subject_hash bytea PRIMARY KEY CHECK (octet_length(subject_hash) = 32),
	effective_at timestamptz NOT NULL,
	systems      text[] NOT NULL,
	request_id   text NOT NULL,
	recorded_at  timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE IF NOT EXISTS pz_objection_log (
	request_hash bytea PRIMARY KEY,
	request_id   text NOT NULL,
	subject_hash bytea NOT NULL CHECK (octet_length(subject_hash) = 32),
	effective_at timestamptz NOT NULL,
	systems      text[] NOT NULL,
	status       smallint NOT NULL,
	superseded   boolean NOT NULL,
	applied_at   timestamptz NOT NULL
);
CREATE INDEX IF NOT EXISTS pz_objection_log_applied_at ON pz_objection_log (applied_at);
`,
}

const metaDDL = `CREATE TABLE IF NOT EXISTS pz_meta (
	name  text PRIMARY KEY,
	value bytea NOT NULL
)`

// ensureMeta creates the schema and pz_meta if they are missing. DDL runs
// only when something is missing, so that a role without CREATE privileges
// can open an existing store. The caller holds the migration lock.
func ensureMeta(ctx context.Context, tx pgx.Tx, schema string) error {
	if schema != "" {
		var exists bool
		if err := tx.QueryRow(ctx, "SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1)", schema).Scan(&exists); err != nil {
			return err
		}
		if !exists {
			if _, err := tx.Exec(ctx, "CREATE SCHEMA "+pgx.Identifier{schema}.Sanitize()); err != nil {
				return err
			}
		}
	}
	var hasMeta bool
	if err := tx.QueryRow(ctx, "SELECT to_regclass('pz_meta') IS NOT NULL").Scan(&hasMeta); err != nil {
		return err
	}
	if !hasMeta {
		if _, err := tx.Exec(ctx, metaDDL); err != nil {
			return err
		}
	}
	return nil
}

// migrate creates or upgrades the tables and loads (or creates) the index
// key, in one transaction under the migration lock.
func (s *Store) migrate(ctx context.Context, schema string) error {
	var wrapped []byte
	var current string
	err := s.with(ctx, func(conn *pgx.Conn) error {
		return pgx.BeginFunc(ctx, conn, func(tx pgx.Tx) error {
			if _, err := tx.Exec(ctx, "SELECT pg_advisory_xact_lock($1)", migrationLock); err != nil {
				return err
			}
			if err := ensureMeta(ctx, tx, schema); err != nil {
				return err
			}
			version := 0
			var v []byte
			err := tx.QueryRow(ctx, "SELECT value FROM pz_meta WHERE name = 'schema_version'").Scan(&v)
			switch {
			case errors.Is(err, pgx.ErrNoRows):
			case err != nil:
				return err
			default:
				if _, err := fmt.Sscan(string(v), &version); err != nil {
					return fmt.Errorf("bad schema_version %q", v)
				}
			}
			if version > len(migrations) {
				return fmt.Errorf("schema version %d is newer than this binary supports (%d)", version, len(migrations))
			}
			for i := version; i < len(migrations); i++ {
				if _, err := tx.Exec(ctx, migrations[i]); err != nil {
					return fmt.Errorf("migration %d: %w", i+1, err)
				}
			}
			if version < len(migrations) {
				if _, err := tx.Exec(ctx, `INSERT INTO pz_meta (name, value) VALUES ('schema_version', $1)
					ON CONFLICT (name) DO UPDATE SET value = EXCLUDED.value`, []byte(fmt.Sprint(len(migrations)))); err != nil {
					return err
				}
				epoch, err := store.NewTag()
				if err != nil {
					return err
				}
				if _, err := tx.Exec(ctx, `UPDATE pz_forget_counter SET epoch = $1,
					tag = CASE WHEN seq = 0 THEN $1 ELSE tag END WHERE epoch IS NULL`, epoch[:]); err != nil {
					return err
				}
			}
			// The lock key follows the schema that actually holds the tables.
			if err := tx.QueryRow(ctx, `SELECT n.nspname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
				WHERE c.oid = 'pz_meta'::regclass`).Scan(&current); err != nil {
				return err
			}
			err = tx.QueryRow(ctx, "SELECT value FROM pz_meta WHERE name = 'index_key'").Scan(&wrapped)
			if !errors.Is(err, pgx.ErrNoRows) {
				return err
			}
			key, err := store.NewKey()
			if err != nil {
				return err
			}
			if wrapped, err = s.kr.Wrap(key, store.PurposeIndexKey, nil); err != nil {
				return err
			}
			_, err = tx.Exec(ctx, "INSERT INTO pz_meta (name, value) VALUES ('index_key', $1)", wrapped)
			return err
		})
	})
	if err != nil {
		return wrapErr("open", err)
	}
	// Every key first, so that a half-done rotation is reported with the
	// KEKs it still needs and their key counts (checkKEKs).
	if err := s.checkKEKs(ctx); err != nil {
		return err
	}
	key, err := s.kr.Unwrap(wrapped, store.PurposeIndexKey, nil)
	if err != nil {
		return wrongKEK("open: index key", err)
	}
	s.hasher, err = store.NewHasher(key)
	clear(key) // the Hasher holds its own copy, wiped on Close
	if err != nil {
		return fmt.Errorf("postgres: open: %w", err)
	}
	s.lockKey = schemaLockKey(current)
	return nil
}

// wrongKEK reports a key that the keyring cannot unwrap; the error always
// matches store.ErrWrongKEK.
func wrongKEK(op string, err error) error {
	if errors.Is(err, store.ErrWrongKEK) {
		return fmt.Errorf("postgres: %s: %w", op, err)
	}
	return fmt.Errorf("postgres: %s: %w: %v", op, store.ErrWrongKEK, err)
}
