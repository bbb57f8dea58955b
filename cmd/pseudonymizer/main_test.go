package main

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hygiene/pseudonymizer/internal/config"
	"github.com/twmb/franz-go/pkg/kfake"

	"github.com/hygiene/pseudonymizer/internal/kafkatest"
)

const validSystems = `
systems:
  meta:
    keep: [event_type, occurred_at, shipping_address.country]
    pseudonymize: [event_id, order_id, customer_id]
`

func writeFile(t *testing.T, dir, name, text string) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// TestStartupErrors: each configuration problem stops start-up with one line
// that names it, before anything is consumed.
func TestStartupErrors(t *testing.T) {
	dir := t.TempDir()
	kek := writeFile(t, dir, "kek.b64", "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=\n")
	storePath := filepath.Join(dir, "keys.db")
	base := "keys: {kek_file: " + kek + "}\nstore: {path: " + storePath + "}\n"
	for _, tc := range []struct {
		name, config, want string
	}{
		{"unknown field path", base + "systems:\n  meta:\n    keep: [shipping_address.planet]\n    pseudonymize: [customer_id]\n", "shipping_address.planet"},
		{"no pseudonymized subject", base + "systems:\n  meta:\n    keep: [event_type]\n    pseudonymize: [order_id]\n", "customer_id"},
		{"missing KEK", "store: {path: " + storePath + "}\n" + validSystems, "KEK"},
		{"unreadable KEK file", "keys: {kek_file: " + filepath.Join(dir, "nope") + "}\nstore: {path: " + storePath + "}\n" + validSystems, "kek_file"},
		{"bad KEK", "keys: {kek_file: " + writeFile(t, dir, "bad.b64", "c2hvcnQ=") + "}\nstore: {path: " + storePath + "}\n" + validSystems, "32 bytes"},
		{"unreachable store", "keys: {kek_file: " + kek + "}\nstore: {postgres: 'postgres://nobody@127.0.0.1:1/none?connect_timeout=2'}\n" + validSystems, "store.postgres"},
		{"unknown key", base + "systemz: {}\n" + validSystems, "systemz"},
		{"no store", "keys: {kek_file: " + kek + "}\n" + validSystems, "store"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := writeFile(t, t.TempDir(), "config.yaml", tc.config)
			var out, errb bytes.Buffer
			err := run(context.Background(), []string{"run", "--config", cfg, "--check-config"}, &out, &errb)
			if err == nil {
				t.Fatalf("start-up succeeded, want an error naming %q", tc.want)
			}
			msg := err.Error()
			if strings.Contains(msg, "\n") {
				t.Errorf("error spans several lines: %q", msg)
			}
			if !strings.Contains(msg, tc.want) {
				t.Errorf("error %q does not name %q", msg, tc.want)
			}
		})
	}
	t.Run("valid", func(t *testing.T) {
		cluster, err := kfake.NewCluster(kfake.SeedTopics(1, "orders.raw", "subjects.forget"))
		if err != nil {
			t.Fatal(err)
		}
		defer cluster.Close()
		cfg := writeFile(t, t.TempDir(), "config.yaml", base+"kafka: {brokers: ["+strings.Join(cluster.ListenAddrs(), ",")+"]}\n"+validSystems)
		var out, errb bytes.Buffer
		if err := run(context.Background(), []string{"run", "--config", cfg, "--check-config"}, &out, &errb); err != nil {
			t.Fatalf("check-config: %v", err)
		}
		if !strings.Contains(out.String(), "configuration ok") {
			t.Errorf("output %q", out.String())
		}
	})
}

// TestSchemaCommand prints a system's derived output schema.
func TestSchemaCommand(t *testing.T) {
	cfg := writeFile(t, t.TempDir(), "config.yaml", validSystems)
	var out, errb bytes.Buffer
	if err := run(context.Background(), []string{"schema", "--config", cfg, "--system", "meta"}, &out, &errb); err != nil {
		t.Fatal(err)
	}
	var s map[string]any
	if err := json.Unmarshal(out.Bytes(), &s); err != nil {
		t.Fatalf("not JSON: %v\n%s", err, out.String())
	}
	var names []string
	for _, f := range s["fields"].([]any) {
		names = append(names, f.(map[string]any)["name"].(string))
	}
	if got, want := strings.Join(names, ","), "event_id,event_type,occurred_at,order_id,customer_id,shipping_address"; got != want {
		t.Errorf("fields %s, want %s", got, want)
	}
	if err := run(context.Background(), []string{"schema", "--config", cfg, "--system", "nope"}, &out, &errb); err == nil {
		t.Error("unknown system accepted")
	}
}

