// Package pgtest gives tests a private PostgreSQL schema in the shared test
// database.
//
// The database URL comes from the environment variable
// PSEUDONYMIZER_TEST_POSTGRES (default DefaultURL). When the database cannot
// be reached the test is skipped, unless PSEUDONYMIZER_REQUIRE_POSTGRES=1,
// in which case it fails.
//
// Typical use, in any package's tests:
//
//	dsn := pgtest.MustTempSchemaDSN(t)
//	ks, err := postgres.Open(ctx, dsn, kr)
//
// or simply ks := pgtest.MustOpen(t, kr).
package pgtest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"net/url"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/hygiene/pseudonymizer/store"
	"github.com/hygiene/pseudonymizer/store/postgres"
)

const (
	// EnvURL names the environment variable with the test database URL.
	EnvURL = "PSEUDONYMIZER_TEST_POSTGRES"
	// EnvRequire names the environment variable that, set to 1, turns an
	// unreachable test database from a skip into a failure.
	EnvRequire = "PSEUDONYMIZER_REQUIRE_POSTGRES"
	// DefaultURL is the test database URL when EnvURL is unset.
	DefaultURL = "postgres://postgres@127.0.0.1:5432/test?sslmode=disable"
)

// URL returns the test database URL (EnvURL or DefaultURL).
func URL() string {
	if u := os.Getenv(EnvURL); u != "" {
		return u
	}
	return DefaultURL
}

// MustConnect connects to the test database, skipping (or, with
// EnvRequire=1, failing) the test when it is unreachable. The connection is
// closed at cleanup.
func MustConnect(t testing.TB) *pgx.Conn {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, URL())
	if err == nil {
		err = conn.Ping(ctx)
	}
	if err != nil {
		if os.Getenv(EnvRequire) == "1" {
			t.Fatalf("pgtest: test database unreachable (%s=1): %v", EnvRequire, err)
		}
		t.Skipf("pgtest: test database unreachable, skipping (set %s, or %s=1 to fail instead): %v", EnvURL, EnvRequire, err)
	}
	t.Cleanup(func() { _ = conn.Close(context.Background()) })
	return conn
}

// MustTempSchema creates a fresh, empty schema named t_<random hex> in the
// test database, drops it (with everything in it) at cleanup, and returns
// its name and a DSN whose search_path selects it. It skips or fails the
// test like MustConnect.
func MustTempSchema(t testing.TB) (dsn, schema string) {
	t.Helper()
	conn := MustConnect(t)
	var b [8]byte
	_, _ = rand.Read(b[:])
	schema = "t_" + hex.EncodeToString(b[:])
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := conn.Exec(ctx, "CREATE SCHEMA "+schema); err != nil {
		t.Fatalf("pgtest: create schema: %v", err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		defer cancel()
		conn, err := pgx.Connect(ctx, URL())
		if err != nil {
			t.Logf("pgtest: drop schema %s: %v", schema, err)
			return
		}
		defer conn.Close(ctx)
		if _, err := conn.Exec(ctx, "DROP SCHEMA "+schema+" CASCADE"); err != nil {
			t.Logf("pgtest: drop schema %s: %v", schema, err)
		}
	})
	return withSearchPath(URL(), schema), schema
}

// MustTempSchemaDSN is MustTempSchema without the schema name: a DSN for a
// fresh schema of the test database that is dropped at cleanup.
func MustTempSchemaDSN(t testing.TB) string {
	t.Helper()
	dsn, _ := MustTempSchema(t)
	return dsn
}

// MustOpen opens a postgres.Store with kr in a fresh schema and closes it
// at cleanup (before the schema is dropped).
func MustOpen(t testing.TB, kr *store.Keyring, opts ...postgres.Option) *postgres.Store {
	t.Helper()
	dsn := MustTempSchemaDSN(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	s, err := postgres.Open(ctx, dsn, kr, opts...)
	if err != nil {
		t.Fatalf("pgtest: open store: %v", err)
	}
	t.Cleanup(func() { _ = s.Close() })
	return s
}

// withSearchPath adds search_path=schema to a URL or keyword/value DSN;
// pgx sends it as a run-time parameter.
func withSearchPath(dsn, schema string) string {
	if strings.HasPrefix(dsn, "postgres://") || strings.HasPrefix(dsn, "postgresql://") {
		if u, err := url.Parse(dsn); err == nil {
			q := u.Query()
			q.Set("search_path", schema)
			u.RawQuery = q.Encode()
			return u.String()
		}
	}
	return dsn + " search_path=" + schema
}
