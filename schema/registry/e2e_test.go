package registry_test

import (
	"bytes"
	"context"
	"encoding/binary"
	"log/slog"
	"net/http"
	"path/filepath"
	"sort"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hamba/avro/v2"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/hygiene/pseudonymizer/internal/config"
	"github.com/hygiene/pseudonymizer/internal/kafkatest"
	"github.com/hygiene/pseudonymizer/processor"
	"github.com/hygiene/pseudonymizer/schema"
	"github.com/hygiene/pseudonymizer/schema/registry"
	"github.com/hygiene/pseudonymizer/store/embedded"
	"github.com/hygiene/pseudonymizer/store/storetest"
)

// TestEndToEnd runs a real processor with the registry wire against the
// fake registry and Kafka (kfake, or the broker of PSEUDONYMIZER_TEST_KAFKA): wire-format orders of the bundled, an
// evolved and an older writer schema are pseudonymized into wire-format
// outputs with the registered IDs; an incompatible writer, an unknown ID
// and a bad header are dead-lettered with their classes; a registry outage
// holds records back instead of dead-lettering them; a forget request and
// its confirmation travel in the wire format.
func TestEndToEnd(t *testing.T) {
	if testing.Short() {
		t.Skip("end-to-end")
	}
	kc := kafkatest.New(t)
	w := newWorld(t, nil)
	d := w.topics
	w.topics = config.Topics{Orders: kc.Topic(d.Orders), Forget: kc.Topic(d.Forget), Forgotten: kc.Topic(d.Forgotten),
		OrdersDeadLetter: kc.Topic(d.OrdersDeadLetter), ForgetDeadLetter: kc.Topic(d.ForgetDeadLetter), PseudoPrefix: kc.Topic(d.PseudoPrefix)}
	wire := w.start(t)
	topics := w.topics
	group := kc.Group("pseudonymizer")
	ctx := context.Background()
	kc.CreateTopics(t, 3, nil, topics.Orders, topics.Forget)
	// settled waits until the processor committed every input record
	// produced so far, then returns every committed record of ts.
	settled := func(ts ...string) []*kgo.Record {
		t.Helper()
		kc.AwaitGroup(t, group, 60*time.Second, topics.Orders)
		kc.AwaitGroup(t, group+processor.ForgetLaneSuffix, 60*time.Second, topics.Forget)
		return kc.AwaitStable(t, 30*time.Second, ts...)
	}

	kr := storetest.MustKeyring(t, storetest.MustKEK(t, 1))
	st, err := embedded.Open(filepath.Join(t.TempDir(), "keys.db"), kr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })

	p, err := processor.New(processor.Config{
		Topics:          processor.Topics(topics),
		Policies:        testPolicies(),
		Plan:            w.plan,
		Store:           st,
		Wire:            wire,
		Kafka:           []kgo.Opt{kgo.SeedBrokers(kc.Brokers()...), kafkatest.FastMetadata()},
		GroupID:         group,
		TransactionalID: kc.TxnID("e2e-1"),
		SessionTimeout:  6 * time.Second,
		CacheSubjects:   1000,
		MaxBackoff:      500 * time.Millisecond,
		Logger:          slog.New(slog.NewTextHandler(w.logs, nil)),
	})
	if err != nil {
		t.Fatal(err)
	}
	tctx, tcancel := context.WithTimeout(ctx, 30*time.Second)
	defer tcancel()
	if err := p.EnsureTopics(tctx, kc.Admin()); err != nil {
		t.Fatal(err)
	}
	rctx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- p.Run(rctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Run: %v", err)
			}
		case <-time.After(60 * time.Second):
			t.Error("processor did not stop")
		}
	})

	// Writer schemas as the order service would register them.
	bundledID := w.registerWriter(t, schema.OrderEventJSON())
	evolvedText := evolve(t, withExtra)
	evolvedID := w.registerWriter(t, evolvedText)
	olderText := evolve(t, without("phone"))
	olderID := w.registerWriter(t, olderText)
	badText := evolve(t, without("customer_id"))
	badID := w.registerWriter(t, badText)

	ev := func(n int) *schema.OrderEvent {
		e := sampleEvent()
		e.EventID = e.EventID[:len(e.EventID)-1] + string(rune('0'+n))
		e.OrderID = "ord-" + string(rune('a'+n))
		e.CustomerID = "cust-" + string(rune('a'+n%2))
		return e
	}
	order := func(e *schema.OrderEvent, v []byte) *kgo.Record {
		return &kgo.Record{Topic: topics.Orders, Key: []byte(e.CustomerID), Value: v}
	}
	bare0, _ := schema.MarshalOrderEvent(ev(0))
	bare1, _ := schema.MarshalOrderEvent(ev(1))
	good := []*kgo.Record{
		order(ev(0), frame(bundledID, bare0)),
		order(ev(1), frame(bundledID, bare1)),
		order(ev(2), frame(evolvedID, encodeAs(t, evolvedText, ev(2), map[string]any{"loyalty_tier": "gold-secret"}, map[string]any{"region": "region-secret"}))),
		order(ev(3), frame(olderID, encodeAs(t, olderText, ev(3), nil, nil))),
	}
	bad := map[string][]*kgo.Record{
		schema.ClassSchema: {
			order(ev(4), frame(badID, encodeAs(t, badText, ev(4), nil, nil))),
			order(ev(5), frame(987654, bare0)),
		},
		schema.ClassDecode: {
			order(ev(6), bare0), // bare Avro: magic byte is not 0
			order(ev(7), []byte{0, 0}),
		},
	}
	produce := func(recs ...*kgo.Record) {
		t.Helper()
		kc.Produce(t, recs...)
	}
	produce(good...)
	for _, recs := range bad {
		produce(recs...)
	}

	nSys := len(w.plan.Systems())
	outTopics := make([]string, nSys)
	for i, sys := range w.plan.Systems() {
		outTopics[i] = topics.PseudoPrefix + sys
	}
	outs := settled(outTopics...)
	if len(outs) != len(good)*nSys {
		t.Fatalf("%d outputs, want %d", len(outs), len(good)*nSys)
	}
	checkOutputs(t, w, wire, outs, outTopics)

	dlq := settled(topics.OrdersDeadLetter)
	if len(dlq) != 4 {
		t.Fatalf("%d dead letters, want 4", len(dlq))
	}
	var classes []string
	for _, r := range dlq {
		classes = append(classes, kafkatest.Header(r, "error.class"))
		if !bytes.Equal(r.Value, findValue(bad, kafkatest.Header(r, "error.class"), r.Value)) {
			t.Errorf("dead letter of class %s is not the original bytes", kafkatest.Header(r, "error.class"))
		}
	}
	sort.Strings(classes)
	if strings.Join(classes, ",") != "decode,decode,schema,schema" {
		t.Errorf("dead-letter classes %v, want decode x2, schema x2", classes)
	}

	// A registry outage holds a record of a new schema ID back (the batch
	// is retried) and never dead-letters it.
	outageText := evolve(t, func(f []any) []any {
		return append(f, map[string]any{"name": "channel", "type": "string", "default": "web"})
	})
	outageID := w.registerWriter(t, outageText)
	var down atomic.Bool
	var refused atomic.Int64
	down.Store(true)
	w.fake.Intercept(func(rw http.ResponseWriter, r *http.Request) bool {
		if down.Load() {
			refused.Add(1)
			rw.WriteHeader(http.StatusServiceUnavailable)
			return true
		}
		return false
	})
	produce(order(ev(8), frame(outageID, encodeAs(t, outageText, ev(8), map[string]any{"channel": "app"}, nil))))
	kafkatest.WaitFor(t, 30*time.Second, "the processor to ask the registry during the outage", func() bool { return refused.Load() >= 2 })
	down.Store(false)
	outs = settled(outTopics...)
	if len(outs) != (len(good)+1)*nSys {
		t.Fatalf("%d outputs after the outage, want %d", len(outs), (len(good)+1)*nSys)
	}
	checkOutputs(t, w, wire, outs, outTopics)
	if dlq := settled(topics.OrdersDeadLetter); len(dlq) != 4 {
		t.Errorf("%d dead letters after the outage, want still 4", len(dlq))
	}

	// Forget request and confirmation in the wire format.
	fc, err := registry.NewForgetClient(ctx, w.cl, topics.Forget)
	if err != nil {
		t.Fatal(err)
	}
	fv, err := fc.Request(&schema.ForgetRequest{RequestID: "req-1", SubjectID: "cust-never-seen", RequestedAt: time.Now().Truncate(time.Millisecond)})
	if err != nil {
		t.Fatal(err)
	}
	produce(&kgo.Record{Topic: topics.Forget, Key: []byte("cust-never-seen"), Value: fv})
	confs := settled(topics.Forgotten)
	if len(confs) != 1 {
		t.Fatalf("%d confirmations, want 1", len(confs))
	}
	if id := binary.BigEndian.Uint32(confs[0].Value[1:5]); confs[0].Value[0] != 0 || int(id) != wire.ConfirmationSchemaID() {
		t.Fatalf("confirmation header %x, want schema ID %d", confs[0].Value[:5], wire.ConfirmationSchemaID())
	}
	c, err := fc.Confirmation(ctx, confs[0].Value)
	if err != nil {
		t.Fatal(err)
	}
	if c.RequestID != "req-1" || c.Status != schema.StatusUnknownSubject {
		t.Errorf("confirmation %+v", c)
	}
	for _, f := range []string{"loyalty_tier", "shipping_address.region", "channel"} {
		if got := unmapped(t, w.reg, f); got != 1 {
			t.Errorf("unmapped %s = %v, want 1 (once per schema ID)", f, got)
		}
	}
	if n := strings.Count(w.logs.String(), "lacks"); n != 2 {
		t.Errorf("%d log lines about unmapped fields, want 2 (one per evolved schema ID)", n)
	}
	if strings.Contains(w.logs.String(), "secret") || strings.Contains(w.logs.String(), "cust-a") {
		t.Error("logs contain record values")
	}
}

