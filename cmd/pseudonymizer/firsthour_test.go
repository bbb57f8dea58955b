package main

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/hygiene/pseudonymizer/internal/kafkatest"
	"github.com/hygiene/pseudonymizer/store/postgres/pgtest"
)

// metricValue returns the value of the first sample of the series whose
// exposition line starts with series (name and labels, as printed), or -1.
func metricValue(t *testing.T, httpAddr, series string) float64 {
	t.Helper()
	code, body := httpGet("http://" + httpAddr + "/metrics")
	if code != 200 {
		return -1
	}
	re := regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(series) + ` (\S+)$`)
	m := re.FindStringSubmatch(body)
	if m == nil {
		return -1
	}
	v, err := strconv.ParseFloat(m[1], 64)
	if err != nil {
		t.Fatalf("metric %s: %v", series, err)
	}
	return v
}

// TestSampleOrdersAfterForget: sample orders published after a customer was
// forgotten are new orders, pseudonymized with a new key, not suppressed as
// the forgotten customer's past (they were dated an hour back).
func TestSampleOrdersAfterForget(t *testing.T) {
	cluster, err := kfake.NewCluster(kfake.SeedTopics(1, "orders.raw", "subjects.forget"))
	if err != nil {
		t.Fatal(err)
	}
	defer cluster.Close()
	dir := t.TempDir()
	writeFile(t, dir, "kek.b64", testKEK)
	cfg, addr := serviceConfig(t, dir, cluster.ListenAddrs(), "")
	_, stop := startRun(t, cfg, addr)
	defer func() { _ = stop() }()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	var out, errb bytes.Buffer
	if err := run(ctx, []string{"forget", "--config", cfg, "--timeout", "30s", "cust-100000"}, &out, &errb); err != nil {
		t.Fatalf("forget: %v", err)
	}
	if err := run(ctx, []string{"produce-sample", "--config", cfg, "--orders", "3", "--customers", "1"}, &out, &errb); err != nil {
		t.Fatalf("produce-sample: %v", err)
	}
	kafkatest.WaitFor(t, 30*time.Second, "the three orders consumed", func() bool {
		return metricValue(t, addr, `pseudonymizer_records_in_total{topic="orders.raw"}`) == 3
	})
	if got := metricValue(t, addr, "pseudonymizer_suppressed_events_total"); got != 0 {
		t.Errorf("%v of the forgotten customer's new sample orders suppressed, want none", got)
	}
	out.Reset()
	err = run(ctx, []string{"status", "--config", cfg, "cust-100000", "--json"}, &out, &errb)
	if exitCodeOf(err) != 0 || !strings.Contains(out.String(), `"state":"active"`) {
		t.Errorf("status after new orders: %v, %s; want active (a new key)", err, out.String())
	}
}

// TestMissingKEKFileSaysHowToCreateOne: a missing keys.kek_file fails with
// the one-liner that creates a KEK.
func TestMissingKEKFileSaysHowToCreateOne(t *testing.T) {
	cfg := writeFile(t, t.TempDir(), "config.yaml", "kafka: {brokers: ['127.0.0.1:1']}\nstore: {path: keys.db}\nkeys: {kek_file: kek.b64}\n"+validSystems)
	var out, errb bytes.Buffer
	err := run(context.Background(), []string{"run", "--config", cfg, "--check-config"}, &out, &errb)
	if err == nil || !strings.Contains(err.Error(), "keys.kek_file") || !strings.Contains(err.Error(), "head -c 32 /dev/urandom | base64 >") {
		t.Errorf("error %v: want keys.kek_file and the command that creates a KEK", err)
	}
}

