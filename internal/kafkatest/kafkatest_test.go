package kafkatest_test

import (
	"context"
	"fmt"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/hygiene/pseudonymizer/internal/kafkatest"
)

// recorder is a testing.TB whose Fatal and Skip end only the goroutine that
// calls them, so a helper's failure can be asserted.
type recorder struct {
	testing.TB
	mu      sync.Mutex
	failed  bool
	skipped bool
	msg     string
}

func (r *recorder) Helper() {}

func (r *recorder) stop(failed bool, msg string) {
	r.mu.Lock()
	r.failed, r.skipped, r.msg = failed, !failed, msg
	r.mu.Unlock()
	runtime.Goexit()
}

func (r *recorder) Fatal(args ...any)                 { r.stop(true, fmt.Sprint(args...)) }
func (r *recorder) Fatalf(format string, args ...any) { r.stop(true, fmt.Sprintf(format, args...)) }
func (r *recorder) Skip(args ...any)                  { r.stop(false, fmt.Sprint(args...)) }

// call runs f with a recorder in its own goroutine and returns how it ended.
func call(t *testing.T, f func(tb testing.TB)) (failed, skipped bool, msg string) {
	t.Helper()
	r := &recorder{TB: t}
	done := make(chan struct{})
	go func() {
		defer close(done)
		f(r)
	}()
	<-done
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.failed, r.skipped, r.msg
}

// txn runs one transaction of recs and commits or aborts it.
func txn(t *testing.T, cl *kgo.Client, commit bool, recs ...*kgo.Record) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := cl.BeginTransaction(); err != nil {
		t.Fatal(err)
	}
	if err := cl.ProduceSync(ctx, recs...).FirstErr(); err != nil {
		t.Fatal(err)
	}
	if err := cl.EndTransaction(ctx, kgo.TransactionEndTry(commit)); err != nil {
		t.Fatal(err)
	}
}

func values(recs []*kgo.Record) string {
	var vs []string
	for _, r := range recs {
		vs = append(vs, string(r.Value))
	}
	return strings.Join(vs, ",")
}

// TestReadToEnd: ReadToEnd returns exactly the committed records up to the
// last stable offset at the call, also when a partition ends with an abort
// marker and while another transaction is open; AwaitCount and AwaitStable
// wait for that transaction and fail while it stays open.
func TestReadToEnd(t *testing.T) {
	t.Parallel()
	c := kafkatest.New(t)
	topic := c.Topic("t")
	c.CreateTopics(t, 2, nil, topic)
	rec := func(p int32, v string) *kgo.Record {
		return &kgo.Record{Topic: topic, Partition: p, Value: []byte(v)}
	}
	manual := kgo.RecordPartitioner(kgo.ManualPartitioner())

	if got := c.ReadToEnd(t, topic); len(got) != 0 {
		t.Fatalf("empty topic: read %d records", len(got))
	}
	plain := c.Client(t, manual)
	if err := plain.ProduceSync(context.Background(), rec(0, "a"), rec(0, "b"), rec(0, "c")).FirstErr(); err != nil {
		t.Fatal(err)
	}
	tx := c.Client(t, manual, kgo.TransactionalID(c.TxnID("tx")), kgo.TransactionTimeout(30*time.Second))
	txn(t, tx, true, rec(1, "d"), rec(1, "e"))
	txn(t, tx, false, rec(1, "aborted-1"), rec(1, "aborted-2")) // partition 1 ends with an abort marker
	txn(t, tx, true, rec(0, "f"))
	// EndTransaction returns before the broker wrote the commit markers,
	// so the last stable offset may still lag: wait for the count first.
	if got, want := values(c.AwaitCount(t, 6, 30*time.Second, topic)), "a,b,c,f,d,e"; got != want {
		t.Fatalf("AwaitCount(6) = %s, want %s", got, want)
	}
	if got, want := values(c.ReadToEnd(t, topic)), "a,b,c,f,d,e"; got != want {
		t.Fatalf("ReadToEnd = %s, want %s", got, want)
	}

	// An open transaction: ReadToEnd stops before it, the awaits fail.
	if err := tx.BeginTransaction(); err != nil {
		t.Fatal(err)
	}
	if err := tx.ProduceSync(context.Background(), rec(0, "g")).FirstErr(); err != nil {
		t.Fatal(err)
	}
	if got, want := values(c.ReadToEnd(t, topic)), "a,b,c,f,d,e"; got != want {
		t.Fatalf("ReadToEnd with an open transaction = %s, want %s", got, want)
	}
	if failed, _, msg := call(t, func(tb testing.TB) { c.AwaitCount(tb, 7, 2*time.Second, topic) }); !failed || !strings.Contains(msg, "of 7 committed records") {
		t.Fatalf("AwaitCount(7) with the 7th record uncommitted: failed %v, %q", failed, msg)
	}
	if failed, _, msg := call(t, func(tb testing.TB) { c.AwaitStable(tb, 2*time.Second, topic) }); !failed || !strings.Contains(msg, "not stable") {
		t.Fatalf("AwaitStable with an open transaction: failed %v, %q", failed, msg)
	}

	// Committed while AwaitCount waits.
	go func() {
		time.Sleep(200 * time.Millisecond)
		_ = tx.EndTransaction(context.Background(), kgo.TryCommit)
	}()
	if got, want := values(c.AwaitCount(t, 7, 30*time.Second, topic)), "a,b,c,f,g,d,e"; got != want {
		t.Fatalf("AwaitCount = %s, want %s", got, want)
	}
	if got, want := values(c.AwaitStable(t, 30*time.Second, topic)), "a,b,c,f,g,d,e"; got != want {
		t.Fatalf("AwaitStable = %s, want %s", got, want)
	}
}

