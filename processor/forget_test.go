package processor_test

import (
	"context"
	"testing"
	"time"

	"github.com/hamba/avro/v2"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/hygiene/pseudonymizer/internal/kafkatest"
	"github.com/hygiene/pseudonymizer/schema"
	"github.com/hygiene/pseudonymizer/schema/sample"
	"github.com/hygiene/pseudonymizer/store"
)

// decoded is one output record, decoded.
type decoded struct {
	system string
	key    string
	at     time.Time
	v      map[string]any
}

func (e *env) decode(t *testing.T, recs []*kgo.Record) []decoded {
	t.Helper()
	var out []decoded
	for _, r := range recs {
		sys := systemOf(e, r.Topic)
		var v map[string]any
		if err := avro.Unmarshal(e.plan.OutputSchema(indexOf(e.plan.Systems(), sys)), r.Value, &v); err != nil {
			t.Fatalf("%s: %v", sys, err)
		}
		at, _ := v["occurred_at"].(time.Time)
		out = append(out, decoded{system: sys, key: string(r.Key), at: at, v: v})
	}
	return out
}

// confirmations reads every confirmation once the processors have consumed
// every request, and fails unless there are n, one per request.
func (e *env) confirmations(t *testing.T, n int) map[string]*schema.ForgetConfirmation {
	t.Helper()
	recs := e.settled(t, e.topics.Forgotten)
	out := map[string]*schema.ForgetConfirmation{}
	for _, r := range recs {
		c, err := schema.UnmarshalForgetConfirmation(r.Value)
		if err != nil {
			t.Fatalf("confirmation does not decode: %v", err)
		}
		if _, dup := out[c.RequestID]; dup {
			t.Fatalf("P4: two confirmations for request %s", c.RequestID)
		}
		if string(r.Key) != c.SubjectID {
			t.Fatalf("confirmation key is not the subject ID")
		}
		out[c.RequestID] = c
	}
	if len(out) != n {
		t.Fatalf("%d confirmations, want %d", len(out), n)
	}
	return out
}

// TestForgetStatuses checks FORGOTTEN, ALREADY_FORGOTTEN, UNKNOWN_SUBJECT,
// one confirmation per request, and dead letters for malformed requests.
func TestForgetStatuses(t *testing.T) {
	for _, kind := range storeKinds {
		t.Run(kind, func(t *testing.T) {
			t.Parallel()
			e := newEnv(t, kind)
			gen := sample.New(2, 2, time.Now().Add(-time.Hour))
			e.produce(t, e.orderRecord(t, gen.ForCustomer(0)), e.orderRecord(t, gen.ForCustomer(1)))
			e.start(t, "pz-1")
			e.kc.AwaitCount(t, 2*len(e.plan.Systems()), 30*time.Second, e.outputTopics()...)

			now := time.Now().Truncate(time.Millisecond)
			c0 := sample.CustomerID(0)
			e.produce(t,
				e.forgetRecord(t, "r1", c0, now),
				e.forgetRecord(t, "r2", c0, now.Add(time.Millisecond)),
				e.forgetRecord(t, "r3", "cust-never-seen", now),
				&kgo.Record{Topic: e.topics.Forget, Key: []byte("x"), Value: []byte{0xff, 0xff}},
				e.forgetRecord(t, "r4", "", now),
				e.forgetRecord(t, "r5", c0, time.UnixMilli(1<<55)),
			)
			got := e.confirmations(t, 3)
			for id, want := range map[string]string{"r1": schema.StatusForgotten, "r2": schema.StatusAlreadyForgotten, "r3": schema.StatusUnknownSubject} {
				c := got[id]
				if c == nil {
					t.Fatalf("no confirmation for %s", id)
				}
				if c.Status != want {
					t.Errorf("%s: status %s, want %s", id, c.Status, want)
				}
			}
			if g := got["r1"].Systems; len(g) != len(e.plan.Systems()) {
				t.Errorf("FORGOTTEN lists systems %v, want all %v", g, e.plan.Systems())
			}
			dlq := e.settled(t, e.topics.ForgetDeadLetter)
			if len(dlq) != 3 {
				t.Errorf("%d forget dead letters, want 3", len(dlq))
			}
			classes := map[string]bool{}
			for _, r := range dlq {
				classes[kafkatest.Header(r, "error.class")] = true
			}
			if !classes[schema.ClassDecode] || !classes[schema.ClassContract] {
				t.Errorf("forget dead letters have classes %v, want decode and contract", classes)
			}
		})
	}
}

