package avrowalk_test

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"strings"
	"testing"

	"github.com/hamba/avro/v2"

	"github.com/hygiene/pseudonymizer/schema/avrowalk"
	"github.com/hygiene/pseudonymizer/schema/avrowalk/avrowalktest"
)

// kitchen has every kind of type, logical types and named-type references.
const kitchen = `{"type":"record","name":"K","namespace":"t","fields":[
 {"name":"n","type":"null"},
 {"name":"b","type":"boolean"},
 {"name":"i","type":"int"},
 {"name":"l","type":"long"},
 {"name":"f","type":"float"},
 {"name":"d","type":"double"},
 {"name":"by","type":"bytes"},
 {"name":"s","type":"string"},
 {"name":"e","type":{"type":"enum","name":"E","symbols":["A","B","C"]}},
 {"name":"fx","type":{"type":"fixed","name":"F3","size":3}},
 {"name":"f0","type":{"type":"fixed","name":"F0","size":0}},
 {"name":"empty","type":{"type":"record","name":"Empty","fields":[]}},
 {"name":"dec","type":{"type":"bytes","logicalType":"decimal","precision":9,"scale":2}},
 {"name":"uuid","type":{"type":"string","logicalType":"uuid"}},
 {"name":"date","type":{"type":"int","logicalType":"date"}},
 {"name":"tms","type":{"type":"int","logicalType":"time-millis"}},
 {"name":"tus","type":{"type":"long","logicalType":"time-micros"}},
 {"name":"ts","type":{"type":"long","logicalType":"timestamp-millis"}},
 {"name":"tsu","type":{"type":"long","logicalType":"timestamp-micros"}},
 {"name":"dur","type":{"type":"fixed","name":"Dur","size":12,"logicalType":"duration"}},
 {"name":"arr","type":{"type":"array","items":"long"}},
 {"name":"empties","type":{"type":"array","items":"Empty"}},
 {"name":"zeros","type":{"type":"array","items":"F0"}},
 {"name":"m","type":{"type":"map","values":"string"}},
 {"name":"me","type":{"type":"map","values":"Empty"}},
 {"name":"u","type":["null","string",{"type":"record","name":"R","fields":[{"name":"x","type":"int"},{"name":"e2","type":"E"}]}]},
 {"name":"r2","type":"R"},
 {"name":"nested","type":{"type":"array","items":{"type":"map","values":{"type":"array","items":["null","F3"]}}}}
]}`

func mustCompile(t testing.TB, text string) (avro.Schema, *avrowalk.Schema) {
	t.Helper()
	s, err := avro.ParseWithCache(text, "", &avro.SchemaCache{})
	if err != nil {
		t.Fatal(err)
	}
	w, err := avrowalk.Compile(s)
	if err != nil {
		t.Fatal(err)
	}
	return s, w
}

// enc builds Avro binary by hand.
type enc []byte

func (e enc) long(v int64) enc {
	return binary.AppendUvarint(e, uint64(v<<1)^uint64(v>>63))
}

func (e enc) str(s string) enc { return append(e.long(int64(len(s))), s...) }

func TestValidateAcceptsValidEncodings(t *testing.T) {
	s, w := mustCompile(t, kitchen)
	for seed := range 300 {
		src := make([]byte, 400)
		for i := range src {
			src[i] = byte(seed*7919 + i*i*31 + i>>3)
		}
		b := avrowalktest.Encode(nil, s, avrowalktest.Random{}, avrowalktest.NewSource(src))
		if err := w.Validate(b); err != nil {
			t.Fatalf("seed %d: valid encoding refused: %v", seed, err)
		}
		var v any
		if err := avro.Unmarshal(s, b, &v); err != nil {
			t.Fatalf("seed %d: hamba: %v", seed, err)
		}
		for n := range len(b) {
			if err := w.Validate(b[:n]); err == nil {
				t.Fatalf("seed %d: %d-byte prefix of %d accepted", seed, n, len(b))
			}
		}
		if err := w.Validate(append(b, 0)); !hasReason(err, "trailing") {
			t.Fatalf("seed %d: trailing byte: %v", seed, err)
		}
	}
	// hamba's own encoding too.
	var v any
	b := avrowalktest.Encode(nil, s, avrowalktest.Random{}, avrowalktest.NewSource([]byte("some entropy for the kitchen sink")))
	if err := avro.Unmarshal(s, b, &v); err != nil {
		t.Fatal(err)
	}
	again, err := avro.Marshal(s, v)
	if err != nil {
		t.Fatal(err)
	}
	if err := w.Validate(again); err != nil {
		t.Fatalf("hamba's encoding refused: %v", err)
	}
}

func hasReason(err error, part string) bool {
	var we *avrowalk.Error
	return errors.As(err, &we) && strings.Contains(we.Reason, part)
}

