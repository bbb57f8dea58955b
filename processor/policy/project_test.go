package policy

import (
	"bytes"
	"errors"
	"math/rand/v2"
	"reflect"
	"strings"
	"testing"

	"github.com/hamba/avro/v2"
	"github.com/hygiene/pseudonymizer/processor/pseudonym"
	"github.com/hygiene/pseudonymizer/schema"
)

func subjectKey(r *rand.Rand) []byte {
	k := make([]byte, 32)
	for i := range k {
		k[i] = byte(r.Uint32())
	}
	return k
}

// TestDifferential projects random events, encoded by hamba and by a hand
// encoder with random block layouts, and compares hamba's decoding of each
// output with a projection computed directly from the Go value.
func TestDifferential(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	p := mustCompile(allPolicies...)
	d := pseudonym.NewDeriver()
	var out []byte
	for n := range 300 {
		e := randEvent(r)
		key := subjectKey(r)
		b1, err := schema.MarshalOrderEvent(e)
		if err != nil {
			t.Fatal(err)
		}
		b2 := encodeEvent(r, e)
		if back, err := schema.UnmarshalOrderEvent(b2); err != nil || !reflect.DeepEqual(generic(back), generic(e)) {
			t.Fatalf("event %d: hand encoding does not round-trip: %v", n, err)
		}
		for _, b := range [][]byte{b1, b2} {
			h, err := p.Scan(b)
			if err != nil {
				t.Fatalf("event %d: Scan: %v", n, err)
			}
			if string(h.EventID) != e.EventID || string(h.OrderID) != e.OrderID || string(h.CustomerID) != e.CustomerID || h.OccurredAt != e.OccurredAt.UnixMilli() {
				t.Fatalf("event %d: Scan head = %+v", n, h)
			}
			for i, pol := range allPolicies {
				out, err = p.Project(out[:0], i, b, key, d)
				if err != nil {
					t.Fatalf("event %d system %s: Project: %v", n, pol.System, err)
				}
				var got any
				if err := avro.Unmarshal(p.OutputSchema(i), out, &got); err != nil {
					t.Fatalf("event %d system %s: output does not decode: %v", n, pol.System, err)
				}
				if want := expect(e, pol, key, d); !reflect.DeepEqual(got, want) {
					t.Fatalf("event %d system %s:\n got %#v\nwant %#v", n, pol.System, got, want)
				}
				if s := leaked(out, secrets(e, pol)); s != nil {
					t.Fatalf("event %d system %s: output contains raw value %q", n, pol.System, s)
				}
				if sp := p.SubjectPseudonym(nil, i, key, h.CustomerID, d); got.(map[string]any)["customer_id"] != string(sp) {
					t.Fatalf("event %d system %s: SubjectPseudonym %s differs from customer_id %v", n, pol.System, sp, got.(map[string]any)["customer_id"])
				}
			}
		}
	}
}

// TestPseudonymsPerSystem checks P2 and P3 on one customer: pseudonyms are
// stable within a system and never shared between systems.
func TestPseudonymsPerSystem(t *testing.T) {
	r := rand.New(rand.NewPCG(3, 4))
	p := mustCompile(gaPolicy, metaPolicy)
	d := pseudonym.NewDeriver()
	key := subjectKey(r)
	e := randEvent(r)
	b, _ := schema.MarshalOrderEvent(e)
	seen := map[string]int{}
	for i := range 2 {
		var first map[string]any
		for range 2 {
			out, err := p.Project(nil, i, b, key, d)
			if err != nil {
				t.Fatal(err)
			}
			var got map[string]any
			if err := avro.Unmarshal(p.OutputSchema(i), out, &got); err != nil {
				t.Fatal(err)
			}
			if first == nil {
				first = got
				continue
			}
			if !reflect.DeepEqual(first, got) {
				t.Errorf("system %d: output not stable", i)
			}
		}
		for _, f := range []string{"event_id", "order_id", "customer_id"} {
			v := first[f].(string)
			if j, ok := seen[v]; ok {
				t.Errorf("pseudonym of %s shared by systems %d and %d", f, j, i)
			}
			seen[v] = i
		}
	}
}

