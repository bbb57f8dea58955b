package processor

import (
	"bytes"
	"context"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/hygiene/pseudonymizer/processor/policy"
	"github.com/hygiene/pseudonymizer/processor/pseudonym"
	"github.com/hygiene/pseudonymizer/schema"
	"github.com/hygiene/pseudonymizer/store"
)

// keyReturningStore's Forget destroys nothing and returns key, as a store
// returns a retained key, and remembers the slices it handed out.
type keyReturningStore struct {
	store.KeyStore
	key    []byte
	handed [][]byte
}

func (s *keyReturningStore) Hash(string) store.SubjectHash { return store.SubjectHash{1} }

func (s *keyReturningStore) Forget(_ context.Context, reqs []store.ForgetRequest) ([]store.ForgetResult, error) {
	out := make([]store.ForgetResult, len(reqs))
	for i, r := range reqs {
		out[i] = store.ForgetResult{Status: store.Forgotten, CompletedAt: time.Now()}
		if r.Retain {
			k := bytes.Clone(s.key)
			s.handed = append(s.handed, k)
			out[i].Key = k
		}
	}
	return out, nil
}

// TestNoticesWipeRetainedKeys: the forget step derives each opted-in
// system's notice from the returned key (the pseudonym the system's
// records carry), once per request even if it appears twice, and wipes
// every returned key.
func TestNoticesWipeRetainedKeys(t *testing.T) {
	pols := []policy.Policy{policy.Example("crm"), policy.Example("meta")}
	pols[0].ErasureNotices = true
	plan, err := policy.Compile(schema.OrderEventSchema(), pols)
	if err != nil {
		t.Fatal(err)
	}
	st := &keyReturningStore{key: bytes.Repeat([]byte{7}, store.KeySize)}
	p, err := New(Config{Topics: DefaultTopics(), Policies: pols, Plan: plan, Store: st, GroupID: "g", TransactionalID: "t"})
	if err != nil {
		t.Fatal(err)
	}
	at := time.Date(2026, 12, 3, 10, 4, 5, 123e6, time.UTC)
	v, err := schema.MarshalForgetRequest(&schema.ForgetRequest{RequestID: "r1", SubjectID: "cust-1", RequestedAt: at})
	if err != nil {
		t.Fatal(err)
	}
	rec := &kgo.Record{Topic: p.cfg.Topics.Forget, Value: v, Partition: 2, Offset: 40}
	b := &p.b
	b.reset()
	if err := p.forgets(context.Background(), b, []*kgo.Record{rec, rec}); err != nil {
		t.Fatal(err)
	}
	want := plan.SubjectPseudonym(nil, 0, st.key, []byte("cust-1"), pseudonym.NewDeriver())
	var notices []kgo.Record
	for _, r := range b.recs {
		if r.Value == nil {
			notices = append(notices, r)
		}
	}
	if len(notices) != 1 || notices[0].Topic != p.topics[0] || !bytes.Equal(notices[0].Key, want) ||
		string(notices[0].Headers[0].Value) != "2026-12-03T00:00:00.000Z" { // crm's occurred_at is truncated to 1d
		t.Fatalf("notices %+v, want one on %s keyed by crm's customer pseudonym", notices, p.topics[0])
	}
	if len(b.settle) != 1 || b.settle[0].Partition != 2 || b.settle[0].Offset != 40 {
		t.Errorf("requests to settle %+v, want the one request", b.settle)
	}
	if len(st.handed) != 2 {
		t.Fatalf("%d keys handed out, want 2", len(st.handed))
	}
	for _, k := range st.handed {
		if !bytes.Equal(k, make([]byte, store.KeySize)) {
			t.Errorf("a returned key was not wiped")
		}
	}
}

// sweepSpy counts SettleCommitted calls and reports n keys retained.
type sweepSpy struct {
	store.KeyStore
	calls     int
	committed map[int32]int64
	n         int
}

func (s *sweepSpy) SettleCommitted(_ context.Context, committed map[int32]int64) (int, error) {
	s.calls++
	s.committed = committed
	return s.n, nil
}

// TestSweepGroupNeverCommitted: a forget group the broker does not know
// yet (the first start of a deployment) has committed nothing, so the
// sweep releases nothing, still reports what stays retained, and counts
// no error.
func TestSweepGroupNeverCommitted(t *testing.T) {
	fc, err := kfake.NewCluster()
	if err != nil {
		t.Fatal(err)
	}
	defer fc.Close()
	cl, err := kgo.NewClient(kgo.SeedBrokers(fc.ListenAddrs()...))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()

	pols := []policy.Policy{policy.Example("crm")}
	plan, err := policy.Compile(schema.OrderEventSchema(), pols)
	if err != nil {
		t.Fatal(err)
	}
	st := &sweepSpy{n: 3}
	m := NewMetrics(nil)
	p, err := New(Config{Topics: DefaultTopics(), Policies: pols, Plan: plan, Store: st,
		GroupID: "g", ForgetGroupID: "g-forget-never-joined", TransactionalID: "t", Metrics: m})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	p.sweepRetained(ctx, kadm.NewClient(cl))
	if st.calls != 1 || len(st.committed) != 0 {
		t.Fatalf("SettleCommitted called %d times with %v, want once with nothing committed", st.calls, st.committed)
	}
	if v := testutil.ToFloat64(m.SettleErrors); v != 0 {
		t.Errorf("settle errors %v, want 0", v)
	}
	if v := testutil.ToFloat64(m.RetainedKeys); v != 3 {
		t.Errorf("retained keys gauge %v, want 3", v)
	}
}
