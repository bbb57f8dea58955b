package processor_test

import (
	"crypto/rand"
	"fmt"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/hygiene/pseudonymizer/internal/kafkatest"
	"github.com/hygiene/pseudonymizer/schema"
	"github.com/hygiene/pseudonymizer/schema/sample"
)

// TestOversizedOutputIsDeadLettered: when the broker refuses a system's
// pseudonymized copy as too large for its topic, the event goes to the
// dead-letter topic (class too_large) after the batch is redone, no system
// receives it (fan-out is all or none), and the other events flow on.
func TestOversizedOutputIsDeadLettered(t *testing.T) {
	e := newEnv(t, "embedded")
	systems := e.plan.Systems()
	// google-analytics keeps the items: give its topic a small limit.
	small := "262144"
	e.kc.CreateTopics(t, 3, map[string]*string{"max.message.bytes": &small}, e.topics.PseudoPrefix+"google-analytics")
	gen := sample.New(31, 3, time.Now().Add(-time.Hour))
	big := gen.ForCustomer(0)
	// Random SKUs: the copy must stay too large after compression.
	rnd := make([]byte, 16)
	for len(big.Items) < 12000 {
		_, _ = rand.Read(rnd)
		big.Items = append(big.Items, schema.LineItem{SKU: fmt.Sprintf("SKU-%x", rnd), Quantity: 1, UnitPriceMinor: 100})
	}
	var normal []*schema.OrderEvent
	var recs []*kgo.Record
	for i := 0; i < 1500; i++ {
		ev := gen.ForCustomer(i % 3)
		normal = append(normal, ev)
		recs = append(recs, e.orderRecord(t, ev))
		if i == 700 {
			recs = append(recs, e.orderRecord(t, big))
		}
	}
	e.produce(t, recs...)
	e.start(t, "pz-1")

	defer func() {
		if t.Failed() {
			t.Log(e.logs())
		}
	}()
	dlq := e.settled(t, e.topics.OrdersDeadLetter)
	if len(dlq) != 1 || kafkatest.Header(dlq[0], "error.class") != schema.ClassTooLarge {
		t.Fatalf("%d dead letters, want one too_large", len(dlq))
	}
	outs := e.decode(t, e.settled(t, e.outputTopics()...))
	if len(outs) != len(normal)*len(systems) {
		t.Fatalf("%d outputs, want %d", len(outs), len(normal)*len(systems))
	}
	for _, d := range outs {
		if d.at.Equal(big.OccurredAt) {
			t.Fatalf("%s received the oversized event: fan-out must be all or none", d.system)
		}
	}
}
