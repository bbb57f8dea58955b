package processor_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/hygiene/pseudonymizer/processor"
	"github.com/hygiene/pseudonymizer/schema"
	"github.com/hygiene/pseudonymizer/schema/sample"
	"github.com/hygiene/pseudonymizer/store"
	"github.com/hygiene/pseudonymizer/store/postgres"
	"github.com/hygiene/pseudonymizer/store/postgres/pgtest"
)

// TestRestoredStoreDropsCache (issue 12, case 6): the PostgreSQL store is
// restored from a backup while an instance runs, and a forget made after
// the restore (by another instance) brings the forget sequence number back
// to where the running instance last saw it. The instance must not go on
// with the key it cached: an event of the subject that occurred before the
// new forget request is suppressed, not published with the cached key.
func TestRestoredStoreDropsCache(t *testing.T) {
	e := newEnv(t, "embedded") // the world; the store is this test's own
	dsn, schemaName := pgtest.MustTempSchema(t)
	snapshot := schemaName + "_backup"
	ctx := context.Background()
	openStore := func() store.KeyStore {
		s, err := postgres.Open(ctx, dsn, e.kr, postgres.WithSchema(schemaName))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { s.Close() })
		return s
	}
	st, other := openStore(), openStore() // this instance's, and another instance's
	defer func() {
		if t.Failed() {
			t.Log(e.logs())
		}
	}()
	conn := pgtest.MustConnect(t)
	sql := func(q string) {
		t.Helper()
		if _, err := conn.Exec(ctx, q); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
	}
	tables := []string{"pz_meta", "pz_subject_keys", "pz_tombstones", "pz_forget_results", "pz_forget_log", "pz_forget_counter"}
	t.Cleanup(func() { _, _ = conn.Exec(context.Background(), "DROP SCHEMA IF EXISTS "+snapshot+" CASCADE") })

	now := time.Now().Truncate(time.Millisecond)
	gen := sample.New(51, 3, now.Add(-3*time.Hour))
	subject := sample.CustomerID(0)
	cl := e.client(t, kgo.RecordPartitioner(kgo.ManualPartitioner()))
	outputs := 0
	// emit produces events on partition 0 and waits until want outputs
	// in total were committed.
	emit := func(want int, evs ...*schema.OrderEvent) {
		t.Helper()
		for _, ev := range evs {
			r := e.orderRecord(t, ev)
			r.Partition = 0
			if err := cl.ProduceSync(ctx, r).FirstErr(); err != nil {
				t.Fatal(err)
			}
		}
		outputs = want
		e.kc.AwaitCount(t, want, 60*time.Second, e.outputTopics()...)
	}
	at := func(ev *schema.OrderEvent, d time.Duration) *schema.OrderEvent {
		ev.OccurredAt = now.Add(d)
		return ev
	}
	nsys := len(e.plan.Systems())
	e.start(t, "pz-1", func(c *processor.Config) { c.Store = st })

	emit(nsys, at(gen.ForCustomer(0), -2*time.Hour)) // the instance caches the subject's key
	sql("CREATE SCHEMA " + snapshot)
	for _, tb := range tables {
		sql("CREATE TABLE " + snapshot + "." + tb + " AS SELECT * FROM " + schemaName + "." + tb)
	}
	// Another instance forgets the subject; the next guard tells this one.
	if _, err := other.Forget(ctx, []store.ForgetRequest{{RequestID: "r1", SubjectID: subject, RequestedAt: now.Add(-90 * time.Minute)}}); err != nil {
		t.Fatal(err)
	}
	emit(2*nsys, at(gen.ForCustomer(1), -80*time.Minute))
	emit(3*nsys, at(gen.ForCustomer(0), -60*time.Minute)) // a fresh key, cached

	// The backup is restored while the instance runs, and another instance
	// forgets the subject again: the sequence number is back at 1.
	err := pgx.BeginFunc(ctx, conn, func(tx pgx.Tx) error {
		for _, tb := range tables {
			if _, err := tx.Exec(ctx, "DELETE FROM "+schemaName+"."+tb); err != nil {
				return err
			}
			if _, err := tx.Exec(ctx, "INSERT INTO "+schemaName+"."+tb+" SELECT * FROM "+snapshot+"."+tb); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatalf("restore: %v", err)
	}
	if _, err := other.Forget(ctx, []store.ForgetRequest{{RequestID: "r2", SubjectID: subject, RequestedAt: now.Add(-10 * time.Minute)}}); err != nil {
		t.Fatal(err)
	}

	// An event of the subject before r2, then one of another subject on
	// the same partition: once that is out, the first was decided.
	old := at(gen.ForCustomer(0), -20*time.Minute)
	emit(outputs+nsys, old, at(gen.ForCustomer(2), -5*time.Minute))
	all := e.settled(t, e.outputTopics()...)
	if len(all) != outputs {
		t.Fatalf("%d outputs, want %d", len(all), outputs)
	}
	for _, d := range e.decode(t, all) {
		if d.at.Equal(old.OccurredAt) {
			t.Fatalf("%s received an event that occurred before a forget request, derived from a key cached before the store was restored", d.system)
		}
	}
	if !strings.Contains(e.logs(), "forget log was rewound") {
		t.Errorf("the instance did not report the rewound forget log")
	}
}