// TestReadOnlyToolsWhileRunning: with the embedded store, status and
// forget-log answer while `run` holds the store file (through its admin
// socket, mode 0600) exactly as they answer once it stopped; rewrap refuses
// with a message that says to stop the service.
func TestReadOnlyToolsWhileRunning(t *testing.T) {
	cluster, err := kfake.NewCluster(kfake.SeedTopics(1, "orders.raw", "subjects.forget"))
	if err != nil {
		t.Fatal(err)
	}
	defer cluster.Close()
	dir := t.TempDir()
	writeFile(t, dir, "kek.b64", testKEK)
	cfg, addr := serviceConfig(t, dir, cluster.ListenAddrs(), "")
	_, stop := startRun(t, cfg, addr)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := func(args ...string) (string, error) {
		var out, errb bytes.Buffer
		err := run(ctx, args, &out, &errb)
		return out.String(), err
	}
	if _, err := cmd("produce-sample", "--config", cfg, "--orders", "2", "--customers", "1"); err != nil {
		t.Fatal(err)
	}
	kafkatest.WaitFor(t, 30*time.Second, "the orders consumed", func() bool {
		return metricValue(t, addr, `pseudonymizer_records_in_total{topic="orders.raw"}`) == 2
	})
	out, err := cmd("status", "--config", cfg, "--json", "cust-100000")
	if err != nil || !strings.Contains(out, `"state":"active"`) || !strings.Contains(out, `"meta":`) {
		t.Fatalf("status while running: %v, %s", err, out)
	}
	if _, err := cmd("forget", "--config", cfg, "--timeout", "30s", "cust-100000"); err != nil {
		t.Fatal(err)
	}
	running, err := cmd("status", "--config", cfg, "--json", "cust-100000")
	if exitCodeOf(err) != exitForgotten || !strings.Contains(running, `"state":"forgotten"`) {
		t.Fatalf("status after forget while running: %v, %s", err, running)
	}
	logRunning, err := cmd("forget-log", "--config", cfg)
	if err != nil || !strings.Contains(logRunning, `"status":"FORGOTTEN"`) {
		t.Fatalf("forget-log while running: %v, %s", err, logRunning)
	}
	if strings.Contains(running+logRunning, "cust-100000") {
		t.Error("a raw subject ID in the output")
	}
	fi, err := os.Stat(filepath.Join(dir, "keys.db.sock"))
	if err != nil || fi.Mode()&os.ModeSocket == 0 || fi.Mode().Perm() != 0o600 {
		t.Errorf("admin socket: %v, %v; want a socket of mode 0600", fi, err)
	}
	if _, err := cmd("rewrap", "--config", cfg); err == nil || !strings.Contains(err.Error(), "stop it") {
		t.Errorf("rewrap while running: %v; want a refusal that says to stop the service", err)
	}
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(dir, "keys.db.sock")); !os.IsNotExist(err) {
		t.Errorf("admin socket left behind: %v", err)
	}
	stopped, err := cmd("status", "--config", cfg, "--json", "cust-100000")
	if exitCodeOf(err) != exitForgotten || stopped != running {
		t.Errorf("status once stopped: %v, %s; while running it said %s", err, stopped, running)
	}
	if logStopped, err := cmd("forget-log", "--config", cfg); err != nil || logStopped != logRunning {
		t.Errorf("forget-log once stopped: %v, %s; while running it said %s", err, logStopped, logRunning)
	}
	if out, err := cmd("rewrap", "--config", cfg); err != nil {
		t.Errorf("rewrap once stopped: %v, %s", err, out)
	}
}

// TestFencedInstanceNotReady: two instances with one transactional ID (one
// config on one host) fence each other; the fenced one must not report
// ready, and must say in one log line what to set.
func TestFencedInstanceNotReady(t *testing.T) {
	cluster, err := kfake.NewCluster(kfake.SeedTopics(2, "orders.raw", "subjects.forget"))
	if err != nil {
		t.Fatal(err)
	}
	defer cluster.Close()
	var addrs []string
	var logs []*lockedBuffer
	var cfg string
	for range 2 {
		dir := t.TempDir()
		writeFile(t, dir, "kek.b64", testKEK)
		var addr string
		cfg, addr = serviceConfig(t, dir, cluster.ListenAddrs(), "")
		l, _ := startRun(t, cfg, addr)
		addrs, logs = append(addrs, addr), append(logs, l)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	var out, errb bytes.Buffer
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("logs of the first instance:\n%s", logs[0].String())
		}
	})
	kafkatest.WaitFor(t, 45*time.Second, "an instance that reports the fencing", func() bool {
		if err := run(ctx, []string{"produce-sample", "--config", cfg, "--orders", "20", "--customers", "8"}, &out, &errb); err != nil {
			t.Fatal(err)
		}
		for i, addr := range addrs {
			code, body := httpGet("http://" + addr + "/readyz")
			if code != 200 && strings.Contains(body, "kafka.transactional_id") && strings.Contains(logs[i].String(), "kafka.transactional_id") {
				return true
			}
		}
		return false
	})
}

