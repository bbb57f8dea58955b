package policy

import (
	"encoding/json"
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/hamba/avro/v2"
	"github.com/hygiene/pseudonymizer/schema"
)

var update = flag.Bool("update", false, "rewrite golden files")

func TestCompileErrors(t *testing.T) {
	ids := []string{"event_id", "order_id", "customer_id"}
	long := strings.Repeat("a", 101)
	tests := []struct {
		name     string
		policies []Policy
		want     string
	}{
		{"no systems", nil, `policy: no systems configured`},
		{"empty system", []Policy{{Pseudonymize: ids}}, `policy: empty system name`},
		{"system charset", []Policy{{System: "a b", Pseudonymize: ids}}, `policy: system "a b": name may only contain A-Z a-z 0-9 . _ -`},
		{"system too long", []Policy{{System: long, Pseudonymize: ids}}, `policy: system "aaaaaaaaaaaaaaaaaaaa"...: name longer than 100 characters`},
		{"system twice", []Policy{{System: "m", Pseudonymize: ids}, {System: "m", Pseudonymize: ids}}, `policy: system "m": configured twice`},
		{"no subject", []Policy{{System: "m", Keep: []string{"event_type"}, Pseudonymize: []string{"order_id"}}},
			`policy: system "m": no pseudonymized subject: customer_id must be in pseudonymize`},
		{"subject kept", []Policy{{System: "m", Keep: []string{"customer_id"}}},
			`policy: system "m": no pseudonymized subject: customer_id must be in pseudonymize`},
		{"empty path", []Policy{{System: "m", Keep: []string{""}, Pseudonymize: ids}}, `policy: system "m": empty path`},
		{"empty segment", []Policy{{System: "m", Keep: []string{"shipping_address..city"}, Pseudonymize: ids}},
			`policy: system "m": path "shipping_address..city": empty segment`},
		{"leading dot", []Policy{{System: "m", Keep: []string{".currency"}, Pseudonymize: ids}}, `policy: system "m": path ".currency": empty segment`},
		{"trailing dot", []Policy{{System: "m", Keep: []string{"currency."}, Pseudonymize: ids}}, `policy: system "m": path "currency.": empty segment`},
		{"space", []Policy{{System: "m", Keep: []string{"currency "}, Pseudonymize: ids}},
			`policy: system "m": path "currency ": contains space or control characters`},
		{"bad utf8", []Policy{{System: "m", Keep: []string{"a\xff"}, Pseudonymize: ids}}, `policy: system "m": path "a\xff": invalid UTF-8`},
		{"unknown field", []Policy{{System: "m", Keep: []string{"shipping_address.county"}, Pseudonymize: ids}},
			`policy: system "m": path "shipping_address.county": unknown field`},
		{"unknown top", []Policy{{System: "m", Keep: []string{"password"}, Pseudonymize: ids}}, `policy: system "m": path "password": unknown field`},
		{"into scalar", []Policy{{System: "m", Keep: []string{"currency.code"}, Pseudonymize: ids}}, `policy: system "m": path "currency.code": unknown field`},
		{"into map value", []Policy{{System: "m", Keep: []string{"attributes.utm_source.x"}, Pseudonymize: ids}},
			`policy: system "m": path "attributes.utm_source.x": unknown field`},
		{"kept and pseudonymized", []Policy{{System: "m", Keep: []string{"email"}, Pseudonymize: append(ids, "email")}},
			`policy: system "m": path "email": both kept and pseudonymized`},
		{"overlap parent first", []Policy{{System: "m", Keep: []string{"shipping_address"}, Pseudonymize: append(ids, "shipping_address.city")}},
			`policy: system "m": path "shipping_address.city": overlaps "shipping_address"`},
		{"overlap child first", []Policy{{System: "m", Keep: []string{"shipping_address.city", "shipping_address"}, Pseudonymize: ids}},
			`policy: system "m": path "shipping_address": overlaps a longer path`},
		{"duplicate", []Policy{{System: "m", Keep: []string{"currency", "currency"}, Pseudonymize: ids}}, `policy: system "m": path "currency": listed twice`},
		{"duplicate pseudo", []Policy{{System: "m", Pseudonymize: append(ids, "order_id")}}, `policy: system "m": path "order_id": listed twice`},
		{"pseudo record", []Policy{{System: "m", Pseudonymize: append(ids, "shipping_address")}},
			`policy: system "m": path "shipping_address": only string, int and long fields (or nullable ones) can be pseudonymized`},
		{"pseudo array", []Policy{{System: "m", Pseudonymize: append(ids, "items")}},
			`policy: system "m": path "items": only string, int and long fields (or nullable ones) can be pseudonymized`},
		{"pseudo map", []Policy{{System: "m", Pseudonymize: append(ids, "attributes")}},
			`policy: system "m": path "attributes": only string, int and long fields (or nullable ones) can be pseudonymized`},
		{"pseudo enum", []Policy{{System: "m", Pseudonymize: append(ids, "event_type")}},
			`policy: system "m": path "event_type": only string, int and long fields (or nullable ones) can be pseudonymized`},
		{"empty header", []Policy{{System: "m", Pseudonymize: ids, Headers: []string{""}}}, `policy: system "m": header "": invalid name`},
		{"header twice", []Policy{{System: "m", Pseudonymize: ids, Headers: []string{"a", "a"}}}, `policy: system "m": header "a": listed twice`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Compile(schema.OrderEventSchema(), tt.policies)
			got := "<nil>"
			if err != nil {
				got = err.Error()
			}
			if got != tt.want {
				t.Errorf("Compile error\n got %s\nwant %s", got, tt.want)
			}
		})
	}
}

