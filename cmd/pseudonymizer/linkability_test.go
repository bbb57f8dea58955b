package main

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/hamba/avro/v2/ocf"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/hygiene/pseudonymizer/schema"
	"github.com/hygiene/pseudonymizer/schema/sample"
)

// linkableSystems share occurred_at to the millisecond and total_minor
// exactly: every event and customer joins.
const linkableSystems = `
systems:
  a:
    keep: [event_type, occurred_at, total_minor]
    pseudonymize: [event_id, customer_id]
    headers: [traceparent]
  b:
    keep: [occurred_at, total_minor, currency]
    pseudonymize: [customer_id]
    headers: [traceparent]
`

func sampleOrders(n, customers int) []*schema.OrderEvent {
	g := sample.New(5, customers, time.Date(2026, 3, 1, 10, 0, 0, 0, time.UTC))
	out := make([]*schema.OrderEvent, n)
	for i := range out {
		out[i] = g.Next()
	}
	return out
}

// TestLinkabilityFromTopic reads the orders topic to its end (fewer
// records than --sample), skips a record that is no OrderEvent, and
// reports the pair: every event unique, every customer linked, the shared
// fields including the record timestamp and an allowed header; it warns
// about the millisecond timestamp and the exact amount.
func TestLinkabilityFromTopic(t *testing.T) {
	cluster, err := kfake.NewCluster(kfake.SeedTopics(2, "orders.raw"))
	if err != nil {
		t.Fatal(err)
	}
	defer cluster.Close()
	cfg := writeFile(t, t.TempDir(), "config.yaml", "kafka: {brokers: ["+strings.Join(cluster.ListenAddrs(), ",")+"]}\n"+linkableSystems)
	cl, err := kgo.NewClient(kgo.SeedBrokers(cluster.ListenAddrs()...))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	var recs []*kgo.Record
	custs := map[string]bool{}
	for i, e := range sampleOrders(40, 10) {
		custs[e.CustomerID] = true
		v, err := schema.MarshalOrderEvent(e)
		if err != nil {
			t.Fatal(err)
		}
		recs = append(recs, &kgo.Record{Topic: "orders.raw", Key: []byte(e.CustomerID), Value: v,
			Headers: []kgo.RecordHeader{{Key: "traceparent", Value: []byte{byte('a' + i%3)}}}})
	}
	recs = append(recs, &kgo.Record{Topic: "orders.raw", Value: []byte{0xff}})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := cl.ProduceSync(ctx, recs...).FirstErr(); err != nil {
		t.Fatal(err)
	}
	var out, errb bytes.Buffer
	if err := run(ctx, []string{"linkability", "--config", cfg, "--sample", "1000"}, &out, &errb); err != nil {
		t.Fatalf("linkability: %v\n%s", err, errb.String())
	}
	for _, want := range []string{
		"linkability of 2 systems on 40 events from orders.raw (1 records that are not valid OrderEvents skipped)",
		"a × b\n",
		"shared fields: @header:traceparent (exact), @timestamp (exact), occurred_at (exact), total_minor (exact)",
		fmt.Sprintf("unique join (k = 1): 40 of 40 events (100.00%%), %d of %d customers (100.00%%)", len(custs), len(custs)),
		"warning: systems a and b both receive timestamp occurred_at to the millisecond",
		"warning: systems a and b both receive amount total_minor exactly",
	} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("output lacks %q:\n%s", want, out.String())
		}
	}

	// --sample bounds the read.
	out.Reset()
	if err := run(ctx, []string{"linkability", "--config", cfg, "--sample", "7"}, &out, &errb); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out.String(), "on 7 events from orders.raw\n") {
		t.Errorf("--sample 7:\n%s", out.String())
	}
}

// TestLinkabilityFile reads an Avro object container file, and
// --sample-data uses the demo's generator; with the example configuration
// no pair joins more than a few customers.
func TestLinkabilityFile(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "events.avro")
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	enc, err := ocf.NewEncoderWithSchema(schema.OrderEventSchema(), f)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range sampleOrders(30, 30) {
		if err := enc.Encode(e); err != nil {
			t.Fatal(err)
		}
	}
	if err := enc.Close(); err != nil {
		t.Fatal(err)
	}
	f.Close()
	cfg := writeFile(t, dir, "config.yaml", "kafka: {brokers: [127.0.0.1:1]}\n"+linkableSystems)
	var out, errb bytes.Buffer
	if err := run(context.Background(), []string{"linkability", "--config", cfg, "--file", path}, &out, &errb); err != nil {
		t.Fatalf("linkability: %v\n%s", err, errb.String())
	}
	if !strings.Contains(out.String(), "on 30 events from "+path) || !strings.Contains(out.String(), "30 of 30 events (100.00%)") {
		t.Errorf("output:\n%s", out.String())
	}
	if err := run(context.Background(), []string{"linkability", "--config", cfg, "--file", cfg}, &out, &errb); err == nil ||
		!strings.Contains(err.Error(), "not an Avro object container file") {
		t.Errorf("a YAML file as events: %v", err)
	}

	out.Reset()
	if err := run(context.Background(), []string{"linkability", "--config", "../../examples/config.yaml", "--sample-data", "--sample", "3000", "--customers", "1000"}, &out, &errb); err != nil {
		t.Fatalf("linkability --sample-data: %v\n%s", err, errb.String())
	}
	if n := strings.Count(out.String(), " × "); n != 6 || strings.Contains(out.String(), "warning") {
		t.Errorf("example configuration: %d pairs, or a warning:\n%s", n, out.String())
	}
	if !strings.Contains(out.String(), "crm × google-analytics\n  shared fields: @timestamp (truncated to 1d), event_type (exact), occurred_at (truncated to 1d)\n") {
		t.Errorf("crm × google-analytics does not share what the examples say:\n%s", out.String())
	}
}

// TestCheckConfigWarnsOfLinkableSystems: --check-config warns when two
// systems share a millisecond timestamp or an exact amount, and still
// passes.
func TestCheckConfigWarnsOfLinkableSystems(t *testing.T) {
	cluster, err := kfake.NewCluster(kfake.SeedTopics(2, "orders.raw", "subjects.forget"))
	if err != nil {
		t.Fatal(err)
	}
	defer cluster.Close()
	dir := t.TempDir()
	writeFile(t, dir, "kek.b64", testKEK)
	cfg := writeFile(t, dir, "config.yaml", "kafka: {brokers: ["+strings.Join(cluster.ListenAddrs(), ",")+"]}\n"+
		"store: {path: data/keys.db}\nkeys: {kek_file: kek.b64}\n"+linkableSystems)
	var out, errb bytes.Buffer
	if err := run(context.Background(), []string{"run", "--config", cfg, "--check-config"}, &out, &errb); err != nil {
		t.Fatalf("check-config: %v\n%s", err, errb.String())
	}
	for _, want := range []string{
		"warning: systems a and b both receive timestamp occurred_at to the millisecond",
		"warning: systems a and b both receive amount total_minor exactly",
		"configuration ok",
	} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("output lacks %q:\n%s", want, out.String())
		}
	}
}
