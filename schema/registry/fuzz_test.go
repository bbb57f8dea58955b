package registry_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hamba/avro/v2"

	"github.com/hygiene/pseudonymizer/schema"
	"github.com/hygiene/pseudonymizer/schema/avrowalk/avrowalktest"
)

// fuzzBound is how long one call may take before a fuzz target calls it a
// hang: generous on two shared cores, far below what the hostile inputs of
// issue 12 took (centuries, or a crash).
const fuzzBound = 5 * time.Second

// writerGen derives random writer schemas from a bundled schema.
type writerGen struct {
	src       *avrowalktest.Source
	names     int  // named types made so far
	recursive bool // the derived schema has a recursive type
}

// derive returns the text of a writer schema made from the bundled schema
// text by up to 4 operations: remove an optional top-level field (one of
// optional), swap two top-level fields, add a field of a random type at
// the top level or to one of the nested records named in nested. It also
// returns the removed fields.
func (g *writerGen) derive(bundled string, optional, nested []string) (string, map[string]bool) {
	var root map[string]any
	if err := json.Unmarshal([]byte(bundled), &root); err != nil {
		panic(err)
	}
	removed := map[string]bool{}
	for i := range g.src.Intn(5) {
		fields := root["fields"].([]any)
		switch g.src.Intn(4) {
		case 0:
			name := optional[g.src.Intn(len(optional))]
			fields = slices.DeleteFunc(fields, func(f any) bool { return f.(map[string]any)["name"] == name })
			removed[name] = true
		case 1:
			a, b := g.src.Intn(len(fields)), g.src.Intn(len(fields))
			fields[a], fields[b] = fields[b], fields[a]
		case 2:
			fields = append(fields, g.field(i))
		case 3:
			if len(nested) == 0 {
				continue
			}
			if rec := findRecord(root, nested[g.src.Intn(len(nested))]); rec != nil {
				rec["fields"] = append(rec["fields"].([]any), g.field(i))
			}
		}
		root["fields"] = fields
	}
	text, err := json.Marshal(root)
	if err != nil {
		panic(err)
	}
	// Recursive types are named Rec…; one added to a record that was then
	// removed is gone.
	g.recursive = strings.Contains(string(text), `"name":"Rec`)
	return string(text), removed
}

// field returns an added field: optional (a union with null, default null)
// or of a bare type without a default (the reader drops it either way).
func (g *writerGen) field(i int) map[string]any {
	name := fmt.Sprintf("extra%d", i)
	if g.src.Intn(2) == 0 {
		return map[string]any{"name": name, "type": []any{"null", g.typ(0)}, "default": nil}
	}
	return map[string]any{"name": name, "type": g.typ(0)}
}

// typ returns a random type that is not a union or null.
func (g *writerGen) typ(depth int) any {
	g.names++
	name := fmt.Sprintf("T%d", g.names)
	choices := 18
	if depth >= 3 {
		choices = 11
	}
	switch g.src.Intn(choices) {
	case 0:
		return "boolean"
	case 1:
		return "int"
	case 2:
		return "long"
	case 3:
		return "float"
	case 4:
		return "double"
	case 5:
		return "bytes"
	case 6:
		return "string"
	case 7:
		return map[string]any{"type": "long", "logicalType": "timestamp-millis"}
	case 8:
		return map[string]any{"type": "enum", "name": name, "symbols": []any{"A", "B", "C"}}
	case 9:
		return map[string]any{"type": "fixed", "name": name, "size": g.src.Intn(5)}
	case 10:
		return map[string]any{"type": "record", "name": name, "fields": []any{}}
	case 11:
		return map[string]any{"type": "array", "items": g.typ(depth + 1)}
	case 12:
		return map[string]any{"type": "map", "values": g.typ(depth + 1)}
	case 13:
		return map[string]any{"type": "array", "items": []any{"null", g.typ(depth + 1)}}
	case 14, 15:
		var fields []any
		for i := range g.src.Intn(4) {
			fields = append(fields, map[string]any{"name": fmt.Sprintf("f%d", i), "type": g.typ(depth + 1)})
		}
		return map[string]any{"type": "record", "name": name, "fields": fields}
	case 16:
		name = "Rec" + name
		return map[string]any{"type": "array", "items": map[string]any{"type": "record", "name": name,
			"fields": []any{map[string]any{"name": "kids", "type": map[string]any{"type": "array", "items": name}}}}}
	default:
		name = "Rec" + name
		return map[string]any{"type": "record", "name": name,
			"fields": []any{map[string]any{"name": "next", "type": []any{"null", name}}, map[string]any{"name": "v", "type": "int"}}}
	}
}

