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
	selectCounterPruned = "SELECT seq, pruned_through, epoch, tag FROM pz_forget_counter"
	selectLogTag        = "SELECT tag FROM pz_forget_log WHERE seq = $1::int8"
	// selectLogSince lists the forget log after $1, unless that is more
	// than $2 rows (the store's forget-log limit).
	selectLogSince = `
SELECT l.subject_hash FROM pz_forget_log l
WHERE l.seq > $1::int8 AND (SELECT c.seq FROM pz_forget_counter c) - $1::int8 <= $2::int8
ORDER BY l.seq`
)

// Guard begins a transaction on a dedicated connection, takes the shared
// guard lock and reads the forget log after since (and the tag of since),
// in one round trip (one more on a connection's first guard, which
// registers it: see lostguard.go). The
// transaction (and the connection) stay open until Release. A Guard held
// longer than the idle-in-transaction timeout is ended by the server; its
// Release then returns an error.
func (s *Store) Guard(ctx context.Context, since store.Position) (store.Guard, error) {
	conn, err := s.pool.acquire(ctx)
	if err != nil {
		return nil, wrapErr("guard", err)
	}
	if err := register(ctx, conn); err != nil {
		s.pool.release(conn)
		return nil, wrapErr("guard: register connection", err)
	}
	g := &guard{pool: s.pool, conn: conn}
	sinceSQL := int64(math.MaxInt64)
	if since.Seq < math.MaxInt64 {
		sinceSQL = int64(since.Seq)
	}
	var seq, pruned int64
	var epoch, tag, sinceTag []byte
	sinceTagFound := false
	b := &pgx.Batch{}
	b.Queue("BEGIN")
	b.Queue(lockShared, guardLockClass, s.lockKey)
	b.Queue(selectCounterPruned).QueryRow(func(row pgx.Row) error { return row.Scan(&seq, &pruned, &epoch, &tag) })
	b.Queue(selectLogTag, sinceSQL).Query(func(rows pgx.Rows) error {
		for rows.Next() {
			sinceTagFound = true
			if err := rows.Scan(&sinceTag); err != nil {
				return err
			}
		}
		return rows.Err()
	})
	b.Queue(selectLogSince, sinceSQL, int64(s.maxLog)).Query(func(rows pgx.Rows) error {
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
	g.pos.Seq = uint64(seq)
	if seq == 0 {
		copy(g.pos.Tag[:], epoch)
	} else {
		copy(g.pos.Tag[:], tag)
	}
	// The tag of since: the newest entry's, the epoch, or the log entry's.
	var stored [store.TagSize]byte
	known := true
	switch {
	case since.Seq == g.pos.Seq:
		stored = g.pos.Tag
	case since.Seq == 0:
		copy(stored[:], epoch)
	case sinceTagFound:
		copy(stored[:], sinceTag)
	default:
		known = false
	}
	g.diverged, g.complete = store.CheckSince(since, g.pos, uint64(pruned), s.maxLog, stored, known)
	if !g.complete {
		g.forgotten = nil
	}
	return g, nil
}

// guard is a held shared guard lock.
type guard struct {
	pool      *pool
	pos       store.Position
	forgotten []store.SubjectHash
	complete  bool
	diverged  bool

	mu   sync.Mutex
	conn *pgx.Conn // nil once released
	err  error
}

// Seq returns the newest forget sequence number at the time of the guard.
func (g *guard) Seq() uint64 { return g.pos.Seq }

// Position returns the newest position of the forget log at the time of the
// guard.
func (g *guard) Position() store.Position { return g.pos }

// Diverged reports that the forget log does not continue the requested
// position (the store was restored or recreated).
func (g *guard) Diverged() bool { return g.diverged }

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
