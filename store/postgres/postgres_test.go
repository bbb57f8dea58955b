package postgres_test

import (
	"bytes"
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/hygiene/pseudonymizer/store"
	"github.com/hygiene/pseudonymizer/store/postgres"
	"github.com/hygiene/pseudonymizer/store/postgres/pgtest"
	"github.com/hygiene/pseudonymizer/store/storetest"
)

// forgetLogLimit is the stores' forget-log limit in the conformance suite:
// small, so that the case that goes past it is quick.
const forgetLogLimit = 1000

func TestConformance(t *testing.T) {
	type storage struct{ dsn, schema string }
	dsns := storetest.PerTest[string]{New: func(t *testing.T) string { return pgtest.MustTempSchemaDSN(t) }}
	snaps := storetest.PerTest[storage]{New: func(t *testing.T) storage {
		dsn, schema := pgtest.MustTempSchema(t)
		return storage{dsn, schema}
	}}
	storetest.Run(t, func(t *testing.T, kr *store.Keyring) (store.KeyStore, error) {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		return postgres.Open(ctx, dsns.Get(t), kr, postgres.WithForgetLogLimit(forgetLogLimit))
	}, storetest.WithForgetLogLimit(forgetLogLimit), storetest.WithMeta(func(t *testing.T) (store.Meta, func() error, error) {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		m, err := postgres.OpenMeta(ctx, dsns.Get(t))
		if err != nil {
			return nil, nil, err
		}
		return m, m.Close, nil
	}), storetest.WithMultipleOpen(), storetest.WithRaw(func(t *testing.T) []byte {
		return mustDump(t, dsns.Get(t))
	}), storetest.WithSnapshot(func(t *testing.T) func() {
		// A backup: every table copied into another schema; the restore
		// puts the rows back, as pg_dump and pg_restore would.
		snap := snaps.Get(t)
		tables := mustCopyTables(t, dsns.Get(t), snap.schema)
		return func() { mustRestoreTables(t, dsns.Get(t), snap.schema, tables) }
	}))
}

// mustCopyTables copies every table of the DSN's schema into schema.
func mustCopyTables(t *testing.T, dsn, schema string) []string {
	t.Helper()
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatalf("connect: %v", err)
	}
	defer conn.Close(ctx)
	rows, err := conn.Query(ctx, "SELECT table_name FROM information_schema.tables WHERE table_schema = current_schema()")
	if err != nil {
		t.Fatalf("list tables: %v", err)
	}
	tables, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		t.Fatalf("list tables: %v", err)
	}
	for _, table := range tables {
		src, dst := pgx.Identifier{table}.Sanitize(), pgx.Identifier{schema, table}.Sanitize()
		if _, err := conn.Exec(ctx, "CREATE TABLE "+dst+" AS SELECT * FROM "+src); err != nil {
			t.Fatalf("snapshot %s: %v", table, err)
		}
	}
	return tables
}

// mustRestoreTables replaces the rows of the DSN's schema's tables by
// those copied into schema.
func mustRestoreTables(t *testing.T, dsn, schema string, tables []string) {
	t.Helper()
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatalf("connect: %v", err)
	}
	defer conn.Close(ctx)
	err = pgx.BeginFunc(ctx, conn, func(tx pgx.Tx) error {
		for _, table := range tables {
			dst, src := pgx.Identifier{table}.Sanitize(), pgx.Identifier{schema, table}.Sanitize()
			if _, err := tx.Exec(ctx, "DELETE FROM "+dst); err != nil {
				return err
			}
			if _, err := tx.Exec(ctx, "INSERT INTO "+dst+" SELECT * FROM "+src); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatalf("restore: %v", err)
	}
}

// mustDump returns every row of every table in the DSN's schema as text.
func mustDump(t *testing.T, dsn string) []byte {
	t.Helper()
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatalf("connect: %v", err)
	}
	defer conn.Close(ctx)
	rows, err := conn.Query(ctx, "SELECT table_name FROM information_schema.tables WHERE table_schema = current_schema()")
	if err != nil {
		t.Fatalf("list tables: %v", err)
	}
	tables, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		t.Fatalf("list tables: %v", err)
	}
	if len(tables) == 0 {
		t.Fatalf("no tables in the store's schema")
	}
	var buf bytes.Buffer
	for _, table := range tables {
		id := pgx.Identifier{table}.Sanitize()
		rows, err := conn.Query(ctx, "SELECT t::text FROM "+id+" t")
		if err != nil {
			t.Fatalf("dump %s: %v", table, err)
		}
		lines, err := pgx.CollectRows(rows, pgx.RowTo[string])
		if err != nil {
			t.Fatalf("dump %s: %v", table, err)
		}
		buf.WriteString(table + "\n" + strings.Join(lines, "\n") + "\n")
	}
	return buf.Bytes()
}

