package policy

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"strings"
	"time"

	"github.com/hygiene/pseudonymizer/processor/pseudonym"
	"github.com/hygiene/pseudonymizer/schema"
)

// Policies of the example configuration of docs/configuration.md and a few more.
var (
	gaPolicy = Policy{
		System:       "google-analytics",
		Keep:         []string{"event_type", "occurred_at", "currency", "total_minor", "items", "attributes.utm_source"},
		Pseudonymize: []string{"event_id", "order_id", "customer_id"},
	}
	metaPolicy = Policy{
		System:       "meta",
		Keep:         []string{"event_type", "occurred_at", "currency", "total_minor", "shipping_address.country"},
		Pseudonymize: []string{"event_id", "order_id", "customer_id"},
	}
	crmPolicy = Policy{
		System: "crm.v2",
		Keep: []string{"event_type", "occurred_at", "currency", "items.quantity", "items.unit_price_minor",
			"shipping_address.city", "shipping_address.country", "attributes.utm_source", "attributes.utm_campaign"},
		Pseudonymize: []string{"event_id", "order_id", "customer_id", "email", "phone", "items.sku",
			"shipping_address.postal_code", "attributes.gclid"},
		Headers: []string{"traceparent"},
	}
	numPolicy = Policy{
		System:       "9tiktok",
		Pseudonymize: []string{"customer_id", "total_minor", "items.quantity", "occurred_at"},
	}
	minPolicy = Policy{System: "min", Pseudonymize: []string{"customer_id"}}

	allPolicies = []Policy{gaPolicy, metaPolicy, crmPolicy, numPolicy, minPolicy}
)

func mustCompile(ps ...Policy) *Plan {
	p, err := Compile(schema.OrderEventSchema(), ps)
	if err != nil {
		panic(err)
	}
	return p
}

// randText returns a distinctive string: a prefix, random hex and
// sometimes non-ASCII text, so that leak checks cannot match by accident.
func randText(r *rand.Rand, prefix string) string {
	var b strings.Builder
	b.WriteString(prefix)
	fmt.Fprintf(&b, "-%016x", r.Uint64())
	if r.IntN(3) == 0 {
		b.WriteString([]string{"-Grüße", "-東京", "-🙂", "-Ωμέγα", "-\u00e9\u0301"}[r.IntN(5)])
	}
	return b.String()
}

// randEvent returns a random order event, including edge cases: absent
// optional fields, empty and large items and attributes, unicode.
func randEvent(r *rand.Rand) *schema.OrderEvent {
	e := &schema.OrderEvent{
		EventID:    randText(r, "evt"),
		EventType:  []string{schema.Placed, schema.Updated, schema.Cancelled, schema.Refunded}[r.IntN(4)],
		OccurredAt: time.UnixMilli(r.Int64N(1<<42) - 1<<40).UTC(),
		OrderID:    randText(r, "ord"),
		CustomerID: randText(r, "cus"),
		Currency:   []string{"EUR", "USD", "JPY", ""}[r.IntN(4)],
		TotalMinor: r.Int64() >> r.IntN(64),
		Attributes: map[string]string{},
	}
	if r.IntN(2) == 0 {
		e.TotalMinor = -e.TotalMinor
	}
	if r.IntN(3) > 0 {
		s := randText(r, "mail") + "@example.test"
		e.Email = &s
	}
	if r.IntN(3) > 0 {
		s := randText(r, "+49")
		e.Phone = &s
	}
	if r.IntN(3) > 0 {
		e.ShippingAddress = &schema.Address{
			Line1: randText(r, "line1"), PostalCode: randText(r, "zip"),
			City: randText(r, "city"), Country: []string{"DE", "FR", "JP"}[r.IntN(3)],
		}
	}
	n := []int{0, 1, 3, 200}[r.IntN(4)]
	for range n {
		e.Items = append(e.Items, schema.LineItem{
			SKU: randText(r, "sku"), Quantity: int32(r.Uint32()) >> r.IntN(32), UnitPriceMinor: r.Int64() >> r.IntN(64),
		})
	}
	keys := []string{"utm_source", "utm_campaign", "gclid", "fbclid", "ref", "ünï"}
	for _, k := range keys {
		if r.IntN(2) == 0 {
			e.Attributes[k] = randText(r, "attr")
		}
	}
	if r.IntN(4) == 0 {
		for range 100 + r.IntN(100) {
			e.Attributes[randText(r, "key")] = randText(r, "attr")
		}
	}
	return e
}

// enc writes Avro binary by hand, with random block layouts (several
// blocks, negative counts with byte sizes), which hamba never produces.
type enc struct {
	b []byte
	r *rand.Rand
}

func (w *enc) long(v int64) { w.b = appendLong(w.b, v) }
func (w *enc) str(s string) { w.long(int64(len(s))); w.b = append(w.b, s...) }
func (w *enc) optStr(s *string) {
	if s == nil {
		w.long(0)
		return
	}
	w.long(1)
	w.str(*s)
}

// blocks writes n items in random blocks; item(i) writes item i.
func (w *enc) blocks(n int, item func(w *enc, i int)) {
	for i := 0; i < n; {
		c := 1 + w.r.IntN(n-i)
		if w.r.IntN(2) == 0 {
			sub := &enc{r: w.r}
			for j := i; j < i+c; j++ {
				item(sub, j)
			}
			w.long(-int64(c))
			w.long(int64(len(sub.b)))
			w.b = append(w.b, sub.b...)
		} else {
			w.long(int64(c))
			for j := i; j < i+c; j++ {
				item(w, j)
			}
		}
		i += c
	}
	w.long(0)
}

