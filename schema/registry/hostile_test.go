package registry_test

import (
	"context"
	"encoding/json"
	"fmt"
	"math"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/sr"

	"github.com/hygiene/pseudonymizer/schema"
	"github.com/hygiene/pseudonymizer/schema/registry"
)

// Issue 12: an attacker who can write orders.raw and subjects.forget and
// register writer schemas. Before the fix, cases 1 and 3 killed the test
// binary (fatal SIGSEGV, fatal stack overflow: no recover catches them) and
// case 2 never returned; each test below was run against the old code to
// see that.

// enc builds Avro binary by hand, to write what no encoder writes.
type enc []byte

func (e enc) long(v int64) enc {
	u := uint64(v<<1) ^ uint64(v>>63)
	for u >= 0x80 {
		e = append(e, byte(u)|0x80)
		u >>= 7
	}
	return append(e, byte(u))
}

func (e enc) str(s string) enc { return append(e.long(int64(len(s))), s...) }

// head encodes the bundled OrderEvent's fields up to total_minor.
func (e enc) head() enc {
	return e.str("7d7d1c7e-0d7a-4a43-9c55-1f4c3a1a0b01").long(0).long(1_760_000_000_123).
		str("ord-1").str("cust-42").long(0).long(0).long(0).str("EUR").long(4200)
}

// item encodes a LineItem.
func (e enc) item() enc { return e.str("sku-1").long(2).long(2100) }

// returnsWithin fails the test if f does not return within d.
func returnsWithin(t *testing.T, d time.Duration, f func() error) error {
	t.Helper()
	done := make(chan error, 1)
	go func() { done <- f() }()
	select {
	case err := <-done:
		return err
	case <-time.After(d):
		t.Fatalf("did not return within %s", d)
		return nil
	}
}

// Case 1: an items block of count MinInt64 (written negative, so a byte
// size follows) made hamba's array decoder set a negative slice length,
// and the next block of 2 items wrote through it: fatal SIGSEGV in
// arrayDecoder.Decode.
func TestHostileMinInt64BlockCount(t *testing.T) {
	w := newWorld(t, nil)
	wire := w.start(t)
	id := w.registerWriter(t, evolve(t, withExtra))
	block := enc{}.item().item()
	body := enc{}.head().long(math.MinInt64).long(0).long(2)
	body = append(body, block...)
	body = body.long(0).long(0).long(0) // end of items, empty attributes, null loyalty_tier
	_, err := wire.Order(context.Background(), frame(id, body))
	wantClass(t, err, schema.ClassDecode)
	if strings.Contains(err.Error(), "cust-42") {
		t.Errorf("error %q contains a record value", err)
	}
	// The same body with a valid count decodes.
	good := enc{}.head().long(-2).long(int64(len(block)))
	good = append(good, block...)
	good = good.long(0).long(0).long(0)
	out, err := wire.Order(context.Background(), frame(id, good))
	if err != nil {
		t.Fatal(err)
	}
	e, err := schema.UnmarshalOrderEvent(out)
	if err != nil || len(e.Items) != 2 || e.CustomerID != "cust-42" {
		t.Fatalf("decoded %+v, %v", e, err)
	}
}

// Case 2: a writer field the bundled schema drops is skipped by hamba's
// skip decoder, which looped over the announced block count without
// checking for the end of input.
func TestHostileSkippedBlockCount(t *testing.T) {
	for _, tc := range []struct {
		name, typ string
		count     int64
	}{
		{"array of string", `{"type":"array","items":"string"}`, 1 << 62},
		{"map of long", `{"type":"map","values":"long"}`, 1 << 62},
		{"array of string, sized block", `{"type":"array","items":"string"}`, -(1 << 62)},
		{"array of empty records", `{"type":"array","items":{"type":"record","name":"Empty","fields":[]}}`, 1 << 62},
		{"array of fixed(0)", `{"type":"array","items":{"type":"fixed","name":"Zero","size":0}}`, 1 << 62},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			w := newWorld(t, nil)
			wire := w.start(t)
			var typ any
			if err := json.Unmarshal([]byte(tc.typ), &typ); err != nil {
				t.Fatal(err)
			}
			id := w.registerWriter(t, evolve(t, func(fields []any) []any {
				return append(fields, map[string]any{"name": "extra", "type": []any{"null", typ}, "default": nil})
			}))
			body := enc{}.head().long(1).item().long(0).long(0).long(1).long(tc.count)
			if tc.count < 0 {
				body = body.long(3)
			}
			body = append(body, "abc"...)
			err := returnsWithin(t, 10*time.Second, func() error {
				_, err := wire.Order(context.Background(), frame(id, body))
				return err
			})
			wantClass(t, err, schema.ClassDecode)
		})
	}
	t.Run("forget request", func(t *testing.T) {
		t.Parallel()
		w := newWorld(t, nil)
		wire := w.start(t)
		id := registerForgetWriter(t, w, `{"name":"tags","type":{"type":"array","items":"string"},"default":[]}`)
		body := enc{}.str("r-1").str("cust-42").long(1_760_000_000_000).long(0).long(1 << 62)
		err := returnsWithin(t, 10*time.Second, func() error {
			_, err := wire.Forget(context.Background(), frame(id, body))
			return err
		})
		wantClass(t, err, schema.ClassDecode)
	})
}

// registerForgetWriter registers the bundled ForgetRequest schema with one
// more field (JSON) under subjects.forget-value.
func registerForgetWriter(t *testing.T, w *world, field string) int {
	t.Helper()
	var m map[string]any
	if err := json.Unmarshal([]byte(schema.ForgetRequestJSON()), &m); err != nil {
		t.Fatal(err)
	}
	var f any
	if err := json.Unmarshal([]byte(field), &f); err != nil {
		t.Fatal(err)
	}
	m["fields"] = append(m["fields"].([]any), f)
	text, _ := json.Marshal(m)
	id, _, err := w.fake.RegisterSchema(registry.Subject(w.topics.Forget), sr.Schema{Schema: string(text)})
	if err != nil {
		t.Fatal(err)
	}
	return id
}

