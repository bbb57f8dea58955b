//go:build linux

package integration

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hygiene/pseudonymizer/internal/kafkatest"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kmsg"
)

// TestBrokerFaults injects broker errors into the transactional path of two
// instances while orders stream in: failed and timed-out produces to one
// output topic (a batch's fan-out must reach all systems or none), failed
// and dropped EndTxn (an unconfirmed commit is an abort and the batch is
// redone), failed, rebalanced and timed-out TxnOffsetCommit, and failing
// InitProducerID on a restart. Each injection must fire and the oracle must
// hold.
func TestBrokerFaults(t *testing.T) {
	w := MustNewWorld(t, withKfake())
	a := w.MustStart(t, "pz-a")
	b := w.MustStart(t, "pz-b")
	a.MustAwaitReadyz(t, 200, time.Minute)
	b.MustAwaitReadyz(t, 200, time.Minute)
	done := w.Stream(t, stream{n: 1500, forgetEvery: 50, chunk: 20, pause: 200 * time.Millisecond})

	meta := w.topics.PseudoPrefix + "meta"
	crm := w.topics.PseudoPrefix + "crm"
	type injection struct {
		name    string
		faults  []kfake.Fault
		restart bool          // SIGKILL and restart pz-a to make it initialize its producer ID
		also    []kfake.Fault // installed too, to provoke the faulted request
	}
	injections := []injection{
		{name: "Produce to one output topic: INVALID_RECORD", faults: []kfake.Fault{{Keys: []kmsg.Key{kmsg.Produce}, Topic: meta, Err: kerr.InvalidRecord, Count: 3}}},
		{name: "Produce to one output topic: NOT_ENOUGH_REPLICAS_AFTER_APPEND (appended, then failed)", faults: []kfake.Fault{{Keys: []kmsg.Key{kmsg.Produce}, Topic: crm, Err: kerr.NotEnoughReplicasAfterAppend, Count: 2}}},
		{name: "Produce to one output topic: UNKNOWN_SERVER_ERROR", faults: []kfake.Fault{{Keys: []kmsg.Key{kmsg.Produce}, Topic: meta, Err: kerr.UnknownServerError, Count: 2}}},
		{name: "EndTxn commit: UNKNOWN_SERVER_ERROR (unconfirmed commit)", faults: []kfake.Fault{{Keys: []kmsg.Key{kmsg.EndTxn}, Err: kerr.UnknownServerError, Count: 2, When: isCommit}}},
		{name: "EndTxn abort: UNKNOWN_SERVER_ERROR", faults: []kfake.Fault{{Keys: []kmsg.Key{kmsg.EndTxn}, Err: kerr.UnknownServerError, Count: 1, When: func(r kmsg.Request) bool { return !isCommit(r) }}}, also: []kfake.Fault{{Keys: []kmsg.Key{kmsg.Produce}, Topic: crm, Err: kerr.InvalidRecord, Count: 1}}},
		{name: "EndTxn commit: NOT_COORDINATOR", faults: []kfake.Fault{{Keys: []kmsg.Key{kmsg.EndTxn}, Err: kerr.NotCoordinator, Count: 2, When: isCommit}}},
		{name: "TxnOffsetCommit: UNKNOWN_SERVER_ERROR", faults: []kfake.Fault{{Keys: []kmsg.Key{kmsg.TxnOffsetCommit}, Err: kerr.UnknownServerError, Count: 1}}},
		{name: "TxnOffsetCommit: ILLEGAL_GENERATION", faults: []kfake.Fault{{Keys: []kmsg.Key{kmsg.TxnOffsetCommit}, Group: w.group, Err: kerr.IllegalGeneration, Count: 1}}},
		{name: "TxnOffsetCommit: REQUEST_TIMED_OUT (applied, then failed)", faults: []kfake.Fault{{Keys: []kmsg.Key{kmsg.TxnOffsetCommit}, Err: kerr.RequestTimedOut, Count: 2}}},
		{name: "InitProducerID: CONCURRENT_TRANSACTIONS then UNKNOWN_SERVER_ERROR", restart: true, faults: []kfake.Fault{
			{Keys: []kmsg.Key{kmsg.InitProducerID}, TxnID: w.txnID("pz-a"), Err: kerr.ConcurrentTransactions, Count: 3},
			{Keys: []kmsg.Key{kmsg.InitProducerID}, TxnID: w.txnID("pz-a"), Err: kerr.UnknownServerError, Count: 1},
		}},
	}
	type fired struct {
		name string
		h    *kfake.FaultHandle
	}
	var all []fired
	for _, inj := range injections {
		h := w.fake.Fault(inj.faults...)
		if len(inj.also) > 0 {
			w.fake.Fault(inj.also...)
		}
		all = append(all, fired{inj.name, h})
		if inj.restart {
			a.MustKill(t)
			w.MustStart(t, "pz-a")
		}
		want := 0
		for _, f := range inj.faults {
			want += max(f.Count, 1)
		}
		// Fresh work for the faulted path until it fired, in case the
		// stream is done: a restarted instance initializes its producer
		// ID only when it first produces, after it rejoined the group.
		deadline := time.Now().Add(45 * time.Second)
		for h.Hits() < want && time.Now().Before(deadline) {
			w.MustProduce(t, 40, 20)
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			_ = h.Wait(ctx, want)
			cancel()
		}
		if h.Hits() < want {
			t.Errorf("%s: fired %d of %d times within 45s", inj.name, h.Hits(), want)
			h.Remove()
		}
		t.Logf("%s: fired %d times", inj.name, h.Hits())
	}

	// A dropped EndTxn commit: the connection closes with no answer, so the
	// client cannot know whether it committed.
	var dropped atomic.Int32
	w.fake.ControlKey(int16(kmsg.EndTxn), func(r kmsg.Request) (kmsg.Response, error, bool) {
		if !isCommit(r) {
			return nil, nil, false
		}
		dropped.Add(1)
		return nil, errors.New("injected: EndTxn dropped"), true
	})
	deadline := time.Now().Add(45 * time.Second)
	for dropped.Load() == 0 && time.Now().Before(deadline) {
		w.MustProduce(t, 40, 20)
		time.Sleep(time.Second)
	}
	if dropped.Load() == 0 {
		t.Errorf("EndTxn commit dropped connection: never fired")
	}
	t.Logf("EndTxn commit dropped connection: fired %d times", dropped.Load())

	<-done
	w.MustAwaitConsumed(t, 3*time.Minute)
	for _, f := range all {
		if f.h.Hits() == 0 {
			t.Errorf("%s: Hits() = 0, want > 0", f.name)
		}
	}
	w.MustStopAll(t)
	w.MustVerify(t)
}