// checkOutputs checks that every output is in the wire format with its
// system's registered schema ID, decodes with the registered schema and
// carries none of the new fields.
func checkOutputs(t *testing.T, w *world, wire *registry.Wire, outs []*kgo.Record, outTopics []string) {
	t.Helper()
	perTopic := map[string]int{}
	for _, r := range outs {
		sys := -1
		for i, ot := range outTopics {
			if r.Topic == ot {
				sys = i
			}
		}
		if sys < 0 {
			t.Fatalf("output on unexpected topic %s", r.Topic)
		}
		perTopic[r.Topic]++
		if len(r.Value) < 5 || r.Value[0] != 0 {
			t.Fatalf("%s: output not in the wire format", r.Topic)
		}
		id := int(binary.BigEndian.Uint32(r.Value[1:5]))
		if id != wire.OutputSchemaID(sys) {
			t.Fatalf("%s: schema ID %d, want %d", r.Topic, id, wire.OutputSchemaID(sys))
		}
		ss, err := w.cl.SchemaByID(context.Background(), id)
		if err != nil {
			t.Fatal(err)
		}
		s, err := avro.ParseWithCache(ss.Schema, "", &avro.SchemaCache{})
		if err != nil {
			t.Fatal(err)
		}
		var v map[string]any
		if err := avro.Unmarshal(s, r.Value[5:], &v); err != nil {
			t.Fatalf("%s: output does not decode with the registered schema: %v", r.Topic, err)
		}
		for _, f := range []string{"loyalty_tier", "channel", "email", "phone"} {
			if _, ok := v[f]; ok {
				t.Errorf("%s: output has field %s", r.Topic, f)
			}
		}
		if bytes.Contains(r.Value, []byte("secret")) || bytes.Contains(r.Value, []byte("cust-")) {
			t.Errorf("%s: output carries a raw value", r.Topic)
		}
	}
	for _, ot := range outTopics {
		if perTopic[ot] != len(outs)/len(outTopics) {
			t.Errorf("%s: %d outputs of %d", ot, perTopic[ot], len(outs))
		}
	}
}

func findValue(bad map[string][]*kgo.Record, class string, v []byte) []byte {
	for _, r := range bad[class] {
		if bytes.Equal(r.Value, v) {
			return r.Value
		}
	}
	return nil
}
