package lookup

import (
	"encoding/json"
	"errors"
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