func TestScanRejectsTruncations(t *testing.T) {
	r := rand.New(rand.NewPCG(5, 6))
	p := mustCompile(allPolicies...)
	d := pseudonym.NewDeriver()
	for tested := 0; tested < 20; {
		e := randEvent(r)
		if b := must(schema.MarshalOrderEvent(e)); len(b) > 2000 {
			continue // every length of a large record takes long; the small ones cover all fields
		}
		tested++
		for _, b := range [][]byte{must(schema.MarshalOrderEvent(e)), encodeEvent(r, e)} {
			for n := range len(b) {
				_, err := p.Scan(b[:n])
				var de *DecodeError
				if !errors.As(err, &de) {
					t.Fatalf("Scan of %d/%d bytes: err = %v, want *DecodeError", n, len(b), err)
				}
				for i := range allPolicies {
					if out, err := p.Project([]byte("x"), i, b[:n], []byte("k"), d); err == nil || string(out) != "x" {
						t.Fatalf("Project of %d/%d bytes: err = %v, out %q", n, len(b), err, out)
					}
				}
			}
			if _, err := p.Scan(append(b, 0)); err == nil || !strings.Contains(err.Error(), reasonTrailing) {
				t.Fatalf("trailing byte: err = %v", err)
			}
		}
	}
}

func must[T any](v T, err error) T {
	if err != nil {
		panic(err)
	}
	return v
}

// TestScanGarbage feeds random bytes and random mutations of valid records:
// Scan must never panic, and whatever it accepts must project to outputs
// hamba decodes.
func TestScanGarbage(t *testing.T) {
	r := rand.New(rand.NewPCG(7, 8))
	p := mustCompile(allPolicies...)
	d := pseudonym.NewDeriver()
	accepted := 0
	for n := range 20000 {
		var b []byte
		if n%2 == 0 {
			b = make([]byte, r.IntN(300))
			for i := range b {
				b[i] = byte(r.Uint32())
			}
		} else {
			b = must(schema.MarshalOrderEvent(randEvent(r)))
			for range 1 + r.IntN(3) {
				b[r.IntN(len(b))] = byte(r.Uint32())
			}
		}
		if checkAccepted(t, p, d, b) {
			accepted++
		}
	}
	t.Logf("accepted %d of 20000", accepted)
}

// checkAccepted checks the FuzzScan property for b and reports whether
// Scan accepted it.
func checkAccepted(t *testing.T, p *Plan, d *pseudonym.Deriver, b []byte) bool {
	t.Helper()
	_, err := p.Scan(b)
	if err != nil {
		var de *DecodeError
		if !errors.As(err, &de) || de.Offset < 0 || de.Offset > len(b) {
			t.Fatalf("Scan error %v is not a *DecodeError within the input", err)
		}
		return false
	}
	for i := range p.systems {
		out, err := p.Project(nil, i, b, []byte("key"), d)
		if err != nil {
			t.Fatalf("Scan accepted %x but Project(%d) failed: %v", b, i, err)
		}
		var v any
		if err := avro.Unmarshal(p.OutputSchema(i), out, &v); err != nil {
			t.Fatalf("system %d: hamba rejects output %x of accepted input %x: %v", i, out, b, err)
		}
	}
	return true
}

func TestDecodeErrors(t *testing.T) {
	p := mustCompile(allPolicies...)
	// A minimal valid prefix: event_id "e", PLACED, occurred_at 0, order_id
	// "o", customer_id "c".
	head := []byte{2, 'e', 0, 0, 2, 'o', 2, 'c'}
	tail := func(parts ...[]byte) []byte {
		b := append([]byte{}, head...)
		for _, p := range parts {
			b = append(b, p...)
		}
		return b
	}
	rest := []byte{0, 0, 0, 0, 0} // email, phone, address null; currency ""; total 0
	valid := tail(rest, []byte{0, 0})
	if _, err := p.Scan(valid); err != nil {
		t.Fatalf("valid minimal record: %v", err)
	}
	tests := []struct {
		name   string
		b      []byte
		reason string
		offset int
	}{
		{"empty", nil, reasonTruncated, 0},
		{"varint overflow", append([]byte{0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x02}, valid[2:]...), reasonVarint, 9},
		{"varint too long", append([]byte{0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x81, 0x00}, valid[2:]...), reasonVarint, 9},
		{"negative length", append([]byte{1}, valid[2:]...), reasonLength, 0},
		{"length beyond end", []byte{0x7e, 'e'}, reasonTruncated, 2},
		{"enum index", []byte{2, 'e', 8}, reasonEnum, 2},
		{"enum negative", []byte{2, 'e', 1}, reasonEnum, 2},
		{"utf8", []byte{2, 0xff}, reasonUTF8, 0},
		{"union index", tail([]byte{4}), reasonUnion, 8},
		{"union negative", tail([]byte{1}), reasonUnion, 8},
		{"int range", tail(rest, []byte{2, 0, 0x80, 0x80, 0x80, 0x80, 0x10, 0}), reasonIntRange, 15},
		{"block count", tail(rest, []byte{0x7e}), reasonBlockCount, 13},
		{"negative block size", tail(rest, []byte{1, 1}), reasonBlockSize, 14},
		{"block size too big", tail(rest, []byte{1, 0x7e}), reasonBlockSize, 14},
		{"block size mismatch", tail(rest, []byte{1, 10, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0}), reasonBlockSizeMis, 18},
		{"min block count", tail(rest, []byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01}), reasonBlockCount, 13},
		{"map key utf8", tail(rest, []byte{0, 2, 2, 0xc3, 0, 0}), reasonUTF8, 15},
		{"trailing", tail(rest, []byte{0, 0, 0}), reasonTrailing, 15},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := p.Scan(tt.b)
			var de *DecodeError
			if !errors.As(err, &de) {
				t.Fatalf("err = %v, want *DecodeError", err)
			}
			if de.Reason != tt.reason || de.Offset != tt.offset {
				t.Errorf("got %q at %d, want %q at %d", de.Reason, de.Offset, tt.reason, tt.offset)
			}
			if want := "decode: " + tt.reason; !strings.HasPrefix(err.Error(), want) {
				t.Errorf("Error() = %q", err)
			}
		})
	}
}

