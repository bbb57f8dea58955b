package postgres

import (
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"strconv"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/hygiene/pseudonymizer/store"
)

const (
	// DefaultMaxConns is the default bound on open connections per Store.
	DefaultMaxConns = 16
	// DefaultIdleInTransactionTimeout is the default
	// idle_in_transaction_session_timeout of the store's sessions. It bounds
	// how long a stalled Guard holder can block Forget, and so it also bounds
	// how long a Guard may be held.
	DefaultIdleInTransactionTimeout = 30 * time.Second
	// DefaultLostGuardWait is how long Forget waits after a connection that
	// took guards was lost (WithLostGuardWait).
	DefaultLostGuardWait = 30 * time.Second
	// defaultConnectTimeout applies when the DSN sets no connect_timeout.
	defaultConnectTimeout = 10 * time.Second
)

// Option configures Open.
type Option func(*options)

type options struct {
	schema        string
	maxConns      int
	idleInTx      time.Duration
	maxLog        int
	lostGuardWait time.Duration
}

// WithSchema makes the store live in the named schema: it is created if
// missing and set as the sessions' search_path. Without it, the tables live
// in the first schema of the DSN's search_path (by default public).
func WithSchema(name string) Option {
	return func(o *options) { o.schema = name }
}

// WithMaxConns bounds the number of open connections (default
// DefaultMaxConns). Every held Guard occupies one.
func WithMaxConns(n int) Option {
	return func(o *options) { o.maxConns = n }
}

// WithIdleInTransactionTimeout sets the sessions'
// idle_in_transaction_session_timeout (default
// DefaultIdleInTransactionTimeout). A Guard held longer than this is lost:
// the server ends its session and its Release reports an error.
func WithIdleInTransactionTimeout(d time.Duration) Option {
	return func(o *options) { o.idleInTx = d }
}

// WithLostGuardWait sets how long Forget waits, after a connection that
// took guards was lost, before it returns (default DefaultLostGuardWait). It must exceed the Kafka transaction timeout plus the
// broker's delay in aborting a timed-out transaction (10s by default); only
// tests that keep transactions short set less. See lostguard.go.
func WithLostGuardWait(d time.Duration) Option {
	return func(o *options) { o.lostGuardWait = d }
}

// WithForgetLogLimit sets the most forget-log rows a Guard returns and the
// store keeps (default store.DefaultForgetLogLimit); tests set a small one
// to reach it quickly. Every store of one schema must use the same limit.
func WithForgetLogLimit(n int) Option {
	return func(o *options) { o.maxLog = n }
}

// Store is a store.KeyStore backed by PostgreSQL. It is safe for concurrent
// use by many goroutines and many processes.
type Store struct {
	pool   *pool
	kr     *store.Keyring
	hasher *store.Hasher
	// lockKey is the objid half of the guard advisory lock, derived from the
	// store's schema.
	lockKey int32
	// maxLog is the forget-log limit (WithForgetLogLimit).
	maxLog uint64
	// lostGuardWait is how long Forget waits for a lost guard
	// (WithLostGuardWait).
	lostGuardWait time.Duration
	// shards is the most connections one Resolve uses (resolveStates):
	// half the pool, at most maxResolveShards.
	shards int
	// afterRead, if set (by tests), runs in Resolve between reading the
	// subjects and creating their keys.
	afterRead func()

	// rewrapMu guards rewrapAfter, the subject hash after which the next
	// Rewrap continues (nil: from the start).
	rewrapMu    sync.Mutex
	rewrapAfter []byte
}

var _ store.KeyStore = (*Store)(nil)

// Open connects to the database at dsn (a URL or keyword/value string),
// creates or migrates the store's tables, and loads the index key, creating
// it on first use. It fails if the database is unreachable (the error then
// matches store.ErrUnavailable) or if kr cannot unwrap the stored index key
// (store.ErrWrongKEK). Concurrent Opens of one database are safe.
func Open(ctx context.Context, dsn string, kr *store.Keyring, opts ...Option) (*Store, error) {
	if kr == nil {
		return nil, errors.New("postgres: open: no keyring")
	}
	o := options{maxConns: DefaultMaxConns, idleInTx: DefaultIdleInTransactionTimeout}
	for _, opt := range opts {
		opt(&o)
	}
	if o.maxConns < 1 {
		return nil, fmt.Errorf("postgres: open: max conns must be positive, got %d", o.maxConns)
	}
	cfg, err := connConfig(dsn, o)
	if err != nil {
		return nil, fmt.Errorf("postgres: open: %w", err)
	}
	pl, err := newPool(cfg, o.maxConns)
	if err != nil {
		return nil, fmt.Errorf("postgres: open: %w", err)
	}
	s := &Store{pool: pl, kr: kr, maxLog: store.DefaultForgetLogLimit, lostGuardWait: o.lostGuardWait,
		shards: max(1, min(maxResolveShards, o.maxConns/2))}
	if s.lostGuardWait <= 0 {
		s.lostGuardWait = DefaultLostGuardWait
	}
	if o.maxLog > 0 {
		s.maxLog = uint64(o.maxLog)
	}
	if err := s.migrate(ctx, o.schema); err != nil {
		s.pool.close()
		return nil, err
	}
	return s, nil
}

