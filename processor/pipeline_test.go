package processor_test

import (
	"bytes"
	"fmt"
	"strconv"
	"testing"
	"time"

	"github.com/hamba/avro/v2"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/hygiene/pseudonymizer/internal/kafkatest"
	"github.com/hygiene/pseudonymizer/processor"
	"github.com/hygiene/pseudonymizer/schema"
	"github.com/hygiene/pseudonymizer/schema/sample"
)

// badInput is a malformed record and the dead-letter class it must get.
type badInput struct {
	name  string
	key   []byte
	value []byte
	class string
}

func badInputs(t *testing.T) []badInput {
	t.Helper()
	valid, err := schema.MarshalOrderEvent(sample.New(7, 1, time.Now()).Next())
	if err != nil {
		t.Fatal(err)
	}
	emptyCustomer := sample.New(8, 1, time.Now()).Next()
	emptyCustomer.CustomerID = ""
	ec, _ := schema.MarshalOrderEvent(emptyCustomer)
	emptyOrder := sample.New(9, 1, time.Now()).Next()
	emptyOrder.OrderID = ""
	eo, _ := schema.MarshalOrderEvent(emptyOrder)
	farFuture := sample.New(12, 1, time.Now()).Next()
	farFuture.OccurredAt = time.UnixMilli(1 << 55)
	ff, _ := schema.MarshalOrderEvent(farFuture)
	huge := sample.New(10, 1, time.Now()).Next()
	huge.Attributes["note"] = string(bytes.Repeat([]byte("x"), 100<<10))
	hb, _ := schema.MarshalOrderEvent(huge)
	return []badInput{
		{"empty", []byte("k1"), nil, schema.ClassDecode},
		{"garbage", []byte("k2"), []byte("this is not avro at all, not even close"), schema.ClassDecode},
		{"truncated", []byte("k3"), valid[:len(valid)/2], schema.ClassDecode},
		{"trailing bytes", []byte("k4"), append(append([]byte{}, valid...), 0, 1, 2), schema.ClassDecode},
		{"huge length prefix", []byte("k5"), []byte{0xfe, 0xff, 0xff, 0xff, 0x0f, 'a'}, schema.ClassDecode},
		{"empty customer_id", []byte("k6"), ec, schema.ClassContract},
		{"empty order_id", []byte("k7"), eo, schema.ClassContract},
		{"too large", []byte("k8"), hb, schema.ClassTooLarge},
		{"occurred_at out of range", []byte("k9"), ff, schema.ClassContract},
	}
}

