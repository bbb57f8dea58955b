package processor_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"fmt"
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

// noticeSystems are the systems of testPolicies that the notice tests opt
// in; meta stays out.
var noticeSystems = map[string]bool{"crm": true, "google-analytics": true}

// newNoticeEnv is newEnv with erasure notices on for noticeSystems.
func newNoticeEnv(t *testing.T, kind string, opts ...kfake.Opt) *env {
	t.Helper()
	e := newEnv(t, kind, opts...)
	for i := range e.pols {
		e.pols[i].ErasureNotices = noticeSystems[e.pols[i].System]
	}
	return e
}

// noticeWorld is the common part of the notice tests: customer 0's and
// customer 1's orders, published and committed, and customer 0's
// pseudonym (record key) and partition in each system.
type noticeWorld struct {
	events  []*schema.OrderEvent
	oldKey  map[string]string
	oldPart map[string]int32
}

func (e *env) noticeWorld(t *testing.T, tweak ...func(*processor.Config)) (*noticeWorld, *instance) {
	t.Helper()
	gen := sample.New(7, 2, time.Now().Add(-time.Hour))
	w := &noticeWorld{oldKey: map[string]string{}, oldPart: map[string]int32{}}
	for range 3 {
		ev := gen.ForCustomer(0)
		w.events = append(w.events, ev)
		e.produce(t, e.orderRecord(t, ev))
	}
	in := e.start(t, "pz-1", tweak...)
	nsys := len(e.plan.Systems())
	for _, r := range e.kc.AwaitCount(t, 3*nsys, 30*time.Second, e.outputTopics()...) {
		w.oldKey[systemOf(e, r.Topic)] = string(r.Key)
		w.oldPart[systemOf(e, r.Topic)] = r.Partition
	}
	for range 2 {
		ev := gen.ForCustomer(1)
		w.events = append(w.events, ev)
		e.produce(t, e.orderRecord(t, ev))
	}
	e.kc.AwaitCount(t, 5*nsys, 30*time.Second, e.outputTopics()...)
	return w, in
}

// checkNotices checks the committed output topics after customer 0 was
// forgotten at at: each opted-in system has exactly one tombstone, keyed
// by customer 0's pseudonym there, on that key's partition, after its
// records, with the requested_at header, in the transaction of the
// confirmation (confirm); meta has none; no raw ID and no other system's
// pseudonym appears in any byte of a system's topic.
func (e *env) checkNotices(t *testing.T, w *noticeWorld, at time.Time, confirm *kgo.Record) {
	t.Helper()
	outs := e.settled(t, e.outputTopics()...)
	tombs := map[string][]*kgo.Record{}
	lastOld := map[string]int64{}
	for _, r := range outs {
		sys := systemOf(e, r.Topic)
		if r.Value == nil {
			tombs[sys] = append(tombs[sys], r)
		} else if string(r.Key) == w.oldKey[sys] && r.Offset > lastOld[sys] {
			lastOld[sys] = r.Offset
		}
	}
	for i, sys := range e.plan.Systems() {
		wantAt := e.plan.NoticeTime(i, at).UTC().Format("2006-01-02T15:04:05.000Z07:00")
		if !noticeSystems[sys] {
			if len(tombs[sys]) != 0 {
				t.Errorf("%s (notices off): %d tombstones, want none", sys, len(tombs[sys]))
			}
			continue
		}
		if len(tombs[sys]) != 1 {
			t.Fatalf("%s: %d tombstones, want exactly 1", sys, len(tombs[sys]))
		}
		r := tombs[sys][0]
		if string(r.Key) != w.oldKey[sys] {
			t.Errorf("%s: the tombstone's key is not the customer pseudonym its records carried", sys)
		}
		if r.Partition != w.oldPart[sys] || r.Offset < lastOld[sys] {
			t.Errorf("%s: tombstone at %d/%d, want after the pseudonym's records on partition %d", sys, r.Partition, r.Offset, w.oldPart[sys])
		}
		if len(r.Headers) != 1 || r.Headers[0].Key != processor.HeaderRequestedAt || string(r.Headers[0].Value) != wantAt {
			t.Errorf("%s: tombstone headers %v, want only requested_at=%s", sys, r.Headers, wantAt)
		}
		if confirm != nil && (r.ProducerID != confirm.ProducerID || r.ProducerEpoch != confirm.ProducerEpoch) {
			t.Errorf("%s: tombstone committed by producer %d/%d, the confirmation by %d/%d", sys, r.ProducerID, r.ProducerEpoch, confirm.ProducerID, confirm.ProducerEpoch)
		}
	}

	// P1: no raw identifier (customer, order, event or request ID) in any
	// byte of any output, notices included.
	raw := [][]byte{[]byte("notice-req-")}
	for _, ev := range w.events {
		for _, v := range sample.RawIdentifiers(ev) {
			raw = append(raw, []byte(v))
		}
	}
	// P2: no system's topic carries another system's customer pseudonym.
	for _, r := range outs {
		sys := systemOf(e, r.Topic)
		blobs := [][]byte{r.Key, r.Value}
		for _, h := range r.Headers {
			blobs = append(blobs, []byte(h.Key), h.Value)
		}
		for _, b := range blobs {
			for _, v := range raw {
				if bytes.Contains(b, v) {
					t.Fatalf("%s: raw identifier in an output record", sys)
				}
			}
			for other, k := range w.oldKey {
				if other != sys && bytes.Contains(b, []byte(k)) {
					t.Fatalf("%s: carries %s's customer pseudonym", sys, other)
				}
			}
		}
	}
}

