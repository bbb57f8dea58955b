package registry_test

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hamba/avro/v2"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/twmb/franz-go/pkg/sr"
	"github.com/twmb/franz-go/pkg/sr/srfake"

	"github.com/hygiene/pseudonymizer/internal/config"
	"github.com/hygiene/pseudonymizer/processor/policy"
	"github.com/hygiene/pseudonymizer/processor/pseudonym"
	"github.com/hygiene/pseudonymizer/schema"
	"github.com/hygiene/pseudonymizer/schema/registry"
)

// world is a fake registry, a client of it and a wire.
type world struct {
	fake     *srfake.Registry
	cl       *sr.Client
	plan     *policy.Plan
	topics   config.Topics
	wire     *registry.Wire
	reg      *prometheus.Registry
	requests atomic.Int64 // GET /schemas/ids/... requests
	logs     *syncBuffer
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// testPolicies are the first two example systems.
func testPolicies() []policy.Policy { return policy.Examples()[:2] }

func newWorld(t testing.TB, fakeOpts []srfake.Option, clOpts ...sr.ClientOpt) *world {
	t.Helper()
	w := &world{fake: srfake.New(fakeOpts...), topics: config.Default().Topics, reg: prometheus.NewRegistry(), logs: &syncBuffer{}}
	t.Cleanup(w.fake.Close)
	w.fake.Intercept(func(_ http.ResponseWriter, r *http.Request) bool {
		if strings.HasPrefix(r.URL.Path, "/schemas/ids/") {
			w.requests.Add(1)
		}
		return false
	})
	var err error
	if w.cl, err = sr.NewClient(append([]sr.ClientOpt{sr.URLs(w.fake.URL())}, clOpts...)...); err != nil {
		t.Fatal(err)
	}
	if w.plan, err = policy.Compile(schema.OrderEventSchema(), testPolicies()); err != nil {
		t.Fatal(err)
	}
	return w
}

// outputs are the plan's systems with their output topics and schemas.
func (w *world) outputs() []registry.Output {
	var out []registry.Output
	for i, sys := range w.plan.Systems() {
		out = append(out, registry.Output{System: sys, Topic: w.topics.PseudoPrefix + sys, Schema: w.plan.OutputSchema(i)})
	}
	return out
}

// start builds the wire (registering the output schemas).
func (w *world) start(t testing.TB) *registry.Wire {
	t.Helper()
	wire, err := registry.New(context.Background(), w.cl, w.outputs(), w.topics.Forgotten,
		registry.WithLogger(slog.New(slog.NewTextHandler(w.logs, nil))), registry.WithRegisterer(w.reg))
	if err != nil {
		t.Fatal(err)
	}
	w.wire = wire
	return wire
}

// registerWriter registers an OrderEvent writer schema under orders.raw-value.
func (w *world) registerWriter(t *testing.T, text string) int {
	t.Helper()
	id, _, err := w.fake.RegisterSchema(registry.Subject(w.topics.Orders), sr.Schema{Schema: text})
	if err != nil {
		t.Fatal(err)
	}
	return id
}

// frame prepends the wire format header.
func frame(id int, body []byte) []byte {
	out := []byte{0, 0, 0, 0, 0}
	binary.BigEndian.PutUint32(out[1:], uint32(id))
	return append(out, body...)
}

func ptr[T any](v T) *T { return &v }

func sampleEvent() *schema.OrderEvent {
	return &schema.OrderEvent{
		EventID: "7d7d1c7e-0d7a-4a43-9c55-1f4c3a1a0b01", EventType: schema.Placed,
		OccurredAt: time.UnixMilli(1_760_000_000_123).UTC(), OrderID: "ord-1001", CustomerID: "cust-42",
		Email: ptr("ada@example.com"), Phone: ptr("+49 30 1234567"),
		ShippingAddress: &schema.Address{Line1: "Hauptstr. 1", PostalCode: "10115", City: "Berlin", Country: "DE"},
		Currency:        "EUR", TotalMinor: 4200,
		Items:      []schema.LineItem{{SKU: "sku-1", Quantity: 2, UnitPriceMinor: 2100}},
		Attributes: map[string]string{"utm_source": "newsletter", "gclid": "abc"},
	}
}

// evolve returns the bundled OrderEvent schema text changed by f, which
// gets the top-level fields.
func evolve(t *testing.T, f func(fields []any) []any) string {
	t.Helper()
	var m map[string]any
	if err := json.Unmarshal([]byte(schema.OrderEventJSON()), &m); err != nil {
		t.Fatal(err)
	}
	m["fields"] = f(m["fields"].([]any))
	b, err := json.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func without(name string) func([]any) []any {
	return func(fields []any) []any {
		var out []any
		for _, f := range fields {
			if f.(map[string]any)["name"] != name {
				out = append(out, f)
			}
		}
		return out
	}
}

// withExtra adds an optional top-level field loyalty_tier and an optional
// field region to Address.
func withExtra(fields []any) []any {
	for _, f := range fields {
		fm := f.(map[string]any)
		if fm["name"] == "shipping_address" {
			addr := fm["type"].([]any)[1].(map[string]any)
			addr["fields"] = append(addr["fields"].([]any), map[string]any{"name": "region", "type": []any{"null", "string"}, "default": nil})
		}
	}
	return append(fields, map[string]any{"name": "loyalty_tier", "type": []any{"null", "string"}, "default": nil})
}

// encodeAs encodes the event with writer schema text, setting extra
// top-level and address fields.
func encodeAs(t *testing.T, text string, e *schema.OrderEvent, extra, addrExtra map[string]any) []byte {
	t.Helper()
	ws, err := avro.ParseWithCache(text, "", &avro.SchemaCache{})
	if err != nil {
		t.Fatal(err)
	}
	bare, err := schema.MarshalOrderEvent(e)
	if err != nil {
		t.Fatal(err)
	}
	var g any
	if err := avro.Unmarshal(schema.OrderEventSchema(), bare, &g); err != nil {
		t.Fatal(err)
	}
	m := g.(map[string]any)
	for k, v := range extra {
		m[k] = v
	}
	if addr, ok := m["shipping_address"].(map[string]any); ok {
		inner := addr["hygiene.v1.Address"].(map[string]any)
		for k, v := range addrExtra {
			inner[k] = v
		}
	}
	b, err := avro.Marshal(ws, m)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func wantClass(t *testing.T, err error, class string) {
	t.Helper()
	re, ok := schema.AsRecordError(err)
	if !ok {
		t.Fatalf("error %v is not a record error, want class %s", err, class)
	}
	if re.Class != class {
		t.Fatalf("class %s (%s), want %s", re.Class, re.Reason, class)
	}
}

func TestFastPath(t *testing.T) {
	w := newWorld(t, nil)
	wire := w.start(t)
	id := w.registerWriter(t, schema.OrderEventJSON())
	bare, _ := schema.MarshalOrderEvent(sampleEvent())
	for range 3 {
		value := frame(id, bare)
		out, err := wire.Order(context.Background(), value)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(out, bare) {
			t.Fatal("fast path changed the body")
		}
		if &out[0] != &value[5] {
			t.Fatal("fast path copied the body, want value[5:]")
		}
	}
	if n := w.requests.Load(); n != 1 {
		t.Errorf("%d registry look-ups of one ID, want 1 (cached)", n)
	}
}

func TestFastPathCanonical(t *testing.T) {
	// The same schema written differently (no docs, other whitespace) is
	// canonically identical: the body is used as it is.
	w := newWorld(t, nil)
	wire := w.start(t)
	text := schema.OrderEventSchema().String() // parsing canonical form
	id := w.registerWriter(t, text)
	bare, _ := schema.MarshalOrderEvent(sampleEvent())
	value := frame(id, bare)
	out, err := wire.Order(context.Background(), value)
	if err != nil {
		t.Fatal(err)
	}
	if &out[0] != &value[5] {
		t.Fatal("canonically identical writer took the slow path")
	}
}

func TestEvolvedWriterExtraField(t *testing.T) {
	w := newWorld(t, nil)
	wire := w.start(t)
	text := evolve(t, withExtra)
	id := w.registerWriter(t, text)
	e := sampleEvent()
	for range 3 {
		body := encodeAs(t, text, e, map[string]any{"loyalty_tier": "gold-tier-secret"}, map[string]any{"region": "Brandenburg-secret"})
		out, err := wire.Order(context.Background(), frame(id, body))
		if err != nil {
			t.Fatal(err)
		}
		sameEvent(t, out, e)
		// The allowlist then drops the new fields for every system.
		if _, err := w.plan.Scan(out); err != nil {
			t.Fatal(err)
		}
		for sys := range w.plan.Systems() {
			proj, err := w.plan.Project(nil, sys, out, make([]byte, 32), pseudonym.NewDeriver())
			if err != nil {
				t.Fatal(err)
			}
			if bytes.Contains(proj, []byte("secret")) {
				t.Fatalf("system %d received a new field", sys)
			}
		}
	}
	// Reported once per schema ID.
	for _, f := range []string{"loyalty_tier", "shipping_address.region"} {
		if got := unmapped(t, w.reg, f); got != 1 {
			t.Errorf("unmapped %s = %v, want 1", f, got)
		}
	}
	if n := strings.Count(w.logs.String(), "lacks"); n != 1 {
		t.Errorf("%d log lines about unmapped fields, want 1:\n%s", n, w.logs.String())
	}
	if strings.Contains(w.logs.String(), "secret") || strings.Contains(w.logs.String(), "cust-42") {
		t.Errorf("logs contain record values:\n%s", w.logs.String())
	}
}

// sameEvent checks that bare Avro b of the bundled schema is e (map order
// aside).
func sameEvent(t *testing.T, b []byte, e *schema.OrderEvent) {
	t.Helper()
	got, err := schema.UnmarshalOrderEvent(b)
	if err != nil {
		t.Fatalf("not bare Avro of the bundled schema: %v", err)
	}
	gj, _ := json.Marshal(got)
	wj, _ := json.Marshal(e)
	if !bytes.Equal(gj, wj) {
		t.Fatalf("got %s\nwant %s", gj, wj)
	}
}

// unmapped returns the value of the unmapped counter of field.
func unmapped(t *testing.T, reg *prometheus.Registry, field string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != "pseudonymizer_unmapped_fields_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "field" && l.GetValue() == field {
					return m.GetCounter().GetValue()
				}
			}
		}
	}
	return 0
}

