package processor_test

import (
	"context"
	"crypto/rand"
	"fmt"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/hygiene/pseudonymizer/internal/kafkatest"
	"github.com/hygiene/pseudonymizer/processor"
	"github.com/hygiene/pseudonymizer/schema"
	"github.com/hygiene/pseudonymizer/schema/sample"
)

// TestHugeRecordsDoNotWedge (issue 12, case 4): with the producer's default
// batch cap (1,000,012 bytes), a 1,020,000-byte garbage order, a forget
// request whose confirmation would echo a 520,000-byte subject_id, and a
// valid order whose pseudonymized copy exceeds the cap are each
// dead-lettered (cut to fit, with error.truncated) and every record after
// them is processed and committed. Without the fix each of them aborted
// its batch for ever. It runs with the old default limit of 1 MiB (which
// configuration now rejects, so this covers dead letters cut at run time)
// and with the derived default.
func TestHugeRecordsDoNotWedge(t *testing.T) {
	for _, tc := range []struct {
		name           string
		maxRecordBytes int
	}{
		{"limit 1MiB", 1 << 20},
		{"derived limit", 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			e := newEnv(t, "embedded")
			defer func() {
				if t.Failed() {
					t.Log(e.logs())
				}
			}()
			gen := sample.New(41, 3, time.Now().Add(-time.Hour))
			garbage := make([]byte, 1_020_000)
			_, _ = rand.Read(garbage)
			big := gen.ForCustomer(0)
			// Random SKUs: google-analytics keeps the items, so its copy
			// is as large as the raw event.
			rnd := make([]byte, 16)
			for len(big.Items) < 25_500 {
				_, _ = rand.Read(rnd)
				big.Items = append(big.Items, schema.LineItem{SKU: fmt.Sprintf("SKU-%x", rnd), Quantity: 1, UnitPriceMinor: 100})
			}
			bigRec := e.orderRecord(t, big)
			if n := len(bigRec.Value); n < 1_000_012 || n > 1<<20-1024 {
				t.Fatalf("the large valid order has %d bytes; want it between the batch cap and 1 MiB", n)
			}
			// Everything on partition 0, in this order: a record after a
			// wedged one is never committed.
			var orders []*kgo.Record
			var normal []*schema.OrderEvent
			add := func(n int) {
				for range n {
					ev := gen.ForCustomer(1 + len(normal)%2)
					normal = append(normal, ev)
					orders = append(orders, e.orderRecord(t, ev))
				}
			}
			add(5)
			orders = append(orders, &kgo.Record{Topic: e.topics.Orders, Key: []byte("garbage"), Value: garbage})
			add(5)
			orders = append(orders, bigRec)
			add(5)
			hugeSubject := strings.Repeat("s", 520_000)
			hugeReq := e.forgetRecord(t, "req-huge", hugeSubject, time.Now())
			hugeReq.Key = []byte("k") // the request itself fits; its confirmation would not
			forgets := []*kgo.Record{hugeReq, e.forgetRecord(t, "req-ok", "cust-999999", time.Now())}
			for _, r := range append(orders, forgets...) {
				r.Partition = 0
			}
			cl := e.client(t, kgo.ProducerBatchMaxBytes(2<<20), kgo.RecordPartitioner(kgo.ManualPartitioner()))
			ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
			defer cancel()
			for _, r := range append(orders, forgets...) {
				if err := cl.ProduceSync(ctx, r).FirstErr(); err != nil {
					t.Fatalf("produce: %v", err)
				}
			}
			e.start(t, "pz-1", func(c *processor.Config) { c.MaxRecordBytes = tc.maxRecordBytes })

			systems := e.plan.Systems()
			outs := e.settled(t, e.outputTopics()...)
			if len(outs) != len(normal)*len(systems) {
				t.Fatalf("%d outputs, want %d", len(outs), len(normal)*len(systems))
			}
			dlq := e.settled(t, e.topics.OrdersDeadLetter)
			if len(dlq) != 2 {
				t.Fatalf("%d order dead letters, want 2", len(dlq))
			}
			for i, want := range []*kgo.Record{orders[5], bigRec} {
				d := dlq[i]
				if got, wantTrunc := kafkatest.Header(d, "error.truncated"), strconv.Itoa(len(want.Value)); got != wantTrunc {
					t.Errorf("dead letter %d: error.truncated %q, want %q", i, got, wantTrunc)
				}
				if got := kafkatest.Header(d, "source.offset"); got != strconv.FormatInt(want.Offset, 10) {
					t.Errorf("dead letter %d: source.offset %s, want %d", i, got, want.Offset)
				}
				if string(d.Key) != string(want.Key) || len(d.Value) == 0 || string(d.Value) != string(want.Value[:len(d.Value)]) {
					t.Errorf("dead letter %d: not the original key and a prefix of the original value", i)
				}
				if size := len(d.Key) + len(d.Value); size > 1_000_012 {
					t.Errorf("dead letter %d: %d bytes", i, size)
				}
			}
			if got := kafkatest.Header(dlq[1], "error.class"); got != schema.ClassTooLarge {
				t.Errorf("the valid order's dead letter has class %q, want %q", got, schema.ClassTooLarge)
			}
			fdlq := e.settled(t, e.topics.ForgetDeadLetter)
			if len(fdlq) != 1 || kafkatest.Header(fdlq[0], "error.class") != schema.ClassContract || kafkatest.Header(fdlq[0], "source.offset") != strconv.FormatInt(hugeReq.Offset, 10) {
				t.Fatalf("forget dead letters %d; want the huge request, class contract", len(fdlq))
			}
			if c := e.confirmations(t, 1); c["req-ok"] == nil {
				t.Fatalf("the request after the huge one is not confirmed")
			}
			// Both input partitions are committed up to their ends.
			adm := e.kc.Admin()
			ends, err := adm.ListEndOffsets(ctx, e.topics.Orders, e.topics.Forget)
			if err != nil {
				t.Fatal(err)
			}
			for topic, group := range map[string]string{e.topics.Orders: e.group, e.topics.Forget: e.group + processor.ForgetLaneSuffix} {
				committed, err := adm.FetchOffsets(ctx, group)
				if err != nil {
					t.Fatal(err)
				}
				end, _ := ends.Lookup(topic, 0)
				got, _ := committed.Lookup(topic, 0)
				if got.At != end.Offset {
					t.Errorf("%s[0]: committed %d, end %d", topic, got.At, end.Offset)
				}
			}
		})
	}
}

