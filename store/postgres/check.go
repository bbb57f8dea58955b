package postgres

import (
	"context"
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5"

	"github.com/hygiene/pseudonymizer/store"
)

// Check inspects the store at dsn without writing anything: it connects,
// reads the layout version and unwraps the index key with kr. It reports
// initialized false (and no error) for a database where Open has not yet
// created the tables, and an error matching store.ErrWrongKEK when kr
// cannot unwrap the stored index key. The session is read-only.
func Check(ctx context.Context, dsn string, kr *store.Keyring) (initialized bool, err error) {
	if kr == nil {
		return false, errors.New("postgres: check: no keyring")
	}
	cfg, err := pgx.ParseConfig(dsn)
	if err != nil {
		return false, fmt.Errorf("postgres: check: %w", err)
	}
	if _, ok := cfg.RuntimeParams["application_name"]; !ok {
		cfg.RuntimeParams["application_name"] = "pseudonymizer-check"
	}
	cfg.RuntimeParams["default_transaction_read_only"] = "on"
	if cfg.ConnectTimeout == 0 {
		cfg.ConnectTimeout = defaultConnectTimeout
	}
	conn, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		return false, wrapErr("check", err)
	}
	defer conn.Close(context.Background())
	var wrapped []byte
	var counted store.KEKCensus
	err = pgx.BeginTxFunc(ctx, conn, pgx.TxOptions{AccessMode: pgx.ReadOnly}, func(tx pgx.Tx) error {
		if err := tx.QueryRow(ctx, "SELECT to_regclass('pz_meta') IS NOT NULL").Scan(&initialized); err != nil || !initialized {
			return err
		}
		var v []byte
		err := tx.QueryRow(ctx, "SELECT value FROM pz_meta WHERE name = 'schema_version'").Scan(&v)
		if errors.Is(err, pgx.ErrNoRows) {
			// Only store.Meta was written (a KMS data key): Open has not
			// run yet.
			initialized = false
			return nil
		}
		if err != nil {
			return fmt.Errorf("schema_version: %w", err)
		}
		var version int
		if _, err := fmt.Sscan(string(v), &version); err != nil || version > len(migrations) {
			return fmt.Errorf("schema version %q is not one this binary supports (up to %d)", v, len(migrations))
		}
		err = tx.QueryRow(ctx, "SELECT value FROM pz_meta WHERE name = 'index_key'").Scan(&wrapped)
		if errors.Is(err, pgx.ErrNoRows) {
			initialized = false
			return nil
		}
		if err != nil {
			return err
		}
		// Every key, not only the index key: see Store.checkKEKs. A
		// layout older than the retained keys' table is checked once
		// Open has migrated it.
		var retained bool
		if err := tx.QueryRow(ctx, "SELECT to_regclass('pz_forget_retained') IS NOT NULL").Scan(&retained); err != nil || !retained {
			return err
		}
		counted, err = census(ctx, tx)
		return err
	})
	if err != nil {
		return false, wrapErr("check", err)
	}
	if !initialized {
		return false, nil
	}
	if err := counted.Check(kr); err != nil {
		return true, fmt.Errorf("postgres: check: %w", err)
	}
	if _, err := kr.Unwrap(wrapped, store.PurposeIndexKey, nil); err != nil {
		return true, wrongKEK("check: index key", err)
	}
	return true, nil
}