// TestPipeline drives orders and malformed records through a processor on
// Kafka and checks P1, P2, P3, P4 and P6 on what was committed.
func TestPipeline(t *testing.T) {
	for _, kind := range storeKinds {
		t.Run(kind, func(t *testing.T) {
			t.Parallel()
			e := newEnv(t, kind)
			gen := sample.New(1, 20, time.Now().Add(-time.Hour))
			var events []*schema.OrderEvent
			var recs []*kgo.Record
			for i := 0; i < 300; i++ {
				ev := gen.Next()
				events = append(events, ev)
				r := e.orderRecord(t, ev)
				r.Headers = []kgo.RecordHeader{{Key: "traceparent", Value: []byte("00-trace-" + strconv.Itoa(i))}, {Key: "x-customer", Value: []byte(ev.CustomerID)}}
				recs = append(recs, r)
			}
			bad := badInputs(t)
			for i, b := range bad {
				// Interleave bad records with good ones.
				recs = append(recs[:i*30], append([]*kgo.Record{{Topic: e.topics.Orders, Key: b.key, Value: b.value}}, recs[i*30:]...)...)
			}
			e.produce(t, recs...)
			e.start(t, "pz-1", func(c *processor.Config) { c.MaxRecordBytes = 64 << 10 })

			systems := e.plan.Systems()
			outs := e.settled(t, e.outputTopics()...)
			dlq := e.settled(t, e.topics.OrdersDeadLetter)

			// P4: exactly one output per event and system.
			perSystem := map[string]int{}
			for _, r := range outs {
				perSystem[systemOf(e, r.Topic)]++
			}
			for _, s := range systems {
				if got, want := perSystem[s], len(events); got != want {
					t.Errorf("system %s: %d outputs, want %d", s, got, want)
				}
			}

			// P1: no raw identifier in any key, value or header.
			var raw [][]byte
			for _, ev := range events {
				for _, v := range sample.RawIdentifiers(ev) {
					raw = append(raw, []byte(v))
				}
			}
			for _, r := range outs {
				for _, v := range raw {
					if bytes.Contains(r.Key, v) || bytes.Contains(r.Value, v) {
						t.Fatalf("%s: raw identifier leaked into key or value", r.Topic)
					}
					for _, h := range r.Headers {
						if bytes.Contains(h.Value, v) || bytes.Contains([]byte(h.Key), v) {
							t.Fatalf("%s: raw identifier leaked into header %s", r.Topic, h.Key)
						}
					}
				}
				// Only headers a policy names are copied.
				for _, h := range r.Headers {
					if systemOf(e, r.Topic) != "crm" || h.Key != "traceparent" {
						t.Fatalf("%s: header %q copied without a policy naming it", r.Topic, h.Key)
					}
				}
				if systemOf(e, r.Topic) == "crm" && kafkatest.Header(r, "traceparent") == "" {
					t.Fatalf("crm: allowed header traceparent missing")
				}
			}

			// P2 and P3: decode every output; pseudonyms are stable per
			// customer and order within a system and never shared.
			owner := map[string]string{}
			custKey := map[string]map[string]string{} // system -> customer pseudonym (key) -> first order time
			orderPseudo := map[string]map[string]bool{}
			eventPseudo := map[string]map[string]bool{}
			for _, r := range outs {
				sys := systemOf(e, r.Topic)
				var v map[string]any
				if err := avro.Unmarshal(e.plan.OutputSchema(indexOf(systems, sys)), r.Value, &v); err != nil {
					t.Fatalf("%s: output does not decode with its schema: %v", sys, err)
				}
				if v["customer_id"] != string(r.Key) {
					t.Fatalf("%s: record key is not the customer pseudonym", sys)
				}
				for _, f := range []string{"customer_id", "order_id", "event_id"} {
					p, ok := v[f].(string)
					if !ok {
						continue
					}
					if s, seen := owner[p]; seen && s != sys {
						t.Fatalf("P2: pseudonym of %s shared by %s and %s", f, s, sys)
					}
					owner[p] = sys
				}
				if custKey[sys] == nil {
					custKey[sys], orderPseudo[sys], eventPseudo[sys] = map[string]string{}, map[string]bool{}, map[string]bool{}
				}
				custKey[sys][string(r.Key)] = ""
				orderPseudo[sys][v["order_id"].(string)] = true
				if ev, ok := v["event_id"].(string); ok {
					eventPseudo[sys][ev] = true
				}
			}
			customers, orders := map[string]bool{}, map[string]bool{}
			for _, ev := range events {
				customers[ev.CustomerID] = true
				orders[ev.OrderID] = true
			}
			for _, s := range systems {
				if got, want := len(custKey[s]), len(customers); got != want {
					t.Errorf("P3 %s: %d customer pseudonyms for %d customers", s, got, want)
				}
				if got, want := len(orderPseudo[s]), len(orders); got != want {
					t.Errorf("P3 %s: %d order pseudonyms for %d orders", s, got, want)
				}
				if s != "crm" && len(eventPseudo[s]) != len(events) {
					t.Errorf("P4 %s: %d distinct event pseudonyms for %d events", s, len(eventPseudo[s]), len(events))
				}
			}

			// P6: one dead letter per bad record, original bytes, reason headers.
			if len(dlq) != len(bad) {
				t.Fatalf("P6: %d dead letters, want %d", len(dlq), len(bad))
			}
			for _, b := range bad {
				found := false
				for _, r := range dlq {
					if !bytes.Equal(r.Key, b.key) {
						continue
					}
					found = true
					if !bytes.Equal(r.Value, b.value) {
						t.Errorf("%s: dead letter value changed", b.name)
					}
					if got := kafkatest.Header(r, "error.class"); got != b.class {
						t.Errorf("%s: error.class %q, want %q", b.name, got, b.class)
					}
					if kafkatest.Header(r, "error.message") == "" || kafkatest.Header(r, "source.topic") != e.topics.Orders ||
						kafkatest.Header(r, "source.partition") == "" || kafkatest.Header(r, "source.offset") == "" {
						t.Errorf("%s: missing reason headers: %v", b.name, r.Headers)
					}
				}
				if !found {
					t.Errorf("%s: no dead letter", b.name)
				}
			}

			// P8: the debug log holds no raw identifier.
			logs := e.logs()
			for _, v := range raw {
				if bytes.Contains([]byte(logs), v) {
					t.Fatalf("P8: raw identifier in the log")
				}
			}
		})
	}
}

func indexOf(xs []string, x string) int {
	for i, v := range xs {
		if v == x {
			return i
		}
	}
	panic(fmt.Sprintf("%q not in %v", x, xs))
}