func TestOlderWriterWithoutOptionalFields(t *testing.T) {
	for _, drop := range []string{"attributes", "phone"} {
		t.Run(drop, func(t *testing.T) {
			t.Parallel()
			w := newWorld(t, nil)
			wire := w.start(t)
			text := evolve(t, without(drop))
			id := w.registerWriter(t, text)
			e := sampleEvent()
			out, err := wire.Order(context.Background(), frame(id, encodeAs(t, text, e, nil, nil)))
			if err != nil {
				t.Fatal(err)
			}
			got, err := schema.UnmarshalOrderEvent(out)
			if err != nil {
				t.Fatal(err)
			}
			want := *e
			switch drop {
			case "attributes":
				want.Attributes = map[string]string{}
				if len(got.Attributes) != 0 {
					t.Errorf("attributes %v, want the default {}", got.Attributes)
				}
				got.Attributes = want.Attributes
			case "phone":
				want.Phone = nil
			}
			gj, _ := json.Marshal(got)
			wj, _ := json.Marshal(&want)
			if !bytes.Equal(gj, wj) {
				t.Errorf("got %s\nwant %s", gj, wj)
			}
			if _, err := w.plan.Scan(out); err != nil {
				t.Errorf("scan: %v", err)
			}
			if mfs, _ := w.reg.Gather(); len(mfs) != 0 {
				t.Errorf("unmapped fields reported for an older writer")
			}
		})
	}
}

