package main

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"regexp"
	"runtime/debug"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hygiene/pseudonymizer/internal/kafkatest"
	"github.com/jackc/pgx/v5"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/sr/srfake"
	"github.com/twmb/franz-go/plugin/kslog"

	"github.com/hygiene/pseudonymizer/internal/config"
	"github.com/hygiene/pseudonymizer/schema"
	"github.com/hygiene/pseudonymizer/store/postgres/pgtest"
)

const testKEK = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=\n"

// TestHelp: every command's --help prints its usage to stdout and exits 0;
// `help COMMAND` prints the same.
func TestHelp(t *testing.T) {
	for _, cmd := range []string{"run", "demo", "schema", "forget", "tail", "linkability", "produce-sample", "rewrap", "healthcheck"} {
		t.Run(cmd, func(t *testing.T) {
			for _, args := range [][]string{{cmd, "--help"}, {cmd, "-h"}, {"help", cmd}} {
				var out, errb bytes.Buffer
				err := run(context.Background(), args, &out, &errb)
				if err != nil {
					t.Fatalf("%v: %v (exit %d)", args, err, exitCode(err))
				}
				if !strings.HasPrefix(out.String(), "Usage: pseudonymizer "+cmd+" ") {
					t.Errorf("%v printed %q", args, out.String())
				}
				if errb.Len() != 0 {
					t.Errorf("%v wrote to stderr: %q", args, errb.String())
				}
			}
		})
	}
	var out bytes.Buffer
	if err := run(context.Background(), []string{"forget", "--help"}, &out, &out); err != nil || !strings.Contains(out.String(), "SUBJECT_ID") {
		t.Errorf("forget --help does not name SUBJECT_ID: %v %q", err, out.String())
	}
	out.Reset()
	if err := run(context.Background(), []string{"help"}, &out, &out); err != nil || !strings.Contains(out.String(), "produce-sample") {
		t.Errorf("help: %v %q", err, out.String())
	}
}

// TestUsageErrors: a bad flag or a missing argument exits 2 with the usage
// on stderr; no arguments at all print the general usage and exit 2.
func TestUsageErrors(t *testing.T) {
	for _, tc := range []struct {
		args        []string
		want, usage string
	}{
		{[]string{"run", "--nope"}, "nope", "Usage: pseudonymizer run "},
		{[]string{"forget", "--config", "x.yaml"}, "SUBJECT_ID", "Usage: pseudonymizer forget "},
		{[]string{"tail", "--config", "x.yaml"}, "--system", "Usage: pseudonymizer tail "},
		{[]string{"demo", "--broker-only", "--keep-running"}, "exclude", "Usage: pseudonymizer demo "},
		{[]string{"frobnicate"}, "unknown command", "pseudonymizer help COMMAND"},
	} {
		var out, errb bytes.Buffer
		err := run(context.Background(), tc.args, &out, &errb)
		if got := exitCode(err); got != 2 {
			t.Errorf("%v: exit %d (%v), want 2", tc.args, got, err)
		}
		if !strings.Contains(err.Error()+errb.String(), tc.want) || !strings.Contains(errb.String(), tc.usage) {
			t.Errorf("%v: error %v, stderr %q; want %q and the usage", tc.args, err, errb.String(), tc.want)
		}
	}
	// A missing --config is a missing argument too.
	for _, args := range [][]string{{"run"}, {"status", "cust-1"}, {"forget-log"}, {"tail", "--system", "meta"}} {
		var out, errb bytes.Buffer
		err := run(context.Background(), args, &out, &errb)
		if got := exitCode(err); got != 2 || !strings.Contains(err.Error(), "--config") {
			t.Errorf("%v: exit %d (%v), want 2 naming --config", args, got, err)
		}
	}
	var out, errb bytes.Buffer
	if err := run(context.Background(), nil, &out, &errb); exitCode(err) != 2 || !strings.Contains(errb.String(), "Usage:") {
		t.Errorf("no arguments: %v, stderr %q", err, errb.String())
	}
}