// TestDemo runs the demo and checks its account: the marketing side shows
// no raw identifier, the forget is confirmed and the replay suppressed.
func TestDemo(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	var out, errb bytes.Buffer
	if err := run(ctx, []string{"demo", "--orders", "10", "--customers", "3"}, &out, &errb); err != nil {
		t.Fatalf("demo: %v\nstdout:\n%s\nstderr:\n%s", err, out.String(), errb.String())
	}
	text := out.String()
	for _, want := range []string{"FORGOTTEN", "suppressed (1 event", "fresh key", "google-analytics", "meta"} {
		if !strings.Contains(text, want) {
			t.Errorf("demo output lacks %q:\n%s", want, text)
		}
	}
	marketing := 0
	for _, line := range strings.Split(text, "\n") {
		if !strings.Contains(line, "→") {
			continue
		}
		marketing++
		for _, raw := range []string{"cust-", "ord-", "@example.com", "+49", "Cj0KCQiA"} {
			if strings.Contains(line, raw) {
				t.Errorf("marketing line shows a raw identifier (%s): %s", raw, line)
			}
		}
	}
	if marketing < 8 {
		t.Errorf("only %d marketing lines in the demo output:\n%s", marketing, text)
	}
}

// TestForgetCommandTimesOut: without a running service the forget command
// gives up after --timeout with exit status 3 and a clear message.
func TestForgetCommandTimesOut(t *testing.T) {
	kc := kafkatest.New(t)
	d := config.Default().Topics
	kc.CreateTopics(t, 1, nil, kc.Topic(d.Forget), kc.Topic(d.Forgotten))
	cfg := writeFile(t, t.TempDir(), "config.yaml", kafkaYAML(kc)+validSystems)
	var out, errb bytes.Buffer
	// A flag after the subject is accepted, as most Go CLIs accept it.
	err := run(context.Background(), []string{"forget", "--config", cfg, "cust-1", "--timeout", "1s"}, &out, &errb)
	if err == nil {
		t.Fatal("forget without a service succeeded")
	}
	if got := exitCode(err); got != 3 {
		t.Errorf("exit code %d, want 3 (%v)", got, err)
	}
	if !strings.Contains(err.Error(), "no confirmation") || strings.Contains(err.Error(), "cust-1") {
		t.Errorf("message %q should say no confirmation arrived and not echo the subject", err.Error())
	}
	if !strings.Contains(err.Error(), "stays queued") {
		t.Errorf("message %q should say the request stays queued and is carried out later", err.Error())
	}
}

// syncWriter serializes writes from the service's goroutines.
type syncWriter struct {
	mu  sync.Mutex
	buf *bytes.Buffer
}

func (w *syncWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.buf.Write(p)
}

// TestForgetAndStatusRefuseBadIDs (issue 24): forget and status refuse a
// SUBJECT_ID that breaks the contract (invalid UTF-8 here; argv cannot
// carry NUL) with exit status 2 before touching Kafka or the store: the
// service would dead-letter the request, and forget would wait for a
// confirmation that never comes. The message does not echo the ID.
func TestForgetAndStatusRefuseBadIDs(t *testing.T) {
	cfg := writeFile(t, t.TempDir(), "config.yaml", "kafka:\n  brokers: [127.0.0.1:1]\n"+validSystems)
	for _, cmd := range []string{"forget", "status"} {
		var out, errb bytes.Buffer
		err := run(context.Background(), []string{cmd, "--config", cfg, "cust-\xff"}, &out, &errb)
		if got := exitCode(err); got != 2 {
			t.Errorf("%s: exit code %d, want 2 (%v)", cmd, got, err)
		}
		if err == nil || !strings.Contains(err.Error(), "not valid UTF-8") || strings.Contains(err.Error(), "cust-") {
			t.Errorf("%s: error %v, want it to say the ID is not valid UTF-8 without echoing it", cmd, err)
		}
	}
}