func TestIncompatibleWriter(t *testing.T) {
	w := newWorld(t, nil)
	wire := w.start(t)
	text := evolve(t, without("customer_id"))
	id := w.registerWriter(t, text)
	for range 3 {
		_, err := wire.Order(context.Background(), frame(id, encodeAs(t, text, sampleEvent(), nil, nil)))
		wantClass(t, err, schema.ClassSchema)
	}
	if n := w.requests.Load(); n != 1 {
		t.Errorf("%d registry look-ups, want 1 (the verdict is cached)", n)
	}
	// A non-Avro schema is class schema too.
	pid, _, err := w.fake.RegisterSchema("other-value", sr.Schema{Schema: `syntax = "proto3"; message X {}`, Type: sr.TypeProtobuf})
	if err != nil {
		t.Fatal(err)
	}
	_, err = wire.Order(context.Background(), frame(pid, []byte{1}))
	wantClass(t, err, schema.ClassSchema)
	// A schema that is not Avro JSON is class schema.
	jid, _, err := w.fake.RegisterSchema("other2-value", sr.Schema{Schema: `{"type":"nonsense"}`})
	if err != nil {
		t.Fatal(err)
	}
	_, err = wire.Order(context.Background(), frame(jid, []byte{1}))
	wantClass(t, err, schema.ClassSchema)
}

