package policy_test

import (
	"bytes"
	"testing"
	"time"

	"github.com/hamba/avro/v2"

	"github.com/hygiene/pseudonymizer/processor/policy"
	"github.com/hygiene/pseudonymizer/processor/pseudonym"
	"github.com/hygiene/pseudonymizer/schema"
)

// TestPseudonymizedFields: Pseudonymized lists a system's pseudonymized
// paths with their kinds, and AppendStringPseudonym/AppendIntPseudonym
// give the strings Project writes for them.
func TestPseudonymizedFields(t *testing.T) {
	pol := policy.Policy{System: "audit", Keep: []string{"currency"},
		Pseudonymize: []string{"customer_id", "email", "total_minor", "items.quantity", "items.sku"}}
	plan, err := policy.Compile(schema.OrderEventSchema(), []policy.Policy{pol})
	if err != nil {
		t.Fatal(err)
	}
	want := []policy.Field{{"customer_id", policy.KindString}, {"email", policy.KindString}, {"total_minor", policy.KindLong},
		{"items.quantity", policy.KindInt}, {"items.sku", policy.KindString}}
	got := plan.Pseudonymized(0)
	if len(got) != len(want) {
		t.Fatalf("Pseudonymized = %v, want %v", got, want)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Errorf("Pseudonymized[%d] = %v, want %v", i, got[i], want[i])
		}
	}

	email := "a@example.com"
	ev := &schema.OrderEvent{EventID: "e", EventType: "PLACED", OccurredAt: time.UnixMilli(1), OrderID: "o", CustomerID: "c",
		Email: &email, Currency: "EUR", TotalMinor: -42, Items: []schema.LineItem{{SKU: "sku-1", Quantity: 7}}, Attributes: map[string]string{}}
	in, err := schema.MarshalOrderEvent(ev)
	if err != nil {
		t.Fatal(err)
	}
	key := bytes.Repeat([]byte{9}, 32)
	d := pseudonym.NewDeriver()
	out, err := plan.Project(nil, 0, in, key, d)
	if err != nil {
		t.Fatal(err)
	}
	var m struct {
		CustomerID string  `avro:"customer_id"`
		Email      *string `avro:"email"`
		TotalMinor string  `avro:"total_minor"`
		Items      []struct {
			SKU      string `avro:"sku"`
			Quantity string `avro:"quantity"`
		} `avro:"items"`
	}
	if err := avro.Unmarshal(plan.OutputSchema(0), out, &m); err != nil {
		t.Fatal(err)
	}
	k := d.Prepare(key)
	for _, c := range []struct{ name, got, want string }{
		{"customer_id", string(plan.SubjectPseudonymKey(nil, 0, &k, []byte("c"), d)), m.CustomerID},
		{"email", string(plan.AppendStringPseudonym(nil, 0, "email", &k, []byte(email), d)), *m.Email},
		{"total_minor", string(plan.AppendIntPseudonym(nil, 0, "total_minor", &k, -42, d)), m.TotalMinor},
		{"items.sku", string(plan.AppendStringPseudonym(nil, 0, "items.sku", &k, []byte("sku-1"), d)), m.Items[0].SKU},
		{"items.quantity", string(plan.AppendIntPseudonym(nil, 0, "items.quantity", &k, 7, d)), m.Items[0].Quantity},
	} {
		if c.got != c.want {
			t.Errorf("%s: %q, Project wrote %q", c.name, c.got, c.want)
		}
	}
}