// findRecord returns the JSON of the record type named name inside s.
func findRecord(s any, name string) map[string]any {
	switch t := s.(type) {
	case map[string]any:
		if t["type"] == "record" && t["name"] == name {
			return t
		}
		for _, k := range []string{"type", "items", "values", "fields"} {
			if r := findRecord(t[k], name); r != nil {
				return r
			}
		}
	case []any:
		for _, x := range t {
			if r := findRecord(x, name); r != nil {
				return r
			}
		}
	}
	return nil
}

// fuzzWorld is a fake registry and a wire shared by the runs of one fuzz
// process. Writer schemas are served by an interceptor under IDs of their
// own (srfake's RegisterSchema compares a new schema with every one it
// has, which would make the fuzz targets slower with every run).
type fuzzWorld struct {
	w *world

	mu    sync.Mutex
	ids   map[string]int
	texts map[int]string
}

// fuzzFirstID is the first ID of fuzzed writer schemas, far from srfake's.
const fuzzFirstID = 1 << 20

func newFuzzWorld(f *testing.F) *fuzzWorld {
	fw := &fuzzWorld{w: newWorld(f, nil), ids: map[string]int{}, texts: map[int]string{}}
	fw.w.fake.Intercept(func(rw http.ResponseWriter, r *http.Request) bool {
		id, err := strconv.Atoi(strings.TrimPrefix(r.URL.Path, "/schemas/ids/"))
		if r.Method != http.MethodGet || err != nil || id < fuzzFirstID {
			return false
		}
		fw.mu.Lock()
		text, ok := fw.texts[id]
		fw.mu.Unlock()
		if !ok {
			return false
		}
		rw.Header().Set("Content-Type", "application/vnd.schemaregistry.v1+json")
		_ = json.NewEncoder(rw).Encode(map[string]string{"schema": text})
		return true
	})
	fw.w.start(f)
	return fw
}

// id returns the ID of writer schema text.
func (fw *fuzzWorld) id(text string) int {
	fw.mu.Lock()
	defer fw.mu.Unlock()
	id, ok := fw.ids[text]
	if !ok {
		id = fuzzFirstID + len(fw.ids)
		fw.ids[text], fw.texts[id] = id, text
	}
	return id
}

// bounded runs f and fails the test if it takes longer than fuzzBound.
func bounded[T any](t *testing.T, f func() (T, error)) (T, error) {
	t.Helper()
	type result struct {
		v   T
		err error
	}
	done := make(chan result, 1)
	go func() {
		v, err := f()
		done <- result{v, err}
	}()
	select {
	case r := <-done:
		return r.v, r.err
	case <-time.After(fuzzBound):
		t.Fatalf("did not return within %s", fuzzBound)
		panic("unreachable")
	}
}

// randomEvent draws an order event from src.
func randomEvent(src *avrowalktest.Source) *schema.OrderEvent {
	str := func() string {
		b := make([]byte, src.Intn(8))
		for i := range b {
			b[i] = 'a' + src.Byte()%26
		}
		return string(b)
	}
	e := &schema.OrderEvent{
		EventID: "e-" + str(), EventType: []string{schema.Placed, schema.Updated, schema.Cancelled, schema.Refunded}[src.Intn(4)],
		OccurredAt: time.UnixMilli(1_700_000_000_000 + int64(src.Byte())<<16 + int64(src.Byte())).UTC(),
		OrderID:    "o-" + str(), CustomerID: "c-" + str(), Currency: str(), TotalMinor: int64(src.Byte()) - 100,
	}
	if src.Intn(2) == 0 {
		e.Email = ptr(str())
	}
	if src.Intn(2) == 0 {
		e.Phone = ptr(str())
	}
	if src.Intn(2) == 0 {
		e.ShippingAddress = &schema.Address{Line1: str(), PostalCode: str(), City: str(), Country: str()}
	}
	for range src.Intn(4) {
		e.Items = append(e.Items, schema.LineItem{SKU: str(), Quantity: int32(src.Byte()) - 8, UnitPriceMinor: int64(src.Byte()) << 8})
	}
	for range src.Intn(4) {
		if e.Attributes == nil {
			e.Attributes = map[string]string{}
		}
		e.Attributes[str()] = str()
	}
	return e
}