func TestUnknownID(t *testing.T) {
	w := newWorld(t, nil)
	wire := w.start(t)
	_, err := wire.Order(context.Background(), frame(4242, []byte{1, 2, 3}))
	wantClass(t, err, schema.ClassSchema)
	if !strings.Contains(err.Error(), "4242") {
		t.Errorf("error %q does not name the schema ID", err)
	}
	_, err = wire.Forget(context.Background(), frame(4242, []byte{1, 2, 3}))
	wantClass(t, err, schema.ClassSchema)
}

func TestRegistryDown(t *testing.T) {
	t.Run("closed", func(t *testing.T) {
		t.Parallel()
		w := newWorld(t, nil)
		wire := w.start(t)
		w.fake.Close()
		bare, _ := schema.MarshalOrderEvent(sampleEvent())
		_, err := wire.Order(context.Background(), frame(1000, bare))
		if err == nil {
			t.Fatal("no error with the registry down")
		}
		if _, ok := schema.AsRecordError(err); ok {
			t.Fatalf("registry outage is a record error (%v): it would be dead-lettered", err)
		}
		_, err = wire.Forget(context.Background(), frame(1000, []byte{2}))
		if _, ok := schema.AsRecordError(err); ok || err == nil {
			t.Fatalf("forget: registry outage gave %v", err)
		}
	})
	for _, tc := range []struct {
		name   string
		status int
		body   string
	}{
		{"5xx", http.StatusInternalServerError, `{"error_code":50001,"message":"Error in the backend data store"}`},
		{"503 plain", http.StatusServiceUnavailable, "<html>\nbad gateway\n</html>"},
		{"404 without registry code", http.StatusNotFound, "<html>not found</html>"},
		{"401", http.StatusUnauthorized, `{"error_code":401,"message":"Unauthorized"}`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			w := newWorld(t, nil)
			wire := w.start(t)
			id := w.registerWriter(t, schema.OrderEventJSON())
			var down atomic.Bool
			down.Store(true)
			w.fake.Intercept(func(rw http.ResponseWriter, r *http.Request) bool {
				if !down.Load() {
					return false
				}
				rw.WriteHeader(tc.status)
				_, _ = rw.Write([]byte(tc.body))
				return true
			})
			bare, _ := schema.MarshalOrderEvent(sampleEvent())
			_, err := wire.Order(context.Background(), frame(id, bare))
			if err == nil {
				t.Fatal("no error")
			}
			if _, ok := schema.AsRecordError(err); ok {
				t.Fatalf("%v is a record error: it would be dead-lettered", err)
			}
			if strings.Contains(err.Error(), "\n") {
				t.Errorf("error spans lines: %q", err)
			}
			// The outage is not cached: once the registry is back, it works.
			down.Store(false)
			if _, err := wire.Order(context.Background(), frame(id, bare)); err != nil {
				t.Fatalf("after the outage: %v", err)
			}
		})
	}
	t.Run("timeout", func(t *testing.T) {
		t.Parallel()
		w := newWorld(t, nil)
		wire := w.start(t)
		release := make(chan struct{})
		t.Cleanup(func() { close(release) })
		w.fake.Intercept(func(rw http.ResponseWriter, r *http.Request) bool {
			select {
			case <-release:
			case <-r.Context().Done():
			}
			return false
		})
		ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
		defer cancel()
		_, err := wire.Order(ctx, frame(1, []byte{1}))
		if _, ok := schema.AsRecordError(err); ok || err == nil {
			t.Fatalf("timeout gave %v, want a transient error", err)
		}
	})
}

func TestBadHeader(t *testing.T) {
	w := newWorld(t, nil)
	wire := w.start(t)
	for _, v := range [][]byte{nil, {0}, {0, 0, 0, 1}, {1, 0, 0, 0, 1, 2}, []byte("hello world")} {
		_, err := wire.Order(context.Background(), v)
		wantClass(t, err, schema.ClassDecode)
		_, err = wire.Forget(context.Background(), v)
		wantClass(t, err, schema.ClassDecode)
	}
	if n := w.requests.Load(); n != 0 {
		t.Errorf("bad headers caused %d registry look-ups", n)
	}
	// A body that does not decode with its (evolved) writer schema, or has
	// trailing bytes, is class decode.
	text := evolve(t, withExtra)
	id := w.registerWriter(t, text)
	body := encodeAs(t, text, sampleEvent(), nil, nil)
	_, err := wire.Order(context.Background(), frame(id, body[:len(body)/2]))
	wantClass(t, err, schema.ClassDecode)
	_, err = wire.Order(context.Background(), frame(id, append(body, 0, 0)))
	wantClass(t, err, schema.ClassDecode)
	// An array block header announcing 2^40 items is refused before any
	// allocation: a writer with items first, and a body of just that header.
	itemsFirst := evolve(t, func(fields []any) []any {
		for i, f := range fields {
			if f.(map[string]any)["name"] == "items" {
				return append([]any{f}, append(fields[:i:i], fields[i+1:]...)...)
			}
		}
		return fields
	})
	hid := w.registerWriter(t, itemsFirst)
	huge := binary.AppendUvarint(nil, uint64(1)<<41) // zigzag of 2^40
	_, err = wire.Order(context.Background(), frame(hid, huge))
	wantClass(t, err, schema.ClassDecode)
}