// Case 3: a writer adding a recursive type made hamba build skip decoders
// for ever (fatal stack overflow) on the first record, even with an empty
// array. Such a writer is refused as class schema when it is resolved,
// before any decoder is built; so is one whose named types expand
// exponentially.
func TestHostileRecursiveWriter(t *testing.T) {
	node := `{"type":"array","items":{"type":"record","name":"Node","fields":[{"name":"kids","type":{"type":"array","items":"Node"}}]}}`
	// D39 holds D38 twice, and so on: 2^40 types when expanded as a tree.
	dag, prev := `"int"`, `"int"`
	for i := range 40 {
		dag = fmt.Sprintf(`{"type":"record","name":"D%d","fields":[{"name":"l","type":%s},{"name":"r","type":%s}]}`, i, dag, prev)
		prev = fmt.Sprintf(`"D%d"`, i)
	}
	for _, tc := range []struct {
		name  string
		evolv func([]any) []any
	}{
		{"top-level tree", func(fields []any) []any {
			var typ any
			_ = json.Unmarshal([]byte(node), &typ)
			return append(fields, map[string]any{"name": "tree", "type": typ, "default": []any{}})
		}},
		{"optional tree", func(fields []any) []any {
			var typ any
			_ = json.Unmarshal([]byte(node), &typ)
			return append(fields, map[string]any{"name": "tree", "type": []any{"null", typ}, "default": nil})
		}},
		{"recursion inside a kept record", func(fields []any) []any {
			for _, f := range fields {
				fm := f.(map[string]any)
				if fm["name"] == "items" {
					li := fm["type"].(map[string]any)["items"].(map[string]any)
					li["fields"] = append(li["fields"].([]any), map[string]any{"name": "parts", "type": map[string]any{"type": "array", "items": "LineItem"}, "default": []any{}})
				}
			}
			return fields
		}},
		{"exponential expansion", func(fields []any) []any {
			var typ any
			if err := json.Unmarshal([]byte(dag), &typ); err != nil {
				panic(err)
			}
			return append(fields, map[string]any{"name": "dag", "type": typ})
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			w := newWorld(t, nil)
			wire := w.start(t)
			id := w.registerWriter(t, evolve(t, tc.evolv))
			body := enc{}.head().long(0).long(0).long(0) // no items, no attributes, an empty or null extra field
			for range 3 {
				err := returnsWithin(t, 10*time.Second, func() error {
					_, err := wire.Order(context.Background(), frame(id, body))
					return err
				})
				wantClass(t, err, schema.ClassSchema)
			}
			if n := w.requests.Load(); n != 1 {
				t.Errorf("%d registry look-ups, want 1 (the verdict is cached)", n)
			}
		})
	}
	t.Run("forget request", func(t *testing.T) {
		t.Parallel()
		w := newWorld(t, nil)
		wire := w.start(t)
		id := registerForgetWriter(t, w, `{"name":"tree","type":`+node+`,"default":[]}`)
		body := enc{}.str("r-1").str("cust-42").long(1_760_000_000_000).long(0).long(0)
		_, err := wire.Forget(context.Background(), frame(id, body))
		wantClass(t, err, schema.ClassSchema)
	})
}

// A forget request announcing a long string in a few bytes made hamba
// allocate the announced length (up to 1 MiB) before it noticed the input
// was short; now the input is validated first.
func TestHostileForgetAllocation(t *testing.T) {
	w := newWorld(t, nil)
	wire := w.start(t)
	fc, err := registry.NewForgetClient(context.Background(), w.cl, w.topics.Forget)
	if err != nil {
		t.Fatal(err)
	}
	body := enc{}.long(1<<20 - 1).str("x")
	v := frame(fc.RequestSchemaID(), body)
	for _, tc := range []struct {
		name string
		f    func() error
	}{
		{"registry", func() error { _, err := wire.Forget(context.Background(), v); return err }},
		{"bare", func() error { _, err := schema.BareWire{}.Forget(context.Background(), body); return err }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var before, after runtime.MemStats
			runtime.ReadMemStats(&before)
			for range 20 {
				wantClass(t, tc.f(), schema.ClassDecode)
			}
			runtime.ReadMemStats(&after)
			if got := after.TotalAlloc - before.TotalAlloc; got > 1<<20 {
				t.Errorf("20 rejected 8-byte requests allocated %d bytes", got)
			}
		})
	}
}

// The bounds do not refuse large honest records: thousands of items and
// attributes through an evolved writer decode.
func TestBoundsAcceptLargeRecords(t *testing.T) {
	w := newWorld(t, nil)
	wire := w.start(t)
	text := evolve(t, withExtra)
	id := w.registerWriter(t, text)
	e := sampleEvent()
	e.Items, e.Attributes = nil, map[string]string{}
	for i := range 5000 {
		e.Items = append(e.Items, schema.LineItem{SKU: fmt.Sprint("sku-", i), Quantity: int32(i), UnitPriceMinor: int64(i) * 100})
	}
	for i := range 500 {
		e.Attributes[fmt.Sprint("k", i)] = fmt.Sprint("v", i)
	}
	out, err := wire.Order(context.Background(), frame(id, encodeAs(t, text, e, map[string]any{"loyalty_tier": "gold"}, nil)))
	if err != nil {
		t.Fatal(err)
	}
	sameEvent(t, out, e)
}
