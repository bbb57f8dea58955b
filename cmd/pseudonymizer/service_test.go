package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/hygiene/pseudonymizer/internal/config"
	"github.com/hygiene/pseudonymizer/internal/kafkatest"
	"github.com/hygiene/pseudonymizer/schema"
	"github.com/hygiene/pseudonymizer/schema/sample"
)

func freeAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

func httpGet(url string) (int, string) {
	resp, err := http.Get(url)
	if err != nil {
		return 0, err.Error()
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// kafkaYAML is the configuration's kafka and topics sections for the
// test's namespace in kc.
func kafkaYAML(kc *kafkatest.Cluster) string {
	d := config.Default().Topics
	return fmt.Sprintf("kafka: {brokers: [%s], group_id: %s, transactional_id: %s, session_timeout: 6s}\n"+
		"topics: {orders: %s, forget: %s, forgotten: %s, orders_dead_letter: %s, forget_dead_letter: %s, pseudo_prefix: %s}\n",
		strings.Join(kc.Brokers(), ","), kc.Group("pseudonymizer"), kc.TxnID("svc"),
		kc.Topic(d.Orders), kc.Topic(d.Forget), kc.Topic(d.Forgotten), kc.Topic(d.OrdersDeadLetter), kc.Topic(d.ForgetDeadLetter), kc.Topic(d.PseudoPrefix))
}

// TestServiceEndpoints runs `pseudonymizer run` in-process against Kafka
// (kfake, or the broker of PSEUDONYMIZER_TEST_KAFKA) and the embedded store:
// /healthz, /readyz and /metrics answer, an order is processed and counted,
// and cancellation shuts the service down cleanly.
func TestServiceEndpoints(t *testing.T) {
	kc := kafkatest.New(t)
	orders := kc.Topic(config.Default().Topics.Orders)
	kc.CreateTopics(t, 2, nil, orders, kc.Topic(config.Default().Topics.Forget))
	dir := t.TempDir()
	addr := freeAddr(t)
	cfg := writeFile(t, dir, "config.yaml", kafkaYAML(kc)+
		"store: {path: "+filepath.Join(dir, "keys.db")+"}\n"+
		"keys: {kek_file: "+writeFile(t, dir, "kek.b64", "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=")+"}\n"+
		"http: {listen: '"+addr+"'}\nlog: {level: debug, format: json}\n"+validSystems)

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var logs bytes.Buffer
	done := make(chan error, 1)
	go func() { done <- run(ctx, []string{"run", "--config", cfg}, io.Discard, &syncWriter{buf: &logs}) }()

	base := "http://" + addr
	kafkatest.WaitFor(t, 30*time.Second, "/readyz to answer 200", func() bool {
		code, _ := httpGet(base + "/readyz")
		return code == http.StatusOK
	})
	if code, _ := httpGet(base + "/healthz"); code != http.StatusOK {
		t.Errorf("/healthz: %d", code)
	}

	ev := sample.New(1, 1, time.Now()).Next()
	val, _ := schema.MarshalOrderEvent(ev)
	kc.Produce(t, &kgo.Record{Topic: orders, Key: []byte(ev.CustomerID), Value: val})
	var metrics string
	kafkatest.WaitFor(t, 30*time.Second, "the order to be counted in /metrics", func() bool {
		_, metrics = httpGet(base + "/metrics")
		return strings.Contains(metrics, `pseudonymizer_records_out_total{system="meta"} 1`)
	})
	for _, want := range []string{"pseudonymizer_ready 1", "pseudonymizer_batches_total", "pseudonymizer_store_calls_total", "pseudonymizer_kafka_"} {
		if !strings.Contains(metrics, want) {
			t.Errorf("/metrics lacks %s", want)
		}
	}
	for _, raw := range sample.RawIdentifiers(ev) {
		if strings.Contains(metrics, raw) {
			t.Fatalf("P8: raw identifier in /metrics")
		}
	}

	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("run after cancel: %v", err)
		}
	case <-time.After(40 * time.Second):
		t.Fatal("service did not shut down")
	}
	for _, raw := range sample.RawIdentifiers(ev) {
		if strings.Contains(logs.String(), raw) {
			t.Fatalf("P8: raw identifier in the service log")
		}
	}
	if !strings.Contains(logs.String(), "pseudonymizer stopped") {
		t.Errorf("no clean stop in the log")
	}
}
