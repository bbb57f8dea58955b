package postgres

import (
	"context"

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

// GuardPID returns the server process ID of a held guard's connection.
func GuardPID(g store.Guard) uint32 {
	gg := g.(*guard)
	gg.mu.Lock()
	defer gg.mu.Unlock()
	return gg.conn.PgConn().PID()
}

// LiveLeases counts the guard leases that have not expired.
func LiveLeases(ctx context.Context, s *Store) (int, error) {
	var n int
	err := s.with(ctx, func(conn *pgx.Conn) error {
		return conn.QueryRow(ctx, "SELECT count(*) FROM pz_guard_leases WHERE expires_at > clock_timestamp()").Scan(&n)
	})
	return n, err
}