func TestOutputRegistration(t *testing.T) {
	w := newWorld(t, nil)
	wire := w.start(t)
	for i, sys := range w.plan.Systems() {
		subject := "orders.pseudo." + sys + "-value"
		ss, ok := w.fake.GetSchema(subject, 1)
		if !ok {
			t.Fatalf("subject %s not registered", subject)
		}
		if ss.ID != wire.OutputSchemaID(i) {
			t.Errorf("%s: registered ID %d, wire uses %d", sys, ss.ID, wire.OutputSchemaID(i))
		}
		s, err := avro.ParseWithCache(ss.Schema.Schema, "", &avro.SchemaCache{})
		if err != nil {
			t.Fatal(err)
		}
		if s.Fingerprint() != w.plan.OutputSchema(i).Fingerprint() {
			t.Errorf("%s: registered schema is not the derived output schema", sys)
		}
		got := wire.AppendOutputPrefix([]byte("x"), i)
		want := append([]byte("x"), frame(ss.ID, nil)...)
		if !bytes.Equal(got, want) {
			t.Errorf("%s: prefix %x, want %x", sys, got, want)
		}
	}
	ss, ok := w.fake.GetSchema("subjects.forgotten-value", 1)
	if !ok || ss.ID != wire.ConfirmationSchemaID() {
		t.Fatalf("confirmation schema not registered under subjects.forgotten-value (%v, %d)", ok, ss.ID)
	}
	// Registering again (a restart, another instance) keeps the IDs.
	again := w.start(t)
	for i := range w.plan.Systems() {
		if again.OutputSchemaID(i) != wire.OutputSchemaID(i) {
			t.Errorf("restart changed system %d's schema ID", i)
		}
	}
	if again.ConfirmationSchemaID() != wire.ConfirmationSchemaID() {
		t.Error("restart changed the confirmation schema ID")
	}
}

func TestRegistrationFailure(t *testing.T) {
	w := newWorld(t, nil)
	w.fake.Intercept(func(rw http.ResponseWriter, r *http.Request) bool {
		if r.Method == http.MethodPost {
			rw.WriteHeader(http.StatusConflict)
			_, _ = rw.Write([]byte(`{"error_code":409,"message":"Schema being registered is incompatible with an earlier schema"}`))
			return true
		}
		return false
	})
	_, err := registry.New(context.Background(), w.cl, w.outputs(), w.topics.Forgotten)
	if err == nil || !strings.Contains(err.Error(), "incompatible") || !strings.Contains(err.Error(), "google-analytics") {
		t.Fatalf("error %v, want one naming the system and the registry's reason", err)
	}
}