func TestValidateRejects(t *testing.T) {
	arr := `{"type":"array","items":"string"}`
	for _, tc := range []struct {
		name, schema string
		in           []byte
		reason       string
	}{
		{"MinInt64 count", arr, enc{}.long(math.MinInt64).long(0).long(2).str("a").str("b").long(0), "block count"},
		{"MaxInt64 count", arr, enc{}.long(math.MaxInt64).str("a").long(0), "block count"},
		{"count beyond the bytes left", arr, enc{}.long(8).str("a").str("b").str("c").long(0), "block count"},
		{"2^62 count", arr, enc{}.long(1 << 62), "block count"},
		{"negative block size", arr, enc{}.long(-1).long(-2).str("a").long(0), "block byte size"},
		{"block size beyond the input", arr, enc{}.long(-1).long(9).str("a").long(0), "block byte size"},
		{"block size mismatch", arr, enc{}.long(-1).long(1).str("ab").long(0), "does not match"},
		{"item beyond its block's size", arr, enc{}.long(-1).long(0), "block count"},
		{"zero-size items", `{"type":"array","items":{"type":"record","name":"E","fields":[]}}`, enc{}.long(1 << 40).long(0), "too much work"},
		{"fixed(0) items", `{"type":"array","items":{"type":"fixed","name":"Z","size":0}}`, enc{}.long(-(1 << 40)).long(0).long(0), "too much work"},
		{"map 2^62", `{"type":"map","values":"null"}`, enc{}.long(1 << 62).str("k"), "block count"},
		{"truncated varint", `"long"`, []byte{0x80}, "truncated"},
		{"11-byte varint", `"long"`, []byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01}, "varint"},
		{"long overflow", `"long"`, []byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f}, "varint"},
		{"int out of range", `"int"`, enc{}.long(1 << 31), "int out of range"},
		{"6-byte int", `"int"`, []byte{0x80, 0x80, 0x80, 0x80, 0x80, 0x00}, "int out of range"},
		{"boolean 2", `"boolean"`, []byte{2}, "boolean"},
		{"negative length", `"bytes"`, enc{}.long(-1), "negative length"},
		{"length beyond the input", `"string"`, enc{}.long(1<<20 - 1).str("x"), "truncated"},
		{"invalid UTF-8", `"string"`, enc{}.str("\xff"), "UTF-8"},
		{"enum index", `{"type":"enum","name":"E","symbols":["A"]}`, enc{}.long(1), "enum"},
		{"negative enum index", `{"type":"enum","name":"E","symbols":["A"]}`, enc{}.long(-1), "enum"},
		{"union index", `["null","string"]`, enc{}.long(2), "union"},
		{"negative union index", `["null","string"]`, enc{}.long(-1), "union"},
		{"trailing", `"int"`, enc{}.long(1).long(1), "trailing"},
		{"empty input", `"string"`, nil, "truncated"},
		{"fixed truncated", `{"type":"fixed","name":"F","size":4}`, []byte{1, 2, 3}, "truncated"},
		{"double truncated", `"double"`, []byte{1, 2, 3, 4, 5, 6, 7}, "truncated"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, w := mustCompile(t, tc.schema)
			err := w.Validate(tc.in)
			if !hasReason(err, tc.reason) {
				t.Fatalf("error %v, want reason %q", err, tc.reason)
			}
		})
	}
}

// A union branch whose skip decoder hamba builds for every value costs its
// expanded size: many values of a large branch in few bytes exceed the
// budget, few do not.
func TestValidateBudget(t *testing.T) {
	var fields []string
	for i := range 200 {
		fields = append(fields, fmt.Sprintf(`{"name":"f%d","type":"E"}`, i))
	}
	big := `{"type":"array","items":["null",{"type":"record","name":"Big","fields":[{"name":"first","type":{"type":"record","name":"E","fields":[]}},` + strings.Join(fields[1:], ",") + `]}]}`
	_, w := mustCompile(t, big)
	few := enc{}.long(2).long(1).long(1).long(0)
	if err := w.Validate(few); err != nil {
		t.Fatalf("2 values: %v", err)
	}
	many := enc{}.long(500)
	for range 500 {
		many = many.long(1)
	}
	if err := w.Validate(many.long(0)); !hasReason(err, "too much work") {
		t.Fatalf("500 values in 500 bytes: %v", err)
	}
	// Null branches cost nothing extra.
	nulls := enc{}.long(500)
	for range 500 {
		nulls = nulls.long(0)
	}
	if err := w.Validate(nulls.long(0)); err != nil {
		t.Fatalf("500 nulls: %v", err)
	}
}

