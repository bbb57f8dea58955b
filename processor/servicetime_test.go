package processor_test

import (
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/hygiene/pseudonymizer/internal/kafkatest"
	"github.com/hygiene/pseudonymizer/processor"
	"github.com/hygiene/pseudonymizer/processor/policy"
	"github.com/hygiene/pseudonymizer/schema"
	"github.com/hygiene/pseudonymizer/schema/sample"
	"github.com/hygiene/pseudonymizer/store"
)

// TestServiceTimesAtPolicyPrecision checks the second clause of P2: the
// values the service itself adds, record timestamps and the erasure
// notices' requested_at, carry no time finer than each system's policy
// allows. A system that keeps occurred_at truncated to 1h gets it as the
// record time, one that keeps it exactly gets it to the millisecond, one
// that keeps no time gets the batch's start truncated to its time_unit
// (1d here); notices are truncated likewise, those of a forget and those of
// an objection (requested_at, objected_at), and drop_requested_at leaves
// the header off. With the produce clock (the default of the Kafka client)
// the timestamps would be the same millisecond on every topic.
func TestServiceTimesAtPolicyPrecision(t *testing.T) {
	e := newEnv(t, "embedded")
	e.pols = []policy.Policy{
		{System: "hourly", Keep: []string{"event_type", "occurred_at"}, Pseudonymize: []string{"customer_id"},
			Generalize: map[string]policy.Generalization{"occurred_at": {Truncate: "1h"}}, ErasureNotices: true},
		{System: "exact", Keep: []string{"occurred_at"}, Pseudonymize: []string{"customer_id"}, ErasureNotices: true},
		{System: "timeless", Keep: []string{"currency"}, Pseudonymize: []string{"customer_id"}, TimeUnit: "1d",
			ErasureNotices: true, DropRequestedAt: true},
	}
	var err error
	if e.plan, err = policy.Compile(schema.OrderEventSchema(), e.pols); err != nil {
		t.Fatal(err)
	}
	gen := sample.New(3, 2, time.Now().Add(-3*time.Hour))
	var events []*schema.OrderEvent
	for i := range 6 {
		ev := gen.ForCustomer(i % 2)
		ev.OccurredAt = ev.OccurredAt.Add(time.Duration(i) * 37 * time.Minute)
		events = append(events, ev)
		e.produce(t, e.orderRecord(t, ev))
	}
	before := time.Now()
	e.start(t, "pz-times")
	nsys := len(e.pols)
	e.kc.AwaitCount(t, len(events)*nsys, 30*time.Second, e.outputTopics()...)
	at := time.Now().Add(-time.Minute).Truncate(time.Millisecond).Add(7 * time.Millisecond)
	e.produce(t, e.forgetRecord(t, "times-req-1", sample.CustomerID(0), at))
	oat := time.Now().Add(-30 * time.Minute).Truncate(time.Millisecond).Add(13 * time.Millisecond)
	e.produce(t, e.objectionRecord(t, "times-obj-1", sample.CustomerID(1), oat, store.AllSystems))
	outs := e.settled(t, e.outputTopics()...)
	after := time.Now()

	bySys := map[string][]*kgo.Record{}
	for _, r := range outs {
		bySys[systemOf(e, r.Topic)] = append(bySys[systemOf(e, r.Topic)], r)
	}
	idx := map[string]int{}
	for i, sys := range e.plan.Systems() {
		idx[sys] = i
	}
	for sys, recs := range bySys {
		i := idx[sys]
		occ := map[int64]bool{}
		for _, ev := range events {
			occ[e.plan.RecordTime(i, ev.OccurredAt.UnixMilli(), time.Time{}).UnixMilli()] = true
		}
		notices := 0
		for _, r := range recs {
			ts := r.Timestamp
			if r.Value == nil {
				notices++
				if ts.UnixMilli()%e.plan.TimeUnit(i).Milliseconds() != 0 || ts.After(after) || ts.Before(before.Add(-e.plan.TimeUnit(i))) {
					t.Errorf("%s: notice timestamp %v is not the batch start at %v", sys, ts.UTC(), e.plan.TimeUnit(i))
				}
				name, when := processor.HeaderRequestedAt, at
				if len(r.Headers) == 1 && r.Headers[0].Key == processor.HeaderObjectedAt {
					name, when = processor.HeaderObjectedAt, oat
				}
				h := kafkatest.Header(r, name)
				want := e.plan.NoticeTime(i, when).UTC().Format("2006-01-02T15:04:05.000Z07:00")
				switch {
				case sys == "timeless" && len(r.Headers) != 0:
					t.Errorf("%s: notice headers %v, want none (drop_requested_at)", sys, r.Headers)
				case sys != "timeless" && h != want:
					t.Errorf("%s: %s %q, want %q", sys, name, h, want)
				}
				continue
			}
			switch {
			case e.plan.TimeFromEvent(i) && !occ[ts.UnixMilli()]:
				t.Errorf("%s: record timestamp %v is not an event's occurred_at at %v", sys, ts.UTC(), e.plan.TimeUnit(i))
			case !e.plan.TimeFromEvent(i) && (ts.UnixMilli()%(24*time.Hour).Milliseconds() != 0 || ts.After(after) || ts.Before(before.Add(-24*time.Hour))):
				t.Errorf("%s: record timestamp %v is not the batch start truncated to 1d", sys, ts.UTC())
			}
		}
		if len(recs) != len(events)+2 || notices != 2 {
			t.Errorf("%s: %d records (%d notices), want %d and 2 (a forget's, an objection's)", sys, len(recs), notices, len(events)+2)
		}
	}
	if len(bySys) != nsys {
		t.Fatalf("records of %d systems, want %d", len(bySys), nsys)
	}
}