// TestForgetSuppressesAndRenews: after a confirmation, replayed old events
// of the subject are suppressed (also after a restart), and newer events get
// pseudonyms from a fresh key, stable among themselves.
func TestForgetSuppressesAndRenews(t *testing.T) {
	for _, kind := range storeKinds {
		t.Run(kind, func(t *testing.T) {
			t.Parallel()
			e := newEnv(t, kind)
			systems := e.plan.Systems()
			base := time.Now().Add(-time.Hour).Truncate(time.Millisecond)
			gen := sample.New(3, 1, base)
			var old []*schema.OrderEvent
			for i := 0; i < 4; i++ {
				ev := gen.ForCustomer(0)
				old = append(old, ev)
				e.produce(t, e.orderRecord(t, ev))
			}
			in := e.start(t, "pz-1")
			before := e.decode(t, e.settled(t, e.outputTopics()...))
			if len(before) != len(old)*len(systems) {
				t.Fatalf("%d outputs, want %d", len(before), len(old)*len(systems))
			}
			oldKey := map[string]string{}
			for _, d := range before {
				oldKey[d.system] = d.key
			}

			requested := time.Now().Truncate(time.Millisecond)
			e.produce(t, e.forgetRecord(t, "forget-1", sample.CustomerID(0), requested))
			if c := e.confirmations(t, 1)["forget-1"]; c.Status != schema.StatusForgotten {
				t.Fatalf("status %s", c.Status)
			}

			// Replay every old event, plus two new ones.
			newer := []*schema.OrderEvent{gen.ForCustomer(0), gen.ForCustomer(0)}
			newer[0].OccurredAt = requested.Add(time.Second)
			newer[1].OccurredAt = requested.Add(2 * time.Second)
			for _, ev := range old {
				e.produce(t, e.orderRecord(t, ev))
			}
			e.produce(t, e.orderRecord(t, newer[0]), e.orderRecord(t, newer[1]))
			all := e.decode(t, e.settled(t, e.outputTopics()...))
			if len(all) != (len(old)+2)*len(systems) {
				t.Fatalf("%d outputs after replay, want %d (replays must be suppressed)", len(all), (len(old)+2)*len(systems))
			}
			kafkatest.WaitFor(t, 10*time.Second, "suppressed count", func() bool { return in.p.Stats().Suppressed == len(old) })
			newKey := map[string]string{}
			seen := map[string]int{}
			for _, d := range all {
				seen[d.system+d.at.String()]++
				if !d.at.After(requested) {
					if seen[d.system+d.at.String()] > 1 {
						t.Fatalf("%s: an event from before the forget was emitted again", d.system)
					}
					continue
				}
				if d.key == oldKey[d.system] {
					t.Fatalf("%s: old pseudonym reused after forget", d.system)
				}
				if k, ok := newKey[d.system]; ok && k != d.key {
					t.Fatalf("%s: fresh pseudonyms are not stable", d.system)
				}
				newKey[d.system] = d.key
			}

			// Restart: replays are still suppressed, and the fresh key is kept.
			in.stop(t)
			in2 := e.start(t, "pz-1")
			later := gen.ForCustomer(0)
			later.OccurredAt = requested.Add(3 * time.Second)
			e.produce(t, e.orderRecord(t, old[0]), e.orderRecord(t, later))
			all = e.decode(t, e.settled(t, e.outputTopics()...))
			if len(all) != (len(old)+3)*len(systems) {
				t.Fatalf("%d outputs after the restart, want %d (the replay must be suppressed)", len(all), (len(old)+3)*len(systems))
			}
			for _, d := range all {
				if !d.at.After(requested) {
					continue
				}
				if d.key != newKey[d.system] {
					t.Fatalf("%s: fresh pseudonym changed across a restart", d.system)
				}
			}
			kafkatest.WaitFor(t, 10*time.Second, "suppressed replay after restart", func() bool { return in2.p.Stats().Suppressed == 1 })
		})
	}
}

