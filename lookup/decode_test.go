package lookup

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/hygiene/pseudonymizer/processor/policy"
	"github.com/hygiene/pseudonymizer/schema"
)

func testInfo(tb testing.TB) *schemaInfo {
	tb.Helper()
	pols := append(policy.Examples(), policy.Policy{System: "audit", Pseudonymize: []string{"customer_id", "total_minor", "items.quantity", "email"}})
	plan, err := policy.Compile(schema.OrderEventSchema(), pols)
	if err != nil {
		tb.Fatal(err)
	}
	return newSchemaInfo(plan)
}

// decodeCorpus seeds FuzzDecodeRequest.
var decodeCorpus = []string{
	`{"customer_id":"c-1","systems":["meta"]}`,
	`{"customer_id":"c-1","occurred_at":"2026-01-02T03:04:05.678901Z","values":{"order_id":"o","event_id":"e"},"systems":["meta","google-analytics"]}`,
	`{"customer_id":"c-1","values":{"total_minor":-12,"items.quantity":"7","email":"a@b"},"systems":["audit"]}`,
	`{"customer_id":"c","values":{"total_minor":1e3},"systems":["audit"]}`,
	`{"customer_id":"c","occurred_at":"0000-01-01T00:00:00Z","systems":["audit"]}`,
	`{"customer_id":"c","systems":["meta"]} x`,
	`{"customer_id":"\ud800","systems":["meta"]}`,
	`[]`, `null`, `{}`, ``, `{"values":{"a":{}}}`,
}

func TestDecodeRequest(t *testing.T) {
	si := testInfo(t)
	now := time.Date(2026, 1, 1, 0, 0, 0, 123456789, time.UTC)
	r, err := si.decodeRequest([]byte(decodeCorpus[1]), now)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := r.OccurredAt, time.Date(2026, 1, 2, 3, 4, 5, 678000000, time.UTC); !got.Equal(want) {
		t.Errorf("occurred_at %v, want %v (milliseconds)", got, want)
	}
	if len(r.Values) != 2 || r.Values[0].Field.Path != "event_id" || string(r.Values[1].Str) != "o" {
		t.Errorf("values %+v, want event_id then order_id", r.Values)
	}
	r, err = si.decodeRequest([]byte(decodeCorpus[2]), now)
	if err != nil {
		t.Fatal(err)
	}
	if !r.OccurredAt.Equal(now.Truncate(time.Millisecond)) {
		t.Errorf("default occurred_at %v, want now in milliseconds", r.OccurredAt)
	}
	for _, v := range r.Values {
		switch v.Field.Path {
		case "total_minor":
			if v.Field.Kind != policy.KindLong || v.Int != -12 {
				t.Errorf("total_minor %+v", v)
			}
		case "items.quantity":
			if v.Field.Kind != policy.KindInt || v.Int != 7 {
				t.Errorf("items.quantity %+v", v)
			}
		}
	}
	if _, err := si.decodeRequest([]byte(decodeCorpus[3]), now); err == nil {
		t.Errorf("an exponent for a long was accepted")
	}
}