// TestVersion: a stamped version wins; else the module version, else the
// VCS revision the toolchain recorded, else "dev".
func TestVersion(t *testing.T) {
	vcs := &debug.BuildInfo{Main: debug.Module{Version: "(devel)"}, Settings: []debug.BuildSetting{
		{Key: "vcs.revision", Value: "0123456789abcdef0123"}, {Key: "vcs.modified", Value: "true"}}}
	for _, tc := range []struct {
		stamped string
		bi      *debug.BuildInfo
		want    string
	}{
		{"v1.2.3", vcs, "v1.2.3"},
		{"dev", &debug.BuildInfo{Main: debug.Module{Version: "v0.4.0"}}, "v0.4.0"},
		{"dev", vcs, "dev-0123456789ab-dirty"},
		{"dev", &debug.BuildInfo{Main: debug.Module{Version: "(devel)"}}, "dev"},
		{"", nil, "dev"},
	} {
		if got := versionFrom(tc.stamped, tc.bi, tc.bi != nil); got != tc.want {
			t.Errorf("versionFrom(%q, …) = %q, want %q", tc.stamped, got, tc.want)
		}
	}
	var out bytes.Buffer
	if err := run(context.Background(), []string{"--version"}, &out, &out); err != nil || strings.TrimSpace(out.String()) != version() {
		t.Errorf("--version: %v %q", err, out.String())
	}
}

// TestKafkaLoggerQuietensInfo: the Kafka client's info messages become
// debug; its warnings stay.
func TestKafkaLoggerQuietensInfo(t *testing.T) {
	var buf bytes.Buffer
	l := kafkaLogger{kslog.New(slog.New(slog.NewTextHandler(&buf, &slog.HandlerOptions{Level: slog.LevelInfo})))}
	l.Log(kgo.LogLevelInfo, "assigning partitions")
	l.Log(kgo.LogLevelWarn, "unable to open connection to broker")
	if got := buf.String(); strings.Contains(got, "assigning") || !strings.Contains(got, "unable to open") {
		t.Errorf("log %q: want the warning only", got)
	}
}

// lockedBuffer is a bytes.Buffer safe for the service's goroutines.
type lockedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// startRun runs `pseudonymizer run` in-process until the test ends and
// waits for /readyz; it returns the log and a stop function that returns
// run's error.
func startRun(t *testing.T, cfgPath, httpAddr string) (*lockedBuffer, func() error) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	logs := &lockedBuffer{}
	done := make(chan error, 1)
	go func() { done <- run(ctx, []string{"run", "--config", cfgPath}, &bytes.Buffer{}, logs) }()
	var once sync.Once
	var err error
	stop := func() error {
		once.Do(func() { cancel(); err = <-done })
		return err
	}
	t.Cleanup(func() { _ = stop() })
	kafkatest.WaitFor(t, 30*time.Second, "/readyz", func() bool {
		code, _ := httpGet("http://" + httpAddr + "/readyz")
		return code == http.StatusOK
	})
	return logs, stop
}

func serviceConfig(t *testing.T, dir string, brokers []string, extra string) (path, httpAddr string) {
	httpAddr = freeAddr(t)
	return writeFile(t, dir, "config.yaml", "kafka: {brokers: ["+strings.Join(brokers, ",")+"], transactional_id: cli-test, session_timeout: 6s}\n"+
		"store: {path: keys.db}\nkeys: {kek_file: kek.b64}\n"+
		"http: {listen: '"+httpAddr+"'}\nlog: {level: info, format: json}\n"+extra+validSystems), httpAddr
}

