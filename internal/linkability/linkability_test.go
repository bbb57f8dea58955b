package linkability

import (
	"bytes"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/hygiene/pseudonymizer/processor/policy"
	"github.com/hygiene/pseudonymizer/schema"
)

// handSystems is the hand-computed example of TestJoinByHand: A keeps t
// truncated to 1h, B keeps it exactly; both keep x; only A keeps y.
func handSystems() (System, System) {
	at := func(h, m int) time.Time { return time.Date(2026, 1, 2, h, m, 0, 0, time.UTC) }
	rows := []struct {
		ev, cust string
		x        int64
		t        time.Time
	}{
		{"e1", "c1", 1, at(10, 5)}, {"e2", "c1", 2, at(10, 10)},
		{"e3", "c2", 1, at(10, 20)}, {"e4", "c2", 2, at(11, 5)},
		{"e5", "c3", 3, at(11, 30)},
		{"e6", "c4", 1, at(10, 30)},
		{"e7", "c5", 4, at(12, 0)}, {"e8", "c5", 5, at(12, 0)},
		{"e9", "c6", 4, at(12, 10)}, {"e10", "c6", 6, at(12, 0)},
		{"e11", "c7", 5, at(12, 20)}, {"e12", "c7", 6, at(12, 30)},
	}
	a := System{Name: "A", Generalize: map[string]policy.Generalization{"t": {Truncate: "1h"}}}
	b := System{Name: "B"}
	for _, r := range rows {
		trunc := r.t.Truncate(time.Hour)
		a.Records = append(a.Records, Record{Event: r.ev, Customer: r.cust, Fields: map[string]any{"x": r.x, "t": trunc, "y": "only-a-" + r.ev}})
		b.Records = append(b.Records, Record{Event: r.ev, Customer: r.cust, Fields: map[string]any{"x": r.x, "t": r.t}})
	}
	return a, b
}

// TestJoinByHand checks the report against a hand-computed example. At
// the join's precision (t to the hour) the classes are
//
//	(1, 10h) e1 e3 e6   k=3   customers c1 c2 c4
//	(2, 10h) e2         k=1   c1
//	(2, 11h) e4         k=1   c2
//	(3, 11h) e5         k=1   c3
//	(4, 12h) e7 e9      k=2   c5 c6
//	(5, 12h) e8 e11     k=2   c5 c7
//	(6, 12h) e10 e12    k=2   c6 c7
//
// so 3 of 12 events are unique; c1, c2 and c3 are linked by a unique
// event; c5, c6 and c7 by intersecting two classes of 2 ({c5,c6} ∩ {c5,c7}
// = {c5}, ...), although none of their events is unique; c4's candidates
// stay {c1, c2, c4}: 6 of 7 customers.
func TestJoinByHand(t *testing.T) {
	a, b := handSystems()
	p, err := Join(&a, &b)
	if err != nil {
		t.Fatal(err)
	}
	wantShared := []Shared{{"t", policy.Generalization{Truncate: "1h"}}, {"x", policy.Generalization{}}}
	if !reflect.DeepEqual(p.Shared, wantShared) {
		t.Errorf("shared %+v, want %+v", p.Shared, wantShared)
	}
	if p.Events != 12 || p.UniqueEvents != 3 || p.Customers != 7 || p.LinkedCustomers != 6 {
		t.Errorf("events %d unique %d customers %d linked %d; want 12 3 7 6", p.Events, p.UniqueEvents, p.Customers, p.LinkedCustomers)
	}
	if p.Classes != 7 || p.MinK != 1 || p.Below5 != 12 {
		t.Errorf("classes %d minK %d below5 %d; want 7 1 12", p.Classes, p.MinK, p.Below5)
	}
	got := map[int][2]int{}
	for _, bk := range p.Histogram {
		if bk.Classes > 0 {
			got[bk.Lo] = [2]int{bk.Classes, bk.Events}
		}
	}
	if want := map[int][2]int{1: {3, 3}, 2: {3, 6}, 3: {1, 3}}; !reflect.DeepEqual(got, want) {
		t.Errorf("histogram %v, want %v", got, want)
	}
	if r := p.AverageRisk(); r != 7.0/12 {
		t.Errorf("average risk %v, want 7/12", r)
	}
	var buf bytes.Buffer
	Write(&buf, []Pair{p})
	for _, want := range []string{
		"A × B",
		"shared fields: t (truncated to 1h), x (exact)",
		"unique join (k = 1): 3 of 12 events (25.00%), 6 of 7 customers (85.71%)",
		"7 classes, smallest k 1 (highest risk 100.00%), average risk 58.33%, events in classes below k = 5: 12 (100.00%)",
		"  1                3        3\n  2                3        6\n  3-4              1        3\n",
		"  100+             0        0\n",
	} {
		if !strings.Contains(buf.String(), want) {
			t.Errorf("report lacks %q:\n%s", want, buf.String())
		}
	}
	// At the day, everything merges into one class per x: c5, c6, c7 can
	// no longer be told apart by x 4, 5, 6 and the hour.
	a.Generalize["t"] = policy.Generalization{Truncate: "1d"}
	p, err = Join(&a, &b)
	if err != nil {
		t.Fatal(err)
	}
	if p.UniqueEvents != 1 || p.LinkedCustomers != 4 { // e5 (x=3); c3 by e5, c5 c6 c7 still by x
		t.Errorf("at 1d: unique %d linked %d; want 1 and 4", p.UniqueEvents, p.LinkedCustomers)
	}
}

