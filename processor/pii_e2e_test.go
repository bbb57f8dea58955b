package processor_test

import (
	"bytes"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/hygiene/pseudonymizer/internal/kafkatest"
	"github.com/hygiene/pseudonymizer/processor"
	"github.com/hygiene/pseudonymizer/processor/pii"
	"github.com/hygiene/pseudonymizer/processor/policy"
	"github.com/hygiene/pseudonymizer/schema"
	"github.com/hygiene/pseudonymizer/schema/sample"
)

// piiPolicies keep the fields the dirty orders of TestPIIGuard put
// identifying data in, each in another mode.
func piiPolicies() []policy.Policy {
	base := []string{"event_type", "occurred_at", "currency", "total_minor"}
	pseudo := []string{"event_id", "order_id", "customer_id"}
	return []policy.Policy{
		{System: "ga", Keep: append(base, "items", "attributes.utm_source", "attributes.utm_content"), Pseudonymize: pseudo, PII: processor.PIIRedact},
		{System: "tiktok", Keep: append(base, "attributes.utm_campaign"), Pseudonymize: pseudo, PII: processor.PIIDrop},
		{System: "meta", Keep: append(base, "shipping_address.country", "attributes.utm_source"), Pseudonymize: pseudo}, // default: redact
		{System: "crm", Keep: append(base, "items", "attributes.utm_campaign"), Pseudonymize: pseudo, PII: processor.PIIOff},
	}
}

const piiPhone = "0151 23456789"

// dirty puts an e-mail address into utm_campaign, a phone number into the
// first item's SKU (an engraving text) and the customer ID into
// utm_content.
func dirty(ev *schema.OrderEvent) {
	ev.Attributes["utm_campaign"] = "winback-" + sample.Email(ev.CustomerID)
	ev.Attributes["utm_content"] = "ref-" + strings.ToUpper(ev.CustomerID)
	ev.Items[0].SKU = "ENGRAVE call " + piiPhone
}