func TestOpenUnreachableIsUnavailable(t *testing.T) {
	kr := storetest.MustKeyring(t, storetest.MustKEK(t, 1))
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	_, err := postgres.Open(ctx, "postgres://postgres@127.0.0.1:1/test?sslmode=disable&connect_timeout=5", kr)
	if !errors.Is(err, store.ErrUnavailable) {
		t.Fatalf("Open of a closed port: got %v, want ErrUnavailable", err)
	}
	if strings.Contains(err.Error(), "\n") {
		t.Errorf("error is not one line: %q", err)
	}
}

func TestWithSchemaCreatesSchema(t *testing.T) {
	conn := pgtest.MustConnect(t)
	_, schema := pgtest.MustTempSchema(t)
	ctx := context.Background()
	if _, err := conn.Exec(ctx, "DROP SCHEMA "+schema); err != nil { // Open must create it
		t.Fatalf("drop: %v", err)
	}
	kr := storetest.MustKeyring(t, storetest.MustKEK(t, 1))
	s, err := postgres.Open(ctx, pgtest.URL(), kr, postgres.WithSchema(schema))
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	defer s.Close()
	if _, err := s.Resolve(ctx, []store.Lookup{{SubjectID: "alice"}}); err != nil {
		t.Fatalf("Resolve: %v", err)
	}
	var n int
	if err := conn.QueryRow(ctx, "SELECT count(*) FROM "+schema+".pz_subject_keys").Scan(&n); err != nil || n != 1 {
		t.Errorf("keys in %s: got %d, %v; want 1, nil", schema, n, err)
	}
}

func TestConcurrentOpen(t *testing.T) {
	dsn := pgtest.MustTempSchemaDSN(t)
	kr := storetest.MustKeyring(t, storetest.MustKEK(t, 1))
	const n = 8
	stores := make([]*postgres.Store, n)
	errs := make(chan error, n)
	for i := range n {
		go func() {
			s, err := postgres.Open(context.Background(), dsn, kr)
			stores[i] = s
			errs <- err
		}()
	}
	for range n {
		if err := <-errs; err != nil {
			t.Errorf("Open: %v", err)
		}
	}
	for _, s := range stores {
		if s != nil {
			defer s.Close()
		}
	}
	if t.Failed() {
		return
	}
	for i, s := range stores {
		if s.Hash("alice") != stores[0].Hash("alice") {
			t.Errorf("store %d: got a different index key than store 0", i)
		}
	}
}

func TestSessionSettings(t *testing.T) {
	kr := storetest.MustKeyring(t, storetest.MustKEK(t, 1))
	ctx := context.Background()
	s, err := postgres.Open(ctx, pgtest.MustTempSchemaDSN(t), kr)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	defer s.Close()
	for name, want := range map[string]string{
		"application_name":                    "pseudonymizer",
		"idle_in_transaction_session_timeout": "30s",
	} {
		got, err := postgres.SessionSetting(ctx, s, name)
		if err != nil || got != want {
			t.Errorf("%s: got %q, %v; want %q", name, got, err, want)
		}
	}
}