func TestCoarser(t *testing.T) {
	for _, c := range []struct{ a, b, want policy.Generalization }{
		{policy.Generalization{}, policy.Generalization{}, policy.Generalization{}},
		{policy.Generalization{Truncate: "1h"}, policy.Generalization{}, policy.Generalization{Truncate: "1h"}},
		{policy.Generalization{}, policy.Generalization{Round: 100}, policy.Generalization{Round: 100}},
		{policy.Generalization{Truncate: "1h"}, policy.Generalization{Truncate: "1d"}, policy.Generalization{Truncate: "1d"}},
		{policy.Generalization{Truncate: "40m"}, policy.Generalization{Truncate: "1h"}, policy.Generalization{Truncate: "2h"}},
		{policy.Generalization{Round: 400}, policy.Generalization{Round: 1000}, policy.Generalization{Round: 2000}},
		{policy.Generalization{Prefix: 3}, policy.Generalization{Prefix: 2}, policy.Generalization{Prefix: 2}},
	} {
		if got, err := coarser(c.a, c.b); err != nil || got != c.want {
			t.Errorf("coarser(%+v, %+v) = %+v, %v; want %+v", c.a, c.b, got, err, c.want)
		}
	}
	if _, err := coarser(policy.Generalization{Round: 10}, policy.Generalization{Prefix: 2}); err == nil {
		t.Error("coarser of round and prefix: no error")
	}
}

