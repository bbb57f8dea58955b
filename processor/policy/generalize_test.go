package policy

import (
	"bytes"
	"encoding/json"
	"math"
	"math/big"
	"math/rand/v2"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/hamba/avro/v2"

	"github.com/hygiene/pseudonymizer/processor/pseudonym"
	"github.com/hygiene/pseudonymizer/schema"
)

// genPolicy generalizes one value of every kind the transforms take: a
// timestamp, a long, an int inside an array, a string inside a nullable
// record and a map value.
var genPolicy = Policy{
	System: "gen",
	Keep: []string{"event_type", "occurred_at", "currency", "total_minor", "items.quantity", "items.unit_price_minor",
		"shipping_address.postal_code", "shipping_address.country", "attributes.utm_source"},
	Pseudonymize: []string{"customer_id"},
	Generalize: map[string]Generalization{
		"occurred_at":                  {Truncate: "1h"},
		"total_minor":                  {Round: 1000},
		"items.quantity":               {Round: 5},
		"items.unit_price_minor":       {Round: 100},
		"shipping_address.postal_code": {Prefix: 2},
		"attributes.utm_source":        {Prefix: 3},
	},
}

func TestParseUnit(t *testing.T) {
	for in, want := range map[string]time.Duration{
		"1ms": time.Millisecond, "1s": time.Second, "15m": 15 * time.Minute, "1h": time.Hour, "1h30m": 90 * time.Minute,
		"24h": 24 * time.Hour, "1d": 24 * time.Hour, "7d": 7 * 24 * time.Hour, "3660d": MaxUnit,
	} {
		if got, err := ParseUnit(in); err != nil || got != want {
			t.Errorf("ParseUnit(%q) = %v, %v; want %v", in, got, err, want)
		}
		if got, _ := ParseUnit(FormatUnit(want)); got != want {
			t.Errorf("FormatUnit(%v) = %q does not parse back", want, FormatUnit(want))
		}
	}
	for _, in := range []string{"", "d", "1", "0s", "-1h", "1us", "1.5ms", "3661d", "87840h1ms", "1e3d", "-1d", "1 d", "x", "99999999999999999999d"} {
		if got, err := ParseUnit(in); err == nil {
			t.Errorf("ParseUnit(%q) = %v, want an error", in, got)
		}
	}
}

func FuzzParseUnit(f *testing.F) {
	for _, s := range []string{"1h", "1d", "7d", "90m", "1ms", "0d", "-5d", "1h1ms", "3660d", "2562047h", "01d"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		d, err := ParseUnit(s)
		if err != nil {
			if strings.Contains(err.Error(), "\n") {
				t.Fatalf("multi-line error %q", err)
			}
			return
		}
		if d <= 0 || d > MaxUnit || d%time.Millisecond != 0 {
			t.Fatalf("ParseUnit(%q) = %v: out of bounds", s, d)
		}
		if back, err := ParseUnit(FormatUnit(d)); err != nil || back != d {
			t.Fatalf("FormatUnit(%v) = %q parses to %v, %v", d, FormatUnit(d), back, err)
		}
	})
}

// TestRoundMultiple checks the rounding against exact arithmetic, around
// zero, halves and the ends of int64 and int32.
func TestRoundMultiple(t *testing.T) {
	ref := func(v, m, lo, hi int64) int64 {
		// Nearest multiple, halves away from zero, towards zero if out of range.
		q := new(big.Int).Quo(big.NewInt(v), big.NewInt(m))
		q.Mul(q, big.NewInt(m))
		r := new(big.Int).Sub(big.NewInt(v), q)
		r2 := new(big.Int).Mul(new(big.Int).Abs(r), big.NewInt(2))
		if r2.Cmp(big.NewInt(m)) >= 0 {
			step := big.NewInt(m)
			if r.Sign() < 0 {
				step.Neg(step)
			}
			if away := new(big.Int).Add(q, step); away.Cmp(big.NewInt(lo)) >= 0 && away.Cmp(big.NewInt(hi)) <= 0 {
				q = away
			}
		}
		return q.Int64()
	}
	r := rand.New(rand.NewPCG(3, 4))
	var vals []int64
	for _, v := range []int64{0, 1, -1, 499, 500, 501, -499, -500, -501, 1500, -1500, math.MaxInt64, math.MinInt64,
		math.MaxInt64 - 1, math.MinInt64 + 1, math.MaxInt32, math.MinInt32} {
		vals = append(vals, v)
	}
	for range 2000 {
		vals = append(vals, r.Int64()>>r.IntN(64)*[]int64{1, -1}[r.IntN(2)])
	}
	for _, m := range []int64{2, 3, 5, 100, 1000, 1 << 40, math.MaxInt64} {
		for _, v := range vals {
			if got, want := roundMultiple(v, m, math.MinInt64, math.MaxInt64), ref(v, m, math.MinInt64, math.MaxInt64); got != want {
				t.Fatalf("roundMultiple(%d, %d) = %d, want %d", v, m, got, want)
			}
			if m > math.MaxInt32 || v < math.MinInt32 || v > math.MaxInt32 {
				continue
			}
			if got, want := roundMultiple(v, m, math.MinInt32, math.MaxInt32), ref(v, m, math.MinInt32, math.MaxInt32); got != want {
				t.Fatalf("int32 roundMultiple(%d, %d) = %d, want %d", v, m, got, want)
			}
		}
	}
	for v, want := range map[int64]int64{1499: 1000, 1500: 2000, -1500: -2000, -1499: -1000, 0: 0, 12345: 12000} {
		if got := roundMultiple(v, 1000, math.MinInt64, math.MaxInt64); got != want {
			t.Errorf("roundMultiple(%d, 1000) = %d, want %d", v, got, want)
		}
	}
}

