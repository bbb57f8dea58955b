package postgres_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/hygiene/pseudonymizer/store"
	"github.com/hygiene/pseudonymizer/store/postgres"
	"github.com/hygiene/pseudonymizer/store/postgres/pgtest"
	"github.com/hygiene/pseudonymizer/store/storetest"
)

// TestCheckIsReadOnly: Check on an empty schema creates no table and
// reports an uninitialized store; after Open it reports an initialized one,
// and a wrong KEK as ErrWrongKEK.
func TestCheckIsReadOnly(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	dsn := pgtest.MustTempSchemaDSN(t)
	kr := storetest.MustKeyring(t, storetest.MustKEK(t, 1))
	initialized, err := postgres.Check(ctx, dsn, kr)
	if err != nil || initialized {
		t.Fatalf("Check of an empty schema = %v, %v; want false, nil", initialized, err)
	}
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	var tables int
	if err := conn.QueryRow(ctx, "SELECT count(*) FROM information_schema.tables WHERE table_schema = current_schema()").Scan(&tables); err != nil {
		t.Fatal(err)
	}
	if tables != 0 {
		t.Fatalf("Check created %d tables", tables)
	}
	s, err := postgres.Open(ctx, dsn, kr)
	if err != nil {
		t.Fatal(err)
	}
	s.Close()
	if initialized, err := postgres.Check(ctx, dsn, kr); err != nil || !initialized {
		t.Errorf("Check after Open = %v, %v; want true, nil", initialized, err)
	}
	if _, err := postgres.Check(ctx, dsn, storetest.MustKeyring(t, storetest.MustKEK(t, 2))); !errors.Is(err, store.ErrWrongKEK) {
		t.Errorf("Check with another KEK: %v, want ErrWrongKEK", err)
	}
	if _, err := postgres.Check(ctx, "postgres://nobody@127.0.0.1:1/none?connect_timeout=2", kr); !errors.Is(err, store.ErrUnavailable) {
		t.Errorf("Check of an unreachable database: %v, want ErrUnavailable", err)
	}
}

// TestCheckAfterMetaOnly: a database where only store.Meta was written (a
// KMS data key stored, then the first start stopped before Open) is
// reported as not initialized, and Open then initializes it.
func TestCheckAfterMetaOnly(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	dsn := pgtest.MustTempSchemaDSN(t)
	m, err := postgres.OpenMeta(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	if ok, err := m.SwapMeta(ctx, "data-key", nil, []byte("wrapped")); err != nil || !ok {
		t.Fatalf("SwapMeta = %v, %v", ok, err)
	}
	m.Close()
	kr := storetest.MustKeyring(t, storetest.MustKEK(t, 1))
	if initialized, err := postgres.Check(ctx, dsn, kr); err != nil || initialized {
		t.Fatalf("Check = %v, %v; want false, nil", initialized, err)
	}
	s, err := postgres.Open(ctx, dsn, kr)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if v, err := s.GetMeta(ctx, "data-key"); err != nil || string(v) != "wrapped" {
		t.Errorf("GetMeta after Open = %q, %v", v, err)
	}
}
