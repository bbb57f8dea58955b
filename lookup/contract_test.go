package lookup_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/getkin/kin-openapi/openapi3"
	"github.com/getkin/kin-openapi/openapi3filter"
	"github.com/getkin/kin-openapi/routers"
	"github.com/getkin/kin-openapi/routers/legacy"

	"github.com/hygiene/pseudonymizer/lookup"
	"github.com/hygiene/pseudonymizer/store"
)

// contract is docs/lookup-api.yaml, loaded and checked by kin-openapi.
type contract struct {
	doc    *openapi3.T
	router routers.Router
}

var loadContract = sync.OnceValues(func() (*contract, error) {
	loader := openapi3.NewLoader()
	doc, err := loader.LoadFromFile("../docs/lookup-api.yaml")
	if err != nil {
		return nil, err
	}
	if !doc.IsOpenAPI31OrLater() {
		return nil, errors.New("docs/lookup-api.yaml is not OpenAPI 3.1")
	}
	if err := doc.Validate(context.Background()); err != nil {
		return nil, fmt.Errorf("docs/lookup-api.yaml: %w", err)
	}
	// The document names a production server; route by path alone.
	doc.Servers = nil
	r, err := legacy.NewRouter(doc)
	if err != nil {
		return nil, err
	}
	return &contract{doc: doc, router: r}, nil
})

