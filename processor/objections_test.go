package processor_test

import (
	"context"
	"fmt"
	"runtime"
	"slices"
	"sort"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"

	"github.com/hygiene/pseudonymizer/internal/kafkatest"
	"github.com/hygiene/pseudonymizer/processor"
	"github.com/hygiene/pseudonymizer/schema"
	"github.com/hygiene/pseudonymizer/schema/sample"
	"github.com/hygiene/pseudonymizer/store"
)

// objectionRecord encodes an objection state of subject, keyed by it.
func (e *env) objectionRecord(t *testing.T, reqID, subject string, at time.Time, systems ...string) *kgo.Record {
	t.Helper()
	b, err := schema.MarshalObjectionState(&schema.ObjectionState{SubjectID: subject, RequestID: reqID, EffectiveAt: at, Systems: append([]string{}, systems...)})
	if err != nil {
		t.Fatal(err)
	}
	return &kgo.Record{Topic: e.topics.Objections, Key: []byte(subject), Value: b}
}

// objectionConfirmations reads every objection confirmation once the
// processors have consumed every input, and fails unless there are n, one
// per request ID.
func (e *env) objectionConfirmations(t *testing.T, n int) map[string]*schema.ObjectionConfirmation {
	t.Helper()
	recs := e.settled(t, e.topics.ObjectionsApplied)
	out := map[string]*schema.ObjectionConfirmation{}
	for _, r := range recs {
		c, err := schema.UnmarshalObjectionConfirmation(r.Value)
		if err != nil {
			t.Fatalf("objection confirmation does not decode: %v", err)
		}
		if _, dup := out[c.RequestID]; dup {
			t.Fatalf("P4: two confirmations for objection %q", c.RequestID)
		}
		if string(r.Key) != c.SubjectID {
			t.Fatalf("objection confirmation key is not the subject ID")
		}
		out[c.RequestID] = c
	}
	if len(out) != n {
		t.Fatalf("%d objection confirmations, want %d", len(out), n)
	}
	return out
}

// outputsByEvent maps each committed output's event (by occurred_at, in
// ms: the tests give each event its own) to the systems that got it, with
// its record key per system. A replayed event counts once.
func (e *env) outputsByEvent(t *testing.T) map[string]map[string]string {
	t.Helper()
	out := map[string]map[string]string{}
	for _, d := range e.decode(t, e.settled(t, e.outputTopics()...)) {
		if d.v == nil {
			continue
		}
		id := fmt.Sprint(d.at.UnixMilli())
		if out[id] == nil {
			out[id] = map[string]string{}
		}
		out[id][d.system] = d.key
	}
	return out
}

func systemsOf(m map[string]string) []string {
	var s []string
	for k := range m {
		s = append(s, k)
	}
	sort.Strings(s)
	return s
}