func TestFloorMultiple(t *testing.T) {
	h := time.Hour.Milliseconds()
	for _, c := range []struct{ v, m, want int64 }{
		{0, h, 0}, {h - 1, h, 0}, {h, h, h}, {-1, h, -h}, {-h, h, -h}, {-h - 1, h, -2 * h},
		{math.MaxInt64, 1000, math.MaxInt64 - math.MaxInt64%1000},
		{math.MinInt64, 1000, math.MinInt64 + 808}, // the multiple below does not fit: the one above
		{math.MinInt64 + 808, 1000, math.MinInt64 + 808},
	} {
		if got := floorMultiple(c.v, c.m); got != c.want {
			t.Errorf("floorMultiple(%d, %d) = %d, want %d", c.v, c.m, got, c.want)
		}
	}
}

func TestPrefixLen(t *testing.T) {
	for _, c := range []struct {
		s    string
		n    int64
		want string
	}{{"DE-10115", 2, "DE"}, {"ab", 5, "ab"}, {"", 2, ""}, {"Ünïcode", 3, "Ünï"}, {"日本語", 1, "日"}} {
		if got := c.s[:prefixLen([]byte(c.s), c.n)]; got != c.want {
			t.Errorf("prefix(%q, %d) = %q, want %q", c.s, c.n, got, c.want)
		}
	}
}

// TestGeneralizeDifferential projects random events, in both encodings,
// with genPolicy by Project and ProjectHead, and compares the output with
// the event's values generalized in Go (GeneralizeValue).
func TestGeneralizeDifferential(t *testing.T) {
	r := rand.New(rand.NewPCG(5, 6))
	p := mustCompile(genPolicy, gaPolicy)
	d := pseudonym.NewDeriver()
	var out, out2 []byte
	for n := range 300 {
		e := randEvent(r)
		key := subjectKey(r)
		for _, b := range [][]byte{must(schema.MarshalOrderEvent(e)), encodeEvent(r, e)} {
			out = must(p.Project(out[:0], 0, b, key, d))
			var got any
			if err := avro.Unmarshal(p.OutputSchema(0), out, &got); err != nil {
				t.Fatalf("event %d: output does not decode: %v", n, err)
			}
			if want := expect(e, genPolicy, key, d); !reflect.DeepEqual(got, want) {
				t.Fatalf("event %d:\n got %#v\nwant %#v", n, got, want)
			}
			h := must(p.Scan(b))
			k := d.Prepare(key)
			out2 = must(p.ProjectHead(out2[:0], 0, b, &h, &k, nil, d))
			if !bytes.Equal(out, out2) {
				t.Fatalf("event %d: ProjectHead differs from Project", n)
			}
		}
	}
}

