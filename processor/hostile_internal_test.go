package processor

import (
	"context"
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/hygiene/pseudonymizer/internal/kafkatest"
	"github.com/hygiene/pseudonymizer/processor/policy"
	"github.com/hygiene/pseudonymizer/schema"
	"github.com/hygiene/pseudonymizer/schema/sample"
	"github.com/hygiene/pseudonymizer/store"
	"github.com/hygiene/pseudonymizer/store/embedded"
	"github.com/hygiene/pseudonymizer/store/storetest"
)

// refusingStore refuses, as PostgreSQL refuses text it cannot hold, every
// call with an ID that contains "poison", and counts the calls.
type refusingStore struct {
	store.KeyStore
	forgets, resolves, objects int
}

func (s *refusingStore) Object(ctx context.Context, reqs []store.ObjectionRequest) ([]store.ObjectionResult, error) {
	s.objects++
	for _, r := range reqs {
		if strings.Contains(r.RequestID, "poison") || strings.Contains(r.SubjectID, "poison") {
			return nil, errPoison
		}
	}
	return s.KeyStore.Object(ctx, reqs)
}

var errPoison = fmt.Errorf("fake: forget: %w (SQLSTATE 22021)", store.ErrRejected)

func (s *refusingStore) Forget(ctx context.Context, reqs []store.ForgetRequest) ([]store.ForgetResult, error) {
	s.forgets++
	for _, r := range reqs {
		if strings.Contains(r.RequestID, "poison") || strings.Contains(r.SubjectID, "poison") {
			return nil, errPoison
		}
	}
	return s.KeyStore.Forget(ctx, reqs)
}

func (s *refusingStore) Resolve(ctx context.Context, lookups []store.Lookup) ([]store.Entry, error) {
	s.resolves++
	for _, l := range lookups {
		if strings.Contains(l.SubjectID, "poison") {
			return nil, errPoison
		}
	}
	return s.KeyStore.Resolve(ctx, lookups)
}