func TestCompileRejects(t *testing.T) {
	deep := `"int"`
	for range avrowalk.MaxDepth + 1 {
		deep = `{"type":"array","items":` + deep + `}`
	}
	dag, prev := `"int"`, `"int"`
	for i := range 20 {
		dag = fmt.Sprintf(`{"type":"record","name":"D%d","fields":[{"name":"l","type":%s},{"name":"r","type":%s}]}`, i, dag, prev)
		prev = fmt.Sprintf(`"D%d"`, i)
	}
	for _, tc := range []struct{ name, schema, want string }{
		{"recursion through an array", `{"type":"record","name":"N","fields":[{"name":"kids","type":{"type":"array","items":"N"}}]}`, "recursive"},
		{"recursion through a union", `{"type":"record","name":"L","fields":[{"name":"next","type":["null","L"]}]}`, "recursive"},
		{"recursion through a map", `{"type":"record","name":"M","fields":[{"name":"m","type":{"type":"map","values":"M"}}]}`, "recursive"},
		{"mutual recursion", `{"type":"record","name":"A","fields":[{"name":"b","type":{"type":"record","name":"B","fields":[{"name":"a","type":["null","A"]}]}}]}`, "recursive"},
		{"too deep", deep, "deeper"},
		{"exponential expansion", dag, "expands"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s, err := avro.ParseWithCache(tc.schema, "", &avro.SchemaCache{})
			if err != nil {
				t.Fatal(err)
			}
			_, err = avrowalk.Compile(s)
			if !errors.Is(err, avrowalk.ErrSchema) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %v, want %q", err, tc.want)
			}
		})
	}
	// A schema just within the depth limit and a small DAG compile.
	shallow := `"int"`
	for range avrowalk.MaxDepth {
		shallow = `{"type":"array","items":` + shallow + `}`
	}
	mustCompile(t, shallow)
	mustCompile(t, `{"type":"record","name":"X","fields":[{"name":"a","type":{"type":"record","name":"Y","fields":[{"name":"i","type":"int"}]}},{"name":"b","type":"Y"}]}`)
}

// FuzzValidate holds Validate to the Avro specification on the kitchen-sink
// schema: random valid encodings (drawn from the input) are accepted, and
// whatever it accepts (the input itself) hamba decodes, and re-encodes into
// bytes it accepts again and that decode to the same value. (The
// round trip runs without the logical types, which do not change the
// encoding but which hamba cannot always re-encode: a decimal beyond its
// precision, time-micros beyond a time.Duration.)
func FuzzValidate(f *testing.F) {
	s, w := mustCompile(f, kitchen)
	plain, _ := mustCompile(f, strings.ReplaceAll(kitchen, `"logicalType"`, `"plainType"`))
	for _, seed := range []string{"", "kitchen", strings.Repeat("\x01\x02\x03\xff", 40)} {
		f.Add([]byte(seed))
		f.Add(avrowalktest.Encode(nil, s, avrowalktest.Random{}, avrowalktest.NewSource([]byte(seed))))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		valid := avrowalktest.Encode(nil, s, avrowalktest.Random{}, avrowalktest.NewSource(b))
		if err := w.Validate(valid); err != nil {
			t.Fatalf("valid encoding refused: %v", err)
		}
		checkDecodes(t, s, plain, w, valid)
		if w.Validate(b) == nil {
			checkDecodes(t, s, plain, w, b)
		}
	})
}

// checkDecodes checks that hamba decodes b with s and with plain (s
// without logical types), and that plain's re-encoding is accepted and
// decodes to the same value.
func checkDecodes(t *testing.T, s, plain avro.Schema, w *avrowalk.Schema, b []byte) {
	t.Helper()
	var v any
	if err := avro.Unmarshal(s, b, &v); err != nil {
		t.Fatalf("accepted, but hamba fails: %v", err)
	}
	if err := avro.Unmarshal(plain, b, &v); err != nil {
		t.Fatalf("accepted, but hamba fails: %v", err)
	}
	again, err := avro.Marshal(plain, v)
	if err != nil {
		t.Fatalf("hamba re-encode: %v", err)
	}
	if err := w.Validate(again); err != nil {
		t.Fatalf("hamba's re-encoding refused: %v", err)
	}
	var v2 any
	if err := avro.Unmarshal(plain, again, &v2); err != nil {
		t.Fatal(err)
	}
	if a, b := fmt.Sprint(v), fmt.Sprint(v2); a != b {
		t.Fatalf("decoded %s\nre-decoded %s", a, b)
	}
}

func BenchmarkValidate(b *testing.B) {
	s, w := mustCompile(b, kitchen)
	in := avrowalktest.Encode(nil, s, avrowalktest.Random{}, avrowalktest.NewSource([]byte(strings.Repeat("benchmark entropy ", 20))))
	b.SetBytes(int64(len(in)))
	for b.Loop() {
		if err := w.Validate(in); err != nil {
			b.Fatal(err)
		}
	}
}