// TestIdleStartStopLogs: an idle start and stop logs a handful of lines of
// the service's own, none of them the Kafka client's info messages.
func TestIdleStartStopLogs(t *testing.T) {
	cluster, err := kfake.NewCluster(kfake.SeedTopics(1, "orders.raw", "subjects.forget"))
	if err != nil {
		t.Fatal(err)
	}
	defer cluster.Close()
	dir := t.TempDir()
	writeFile(t, dir, "kek.b64", testKEK)
	cfg, addr := serviceConfig(t, dir, cluster.ListenAddrs(), "")
	logs, stop := startRun(t, cfg, addr)
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	var info int
	for _, line := range strings.Split(strings.TrimSpace(logs.String()), "\n") {
		var rec map[string]any
		if err := json.Unmarshal([]byte(line), &rec); err != nil {
			t.Fatalf("log line not JSON: %q", line)
		}
		if rec["level"] == "INFO" {
			info++
			if rec["component"] == "kafka" {
				t.Errorf("Kafka client info line: %s", line)
			}
		}
		if rec["msg"] == "pseudonymizer started" && !strings.HasPrefix(fmt.Sprint(rec["store"]), "embedded ") {
			t.Errorf("the start-up line does not name the store kind: %s", line)
		}
	}
	if info > 6 {
		t.Errorf("%d info lines for an idle start and stop:\n%s", info, logs.String())
	}
}

// TestUnreachableBrokerHint: with no broker, run keeps retrying but logs
// one line naming the brokers and how to start a local one.
func TestUnreachableBrokerHint(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	dead := ln.Addr().String()
	ln.Close()
	dir := t.TempDir()
	writeFile(t, dir, "kek.b64", testKEK)
	cfg, _ := serviceConfig(t, dir, []string{dead}, "")
	ctx, cancel := context.WithCancel(context.Background())
	logs := &lockedBuffer{}
	done := make(chan error, 1)
	go func() { done <- run(ctx, []string{"run", "--config", cfg}, &bytes.Buffer{}, logs) }()
	kafkatest.WaitFor(t, 30*time.Second, "the unreachable-broker line", func() bool { return strings.Contains(logs.String(), "demo --broker-only") })
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("run: %v", err)
	}
	if got := strings.Count(logs.String(), "demo --broker-only"); got != 1 {
		t.Errorf("hint logged %d times, want once", got)
	}
	if !strings.Contains(logs.String(), dead) {
		t.Errorf("hint does not name the broker %s:\n%s", dead, logs.String())
	}
}

// TestCheckConfigReadOnly: --check-config checks store, brokers and topics
// and creates neither the store file nor any topic; missing input topics and
// unreachable brokers are errors that name them.
func TestCheckConfigReadOnly(t *testing.T) {
	cluster, err := kfake.NewCluster(kfake.SeedTopics(2, "orders.raw", "subjects.forget"))
	if err != nil {
		t.Fatal(err)
	}
	defer cluster.Close()
	dir := t.TempDir()
	writeFile(t, dir, "kek.b64", testKEK)
	cfg := writeFile(t, dir, "config.yaml", "kafka: {brokers: ["+strings.Join(cluster.ListenAddrs(), ",")+"]}\n"+
		"store: {path: data/keys.db}\nkeys: {kek_file: kek.b64}\n"+validSystems)
	var out, errb bytes.Buffer
	if err := run(context.Background(), []string{"run", "--config", cfg, "--check-config"}, &out, &errb); err != nil {
		t.Fatalf("check-config: %v\n%s", err, errb.String())
	}
	for _, want := range []string{"configuration ok", "key store (embedded ", "empty", "orders.pseudo.meta", "will be created"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("output %q lacks %q", out.String(), want)
		}
	}
	if _, err := os.Stat(filepath.Join(dir, "data")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("check-config created the store directory (stat: %v)", err)
	}
	cl, err := kgo.NewClient(kgo.SeedBrokers(cluster.ListenAddrs()...))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	td, err := kadm.NewClient(cl).ListTopics(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(td.Names(), ","); got != "orders.raw,subjects.forget" {
		t.Errorf("topics after check-config: %s", got)
	}

	t.Run("missing input topic", func(t *testing.T) {
		other := writeFile(t, dir, "other.yaml", "kafka: {brokers: ["+strings.Join(cluster.ListenAddrs(), ",")+"]}\n"+
			"topics: {orders: shop.orders}\nstore: {path: data/keys.db}\nkeys: {kek_file: kek.b64}\n"+validSystems)
		err := run(context.Background(), []string{"run", "--config", other, "--check-config"}, &out, &errb)
		if err == nil || !strings.Contains(err.Error(), "missing input topic shop.orders") {
			t.Errorf("error %v, want one naming the missing topic", err)
		}
	})
	t.Run("unreachable brokers", func(t *testing.T) {
		other := writeFile(t, dir, "dead.yaml", "kafka: {brokers: ['127.0.0.1:1']}\nstore: {path: data/keys.db}\nkeys: {kek_file: kek.b64}\n"+validSystems)
		err := run(context.Background(), []string{"run", "--config", other, "--check-config"}, &out, &errb)
		if err == nil || !strings.Contains(err.Error(), "kafka.brokers") || !strings.Contains(err.Error(), "127.0.0.1:1") {
			t.Errorf("error %v, want one naming kafka.brokers", err)
		}
	})
}