// FuzzDecodeRequest: any body decodes to a request within the limits or to
// a *BadRequestError whose message names no value of the body.
func FuzzDecodeRequest(f *testing.F) {
	for _, s := range decodeCorpus {
		f.Add([]byte(s))
	}
	si := testInfo(f)
	now := time.Now()
	f.Fuzz(func(t *testing.T, body []byte) {
		r, err := si.decodeRequest(body, now)
		if err != nil {
			var be *BadRequestError
			if !errors.As(err, &be) {
				t.Fatalf("error %v is not a BadRequestError", err)
			}
			// Values of 6 or more bytes that the body carries must not be
			// echoed (shorter ones may collide with the message's words).
			var w struct {
				CustomerID string          `json:"customer_id"`
				Values     map[string]any  `json:"values"`
				Systems    json.RawMessage `json:"systems"`
			}
			_ = json.Unmarshal(body, &w)
			if len(w.CustomerID) >= 6 && strings.Contains(be.Msg, w.CustomerID) {
				t.Fatalf("message %q echoes customer_id", be.Msg)
			}
			for k, v := range w.Values {
				if s, ok := v.(string); ok && len(s) >= 6 && strings.Contains(be.Msg, s) {
					t.Fatalf("message %q echoes a value", be.Msg)
				}
				if _, known := si.fields[k]; !known && len(k) >= 6 && strings.Contains(be.Msg, k) && !strings.Contains(si.known, k) {
					t.Fatalf("message %q echoes an unknown key", be.Msg)
				}
			}
			return
		}
		switch {
		case r.CustomerID == "" || len(r.CustomerID) > MaxIDBytes:
			t.Fatalf("customer_id of %d bytes accepted", len(r.CustomerID))
		case len(r.Systems) == 0 || len(r.Values) > MaxValues:
			t.Fatalf("%d systems, %d values accepted", len(r.Systems), len(r.Values))
		case r.OccurredAt.Year() < 1 || r.OccurredAt.Year() > 9999 || r.OccurredAt.Nanosecond()%int(time.Millisecond) != 0:
			t.Fatalf("occurred_at %v accepted", r.OccurredAt)
		}
		for _, v := range r.Values {
			if len(v.Str) > MaxValueBytes {
				t.Fatalf("value of %d bytes accepted", len(v.Str))
			}
		}
	})
}

// equivalenceCorpus seeds FuzzDecodeRequestEquivalence with what the
// hand-written decoder must treat as encoding/json did: case-insensitive
// and repeated members, nulls, escapes and invalid UTF-8, wrong types,
// unknown members, syntax errors at every kind of token, deep nesting.
var equivalenceCorpus = []string{
	`{"CUSTOMER_ID":"c","Systems":["meta"],"ſystems":["audit"]}`,
	`{"customer_id":"c","customer_id":null,"systems":["meta"]}`,
	`{"customer_id":"c\u00e9\ud83d\ude00\ud800x\\\/\b\f\n\r\t","systems":["me\u0074a"]}`,
	"{\"customer_id\":\"\xff\xed\xa0\x80\",\"systems\":[\"meta\"]}",
	`{"customer_id":1,"bogus":2,"systems":["meta"]}`,
	`{"bogus":2,"customer_id":1,"systems":["meta"]}`,
	`{"customer_id":"c","values":[],"systems":["meta"]}`,
	`{"customer_id":"c","values":"x","systems":{}}`,
	`{"customer_id":"c","values":{"order_id":"a"},"values":{"event_id":"b"},"systems":["meta"]}`,
	`{"customer_id":"c","values":{"order_id":"a"},"values":null,"systems":["meta"]}`,
	`{"customer_id":"c","values":{"order_id":"a","order_id":"b"},"systems":["meta"]}`,
	`{"customer_id":"c","values":{"zz":"a","customer_id":"b","total_minor":[1, 2]},"systems":["audit"]}`,
	`{"customer_id":"c","values":{"total_minor":"12","items.quantity":2147483648},"systems":["audit"]}`,
	`{"customer_id":"c","values":{"total_minor":123456789012345678901234567890123},"systems":["audit"]}`,
	`{"customer_id":"c","systems":["meta","meta"]}`,
	`{"customer_id":"c","systems":[null,1]}`,
	`{"customer_id":"c","systems":["meta","tiktok","google-analytics","audit","x"]}`,
	`{"customer_id":"c","occurred_at":"2026-13-01T00:00:00Z","systems":["meta"]}`,
	`{"customer_id":"c","occurred_at":null,"systems":["meta"]}`,
	`{"customer_id":"c","systems":["meta"]}   `,
	`{"customer_id":"c","systems":["meta"]}]`,
	`{"customer_id":"c","systems":["meta"],}`,
	`{"customer_id" "c"}`, `{"customer_id":"c" "x"}`, `{"a":[1 2]}`, `{"a":-}`, `{"a":01}`,
	`{"a":1.}`, `{"a":1e}`, `{"a":1e+}`, `{"a":-0.5e-3}`, `{"a":tru}`, `{"a":nulL}`, `{"a":"\x"}`,
	`{"a":"\u12G4"}`, "{\"a\":\"\x01\"}", `{"a":{"b":}}`, `{"a":{,}}`, `{"a":[,]}`, `{"a":[1,]}`,
	`{"a"`, `{"a":`, `{"a":"`, `{"a":[`, `-`, `12`, `12 x`, `"s"`, `true`, `nul`, ` `, `}`, "\xef\xbb\xbf{}",
	`{"values":{"a":` + strings.Repeat("[", maxNestingDepth-2) + strings.Repeat("]", maxNestingDepth-2) + `}}`,
	`{"values":{"a":` + strings.Repeat("[", maxNestingDepth-1) + strings.Repeat("]", maxNestingDepth-1) + `}}`,
	`{"values":{` + strings.Repeat(`"order_id":"x",`, 70) + `"event_id":"y"},"customer_id":"c","systems":["meta"]}`,
}