func TestConfirmationRoundTrip(t *testing.T) {
	w := newWorld(t, nil)
	wire := w.start(t)
	fc, err := registry.NewForgetClient(context.Background(), w.cl, w.topics.Forget)
	if err != nil {
		t.Fatal(err)
	}
	// Request: forget client -> wire.
	req := &schema.ForgetRequest{RequestID: "r-1", SubjectID: "cust-42", RequestedAt: time.UnixMilli(1_760_000_000_000).UTC(), Reason: ptr("gdpr")}
	v, err := fc.Request(req)
	if err != nil {
		t.Fatal(err)
	}
	if id := int(binary.BigEndian.Uint32(v[1:5])); v[0] != 0 || id != fc.RequestSchemaID() {
		t.Fatalf("request header %x", v[:5])
	}
	if ss, ok := w.fake.GetSchema("subjects.forget-value", 1); !ok || ss.ID != fc.RequestSchemaID() {
		t.Fatal("forget request schema not registered under subjects.forget-value")
	}
	got, err := wire.Forget(context.Background(), v)
	if err != nil {
		t.Fatal(err)
	}
	if *got.Reason != "gdpr" || got.RequestID != req.RequestID || got.SubjectID != req.SubjectID || !got.RequestedAt.Equal(req.RequestedAt) {
		t.Errorf("request %+v, want %+v", got, req)
	}
	// A second client looks the schema up instead of registering it again.
	fc2, err := registry.NewForgetClient(context.Background(), w.cl, w.topics.Forget)
	if err != nil || fc2.RequestSchemaID() != fc.RequestSchemaID() {
		t.Fatalf("second client: %v, id %d", err, fc2.RequestSchemaID())
	}

	// Confirmation: wire -> forget client.
	c := &schema.ForgetConfirmation{RequestID: "r-1", SubjectID: "cust-42", Status: schema.StatusForgotten,
		RequestedAt: req.RequestedAt, CompletedAt: req.RequestedAt.Add(time.Second), Systems: []string{"meta"}}
	cv, err := wire.Confirmation(c)
	if err != nil {
		t.Fatal(err)
	}
	if id := int(binary.BigEndian.Uint32(cv[1:5])); cv[0] != 0 || id != wire.ConfirmationSchemaID() {
		t.Fatalf("confirmation header %x", cv[:5])
	}
	gc, err := fc.Confirmation(context.Background(), cv)
	if err != nil {
		t.Fatal(err)
	}
	gj, _ := json.Marshal(gc)
	wj, _ := json.Marshal(c)
	if !bytes.Equal(gj, wj) {
		t.Errorf("confirmation %s, want %s", gj, wj)
	}

	// An evolved request (an extra optional field) is read too.
	var m map[string]any
	_ = json.Unmarshal([]byte(schema.ForgetRequestJSON()), &m)
	m["fields"] = append(m["fields"].([]any), map[string]any{"name": "ticket", "type": "string", "default": ""})
	text, _ := json.Marshal(m)
	id, _, err := w.fake.RegisterSchema("subjects.forget-value", sr.Schema{Schema: string(text)})
	if err != nil {
		t.Fatal(err)
	}
	ws, _ := avro.ParseWithCache(string(text), "", &avro.SchemaCache{})
	body, err := avro.Marshal(ws, map[string]any{"request_id": "r-2", "subject_id": "cust-43", "requested_at": req.RequestedAt, "reason": nil, "ticket": "T-1"})
	if err != nil {
		t.Fatal(err)
	}
	got, err = wire.Forget(context.Background(), frame(id, body))
	if err != nil {
		t.Fatal(err)
	}
	if got.RequestID != "r-2" || got.SubjectID != "cust-43" || got.Reason != nil || !got.RequestedAt.Equal(req.RequestedAt) {
		t.Errorf("evolved request read as %+v", got)
	}
	// A truncated request is class decode.
	_, err = wire.Forget(context.Background(), v[:len(v)-2])
	wantClass(t, err, schema.ClassDecode)
}

func TestAuth(t *testing.T) {
	basic := "Basic " + base64.StdEncoding.EncodeToString([]byte("svc:s3cret"))
	for _, tc := range []struct {
		name   string
		expect string
		opt    sr.ClientOpt
	}{
		{"basic", basic, sr.BasicAuth("svc", "s3cret")},
		{"bearer", "Bearer tok-123", sr.BearerToken("tok-123")},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			w := newWorld(t, []srfake.Option{srfake.WithAuth(tc.expect)}, tc.opt)
			var seen atomic.Int64
			w.fake.Intercept(func(_ http.ResponseWriter, r *http.Request) bool {
				if r.Header.Get("Authorization") == tc.expect {
					seen.Add(1)
				}
				return false
			})
			wire := w.start(t)
			id := w.registerWriter(t, evolve(t, withExtra))
			if _, err := wire.Order(context.Background(), frame(id, encodeAs(t, evolve(t, withExtra), sampleEvent(), nil, nil))); err != nil {
				t.Fatal(err)
			}
			if seen.Load() == 0 {
				t.Error("no request carried the credentials")
			}
			// Without credentials, start-up fails (and never says not found).
			bad, _ := sr.NewClient(sr.URLs(w.fake.URL()))
			if _, err := registry.New(context.Background(), bad, w.outputs(), w.topics.Forgotten); err == nil {
				t.Fatal("registration without credentials succeeded")
			}
		})
	}
}
