package postgres

import (
	"context"
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5"

	"github.com/hygiene/pseudonymizer/store"
)

// metaExtPrefix puts store.Meta names in their own namespace of pz_meta,
// apart from the store's own rows (schema_version, index_key).
const metaExtPrefix = "ext/"

const (
	selectMeta = "SELECT value FROM pz_meta WHERE name = $1"
	insertMeta = "INSERT INTO pz_meta (name, value) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING"
	updateMeta = "UPDATE pz_meta SET value = $3 WHERE name = $1 AND value = $2"
)

var _ store.Meta = (*Store)(nil)

// GetMeta returns the value stored under name, or nil.
func (s *Store) GetMeta(ctx context.Context, name string) ([]byte, error) {
	if err := store.CheckMeta(name, nil); err != nil {
		return nil, fmt.Errorf("postgres: %w", err)
	}
	var v []byte
	err := s.with(ctx, func(conn *pgx.Conn) (err error) { v, err = getMeta(ctx, conn, name); return err })
	return v, wrapErr("get meta", err)
}

// SwapMeta stores value under name if the stored value equals old (nil:
// none), atomically across processes.
func (s *Store) SwapMeta(ctx context.Context, name string, old, value []byte) (bool, error) {
	if err := checkSwap(name, value); err != nil {
		return false, err
	}
	var ok bool
	err := s.with(ctx, func(conn *pgx.Conn) (err error) { ok, err = swapMeta(ctx, conn, name, old, value); return err })
	return ok, wrapErr("swap meta", err)
}

// MetaConn is the store.Meta of a database whose store need not be open:
// the KMS-wrapped data key must be read before the keyring that opens the
// store exists. It holds one connection and is safe for concurrent use
// (calls are serialized).
type MetaConn struct {
	conn   *pgx.Conn
	schema string
	sem    chan struct{}
}

var _ store.Meta = (*MetaConn)(nil)

// OpenMeta connects to the database at dsn with the same options as Open
// (WithSchema selects the store). It creates nothing: GetMeta of a database
// without the store's tables returns nil, and SwapMeta creates only the
// schema and pz_meta. A read-only DSN (default_transaction_read_only=on)
// allows GetMeta only.
func OpenMeta(ctx context.Context, dsn string, opts ...Option) (*MetaConn, error) {
	o := options{}
	for _, opt := range opts {
		opt(&o)
	}
	cfg, err := connConfig(dsn, o)
	if err != nil {
		return nil, fmt.Errorf("postgres: open meta: %w", err)
	}
	conn, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		return nil, wrapErr("open meta", err)
	}
	m := &MetaConn{conn: conn, schema: o.schema, sem: make(chan struct{}, 1)}
	return m, nil
}

// Close closes the connection.
func (m *MetaConn) Close() error {
	return m.conn.Close(context.Background())
}

// GetMeta returns the value stored under name, or nil.
func (m *MetaConn) GetMeta(ctx context.Context, name string) ([]byte, error) {
	if err := store.CheckMeta(name, nil); err != nil {
		return nil, fmt.Errorf("postgres: %w", err)
	}
	if err := m.lock(ctx); err != nil {
		return nil, wrapErr("get meta", err)
	}
	defer m.unlock()
	var v []byte
	err := pgx.BeginTxFunc(ctx, m.conn, pgx.TxOptions{AccessMode: pgx.ReadOnly}, func(tx pgx.Tx) error {
		var exists bool
		if err := tx.QueryRow(ctx, "SELECT to_regclass('pz_meta') IS NOT NULL").Scan(&exists); err != nil || !exists {
			return err
		}
		var err error
		v, err = getMeta(ctx, tx, name)
		return err
	})
	return v, wrapErr("get meta", err)
}

// SwapMeta stores value under name if the stored value equals old (nil:
// none), creating the schema and pz_meta if they are missing.
func (m *MetaConn) SwapMeta(ctx context.Context, name string, old, value []byte) (bool, error) {
	if err := checkSwap(name, value); err != nil {
		return false, err
	}
	if err := m.lock(ctx); err != nil {
		return false, wrapErr("swap meta", err)
	}
	defer m.unlock()
	var ok bool
	err := pgx.BeginFunc(ctx, m.conn, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, "SELECT pg_advisory_xact_lock($1)", migrationLock); err != nil {
			return err
		}
		if err := ensureMeta(ctx, tx, m.schema); err != nil {
			return err
		}
		var err error
		ok, err = swapMeta(ctx, tx, name, old, value)
		return err
	})
	return ok, wrapErr("swap meta", err)
}

func (m *MetaConn) lock(ctx context.Context) error {
	select {
	case m.sem <- struct{}{}:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (m *MetaConn) unlock() { <-m.sem }

func getMeta(ctx context.Context, q interface {
	QueryRow(context.Context, string, ...any) pgx.Row
}, name string) ([]byte, error) {
	var v []byte
	err := q.QueryRow(ctx, selectMeta, metaExtPrefix+name).Scan(&v)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, nil
	}
	return v, err
}

func swapMeta(ctx context.Context, q interface {
	QueryRow(context.Context, string, ...any) pgx.Row
}, name string, old, value []byte) (bool, error) {
	var changed bool
	sql := "WITH u AS (" + updateMeta + " RETURNING 1) SELECT count(*) = 1 FROM u"
	args := []any{metaExtPrefix + name, old, value}
	if old == nil {
		sql = "WITH i AS (" + insertMeta + " RETURNING 1) SELECT count(*) = 1 FROM i"
		args = []any{metaExtPrefix + name, value}
	}
	if err := q.QueryRow(ctx, sql, args...).Scan(&changed); err != nil {
		return false, err
	}
	return changed, nil
}

func checkSwap(name string, value []byte) error {
	if err := store.CheckMeta(name, value); err != nil {
		return fmt.Errorf("postgres: %w", err)
	}
	if value == nil {
		return errors.New("postgres: swap meta: nil value")
	}
	return nil
}
