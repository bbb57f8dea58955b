package postgres

import (
	"context"

	"github.com/jackc/pgx/v5"
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
