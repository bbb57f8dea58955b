package processor

import (
	"bytes"
	"context"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/hygiene/pseudonymizer/processor/policy"
	"github.com/hygiene/pseudonymizer/schema"
	"github.com/hygiene/pseudonymizer/schema/sample"
)

// goodID is the contract's rule for every ID, written out independently of
// idProblem: 1 to MaxIDBytes bytes of valid UTF-8 without NUL.
func goodID(id string) bool {
	return len(id) > 0 && len(id) <= MaxIDBytes && utf8.ValidString(id) && !strings.Contains(id, "\x00")
}

// FuzzContract (issue 24) runs the contract checks on every string ID
// field, with NUL bytes and invalid UTF-8 in the seeds, through the real
// decoders: an order is encoded, scanned by the bundled plan and checked
// by breaksContract; a forget request is encoded, decoded by the bare wire
// and checked by forgetBreaksContract. An order or request is accepted
// exactly when each of its IDs keeps the rule (goodID), and a reason never
// contains the bytes of an ID.
func FuzzContract(f *testing.F) {
	for _, seed := range [][3]string{
		{"evt-1", "ord-1", "cust-1"},
		{"evt-1", "ord-1", "cust-\x00"},
		{"evt\x00", "ord-1", "cust-1"},
		{"evt-1", "\x00", "cust-1"},
		{"evt-1", "ord-1", "cust-\xff"},
		{"evt-\xc3", "ord-1", "cust-1"},
		{"evt-1", "ord-\xed\xa0\x80", "cust-1"}, // a UTF-16 surrogate
		{"", "ord-1", "cust-1"},
		{"evt-1", "ord-1", strings.Repeat("é", 2049)},
		{"évt-1", "ørd-1", "cüst-1\u200b"},
	} {
		f.Add(seed[0], seed[1], seed[2])
	}
	plan, err := policy.Compile(schema.OrderEventSchema(), []policy.Policy{policy.Example("crm")})
	if err != nil {
		f.Fatal(err)
	}
	gen := sample.New(1, 1, time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC))
	f.Fuzz(func(t *testing.T, eventID, orderID, customerID string) {
		ev := gen.ForCustomer(0)
		ev.EventID, ev.OrderID, ev.CustomerID = eventID, orderID, customerID
		v, err := schema.MarshalOrderEvent(ev)
		if err != nil {
			t.Skip()
		}
		good := goodID(eventID) && goodID(orderID) && goodID(customerID)
		head, err := plan.Scan(v)
		var reason string
		if err == nil {
			reason = breaksContract(&head)
		}
		if accepted := err == nil && reason == ""; accepted != good {
			t.Fatalf("order with IDs %q %q %q: accepted %v (scan %v, contract %q), want %v", eventID, orderID, customerID, accepted, err, reason, good)
		}
		checkReason(t, reason, eventID, orderID, customerID)

		fv, err := schema.MarshalForgetRequest(&schema.ForgetRequest{RequestID: eventID, SubjectID: customerID, RequestedAt: ev.OccurredAt})
		if err != nil {
			t.Skip()
		}
		good = goodID(eventID) && goodID(customerID)
		fr, err := schema.BareWire{}.Forget(context.Background(), fv)
		reason = ""
		if err == nil {
			reason = forgetBreaksContract(fr)
		}
		if accepted := err == nil && reason == ""; accepted != good {
			t.Fatalf("forget request with IDs %q %q: accepted %v (decode %v, contract %q), want %v", eventID, customerID, accepted, err, reason, good)
		}
		checkReason(t, reason, eventID, customerID)
	})
}

// checkReason fails if reason contains any of the IDs' bytes (IDs of
// three bytes or less may well appear in a reason's words).
func checkReason(t *testing.T, reason string, ids ...string) {
	t.Helper()
	for _, id := range ids {
		if len(id) > 3 && strings.Contains(reason, id) {
			t.Fatalf("reason %q contains an ID", reason)
		}
	}
	if !utf8.ValidString(reason) || strings.ContainsRune(reason, 0) {
		t.Fatalf("reason %q is not clean text", reason)
	}
}

// TestIDProblemBothTypes: idProblem decides the same for an ID as string
// and as bytes.
func TestIDProblemBothTypes(t *testing.T) {
	for _, id := range []string{"", "a", "a\x00", "\xff", "é", strings.Repeat("x", MaxIDBytes), strings.Repeat("x", MaxIDBytes+1)} {
		if s, b := idProblem("id", id), idProblem("id", bytes.Clone([]byte(id))); s != b || (s == "") != goodID(id) {
			t.Errorf("%q: string %q, bytes %q, want the rule's %v", id, s, b, goodID(id))
		}
	}
}