func TestDecodeErrorNamesNoValues(t *testing.T) {
	p := mustCompile(minPolicy)
	b := []byte{0x10, 's', 'e', 'c', 'r', 'e', 't', 'x', 0xff}
	_, err := p.Scan(b)
	if err == nil || strings.Contains(err.Error(), "secret") {
		t.Errorf("err = %v", err)
	}
}

// recursiveSchema has a record that contains itself through an array and
// a union, and one of every other type.
const recursiveSchema = `{"type":"record","name":"Tree","namespace":"t","fields":[
 {"name":"event_id","type":"string"},{"name":"order_id","type":"string"},
 {"name":"customer_id","type":"string"},{"name":"occurred_at","type":"long"},
 {"name":"flag","type":"boolean"},{"name":"f","type":"float"},{"name":"g","type":"double"},
 {"name":"raw","type":"bytes"},{"name":"fx","type":{"type":"fixed","name":"Fx","size":3}},
 {"name":"nulls","type":{"type":"array","items":"null"}},
 {"name":"multi","type":["null","int","string"]},
 {"name":"kids","type":{"type":"array","items":"Tree"}},
 {"name":"next","type":["null","Tree"]}]}`

type tree struct {
	EventID    string  `avro:"event_id"`
	OrderID    string  `avro:"order_id"`
	CustomerID string  `avro:"customer_id"`
	OccurredAt int64   `avro:"occurred_at"`
	Flag       bool    `avro:"flag"`
	F          float32 `avro:"f"`
	G          float64 `avro:"g"`
	Raw        []byte  `avro:"raw"`
	Fx         [3]byte `avro:"fx"`
	Nulls      []any   `avro:"nulls"`
	Multi      any     `avro:"multi"`
	Kids       []tree  `avro:"kids"`
	Next       *tree   `avro:"next"`
}