// TestObjectionBeforeAndAfterEvents: an objection stops the objected
// systems from getting the subject's events at or after effective_at;
// the others get them with the same pseudonyms as before; events dated
// before effective_at (replayed) still go to every system; an objection of
// a subject without a key is recorded (UNKNOWN_SUBJECT) and its first
// event respects it; bad states are dead-lettered.
func TestObjectionBeforeAndAfterEvents(t *testing.T) {
	for _, kind := range storeKinds {
		t.Run(kind, func(t *testing.T) {
			t.Parallel()
			e := newEnv(t, kind)
			m := processor.NewMetrics(nil)
			base := time.Now().Add(-time.Hour).Truncate(time.Millisecond)
			gen := sample.New(11, 2, base)
			c0, c1 := sample.CustomerID(0), sample.CustomerID(1)
			before := gen.ForCustomer(0)
			e.produce(t, e.orderRecord(t, before))
			e.start(t, "pz-1", func(c *processor.Config) { c.Metrics = m })
			first := e.outputsByEvent(t)[fmt.Sprint(before.OccurredAt.UnixMilli())]
			if len(first) != 3 {
				t.Fatalf("before any objection: systems %v, want all 3", systemsOf(first))
			}

			objectedAt := before.OccurredAt.Add(time.Minute)
			bad := e.objectionRecord(t, "o-bad-key", c0, objectedAt, "meta")
			bad.Key = []byte("someone-else")
			e.produce(t,
				e.objectionRecord(t, "o-1", c0, objectedAt, "meta", "crm"),
				e.objectionRecord(t, "o-2", c1, base, store.AllSystems),
				&kgo.Record{Topic: e.topics.Objections, Key: []byte(c0), Value: []byte{0xff}},
				bad,
				e.objectionRecord(t, "o-nul", "a\x00b", objectedAt, "meta"),
				e.objectionRecord(t, "o-sys", c0, objectedAt, "me\xfft"),
			)
			got := e.objectionConfirmations(t, 2)
			if c := got["o-1"]; c.Status != schema.StatusApplied || c.Superseded || !slices.Equal(c.Systems, []string{"meta", "crm"}) || !c.EffectiveAt.Equal(objectedAt) {
				t.Errorf("o-1 confirmation: %+v", c)
			}
			if c := got["o-2"]; c.Status != schema.StatusUnknownSubject || c.Superseded {
				t.Errorf("o-2 confirmation: %+v, want UNKNOWN_SUBJECT", c)
			}
			if dlq := e.settled(t, e.topics.ObjectionsDeadLetter); len(dlq) != 4 {
				t.Errorf("%d objection dead letters, want 4", len(dlq))
			}

			after := gen.ForCustomer(0)
			after.OccurredAt = objectedAt // at effective_at: objected
			atOther := gen.ForCustomer(1)
			atOther.OccurredAt = base.Add(time.Minute)
			e.produce(t, e.orderRecord(t, after), e.orderRecord(t, before), e.orderRecord(t, atOther))
			outs := e.outputsByEvent(t)
			if got := systemsOf(outs[fmt.Sprint(after.OccurredAt.UnixMilli())]); !slices.Equal(got, []string{"google-analytics"}) {
				t.Errorf("event at effective_at went to %v, want google-analytics only", got)
			}
			if k := outs[fmt.Sprint(after.OccurredAt.UnixMilli())]["google-analytics"]; k != first["google-analytics"] {
				t.Errorf("the system not objected to got another pseudonym")
			}
			if len(outs[fmt.Sprint(atOther.OccurredAt.UnixMilli())]) != 0 {
				t.Errorf("a subject objecting to every system before its first event: outputs %v", systemsOf(outs[fmt.Sprint(atOther.OccurredAt.UnixMilli())]))
			}
			// The replayed event from before effective_at went out again
			// to every system (twice in all: its first run and the replay).
			n := 0
			for _, r := range e.settled(t, e.outputTopics()...) {
				if d := e.decode(t, []*kgo.Record{r}); d[0].at.Equal(before.OccurredAt) {
					n++
				}
			}
			if n != 6 {
				t.Errorf("event from before effective_at: %d outputs over its run and replay, want 6", n)
			}
			for sys, want := range map[string]float64{"meta": 2, "crm": 2, "google-analytics": 1} {
				kafkatest.WaitFor(t, 10*time.Second, "objected_events_total{"+sys+"}", func() bool {
					return testutil.ToFloat64(m.ObjectedEvents.WithLabelValues(sys)) == want
				})
			}
			if v := testutil.ToFloat64(m.Objections.WithLabelValues("APPLIED")); v != 1 {
				t.Errorf("objection_states_total{APPLIED} = %v, want 1", v)
			}
		})
	}
}