// isCommit reports whether r is an EndTxn that commits.
func isCommit(r kmsg.Request) bool {
	e, ok := r.(*kmsg.EndTxnRequest)
	return ok && e.Commit
}

// TestOutputTooLarge makes the broker refuse copies for one system as too
// large (MESSAGE_TOO_LARGE, three times) although each copy fits its
// topic's max.message.bytes, as when a batch is refused as a whole. The
// service must neither dead-letter a valid order for it nor publish a
// partial fan-out: it aborts, retries, and every order reaches every system
// exactly once.
func TestOutputTooLarge(t *testing.T) {
	w := MustNewWorld(t, withKfake())
	a := w.MustStart(t, "pz-a")
	a.MustAwaitReadyz(t, 200, time.Minute)
	done := w.Stream(t, stream{n: 600, forgetEvery: 50, chunk: 20, pause: 100 * time.Millisecond})
	// The fault lands mid-stream: once the service has committed work.
	kafkatest.WaitFor(t, time.Minute, "the first committed orders", func() bool { return w.MustCommitted(t) > 0 })
	h := w.fake.Fault(kfake.Fault{Keys: []kmsg.Key{kmsg.Produce}, Topic: w.topics.PseudoPrefix + "meta", Err: kerr.MessageTooLarge, Count: 3})
	kafkatest.WaitForNil(t, 45*time.Second, "MESSAGE_TOO_LARGE to fire 3 times", func() error {
		if h.Hits() >= 3 {
			return nil
		}
		w.MustProduce(t, 20, 0)
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		_ = h.Wait(ctx, 3)
		cancel()
		return fmt.Errorf("fired %d times", h.Hits())
	})
	<-done
	w.MustAwaitConsumed(t, 2*time.Minute)
	w.MustStopAll(t)
	w.MustVerify(t)
}