func TestOtherTypesAndNesting(t *testing.T) {
	s, err := avro.ParseWithCache(recursiveSchema, "", &avro.SchemaCache{})
	if err != nil {
		t.Fatal(err)
	}
	p, err := Compile(s, []Policy{
		{System: "a", Keep: []string{"flag", "f", "g", "raw", "fx", "nulls", "multi", "next.event_id"}, Pseudonymize: []string{"customer_id", "next.customer_id", "kids.order_id"}},
		{System: "b", Pseudonymize: []string{"customer_id"}},
	})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := Compile(s, []Policy{{System: "a", Keep: []string{"kids"}, Pseudonymize: []string{"customer_id"}}}); err == nil ||
		!strings.Contains(err.Error(), "recursive") {
		t.Errorf("keeping a recursive record: err = %v", err)
	}
	d := pseudonym.NewDeriver()
	v := tree{EventID: "e", CustomerID: "c", Flag: true, F: 1.5, G: -2, Raw: []byte{1, 2}, Fx: [3]byte{7, 8, 9},
		Nulls: []any{nil, nil, nil}, Multi: map[string]any{"int": 5},
		Kids: []tree{{OrderID: "k1"}, {OrderID: "k2", Kids: []tree{{}}}}, Next: &tree{EventID: "n", CustomerID: "nc"}}
	b, err := avro.Marshal(s, v)
	if err != nil {
		t.Fatal(err)
	}
	checkAccepted(t, p, d, b)
	out, err := p.Project(nil, 0, b, []byte("k"), d)
	if err != nil {
		t.Fatal(err)
	}
	var got map[string]any
	if err := avro.Unmarshal(p.OutputSchema(0), out, &got); err != nil {
		t.Fatal(err)
	}
	if got["flag"] != true || got["f"] != float32(1.5) || got["g"] != float64(-2) || !bytes.Equal(got["raw"].([]byte), []byte{1, 2}) ||
		len(got["nulls"].([]any)) != 3 || got["multi"] != 5 {
		t.Errorf("kept values differ: %#v", got)
	}
	// Tree is projected three ways: the top level keeps the name.
	next, _ := got["next"].(map[string]any)["t.pseudo.a.Tree_3"].(map[string]any)
	if next["event_id"] != "n" || next["customer_id"] != d.String([]byte("k"), "a", "next.customer_id", "nc") {
		t.Errorf("next = %#v", next)
	}
	kids := got["kids"].([]any)
	if len(kids) != 2 || kids[1].(map[string]any)["order_id"] != d.String([]byte("k"), "a", "kids.order_id", "k2") {
		t.Errorf("kids = %#v", kids)
	}
	for i := range 40 {
		b[4+i%3] ^= 1
		checkAccepted(t, p, d, b)
	}

	// Nesting beyond maxDepth through next.
	deep := &tree{}
	for range maxDepth + 1 {
		deep = &tree{Next: deep}
	}
	b, err = avro.Marshal(s, deep)
	if err != nil {
		t.Fatal(err)
	}
	var de *DecodeError
	if _, err := p.Scan(b); !errors.As(err, &de) || de.Reason != reasonDepth {
		t.Errorf("deep nesting: err = %v", err)
	}
	if _, err := p.Project(nil, 0, b, []byte("k"), d); !errors.As(err, &de) || de.Reason != reasonDepth {
		t.Errorf("deep nesting, Project: err = %v", err)
	}
	// Bad boolean: flag is the byte after the head fields.
	b = must(avro.Marshal(s, tree{}))
	b[4] = 2
	if _, err := p.Scan(b); !errors.As(err, &de) || de.Reason != reasonBool {
		t.Errorf("bad boolean: err = %v", err)
	}
}

func TestMapManyKeptEntries(t *testing.T) {
	// More than 63 kept entries need a multi-byte block count: duplicate
	// keys in the input (legal in Avro binary) make that happen.
	p := mustCompile(gaPolicy)
	d := pseudonym.NewDeriver()
	e := &schema.OrderEvent{EventID: "e", EventType: "PLACED", OrderID: "o", CustomerID: "c"}
	b := must(schema.MarshalOrderEvent(e))
	b = b[:len(b)-1] // drop the empty map
	b = appendLong(b, 100)
	for range 100 {
		b = append(b, 20)
		b = append(b, "utm_source"...)
		b = append(b, 2, 'x')
	}
	b = append(b, 0)
	out, err := p.Project(nil, 0, b, []byte("k"), d)
	if err != nil {
		t.Fatal(err)
	}
	var got map[string]any
	if err := avro.Unmarshal(p.OutputSchema(0), out, &got); err != nil {
		t.Fatal(err)
	}
	if a := got["attributes"].(map[string]any); len(a) != 1 || a["utm_source"] != "x" {
		t.Errorf("attributes = %v", a)
	}
	if !bytes.HasSuffix(out, append(appendLong(nil, 100), 20)) && !bytes.Contains(out, []byte{0xc8, 0x01, 20}) {
		t.Errorf("block count not re-encoded as 100: %x", out)
	}
}

func TestProjectZeroAllocs(t *testing.T) {
	if raceEnabled {
		t.Skip("the race detector allocates; allocations are asserted without -race")
	}
	r := rand.New(rand.NewPCG(9, 10))
	p := mustCompile(allPolicies...)
	d := pseudonym.NewDeriver()
	e := randEvent(r)
	e.Attributes["utm_source"] = "newsletter"
	b := must(schema.MarshalOrderEvent(e))
	key := subjectKey(r)
	dst := make([]byte, 0, 64<<10)
	cid := []byte(e.CustomerID)
	if n := testing.AllocsPerRun(50, func() {
		if _, err := p.Scan(b); err != nil {
			t.Fatal(err)
		}
		for i := range allPolicies {
			var err error
			if dst, err = p.Project(dst[:0], i, b, key, d); err != nil {
				t.Fatal(err)
			}
		}
		dst = p.SubjectPseudonym(dst[:0], 0, key, cid, d)
	}); n != 0 {
		t.Errorf("Scan+Project: %v allocs, want 0", n)
	}
}