// TestObjectionWithdrawalAndOrder: a withdrawal resumes delivery from its
// effective_at with the same pseudonyms; an older state that arrives after
// a newer one (by effective_at) is superseded; a tombstone on the topic
// withdraws, effective at its timestamp.
func TestObjectionWithdrawalAndOrder(t *testing.T) {
	for _, kind := range storeKinds {
		t.Run(kind, func(t *testing.T) {
			t.Parallel()
			e := newEnv(t, kind)
			base := time.Now().Add(-2 * time.Hour).Truncate(time.Millisecond)
			gen := sample.New(12, 2, base)
			c0, c1 := sample.CustomerID(0), sample.CustomerID(1)
			at := func(m int) time.Time { return base.Add(time.Duration(m) * time.Minute) }
			ev := func(c, m int) *schema.OrderEvent {
				o := gen.ForCustomer(c)
				o.OccurredAt = at(m).Add(time.Duration(c) * time.Millisecond)
				return o
			}
			ms := func(c, m int) string { return fmt.Sprint(at(m).Add(time.Duration(c) * time.Millisecond).UnixMilli()) }
			e.produce(t, e.orderRecord(t, ev(0, 1)), e.orderRecord(t, ev(1, 1)))
			e.start(t, "pz-1")
			keys := e.outputsByEvent(t)[ms(0, 1)]
			if len(keys) != 3 {
				t.Fatalf("first event: %v", keys)
			}

			// c0: objects to all at 10, withdraws at 30; the state of 20
			// arrives last and is superseded. c1: objects at 10, then a
			// tombstone (timestamp now) withdraws.
			e.produce(t, e.objectionRecord(t, "o-10", c0, at(10), store.AllSystems), e.objectionRecord(t, "o-30", c0, at(30)),
				e.objectionRecord(t, "o-20", c0, at(20), "meta"), e.objectionRecord(t, "o1-10", c1, at(10), "meta"))
			got := e.objectionConfirmations(t, 4)
			if !got["o-20"].Superseded || got["o-30"].Superseded || got["o-10"].Superseded {
				t.Fatalf("superseded flags: o-10 %v, o-20 %v, o-30 %v; want only o-20", got["o-10"].Superseded, got["o-20"].Superseded, got["o-30"].Superseded)
			}
			e.produce(t, e.orderRecord(t, ev(0, 40)), e.orderRecord(t, ev(1, 40)))
			outs := e.outputsByEvent(t)
			if got := systemsOf(outs[ms(0, 40)]); len(got) != 3 {
				t.Errorf("c0 after its withdrawal: %v, want all 3", got)
			}
			for sys, k := range outs[ms(0, 40)] {
				if k != keys[sys] {
					t.Errorf("%s: another pseudonym after the withdrawal", sys)
				}
			}
			if got := systemsOf(outs[ms(1, 40)]); !slices.Equal(got, []string{"crm", "google-analytics"}) {
				t.Errorf("c1 objecting to meta: %v, want crm and google-analytics", got)
			}
			e.produce(t, &kgo.Record{Topic: e.topics.Objections, Key: []byte(c1), Timestamp: at(50)})
			e.objectionConfirmations(t, 5)
			e.produce(t, e.orderRecord(t, ev(1, 60)))
			outs = e.outputsByEvent(t)
			if got := systemsOf(outs[ms(1, 60)]); len(got) != 3 {
				t.Errorf("c1 after the tombstone: systems %v, want all 3", got)
			}
			for sys, k := range outs[ms(1, 60)] {
				if k != outs[ms(1, 1)][sys] {
					t.Errorf("%s: c1 got another pseudonym after the tombstone", sys)
				}
			}
		})
	}
}