func TestCompileInputSchemaErrors(t *testing.T) {
	pol := []Policy{minPolicy}
	tests := []struct {
		name, schema, want string
	}{
		{"not a record", `"string"`, `policy: input schema: top level is a string, not a record`},
		{"missing customer_id", `{"type":"record","name":"R","fields":[{"name":"event_id","type":"string"},{"name":"order_id","type":"string"},{"name":"occurred_at","type":"long"}]}`,
			`policy: input schema: field customer_id must exist and be a string`},
		{"occurred_at int", `{"type":"record","name":"R","fields":[{"name":"event_id","type":"string"},{"name":"order_id","type":"string"},{"name":"customer_id","type":"string"},{"name":"occurred_at","type":"int"}]}`,
			`policy: input schema: field occurred_at must exist and be a long`},
	}
	for _, tt := range tests {
		s, err := avro.ParseWithCache(tt.schema, "", &avro.SchemaCache{})
		if err != nil {
			t.Fatal(err)
		}
		_, err = Compile(s, pol)
		if err == nil || err.Error() != tt.want {
			t.Errorf("%s: got %v, want %s", tt.name, err, tt.want)
		}
	}
	if _, err := Compile(nil, pol); err == nil {
		t.Error("nil schema accepted")
	}
}

func TestSystemsAndHeaders(t *testing.T) {
	p := mustCompile(allPolicies...)
	got := strings.Join(p.Systems(), ",")
	if want := "google-analytics,meta,crm.v2,9tiktok,min"; got != want {
		t.Errorf("Systems() = %s, want %s", got, want)
	}
	if h := p.Headers(2); len(h) != 1 || h[0] != "traceparent" {
		t.Errorf("Headers(2) = %v", h)
	}
	if h := p.Headers(0); len(h) != 0 {
		t.Errorf("Headers(0) = %v", h)
	}
}

func TestAvroName(t *testing.T) {
	for in, want := range map[string]string{
		"google-analytics": "google_analytics", "meta": "meta", "crm.v2": "crm_v2", "9tiktok": "_9tiktok", "A_b-1": "A_b_1",
	} {
		if got := avroName(in); got != want {
			t.Errorf("avroName(%q) = %q, want %q", in, got, want)
		}
	}
}

// TestOutputSchemaGolden compares each system's full output schema JSON
// with testdata/<system>.avsc (go test -update rewrites them) and checks
// that it parses back to the same canonical form.
func TestOutputSchemaGolden(t *testing.T) {
	p := mustCompile(allPolicies...)
	for i, sys := range p.Systems() {
		t.Run(sys, func(t *testing.T) {
			got, err := json.MarshalIndent(p.OutputSchema(i), "", "  ")
			if err != nil {
				t.Fatal(err)
			}
			got = append(got, '\n')
			file := filepath.Join("testdata", sys+".avsc")
			if *update {
				if err := os.WriteFile(file, got, 0o644); err != nil {
					t.Fatal(err)
				}
			}
			want, err := os.ReadFile(file)
			if err != nil {
				t.Fatal(err)
			}
			if string(got) != string(want) {
				t.Errorf("output schema differs from %s:\n%s", file, got)
			}
			parsed, err := avro.ParseWithCache(string(got), "", &avro.SchemaCache{})
			if err != nil {
				t.Fatalf("output schema does not parse: %v", err)
			}
			if parsed.String() != p.OutputSchema(i).String() {
				t.Errorf("reparsed canonical form differs:\n got %s\nwant %s", parsed.String(), p.OutputSchema(i).String())
			}
		})
	}
}