// TestForgetInvalidatesOtherInstancesCache: an instance that cached a
// subject's key must not publish with it once another instance's forget
// committed: its guard sees the forget, the batch is aborted and redone,
// and the in-flight event is suppressed.
func TestForgetInvalidatesOtherInstancesCache(t *testing.T) {
	for _, kind := range storeKinds {
		t.Run(kind, func(t *testing.T) {
			t.Parallel()
			e := newEnv(t, kind)
			systems := e.plan.Systems()
			base := time.Now().Add(-time.Hour).Truncate(time.Millisecond)
			gen := sample.New(4, 1, base)
			first := gen.ForCustomer(0)
			e.produce(t, e.orderRecord(t, first))
			in := e.start(t, "pz-b")
			e.kc.AwaitCount(t, len(systems), 30*time.Second, e.outputTopics()...)

			// "Instance A" forgets the subject directly in the shared store;
			// B still has the key cached.
			other := e.open(t)
			requested := time.Now().Truncate(time.Millisecond)
			res, err := other.Forget(context.Background(), []store.ForgetRequest{{RequestID: "a-1", SubjectID: first.CustomerID, RequestedAt: requested}})
			if err != nil || res[0].Status != store.Forgotten {
				t.Fatalf("forget: %v %v", res, err)
			}

			inFlight := gen.ForCustomer(0)
			inFlight.OccurredAt = first.OccurredAt.Add(time.Second) // before the request
			e.produce(t, e.orderRecord(t, inFlight))
			kafkatest.WaitFor(t, 30*time.Second, "in-flight event suppressed", func() bool { return in.p.Stats().Suppressed == 1 })
			if st := in.p.Stats(); st.Stale < 1 {
				t.Errorf("expected a stale batch to be redone, stats %+v", st)
			}
			outs := e.settled(t, e.outputTopics()...)
			if len(outs) != len(systems) {
				t.Fatalf("%d outputs, want %d: the in-flight event was published with the forgotten key", len(outs), len(systems))
			}
		})
	}
}