// generic returns e as the values avrowalktest.Encode takes, without the
// removed fields.
func generic(e *schema.OrderEvent, removed map[string]bool) map[string]any {
	m := map[string]any{
		"event_id": e.EventID, "event_type": e.EventType, "occurred_at": e.OccurredAt.UnixMilli(),
		"order_id": e.OrderID, "customer_id": e.CustomerID, "email": nil, "phone": nil, "shipping_address": nil,
		"currency": e.Currency, "total_minor": e.TotalMinor,
	}
	if e.Email != nil {
		m["email"] = *e.Email
	}
	if e.Phone != nil {
		m["phone"] = *e.Phone
	}
	if a := e.ShippingAddress; a != nil {
		m["shipping_address"] = map[string]any{"line1": a.Line1, "postal_code": a.PostalCode, "city": a.City, "country": a.Country}
	}
	items := []any{}
	for _, it := range e.Items {
		items = append(items, map[string]any{"sku": it.SKU, "quantity": it.Quantity, "unit_price_minor": it.UnitPriceMinor})
	}
	m["items"] = items
	attrs := map[string]any{}
	for k, v := range e.Attributes {
		attrs[k] = v
	}
	m["attributes"] = attrs
	for k := range removed {
		delete(m, k)
	}
	return m
}

// canonicalJSON renders e with empty and missing collections alike.
func canonicalJSON(e *schema.OrderEvent) string {
	c := *e
	if len(c.Items) == 0 {
		c.Items = nil
	}
	if len(c.Attributes) == 0 {
		c.Attributes = nil
	}
	b, _ := json.Marshal(&c)
	return string(b)
}

// FuzzOrderWriter runs the registry wire's order path with random writer
// schemas derived from the bundled OrderEvent (fields added of every kind,
// recursive ones included, optional fields removed, fields reordered) and
// with random bodies or valid bodies of random events. It checks that
// every call returns within fuzzBound, that errors are *RecordError
// (class schema exactly when the writer is recursive), that an accepted
// body yields bare Avro the policy scanner accepts, and that a valid body
// yields exactly its event (removed fields at their defaults, added ones
// dropped).
func FuzzOrderWriter(f *testing.F) {
	fw := newFuzzWorld(f)
	bare, _ := schema.MarshalOrderEvent(sampleEvent())
	f.Add([]byte{}, append([]byte{0}, bare...))
	f.Add([]byte{}, []byte{1, 2, 3, 4})
	f.Add([]byte{4, 2, 6, 2, 11, 6, 3, 2, 14, 2}, []byte{1, 7, 7, 7})
	f.Add([]byte{3, 2, 16, 0, 2}, []byte{1})
	f.Add([]byte{2, 0, 1, 0, 3, 0, 2, 12, 6}, []byte{0, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01})
	f.Fuzz(func(t *testing.T, spec, data []byte) {
		g := &writerGen{src: avrowalktest.NewSource(spec)}
		text, removed := g.derive(schema.OrderEventJSON(), []string{"email", "phone", "shipping_address", "attributes"}, []string{"Address", "LineItem"})
		id := fw.id(text)
		if len(data) == 0 {
			return
		}
		ws, err := avro.ParseWithCache(text, "", &avro.SchemaCache{})
		if err != nil {
			t.Fatal(err)
		}
		// The bundled schema itself takes the fast path: the body is
		// returned as it is, for the policy scanner to validate.
		fast := ws.Fingerprint() == schema.OrderEventSchema().Fingerprint()
		var body []byte
		var want *schema.OrderEvent
		if data[0]&1 == 0 {
			body = data[1:]
		} else {
			src := avrowalktest.NewSource(data[1:])
			want = randomEvent(src)
			body = avrowalktest.Encode(nil, ws, generic(want, removed), src)
		}
		out, err := bounded(t, func() ([]byte, error) { return fw.w.wire.Order(context.Background(), frame(id, body)) })
		if g.recursive {
			wantClass(t, err, schema.ClassSchema)
			return
		}
		if err != nil {
			re, ok := schema.AsRecordError(err)
			if !ok || re.Class != schema.ClassDecode {
				t.Fatalf("error %v, want a record error of class decode", err)
			}
			if want != nil {
				t.Fatalf("valid body refused: %v", err)
			}
			return
		}
		if _, err := fw.w.plan.Scan(out); err != nil && (!fast || want != nil) {
			t.Fatalf("output does not scan: %v", err)
		}
		if want == nil {
			return
		}
		got, err := schema.UnmarshalOrderEvent(out)
		if err != nil {
			t.Fatal(err)
		}
		if removed["email"] {
			want.Email = nil
		}
		if removed["phone"] {
			want.Phone = nil
		}
		if removed["shipping_address"] {
			want.ShippingAddress = nil
		}
		if removed["attributes"] {
			want.Attributes = nil
		}
		if g, w := canonicalJSON(got), canonicalJSON(want); g != w {
			t.Fatalf("got  %s\nwant %s", g, w)
		}
	})
}