// TestOutputSchemaCanonical pins the canonical form of the docs/configuration.md
// example systems.
func TestOutputSchemaCanonical(t *testing.T) {
	p := mustCompile(gaPolicy, metaPolicy)
	tests := []struct {
		system int
		want   string
	}{
		{0, `{"name":"hygiene.v1.pseudo.google_analytics.OrderEvent","type":"record","fields":[` +
			`{"name":"event_id","type":"string"},` +
			`{"name":"event_type","type":{"name":"hygiene.v1.pseudo.google_analytics.OrderEventType","type":"enum","symbols":["PLACED","UPDATED","CANCELLED","REFUNDED"]}},` +
			`{"name":"occurred_at","type":{"type":"long","logicalType":"timestamp-millis"}},` +
			`{"name":"order_id","type":"string"},{"name":"customer_id","type":"string"},` +
			`{"name":"currency","type":"string"},{"name":"total_minor","type":"long"},` +
			`{"name":"items","type":{"type":"array","items":{"name":"hygiene.v1.pseudo.google_analytics.LineItem","type":"record","fields":[{"name":"sku","type":"string"},{"name":"quantity","type":"int"},{"name":"unit_price_minor","type":"long"}]}}},` +
			`{"name":"attributes","type":{"type":"map","values":"string"}}]}`},
		{1, `{"name":"hygiene.v1.pseudo.meta.OrderEvent","type":"record","fields":[` +
			`{"name":"event_id","type":"string"},` +
			`{"name":"event_type","type":{"name":"hygiene.v1.pseudo.meta.OrderEventType","type":"enum","symbols":["PLACED","UPDATED","CANCELLED","REFUNDED"]}},` +
			`{"name":"occurred_at","type":{"type":"long","logicalType":"timestamp-millis"}},` +
			`{"name":"order_id","type":"string"},{"name":"customer_id","type":"string"},` +
			`{"name":"shipping_address","type":["null",{"name":"hygiene.v1.pseudo.meta.Address","type":"record","fields":[{"name":"country","type":"string"}]}]},` +
			`{"name":"currency","type":"string"},{"name":"total_minor","type":"long"}]}`},
	}
	for _, tt := range tests {
		if got := p.OutputSchema(tt.system).String(); got != tt.want {
			t.Errorf("system %d:\n got %s\nwant %s", tt.system, got, tt.want)
		}
	}
}

func FuzzCompile(f *testing.F) {
	for _, p := range allPolicies {
		for _, k := range append(p.Keep, p.Pseudonymize...) {
			f.Add(k, true)
			f.Add(k, false)
		}
	}
	for _, s := range []string{"", ".", "..", "a..b", "shipping_address.", "attributes.\x00", "items.sku.x", "attributes.a.b.c"} {
		f.Add(s, false)
	}
	in := schema.OrderEventSchema()
	f.Fuzz(func(t *testing.T, path string, keep bool) {
		pol := Policy{System: "s", Pseudonymize: []string{"customer_id"}}
		if keep {
			pol.Keep = []string{path}
		} else {
			pol.Pseudonymize = append(pol.Pseudonymize, path)
		}
		p, err := Compile(in, []Policy{pol})
		if err != nil {
			if strings.Contains(err.Error(), "\n") {
				t.Fatalf("multi-line error: %q", err)
			}
			return
		}
		if _, err := avro.ParseWithCache(p.OutputSchema(0).String(), "", &avro.SchemaCache{}); err != nil {
			t.Fatalf("path %q: output schema does not parse: %v", path, err)
		}
		if segs, err := parsePath(path); err != nil || len(segs) == 0 {
			t.Fatalf("path %q compiled but does not parse: %v", path, err)
		}
	})
}