// TestForgetRaceTwoInstances streams orders of several customers through
// two instances while forget requests for some of them arrive. An event
// after its request that races the request may still get the old key (its
// batch may commit before the forget), but every event sent after the
// confirmations gets the fresh key, one per subject and system; every
// replay after the confirmation is suppressed, and each request is
// confirmed once.
func TestForgetRaceTwoInstances(t *testing.T) {
	for _, kind := range storeKinds {
		t.Run(kind, func(t *testing.T) {
			t.Parallel()
			e := newEnv(t, kind)
			systems := e.plan.Systems()
			ins := []*instance{e.start(t, "pz-a"), e.start(t, "pz-b")}
			ordersIn := func() int {
				n := 0
				for _, in := range ins {
					n += in.p.Stats().OrdersIn
				}
				return n
			}
			const customers, rounds = 6, 40
			base := time.Now().Add(-time.Hour).Truncate(time.Millisecond)
			gen := sample.New(5, customers, base)
			var events []*schema.OrderEvent
			tick := 0
			next := func(c int) *schema.OrderEvent {
				tick++
				ev := gen.ForCustomer(c)
				ev.OccurredAt = base.Add(time.Duration(tick) * time.Millisecond)
				events = append(events, ev)
				return ev
			}
			requested := map[string]time.Time{}
			produceRound := func(r int) {
				var recs []*kgo.Record
				for c := 0; c < customers; c++ {
					recs = append(recs, e.orderRecord(t, next(c)))
				}
				if r == rounds/2 {
					for c := 0; c < customers/2; c++ {
						id := sample.CustomerID(c)
						requested[id] = base.Add(time.Duration(tick) * time.Millisecond)
						recs = append(recs, e.forgetRecord(t, "race-"+id, id, requested[id]))
					}
				}
				e.produce(t, recs...)
			}
			// Rounds up to 3/4 race the forget requests; the rest are sent
			// once every request is confirmed.
			for r := 0; r < rounds*3/4; r++ {
				produceRound(r)
			}
			confirmedAt := tick
			e.confirmations(t, customers/2)
			for r := rounds * 3 / 4; r < rounds; r++ {
				produceRound(r)
			}
			kafkatest.WaitFor(t, 60*time.Second, "all orders committed", func() bool { return ordersIn() == len(events) })

			// Events at or before a request may be emitted (with the old key)
			// or suppressed, depending on the interleaving; events after it
			// get the old key only while they race the request, and a fresh
			// key once it is confirmed.
			guaranteed := 0
			for _, ev := range events {
				if req, ok := requested[ev.CustomerID]; !ok || ev.OccurredAt.After(req) {
					guaranteed++
				}
			}
			outs := e.decode(t, e.settled(t, e.outputTopics()...))
			if len(outs) < guaranteed*len(systems) {
				t.Fatalf("%d outputs, want at least %d", len(outs), guaranteed*len(systems))
			}
			byAt := map[int64]*schema.OrderEvent{}
			for _, ev := range events {
				byAt[ev.OccurredAt.UnixMilli()] = ev
			}
			type sk struct{ sys, cust string }
			keysBefore, keysRacing, keysAfter := map[sk]map[string]bool{}, map[sk]map[string]bool{}, map[sk]map[string]bool{}
			for _, d := range outs {
				ev := byAt[d.at.UnixMilli()]
				if ev == nil {
					t.Fatalf("output for an unknown event")
				}
				k := sk{d.system, ev.CustomerID}
				req, forgotten := requested[ev.CustomerID]
				m := keysBefore
				switch {
				case forgotten && ev.OccurredAt.After(base.Add(time.Duration(confirmedAt)*time.Millisecond)):
					m = keysAfter
				case forgotten && ev.OccurredAt.After(req):
					m = keysRacing
				}
				if m[k] == nil {
					m[k] = map[string]bool{}
				}
				m[k][d.key] = true
			}
			for k, before := range keysBefore {
				if len(before) != 1 {
					t.Errorf("%v: %d pseudonyms before the forget, want 1", k, len(before))
				}
				for key := range keysAfter[k] {
					if before[key] {
						t.Errorf("%v: old pseudonym used after the confirmation", k)
					}
				}
			}
			for k, after := range keysAfter {
				if len(after) != 1 {
					t.Errorf("%v: %d fresh pseudonyms, want 1", k, len(after))
				}
				for key := range keysRacing[k] {
					if !after[key] && !keysBefore[k][key] {
						t.Errorf("%v: an event racing the forget got a third pseudonym", k)
					}
				}
			}
			if len(keysAfter) != customers/2*len(systems) {
				t.Errorf("fresh pseudonyms for %d subject/system pairs, want %d", len(keysAfter), customers/2*len(systems))
			}
			// Events at or before a request that arrived after it was
			// processed are suppressed; the rest are emitted exactly once.
			if got := len(outs); got > len(events)*len(systems) {
				t.Errorf("%d outputs for %d events: duplicates", got, len(events))
			}

			// Replay every event after the confirmations: only the events
			// newer than their subject's request (or of subjects never
			// forgotten) come out again.
			n0 := len(outs)
			var replay []*kgo.Record
			want := 0
			for _, ev := range events {
				replay = append(replay, e.orderRecord(t, ev))
				if req, ok := requested[ev.CustomerID]; !ok || ev.OccurredAt.After(req) {
					want++
				}
			}
			e.produce(t, replay...)
			kafkatest.WaitFor(t, 60*time.Second, "replay committed", func() bool { return ordersIn() == 2*len(events) })
			outs2 := e.settled(t, e.outputTopics()...)
			if got := len(outs2) - n0; got != want*len(systems) {
				t.Fatalf("replay produced %d outputs, want %d", got, want*len(systems))
			}
			count := map[string]int{}
			for _, d := range e.decode(t, outs2) {
				count[d.system+"/"+d.at.String()]++
			}
			for _, d := range outs {
				ev := byAt[d.at.UnixMilli()]
				n := count[d.system+"/"+d.at.String()]
				if req, ok := requested[ev.CustomerID]; ok && !ev.OccurredAt.After(req) {
					if n != 1 {
						t.Fatalf("an event from before a forget was emitted %d times (replay after confirmation must be suppressed)", n)
					}
				} else if n != 2 {
					t.Fatalf("an event was emitted %d times over two passes, want 2", n)
				}
			}
		})
	}
}