func TestStalledGuardIsEndedByServer(t *testing.T) {
	dsn := pgtest.MustTempSchemaDSN(t)
	kr := storetest.MustKeyring(t, storetest.MustKEK(t, 1))
	ctx := context.Background()
	// The stalled guard's connection is ended by the server: Forget then
	// also waits for it as for any lost guard (lostguard_test.go).
	s, err := postgres.Open(ctx, dsn, kr, postgres.WithIdleInTransactionTimeout(500*time.Millisecond), postgres.WithLostGuardWait(time.Second))
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	defer s.Close()
	g, err := s.Guard(ctx, store.Position{}) // never released in time: a stalled holder
	if err != nil {
		t.Fatalf("Guard: %v", err)
	}
	fctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	res, err := s.Forget(fctx, []store.ForgetRequest{{RequestID: "r1", SubjectID: "alice"}})
	if err != nil {
		t.Fatalf("Forget behind a stalled guard: %v", err)
	}
	if got, want := res[0].Status, store.UnknownSubject; got != want {
		t.Errorf("status: got %v, want %v", got, want)
	}
	if err := g.Check(ctx); !errors.Is(err, store.ErrUnavailable) {
		t.Errorf("Check of a guard ended by the server: got %v, want ErrUnavailable", err)
	}
	if err := g.Release(ctx); !errors.Is(err, store.ErrUnavailable) {
		t.Errorf("Release of a guard ended by the server: got %v, want ErrUnavailable", err)
	}
	if err := g.Release(ctx); !errors.Is(err, store.ErrUnavailable) {
		t.Errorf("second Release: got %v, want the same error", err)
	}
	if err := s.Ping(ctx); err != nil {
		t.Errorf("Ping after a lost guard: %v", err)
	}
}

// TestUpgradeFromSchema2 opens a database as schema version 2 left it (no
// key creation times, forget results without request ID): the upgrade keeps
// every key and result, reports the old key's creation time as unknown
// rather than the time of the upgrade, and lists old results.
func TestUpgradeFromSchema2(t *testing.T) {
	ctx := context.Background()
	dsn := pgtest.MustTempSchemaDSN(t)
	kr := storetest.MustKeyring(t, storetest.MustKEK(t, 1))
	s, err := postgres.Open(ctx, dsn, kr)
	if err != nil {
		t.Fatal(err)
	}
	at := time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)
	e, err := s.Resolve(ctx, []store.Lookup{{SubjectID: "a", Latest: at}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Forget(ctx, []store.ForgetRequest{{RequestID: "r1", SubjectID: "b", RequestedAt: at}}); err != nil {
		t.Fatal(err)
	}
	s.Close()
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := conn.Exec(ctx, `
ALTER TABLE pz_subject_keys DROP COLUMN created_at;
ALTER TABLE pz_forget_results DROP COLUMN request_id, DROP COLUMN subject_hash, DROP COLUMN requested_at;
DROP INDEX pz_forget_results_completed_at;
UPDATE pz_meta SET value = '2' WHERE name = 'schema_version'`); err != nil {
		t.Fatal(err)
	}
	conn.Close(ctx)

	s, err = postgres.Open(ctx, dsn, kr)
	if err != nil {
		t.Fatalf("open a version 2 schema: %v", err)
	}
	defer s.Close()
	st, err := s.Subject(ctx, "a")
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(st.Key, e[0].Key) || !st.KeyCreatedAt.IsZero() {
		t.Errorf("old key after upgrade: same key %v, created %v (want unknown)", bytes.Equal(st.Key, e[0].Key), st.KeyCreatedAt)
	}
	var got []store.ForgetRecord
	if err := s.ForgetLog(ctx, time.Time{}, func(r store.ForgetRecord) error { got = append(got, r); return nil }); err != nil {
		t.Fatal(err)
	}
	if len(got) != 1 || got[0].Status != store.UnknownSubject || got[0].RequestID != "" {
		t.Errorf("ForgetLog after upgrade: %+v", got)
	}
	// New keys record their creation time.
	if _, err := s.Resolve(ctx, []store.Lookup{{SubjectID: "c", Latest: at}}); err != nil {
		t.Fatal(err)
	}
	if st, err := s.Subject(ctx, "c"); err != nil || st.KeyCreatedAt.IsZero() {
		t.Errorf("new key after upgrade: created %v, %v", st.KeyCreatedAt, err)
	}
}

// TestUpgradeFromSchema3 opens a database as schema version 3 left it (no
// guard connections, no retained keys): migrations 4 and 5 add them, and a
// forget that retains its key returns it again until it is settled.
func TestUpgradeFromSchema3(t *testing.T) {
	ctx := context.Background()
	dsn := pgtest.MustTempSchemaDSN(t)
	kr := storetest.MustKeyring(t, storetest.MustKEK(t, 1))
	s, err := postgres.Open(ctx, dsn, kr)
	if err != nil {
		t.Fatal(err)
	}
	at := time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)
	e, err := s.Resolve(ctx, []store.Lookup{{SubjectID: "a", Latest: at}})
	if err != nil {
		t.Fatal(err)
	}
	s.Close()
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := conn.Exec(ctx, `
DROP TABLE pz_forget_retained;
DROP TABLE pz_guard_conns;
UPDATE pz_meta SET value = '3' WHERE name = 'schema_version'`); err != nil {
		t.Fatal(err)
	}
	conn.Close(ctx)

	s, err = postgres.Open(ctx, dsn, kr)
	if err != nil {
		t.Fatalf("open a version 3 schema: %v", err)
	}
	defer s.Close()
	req := store.ForgetRequest{RequestID: "r1", SubjectID: "a", RequestedAt: at, Retain: true, Partition: 2, Offset: 9}
	for range 2 {
		res, err := s.Forget(ctx, []store.ForgetRequest{req})
		if err != nil {
			t.Fatal(err)
		}
		if res[0].Status != store.Forgotten || !bytes.Equal(res[0].Key, e[0].Key) {
			t.Fatalf("retaining forget after upgrade: status %v, key returned %v", res[0].Status, res[0].Key != nil)
		}
	}
	if err := s.Settle(ctx, []store.ForgetRequest{req}); err != nil {
		t.Fatal(err)
	}
	res, err := s.Forget(ctx, []store.ForgetRequest{req})
	if err != nil || res[0].Key != nil {
		t.Fatalf("forget after Settle: key returned %v, %v", res[0].Key != nil, err)
	}
}