// censusKeys counts every wrapped key (index key, subject keys, retained
// keys) by the KEK that wraps them, in one statement. It reads every key
// row once, at start-up only: a sequential scan, 2.7 to 3.7 s for 2,000,000
// keys on a loaded 2-vCPU test machine.
const censusKeys = `
SELECT substring(value FROM 1 FOR 5), 1::int8 FROM pz_meta WHERE name = 'index_key'
UNION ALL
SELECT substring(wrapped_key FROM 1 FOR 5), count(*) FROM pz_subject_keys GROUP BY 1
UNION ALL
SELECT substring(wrapped_key FROM 1 FOR 5), count(*) FROM pz_forget_retained GROUP BY 1`

// census counts the store's wrapped keys by KEK; q is censusKeys.
func census(ctx context.Context, q interface {
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
}) (store.KEKCensus, error) {
	var c store.KEKCensus
	rows, err := q.Query(ctx, censusKeys)
	if err != nil {
		return c, err
	}
	defer rows.Close()
	for rows.Next() {
		var head []byte
		var n int64
		if err := rows.Scan(&head, &n); err != nil {
			return c, err
		}
		c.AddN(head, int(n))
	}
	return c, rows.Err()
}

// checkKEKs refuses a store that holds any key the keyring cannot unwrap,
// naming the missing KEKs: unwrapping the index key alone proves nothing
// while a rotation is half done (rewrap re-wraps the index key last, but
// an older binary did it first), and such a key would stop every batch
// that touches it.
func (s *Store) checkKEKs(ctx context.Context) error {
	var c store.KEKCensus
	err := s.with(ctx, func(conn *pgx.Conn) error {
		var err error
		c, err = census(ctx, conn)
		return err
	})
	if err != nil {
		return wrapErr("open: count keys by KEK", err)
	}
	if err := c.Check(s.kr); err != nil {
		return fmt.Errorf("postgres: open: %w", err)
	}
	return nil
}

// connConfig parses dsn and applies the options.
func connConfig(dsn string, o options) (*pgx.ConnConfig, error) {
	cfg, err := pgx.ParseConfig(dsn)
	if err != nil {
		return nil, err
	}
	if _, ok := cfg.RuntimeParams["application_name"]; !ok {
		cfg.RuntimeParams["application_name"] = "pseudonymizer"
	}
	if o.idleInTx > 0 {
		cfg.RuntimeParams["idle_in_transaction_session_timeout"] = strconv.FormatInt(o.idleInTx.Milliseconds(), 10)
	}
	if o.schema != "" {
		cfg.RuntimeParams["search_path"] = pgx.Identifier{o.schema}.Sanitize()
	}
	if cfg.ConnectTimeout == 0 {
		cfg.ConnectTimeout = defaultConnectTimeout
	}
	return cfg, nil
}

// Hash returns the keyed hash that identifies subjectID in the store.
func (s *Store) Hash(subjectID string) store.SubjectHash { return s.hasher.Hash(subjectID) }

// Ping reports whether the database is reachable.
func (s *Store) Ping(ctx context.Context) error {
	conn, err := s.pool.acquire(ctx)
	if err != nil {
		return wrapErr("ping", err)
	}
	defer s.pool.release(conn)
	return wrapErr("ping", conn.Ping(ctx))
}

// Close closes the store's connections and wipes the index key from memory
// (Hash must not be called after Close). Held Guards keep their
// connections until Release. It is safe to call more than once.
func (s *Store) Close() error {
	s.pool.close()
	s.hasher.Wipe()
	return nil
}

// with runs fn on a pooled connection.
func (s *Store) with(ctx context.Context, fn func(conn *pgx.Conn) error) error {
	conn, err := s.pool.acquire(ctx)
	if err != nil {
		return err
	}
	defer s.pool.release(conn)
	return fn(conn)
}

// schemaLockKey derives the objid of the guard advisory lock from a schema
// name, so stores in different schemas do not exclude each other.
func schemaLockKey(schema string) int32 {
	h := fnv.New32a()
	h.Write([]byte(schema))
	return int32(h.Sum32())
}

// ceilMilli rounds t up to whole milliseconds (the store's precision), so
// that rounding never lets an event at the requested time escape its
// tombstone.
func ceilMilli(t time.Time) time.Time {
	r := t.Truncate(time.Millisecond)
	if r.Before(t) {
		r = r.Add(time.Millisecond)
	}
	return r.UTC()
}
