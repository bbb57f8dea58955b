package main

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/hygiene/pseudonymizer/internal/kafkatest"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"
)

// TestMain lets the test binary serve as the bench's copy worker, which
// the bench starts by re-executing itself.
func TestMain(m *testing.M) {
	if os.Getenv(workerEnv) == "1" && len(os.Args) > 1 && os.Args[1] == workerCommand {
		ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
		err := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
		stop()
		if err != nil {
			os.Stderr.WriteString("worker: " + err.Error() + "\n")
			os.Exit(1)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

func TestBenchQuick(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	var out, errOut bytes.Buffer
	if err := run(ctx, []string{"--quick", "--events", "5000", "--no-postgres"}, &out, &errOut); err != nil {
		t.Fatalf("bench: %v\nstdout:\n%s\nstderr:\n%s", err, out.String(), errOut.String())
	}
	rates := map[string]float64{}
	for _, line := range strings.Split(out.String(), "\n") {
		f := strings.Fields(line)
		if len(f) < 3 {
			continue
		}
		for _, name := range []string{"a", "b", "c", "c-cold", "d", "d-cold"} {
			if f[0] == name {
				// The rate follows the label; skipped pipelines say so.
				for _, x := range f[1:] {
					if v, err := strconv.ParseFloat(x, 64); err == nil {
						rates[name] = v
						break
					}
					if x == "skipped" {
						rates[name] = -1
						break
					}
				}
			}
		}
	}
	for _, name := range []string{"a", "b", "d-cold", "d"} {
		if rates[name] <= 0 {
			t.Errorf("pipeline %s: no positive events/s in the table:\n%s", name, out.String())
		}
	}
	if rates["c"] != -1 || rates["c-cold"] != -1 {
		t.Errorf("PostgreSQL pipelines not reported as skipped:\n%s", out.String())
	}
	if !strings.Contains(out.String(), "d/b ") {
		t.Errorf("no d/b ratio:\n%s", out.String())
	}
}

// TestBenchExternalBroker runs the quick bench against the Kafka cluster of
// PSEUDONYMIZER_TEST_KAFKA (skipped without it) and checks that the run
// deleted every topic it created.
func TestBenchExternalBroker(t *testing.T) {
	brokers := os.Getenv("PSEUDONYMIZER_TEST_KAFKA")
	if brokers == "" {
		t.Skip("set PSEUDONYMIZER_TEST_KAFKA=host:port to run the bench against a real broker")
	}
	cl, err := kgo.NewClient(kgo.SeedBrokers(strings.Split(brokers, ",")...))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	adm := kadm.NewClient(cl)
	benchTopics := func() []string {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		td, err := adm.ListTopics(ctx)
		if err != nil {
			t.Fatalf("list topics: %v", err)
		}
		var out []string
		for _, name := range td.Names() {
			if strings.HasPrefix(name, "bench-") {
				out = append(out, name)
			}
		}
		return out
	}
	before := map[string]bool{}
	for _, name := range benchTopics() {
		before[name] = true
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	var out, errOut bytes.Buffer
	if err := run(ctx, []string{"--quick", "--events", "3000", "--no-postgres", "--brokers", brokers}, &out, &errOut); err != nil {
		t.Fatalf("bench: %v\nstdout:\n%s\nstderr:\n%s", err, out.String(), errOut.String())
	}
	if !strings.Contains(out.String(), "Kafka broker at "+brokers) || !strings.Contains(out.String(), "d/b ") {
		t.Errorf("the table does not name the external broker or lacks the d/b ratio:\n%s", out.String())
	}
	// Topic deletion is asynchronous on a real broker: the run's topics
	// must disappear from the metadata.
	kafkatest.WaitForNil(t, 30*time.Second, "the run's topics to be deleted", func() error {
		var left []string
		for _, name := range benchTopics() {
			if !before[name] {
				left = append(left, name)
			}
		}
		if len(left) > 0 {
			return fmt.Errorf("still there: %v", left)
		}
		return nil
	})
}

// TestProcessingSettings: --cache-subjects and --max-poll-records reach the
// pseudonymizer's configuration only when given.
func TestProcessingSettings(t *testing.T) {
	b := &bench{cacheSubjects: -1}
	if p := b.processing(); len(p) != 1 || p["max_backoff"] != "2s" {
		t.Errorf("defaults: processing = %v", p)
	}
	b = &bench{cacheSubjects: 0, maxPoll: 20000}
	if p := b.processing(); p["cache_subjects"] != 0 || p["max_poll_records"] != 20000 {
		t.Errorf("processing = %v, want cache_subjects 0 and max_poll_records 20000", p)
	}
	if got := setting(-1, 0); got != "default" {
		t.Errorf("setting(-1, 0) = %q", got)
	}
	if got := setting(0, 0); got != "0" {
		t.Errorf("setting(0, 0) = %q", got)
	}
}

// TestTableEfficiency: the table charges PostgreSQL's CPU to the PostgreSQL
// pipelines only and divides the transactional copy's CPU per event by the
// pipeline's own plus PostgreSQL's.
func TestTableEfficiency(t *testing.T) {
	b := &bench{events: 1000}
	results := []*benchResult{
		{name: "b", kind: "txcopy", label: "txcopy", cpu: 4 * time.Millisecond, pgCPU: 50 * time.Millisecond, kafkaCPU: -1, rate: 1},
		{name: "c", kind: "pg", label: "pg", cpu: 6 * time.Millisecond, pgCPU: 2 * time.Millisecond, kafkaCPU: -1, rate: 1, pseudonymizer: true},
		{name: "d", kind: "embedded", label: "embedded", cpu: 5 * time.Millisecond, pgCPU: 9 * time.Millisecond, kafkaCPU: -1, rate: 1, pseudonymizer: true},
	}
	var out bytes.Buffer
	b.table(&out, results)
	fields := map[string][]string{}
	for _, line := range strings.Split(out.String(), "\n") {
		if f := strings.Fields(line); len(f) > 0 {
			fields[f[0]] = f
		}
	}
	// c: 4 µs / (6 µs + 2 µs); d: 4 µs / 5 µs, PostgreSQL's CPU not charged.
	want := map[string][2]string{"b": {"-", "-"}, "c": {"2.00", "0.50"}, "d": {"-", "0.80"}}
	for name, w := range want {
		f := fields[name]
		// The last four columns: µs PostgreSQL/event, efficiency, batches, calls.
		if len(f) < 4 || f[len(f)-4] != w[0] || f[len(f)-3] != w[1] {
			t.Errorf("pipeline %s: row %q, want PostgreSQL/event %s and efficiency %s", name, strings.Join(f, " "), w[0], w[1])
		}
	}
}
