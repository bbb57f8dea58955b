package main

import (
	"bytes"
	"context"
	"io"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"

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

// TestServiceEndpoints runs `pseudonymizer run` in-process against kfake and
// the embedded store: /healthz, /readyz and /metrics answer, an order is
// processed and counted, and cancellation shuts the service down cleanly.
func TestServiceEndpoints(t *testing.T) {
	cluster, err := kfake.NewCluster(kfake.SeedTopics(2, "orders.raw", "subjects.forget"))
	if err != nil {
		t.Fatal(err)
	}
	defer cluster.Close()
	dir := t.TempDir()
	addr := freeAddr(t)
	cfg := writeFile(t, dir, "config.yaml", "kafka: {brokers: ["+strings.Join(cluster.ListenAddrs(), ",")+"], transactional_id: svc-test, session_timeout: 6s}\n"+
		"store: {path: "+filepath.Join(dir, "keys.db")+"}\n"+
		"keys: {kek_file: "+writeFile(t, dir, "kek.b64", "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=")+"}\n"+
		"http: {listen: '"+addr+"'}\nlog: {level: debug, format: json}\n"+validSystems)

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var logs bytes.Buffer
	done := make(chan error, 1)
	go func() { done <- run(ctx, []string{"run", "--config", cfg}, io.Discard, &syncWriter{buf: &logs}) }()

	base := "http://" + addr
	deadline := time.Now().Add(30 * time.Second)
	for {
		code, body := httpGet(base + "/readyz")
		if code == http.StatusOK {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("/readyz never became ready: %d %s", code, body)
		}
		time.Sleep(50 * time.Millisecond)
	}
	if code, _ := httpGet(base + "/healthz"); code != http.StatusOK {
		t.Errorf("/healthz: %d", code)
	}

	ev := sample.New(1, 1, time.Now()).Next()
	val, _ := schema.MarshalOrderEvent(ev)
	cl, err := kgo.NewClient(kgo.SeedBrokers(cluster.ListenAddrs()...))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	if err := cl.ProduceSync(ctx, &kgo.Record{Topic: "orders.raw", Key: []byte(ev.CustomerID), Value: val}).FirstErr(); err != nil {
		t.Fatal(err)
	}
	var metrics string
	for {
		_, metrics = httpGet(base + "/metrics")
		if strings.Contains(metrics, `pseudonymizer_records_out_total{system="meta"} 1`) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("order not counted in /metrics")
		}
		time.Sleep(50 * time.Millisecond)
	}
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