func FuzzScan(f *testing.F) {
	r := rand.New(rand.NewPCG(11, 12))
	for seeds := 0; seeds < 8; {
		e := randEvent(r)
		b := must(schema.MarshalOrderEvent(e))
		if len(b) > 1500 {
			continue // large seeds make minimization slow
		}
		seeds++
		f.Add(b)
		f.Add(encodeEvent(r, e))
		f.Add(b[:len(b)/2])
		f.Add(b[:len(b)-1])
	}
	f.Add([]byte{})
	f.Add([]byte{0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x01})
	p := mustCompile(allPolicies...)
	d := pseudonym.NewDeriver()
	f.Fuzz(func(t *testing.T, b []byte) {
		checkAccepted(t, p, d, b)
	})
}

func benchRecord(b *testing.B) []byte {
	r := rand.New(rand.NewPCG(13, 14))
	em, ph := "jane.doe@example.com", "+49 30 1234567"
	e := &schema.OrderEvent{
		EventID: "0b5c8f2e-3d4a-4c1b-9e8f-7a6b5c4d3e2f", EventType: schema.Placed, OccurredAt: must(schema.UnmarshalOrderEvent(must(schema.MarshalOrderEvent(randEvent(r))))).OccurredAt,
		OrderID: "ORD-2024-000123456", CustomerID: "c7d9e1f3-5a7b-4c9d-8e1f-2a3b4c5d6e7f", Email: &em, Phone: &ph,
		ShippingAddress: &schema.Address{Line1: "Hauptstraße 12", PostalCode: "10115", City: "Berlin", Country: "DE"},
		Currency:        "EUR", TotalMinor: 12999,
		Items: []schema.LineItem{
			{SKU: "SKU-RED-SHIRT-M", Quantity: 2, UnitPriceMinor: 2999},
			{SKU: "SKU-BLUE-JEANS-32", Quantity: 1, UnitPriceMinor: 5999},
			{SKU: "SKU-SOCKS-3PK", Quantity: 1, UnitPriceMinor: 1002},
		},
		Attributes: map[string]string{"utm_source": "newsletter", "utm_medium": "email", "utm_campaign": "spring-sale-2024",
			"gclid": "Cj0KCQjw1234567890abcdefghijklmnopqrstuvwxyz"},
	}
	return must(schema.MarshalOrderEvent(e))
}

func BenchmarkScan(b *testing.B) {
	rec := benchRecord(b)
	p := mustCompile(gaPolicy, metaPolicy, crmPolicy)
	b.SetBytes(int64(len(rec)))
	b.ReportAllocs()
	for b.Loop() {
		if _, err := p.Scan(rec); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkProject3Systems(b *testing.B) {
	rec := benchRecord(b)
	p := mustCompile(gaPolicy, metaPolicy, crmPolicy)
	d := pseudonym.NewDeriver()
	key := bytes.Repeat([]byte{1}, 32)
	dst := make([]byte, 0, 4096)
	b.SetBytes(int64(len(rec)))
	b.ReportAllocs()
	for b.Loop() {
		for i := range 3 {
			var err error
			if dst, err = p.Project(dst[:0], i, rec, key, d); err != nil {
				b.Fatal(err)
			}
		}
	}
}

// BenchmarkProjectKeepOnly isolates the walking cost from the HMACs.
func BenchmarkProjectKeepOnly(b *testing.B) {
	rec := benchRecord(b)
	p := mustCompile(minPolicy, Policy{System: "k", Keep: []string{"event_id", "event_type", "occurred_at", "order_id", "email",
		"phone", "shipping_address", "currency", "total_minor", "items", "attributes.utm_source"}, Pseudonymize: []string{"customer_id"}})
	d := pseudonym.NewDeriver()
	key := bytes.Repeat([]byte{1}, 32)
	dst := make([]byte, 0, 4096)
	b.ReportAllocs()
	for b.Loop() {
		dst, _ = p.Project(dst[:0], 1, rec, key, d)
	}
}