func mustContract(t *testing.T) *contract {
	t.Helper()
	c, err := loadContract()
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// check validates a real exchange against the contract: the response
// always (status documented, headers, body), the request when valid is
// true.
func (c *contract) check(t *testing.T, req *http.Request, reqBody []byte, valid bool, code int, hdr http.Header, body []byte) {
	t.Helper()
	ctx := context.Background()
	route, params, err := c.router.FindRoute(req)
	if err != nil {
		// Another path or method: the body is still an Error.
		var v any
		if err := json.Unmarshal(body, &v); err != nil {
			t.Fatalf("%d: body is not JSON: %v", code, err)
		}
		if err := c.doc.Components.Schemas["Error"].Value.VisitJSON(v, openapi3.EnableJSONSchema2020()); err != nil {
			t.Errorf("%d: body is not an Error: %v", code, err)
		}
		return
	}
	in := &openapi3filter.RequestValidationInput{
		Request: req, PathParams: params, Route: route,
		Options: &openapi3filter.Options{AuthenticationFunc: openapi3filter.NoopAuthenticationFunc, IncludeResponseStatus: true},
	}
	if valid {
		r2 := req.Clone(ctx)
		r2.Body = io.NopCloser(bytes.NewReader(reqBody))
		in2 := *in
		in2.Request = r2
		if err := openapi3filter.ValidateRequest(ctx, &in2); err != nil {
			t.Errorf("a request the API accepted does not match the contract: %v", err)
		}
	}
	out := &openapi3filter.ResponseValidationInput{
		RequestValidationInput: in, Status: code, Header: hdr, Body: io.NopCloser(bytes.NewReader(body)),
		Options: in.Options,
	}
	if err := openapi3filter.ValidateResponse(ctx, out); err != nil {
		t.Errorf("response %d %s does not match the contract: %v", code, body, err)
	}
}

// exchange sends a request and validates it and its response against the
// contract.
func exchange(t *testing.T, method, url, token string, body []byte, validReq bool) (int, []byte, http.Header) {
	t.Helper()
	req, err := http.NewRequest(method, url, bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	if token != "" {
		req.Header.Set("Authorization", token)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	rb, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	mustContract(t).check(t, req, body, validReq, resp.StatusCode, resp.Header, rb)
	return resp.StatusCode, rb, resp.Header
}

// failingStore fails every call, as an unreachable store does.
type failingStore struct{ lookup.Store }

func (failingStore) Resolve(context.Context, []store.Lookup) ([]store.Entry, error) {
	return nil, fmt.Errorf("resolve: %w", store.ErrUnavailable)
}

func (failingStore) Guard(context.Context, store.Position) (store.Guard, error) {
	return nil, fmt.Errorf("guard: %w", store.ErrUnavailable)
}

// raw is a customer ID and value that must never come back in a response.
const raw = "RAW-CUSTOMER-7f3a9"

// TestErrors: every status the API answers, each validated against the
// OpenAPI document, none echoing a value the caller sent.
func TestErrors(t *testing.T) {
	w := newWorld(t, "embedded", false, false, func(c *lookup.Config) {
		c.Tokens = append(c.Tokens, tokenEntry("slow", "pzl_slow", 0.001, "meta"))
	})
	bearer := "Bearer " + allToken
	big := strings.Repeat("x", lookup.MaxValueBytes+1)
	ok := fmt.Sprintf(`{"customer_id":%q,"occurred_at":"2026-01-02T03:04:05.678Z","values":{"order_id":%q},"systems":["meta"]}`, raw, raw)
	manyValues := map[string]any{}
	for i := range lookup.MaxValues + 1 {
		manyValues[fmt.Sprintf("v%d", i)] = raw
	}
	many, _ := json.Marshal(map[string]any{"customer_id": raw, "values": manyValues, "systems": []string{"meta"}})
	for _, tc := range []struct {
		name, method, path, auth, body string
		code                           int
		msg                            string // a part of the error message
	}{
		{"ok", "POST", lookup.Path, bearer, ok, 200, ""},
		{"default occurred_at", "POST", lookup.Path, bearer, fmt.Sprintf(`{"customer_id":%q,"systems":["crm"]}`, raw), 200, ""},
		{"malformed", "POST", lookup.Path, bearer, `{"customer_id":` + raw, 400, "malformed JSON"},
		{"empty body", "POST", lookup.Path, bearer, ``, 400, "malformed JSON"},
		{"not an object", "POST", lookup.Path, bearer, `["` + raw + `"]`, 400, "JSON object"},
		{"trailing data", "POST", lookup.Path, bearer, ok + `{}`, 400, "data after"},
		{"unknown member", "POST", lookup.Path, bearer, fmt.Sprintf(`{"customer_id":"a","systems":["meta"],%q:1}`, raw), 400, "a member other than"},
		{"no customer_id", "POST", lookup.Path, bearer, `{"systems":["meta"]}`, 400, "customer_id is required"},
		{"empty customer_id", "POST", lookup.Path, bearer, `{"customer_id":"","systems":["meta"]}`, 400, "customer_id is empty"},
		{"customer_id too long", "POST", lookup.Path, bearer, fmt.Sprintf(`{"customer_id":%q,"systems":["meta"]}`, strings.Repeat(raw, 1000)), 400, "longer than 4096"},
		{"customer_id a number", "POST", lookup.Path, bearer, `{"customer_id":12,"systems":["meta"]}`, 400, "customer_id has the wrong type"},
		{"bad occurred_at", "POST", lookup.Path, bearer, fmt.Sprintf(`{"customer_id":"a","occurred_at":%q,"systems":["meta"]}`, raw), 400, "occurred_at is not an RFC 3339"},
		{"no systems", "POST", lookup.Path, bearer, `{"customer_id":"a","systems":[]}`, 400, "systems is required"},
		{"unknown system", "POST", lookup.Path, bearer, fmt.Sprintf(`{"customer_id":"a","systems":[%q]}`, raw), 400, "systems[0] is not a configured system"},
		{"repeated system", "POST", lookup.Path, bearer, `{"customer_id":"a","systems":["meta","meta"]}`, 400, "systems[1] repeats"},
		{"system not a string", "POST", lookup.Path, bearer, `{"customer_id":"a","systems":[1]}`, 400, "systems[0] is not a string"},
		{"unknown field", "POST", lookup.Path, bearer, fmt.Sprintf(`{"customer_id":"a","values":{%q:"x"},"systems":["meta"]}`, raw), 400, "no configured system pseudonymizes"},
		{"kept field", "POST", lookup.Path, bearer, `{"customer_id":"a","values":{"currency":"EUR"},"systems":["meta"]}`, 400, "no configured system pseudonymizes"},
		{"customer_id in values", "POST", lookup.Path, bearer, `{"customer_id":"a","values":{"customer_id":"a"},"systems":["meta"]}`, 400, "must not contain customer_id"},
		{"string for a long", "POST", lookup.Path, bearer, fmt.Sprintf(`{"customer_id":"a","values":{"total_minor":%q},"systems":["audit"]}`, raw), 400, "values.total_minor must be an integer"},
		{"fraction for a long", "POST", lookup.Path, bearer, `{"customer_id":"a","values":{"total_minor":1.5},"systems":["audit"]}`, 400, "values.total_minor must be an integer"},
		{"int out of range", "POST", lookup.Path, bearer, `{"customer_id":"a","values":{"items.quantity":4294967296},"systems":["audit"]}`, 400, "integer of 32 bits"},
		{"number for a string", "POST", lookup.Path, bearer, `{"customer_id":"a","values":{"order_id":12},"systems":["meta"]}`, 400, "values.order_id must be a string"},
		{"null value", "POST", lookup.Path, bearer, `{"customer_id":"a","values":{"order_id":null},"systems":["meta"]}`, 400, "values.order_id must be a string"},
		{"value too long", "POST", lookup.Path, bearer, fmt.Sprintf(`{"customer_id":"a","values":{"order_id":%q},"systems":["meta"]}`, big), 400, "values.order_id is longer than 4096"},
		{"too many values", "POST", lookup.Path, bearer, string(many), 400, "more than 64"},
		{"body too large", "POST", lookup.Path, bearer, fmt.Sprintf(`{"customer_id":%q,"systems":["meta"]}`, strings.Repeat("y", lookup.MaxBodyBytes)), 400, "larger than 65536"},
		{"no token", "POST", lookup.Path, "", ok, 401, "bearer token"},
		{"wrong token", "POST", lookup.Path, "Bearer pzl_" + raw, ok, 401, "bearer token"},
		{"basic auth", "POST", lookup.Path, "Basic " + allToken, ok, 401, "bearer token"},
		{"system not allowed", "POST", lookup.Path, "Bearer " + metaToken, fmt.Sprintf(`{"customer_id":%q,"systems":["meta","google-analytics"]}`, raw), 403, "systems[1] is not allowed"},
		{"other path", "POST", "/v1/other", bearer, ok, 404, "not found"},
		{"GET", "GET", lookup.Path, bearer, "", 405, "use POST"},
		{"first of a slow token", "POST", lookup.Path, "Bearer pzl_slow", ok, 200, ""},
		{"over the rate", "POST", lookup.Path, "Bearer pzl_slow", ok, 429, "rate"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			code, body, hdr := exchange(t, tc.method, w.api.ts.URL+tc.path, tc.auth, []byte(tc.body), tc.code == 200)
			if code != tc.code {
				t.Fatalf("%d %s, want %d", code, body, tc.code)
			}
			if strings.Contains(string(body), raw) || strings.Contains(string(body), "xxxxxxxx") {
				t.Errorf("the response echoes a value the caller sent: %s", body)
			}
			if hdr.Get("Cache-Control") != "no-store" {
				t.Errorf("Cache-Control %q, want no-store", hdr.Get("Cache-Control"))
			}
			if tc.msg != "" && !strings.Contains(string(body), tc.msg) {
				t.Errorf("body %s, want a message with %q", body, tc.msg)
			}
			switch code {
			case 401:
				if !strings.HasPrefix(hdr.Get("WWW-Authenticate"), "Bearer") {
					t.Errorf("401 without WWW-Authenticate: Bearer")
				}
			case 429:
				if hdr.Get("Retry-After") == "" {
					t.Errorf("429 without Retry-After")
				}
			}
		})
	}

	t.Run("503 store unavailable", func(t *testing.T) {
		s := mustServe(t, lookup.Config{Plan: w.plan, Store: failingStore{}, Tokens: []lookup.Token{tokenEntry("shop", allToken, 1e6, "meta")}})
		code, body, hdr := exchange(t, "POST", s.URL(), bearer, []byte(ok), true)
		if code != 503 || hdr.Get("Retry-After") == "" {
			t.Fatalf("%d %s (Retry-After %q), want 503 with Retry-After", code, body, hdr.Get("Retry-After"))
		}
	})

	t.Run("410 suppressed", func(t *testing.T) {
		at := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
		if _, err := w.st.Forget(context.Background(), []store.ForgetRequest{{RequestID: "r", SubjectID: "gone", RequestedAt: at}}); err != nil {
			t.Fatal(err)
		}
		body := `{"customer_id":"gone","occurred_at":"2026-01-02T03:04:05Z","systems":["meta"]}`
		code, rb, _ := exchange(t, "POST", w.url, bearer, []byte(body), true)
		if code != 410 || string(rb) != "{\"status\":\"suppressed\"}\n" {
			t.Fatalf("%d %s, want 410 suppressed", code, rb)
		}
	})
}