// TestProduceSampleAndTail: produce-sample publishes orders, the service
// pseudonymizes them and tail prints the system's outputs as JSON lines,
// in bare Avro and with a schema registry.
func TestProduceSampleAndTail(t *testing.T) {
	for _, tc := range []struct{ name, extra string }{{"bare", ""}, {"registry", "registry"}} {
		t.Run(tc.name, func(t *testing.T) {
			cluster, err := kfake.NewCluster(kfake.SeedTopics(2, "orders.raw", "subjects.forget"))
			if err != nil {
				t.Fatal(err)
			}
			defer cluster.Close()
			extra := ""
			if tc.extra == "registry" {
				fake := srfake.New()
				defer fake.Close()
				extra = "schema_registry: {url: '" + fake.URL() + "'}\n"
			}
			dir := t.TempDir()
			writeFile(t, dir, "kek.b64", testKEK)
			cfg, addr := serviceConfig(t, dir, cluster.ListenAddrs(), extra)
			_, stop := startRun(t, cfg, addr)
			var out, errb bytes.Buffer
			if err := run(context.Background(), []string{"produce-sample", "--config", cfg, "--orders", "5", "--customers", "2", "--seed", "7"}, &out, &errb); err != nil {
				t.Fatalf("produce-sample: %v", err)
			}
			out.Reset()
			kafkatest.WaitFor(t, 30*time.Second, "the five orders pseudonymized", func() bool {
				return metricValue(t, addr, `pseudonymizer_records_out_total{system="meta"}`) == 5
			})
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			// Without -n: everything there is, then exit.
			if err := run(ctx, []string{"tail", "--config", cfg, "--system", "meta"}, &out, &errb); err != nil {
				t.Fatalf("tail: %v", err)
			}
			if err := stop(); err != nil {
				t.Fatal(err)
			}
			lines := strings.Split(strings.TrimSpace(out.String()), "\n")
			if len(lines) != 5 {
				t.Fatalf("%d lines, want 5:\n%s", len(lines), out.String())
			}
			uuid := regexp.MustCompile(`^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$`)
			for _, line := range lines {
				var l struct {
					Topic, Key, Error string
					Value             map[string]any
				}
				if err := json.Unmarshal([]byte(line), &l); err != nil {
					t.Fatalf("not JSON: %q", line)
				}
				if l.Topic != "orders.pseudo.meta" || l.Error != "" || !uuid.MatchString(l.Key) || l.Value["customer_id"] != l.Key {
					t.Errorf("line %s", line)
				}
				if strings.Contains(line, "cust-") || strings.Contains(line, "@example.com") {
					t.Errorf("raw identifier in a tailed output: %s", line)
				}
			}
		})
	}
}

// TestHealthcheck: exit 0 on 200, an error with the reason otherwise.
func TestHealthcheck(t *testing.T) {
	var ready atomic.Bool
	ready.Store(true)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		if !ready.Load() {
			http.Error(w, "not ready: group not joined", http.StatusServiceUnavailable)
			return
		}
		_, _ = w.Write([]byte("ready\n"))
	}))
	defer srv.Close()
	var out bytes.Buffer
	if err := run(context.Background(), []string{"healthcheck", "--url", srv.URL + "/readyz"}, &out, &out); err != nil {
		t.Errorf("ready service: %v", err)
	}
	ready.Store(false)
	err := run(context.Background(), []string{"healthcheck", "--url", srv.URL + "/readyz"}, &out, &out)
	if exitCode(err) != 1 || !strings.Contains(err.Error(), "503") || !strings.Contains(err.Error(), "group not joined") {
		t.Errorf("unready service: %v", err)
	}
	srv.Close()
	if err := run(context.Background(), []string{"healthcheck", "--url", srv.URL + "/readyz"}, &out, &out); err == nil {
		t.Error("unreachable service: no error")
	}
}