// confirmation returns the committed confirmation of request id.
func (e *env) confirmation(t *testing.T, id string) *kgo.Record {
	t.Helper()
	for _, r := range e.settled(t, e.topics.Forgotten) {
		c, err := schema.UnmarshalForgetConfirmation(r.Value)
		if err != nil {
			t.Fatal(err)
		}
		if c.RequestID == id {
			return r
		}
	}
	t.Fatalf("no confirmation of %s", id)
	return nil
}

// wantNothingRetained checks that every key retained for notices was
// released after its commit.
func (e *env) wantNothingRetained(t *testing.T) {
	t.Helper()
	st := e.open(t)
	// Settle runs right after the commit, which readers may see first.
	kafkatest.WaitFor(t, 10*time.Second, "no key retained after the commit", func() bool {
		n, err := st.SettleCommitted(context.Background(), nil)
		return err == nil && n == 0
	})
}

// TestErasureNotices: forgetting a subject with a key sends each opted-in
// system one tombstone keyed by the pseudonym its records carried, with
// requested_at, in the confirmation's transaction; a system without
// notices, a repeated request (ALREADY_FORGOTTEN) and an unknown subject
// get none; nothing leaks, nothing links systems, nothing stays retained.
func TestErasureNotices(t *testing.T) {
	for _, kind := range storeKinds {
		t.Run(kind, func(t *testing.T) {
			t.Parallel()
			e := newNoticeEnv(t, kind)
			m := processor.NewMetrics(nil)
			w, _ := e.noticeWorld(t, func(c *processor.Config) { c.Metrics = m })
			at := time.Now().Truncate(time.Millisecond)
			e.produce(t,
				e.forgetRecord(t, "notice-req-1", sample.CustomerID(0), at),
				e.forgetRecord(t, "notice-req-2", sample.CustomerID(0), at.Add(time.Millisecond)),
				e.forgetRecord(t, "notice-req-3", "cust-never-seen", at),
			)
			got := e.confirmations(t, 3)
			for id, want := range map[string]string{"notice-req-1": schema.StatusForgotten, "notice-req-2": schema.StatusAlreadyForgotten, "notice-req-3": schema.StatusUnknownSubject} {
				if got[id] == nil || got[id].Status != want {
					t.Fatalf("%s: confirmation %+v, want %s", id, got[id], want)
				}
			}
			e.checkNotices(t, w, at, e.confirmation(t, "notice-req-1"))
			e.wantNothingRetained(t)
			for _, sys := range []string{"crm", "google-analytics"} {
				if v := testutil.ToFloat64(m.ErasureNotices.WithLabelValues(sys)); v != 1 {
					t.Errorf("erasure_notices_total{system=%s} = %v, want 1", sys, v)
				}
			}
		})
	}
}

// TestErasureNoticesRedo: the forget's store transaction commits, then its
// Kafka transaction fails at EndTxn; the redone batch (a new session)
// finds the request carried out and publishes its notices from the
// retained key: each opted-in system gets exactly one committed
// tombstone, and the key is released afterwards.
func TestErasureNoticesRedo(t *testing.T) {
	for _, kind := range storeKinds {
		t.Run(kind, func(t *testing.T) {
			t.Parallel()
			e := newNoticeEnv(t, kind, kfake.NumBrokers(1))
			w, _ := e.noticeWorld(t)
			// Fail the next commit: the one of the forget's batch.
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
			e.produce(t, e.forgetRecord(t, "notice-req-1", sample.CustomerID(0), at))
			got := e.confirmations(t, 1)
			if h.Hits() != 1 {
				t.Fatalf("the EndTxn fault fired %d times, want 1", h.Hits())
			}
			if got["notice-req-1"].Status != schema.StatusForgotten {
				t.Fatalf("status %s after the redo, want FORGOTTEN (recorded)", got["notice-req-1"].Status)
			}
			e.checkNotices(t, w, at, e.confirmation(t, "notice-req-1"))
			e.wantNothingRetained(t)
		})
	}
}

