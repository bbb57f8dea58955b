package lookup_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"testing"
	"time"

	"github.com/hygiene/pseudonymizer/processor/policy"
	"github.com/hygiene/pseudonymizer/schema"
	"github.com/hygiene/pseudonymizer/store"
)

var storeKinds = []string{"embedded", "postgres"}

// event is a test order with every kind of value the API takes.
func event(customer, order string, at time.Time) *schema.OrderEvent {
	email := customer + "@example.com"
	return &schema.OrderEvent{
		EventID: "ev-" + order, EventType: "PLACED", OccurredAt: at, OrderID: order, CustomerID: customer,
		Email: &email, Currency: "EUR", TotalMinor: 12345,
		Items:      []schema.LineItem{{SKU: "sku-" + order, Quantity: 3, UnitPriceMinor: 4115}},
		Attributes: map[string]string{},
	}
}

// request asks for ev's pseudonyms in every system.
func request(w *world, ev *schema.OrderEvent) lookupReq {
	return lookupReq{
		CustomerID: ev.CustomerID,
		OccurredAt: ev.OccurredAt.UTC().Format(time.RFC3339Nano),
		Values: map[string]any{
			"event_id": ev.EventID, "order_id": ev.OrderID, "total_minor": ev.TotalMinor,
			"email": *ev.Email, "items.sku": ev.Items[0].SKU, "items.quantity": ev.Items[0].Quantity,
		},
		Systems: w.plan.Systems(),
	}
}

// mustLookup asks the API for ev's pseudonyms and expects 200.
func mustLookup(t *testing.T, w *world, ev *schema.OrderEvent) map[string]map[string]string {
	t.Helper()
	code, body, _ := post(t, w.url, allToken, request(w, ev))
	if code != http.StatusOK {
		t.Fatalf("lookup: %d %s", code, body)
	}
	var r pseudonymsResp
	if err := json.Unmarshal(body, &r); err != nil {
		t.Fatal(err)
	}
	return r.Pseudonyms
}

// field returns a decoded output field as a string: the pseudonym of a
// scalar, of a nullable (a union), or of the first array item's member.
func field(m map[string]any, path string) (string, bool) {
	var v any = m
	for _, seg := range splitPath(path) {
		if arr, ok := v.([]any); ok && len(arr) > 0 {
			v = arr[0]
		}
		mm, ok := v.(map[string]any)
		if !ok {
			return "", false
		}
		if v, ok = mm[seg]; !ok {
			return "", false
		}
		if u, ok := v.(map[string]any); ok && len(u) == 1 {
			if s, ok := u["string"]; ok {
				v = s
			}
		}
	}
	s, ok := v.(string)
	return s, ok
}

func splitPath(p string) []string {
	var out []string
	start := 0
	for i := 0; i <= len(p); i++ {
		if i == len(p) || p[i] == '.' {
			out = append(out, p[start:i])
			start = i + 1
		}
	}
	return out
}

// compare checks that the API's answer equals the stream's output, field by
// field, and that each system got exactly its pseudonymized fields.
func compare(t *testing.T, w *world, api map[string]map[string]string, out map[string]output) {
	t.Helper()
	for i, sys := range w.plan.Systems() {
		got := api[sys]
		o := out[sys]
		if got["customer_id"] != o.key {
			t.Errorf("%s: API customer_id %q, stream record key %q", sys, got["customer_id"], o.key)
		}
		fields := w.plan.Pseudonymized(i)
		if len(got) != len(fields) {
			t.Errorf("%s: API answered %d fields, the policy pseudonymizes %d", sys, len(got), len(fields))
		}
		for _, f := range fields {
			want, ok := field(o.value, f.Path)
			if !ok {
				t.Fatalf("%s: stream output has no %s", sys, f.Path)
			}
			if got[f.Path] != want {
				t.Errorf("%s.%s: API %q, stream %q", sys, f.Path, got[f.Path], want)
			}
		}
	}
}

// TestEqualsStream: the API's pseudonyms equal the stream's output for the
// same event, asked before the event is processed (a new customer: the API
// creates the key) and after, on both stores, with erasure notices on and
// off; after a forget, an event at or before it answers 410 and creates
// nothing, and a later one gets the fresh key's pseudonyms, equal to the
// stream's.
func TestEqualsStream(t *testing.T) {
	for _, kind := range storeKinds {
		for _, notices := range []bool{false, true} {
			t.Run(fmt.Sprintf("%s/notices=%v", kind, notices), func(t *testing.T) {
				w := newWorld(t, kind, notices, true)
				t0 := time.UnixMilli(time.Now().Add(-time.Hour).UnixMilli())

				// API first: a customer the store has never seen.
				ev1 := event("cust-api", "order-1", t0)
				api1 := mustLookup(t, w, ev1)
				w.produceOrder(t, ev1)
				out1 := w.streamed(t, ev1.OccurredAt)
				compare(t, w, api1, out1)

				// Stream first.
				ev2 := event("cust-stream", "order-2", t0.Add(time.Second))
				w.produceOrder(t, ev2)
				out2 := w.streamed(t, ev2.OccurredAt)
				compare(t, w, mustLookup(t, w, ev2), out2)

				// The same customer, another order, from the cache.
				ev3 := event("cust-api", "order-3", t0.Add(2*time.Second))
				api3 := mustLookup(t, w, ev3)
				if api3["meta"]["customer_id"] != api1["meta"]["customer_id"] || api3["meta"]["order_id"] == api1["meta"]["order_id"] {
					t.Errorf("a second order of the same customer: customer pseudonyms differ or order pseudonyms are equal")
				}
				w.produceOrder(t, ev3)
				compare(t, w, api3, w.streamed(t, ev3.OccurredAt))

				// Forget cust-api after ev3.
				forgetAt := t0.Add(time.Minute)
				w.forget(t, 1, "req-1", "cust-api", forgetAt)
				for _, at := range []time.Time{ev1.OccurredAt, forgetAt} {
					ev := event("cust-api", "order-4", at)
					code, body, _ := post(t, w.url, allToken, request(w, ev))
					if code != http.StatusGone || string(body) != "{\"status\":\"suppressed\"}\n" {
						t.Errorf("lookup at or before the forget: %d %s, want 410 suppressed", code, body)
					}
				}
				st, err := w.st.(store.Auditor).Subject(context.Background(), "cust-api")
				if err != nil {
					t.Fatal(err)
				}
				if st.Key != nil {
					t.Errorf("a suppressed lookup created a key")
				}
				// A later event: the fresh key, equal to the stream's.
				ev5 := event("cust-api", "order-5", forgetAt.Add(time.Second))
				api5 := mustLookup(t, w, ev5)
				if api5["meta"]["customer_id"] == api1["meta"]["customer_id"] {
					t.Errorf("after the forget the customer pseudonym is the forgotten key's")
				}
				w.produceOrder(t, ev5)
				compare(t, w, api5, w.streamed(t, ev5.OccurredAt))
			})
		}
	}
}

var _ = policy.FieldCustomerID