// TestUpgradeFromSchema5 opens a database as schema version 5 left it (no
// objection tables): migration 6 adds them, keys and tombstones are kept,
// and objections work, also for a subject forgotten before the upgrade.
func TestUpgradeFromSchema5(t *testing.T) {
	ctx := context.Background()
	dsn := pgtest.MustTempSchemaDSN(t)
	kr := storetest.MustKeyring(t, storetest.MustKEK(t, 1))
	s, err := postgres.Open(ctx, dsn, kr)
	if err != nil {
		t.Fatal(err)
	}
	at := time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)
	e, err := s.Resolve(ctx, []store.Lookup{{SubjectID: "a", Latest: at}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Forget(ctx, []store.ForgetRequest{{RequestID: "r1", SubjectID: "b", RequestedAt: at}}); err != nil {
		t.Fatal(err)
	}
	s.Close()
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := conn.Exec(ctx, `
DROP TABLE pz_objections;
DROP TABLE pz_objection_log;
UPDATE pz_meta SET value = '5' WHERE name = 'schema_version'`); err != nil {
		t.Fatal(err)
	}
	conn.Close(ctx)

	s, err = postgres.Open(ctx, dsn, kr)
	if err != nil {
		t.Fatalf("open a version 5 schema: %v", err)
	}
	defer s.Close()
	got, err := s.Resolve(ctx, []store.Lookup{{SubjectID: "a", Latest: at}, {SubjectID: "b", Latest: at}})
	if err != nil || !bytes.Equal(got[0].Key, e[0].Key) || got[0].Objection != nil || got[1].Key != nil {
		t.Fatalf("Resolve after upgrade: %+v, %v", got, err)
	}
	res, err := s.Object(ctx, []store.ObjectionRequest{
		{RequestID: "o1", SubjectID: "a", EffectiveAt: at, Systems: []string{"meta"}},
		{RequestID: "o2", SubjectID: "b", EffectiveAt: at, Systems: []string{"*"}}, // not after b's tombstone
	})
	if err != nil || res[0].Status != store.ObjectionApplied || res[0].Superseded || !res[1].Superseded {
		t.Fatalf("Object after upgrade: %+v, %v", res, err)
	}
	got, err = s.Resolve(ctx, []store.Lookup{{SubjectID: "a", Latest: at}})
	if err != nil || !got[0].Objection.Objects("meta", at) || got[0].Objection.Objects("crm", at) {
		t.Fatalf("Resolve after an objection: %+v, %v", got[0].Objection, err)
	}
}

// TestResolveLargeBatch: a batch large enough that its 2,500 new keys are
// created in two shards on two connections resolves like small ones: new
// subjects get keys, the same subjects resolved again get the same keys,
// and a forgotten one its tombstone.
func TestResolveLargeBatch(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	kr := storetest.MustKeyring(t, storetest.MustKEK(t, 1))
	s, err := postgres.Open(ctx, pgtest.MustTempSchemaDSN(t), kr)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	now := time.Now().Truncate(time.Millisecond)
	lookups := make([]store.Lookup, 5000)
	for i := range lookups {
		lookups[i] = store.Lookup{SubjectID: "c-" + strings.Repeat("x", i%7) + string(rune('a'+i%26)) + time.Duration(i).String(), Latest: now.Add(-time.Hour)}
	}
	first, err := s.Resolve(ctx, lookups[:2500])
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Forget(ctx, []store.ForgetRequest{{RequestID: "r", SubjectID: lookups[7].SubjectID, RequestedAt: now.Add(-time.Minute)}}); err != nil {
		t.Fatal(err)
	}
	all, err := s.Resolve(ctx, lookups)
	if err != nil {
		t.Fatal(err)
	}
	for i, e := range all {
		switch {
		case i == 7:
			if e.Key != nil || e.ForgottenAt.IsZero() {
				t.Errorf("forgotten subject: key %x, tombstone %v", e.Key, e.ForgottenAt)
			}
		case len(e.Key) != store.KeySize:
			t.Fatalf("subject %d: no key", i)
		case i < 2500 && !bytes.Equal(e.Key, first[i].Key):
			t.Fatalf("subject %d: another key on the second resolve", i)
		case e.Hash != s.Hash(lookups[i].SubjectID):
			t.Fatalf("subject %d: wrong hash", i)
		}
	}
}

// TestForgetDataErrorIsRejected (issue 24, item 1): a request that
// PostgreSQL refuses for its data (a NUL byte or invalid UTF-8 in the
// request ID, which is stored as text: SQLSTATE 22021) fails with
// store.ErrRejected, not store.ErrUnavailable, so that the caller
// dead-letters it instead of retrying for ever; the error text does not
// echo the refused bytes; the call changes nothing, and the store goes on
// serving the requests around it.
func TestForgetDataErrorIsRejected(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	s, err := postgres.Open(ctx, pgtest.MustTempSchemaDSN(t), storetest.MustKeyring(t, storetest.MustKEK(t, 1)))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if _, err := s.Resolve(ctx, []store.Lookup{{SubjectID: "cust-1", Latest: time.Now()}}); err != nil {
		t.Fatal(err)
	}
	for _, bad := range []string{"req\x00nul", "req-\xff"} {
		_, err := s.Forget(ctx, []store.ForgetRequest{
			{RequestID: "req-ok", SubjectID: "cust-1", RequestedAt: time.Now()},
			{RequestID: bad, SubjectID: "cust-2", RequestedAt: time.Now()},
		})
		switch {
		case err == nil:
			t.Fatalf("%q: Forget accepted a request ID that PostgreSQL text cannot hold", bad)
		case !errors.Is(err, store.ErrRejected) || errors.Is(err, store.ErrUnavailable):
			t.Fatalf("%q: Forget error %q is not store.ErrRejected alone", bad, err)
		case strings.Contains(err.Error(), "0x") || strings.ContainsAny(err.Error(), "\x00\xff"):
			t.Fatalf("%q: the error echoes the refused bytes: %q", bad, err)
		}
	}
	// Nothing of the refused calls was written, and the store still works.
	res, err := s.Forget(ctx, []store.ForgetRequest{{RequestID: "req-ok", SubjectID: "cust-1", RequestedAt: time.Now()}})
	if err != nil {
		t.Fatal(err)
	}
	if res[0].Status != store.Forgotten {
		t.Fatalf("status %v after the refused calls, want FORGOTTEN (they must have changed nothing)", res[0].Status)
	}
}