// TestGeneralizeValues pins a few outputs by hand.
func TestGeneralizeValues(t *testing.T) {
	p := mustCompile(genPolicy)
	src := "google"
	e := &schema.OrderEvent{
		EventID: "e", EventType: schema.Placed, OccurredAt: time.Date(2026, 3, 1, 10, 59, 59, 999e6, time.UTC),
		OrderID: "o", CustomerID: "c", Currency: "EUR", TotalMinor: 12_499,
		ShippingAddress: &schema.Address{Line1: "l", PostalCode: "DE-10115", City: "Berlin", Country: "DE"},
		Items:           []schema.LineItem{{SKU: "s", Quantity: 3, UnitPriceMinor: 4_150}},
		Attributes:      map[string]string{"utm_source": src, "gclid": "x"},
	}
	out := must(p.Project(nil, 0, must(schema.MarshalOrderEvent(e)), bytes.Repeat([]byte{1}, 32), pseudonym.NewDeriver()))
	var got map[string]any
	if err := avro.Unmarshal(p.OutputSchema(0), out, &got); err != nil {
		t.Fatal(err)
	}
	if at := got["occurred_at"].(time.Time); !at.Equal(time.Date(2026, 3, 1, 10, 0, 0, 0, time.UTC)) {
		t.Errorf("occurred_at = %v", at)
	}
	if got["total_minor"] != int64(12_000) {
		t.Errorf("total_minor = %v", got["total_minor"])
	}
	it := got["items"].([]any)[0].(map[string]any)
	if it["quantity"] != 5 || it["unit_price_minor"] != int64(4_200) {
		t.Errorf("items = %v", it)
	}
	if a := got["shipping_address"].(map[string]any)["hygiene.v1.pseudo.gen.Address"].(map[string]any); a["postal_code"] != "DE" {
		t.Errorf("postal_code = %v", a["postal_code"])
	}
	if got["attributes"].(map[string]any)["utm_source"] != "goo" {
		t.Errorf("utm_source = %v", got["attributes"])
	}
}

