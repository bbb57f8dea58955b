package policy

import (
	"bytes"
	"fmt"
	"maps"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"

	"github.com/hygiene/pseudonymizer/schema"
)

func TestKeptFields(t *testing.T) {
	k := mustCompile(Examples()...).Kept()
	var got []string
	for _, f := range k.Fields() {
		got = append(got, fmt.Sprintf("%s%v", f.Path, f.Systems))
	}
	want := []string{
		"shipping_address.city[false false false true]",
		"shipping_address.country[false false false true]",
		"currency[true true false false]",
		"items.sku[false false false true]",
		"attributes.utm_source[true false false false]",
		"attributes.utm_campaign[false false true false]",
	}
	if !slices.Equal(got, want) {
		t.Errorf("fields:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	got = nil
	for _, f := range k.IDFields() {
		got = append(got, fmt.Sprintf("%s%v", f.Path, f.KeptBy))
	}
	want = []string{
		"event_id[false false false false]", "order_id[false false false false]", "customer_id[false false false false]",
		"email[false false false false]", "phone[false false false false]",
		"shipping_address.line1[false false false false]", "shipping_address.postal_code[false false false false]",
		"shipping_address.city[false false false true]", "shipping_address.country[false false false true]",
		"currency[true true false false]",
	}
	if !slices.Equal(got, want) {
		t.Errorf("ID fields:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	// A map kept whole: its keys and values.
	k = mustCompile(Policy{System: "a", Keep: []string{"attributes"}, Pseudonymize: []string{"customer_id"}},
		Policy{System: "b", Keep: []string{"attributes.gclid"}, Pseudonymize: []string{"customer_id"}}).Kept()
	got = nil
	for _, f := range k.Fields() {
		got = append(got, fmt.Sprintf("%s%v", f.Path, f.Systems))
	}
	want = []string{"attributes[key][true false]", "attributes.*[true false]", "attributes.gclid[true true]"}
	if !slices.Equal(got, want) {
		t.Errorf("map fields: %v, want %v", got, want)
	}
}

type collect struct {
	b       []byte
	fields  []KeptField
	strs    map[string][]string
	last    int
	headers []BlockHeader
	t       *testing.T
}

func (c *collect) KeptString(field, lenAt, at, end int) {
	if lenAt < c.last || at <= lenAt || end < at {
		c.t.Fatalf("string at %d/%d..%d after %d", lenAt, at, end, c.last)
	}
	c.last = end
	p := c.fields[field].Path
	c.strs[p] = append(c.strs[p], string(c.b[at:end]))
}

func (c *collect) SizedBlock(at, end int, count int64) {
	c.headers = append(c.headers, BlockHeader{at, end, count})
}

// TestKeptWalk walks random events (random block layouts) and checks that
// every kept string, and nothing else, is visited; then edits every
// visited string and checks the edited record.
func TestKeptWalk(t *testing.T) {
	plan := mustCompile(Examples()...)
	k := plan.Kept()
	r := rand.New(rand.NewPCG(1, 2))
	for range 300 {
		e := randEvent(r)
		b := encodeEvent(r, e)
		h, err := plan.Scan(b)
		if err != nil {
			t.Fatal(err)
		}
		c := &collect{b: b, fields: k.Fields(), strs: map[string][]string{}, t: t}
		if err := k.Walk(b, &h, c); err != nil {
			t.Fatal(err)
		}
		want := map[string][]string{"currency": {e.Currency}}
		for _, it := range e.Items {
			want["items.sku"] = append(want["items.sku"], it.SKU)
		}
		if a := e.ShippingAddress; a != nil {
			want["shipping_address.city"] = []string{a.City}
			want["shipping_address.country"] = []string{a.Country}
		}
		for _, key := range []string{"utm_source", "utm_campaign"} {
			if v, ok := e.Attributes[key]; ok {
				want["attributes."+key] = []string{v}
			}
		}
		if !maps.EqualFunc(c.strs, want, slices.Equal) {
			t.Fatalf("walked %v, want %v", c.strs, want)
		}

		// Edit every kept string: the result scans, and projects to the
		// edited values.
		var edits []StringEdit
		c2 := &editAll{}
		if err := k.Walk(b, &h, c2); err != nil {
			t.Fatal(err)
		}
		edits = c2.edits
		nb := AppendEdited(nil, b, edits, c2.headers)
		nh, err := plan.Scan(nb)
		if err != nil {
			t.Fatalf("edited record does not scan: %v", err)
		}
		c3 := &collect{b: nb, fields: k.Fields(), strs: map[string][]string{}, t: t}
		if err := k.Walk(nb, &nh, c3); err != nil {
			t.Fatal(err)
		}
		for p, vs := range c3.strs {
			for _, v := range vs {
				if v != "[x]" {
					t.Fatalf("%s: %q not edited", p, v)
				}
			}
		}
		if len(c2.edits) > 0 && string(nh.CustomerID) != e.CustomerID {
			t.Fatalf("customer_id changed")
		}
	}
}

type editAll struct {
	edits   []StringEdit
	headers []BlockHeader
}

func (e *editAll) KeptString(field, lenAt, at, end int) {
	e.edits = append(e.edits, StringEdit{LenAt: lenAt, End: end, Value: []byte("[x]")})
}

func (e *editAll) SizedBlock(at, end int, count int64) {
	e.headers = append(e.headers, BlockHeader{at, end, count})
}

func TestIDValues(t *testing.T) {
	plan := mustCompile(Examples()...)
	k := plan.Kept()
	r := rand.New(rand.NewPCG(3, 4))
	want := make([]bool, len(k.IDFields()))
	for i := range want {
		want[i] = true
	}
	dst := make([][]byte, len(want))
	for range 100 {
		e := randEvent(r)
		b := encodeEvent(r, e)
		h, err := plan.Scan(b)
		if err != nil {
			t.Fatal(err)
		}
		if err := k.IDValues(b, &h, want, -1, dst); err != nil {
			t.Fatal(err)
		}
		exp := map[string]string{"event_id": e.EventID, "order_id": e.OrderID, "customer_id": e.CustomerID, "currency": e.Currency}
		if e.Email != nil {
			exp["email"] = *e.Email
		}
		if e.Phone != nil {
			exp["phone"] = *e.Phone
		}
		if a := e.ShippingAddress; a != nil {
			exp["shipping_address.line1"], exp["shipping_address.postal_code"] = a.Line1, a.PostalCode
			exp["shipping_address.city"], exp["shipping_address.country"] = a.City, a.Country
		}
		for i, f := range k.IDFields() {
			v, ok := exp[f.Path]
			if dst[i] == nil && ok || dst[i] != nil && string(dst[i]) != v {
				t.Fatalf("%s = %q, want %q (%v)", f.Path, dst[i], v, ok)
			}
		}
		// With a bound, every value within it is still read.
		for _, maxLen := range []int{0, 5, 12, 20, 40} {
			if err := k.IDValues(b, &h, want, maxLen, dst); err != nil {
				t.Fatal(err)
			}
			for i, f := range k.IDFields() {
				v, ok := exp[f.Path]
				if ok && len(v) <= maxLen && string(dst[i]) != v || dst[i] != nil && string(dst[i]) != v {
					t.Fatalf("maxLen %d: %s = %q, want %q", maxLen, f.Path, dst[i], v)
				}
			}
		}
	}
	_ = schema.Placed
}

func TestSuggestsPersonalData(t *testing.T) {
	for p, want := range map[string]bool{"email": true, "shipping_address.line1": true, "customer_name": true, "phone": true, "ip": true,
		"attributes.client_ip": true, "currency": false, "shipping_address.country": false, "items.sku": false, "attributes.utm_source": false, "shipping_address.city": false} {
		if got := SuggestsPersonalData(p); got != want {
			t.Errorf("%s: %v", p, got)
		}
	}
}

type nopSink struct{ n int }

func (s *nopSink) KeptString(field, lenAt, at, end int) { s.n++ }
func (s *nopSink) SizedBlock(at, end int, count int64)  {}

// BenchmarkKeptWalk measures the walk over the kept strings of the example
// systems, next to BenchmarkScan's full validation of the same record.
func BenchmarkKeptWalk(b *testing.B) {
	rec := benchRecord(b)
	p := mustCompile(Examples()[:3]...)
	k := p.Kept()
	h, err := p.Scan(rec)
	if err != nil {
		b.Fatal(err)
	}
	s := &nopSink{}
	b.ReportAllocs()
	for b.Loop() {
		if err := k.Walk(rec, &h, s); err != nil {
			b.Fatal(err)
		}
	}
}

// FuzzKeptScan checks that Kept.Scan accepts and rejects exactly what
// Plan.Scan does, with the same head and error, and hands over the same
// strings as Walk.
func FuzzKeptScan(f *testing.F) {
	r := rand.New(rand.NewPCG(5, 6))
	for range 20 {
		b := encodeEvent(r, randEvent(r))
		f.Add(b)
		f.Add(b[:len(b)/2])
		c := append([]byte(nil), b...)
		c[r.IntN(len(c))] ^= byte(1 + r.IntN(255))
		f.Add(c)
	}
	plan := mustCompile(Examples()...)
	k := plan.Kept()
	f.Fuzz(func(t *testing.T, b []byte) {
		want, werr := plan.Scan(b)
		got := &collect{b: b, fields: k.Fields(), strs: map[string][]string{}, t: t}
		h, err := k.Scan(b, got)
		if (err == nil) != (werr == nil) || err != nil && err.Error() != werr.Error() {
			t.Fatalf("Kept.Scan error %v, Plan.Scan error %v", err, werr)
		}
		if err != nil {
			return
		}
		if !bytes.Equal(h.EventID, want.EventID) || !bytes.Equal(h.OrderID, want.OrderID) || !bytes.Equal(h.CustomerID, want.CustomerID) ||
			h.OccurredAt != want.OccurredAt || h.off != want.off || h.nOff != want.nOff {
			t.Fatalf("heads differ")
		}
		walked := &collect{b: b, fields: k.Fields(), strs: map[string][]string{}, t: t}
		if err := k.Walk(b, &h, walked); err != nil {
			t.Fatal(err)
		}
		if !maps.EqualFunc(got.strs, walked.strs, slices.Equal) {
			t.Fatalf("Scan handed over %v, Walk %v", got.strs, walked.strs)
		}
	})
}
