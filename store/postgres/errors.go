package postgres

import (
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/hygiene/pseudonymizer/store"
)

// errClosed is returned by operations on a closed Store.
var errClosed = errors.New("store is closed")

// wrapErr prefixes err with the operation and marks transient database
// failures with store.ErrUnavailable, and data errors with
// store.ErrRejected.
func wrapErr(op string, err error) error {
	if err == nil {
		return nil
	}
	if code, ok := rejected(err); ok {
		// PostgreSQL's message may quote the refused value (the bytes of
		// an invalid UTF-8 sequence, the text of a bad literal): it is
		// dropped, and only the SQLSTATE is kept.
		return fmt.Errorf("postgres: %s: %w (SQLSTATE %s)", op, store.ErrRejected, code)
	}
	if unavailable(err) {
		return fmt.Errorf("postgres: %s: %w: %w", op, store.ErrUnavailable, err)
	}
	return fmt.Errorf("postgres: %s: %w", op, err)
}

// rejected reports whether err is PostgreSQL refusing a value (a data
// exception, class 22, such as 22021 character_not_in_repertoire for a
// NUL byte or invalid UTF-8 in text, or 54, a value beyond a program
// limit such as an index row too large), and returns its SQLSTATE. Such an
// error is the request's fault: retrying it cannot succeed.
func rejected(err error) (string, bool) {
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) || len(pgErr.Code) != 5 {
		return "", false
	}
	switch pgErr.Code[:2] {
	case "22", "54":
		return pgErr.Code, true
	}
	return "", false
}

// unavailable reports whether err is a connection or transaction failure
// that is worth retrying, as opposed to a programming or data error.
func unavailable(err error) bool {
	if errors.Is(err, store.ErrUnavailable) {
		return false // already marked
	}
	if errors.Is(err, errClosed) || errors.Is(err, store.ErrWrongKEK) {
		return false
	}
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		switch pgErr.Code {
		case "25P03", // idle_in_transaction_session_timeout
			"55P03", // lock_not_available
			"55006": // object_in_use
			return true
		}
		if len(pgErr.Code) >= 2 {
			switch pgErr.Code[:2] {
			case "08", // connection exception
				"40", // transaction rollback (serialization failure, deadlock)
				"53", // insufficient resources
				"57", // operator intervention (shutdown, query canceled)
				"58": // system error
				return true
			}
		}
		return false
	}
	// Network errors, timeouts, canceled contexts, broken connections.
	return true
}

// isUniqueViolation reports whether err is a unique violation of the
// named constraint.
func isUniqueViolation(err error, constraint string) bool {
	var pgErr *pgconn.PgError
	return errors.As(err, &pgErr) && pgErr.Code == "23505" && pgErr.ConstraintName == constraint
}