// FuzzDecodeRequestEquivalence: the hand-written decoder answers every
// body as the encoding/json decoder it replaced (request_std_test.go):
// the same request, or the same message.
func FuzzDecodeRequestEquivalence(f *testing.F) {
	for _, s := range append(decodeCorpus, equivalenceCorpus...) {
		f.Add([]byte(s))
	}
	si := testInfo(f)
	now := time.Date(2026, 1, 1, 0, 0, 0, 123456789, time.UTC)
	f.Fuzz(func(t *testing.T, body []byte) {
		want, wantErr := si.decodeRequestStd(body, now)
		got, gotErr := si.decodeRequest(body, now)
		if (wantErr == nil) != (gotErr == nil) || wantErr != nil && gotErr.Error() != wantErr.Error() {
			t.Fatalf("error %v, want %v", gotErr, wantErr)
		}
		if wantErr != nil {
			var be *BadRequestError
			if !errors.As(gotErr, &be) {
				t.Fatalf("error %v is not a BadRequestError", gotErr)
			}
			return
		}
		if got.CustomerID != want.CustomerID || !got.OccurredAt.Equal(want.OccurredAt) || !slices.Equal(got.Systems, want.Systems) ||
			!slices.EqualFunc(got.Values, want.Values, func(a, b Value) bool { return a.Field == b.Field && bytes.Equal(a.Str, b.Str) && a.Int == b.Int }) {
			t.Fatalf("request %+v, want %+v", got, want)
		}
	})
}

// TestDecodeRequestEquivalence runs the equivalence corpus as a test, so
// that it runs without -fuzz too (and names the case that differs).
func TestDecodeRequestEquivalence(t *testing.T) {
	si := testInfo(t)
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	for i, s := range append(decodeCorpus, equivalenceCorpus...) {
		want, wantErr := si.decodeRequestStd([]byte(s), now)
		got, gotErr := si.decodeRequest([]byte(s), now)
		if fmt.Sprint(gotErr) != fmt.Sprint(wantErr) || (wantErr == nil && (got.CustomerID != want.CustomerID || !slices.Equal(got.Systems, want.Systems) || len(got.Values) != len(want.Values))) {
			t.Errorf("case %d (%.60q): got %v, %v; want %v, %v", i, s, got, gotErr, want, wantErr)
		}
	}
}

// BenchmarkDecodeRequest: a typical body (the load benchmarks').
func BenchmarkDecodeRequest(b *testing.B) {
	si := testInfo(b)
	body := []byte(`{"customer_id":"known-1234","occurred_at":"2026-01-01T00:00:00Z","values":{"order_id":"order-1234","event_id":"ev-1234"},"systems":["google-analytics","meta","tiktok"]}`)
	now := time.Now()
	b.Run("hand", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if _, err := si.decodeRequest(body, now); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("encoding-json", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if _, err := si.decodeRequestStd(body, now); err != nil {
				b.Fatal(err)
			}
		}
	})
}