// TestErasureNoticesSweep: a key left retained by an instance that stopped
// between its Kafka commit and Settle (here: retained directly in the
// store, for a request offset the group has committed) is released by the
// next instance's sweep after its first commit.
func TestErasureNoticesSweep(t *testing.T) {
	for _, kind := range storeKinds {
		t.Run(kind, func(t *testing.T) {
			t.Parallel()
			e := newNoticeEnv(t, kind)
			_, in := e.noticeWorld(t)
			at := time.Now().Truncate(time.Millisecond)
			req := e.forgetRecord(t, "notice-req-1", sample.CustomerID(0), at)
			e.produce(t, req)
			e.confirmations(t, 1)
			in.stop(t)

			st := e.open(t)
			res, err := st.Forget(context.Background(), []store.ForgetRequest{{RequestID: "notice-req-left", SubjectID: sample.CustomerID(1),
				RequestedAt: at, Retain: true, Partition: req.Partition, Offset: req.Offset}})
			if err != nil || res[0].Key == nil {
				t.Fatalf("retaining Forget: %v, key %v", err, res[0].Key != nil)
			}
			if n, err := st.SettleCommitted(context.Background(), nil); err != nil || n != 1 {
				t.Fatalf("%d retained (%v), want the leftover", n, err)
			}
			e.start(t, "pz-2")
			e.produce(t, e.orderRecord(t, sample.New(8, 3, at).ForCustomer(2)))
			e.settled(t, e.outputTopics()...)
			e.wantNothingRetained(t)
		})
	}
}

// retainSpy records whether any forget request asked to retain its key.
type retainSpy struct {
	store.KeyStore
	mu       sync.Mutex
	retained bool
	forgets  int
}

func (s *retainSpy) Forget(ctx context.Context, reqs []store.ForgetRequest) ([]store.ForgetResult, error) {
	s.mu.Lock()
	s.forgets++
	for _, r := range reqs {
		s.retained = s.retained || r.Retain
	}
	s.mu.Unlock()
	return s.KeyStore.Forget(ctx, reqs)
}

// TestNoNoticesRetainsNothing: without erasure notices, Forget is asked to
// retain nothing, and outputs carry no tombstone.
func TestNoNoticesRetainsNothing(t *testing.T) {
	e := newEnv(t, "embedded")
	spy := &retainSpy{KeyStore: e.open(t)}
	gen := sample.New(9, 1, time.Now().Add(-time.Hour))
	e.produce(t, e.orderRecord(t, gen.ForCustomer(0)))
	e.start(t, "pz-1", func(c *processor.Config) { c.Store = spy })
	e.kc.AwaitCount(t, len(e.plan.Systems()), 30*time.Second, e.outputTopics()...)
	e.produce(t, e.forgetRecord(t, "r1", sample.CustomerID(0), time.Now()))
	if c := e.confirmations(t, 1); c["r1"].Status != schema.StatusForgotten {
		t.Fatalf("status %s, want FORGOTTEN", c["r1"].Status)
	}
	spy.mu.Lock()
	defer spy.mu.Unlock()
	if spy.forgets == 0 || spy.retained {
		t.Errorf("%d Forget calls, retain asked %v; want calls and no retention", spy.forgets, spy.retained)
	}
	for _, r := range e.settled(t, e.outputTopics()...) {
		if r.Value == nil {
			t.Errorf("%s: a tombstone without erasure notices", r.Topic)
		}
	}
}

// TestErasureNoticesOversizedConfirmation: the confirmation topic refuses
// the confirmation as too large, so the batch is aborted after Forget
// committed and redone, and the redone batch dead-letters the request
// instead of confirming it; the notices are published all the same, from
// the retained key.
func TestErasureNoticesOversizedConfirmation(t *testing.T) {
	e := newNoticeEnv(t, "embedded")
	small := "1024"
	e.kc.CreateTopics(t, 3, map[string]*string{"max.message.bytes": &small}, e.topics.Forgotten)
	rnd := make([]byte, 600)
	_, _ = rand.Read(rnd)
	subject := fmt.Sprintf("%x", rnd) // incompressible, so its confirmation is too large
	ev := sample.New(10, 1, time.Now().Add(-time.Hour)).ForCustomer(0)
	ev.CustomerID = subject
	e.produce(t, e.orderRecord(t, ev))
	e.start(t, "pz-1")
	oldKey := map[string]string{}
	for _, r := range e.kc.AwaitCount(t, len(e.plan.Systems()), 30*time.Second, e.outputTopics()...) {
		oldKey[systemOf(e, r.Topic)] = string(r.Key)
	}
	e.produce(t, e.forgetRecord(t, "req-big", subject, time.Now()))
	dlq := e.kc.AwaitCount(t, 1, 60*time.Second, e.topics.ForgetDeadLetter)
	if kafkatest.Header(dlq[0], "error.class") != schema.ClassTooLarge {
		t.Fatalf("dead letter class %q, want too_large", kafkatest.Header(dlq[0], "error.class"))
	}
	tombs := map[string]int{}
	for _, r := range e.settled(t, e.outputTopics()...) {
		if r.Value == nil {
			sys := systemOf(e, r.Topic)
			tombs[sys]++
			if string(r.Key) != oldKey[sys] {
				t.Errorf("%s: tombstone not keyed by the subject's pseudonym", sys)
			}
		}
	}
	if tombs["crm"] != 1 || tombs["google-analytics"] != 1 || tombs["meta"] != 0 {
		t.Errorf("tombstones per system %v, want one for crm and google-analytics", tombs)
	}
	e.wantNothingRetained(t)
}