// TestPIIGuard sends clean and dirty orders through a processor and checks
// that the dirty ones come out redacted for the system that keeps those
// fields in redact mode, are withheld from the one in drop mode, reach
// the one in off mode unchanged, and that systems keeping none of those
// fields get every order untouched; with the metrics, the log lines (no
// values) and the quarantine sample.
func TestPIIGuard(t *testing.T) {
	for _, kind := range storeKinds {
		t.Run(kind, func(t *testing.T) {
			t.Parallel()
			e := newEnv(t, kind)
			e.pols = piiPolicies()
			var err error
			if e.plan, err = policy.Compile(schema.OrderEventSchema(), e.pols); err != nil {
				t.Fatal(err)
			}
			det, err := pii.New(pii.Config{})
			if err != nil {
				t.Fatal(err)
			}
			quarantine := e.kc.Topic("orders.pii-quarantine")
			m := processor.NewMetrics(nil)
			gen := sample.New(5, 15, time.Now().Add(-time.Hour))
			const n = 120
			isDirty := map[string]bool{} // event ID
			var recs []*kgo.Record
			var secrets [][]byte
			for i := range n {
				ev := gen.Next()
				if len(ev.Items) == 0 {
					ev.Items = []schema.LineItem{{SKU: "SKU-MUG", Quantity: 1, UnitPriceMinor: 900}}
				}
				if i%3 == 0 {
					dirty(ev)
					isDirty[ev.EventID] = true
					secrets = append(secrets, []byte(sample.Email(ev.CustomerID)), []byte(strings.ToUpper(ev.CustomerID)))
				}
				recs = append(recs, e.orderRecord(t, ev))
			}
			secrets = append(secrets, []byte(piiPhone))
			ndirty := len(isDirty)
			e.produce(t, recs...)
			e.start(t, "pz-1", func(c *processor.Config) {
				c.PII = processor.PIIConfig{Detector: det, QuarantineTopic: quarantine, QuarantinePerBatch: 1000}
				c.Metrics = m
			})
			outs := e.settled(t, e.outputTopics()...)

			// Which output belongs to which input: occurred_at is kept by
			// every system and unique per sample event.
			events := map[int64]*schema.OrderEvent{}
			for _, r := range recs {
				ev, err := schema.UnmarshalOrderEvent(r.Value)
				if err != nil {
					t.Fatal(err)
				}
				events[ev.OccurredAt.UnixMilli()] = ev
			}
			bySystem := map[string][]decoded{}
			for _, d := range e.decode(t, outs) {
				bySystem[d.system] = append(bySystem[d.system], d)
			}
			for sys, want := range map[string]int{"ga": n, "tiktok": n - ndirty, "meta": n, "crm": n} {
				if got := len(bySystem[sys]); got != want {
					t.Fatalf("%s: %d outputs, want %d", sys, got, want)
				}
			}
			check := func(sys string, f func(ev *schema.OrderEvent, v map[string]any)) {
				for _, d := range bySystem[sys] {
					ev := events[d.at.UnixMilli()]
					if ev == nil {
						t.Fatalf("%s: output of no input", sys)
					}
					f(ev, d.v)
				}
			}
			attr := func(v map[string]any, k string) string {
				s, _ := v["attributes"].(map[string]any)[k].(string)
				return s
			}
			sku := func(v map[string]any) string {
				return v["items"].([]any)[0].(map[string]any)["sku"].(string)
			}
			check("ga", func(ev *schema.OrderEvent, v map[string]any) {
				wantSKU, wantContent := ev.Items[0].SKU, ev.Attributes["utm_content"]
				if isDirty[ev.EventID] {
					wantSKU, wantContent = "ENGRAVE call [redacted:phone]", "ref-[redacted:identifier]"
				}
				if got := sku(v); got != wantSKU {
					t.Errorf("ga: sku %q, want %q", got, wantSKU)
				}
				if got := attr(v, "utm_content"); got != wantContent {
					t.Errorf("ga: utm_content %q, want %q", got, wantContent)
				}
				if got := attr(v, "utm_source"); got != ev.Attributes["utm_source"] {
					t.Errorf("ga: utm_source %q, want %q", got, ev.Attributes["utm_source"])
				}
			})
			check("tiktok", func(ev *schema.OrderEvent, v map[string]any) {
				if isDirty[ev.EventID] {
					t.Errorf("tiktok (pii: drop) got a dirty order")
				}
				if got := attr(v, "utm_campaign"); got != ev.Attributes["utm_campaign"] {
					t.Errorf("tiktok: utm_campaign %q, want %q", got, ev.Attributes["utm_campaign"])
				}
			})
			check("meta", func(ev *schema.OrderEvent, v map[string]any) {
				if got := attr(v, "utm_source"); got != ev.Attributes["utm_source"] {
					t.Errorf("meta: utm_source %q, want %q", got, ev.Attributes["utm_source"])
				}
			})
			check("crm", func(ev *schema.OrderEvent, v map[string]any) {
				if got := sku(v); got != ev.Items[0].SKU {
					t.Errorf("crm (pii: off): sku %q, want %q", got, ev.Items[0].SKU)
				}
				if got := attr(v, "utm_campaign"); got != ev.Attributes["utm_campaign"] {
					t.Errorf("crm (pii: off): utm_campaign %q, want %q", got, ev.Attributes["utm_campaign"])
				}
			})
			for _, r := range outs {
				if systemOf(e, r.Topic) == "crm" {
					continue
				}
				for _, s := range secrets {
					if bytes.Contains(r.Value, s) {
						t.Fatalf("%s: identifying data left in a kept field", systemOf(e, r.Topic))
					}
				}
			}

			// Metrics: one finding per event, system, field and kind.
			for _, c := range []struct {
				sys, field, kind string
				want             int
			}{
				{"ga", "items.sku", "phone", ndirty},
				{"ga", "attributes.utm_content", "identifier", ndirty},
				{"tiktok", "attributes.utm_campaign", "email", ndirty},
				{"meta", "attributes.utm_source", "email", 0},
				{"crm", "items.sku", "phone", 0},
			} {
				if got := testutil.ToFloat64(m.PIIDetected.WithLabelValues(c.sys, c.field, c.kind)); int(got) != c.want {
					t.Errorf("pii_detected_total{%s,%s,%s} = %v, want %d", c.sys, c.field, c.kind, got, c.want)
				}
			}
			if got := testutil.ToFloat64(m.PIIDropped.WithLabelValues("tiktok")); int(got) != ndirty {
				t.Errorf("pii_dropped_total{tiktok} = %v, want %d", got, ndirty)
			}
			if got := testutil.ToFloat64(m.RecordsOut.WithLabelValues("tiktok")); int(got) != n-ndirty {
				t.Errorf("records_out_total{tiktok} = %v, want %d", got, n-ndirty)
			}

			// Log lines name topic, partition, offset, field and kind,
			// never the value.
			logs := e.logs()
			if want := fmt.Sprintf("field=items.sku kind=phone action=%s", processor.PIIRedact); !strings.Contains(logs, want) {
				t.Errorf("no log line with %q", want)
			}
			if !strings.Contains(logs, "field=attributes.utm_campaign kind=email action=drop") {
				t.Errorf("no log line for the dropped events")
			}
			for _, s := range secrets {
				if strings.Contains(logs, string(s)) {
					t.Fatalf("a log line contains identifying data")
				}
			}

			// The quarantine sample: the original records, with findings.
			q := e.settled(t, quarantine)
			if len(q) != ndirty {
				t.Fatalf("%d quarantined records, want %d", len(q), ndirty)
			}
			for _, r := range q {
				ev, err := schema.UnmarshalOrderEvent(r.Value)
				if err != nil || !isDirty[ev.EventID] {
					t.Fatalf("quarantined record is not an original dirty order (%v)", err)
				}
				if h := kafkatest.Header(r, "pii.finding"); !strings.HasPrefix(h, "system=") || strings.Contains(h, piiPhone) {
					t.Fatalf("quarantine header pii.finding = %q", h)
				}
			}
		})
	}
}
