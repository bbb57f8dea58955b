package lookup_test

import (
	"context"
	"encoding/json"
	"net/http"
	"slices"
	"testing"
	"time"

	"github.com/hygiene/pseudonymizer/store"
)

// TestObjections: a system the customer objects to at occurred_at gets no
// pseudonyms (listed under "objected"), a request for objected systems
// only is answered 410 objected, events before the objection and other
// systems are answered as before with unchanged pseudonyms, and a
// withdrawal brings the same pseudonyms back. Every exchange is checked
// against the OpenAPI document.
func TestObjections(t *testing.T) {
	for _, kind := range []string{"embedded", "postgres"} {
		t.Run(kind, func(t *testing.T) {
			w := newWorld(t, kind, false, false)
			eff := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
			at := func(d time.Duration) string { return eff.Add(d).Format(time.RFC3339Nano) }
			ask := func(when string, systems ...string) (int, []byte) {
				t.Helper()
				b, err := json.Marshal(lookupReq{CustomerID: "c-obj", OccurredAt: when, Values: map[string]any{"order_id": "o-1"}, Systems: systems})
				if err != nil {
					t.Fatal(err)
				}
				code, body, _ := exchange(t, http.MethodPost, w.url, "Bearer "+allToken, b, true)
				return code, body
			}
			decode := func(body []byte) (map[string]map[string]string, []string) {
				t.Helper()
				var r struct {
					Pseudonyms map[string]map[string]string `json:"pseudonyms"`
					Objected   []string                     `json:"objected"`
				}
				if err := json.Unmarshal(body, &r); err != nil {
					t.Fatal(err)
				}
				return r.Pseudonyms, r.Objected
			}
			code, body := ask(at(time.Hour), "meta", "tiktok")
			if code != http.StatusOK {
				t.Fatalf("before any objection: %d %s", code, body)
			}
			before, _ := decode(body)

			object := func(reqID string, eff time.Time, systems ...string) {
				t.Helper()
				res, err := w.st.Object(context.Background(), []store.ObjectionRequest{{RequestID: reqID, SubjectID: "c-obj", EffectiveAt: eff, Systems: systems}})
				if err != nil || len(res) != 1 || res[0].Status != store.ObjectionApplied {
					t.Fatalf("Object: %+v, %v", res, err)
				}
			}
			object("obj-1", eff, "meta")

			code, body = ask(at(time.Hour), "meta")
			if code != http.StatusGone || string(body) != "{\"status\":\"objected\"}\n" {
				t.Errorf("objected system only: %d %s, want 410 objected", code, body)
			}
			code, body = ask(at(time.Hour), "meta", "tiktok")
			got, objected := decode(body)
			if code != http.StatusOK || !slices.Equal(objected, []string{"meta"}) || got["meta"] != nil || got["tiktok"]["customer_id"] != before["tiktok"]["customer_id"] || got["tiktok"]["order_id"] != before["tiktok"]["order_id"] {
				t.Errorf("objected and free system: %d %s", code, body)
			}
			code, body = ask(at(-time.Minute), "meta")
			if got, _ := decode(body); code != http.StatusOK || got["meta"]["customer_id"] != before["meta"]["customer_id"] {
				t.Errorf("event before the objection: %d %s, want meta's old pseudonyms", code, body)
			}

			object("obj-2", eff.Add(2*time.Hour)) // withdrawal
			code, body = ask(at(3*time.Hour), "meta")
			if got, _ := decode(body); code != http.StatusOK || got["meta"]["customer_id"] != before["meta"]["customer_id"] || got["meta"]["order_id"] != before["meta"]["order_id"] {
				t.Errorf("after the withdrawal: %d %s, want meta's old pseudonyms", code, body)
			}
			code, _ = ask(at(time.Hour), "meta")
			if code != http.StatusOK {
				// One state per subject (docs/objections.md): the withdrawal
				// replaced the objection, as in the stream.
				t.Errorf("an event inside the withdrawn objection's window: %d, want 200 as the stream does", code)
			}
		})
	}
}