// TestObjectionForgetOrder: a forget removes the objection with the key
// (the next key serves every system), and an objection after a forget is
// recorded for the next key (UNKNOWN_SUBJECT).
func TestObjectionForgetOrder(t *testing.T) {
	for _, kind := range storeKinds {
		t.Run(kind, func(t *testing.T) {
			t.Parallel()
			e := newEnv(t, kind)
			base := time.Now().Add(-2 * time.Hour).Truncate(time.Millisecond)
			gen := sample.New(13, 2, base)
			at := func(m int) time.Time { return base.Add(time.Duration(m) * time.Minute) }
			ev := func(c, m int) *schema.OrderEvent {
				o := gen.ForCustomer(c)
				o.OccurredAt = at(m).Add(time.Duration(c) * time.Millisecond)
				return o
			}
			ms := func(c, m int) string { return fmt.Sprint(at(m).Add(time.Duration(c) * time.Millisecond).UnixMilli()) }
			c0, c1 := sample.CustomerID(0), sample.CustomerID(1)
			e.produce(t, e.orderRecord(t, ev(0, 1)), e.orderRecord(t, ev(1, 2)))
			e.start(t, "pz-1")
			e.settled(t, e.outputTopics()...)
			// c0: objection, then forget. c1: forget, then objection.
			e.produce(t, e.objectionRecord(t, "o0", c0, at(5), "meta"))
			e.objectionConfirmations(t, 1)
			e.produce(t, e.forgetRecord(t, "f0", c0, at(10)), e.forgetRecord(t, "f1", c1, at(10)))
			e.confirmations(t, 2)
			e.produce(t, e.objectionRecord(t, "o1", c1, at(15), "meta"))
			if c := e.objectionConfirmations(t, 2)["o1"]; c.Status != schema.StatusUnknownSubject || c.Superseded {
				t.Fatalf("objection after a forget: %+v, want UNKNOWN_SUBJECT, recorded", c)
			}
			e.produce(t, e.orderRecord(t, ev(0, 20)), e.orderRecord(t, ev(1, 21)))
			outs := e.outputsByEvent(t)
			if got := systemsOf(outs[ms(0, 20)]); len(got) != 3 {
				t.Errorf("objection then forget: the next key's event went to %v, want all 3", got)
			}
			if got := systemsOf(outs[ms(1, 21)]); !slices.Equal(got, []string{"crm", "google-analytics"}) {
				t.Errorf("forget then objection: the next key's event went to %v, want crm and google-analytics", got)
			}
		})
	}
}

// TestObjectionInvalidatesOtherInstancesCache: an instance that cached a
// subject (without objection) must not send its events to an objected
// system once another instance's objection was recorded: its guard lists
// the subject, the batch is redone with the new state.
func TestObjectionInvalidatesOtherInstancesCache(t *testing.T) {
	for _, kind := range storeKinds {
		t.Run(kind, func(t *testing.T) {
			t.Parallel()
			e := newEnv(t, kind)
			base := time.Now().Add(-time.Hour).Truncate(time.Millisecond)
			gen := sample.New(14, 1, base)
			first := gen.ForCustomer(0)
			e.produce(t, e.orderRecord(t, first))
			in := e.start(t, "pz-b")
			e.kc.AwaitCount(t, 3, 30*time.Second, e.outputTopics()...)

			other := e.open(t)
			res, err := other.Object(context.Background(), []store.ObjectionRequest{{RequestID: "a-1", SubjectID: first.CustomerID, EffectiveAt: first.OccurredAt, Systems: []string{"meta"}}})
			if err != nil || res[0].Status != store.ObjectionApplied {
				t.Fatalf("object: %v %v", res, err)
			}
			next := gen.ForCustomer(0)
			e.produce(t, e.orderRecord(t, next))
			kafkatest.WaitFor(t, 30*time.Second, "objected output", func() bool { return in.p.Stats().Objected == 1 })
			if st := in.p.Stats(); st.Stale < 1 {
				t.Errorf("expected a stale batch to be redone, stats %+v", st)
			}
			if got := systemsOf(e.outputsByEvent(t)[fmt.Sprint(next.OccurredAt.UnixMilli())]); !slices.Equal(got, []string{"crm", "google-analytics"}) {
				t.Errorf("after another instance's objection: %v, want crm and google-analytics", got)
			}
		})
	}
}