// TestOversizedConfirmationIsDeadLettered: a confirmation that the
// confirmation topic refuses as too large (its max.message.bytes is below
// what the IDs' bound lets through) dead-letters its request, which was
// carried out, instead of retrying the batch for ever; the other request
// of the batch is confirmed.
func TestOversizedConfirmationIsDeadLettered(t *testing.T) {
	e := newEnv(t, "embedded")
	defer func() {
		if t.Failed() {
			t.Log(e.logs())
		}
	}()
	small := "1024"
	e.kc.CreateTopics(t, 3, map[string]*string{"max.message.bytes": &small}, e.topics.Forgotten)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	rnd := make([]byte, 600)
	_, _ = rand.Read(rnd)
	big := e.forgetRecord(t, "req-big", fmt.Sprintf("%x", rnd), time.Now()) // incompressible
	ok := e.forgetRecord(t, "req-ok", "cust-1", time.Now())
	big.Partition, ok.Partition = 0, 0
	cl := e.client(t, kgo.RecordPartitioner(kgo.ManualPartitioner()))
	if err := cl.ProduceSync(ctx, big, ok).FirstErr(); err != nil {
		t.Fatal(err)
	}
	e.start(t, "pz-1")
	if c := e.confirmations(t, 1); c["req-ok"] == nil {
		t.Fatalf("the small request is not confirmed")
	}
	dlq := e.settled(t, e.topics.ForgetDeadLetter)
	if len(dlq) != 1 || kafkatest.Header(dlq[0], "error.class") != schema.ClassTooLarge || string(dlq[0].Value) != string(big.Value) {
		t.Fatalf("forget dead letters %d; want the big request, whole, class too_large", len(dlq))
	}
}