// TestCheckConfigPostgresReadOnly: --check-config against an empty
// PostgreSQL schema reports it empty and creates no table.
func TestCheckConfigPostgresReadOnly(t *testing.T) {
	dsn := pgtest.MustTempSchemaDSN(t)
	cluster, err := kfake.NewCluster(kfake.SeedTopics(1, "orders.raw", "subjects.forget"))
	if err != nil {
		t.Fatal(err)
	}
	defer cluster.Close()
	dir := t.TempDir()
	writeFile(t, dir, "kek.b64", testKEK)
	cfg := writeFile(t, dir, "config.yaml", "kafka: {brokers: ["+strings.Join(cluster.ListenAddrs(), ",")+"]}\n"+
		"store: {postgres: '"+dsn+"'}\nkeys: {kek_file: kek.b64}\n"+validSystems)
	var out, errb bytes.Buffer
	if err := run(context.Background(), []string{"run", "--config", cfg, "--check-config"}, &out, &errb); err != nil {
		t.Fatalf("check-config: %v", err)
	}
	if !strings.Contains(out.String(), "key store (postgres) empty") {
		t.Errorf("output %q does not report the empty store", out.String())
	}
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	var tables int
	if err := conn.QueryRow(ctx, "SELECT count(*) FROM information_schema.tables WHERE table_schema = current_schema()").Scan(&tables); err != nil {
		t.Fatal(err)
	}
	if tables != 0 {
		t.Errorf("check-config created %d tables", tables)
	}
}

// TestTailFromEnd: --from-end skips what the topic already holds; an
// undecodable value is reported in the line's error field.
func TestTailFromEnd(t *testing.T) {
	cluster, err := kfake.NewCluster(kfake.SeedTopics(1, "orders.pseudo.meta"))
	if err != nil {
		t.Fatal(err)
	}
	defer cluster.Close()
	cfg := writeFile(t, t.TempDir(), "config.yaml", "kafka: {brokers: ["+strings.Join(cluster.ListenAddrs(), ",")+"]}\n"+validSystems)
	cl, err := kgo.NewClient(kgo.SeedBrokers(cluster.ListenAddrs()...))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	produce := func() {
		if err := cl.ProduceSync(ctx, &kgo.Record{Topic: "orders.pseudo.meta", Value: []byte{0xff}}).FirstErr(); err != nil {
			t.Error(err)
		}
	}
	produce() // offset 0, before tail starts
	out := &lockedBuffer{}
	done := make(chan error, 1)
	tctx, stopTail := context.WithCancel(ctx)
	defer stopTail()
	go func() {
		done <- run(tctx, []string{"tail", "--config", cfg, "--system", "meta", "--from-end"}, out, &bytes.Buffer{})
	}()
	// Keep producing until tail has printed a record, then stop it as
	// Ctrl-C would: it cannot know when tail has found the end.
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for waiting := true; waiting; {
		select {
		case err := <-done:
			t.Fatalf("tail --from-end returned before Ctrl-C: %v", err)
		case <-tick.C:
			if strings.Contains(out.String(), "\n") {
				waiting = false
				break
			}
			produce()
		}
	}
	stopTail()
	if err := <-done; err != nil {
		t.Fatalf("tail: %v", err)
	}
	var line struct {
		Offset int64
		Error  string
	}
	if err := json.Unmarshal([]byte(strings.SplitN(out.String(), "\n", 2)[0]), &line); err != nil {
		t.Fatalf("output %q: %v", out.String(), err)
	}
	if line.Offset == 0 {
		t.Error("--from-end printed a record that was there before")
	}
	if line.Error == "" {
		t.Error("an undecodable value has no error")
	}
}

