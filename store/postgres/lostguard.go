package postgres

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"time"

	"github.com/jackc/pgx/v5"
)

// A guard's shared lock dies with its connection. If that happens while the
// holder's Kafka commit is under way, the commit may still land after a
// Forget that took the exclusive lock meanwhile, and after its
// confirmation. So Forget waits for such commits to be decided:
//
//   - Every connection that takes a guard registers itself once, before its
//     first guard: it takes a session-level advisory lock on a random key
//     of its own and inserts that key into pz_guard_conns. The lock lives
//     exactly as long as the connection.
//   - Forget, holding the exclusive lock, tries every registered key but its
//     own connection's. A key it can take belongs to a connection that is
//     gone, and that may have held a guard when it went. Forget marks the
//     row (dead_since, the first time a Forget sees it gone) and, after
//     committing, waits until lostGuardWait has passed since then. By then
//     the broker has ended every transaction the lost guard's holder had
//     begun: the Kafka transaction timeout is at most 15s, and the broker
//     aborts a timed-out transaction within 10s more.
//   - A backend that is terminated releases its transaction's locks (the
//     guard) a moment before its session's (the liveness lock), so the
//     first check may find it still alive. So Forget checks once more after
//     its commit, under the lock again: by then the backend has long gone.
//   - A row whose wait is over is deleted by the next Forget; a connection
//     that the pool closes in good health deletes its own.
//
// Lost connections are rare (a killed backend, a server restart, a crashed
// instance), so Forget almost never waits, and it never waits while
// holding the lock: guards, and so orders, are never held up by it.

const (
	// lockLiveness takes the session-level lock that shows a registered
	// connection alive.
	lockLiveness   = "SELECT pg_advisory_lock($1::int8)"
	insertGuardCon = "INSERT INTO pz_guard_conns (lock_key) VALUES ($1::int8)"
	deleteGuardCon = "DELETE FROM pz_guard_conns WHERE lock_key = $1::int8"
	// markGoneGuardCons marks the registered connections that are gone
	// (their liveness lock is free), skipping the caller's own ($1), and
	// returns how many milliseconds of each one's wait ($2) remain.
	markGoneGuardCons = `
WITH gone AS (
	SELECT lock_key FROM pz_guard_conns WHERE lock_key <> $1::int8 AND pg_try_advisory_xact_lock(lock_key)
)
UPDATE pz_guard_conns c SET dead_since = COALESCE(c.dead_since, clock_timestamp())
FROM gone WHERE c.lock_key = gone.lock_key
RETURNING GREATEST(0, $2::int8 - (EXTRACT(EPOCH FROM clock_timestamp() - c.dead_since) * 1000)::int8)`
	// pruneGoneGuardCons deletes the rows whose wait ($1 ms) is over.
	pruneGoneGuardCons = "DELETE FROM pz_guard_conns WHERE dead_since < clock_timestamp() - $1::int8 * interval '1 millisecond'"
)

// queueMarkGone queues markGoneGuardCons on b, raising *wait to the
// longest remaining wait. The caller holds the exclusive guard lock in
// b's transaction, so no other Forget tries the same liveness locks.
func (s *Store) queueMarkGone(b *pgx.Batch, conn *pgx.Conn, wait *time.Duration) {
	b.Queue(markGoneGuardCons, ownKey(conn), s.lostGuardWait.Milliseconds()).Query(func(rows pgx.Rows) error {
		for rows.Next() {
			var ms int64
			if err := rows.Scan(&ms); err != nil {
				return err
			}
			*wait = max(*wait, time.Duration(ms)*time.Millisecond)
		}
		return rows.Err()
	})
}

// recheckGone checks the registered connections once more, in a
// transaction of its own under the exclusive lock (one round trip): a
// backend that was being terminated while Forget took the lock has
// released its liveness lock by now.
func (s *Store) recheckGone(ctx context.Context, conn *pgx.Conn, wait *time.Duration) error {
	b := &pgx.Batch{}
	b.Queue("BEGIN")
	b.Queue(lockExclusive, guardLockClass, s.lockKey)
	s.queueMarkGone(b, conn, wait)
	b.Queue("COMMIT")
	return conn.SendBatch(ctx, b).Close()
}

// livenessData is the key of a connection's registration in its CustomData.
const livenessData = "pseudonymizer.guard_conn"

// register makes conn a registered guard connection, once per connection.
func register(ctx context.Context, conn *pgx.Conn) error {
	data := conn.PgConn().CustomData()
	if _, ok := data[livenessData]; ok {
		return nil
	}
	var buf [8]byte
	_, _ = rand.Read(buf[:])
	key := int64(binary.BigEndian.Uint64(buf[:]) >> 1) // positive, never the migration lock's
	// One round trip, outside any transaction: the session-level lock
	// outlives the implicit transaction, and the row is committed with it.
	// Lock first, so that no Forget sees the row without its lock.
	b := &pgx.Batch{}
	b.Queue(lockLiveness, key)
	b.Queue(insertGuardCon, key)
	if err := conn.SendBatch(ctx, b).Close(); err != nil {
		return err
	}
	data[livenessData] = key
	return nil
}

// ownKey returns conn's registered key, or 0.
func ownKey(conn *pgx.Conn) int64 {
	k, _ := conn.PgConn().CustomData()[livenessData].(int64)
	return k
}

// deregister deletes the registration of a connection that the pool closes
// in good health. A connection that is broken or inside a transaction (a
// guard that failed) keeps its row: Forget will find it gone and wait.
func deregister(conn *pgx.Conn) {
	key := ownKey(conn)
	if key == 0 || conn.IsClosed() || conn.PgConn().TxStatus() != 'I' {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), releaseTimeout)
	defer cancel()
	_, _ = conn.Exec(ctx, deleteGuardCon, key)
}

// sleepCtx waits d, or until ctx ends.
func sleepCtx(ctx context.Context, d time.Duration) error {
	if d <= 0 {
		return nil
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}