// TestObjectionRedoAfterStoreCommit: the objection's store transaction
// commits, then the Kafka transaction of its confirmation fails (as if the
// instance died between the two); the redone batch confirms it exactly
// once, with the same outcome, and erasure notices go out once.
func TestObjectionRedoAfterStoreCommit(t *testing.T) {
	for _, kind := range storeKinds {
		t.Run(kind, func(t *testing.T) {
			t.Parallel()
			e := newNoticeEnv(t, kind, kfake.NumBrokers(1))
			w, _ := e.noticeWorld(t)
			h := e.kc.Fake().Fault(kfake.Fault{
				Keys:     []kmsg.Key{kmsg.EndTxn},
				TopLevel: true,
				Err:      kerr.InvalidTxnState,
				When: func(r kmsg.Request) bool {
					req, ok := r.(*kmsg.EndTxnRequest)
					return ok && req.Commit
				},
			})
			at := time.Now().Truncate(time.Millisecond)
			e.produce(t, e.objectionRecord(t, "o-1", sample.CustomerID(0), at, "crm", "meta"))
			got := e.objectionConfirmations(t, 1)
			if h.Hits() != 1 {
				t.Fatalf("the EndTxn fault fired %d times, want 1", h.Hits())
			}
			if c := got["o-1"]; c.Status != schema.StatusApplied || c.Superseded {
				t.Fatalf("after the redo: %+v, want APPLIED", c)
			}
			// One committed notice, to crm only (google-analytics has
			// notices on but is not objected to; meta has none), keyed by
			// crm's pseudonym.
			var notices []*kgo.Record
			for _, r := range e.settled(t, e.outputTopics()...) {
				if r.Value == nil {
					notices = append(notices, r)
				}
			}
			if len(notices) != 1 || systemOf(e, notices[0].Topic) != "crm" || string(notices[0].Key) != w.oldKey["crm"] {
				t.Fatalf("erasure notices: %d, want one to crm with its pseudonym", len(notices))
			}
			if v := kafkatest.Header(notices[0], processor.HeaderObjectedAt); v == "" {
				t.Errorf("notice without %s", processor.HeaderObjectedAt)
			}
		})
	}
}

// TestObjectionReplayOfLatestStates: a compacted objections topic keeps
// only each subject's last record. Replaying just those (a group that
// starts over after compaction) onto the same store changes nothing, even
// where the last record by offset is not the latest by effective_at; and
// a fresh deployment that consumes only them enforces the same as one that
// consumed the whole history wherever the two agree on the latest state.
func TestObjectionReplayOfLatestStates(t *testing.T) {
	t.Parallel()
	const customers = 4
	base := time.Now().Add(-3 * time.Hour).Truncate(time.Millisecond)
	at := func(m int) time.Time { return base.Add(time.Duration(m) * time.Minute) }
	type state struct {
		id      string
		c, m    int
		systems []string
	}
	// The history, in arrival order (not effective order).
	history := []state{
		{"h1", 0, 10, []string{"meta"}}, {"h2", 0, 30, []string{store.AllSystems}}, {"h3", 0, 20, []string{"crm"}},
		{"h4", 1, 10, []string{"crm", "meta"}}, {"h5", 1, 40, nil},
		{"h6", 2, 50, []string{"google-analytics"}}, {"h7", 2, 15, nil},
		{"h8", 3, 5, []string{"meta"}},
	}
	// What compaction leaves: the last record per subject by offset.
	var compacted []state
	for c := range customers {
		for _, s := range history {
			if s.c == c {
				if len(compacted) == c {
					compacted = append(compacted, s)
				}
				compacted[c] = s
			}
		}
	}
	minutes := []int{12, 25, 35, 45, 55}
	// run starts a world, consumes each list of states in turn and, after
	// each (round r), sends probe events (at each minute plus 10r+c ms),
	// returning the systems each probe reached, by customer, minute and
	// round.
	run := func(t *testing.T, rounds ...[]state) map[[3]int][]string {
		e := newEnv(t, "embedded")
		gen := sample.New(15, customers, base)
		e.start(t, "pz-1")
		out := map[[3]int][]string{}
		confirmed := 0
		for r, states := range rounds {
			for _, s := range states {
				e.produce(t, e.objectionRecord(t, s.id+fmt.Sprint("-", r), sample.CustomerID(s.c), at(s.m), s.systems...))
			}
			confirmed += len(states)
			e.objectionConfirmations(t, confirmed)
			probe := func(c, m int) time.Time { return at(m).Add(time.Duration(r*10+c) * time.Millisecond) }
			for c := range customers {
				for _, m := range minutes {
					ev := gen.ForCustomer(c)
					ev.OccurredAt = probe(c, m)
					e.produce(t, e.orderRecord(t, ev))
				}
			}
			outs := e.outputsByEvent(t)
			for c := range customers {
				for _, m := range minutes {
					out[[3]int{c, m, r}] = systemsOf(outs[fmt.Sprint(probe(c, m).UnixMilli())])
				}
			}
		}
		return out
	}
	// Request IDs carry the round: the replayed states are new requests,
	// which the store must judge by effective_at again.
	full := run(t, history, compacted)
	for c := range customers {
		for _, m := range minutes {
			if a, b := full[[3]int{c, m, 0}], full[[3]int{c, m, 1}]; !slices.Equal(a, b) {
				t.Errorf("customer %d at %d: %v after the history, %v after replaying the compacted states", c, m, a, b)
			}
		}
	}
	// The effective-order rule after the whole history: the latest state
	// by effective_at holds; events dated before it go to every system it
	// does not name (the store keeps one state per subject, see
	// docs/objections.md).
	all := []string{"crm", "google-analytics", "meta"}
	for _, tc := range []struct {
		c, m int
		want []string
	}{
		{0, 25, all}, {0, 35, nil}, {0, 55, nil},
		{1, 35, all}, {1, 45, all},
		{2, 25, []string{"crm", "google-analytics", "meta"}}, {2, 55, []string{"crm", "meta"}},
		{3, 12, []string{"crm", "google-analytics"}},
	} {
		if got := full[[3]int{tc.c, tc.m, 0}]; !slices.Equal(got, tc.want) {
			t.Errorf("customer %d at %d: %v, want %v", tc.c, tc.m, got, tc.want)
		}
	}
	// A fresh deployment fed only the compacted states agrees where the
	// last state by offset is the latest by effective_at (customers 1, 3).
	fresh := run(t, compacted)
	for _, c := range []int{1, 3} {
		for _, m := range minutes {
			if a, b := full[[3]int{c, m, 0}], fresh[[3]int{c, m, 0}]; !slices.Equal(a, b) {
				t.Errorf("customer %d at %d: %v with the whole history, %v with the compacted states only", c, m, a, b)
			}
		}
	}
}

