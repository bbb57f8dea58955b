package postgres

import (
	"context"
	"crypto/rand"
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
	insertLease = "INSERT INTO pz_guard_leases (holder, expires_at) VALUES ($1, clock_timestamp() + $2::int8 * interval '1 millisecond')"
	deleteLease = "DELETE FROM pz_guard_leases WHERE holder = $1"
)

// Guard begins a transaction on a dedicated connection, takes the shared
// guard lock and reads the forget log after since, in one round trip. The
// transaction (and the connection) stay open until Release. A Guard held
// longer than the idle-in-transaction timeout is ended by the server; its
// Release then returns an error.
//
// The lock alone dies with its connection, possibly while the holder's
// Kafka commit is still under way. So Guard also commits a lease row, on a
// second connection and in the same round trip time, which the guard's
// transaction deletes as it releases the lock: a Forget waits for every
// lease it sees (see Forget), and the lease of a guard whose connection was
// lost stays until it expires, after the idle-in-transaction timeout, by
// when the broker has aborted or committed the holder's transaction.
func (s *Store) Guard(ctx context.Context, since uint64) (store.Guard, error) {
	holder := make([]byte, 16)
	_, _ = rand.Read(holder)
	leased := make(chan error, 1)
	go func() {
		leased <- s.with(ctx, func(conn *pgx.Conn) error {
			_, err := conn.Exec(ctx, insertLease, holder, s.leaseTTL.Milliseconds())
			return err
		})
	}()
	conn, err := s.pool.acquire(ctx)
	if err != nil {
		s.dropLease(ctx, holder, <-leased)
		return nil, wrapErr("guard", err)
	}
	g := &guard{pool: s.pool, conn: conn, holder: holder}
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
	err = conn.SendBatch(ctx, b).Close()
	leaseErr := <-leased
	if err == nil && leaseErr != nil {
		err = leaseErr
	}
	if err != nil {
		s.pool.release(conn) // still in a transaction: closed, lock dropped
		s.dropLease(ctx, holder, leaseErr)
		return nil, wrapErr("guard", err)
	}
	g.seq = uint64(seq)
	g.complete = since <= g.seq && since >= uint64(pruned) && g.seq-since <= maxLog
	return g, nil
}

// dropLease deletes the lease of a guard that was never handed out, so that
// no Forget waits for it; if that fails too, the lease simply expires.
func (s *Store) dropLease(ctx context.Context, holder []byte, insertErr error) {
	if insertErr != nil {
		return // most likely never written
	}
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), releaseTimeout)
	defer cancel()
	_ = s.with(ctx, func(conn *pgx.Conn) error {
		_, err := conn.Exec(ctx, deleteLease, holder)
		return err
	})
}

// guard is a held shared guard lock.
type guard struct {
	pool      *pool
	seq       uint64
	forgotten []store.SubjectHash
	complete  bool

	holder []byte // the lease row's key

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

// Release deletes the guard's lease and commits the guard's transaction,
// which releases the lock at the same instant, and returns its connection.
// Later calls return the first call's result. An error means the guard may
// have been lost before Release (for example to the idle-in-transaction
// timeout); its lease is then deleted on another connection, as the
// caller's commit is decided (if that fails too, the lease expires).
func (g *guard) Release(ctx context.Context) error {
	return g.release(ctx, true)
}

// Abandon returns the guard's connection without waiting for the server:
// the caller's commit is undecided, so the lease of a lost guard must stay
// until it expires. A live guard's transaction is rolled back with its
// connection, which keeps the lease too; it expires with the others.
func (g *guard) Abandon() {
	_ = g.release(context.Background(), false)
}

func (g *guard) release(ctx context.Context, decided bool) error {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.conn == nil {
		return g.err
	}
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), releaseTimeout)
	defer cancel()
	if !decided {
		g.pool.release(g.conn) // still in a transaction: closed, lock dropped
		g.conn = nil
		g.err = errors.New("postgres: guard: abandoned")
		return g.err
	}
	b := &pgx.Batch{}
	// Losing this commit in a server crash only leaves a lease behind,
	// which is safe: it need not wait for the disk.
	b.Queue("SET LOCAL synchronous_commit = off")
	b.Queue(deleteLease, g.holder)
	b.Queue("COMMIT")
	err := g.conn.SendBatch(ctx, b).Close()
	if err == nil && g.conn.PgConn().TxStatus() != 'I' {
		err = errors.New("guard transaction was not open")
	}
	g.pool.release(g.conn)
	g.conn = nil
	g.err = wrapErr("guard: release", err)
	if err != nil {
		if conn, aerr := g.pool.acquire(ctx); aerr == nil {
			_, _ = conn.Exec(ctx, deleteLease, g.holder)
			g.pool.release(conn)
		}
	}
	return g.err
}