// TestGeneralizeSchema: a generalized field keeps its type (the canonical
// form equals that of the same policy without generalize, so the output is
// valid Avro that consumers read as before), and its doc says what was
// done; the full schema is pinned in testdata/gen.avsc.
func TestGeneralizeSchema(t *testing.T) {
	plain := genPolicy
	plain.Generalize = nil
	p := mustCompile(genPolicy)
	if got, want := p.OutputSchema(0).String(), mustCompile(plain).OutputSchema(0).String(); got != want {
		t.Errorf("canonical form changed:\n got %s\nwant %s", got, want)
	}
	got := must(json.MarshalIndent(p.OutputSchema(0), "", "  "))
	got = append(got, '\n')
	file := filepath.Join("testdata", "gen.avsc")
	if *update {
		if err := os.WriteFile(file, got, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if want := must(os.ReadFile(file)); string(got) != string(want) {
		t.Errorf("output schema differs from %s:\n%s", file, got)
	}
	if _, err := avro.ParseWithCache(string(got), "", &avro.SchemaCache{}); err != nil {
		t.Fatalf("output schema does not parse: %v", err)
	}
	rec := p.OutputSchema(0).(*avro.RecordSchema)
	docs := map[string]string{}
	for _, f := range rec.Fields() {
		docs[f.Name()] = f.Doc()
	}
	for field, want := range map[string]string{
		"occurred_at":      "occurred_at truncated to 1h (UTC, since the Unix epoch)",
		"total_minor":      "Amount in minor units. Generalized by pseudonymizer: total_minor rounded to the nearest multiple of 1000.",
		"items":            "items.quantity rounded to the nearest multiple of 5; items.unit_price_minor rounded to the nearest multiple of 100",
		"shipping_address": "shipping_address.postal_code cut to its first 2 characters",
		"attributes":       "attributes.utm_source cut to its first 3 characters",
		"currency":         "ISO 4217.",
	} {
		if !strings.Contains(docs[field], want) {
			t.Errorf("doc of %s = %q, want it to contain %q", field, docs[field], want)
		}
	}
	if strings.Contains(docs["currency"], "Generalized") {
		t.Errorf("doc of currency = %q: it is not generalized", docs["currency"])
	}
}

func TestGeneralizeErrors(t *testing.T) {
	base := func(keep []string, g map[string]Generalization) Policy {
		return Policy{System: "s", Keep: keep, Pseudonymize: []string{"customer_id", "event_id"}, Generalize: g}
	}
	for _, c := range []struct {
		pol  Policy
		want string
	}{
		{base(nil, map[string]Generalization{"occurred_at": {Truncate: "1h"}}), `generalize "occurred_at": not a path in keep`},
		{base([]string{"items"}, map[string]Generalization{"items.quantity": {Round: 2}}), `generalize "items.quantity": not a path in keep`},
		{base([]string{"occurred_at"}, map[string]Generalization{"event_id": {Prefix: 2}}), `generalize "event_id": not a path in keep`},
		{base([]string{"occurred_at"}, map[string]Generalization{"occurred_at": {}}), "exactly one of"},
		{base([]string{"occurred_at"}, map[string]Generalization{"occurred_at": {Truncate: "1h", Round: 10}}), "exactly one of"},
		{base([]string{"occurred_at"}, map[string]Generalization{"occurred_at": {Truncate: "1x"}}), `truncate: unit "1x"`},
		{base([]string{"occurred_at"}, map[string]Generalization{"occurred_at": {Prefix: 2}}), "prefix needs a string"},
		{base([]string{"total_minor"}, map[string]Generalization{"total_minor": {Truncate: "1h"}}), "truncate needs a long with logical type"},
		{base([]string{"total_minor"}, map[string]Generalization{"total_minor": {Round: 1}}), "round must be at least 2"},
		{base([]string{"total_minor"}, map[string]Generalization{"total_minor": {Round: -5}}), "round must be at least 2"},
		{base([]string{"items.quantity"}, map[string]Generalization{"items.quantity": {Round: 1 << 40}}), "round must be at least 2 and fit the field"},
		{base([]string{"currency"}, map[string]Generalization{"currency": {Round: 10}}), "round needs an int or long"},
		{base([]string{"currency"}, map[string]Generalization{"currency": {Prefix: 1001}}), "prefix must be 1 to 1000"},
		{base([]string{"currency"}, map[string]Generalization{"currency": {Prefix: -1}}), "prefix must be 1 to 1000"},
		{base([]string{"shipping_address"}, map[string]Generalization{"shipping_address": {Prefix: 2}}), "prefix needs a string"},
		{base([]string{"currency"}, map[string]Generalization{"cur rency": {Prefix: 1}}), "generalize: path"},
		{Policy{System: "s", Keep: []string{"occurred_at"}, Pseudonymize: []string{"customer_id"}, TimeUnit: "1h"}, "time_unit: the system keeps occurred_at"},
		{Policy{System: "s", Pseudonymize: []string{"customer_id"}, TimeUnit: "0s"}, `time_unit: unit "0s"`},
	} {
		_, err := Compile(schema.OrderEventSchema(), []Policy{c.pol})
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%+v: error %v, want %q", c.pol, err, c.want)
		}
	}
}

// TestRecordTime checks the times the service adds: occurred_at at the
// system's precision, or the batch start at its time_unit; never finer.
func TestRecordTime(t *testing.T) {
	exact := Policy{System: "exact", Keep: []string{"occurred_at"}, Pseudonymize: []string{"customer_id"}}
	none := Policy{System: "none", Pseudonymize: []string{"customer_id"}}
	daily := Policy{System: "daily", Pseudonymize: []string{"customer_id"}, TimeUnit: "1d", DropRequestedAt: true}
	p := mustCompile(genPolicy, exact, none, daily)
	occ := time.Date(2026, 3, 1, 10, 42, 17, 123e6, time.UTC)
	batch := time.Date(2026, 3, 2, 23, 59, 58, 999e6, time.UTC)
	for i, want := range []struct {
		unit      time.Duration
		fromEvent bool
		rec, note time.Time
		drop      bool
	}{
		{time.Hour, true, time.Date(2026, 3, 1, 10, 0, 0, 0, time.UTC), time.Date(2026, 3, 2, 23, 0, 0, 0, time.UTC), false},
		{time.Millisecond, true, occ, batch, false},
		{time.Hour, false, time.Date(2026, 3, 2, 23, 0, 0, 0, time.UTC), time.Date(2026, 3, 2, 23, 0, 0, 0, time.UTC), false},
		{24 * time.Hour, false, time.Date(2026, 3, 2, 0, 0, 0, 0, time.UTC), time.Date(2026, 3, 2, 0, 0, 0, 0, time.UTC), true},
	} {
		if p.TimeUnit(i) != want.unit || p.TimeFromEvent(i) != want.fromEvent || p.DropRequestedAt(i) != want.drop {
			t.Errorf("system %d: unit %v fromEvent %v drop %v", i, p.TimeUnit(i), p.TimeFromEvent(i), p.DropRequestedAt(i))
		}
		if got := p.RecordTime(i, occ.UnixMilli(), batch); !got.Equal(want.rec) {
			t.Errorf("system %d: RecordTime = %v, want %v", i, got.UTC(), want.rec)
		}
		if got := p.NoticeTime(i, batch); !got.Equal(want.note) {
			t.Errorf("system %d: NoticeTime = %v, want %v", i, got.UTC(), want.note)
		}
	}
	if n := testing.AllocsPerRun(10, func() { p.RecordTime(0, occ.UnixMilli(), batch) }); n != 0 {
		t.Errorf("RecordTime: %v allocs", n)
	}
}

func TestGeneralizeZeroAllocs(t *testing.T) {
	if raceEnabled {
		t.Skip("the race detector allocates; allocations are asserted without -race")
	}
	r := rand.New(rand.NewPCG(7, 8))
	p := mustCompile(genPolicy)
	d := pseudonym.NewDeriver()
	b := must(schema.MarshalOrderEvent(randEvent(r)))
	k := d.Prepare(subjectKey(r))
	dst := make([]byte, 0, 64<<10)
	if n := testing.AllocsPerRun(50, func() {
		h, err := p.Scan(b)
		if err != nil {
			t.Fatal(err)
		}
		if dst, err = p.ProjectHead(dst[:0], 0, b, &h, &k, nil, d); err != nil {
			t.Fatal(err)
		}
	}); n != 0 {
		t.Errorf("Scan+ProjectHead with generalizations: %v allocs, want 0", n)
	}
}

// FuzzGeneralize is FuzzScan for a plan with generalizations: whatever
// Scan accepts, Project and ProjectHead project alike, and hamba decodes
// the output with the system's schema.
func FuzzGeneralize(f *testing.F) {
	r := rand.New(rand.NewPCG(15, 16))
	for seeds := 0; seeds < 8; {
		e := randEvent(r)
		b := must(schema.MarshalOrderEvent(e))
		if len(b) > 1500 {
			continue
		}
		seeds++
		f.Add(b)
		f.Add(encodeEvent(r, e))
		f.Add(b[:len(b)-1])
	}
	p := mustCompile(genPolicy)
	d := pseudonym.NewDeriver()
	f.Fuzz(func(t *testing.T, b []byte) {
		if !checkAccepted(t, p, d, b) {
			return
		}
		out := must(p.Project(nil, 0, b, []byte("key"), d))
		h := must(p.Scan(b))
		k := d.Prepare([]byte("key"))
		if head := must(p.ProjectHead(nil, 0, b, &h, &k, nil, d)); !bytes.Equal(out, head) {
			t.Fatalf("ProjectHead differs from Project for %x", b)
		}
	})
}

// BenchmarkProjectHeadGeneralized measures what the transforms cost:
// genPolicy (six generalized paths) against the same paths kept exactly.
func BenchmarkProjectHeadGeneralized(b *testing.B) {
	plain := genPolicy
	plain.Generalize = nil
	for _, c := range []struct {
		name string
		pol  Policy
	}{{"exact", plain}, {"generalized", genPolicy}} {
		b.Run(c.name, func(b *testing.B) {
			rec := benchRecord(b)
			p := mustCompile(c.pol)
			d := pseudonym.NewDeriver()
			k := d.Prepare(bytes.Repeat([]byte{1}, 32))
			h := must(p.Scan(rec))
			dst := make([]byte, 0, 4096)
			b.ReportAllocs()
			for b.Loop() {
				var err error
				if dst, err = p.ProjectHead(dst[:0], 0, rec, &h, &k, nil, d); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// FuzzCompileGeneralize fuzzes a generalize entry as YAML gives it: a
// path, a unit, a multiple and a prefix length. What compiles keeps the
// canonical schema of the plain policy and projects a sample event into
// output that decodes; what does not fails with one line.
func FuzzCompileGeneralize(f *testing.F) {
	for path, g := range genPolicy.Generalize {
		f.Add(path, g.Truncate, g.Round, g.Prefix)
	}
	f.Add("occurred_at", "1d", int64(0), 0)
	f.Add("occurred_at", "7d", int64(10), 0)
	f.Add("total_minor", "", int64(-3), 0)
	f.Add("currency", "", int64(0), -1)
	f.Add("items", "1h", int64(0), 0)
	r := rand.New(rand.NewPCG(17, 18))
	ev := must(schema.MarshalOrderEvent(randEvent(r)))
	d := pseudonym.NewDeriver()
	in := schema.OrderEventSchema()
	f.Fuzz(func(t *testing.T, path, unit string, round int64, prefix int) {
		pol := Policy{System: "s", Keep: []string{path}, Pseudonymize: []string{"customer_id"},
			Generalize: map[string]Generalization{path: {Truncate: unit, Round: round, Prefix: prefix}}}
		p, err := Compile(in, []Policy{pol})
		if err != nil {
			if strings.Contains(err.Error(), "\n") {
				t.Fatalf("multi-line error: %q", err)
			}
			return
		}
		pol.Generalize = nil
		if got, want := p.OutputSchema(0).String(), mustCompile(pol).OutputSchema(0).String(); got != want {
			t.Fatalf("canonical form changed: %s", got)
		}
		out, err := p.Project(nil, 0, ev, []byte("key"), d)
		if err != nil {
			t.Fatalf("Project: %v", err)
		}
		var v any
		if err := avro.Unmarshal(p.OutputSchema(0), out, &v); err != nil {
			t.Fatalf("output does not decode: %v", err)
		}
	})
}