// TestObjectionInstanceDiesBeforeConfirming: the forget lane of one
// instance dies right after Store.Object committed (its goroutine ends at
// the failpoint, its transaction is never committed); another instance
// takes over the partition, redoes the batch and confirms the state
// exactly once, as recorded, and enforces it.
func TestObjectionInstanceDiesBeforeConfirming(t *testing.T) {
	for _, kind := range storeKinds {
		t.Run(kind, func(t *testing.T) {
			t.Parallel()
			e := newEnv(t, kind)
			base := time.Now().Add(-time.Hour).Truncate(time.Millisecond)
			gen := sample.New(16, 1, base)
			first := gen.ForCustomer(0)
			e.produce(t, e.orderRecord(t, first))
			died := make(chan struct{})
			var once sync.Once
			a := e.start(t, "pz-a", func(c *processor.Config) {
				c.Failpoint = func(name string) {
					if name == "after-object" {
						once.Do(func() { close(died) })
						runtime.Goexit() // the lane dies here, as in a crash
					}
				}
			})
			e.kc.AwaitCount(t, 3, 30*time.Second, e.outputTopics()...)
			e.produce(t, e.objectionRecord(t, "o-1", first.CustomerID, first.OccurredAt.Add(time.Second), "meta"))
			select {
			case <-died:
			case <-time.After(60 * time.Second):
				t.Fatal("the failpoint after-object was not reached")
			}
			a.stop(t)
			e.start(t, "pz-b")
			if c := e.objectionConfirmations(t, 1)["o-1"]; c.Status != schema.StatusApplied || c.Superseded {
				t.Fatalf("confirmation after the takeover: %+v", c)
			}
			next := gen.ForCustomer(0)
			e.produce(t, e.orderRecord(t, next))
			if got := systemsOf(e.outputsByEvent(t)[fmt.Sprint(next.OccurredAt.UnixMilli())]); !slices.Equal(got, []string{"crm", "google-analytics"}) {
				t.Errorf("after the takeover: %v, want crm and google-analytics", got)
			}
		})
	}
}
