package processor_test

import (
	"context"
	"fmt"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hygiene/pseudonymizer/internal/kafkatest"
	"github.com/hygiene/pseudonymizer/processor"
	"github.com/hygiene/pseudonymizer/schema/sample"
	"github.com/hygiene/pseudonymizer/store/postgres"
	"github.com/hygiene/pseudonymizer/store/postgres/pgtest"
)

// TestLostGuardDelaysConfirmation (P5 without an exception, issue 13): an
// order batch holds the store guard and is between its last guard check
// and its EndTxn when the guard's connection is killed. A forget of the
// batch's subject then gets the exclusive lock at once. The forget's
// confirmation must not become visible before the batch's records, which
// are derived from the key the forget destroys: the store makes the forget
// wait until the batch's transaction has certainly ended, here: a commit
// that lands within the wait is never overtaken. With that wait removed
// (store/postgres/forget.go), this test fails.
func TestLostGuardDelaysConfirmation(t *testing.T) {
	e := newEnv(t, "embedded") // the world; the store is this test's own
	dsn, schemaName := pgtest.MustTempSchema(t)
	app := fmt.Sprintf("pz-lostguard-%d", time.Now().UnixNano())
	dsn += "&application_name=" + app
	ctx := context.Background()
	const wait = 5 * time.Second
	st, err := postgres.Open(ctx, dsn, e.kr, postgres.WithLostGuardWait(wait))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	conn := pgtest.MustConnect(t)
	defer func() {
		if t.Failed() {
			t.Log(e.logs())
		}
	}()

	// The order batch of the first event stops before its EndTxn.
	var armed atomic.Bool
	armed.Store(true)
	paused, resume := make(chan struct{}), make(chan struct{})
	e.start(t, "pz-1", func(c *processor.Config) {
		c.Store = st
		c.Failpoint = func(name string) {
			if name == "before-commit" && armed.CompareAndSwap(true, false) {
				close(paused)
				<-resume
			}
		}
	})
	resumed := false
	defer func() {
		if !resumed {
			close(resume)
		}
	}()
	now := time.Now().Truncate(time.Millisecond)
	gen := sample.New(61, 3, now.Add(-time.Hour))
	subject := sample.CustomerID(0)
	e.produce(t, e.orderRecord(t, gen.ForCustomer(0)))
	select {
	case <-paused:
	case <-time.After(60 * time.Second):
		t.Fatal("the order batch never reached its commit")
	}

	// Its guard's connection dies (a killed backend, as in a restart).
	var pid int32
	err = conn.QueryRow(ctx, `SELECT l.pid FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
		WHERE l.locktype = 'advisory' AND l.mode = 'ShareLock' AND l.granted AND a.application_name = $1`, app).Scan(&pid)
	if err != nil {
		t.Fatalf("find the guard's backend: %v", err)
	}
	if _, err := conn.Exec(ctx, "SELECT pg_terminate_backend($1)", pid); err != nil {
		t.Fatal(err)
	}

	// The subject is forgotten meanwhile, and the batch's EndTxn goes out
	// a while after the forget committed in the store (well within the
	// transaction timeout that the store's wait covers).
	e.produce(t, e.forgetRecord(t, "req-1", subject, now))
	const late = time.Second // < wait
	kafkatest.WaitFor(t, 60*time.Second, "the forget to commit in the store", func() bool {
		var n int
		err := conn.QueryRow(ctx, "SELECT count(*) FROM "+schemaName+".pz_forget_results").Scan(&n)
		return err == nil && n > 0
	})
	outputs := func() int { return len(e.kc.ReadToEnd(t, e.outputTopics()...)) }
	confirmed := func() bool { return len(e.kc.ReadToEnd(t, e.topics.Forgotten)) > 0 }
	nsys := len(e.plan.Systems())
	confirmedFirst := false
	for hold := time.Now().Add(late); time.Now().Before(hold) && !confirmedFirst; time.Sleep(20 * time.Millisecond) {
		confirmedFirst = confirmed()
	}
	if n := outputs(); n != 0 {
		t.Fatalf("%d outputs visible before the batch's EndTxn", n)
	}

	// The batch commits; from here on, the confirmation must never be seen
	// without the batch's records.
	resumed = true
	close(resume)
	kafkatest.WaitForNil(t, 60*time.Second, "the confirmation and the batch's outputs", func() error {
		c, n := confirmed(), outputs()
		if c && n < nsys {
			confirmedFirst = true
		}
		if c && n >= nsys {
			return nil
		}
		return fmt.Errorf("after the commit: confirmed %v, %d of %d outputs", c, n, nsys)
	})
	if confirmedFirst {
		t.Fatal("P5: the forget was confirmed before records derived from the destroyed key became visible (a guard lost during EndTxn)")
	}
	if !strings.Contains(e.logs(), "store guard lost while committing") {
		t.Error("the instance did not report the guard lost during its commit")
	}
	for _, c := range e.confirmations(t, 1) {
		if c.Status != "FORGOTTEN" {
			t.Errorf("status %s, want FORGOTTEN", c.Status)
		}
	}
}
