package postgres

import (
	"context"
	"errors"
	"math"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/hygiene/pseudonymizer/store"
)

// releaseTimeout bounds how long Release waits for the server before it
// drops the connection (which releases the lock just as well).
const releaseTimeout = 5 * time.Second

const (
	selectCounterPruned = "SELECT seq, pruned_through FROM pz_forget_counter"
	// selectLogSince lists the forget log after $1, unless that is more
	// than maxLog rows.
	selectLogSince = `
SELECT l.subject_hash FROM pz_forget_log l
WHERE l.seq > $1::int8 AND (SELECT c.seq FROM pz_forget_counter c) - $1::int8 <= ` + maxLogSQL + `
ORDER BY l.seq`
)

// Guard begins a transaction on a dedicated connection, takes the shared
// guard lock and reads the forget log after since, in one round trip. The
// transaction (and the connection) stay open until Release. A Guard held
// longer than the idle-in-transaction timeout is ended by the server; its
// Release then returns an error.
func (s *Store) Guard(ctx context.Context, since uint64) (store.Guard, error) {
	conn, err := s.pool.acquire(ctx)
	if err != nil {
		return nil, wrapErr("guard", err)
	}
	g := &guard{pool: s.pool, conn: conn}
	sinceSQL := int64(math.MaxInt64)
	if since < math.MaxInt64 {
		sinceSQL = int64(since)
	}
	var seq, pruned int64
	b := &pgx.Batch{}
	b.Queue("BEGIN")
	b.Queue(lockShared, guardLockClass, s.lockKey)
	b.Queue(selectCounterPruned).QueryRow(func(row pgx.Row) error { return row.Scan(&seq, &pruned) })
	b.Queue(selectLogSince, sinceSQL).Query(func(rows pgx.Rows) error {
		for rows.Next() {
			var h []byte
			if err := rows.Scan(&h); err != nil {
				return err
			}
			g.forgotten = append(g.forgotten, store.SubjectHash(h))
		}
		return rows.Err()
	})
	if err := conn.SendBatch(ctx, b).Close(); err != nil {
		s.pool.release(conn) // still in a transaction: closed, lock dropped
		return nil, wrapErr("guard", err)
	}
	g.seq = uint64(seq)
	g.complete = since <= g.seq && since >= uint64(pruned) && g.seq-since <= maxLog
	return g, nil
}

// guard is a held shared guard lock.
type guard struct {
	pool      *pool
	seq       uint64
	forgotten []store.SubjectHash
	complete  bool

	mu   sync.Mutex
	conn *pgx.Conn // nil once released
	err  error
}

// Seq returns the newest forget sequence number at the time of the guard.
func (g *guard) Seq() uint64 { return g.seq }

// Forgotten returns the subjects forgotten after the requested sequence
// number, oldest first.
func (g *guard) Forgotten() []store.SubjectHash { return g.forgotten }

// Complete reports whether Forgotten lists every subject forgotten after the
// requested sequence number.
func (g *guard) Complete() bool { return g.complete }

// Check runs a trivial query in the guard's transaction: if it succeeds
// and the transaction is still open, the shared lock is still held.
func (g *guard) Check(ctx context.Context) error {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.conn == nil {
		return errors.New("postgres: guard: already released")
	}
	ctx, cancel := context.WithTimeout(ctx, releaseTimeout)
	defer cancel()
	_, err := g.conn.Exec(ctx, "SELECT 1")
	if err == nil && g.conn.PgConn().TxStatus() != 'T' {
		err = errors.New("guard transaction is no longer open")
	}
	return wrapErr("guard: check", err)
}

// Release commits the guard's transaction and returns its connection. Later
// calls return the first call's result. An error means the guard may have
// been lost before Release (for example to the idle-in-transaction timeout).
func (g *guard) Release(ctx context.Context) error {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.conn == nil {
		return g.err
	}
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), releaseTimeout)
	defer cancel()
	_, err := g.conn.Exec(ctx, "COMMIT")
	if err == nil && g.conn.PgConn().TxStatus() != 'I' {
		err = errors.New("guard transaction was not open")
	}
	g.pool.release(g.conn)
	g.conn = nil
	g.err = wrapErr("guard: release", err)
	return g.err
}