func encodeEvent(r *rand.Rand, e *schema.OrderEvent) []byte {
	w := &enc{r: r}
	w.str(e.EventID)
	w.long(int64(map[string]int{schema.Placed: 0, schema.Updated: 1, schema.Cancelled: 2, schema.Refunded: 3}[e.EventType]))
	w.long(e.OccurredAt.UnixMilli())
	w.str(e.OrderID)
	w.str(e.CustomerID)
	w.optStr(e.Email)
	w.optStr(e.Phone)
	if a := e.ShippingAddress; a == nil {
		w.long(0)
	} else {
		w.long(1)
		w.str(a.Line1)
		w.str(a.PostalCode)
		w.str(a.City)
		w.str(a.Country)
	}
	w.str(e.Currency)
	w.long(e.TotalMinor)
	w.blocks(len(e.Items), func(w *enc, i int) {
		w.str(e.Items[i].SKU)
		w.long(int64(e.Items[i].Quantity))
		w.long(e.Items[i].UnitPriceMinor)
	})
	var keys []string
	for k := range e.Attributes {
		keys = append(keys, k)
	}
	w.blocks(len(keys), func(w *enc, i int) {
		w.str(keys[i])
		w.str(e.Attributes[keys[i]])
	})
	return w.b
}

// generic converts e to hamba's generic representation of OrderEvent.
func generic(e *schema.OrderEvent) map[string]any {
	opt := func(s *string) any {
		if s == nil {
			return nil
		}
		return *s
	}
	m := map[string]any{
		"event_id": e.EventID, "event_type": e.EventType, "occurred_at": e.OccurredAt,
		"order_id": e.OrderID, "customer_id": e.CustomerID, "email": opt(e.Email), "phone": opt(e.Phone),
		"currency": e.Currency, "total_minor": e.TotalMinor,
	}
	if a := e.ShippingAddress; a != nil {
		m["shipping_address"] = map[string]any{"line1": a.Line1, "postal_code": a.PostalCode, "city": a.City, "country": a.Country}
	} else {
		m["shipping_address"] = nil
	}
	items := []any{}
	for _, it := range e.Items {
		items = append(items, map[string]any{"sku": it.SKU, "quantity": int(it.Quantity), "unit_price_minor": it.UnitPriceMinor})
	}
	m["items"] = items
	attrs := map[string]any{}
	for k, v := range e.Attributes {
		attrs[k] = v
	}
	m["attributes"] = attrs
	return m
}

// expect computes system pol's output for e directly from the Go value, in
// hamba's generic representation.
func expect(e *schema.OrderEvent, pol Policy, key []byte, d *pseudonym.Deriver) map[string]any {
	out := project(generic(e), "", pol, key, d).(map[string]any)
	if a, ok := out["shipping_address"]; ok && a != nil {
		out["shipping_address"] = map[string]any{"hygiene.v1.pseudo." + avroName(pol.System) + ".Address": a}
	}
	if t, ok := out["occurred_at"].(time.Time); ok {
		out["occurred_at"] = t.UTC()
	}
	return out
}

func project(v any, path string, pol Policy, key []byte, d *pseudonym.Deriver) any {
	for _, k := range pol.Keep {
		if k == path {
			if g, ok := pol.Generalize[path]; ok {
				return must(GeneralizeValue(g, v))
			}
			return v
		}
	}
	for _, k := range pol.Pseudonymize {
		if k == path {
			switch v := v.(type) {
			case nil:
				return nil
			case string:
				return d.String(key, pol.System, path, v)
			case time.Time:
				return d.String(key, pol.System, path, fmt.Sprint(v.UnixMilli()))
			default:
				return d.String(key, pol.System, path, fmt.Sprint(v))
			}
		}
	}
	switch v := v.(type) {
	case map[string]any:
		out := map[string]any{}
		for k, x := range v {
			p := k
			if path != "" {
				p = path + "." + k
			}
			if selected(pol, p) {
				out[k] = project(x, p, pol, key, d)
			}
		}
		return out
	case []any:
		out := []any{}
		for _, x := range v {
			out = append(out, project(x, path, pol, key, d))
		}
		return out
	}
	return v // nil
}

func selected(pol Policy, p string) bool {
	for _, l := range [][]string{pol.Keep, pol.Pseudonymize} {
		for _, k := range l {
			if k == p || strings.HasPrefix(k, p+".") {
				return true
			}
		}
	}
	return false
}

// secrets returns the raw values of e that system pol must never receive.
func secrets(e *schema.OrderEvent, pol Policy) [][]byte {
	kept := func(p string) bool {
		for _, k := range pol.Keep {
			if k == p || strings.HasPrefix(p, k+".") {
				return true
			}
		}
		return false
	}
	var out [][]byte
	add := func(p, v string) {
		if !kept(p) && len(v) >= 8 {
			out = append(out, []byte(v))
		}
	}
	add("event_id", e.EventID)
	add("order_id", e.OrderID)
	add("customer_id", e.CustomerID)
	if e.Email != nil {
		add("email", *e.Email)
	}
	if e.Phone != nil {
		add("phone", *e.Phone)
	}
	if a := e.ShippingAddress; a != nil {
		add("shipping_address.line1", a.Line1)
		add("shipping_address.postal_code", a.PostalCode)
		add("shipping_address.city", a.City)
	}
	for _, it := range e.Items {
		add("items.sku", it.SKU)
	}
	for k, v := range e.Attributes {
		add("attributes."+k, v)
		add("attributes."+k, k)
	}
	return out
}

func leaked(out []byte, secrets [][]byte) []byte {
	for _, s := range secrets {
		if bytes.Contains(out, s) {
			return s
		}
	}
	return nil
}