// TestStrictDecode: tail reports truncated values and trailing bytes.
func TestStrictDecode(t *testing.T) {
	good, err := schema.MarshalForgetConfirmation(&schema.ForgetConfirmation{RequestID: "r", SubjectID: "s", Status: schema.StatusForgotten, Systems: []string{"meta"}})
	if err != nil {
		t.Fatal(err)
	}
	s := schema.ForgetConfirmationSchema()
	if v, err := strictDecode(s, good); err != nil || v["request_id"] != "r" {
		t.Errorf("valid value: %v, %v", v, err)
	}
	if _, err := strictDecode(s, good[:len(good)-1]); err == nil {
		t.Error("truncated value decoded")
	}
	if _, err := strictDecode(s, append(append([]byte(nil), good...), 0)); err == nil {
		t.Error("trailing byte accepted")
	}
}

// TestTailRefusesHostileValues: a value whose array announces MinInt64 items
// (which makes hamba negate the count and write through a negative slice
// length) is reported as undecodable; hamba never sees it.
func TestTailRefusesHostileValues(t *testing.T) {
	s := schema.ForgetConfirmationSchema()
	good, err := schema.MarshalForgetConfirmation(&schema.ForgetConfirmation{RequestID: "r", SubjectID: "s", Status: schema.StatusForgotten})
	if err != nil {
		t.Fatal(err)
	}
	// The empty systems array is the final 0x00: announce MinInt64 items
	// (a negative count, so a block byte size follows), then 2 strings.
	hostile := append([]byte(nil), good[:len(good)-1]...)
	hostile = binary.AppendVarint(hostile, math.MinInt64)
	hostile = binary.AppendVarint(hostile, 0)
	hostile = binary.AppendVarint(hostile, 2)
	hostile = append(hostile, 2, 'a', 2, 'b', 0)
	d, err := newOutputDecoder(config.Config{}, s)
	if err != nil {
		t.Fatal(err)
	}
	if v, err := d.decode(context.Background(), hostile); err == nil {
		t.Fatalf("hostile value decoded: %v", v)
	}
	if v, err := d.decode(context.Background(), good); err != nil || v.(map[string]any)["request_id"] != "r" {
		t.Errorf("valid value: %v, %v", v, err)
	}
}

// TestTailErasureNotice: tail prints an erasure notice (a tombstone) with
// a null value and its requested_at header.
func TestTailErasureNotice(t *testing.T) {
	cluster, err := kfake.NewCluster(kfake.SeedTopics(1, "orders.pseudo.meta"))
	if err != nil {
		t.Fatal(err)
	}
	defer cluster.Close()
	cfg := writeFile(t, t.TempDir(), "config.yaml", "kafka: {brokers: ["+strings.Join(cluster.ListenAddrs(), ",")+"]}\n"+validSystems)
	cl, err := kgo.NewClient(kgo.SeedBrokers(cluster.ListenAddrs()...))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	notice := &kgo.Record{Topic: "orders.pseudo.meta", Key: []byte("41d26989-54cc-85da-ab6a-889cd8053c85"),
		Headers: []kgo.RecordHeader{{Key: "requested_at", Value: []byte("2026-12-03T10:04:05.123Z")}}}
	if err := cl.ProduceSync(ctx, notice).FirstErr(); err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	if err := run(ctx, []string{"tail", "--config", cfg, "--system", "meta", "-n", "1"}, &out, &bytes.Buffer{}); err != nil {
		t.Fatalf("tail: %v", err)
	}
	var l struct {
		Key     string
		Value   any
		Headers map[string]string
		Error   string
	}
	if err := json.Unmarshal(out.Bytes(), &l); err != nil {
		t.Fatalf("not JSON: %q", out.String())
	}
	if l.Key != string(notice.Key) || l.Value != nil || l.Error != "" || l.Headers["requested_at"] != "2026-12-03T10:04:05.123Z" {
		t.Errorf("notice line %s", out.String())
	}
}