// FuzzForget runs forget requests in both wire formats: bare Avro
// (BareWire) and the registry wire with random writer schemas derived from
// the bundled ForgetRequest. Every call returns within fuzzBound, errors
// are *RecordError, an accepted bare request re-encodes to its input (bare
// requests are canonical), and a valid body yields exactly its request.
func FuzzForget(f *testing.F) {
	fw := newFuzzWorld(f)
	valid, _ := schema.MarshalForgetRequest(&schema.ForgetRequest{RequestID: "r-1", SubjectID: "cust-42", RequestedAt: time.UnixMilli(1_760_000_000_000).UTC(), Reason: ptr("gdpr")})
	f.Add([]byte{}, append([]byte{0}, valid...))
	f.Add([]byte{}, []byte{1, 2, 3})
	f.Add([]byte{2, 2, 11, 6}, []byte{1, 9, 9})
	f.Add([]byte{3, 0, 2, 12, 6, 1, 0}, []byte{0, 2, 'r', 2, 'c', 4, 0, 0xfe, 0xff, 0xff, 0xff, 0x0f})
	f.Fuzz(func(t *testing.T, spec, data []byte) {
		if len(data) == 0 {
			return
		}
		// Bare.
		fr, err := bounded(t, func() (*schema.ForgetRequest, error) { return schema.BareWire{}.Forget(context.Background(), data) })
		if err != nil {
			wantClass(t, err, schema.ClassDecode)
		} else if again, err := schema.MarshalForgetRequest(fr); err != nil || !bytes.Equal(again, data) {
			t.Fatalf("accepted bare request re-encodes differently (%v)", err)
		}

		// Registry.
		g := &writerGen{src: avrowalktest.NewSource(spec)}
		text, removed := g.derive(schema.ForgetRequestJSON(), []string{"reason"}, nil)
		id := fw.id(text)
		var body []byte
		var want *schema.ForgetRequest
		if data[0]&1 == 0 {
			body = data[1:]
		} else {
			src := avrowalktest.NewSource(data[1:])
			want = &schema.ForgetRequest{RequestID: fmt.Sprint("r-", src.Byte()), SubjectID: fmt.Sprint("c-", src.Byte()),
				RequestedAt: time.UnixMilli(1_700_000_000_000 + int64(src.Byte())<<20).UTC()}
			m := map[string]any{"request_id": want.RequestID, "subject_id": want.SubjectID, "requested_at": want.RequestedAt.UnixMilli(), "reason": nil}
			if src.Intn(2) == 0 && !removed["reason"] {
				want.Reason = ptr(fmt.Sprint("why-", src.Byte()))
				m["reason"] = *want.Reason
			}
			ws, err := avro.ParseWithCache(text, "", &avro.SchemaCache{})
			if err != nil {
				t.Fatal(err)
			}
			body = avrowalktest.Encode(nil, ws, m, src)
		}
		got, err := bounded(t, func() (*schema.ForgetRequest, error) { return fw.w.wire.Forget(context.Background(), frame(id, body)) })
		switch {
		case g.recursive:
			wantClass(t, err, schema.ClassSchema)
		case err != nil:
			wantClass(t, err, schema.ClassDecode)
			if want != nil {
				t.Fatalf("valid body refused: %v", err)
			}
		case want != nil:
			gj, _ := json.Marshal(got)
			wj, _ := json.Marshal(want)
			if !bytes.Equal(gj, wj) {
				t.Fatalf("got  %s\nwant %s", gj, wj)
			}
		}
	})
}
