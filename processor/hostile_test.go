package processor_test

import (
	"strings"
	"testing"
	"time"

	"github.com/hygiene/pseudonymizer/internal/kafkatest"
	"github.com/hygiene/pseudonymizer/schema"
	"github.com/hygiene/pseudonymizer/schema/sample"
)

// TestBadIDsAreDeadLettered (issue 24, item 1): IDs with a NUL byte or
// invalid UTF-8 break the contract in every ID field. Forget requests with
// such a request_id or subject_id, and orders with such an event_id,
// order_id or customer_id, are dead-lettered as contract; the legitimate
// requests and orders around them go through, on both stores. Without the
// fix the PostgreSQL store refused the request IDs (SQLSTATE 22021) and the
// whole forget batch was retried for ever (no confirmation ever came), and
// both stores accepted the orders, with a NUL customer_id as a subject of
// its own. The logs carry no refused bytes (PostgreSQL's message quotes
// them as 0x00).
func TestBadIDsAreDeadLettered(t *testing.T) {
	for _, kind := range storeKinds {
		t.Run(kind, func(t *testing.T) {
			t.Parallel()
			e := newEnv(t, kind)
			defer func() {
				if t.Failed() {
					t.Log(e.logs())
				}
			}()
			gen := sample.New(24, 2, time.Now().Add(-time.Hour))
			good := gen.ForCustomer(0)
			nulCustomer := gen.ForCustomer(1)
			nulCustomer.CustomerID = sample.CustomerID(1) + "\x00"
			nulEvent := gen.ForCustomer(1)
			nulEvent.EventID += "\x00"
			nulOrder := gen.ForCustomer(1)
			nulOrder.OrderID = "\x00" + nulOrder.OrderID
			badUTF8 := gen.ForCustomer(1)
			badUTF8.CustomerID = "cust-\xff"
			e.produce(t, e.orderRecord(t, good), e.orderRecord(t, nulCustomer), e.orderRecord(t, nulEvent), e.orderRecord(t, nulOrder), e.orderRecord(t, badUTF8))
			now := time.Now()
			e.produce(t,
				e.forgetRecord(t, "req-1", sample.CustomerID(1), now),
				e.forgetRecord(t, "req\x00nul", "cust-2", now),
				e.forgetRecord(t, "req-\xff", "cust-2", now),
				e.forgetRecord(t, "req-3", "cust-\x00", now),
				e.forgetRecord(t, "req-4", "cust-\xff\xfe", now),
				e.forgetRecord(t, "req-5", "cust-never-seen", now),
			)
			e.start(t, "pz-1")
			got := e.confirmations(t, 2)
			if got["req-1"] == nil || got["req-5"] == nil {
				t.Fatalf("confirmations %v, want req-1 and req-5", got)
			}
			dlq := e.settled(t, e.topics.ForgetDeadLetter)
			if len(dlq) != 4 {
				t.Errorf("%d forget dead letters, want 4", len(dlq))
			}
			for _, r := range dlq {
				c, msg := kafkatest.Header(r, "error.class"), kafkatest.Header(r, "error.message")
				// The bare decoder refuses invalid UTF-8 itself.
				if c != schema.ClassContract && c != schema.ClassDecode {
					t.Errorf("forget dead letter of class %s (%s), want contract", c, msg)
				}
			}
			odlq := e.settled(t, e.topics.OrdersDeadLetter)
			if len(odlq) != 4 {
				t.Errorf("%d order dead letters, want 4", len(odlq))
			}
			for _, r := range odlq {
				c, msg := kafkatest.Header(r, "error.class"), kafkatest.Header(r, "error.message")
				// The bare scanner refuses invalid UTF-8 as it decodes.
				if c != schema.ClassContract && !(c == schema.ClassDecode && strings.Contains(msg, "UTF-8")) {
					t.Errorf("order dead letter of class %s (%s), want contract", c, msg)
				}
			}
			if out := e.settled(t, e.outputTopics()...); len(out) != len(e.plan.Systems()) {
				t.Errorf("%d outputs, want the one valid order once per system (%d)", len(out), len(e.plan.Systems()))
			}
			if l := e.logs(); strings.Contains(l, "0x00") || strings.Contains(l, "0xff") || strings.ContainsAny(l, "\x00\xff") {
				t.Errorf("the logs quote refused bytes")
			}
		})
	}
}