func newRefusingProcessor(t *testing.T) (*Processor, *refusingStore) {
	t.Helper()
	s, err := embedded.Open(filepath.Join(t.TempDir(), "keys.db"), storetest.MustKeyring(t, storetest.MustKEK(t, 1)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	pols := []policy.Policy{policy.Example("crm"), policy.Example("meta")}
	plan, err := policy.Compile(schema.OrderEventSchema(), pols)
	if err != nil {
		t.Fatal(err)
	}
	st := &refusingStore{KeyStore: s}
	p, err := New(Config{Topics: DefaultTopics(), Policies: pols, Plan: plan, Store: st, GroupID: "g", TransactionalID: "t", CacheSubjects: 100})
	if err != nil {
		t.Fatal(err)
	}
	return p, st
}

// deadLetters returns the batch's dead letters on topic, by the offset of
// their source record.
func deadLetters(b *batch, topic string) map[string]string {
	out := map[string]string{}
	for i := range b.recs {
		r := &b.recs[i]
		if r.Topic == topic {
			out[kafkatest.Header(r, "source.offset")] = kafkatest.Header(r, "error.class")
		}
	}
	return out
}

// TestForgetStoreRefusalIsIsolated (issue 24, item 1): a forget request
// that the store refuses for its data (store.ErrRejected, as PostgreSQL
// refuses a NUL byte in text) is dead-lettered as rejected, and the other
// requests of its batch are carried out and confirmed, instead of the
// whole batch being retried for ever; the store stays ready. Without the
// fix forgets returned the error and the batch was aborted every time.
func TestForgetStoreRefusalIsIsolated(t *testing.T) {
	p, st := newRefusingProcessor(t)
	var recs []*kgo.Record
	for i := range 8 {
		id := fmt.Sprintf("req-%d", i)
		if i == 2 || i == 6 {
			id = fmt.Sprintf("poison-%d", i)
		}
		v, err := schema.MarshalForgetRequest(&schema.ForgetRequest{RequestID: id, SubjectID: fmt.Sprintf("cust-%d", i), RequestedAt: time.Now()})
		if err != nil {
			t.Fatal(err)
		}
		recs = append(recs, &kgo.Record{Topic: p.cfg.Topics.Forget, Value: v, Offset: int64(i)})
	}
	b := &p.fb
	b.reset()
	if err := p.forgets(context.Background(), b, recs); err != nil {
		t.Fatalf("forgets: %v; want the refused requests dead-lettered and the batch to go on", err)
	}
	confirmed := 0
	for i := range b.recs {
		if b.recs[i].Topic == p.cfg.Topics.Forgotten {
			confirmed++
		}
	}
	if confirmed != 6 {
		t.Errorf("%d confirmations, want 6", confirmed)
	}
	if got := deadLetters(b, p.cfg.Topics.ForgetDeadLetter); len(got) != 2 || got["2"] != schema.ClassRejected || got["6"] != schema.ClassRejected {
		t.Errorf("forget dead letters by offset %v, want offsets 2 and 6 as %s", got, schema.ClassRejected)
	}
	// 1 call for the batch, then halves: [0,4) refused, [0,2) ok, [2,4)
	// refused, [2] refused, [3] ok; the same for [4,8).
	if st.forgets > 11 {
		t.Errorf("%d Forget calls to isolate 2 of 8 requests, want at most 11", st.forgets)
	}
	if !p.storeOK.Load() {
		t.Errorf("the store is marked unreachable after refusing a request's data")
	}
}

// TestObjectionStoreRefusalIsIsolated: an objection state that the store
// refuses for its data is dead-lettered as rejected, and the other states
// of its batch are recorded and confirmed: the forget lane never stops for
// good on one record.
func TestObjectionStoreRefusalIsIsolated(t *testing.T) {
	p, st := newRefusingProcessor(t)
	var recs []*kgo.Record
	for i := range 8 {
		id := fmt.Sprintf("obj-%d", i)
		if i == 1 || i == 5 {
			id = fmt.Sprintf("poison-%d", i)
		}
		subject := fmt.Sprintf("cust-%d", i)
		v, err := schema.MarshalObjectionState(&schema.ObjectionState{SubjectID: subject, RequestID: id, EffectiveAt: time.Now(), Systems: []string{"meta"}})
		if err != nil {
			t.Fatal(err)
		}
		recs = append(recs, &kgo.Record{Topic: p.cfg.Topics.Objections, Key: []byte(subject), Value: v, Offset: int64(i)})
	}
	b := &p.fb
	b.reset()
	if err := p.objections(context.Background(), b, recs); err != nil {
		t.Fatalf("objections: %v; want the refused states dead-lettered and the batch to go on", err)
	}
	confirmed := 0
	for i := range b.recs {
		if b.recs[i].Topic == p.cfg.Topics.ObjectionsApplied {
			confirmed++
		}
	}
	if confirmed != 6 {
		t.Errorf("%d confirmations, want 6", confirmed)
	}
	if got := deadLetters(b, p.cfg.Topics.ObjectionsDeadLetter); len(got) != 2 || got["1"] != schema.ClassRejected || got["5"] != schema.ClassRejected {
		t.Errorf("objection dead letters by offset %v, want offsets 1 and 5 as %s", got, schema.ClassRejected)
	}
	if st.objects > 11 {
		t.Errorf("%d Object calls to isolate 2 of 8 states, want at most 11", st.objects)
	}
}

// TestResolveStoreRefusalIsIsolated: an order whose subject the store
// refuses is dead-lettered as rejected, with every other order of its
// subject, and the batch's other orders are resolved and assigned.
func TestResolveStoreRefusalIsIsolated(t *testing.T) {
	p, _ := newRefusingProcessor(t)
	gen := sample.New(3, 4, time.Now().Add(-time.Hour))
	var recs []*kgo.Record
	for i := range 10 {
		ev := gen.ForCustomer(i % 4)
		if i%4 == 1 {
			ev.CustomerID = "poison-cust"
		}
		v, err := schema.MarshalOrderEvent(ev)
		if err != nil {
			t.Fatal(err)
		}
		recs = append(recs, &kgo.Record{Topic: p.cfg.Topics.Orders, Value: v, Offset: int64(i)})
	}
	b := &p.b
	b.reset()
	if err := p.orders(context.Background(), b, recs); err != nil {
		t.Fatalf("orders: %v; want the refused subject's orders dead-lettered and the batch to go on", err)
	}
	if got := deadLetters(b, p.cfg.Topics.OrdersDeadLetter); len(got) != 3 || got["1"] != schema.ClassRejected || got["5"] != schema.ClassRejected || got["9"] != schema.ClassRejected {
		t.Errorf("order dead letters by offset %v, want offsets 1, 5 and 9 as %s", got, schema.ClassRejected)
	}
	if len(b.orders) != 7 {
		t.Errorf("%d orders assigned, want 7", len(b.orders))
	}
	for i := range b.orders {
		if !b.orders[i].subj.valid() {
			t.Errorf("order at offset %d has no subject", b.orders[i].rec.Offset)
		}
	}
	if !p.storeOK.Load() {
		t.Errorf("the store is marked unreachable after refusing a subject's data")
	}
}

// prefetchWire is the bare wire with a Prefetcher that records its calls.
type prefetchWire struct {
	schema.BareWire
	orders, forgets [][][]byte
}

func (w *prefetchWire) PrefetchOrders(_ context.Context, values [][]byte) error {
	w.orders = append(w.orders, append([][]byte(nil), values...))
	return nil
}

func (w *prefetchWire) PrefetchForgets(_ context.Context, values [][]byte) error {
	w.forgets = append(w.forgets, append([][]byte(nil), values...))
	return nil
}

// TestBatchesPrefetchSchemas: each lane hands its whole batch to a
// schema.Prefetcher once, before decoding any record, so that the
// registry's lookups are deduplicated, parallel and capped per batch.
func TestBatchesPrefetchSchemas(t *testing.T) {
	p, _ := newRefusingProcessor(t)
	w := &prefetchWire{}
	p.cfg.Wire = w
	gen := sample.New(5, 2, time.Now().Add(-time.Hour))
	var orders, forgets []*kgo.Record
	for i := range 3 {
		v, err := schema.MarshalOrderEvent(gen.ForCustomer(i % 2))
		if err != nil {
			t.Fatal(err)
		}
		orders = append(orders, &kgo.Record{Topic: p.cfg.Topics.Orders, Value: v})
		fv, err := schema.MarshalForgetRequest(&schema.ForgetRequest{RequestID: fmt.Sprint("r", i), SubjectID: "cust-x", RequestedAt: time.Now()})
		if err != nil {
			t.Fatal(err)
		}
		forgets = append(forgets, &kgo.Record{Topic: p.cfg.Topics.Forget, Value: fv})
	}
	b := &p.b
	b.reset()
	if err := p.orders(context.Background(), b, orders); err != nil {
		t.Fatal(err)
	}
	fb := &p.fb
	fb.reset()
	if err := p.forgets(context.Background(), fb, forgets); err != nil {
		t.Fatal(err)
	}
	if len(w.orders) != 1 || len(w.orders[0]) != 3 || len(w.forgets) != 1 || len(w.forgets[0]) != 3 {
		t.Fatalf("prefetch calls: orders %d, forgets %d; want one each with the batch's 3 values", len(w.orders), len(w.forgets))
	}
}

// bytesIDWire decodes every forget request to the IDs it holds, as the
// registry wire does for a writer schema that declares them as bytes
// (promoted to string without a UTF-8 check).
type bytesIDWire struct {
	schema.BareWire
	reqs []schema.ForgetRequest
	next int
}

func (w *bytesIDWire) Forget(context.Context, []byte) (*schema.ForgetRequest, error) {
	fr := w.reqs[w.next]
	w.next++
	return &fr, nil
}

// TestRegistryBytesIDsBreakContract (issue 24, item 1): forget requests
// whose IDs a registry writer declared as bytes, with a NUL byte or
// invalid UTF-8, are dead-lettered as contract and never reach the store;
// the valid request of the batch is carried out.
func TestRegistryBytesIDsBreakContract(t *testing.T) {
	p, st := newRefusingProcessor(t)
	now := time.Now()
	w := &bytesIDWire{reqs: []schema.ForgetRequest{
		{RequestID: "req\x00", SubjectID: "cust-1", RequestedAt: now},
		{RequestID: "req-\xff", SubjectID: "cust-1", RequestedAt: now},
		{RequestID: "req-3", SubjectID: "cust\x00", RequestedAt: now},
		{RequestID: "req-4", SubjectID: "cust-\xc3", RequestedAt: now},
		{RequestID: "req-5", SubjectID: "cust-5", RequestedAt: now},
	}}
	p.cfg.Wire = w
	var recs []*kgo.Record
	for i := range w.reqs {
		recs = append(recs, &kgo.Record{Topic: p.cfg.Topics.Forget, Value: []byte{1}, Offset: int64(i)})
	}
	b := &p.fb
	b.reset()
	if err := p.forgets(context.Background(), b, recs); err != nil {
		t.Fatal(err)
	}
	got := deadLetters(b, p.cfg.Topics.ForgetDeadLetter)
	if len(got) != 4 {
		t.Fatalf("forget dead letters %v, want the 4 requests with bad IDs", got)
	}
	for off, class := range got {
		if class != schema.ClassContract {
			t.Errorf("offset %s dead-lettered as %s, want contract", off, class)
		}
	}
	if st.forgets != 1 {
		t.Errorf("%d store calls, want 1 (the valid request alone)", st.forgets)
	}
}
