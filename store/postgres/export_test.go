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

// SetResolveShards sets the most connections one Resolve creates keys on.
func SetResolveShards(s *Store, n int) { s.shards = n }