// TestTailLastN: as Unix tail, -n N prints the last N records and exits at
// the end of the topic, also when the topic holds fewer; without -n it
// prints all and exits. Transactions put markers between the records.
func TestTailLastN(t *testing.T) {
	cluster, err := kfake.NewCluster(kfake.SeedTopics(2, "orders.pseudo.meta"))
	if err != nil {
		t.Fatal(err)
	}
	defer cluster.Close()
	cfg := writeFile(t, t.TempDir(), "config.yaml", "kafka: {brokers: ["+strings.Join(cluster.ListenAddrs(), ",")+"]}\n"+validSystems)
	cl, err := kgo.NewClient(kgo.SeedBrokers(cluster.ListenAddrs()...), kgo.TransactionalID("tail-test"), kgo.RecordPartitioner(kgo.RoundRobinPartitioner()))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	t0 := time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC)
	for txn := range 7 {
		if err := cl.BeginTransaction(); err != nil {
			t.Fatal(err)
		}
		for i := range 3 {
			k := txn*3 + i
			cl.Produce(ctx, &kgo.Record{Topic: "orders.pseudo.meta", Key: []byte(fmt.Sprintf("k%02d", k)), Value: []byte{0xff}, Timestamp: t0.Add(time.Duration(k) * time.Second)}, nil)
		}
		if err := cl.Flush(ctx); err != nil {
			t.Fatal(err)
		}
		if err := cl.EndTransaction(ctx, kgo.TryCommit); err != nil {
			t.Fatal(err)
		}
	}
	for _, tc := range []struct {
		args  []string
		first int
		lines int
	}{
		{[]string{"-n", "3"}, 18, 3},
		{[]string{"-n", "40"}, -1, 21},
		{nil, -1, 21},
	} {
		tctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		var out bytes.Buffer
		err := run(tctx, append([]string{"tail", "--config", cfg, "--system", "meta"}, tc.args...), &out, &bytes.Buffer{})
		blocked := tctx.Err() != nil
		cancel()
		if err != nil || blocked {
			t.Fatalf("tail %v: %v (blocked at the end: %v)", tc.args, err, blocked)
		}
		lines := strings.Split(strings.TrimSpace(out.String()), "\n")
		if len(lines) != tc.lines {
			t.Errorf("tail %v: %d lines, want %d", tc.args, len(lines), tc.lines)
			continue
		}
		if tc.first >= 0 {
			for i, line := range lines {
				if want := fmt.Sprintf(`"key":"k%02d"`, tc.first+i); !strings.Contains(line, want) {
					t.Errorf("tail %v: line %d is %s, want %s", tc.args, i, line, want)
				}
			}
		}
	}
}

// TestFlagsAfterArguments: flags may follow the positional arguments;
// after "--" everything is an argument.
func TestFlagsAfterArguments(t *testing.T) {
	for _, tc := range []struct {
		args []string
		pos  []string
		json bool
	}{
		{[]string{"--json", "cust-1"}, []string{"cust-1"}, true},
		{[]string{"cust-1", "--json"}, []string{"cust-1"}, true},
		{[]string{"cust-1", "--json", "cust-2"}, []string{"cust-1", "cust-2"}, true},
		{[]string{"--", "--json"}, []string{"--json"}, false},
		{[]string{"cust-1", "--", "--json"}, []string{"cust-1", "--json"}, false},
	} {
		fs := newFlags("status", "", "")
		asJSON := fs.Bool("json", false, "")
		if err := fs.parse(tc.args, &bytes.Buffer{}, &bytes.Buffer{}); err != nil {
			t.Fatalf("%v: %v", tc.args, err)
		}
		if strings.Join(fs.Args(), " ") != strings.Join(tc.pos, " ") || fs.NArg() != len(tc.pos) || *asJSON != tc.json {
			t.Errorf("%v: arguments %q, --json %v; want %q, %v", tc.args, fs.Args(), *asJSON, tc.pos, tc.json)
		}
	}
}

// TestReadOnlyToolsWhileRunningPostgres: with PostgreSQL, status,
// forget-log and rewrap all work while `run` runs, as docs/command-line.md
// says.
func TestReadOnlyToolsWhileRunningPostgres(t *testing.T) {
	dsn := pgtest.MustTempSchemaDSN(t)
	cluster, err := kfake.NewCluster(kfake.SeedTopics(1, "orders.raw", "subjects.forget"))
	if err != nil {
		t.Fatal(err)
	}
	defer cluster.Close()
	dir := t.TempDir()
	writeFile(t, dir, "kek.b64", testKEK)
	addr := freeAddr(t)
	cfg := writeFile(t, dir, "config.yaml", "kafka: {brokers: ["+strings.Join(cluster.ListenAddrs(), ",")+"], transactional_id: cli-test, session_timeout: 6s}\n"+
		"store: {postgres: '"+dsn+"'}\nkeys: {kek_file: kek.b64}\n"+
		"http: {listen: '"+addr+"'}\nlog: {level: info, format: json}\n"+validSystems)
	_, stop := startRun(t, cfg, addr)
	defer func() { _ = stop() }()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := func(args ...string) (string, error) {
		var out, errb bytes.Buffer
		err := run(ctx, args, &out, &errb)
		return out.String(), err
	}
	if _, err := cmd("forget", "--config", cfg, "--timeout", "30s", "cust-100000"); err != nil {
		t.Fatal(err)
	}
	if out, err := cmd("status", "--config", cfg, "cust-100000", "--json"); exitCodeOf(err) != exitForgotten || !strings.Contains(out, `"state":"forgotten"`) {
		t.Errorf("status while running: %v, %s", err, out)
	}
	if out, err := cmd("forget-log", "--config", cfg); err != nil || !strings.Contains(out, `"request_id"`) {
		t.Errorf("forget-log while running: %v, %s", err, out)
	}
	if out, err := cmd("rewrap", "--config", cfg); err != nil || !strings.Contains(out, "done:") {
		t.Errorf("rewrap while running: %v, %s", err, out)
	}
}