// TestAwaitGroup: AwaitGroup returns once the group committed the end of
// every non-empty partition and fails while it lags.
func TestAwaitGroup(t *testing.T) {
	t.Parallel()
	c := kafkatest.New(t)
	topic, group := c.Topic("in"), c.Group("g")
	c.CreateTopics(t, 2, nil, topic)
	ctx := context.Background()
	// Partition 1 stays empty.
	if err := c.Client(t, kgo.RecordPartitioner(kgo.ManualPartitioner())).ProduceSync(ctx, &kgo.Record{Topic: topic, Partition: 0}).FirstErr(); err != nil {
		t.Fatal(err)
	}
	commit := func(at int64) {
		t.Helper()
		var os kadm.Offsets
		os.AddOffset(topic, 0, at, -1)
		resp, err := c.Admin().CommitOffsets(ctx, group, os)
		if err == nil {
			err = resp.Error()
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	if failed, _, msg := call(t, func(tb testing.TB) { c.AwaitGroup(tb, group, 2*time.Second, topic) }); !failed || !strings.Contains(msg, group) {
		t.Fatalf("AwaitGroup without commits: failed %v, %q", failed, msg)
	}
	commit(0)
	if failed, _, msg := call(t, func(tb testing.TB) { c.AwaitGroup(tb, group, 2*time.Second, topic) }); !failed || !strings.Contains(msg, "[0] at 0 of 1") {
		t.Fatalf("AwaitGroup while the group lags: failed %v, %q", failed, msg)
	}
	commit(1)
	c.AwaitGroup(t, group, 10*time.Second, topic)
}

// TestNamespaces: names are unique per test and cluster.
func TestNamespaces(t *testing.T) {
	t.Parallel()
	a, b := kafkatest.New(t), kafkatest.New(t)
	if a.Topic("x") == b.Topic("x") || a.Group("x") == b.Group("x") || a.TxnID("x") == b.TxnID("x") {
		t.Fatalf("two clusters share names: %s", a.Topic("x"))
	}
	if got := a.Topic("orders.raw"); !strings.HasPrefix(got, a.Prefix()) || !strings.HasSuffix(got, "orders.raw") || !strings.Contains(got, "TestNamespaces") {
		t.Fatalf("Topic = %s", got)
	}
}

// TestCleanup: on a real broker, the test's topics are gone after it.
func TestCleanup(t *testing.T) {
	kafkatest.RequireReal(t)
	t.Parallel()
	var topic string
	var c *kafkatest.Cluster
	t.Run("creates", func(t *testing.T) {
		c = kafkatest.New(t)
		topic = c.Topic("gone")
		c.CreateTopics(t, 1, nil, topic)
	})
	adm := kafkatest.New(t).Admin()
	kafkatest.WaitFor(t, 30*time.Second, "the topic to be deleted", func() bool {
		td, err := adm.ListTopics(context.Background())
		return err == nil && !td.Has(topic)
	})
}

// TestRequireReal: without a broker, RequireReal skips, or fails with
// PSEUDONYMIZER_REQUIRE_KAFKA=1.
func TestRequireReal(t *testing.T) {
	t.Setenv(kafkatest.EnvKafka, "")
	t.Setenv(kafkatest.EnvRequireKafka, "")
	if failed, skipped, msg := call(t, kafkatest.RequireReal); failed || !skipped || !strings.Contains(msg, kafkatest.EnvKafka) {
		t.Errorf("without a broker: failed %v, skipped %v, %q", failed, skipped, msg)
	}
	t.Setenv(kafkatest.EnvRequireKafka, "1")
	if failed, _, msg := call(t, kafkatest.RequireReal); !failed || !strings.Contains(msg, kafkatest.EnvRequireKafka) {
		t.Errorf("required: failed %v, %q", failed, msg)
	}
	t.Setenv(kafkatest.EnvKafka, "127.0.0.1:1")
	if failed, skipped, _ := call(t, kafkatest.RequireReal); failed || skipped {
		t.Errorf("with a broker named: failed %v, skipped %v", failed, skipped)
	}
}

func TestHeader(t *testing.T) {
	t.Parallel()
	r := &kgo.Record{Headers: []kgo.RecordHeader{{Key: "a", Value: []byte("1")}, {Key: "b", Value: []byte("2")}, {Key: "a", Value: []byte("3")}}}
	for _, tc := range []struct{ key, want string }{{"a", "1"}, {"b", "2"}, {"c", ""}} {
		if got := kafkatest.Header(r, tc.key); got != tc.want {
			t.Errorf("Header(%q) = %q, want %q", tc.key, got, tc.want)
		}
	}
}