// TestObserve runs two policies on events and checks what the report sees:
// kept leaves at their precision, record timestamps, allowed headers, no
// pseudonymized field.
func TestObserve(t *testing.T) {
	pols := []policy.Policy{
		{System: "a", Keep: []string{"occurred_at", "total_minor", "items.quantity", "shipping_address.country"},
			Pseudonymize: []string{"customer_id", "event_id"}, Headers: []string{"h"},
			Generalize: map[string]policy.Generalization{"occurred_at": {Truncate: "1h"}, "total_minor": {Round: 1000}}},
		{System: "b", Keep: []string{"currency", "total_minor"}, Pseudonymize: []string{"customer_id"}, TimeUnit: "1d"},
	}
	plan, err := policy.Compile(schema.OrderEventSchema(), pols)
	if err != nil {
		t.Fatal(err)
	}
	at := time.Date(2026, 1, 2, 10, 42, 0, 0, time.UTC)
	ev := &schema.OrderEvent{EventID: "e", EventType: schema.Placed, OccurredAt: at, OrderID: "o", CustomerID: "c",
		Currency: "EUR", TotalMinor: 12_600, Items: []schema.LineItem{{SKU: "s", Quantity: 2, UnitPriceMinor: 1}, {SKU: "t", Quantity: 3, UnitPriceMinor: 1}},
		Attributes: map[string]string{}}
	v, err := schema.MarshalOrderEvent(ev)
	if err != nil {
		t.Fatal(err)
	}
	systems, skipped, err := Observe(plan, []Event{{Value: v, Headers: []Header{{"h", []byte("hv")}, {"other", []byte("x")}}}, {Value: []byte{1, 2, 3}}})
	if err != nil {
		t.Fatal(err)
	}
	if skipped != 1 {
		t.Errorf("skipped %d, want 1", skipped)
	}
	wantA := map[string]any{"occurred_at": at.Truncate(time.Hour), "total_minor": int64(13_000), "items.quantity": []any{2, 3},
		"shipping_address.country": nil, FieldTimestamp: at.Truncate(time.Hour), HeaderPrefix + "h": "hv"}
	wantB := map[string]any{"currency": "EUR", "total_minor": int64(12_600), FieldTimestamp: time.Date(2026, 1, 2, 0, 0, 0, 0, time.UTC)}
	for i, want := range []map[string]any{wantA, wantB} {
		got := systems[i].Records[0].Fields
		if ts, ok := got["occurred_at"].(time.Time); ok {
			got["occurred_at"] = ts.UTC()
		}
		if !reflect.DeepEqual(got, want) {
			t.Errorf("%s: fields %#v, want %#v", systems[i].Name, got, want)
		}
	}
	if g := systems[1].Generalize[FieldTimestamp]; g.Truncate != "1d" {
		t.Errorf("b's record timestamp precision %+v, want 1d", g)
	}
	pairs, err := Analyze(systems)
	if err != nil {
		t.Fatal(err)
	}
	want := []Shared{{FieldTimestamp, policy.Generalization{Truncate: "1d"}}, {"total_minor", policy.Generalization{Round: 1000}}}
	if len(pairs) != 1 || !reflect.DeepEqual(pairs[0].Shared, want) {
		t.Errorf("pairs %+v, want one sharing %+v", pairs, want)
	}
}

// TestConfigWarnings: a millisecond timestamp or an exact amount that two
// systems share is warned about; generalized in one of them, it is not.
func TestConfigWarnings(t *testing.T) {
	pols := []policy.Policy{
		{System: "a", Keep: []string{"occurred_at", "total_minor", "items.unit_price_minor", "currency"}, Pseudonymize: []string{"customer_id"}},
		{System: "b", Keep: []string{"occurred_at", "total_minor", "items.unit_price_minor", "currency"}, Pseudonymize: []string{"customer_id"},
			Generalize: map[string]policy.Generalization{"total_minor": {Round: 100}}},
		{System: "c", Keep: []string{"occurred_at", "items.quantity"}, Pseudonymize: []string{"customer_id"},
			Generalize: map[string]policy.Generalization{"occurred_at": {Truncate: "1h"}}},
	}
	plan, err := policy.Compile(schema.OrderEventSchema(), pols)
	if err != nil {
		t.Fatal(err)
	}
	got := ConfigWarnings(plan)
	want := []string{
		"systems a and b both receive timestamp occurred_at to the millisecond: a join on it links most of their customers; generalize it in at least one of them (generalize: {occurred_at: {truncate: 1h}})",
		"systems a and b both receive amount items.unit_price_minor exactly: a join on it links most of their customers; generalize it in at least one of them (generalize: {items.unit_price_minor: {round: 1000}})",
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("warnings:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	examples, err := policy.Compile(schema.OrderEventSchema(), policy.Examples())
	if err != nil {
		t.Fatal(err)
	}
	if w := ConfigWarnings(examples); len(w) != 0 {
		t.Errorf("the example policies draw warnings:\n%s", strings.Join(w, "\n"))
	}
}

func TestCheckPrecision(t *testing.T) {
	a, _ := handSystems()
	if err := CheckPrecision(&a); err != nil {
		t.Fatal(err)
	}
	a.Records[3].Fields["t"] = a.Records[3].Fields["t"].(time.Time).Add(time.Millisecond)
	if err := CheckPrecision(&a); err == nil || !strings.Contains(err.Error(), "field t of event e4 is finer than truncated to 1h") {
		t.Errorf("error %v, want one naming t of e4", err)
	}
	s := System{Name: "s", Generalize: map[string]policy.Generalization{"p": {Round: 100}},
		Records: []Record{{Event: "x", Fields: map[string]any{"p": []any{int64(200), int64(250)}}}}}
	if err := CheckPrecision(&s); err == nil {
		t.Error("a list item off the multiple passed")
	}
}
