//go:build linux

package integration

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"maps"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sort"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/hamba/avro/v2"
	"github.com/hygiene/pseudonymizer/internal/kafkatest"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"

	"github.com/hygiene/pseudonymizer/internal/config"
	"github.com/hygiene/pseudonymizer/processor"
	"github.com/hygiene/pseudonymizer/processor/policy"
	"github.com/hygiene/pseudonymizer/schema"
	"github.com/hygiene/pseudonymizer/schema/sample"
	"github.com/hygiene/pseudonymizer/store/postgres/pgtest"
)

const (
	envIntegration = "PSEUDONYMIZER_INTEGRATION"
	envLogs        = "PSEUDONYMIZER_INTEGRATION_LOGS"
	envRace        = "PSEUDONYMIZER_INTEGRATION_RACE"
	envKafka       = "PSEUDONYMIZER_TEST_KAFKA"

	groupID            = "pz-it"
	partitions         = 4
	sessionTimeout     = 6 * time.Second
	transactionTimeout = 8 * time.Second
	maxBackoff         = time.Second
	maxPollRecords     = 200
)

// binPath is the service binary TestMain built, "" when the suite is off.
var binPath string

func TestMain(m *testing.M) {
	if os.Getenv(envIntegration) != "1" {
		os.Exit(m.Run())
	}
	dir, err := os.MkdirTemp("", "pz-integration-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, "integration:", err)
		os.Exit(1)
	}
	binPath = filepath.Join(dir, "pseudonymizer")
	args := []string{"build", "-o", binPath}
	if os.Getenv(envRace) == "1" {
		args = append(args, "-race")
	}
	args = append(args, "github.com/hygiene/pseudonymizer/cmd/pseudonymizer")
	cmd := exec.Command(goTool(), args...)
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	start := time.Now()
	if err := cmd.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "integration: go build ./cmd/pseudonymizer:", err)
		os.RemoveAll(dir)
		os.Exit(1)
	}
	fmt.Fprintf(os.Stderr, "integration: built the service in %s\n", time.Since(start).Round(time.Millisecond))
	code := m.Run()
	stopPrivateKafka()
	os.RemoveAll(dir)
	os.Exit(code)
}

func goTool() string {
	if p, err := exec.LookPath("go"); err == nil {
		return p
	}
	return filepath.Join(runtime.GOROOT(), "bin", "go")
}

// MustIntegration skips the test unless the integration suite is enabled.
func MustIntegration(t testing.TB) {
	t.Helper()
	if os.Getenv(envIntegration) != "1" || binPath == "" {
		t.Skipf("integration suite: set %s=1 to run it (it builds the service and runs it against kfake and PostgreSQL for minutes)", envIntegration)
	}
}

// testPolicies are the systems of the suite. Every system keeps occurred_at,
// which the sample generator makes unique per event, so outputs can be
// matched to inputs; no system keeps a raw identifier.
func testPolicies() []policy.Policy {
	return []policy.Policy{
		{System: "crm", Keep: []string{"event_type", "occurred_at", "total_minor"}, Pseudonymize: []string{"order_id", "customer_id"}},
		// The example systems before they were generalized: the tests
		// match outputs to inputs by the exact occurred_at.
		{System: "google-analytics", Keep: []string{"event_type", "occurred_at", "currency", "total_minor", "items", "attributes.utm_source"},
			Pseudonymize: []string{"event_id", "order_id", "customer_id"}},
		{System: "meta", Keep: []string{"event_type", "occurred_at", "currency", "total_minor", "shipping_address.country"},
			Pseudonymize: []string{"event_id", "order_id", "customer_id"}},
	}
}

// leakMarkers are substrings of every raw identifier the suite produces:
// customer IDs, order IDs, e-mail domains, click IDs and forget subjects.
var leakMarkers = []string{"cust-1", "ord-1", "example.com", "Cj0KCQiA", "gone-"}

// world is one test's universe: a Kafka cluster (kfake, or a real broker
// with the test's own topics, group and transactional IDs), a key store
// schema, the service instances and what was produced.
type world struct {
	t       testing.TB
	fake    *kfake.Cluster // nil on a real broker
	brokers []string
	group   string
	ns      string // prefix of the test's topics and transactional IDs on a real broker
	dsn     string
	appName string
	kek     string
	dir     string
	pols    []policy.Policy
	plan    *policy.Plan
	topics  config.Topics
	cl      *kgo.Client
	adm     *kadm.Client

	mu        sync.Mutex
	instances map[string]*instance
	gen       *sample.Generator
	events    map[int64]*schema.OrderEvent // by occurred_at (ms)
	forgets   map[string]string            // request ID -> subject
	streams   sync.WaitGroup
	resent    int                  // records produced again after the client failed them
	exited    map[string]time.Time // Kafka client ID of a process -> when it exited
}

type worldConfig struct {
	dsn     string
	brokers []string
	kfake   bool
}

// worldOpt configures MustNewWorld.
type worldOpt func(*worldConfig)

// withDSN uses a given PostgreSQL DSN instead of a fresh pgtest schema.
func withDSN(dsn string) worldOpt { return func(c *worldConfig) { c.dsn = dsn } }

// withKfake runs the world on kfake even when PSEUDONYMIZER_TEST_KAFKA names
// a real broker: for tests that inject faults with kfake's Fault and
// ControlKey.
func withKfake() worldOpt { return func(c *worldConfig) { c.kfake = true } }

// withBrokers runs the world on the real Kafka cluster at addrs.
func withBrokers(addrs []string) worldOpt { return func(c *worldConfig) { c.brokers = addrs } }

// externalKafka returns the brokers of PSEUDONYMIZER_TEST_KAFKA, nil if unset.
func externalKafka() []string {
	if v := strings.TrimSpace(os.Getenv(envKafka)); v != "" {
		return strings.Split(v, ",")
	}
	return nil
}

// MustNewWorld prepares a Kafka cluster with every topic created and a key
// store schema; everything is torn down at cleanup, processes first. The
// cluster is kfake, unless PSEUDONYMIZER_TEST_KAFKA or withBrokers names a
// real one (and withKfake is not given): then the world creates its own
// uniquely named topics, group and transactional IDs there and deletes the
// topics and the group at cleanup.
func MustNewWorld(t testing.TB, opts ...worldOpt) *world {
	t.Helper()
	MustIntegration(t)
	wc := worldConfig{brokers: externalKafka()}
	for _, o := range opts {
		o(&wc)
	}
	if wc.kfake {
		wc.brokers = nil
	}
	w := &world{
		t:         t,
		topics:    config.Default().Topics,
		pols:      testPolicies(),
		instances: map[string]*instance{},
		gen:       sample.New(uint64(time.Now().UnixNano()), 400, time.Now().Add(-72*time.Hour)),
		events:    map[int64]*schema.OrderEvent{},
		forgets:   map[string]string{},
		exited:    map[string]time.Time{},
	}
	var err error
	if w.plan, err = policy.Compile(schema.OrderEventSchema(), w.pols); err != nil {
		t.Fatal(err)
	}
	var rnd [6]byte
	_, _ = rand.Read(rnd[:])
	w.group = groupID
	if wc.brokers == nil {
		if w.fake, err = kfake.NewCluster(kfake.NumBrokers(3), kfake.SeedTopics(partitions, w.allTopics()...)); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(w.fake.Close)
		w.brokers = w.fake.ListenAddrs()
	} else {
		w.brokers = wc.brokers
		w.ns = "it-" + hex.EncodeToString(rnd[:3]) + "-"
		w.group = w.ns + groupID
		w.topics = config.Topics{
			Orders: w.ns + w.topics.Orders, Forget: w.ns + w.topics.Forget, Forgotten: w.ns + w.topics.Forgotten,
			OrdersDeadLetter: w.ns + w.topics.OrdersDeadLetter, ForgetDeadLetter: w.ns + w.topics.ForgetDeadLetter,
			PseudoPrefix: w.ns + w.topics.PseudoPrefix,
		}
	}

	if wc.dsn == "" {
		wc.dsn, _ = pgtest.MustTempSchema(t)
	}
	// A unique application_name lets a test terminate its own service's
	// PostgreSQL backends without touching other tests'.
	w.appName = "pseudonymizer-it-" + hex.EncodeToString(rnd[:])
	w.dsn = withParam(wc.dsn, "application_name", w.appName)

	kek := make([]byte, 32)
	_, _ = rand.Read(kek)
	w.kek = base64.StdEncoding.EncodeToString(kek)

	if d := os.Getenv(envLogs); d != "" {
		w.dir = filepath.Join(d, strings.ReplaceAll(t.Name(), "/", "_")+"-"+time.Now().Format("150405"))
		if err := os.MkdirAll(w.dir, 0o755); err != nil {
			t.Fatal(err)
		}
	} else {
		w.dir = t.TempDir()
	}

	if w.cl, err = kgo.NewClient(kgo.SeedBrokers(w.brokers...), kgo.ProducerLinger(0)); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(w.cl.Close)
	w.adm = kadm.NewClient(w.cl)
	if w.fake == nil {
		w.mustCreateTopics(t)
	}
	// A real group coordinator expires the members of dead processes by
	// itself; only kfake needs the reaper.
	stopReaper := func() {}
	if w.fake != nil {
		stopReaper = w.startReaper(t)
	}

	// Registered last, so it runs first: no process outlives the test, and
	// on failure the tail of each log is shown.
	t.Cleanup(func() {
		stopReaper()
		w.streams.Wait()
		w.mu.Lock()
		ins := make([]*instance, 0, len(w.instances))
		for _, in := range w.instances {
			ins = append(ins, in)
		}
		w.mu.Unlock()
		for _, in := range ins {
			in.kill()
		}
		if t.Failed() {
			w.dumpLogs(t)
		}
	})
	return w
}

// withParam adds a connection parameter to a URL or keyword/value DSN.
func withParam(dsn, key, value string) string {
	if strings.HasPrefix(dsn, "postgres://") || strings.HasPrefix(dsn, "postgresql://") {
		if u, err := url.Parse(dsn); err == nil {
			q := u.Query()
			q.Set(key, value)
			u.RawQuery = q.Encode()
			return u.String()
		}
	}
	return dsn + " " + key + "=" + value
}

func (w *world) outputTopics() []string {
	var ts []string
	for _, s := range w.plan.Systems() {
		ts = append(ts, w.topics.PseudoPrefix+s)
	}
	return ts
}

func (w *world) allTopics() []string {
	return append([]string{w.topics.Orders, w.topics.Forget, w.topics.Forgotten, w.topics.OrdersDeadLetter, w.topics.ForgetDeadLetter}, w.outputTopics()...)
}

// txnID is the transactional ID of instance name.
func (w *world) txnID(name string) string { return w.ns + name }

// mustCreateTopics creates the world's topics on a real broker (with the
// broker's default replication factor) and deletes them and the group at
// cleanup.
func (w *world) mustCreateTopics(t testing.TB) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	resp, err := w.adm.CreateTopics(ctx, partitions, -1, nil, w.allTopics()...)
	if err == nil {
		err = resp.Error()
	}
	if err != nil {
		t.Fatalf("create topics on %v: %v", w.brokers, err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if _, err := w.adm.DeleteTopics(ctx, w.allTopics()...); err != nil {
			t.Logf("delete topics: %v", err)
		}
		_, _ = w.adm.DeleteGroups(ctx, w.group, w.group+processor.ForgetLaneSuffix)
	})
	// Metadata reaches every broker asynchronously: wait until each
	// partition has a leader, so the first produce does not fail.
	for {
		td, err := w.adm.ListTopics(ctx, w.allTopics()...)
		ready := err == nil && len(td) == len(w.allTopics())
		for _, d := range td {
			ready = ready && d.Err == nil && len(d.Partitions) == partitions
			for _, p := range d.Partitions {
				ready = ready && p.Err == nil && p.Leader >= 0
			}
		}
		if ready {
			return
		}
		if ctx.Err() != nil {
			t.Fatalf("topics have no leaders after a minute: %v", err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// partState is a partition's high watermark and last stable offset.
type partState struct {
	partition int32
	hwm, lso  int64
}

// partitionStates lists the partitions of topics with their high watermarks
// and last stable offsets (ListOffsets at read_uncommitted and
// read_committed).
func (w *world) partitionStates(topics ...string) (map[string][]partState, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	ends, err := w.adm.ListEndOffsets(ctx, topics...)
	if err == nil {
		err = ends.Error()
	}
	if err != nil {
		return nil, fmt.Errorf("list end offsets: %w", err)
	}
	stable, err := w.adm.ListCommittedOffsets(ctx, topics...)
	if err == nil {
		err = stable.Error()
	}
	if err != nil {
		return nil, fmt.Errorf("list last stable offsets: %w", err)
	}
	out := map[string][]partState{}
	for _, topic := range topics {
		for p, o := range ends[topic] {
			s, ok := stable.Lookup(topic, p)
			if !ok {
				return nil, fmt.Errorf("no last stable offset for %s/%d", topic, p)
			}
			out[topic] = append(out[topic], partState{partition: p, hwm: o.Offset, lso: s.Offset})
		}
		if len(out[topic]) != partitions {
			return nil, fmt.Errorf("%s: offsets of %d partitions, want %d", topic, len(out[topic]), partitions)
		}
		sort.Slice(out[topic], func(i, j int) bool { return out[topic][i].partition < out[topic][j].partition })
	}
	return out, nil
}

// mustPartitionStates is partitionStates, retried for up to a minute (a
// real broker may be electing leaders).
func (w *world) mustPartitionStates(t testing.TB, topics ...string) map[string][]partState {
	t.Helper()
	var st map[string][]partState
	kafkatest.WaitForNil(t, time.Minute, "partition offsets", func() error {
		var err error
		st, err = w.partitionStates(topics...)
		return err
	})
	return st
}

// freeAddr returns a 127.0.0.1 address with a port that was free just now.
func freeAddr(t testing.TB) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// instance is one service process (and its restarts) with one
// transactional ID.
type instance struct {
	w       *world
	name    string
	cfgPath string
	addr    string

	mu     sync.Mutex
	cmd    *exec.Cmd
	done   chan struct{}
	starts int
	logs   []string
}

// configYAML is the service configuration of instance name.
func (w *world) configYAML(name, addr string) string {
	var b strings.Builder
	fmt.Fprintf(&b, "kafka:\n  brokers: [%s]\n  group_id: %s\n  transactional_id: %s\n  client_id: %s\n",
		strings.Join(w.brokers, ", "), w.group, w.txnID(name), name)
	fmt.Fprintf(&b, "  session_timeout: %s\n  transaction_timeout: %s\n  create_topics: true\n", sessionTimeout, transactionTimeout)
	fmt.Fprintf(&b, "topics:\n  orders: %s\n  forget: %s\n  forgotten: %s\n  orders_dead_letter: %s\n  forget_dead_letter: %s\n  pseudo_prefix: %s\n",
		w.topics.Orders, w.topics.Forget, w.topics.Forgotten, w.topics.OrdersDeadLetter, w.topics.ForgetDeadLetter, w.topics.PseudoPrefix)
	fmt.Fprintf(&b, "store:\n  postgres: %q\n", w.dsn)
	fmt.Fprintf(&b, "http:\n  listen: %s\n", addr)
	fmt.Fprintf(&b, "log:\n  level: debug\n  format: json\n")
	fmt.Fprintf(&b, "processing:\n  max_backoff: %s\n  max_poll_records: %d\n", maxBackoff, maxPollRecords)
	b.WriteString("systems:\n")
	for _, p := range w.pols {
		fmt.Fprintf(&b, "  %s:\n    keep: [%s]\n    pseudonymize: [%s]\n", p.System, strings.Join(p.Keep, ", "), strings.Join(p.Pseudonymize, ", "))
	}
	return b.String()
}

// MustStart starts (or restarts) the instance with transactional ID name;
// extra is added to its environment (such as a failpoint).
func (w *world) MustStart(t testing.TB, name string, extra ...string) *instance {
	t.Helper()
	w.mu.Lock()
	in := w.instances[name]
	if in == nil {
		in = &instance{w: w, name: name, addr: freeAddr(t), cfgPath: filepath.Join(w.dir, name+".yaml")}
		w.instances[name] = in
	}
	w.mu.Unlock()
	if in.running() {
		t.Fatalf("instance %s is already running", name)
	}
	if in.starts == 0 {
		if err := os.WriteFile(in.cfgPath, []byte(w.configYAML(name, in.addr)), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	in.mu.Lock()
	defer in.mu.Unlock()
	in.starts++
	logPath := filepath.Join(w.dir, fmt.Sprintf("%s.%d.log", name, in.starts))
	f, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	// Every incarnation has its own Kafka client ID, so the reaper can tell
	// the group members of a dead process from those of its successor.
	clientID := fmt.Sprintf("%s.%d", name, in.starts)
	cmd := exec.Command(binPath, "run", "--config", in.cfgPath)
	cmd.Env = append(serviceEnv(), "PSEUDONYMIZER_KEK="+w.kek, "PSEUDONYMIZER_KAFKA_CLIENT_ID="+clientID)
	cmd.Env = append(cmd.Env, extra...)
	cmd.Stdout, cmd.Stderr = f, f
	// The kernel kills the service if the test binary dies first.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		f.Close()
		t.Fatalf("start %s: %v", name, err)
	}
	done := make(chan struct{})
	go func() {
		_ = cmd.Wait()
		f.Close()
		w.mu.Lock()
		w.exited[clientID] = time.Now()
		w.mu.Unlock()
		close(done)
	}()
	in.cmd, in.done = cmd, done
	in.logs = append(in.logs, logPath)
	return in
}

// serviceEnv is the test's environment without PSEUDONYMIZER_ variables,
// which the service would read as configuration.
func serviceEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "PSEUDONYMIZER_") {
			env = append(env, kv)
		}
	}
	return env
}

func (in *instance) current() (*exec.Cmd, chan struct{}) {
	in.mu.Lock()
	defer in.mu.Unlock()
	return in.cmd, in.done
}

func (in *instance) running() bool {
	cmd, done := in.current()
	if cmd == nil {
		return false
	}
	select {
	case <-done:
		return false
	default:
		return true
	}
}

// signal sends sig to the running process, if any.
func (in *instance) signal(sig syscall.Signal) {
	if cmd, _ := in.current(); cmd != nil && in.running() {
		_ = cmd.Process.Signal(sig)
	}
}

// kill SIGKILLs the process, if running, and waits for it.
func (in *instance) kill() {
	cmd, done := in.current()
	if cmd == nil {
		return
	}
	_ = cmd.Process.Signal(syscall.SIGKILL)
	select {
	case <-done:
	case <-time.After(30 * time.Second):
	}
}

// MustKill SIGKILLs the instance and waits for it to be gone.
func (in *instance) MustKill(t testing.TB) {
	t.Helper()
	in.kill()
	if in.running() {
		t.Fatalf("instance %s survived SIGKILL", in.name)
	}
}

// MustWaitExit waits for the process to exit by itself and returns its
// exit code (-1 when killed by a signal).
func (in *instance) MustWaitExit(t testing.TB, timeout time.Duration) int {
	t.Helper()
	cmd, done := in.current()
	if cmd == nil {
		t.Fatalf("instance %s was never started", in.name)
	}
	select {
	case <-done:
	case <-time.After(timeout):
		t.Fatalf("instance %s did not exit within %s", in.name, timeout)
	}
	return cmd.ProcessState.ExitCode()
}

// MustStop stops the instance with SIGTERM and checks that it exits 0.
func (in *instance) MustStop(t testing.TB) {
	t.Helper()
	if !in.running() {
		return
	}
	in.signal(syscall.SIGCONT)
	in.mustAwaitStarted(t)
	in.signal(syscall.SIGTERM)
	in.mustAwaitStopped(t)
}

// mustAwaitStarted waits until the process serves /healthz, so that it
// handles SIGTERM (a process signaled before it installed its handler dies
// of the signal, which is no clean stop).
func (in *instance) mustAwaitStarted(t testing.TB) {
	t.Helper()
	c := http.Client{Timeout: 3 * time.Second}
	kafkatest.WaitForNil(t, 60*time.Second, "instance "+in.name+" to serve /healthz", func() error {
		if !in.running() {
			return nil // exited: the caller sees it
		}
		resp, err := c.Get("http://" + in.addr + "/healthz")
		if err != nil {
			return err
		}
		resp.Body.Close()
		return nil
	})
}

// mustAwaitStopped waits for the process to exit after SIGTERM (a second
// SIGTERM would make it exit at once) and checks that it exits 0.
func (in *instance) mustAwaitStopped(t testing.TB) {
	t.Helper()
	cmd, done := in.current()
	if cmd == nil {
		return
	}
	select {
	case <-done:
	case <-time.After(60 * time.Second):
		in.kill()
		t.Fatalf("instance %s did not stop within 60s of SIGTERM", in.name)
	}
	if got := cmd.ProcessState.ExitCode(); got != 0 {
		t.Errorf("instance %s exit code after SIGTERM = %d, want 0", in.name, got)
	}
}

// readyz returns the HTTP status of /readyz, 0 if it did not answer.
func (in *instance) readyz() int {
	c := http.Client{Timeout: 3 * time.Second}
	resp, err := c.Get("http://" + in.addr + "/readyz")
	if err != nil {
		return 0
	}
	resp.Body.Close()
	return resp.StatusCode
}

// MustAwaitReadyz waits until /readyz answers want.
func (in *instance) MustAwaitReadyz(t testing.TB, want int, timeout time.Duration) {
	t.Helper()
	kafkatest.WaitForNil(t, timeout, fmt.Sprintf("instance %s /readyz to answer %d", in.name, want), func() error {
		if got := in.readyz(); got != want {
			return fmt.Errorf("/readyz = %d", got)
		}
		return nil
	})
}

// MustStopAll stops every running instance cleanly, in parallel.
func (w *world) MustStopAll(t testing.TB) {
	t.Helper()
	w.mu.Lock()
	var ins []*instance
	for _, in := range w.instances {
		ins = append(ins, in)
	}
	w.mu.Unlock()
	var stopping []*instance
	for _, in := range ins {
		if in.running() {
			in.signal(syscall.SIGCONT)
			in.mustAwaitStarted(t)
			in.signal(syscall.SIGTERM)
			stopping = append(stopping, in)
		}
	}
	for _, in := range stopping {
		in.mustAwaitStopped(t)
	}
}

// instance returns the instance named name, nil if never started.
func (w *world) instance(name string) *instance {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.instances[name]
}

// logFiles returns every log file of the world's processes.
func (w *world) logFiles() []string {
	w.mu.Lock()
	defer w.mu.Unlock()
	var out []string
	for _, in := range w.instances {
		in.mu.Lock()
		out = append(out, in.logs...)
		in.mu.Unlock()
	}
	sort.Strings(out)
	return out
}

// dumpLogs logs the last warnings and errors of every process.
func (w *world) dumpLogs(t testing.TB) {
	t.Helper()
	for _, p := range w.logFiles() {
		b, err := os.ReadFile(p)
		if err != nil {
			continue
		}
		var keep []string
		for _, l := range strings.Split(string(b), "\n") {
			if strings.Contains(l, `"level":"WARN"`) || strings.Contains(l, `"level":"ERROR"`) || (l != "" && !strings.HasPrefix(l, "{")) {
				keep = append(keep, l)
			}
		}
		if len(keep) > 15 {
			keep = keep[len(keep)-15:]
		}
		t.Logf("log %s (%d bytes), last warnings:\n%s", p, len(b), strings.Join(keep, "\n"))
	}
}

// stream produces orders and forget requests.
type stream struct {
	n           int           // orders
	forgetEvery int           // one forget request per this many orders; 0: none
	chunk       int           // orders per produce call
	pause       time.Duration // between chunks
}

// Stream produces s in the background; the returned channel is closed when
// everything was produced. Failures are reported with t.Errorf.
func (w *world) Stream(t testing.TB, s stream) <-chan struct{} {
	t.Helper()
	done := make(chan struct{})
	w.streams.Add(1)
	go func() {
		defer w.streams.Done()
		defer close(done)
		for sent := 0; sent < s.n; {
			k := min(s.chunk, s.n-sent)
			if err := w.produce(sent, k, s.forgetEvery); err != nil {
				t.Errorf("stream: %v", err)
				return
			}
			sent += k
			time.Sleep(s.pause)
		}
	}()
	return done
}

// MustProduce produces n orders (and forgets) synchronously.
func (w *world) MustProduce(t testing.TB, n, forgetEvery int) {
	t.Helper()
	if err := w.produce(0, n, forgetEvery); err != nil {
		t.Fatal(err)
	}
}

// produce generates and writes k orders; offset is the count of orders of
// this stream before them, to place forget requests.
func (w *world) produce(offset, k, forgetEvery int) error {
	var recs []*kgo.Record
	w.mu.Lock()
	for i := 0; i < k; i++ {
		ev := w.gen.Next()
		at := ev.OccurredAt.UnixMilli()
		if _, dup := w.events[at]; dup {
			w.mu.Unlock()
			return fmt.Errorf("generator repeated occurred_at %d", at)
		}
		w.events[at] = ev
		b, err := schema.MarshalOrderEvent(ev)
		if err != nil {
			w.mu.Unlock()
			return err
		}
		recs = append(recs, &kgo.Record{Topic: w.topics.Orders, Key: []byte(ev.CustomerID), Value: b})
		if forgetEvery > 0 && (offset+i+1)%forgetEvery == 0 {
			n := len(w.forgets)
			reqID := fmt.Sprintf("req-%06d", n)
			subject := fmt.Sprintf("gone-%06d", n)
			w.forgets[reqID] = subject
			fb, err := schema.MarshalForgetRequest(&schema.ForgetRequest{RequestID: reqID, SubjectID: subject, RequestedAt: time.Now().Truncate(time.Millisecond)})
			if err != nil {
				w.mu.Unlock()
				return err
			}
			recs = append(recs, &kgo.Record{Topic: w.topics.Forget, Key: []byte(subject), Value: fb})
		}
	}
	w.mu.Unlock()
	// While a test has a real broker down, the client fails records it
	// cannot even send ("unable to dial"): send the failed records again,
	// for long enough to outlast a broker's restart. A record that failed
	// after it was written would be produced twice, which the oracle
	// reports as a duplicate: this can fail a test, never pass one.
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	for {
		var failed []*kgo.Record
		var last error
		for _, r := range w.cl.ProduceSync(ctx, recs...) {
			if r.Err != nil {
				failed = append(failed, &kgo.Record{Topic: r.Record.Topic, Key: r.Record.Key, Value: r.Record.Value})
				last = r.Err
			}
		}
		if len(failed) == 0 {
			return nil
		}
		if w.fake != nil || ctx.Err() != nil {
			return fmt.Errorf("%d of %d records not produced: %w", len(failed), len(recs), last)
		}
		w.mu.Lock()
		w.resent += len(failed)
		w.mu.Unlock()
		recs = failed
		time.Sleep(200 * time.Millisecond)
	}
}

// counts returns how many orders and forget requests were produced.
func (w *world) counts() (orders, forgets int) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return len(w.events), len(w.forgets)
}

// MustAwaitConsumed waits until the group's committed offsets reach the end
// of both input topics: everything produced so far is processed and
// committed.
func (w *world) MustAwaitConsumed(t testing.TB, timeout time.Duration) {
	t.Helper()
	lastLog := time.Now()
	kafkatest.WaitForNil(t, timeout, "the group to consume everything", func() error {
		behind, err := w.lag()
		if err == nil && behind == 0 {
			return nil
		}
		if time.Since(lastLog) > 15*time.Second {
			t.Logf("waiting for the group: %d records behind", behind)
			lastLog = time.Now()
		}
		return fmt.Errorf("still %d records behind (err %v)", behind, err)
	})
}

// committed returns the offsets committed by the order group on the order
// topic and by the forget group on the forget topic.
func (w *world) committed(ctx context.Context) (kadm.OffsetResponses, error) {
	all := kadm.OffsetResponses{}
	for group, topic := range map[string]string{w.group: w.topics.Orders, w.group + processor.ForgetLaneSuffix: w.topics.Forget} {
		offs, err := w.adm.FetchOffsets(ctx, group)
		if err != nil {
			return nil, err
		}
		offs.Each(func(o kadm.OffsetResponse) {
			if o.Topic == topic {
				all.Add(o)
			}
		})
	}
	return all, nil
}

// lag is the number of input records not yet committed by the groups.
func (w *world) lag() (int64, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	offs, err := w.committed(ctx)
	if err != nil {
		return -1, err
	}
	st, err := w.partitionStates(w.topics.Orders, w.topics.Forget)
	if err != nil {
		return -1, err
	}
	var behind int64
	for topic, ps := range st {
		for _, pi := range ps {
			committed := int64(0)
			if o, ok := offs.Lookup(topic, pi.partition); ok && o.Err == nil && o.At > 0 {
				committed = o.At
			}
			behind += pi.hwm - committed
		}
	}
	return behind, nil
}

// MustCommitted returns the sum of the group's committed input offsets.
func (w *world) MustCommitted(t testing.TB) int64 {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	offs, err := w.committed(ctx)
	if err != nil {
		t.Fatalf("fetch group offsets: %v", err)
	}
	var sum int64
	for _, topic := range []string{w.topics.Orders, w.topics.Forget} {
		for p := int32(0); p < partitions; p++ {
			if o, ok := offs.Lookup(topic, p); ok && o.Err == nil && o.At > 0 {
				sum += o.At
			}
		}
	}
	return sum
}

// MustNoOpenTransaction waits until every partition's last stable offset
// equals its high watermark: no transaction is left open.
func (w *world) MustNoOpenTransaction(t testing.TB, timeout time.Duration) {
	t.Helper()
	kafkatest.WaitForNil(t, timeout, "every transaction to end", func() error {
		var open []string
		for topic, ps := range w.mustPartitionStates(t, w.allTopics()...) {
			for _, pi := range ps {
				if pi.lso != pi.hwm {
					open = append(open, fmt.Sprintf("%s/%d (LSO %d, HWM %d)", topic, pi.partition, pi.lso, pi.hwm))
				}
			}
		}
		if len(open) > 0 {
			return fmt.Errorf("still open: %v", open)
		}
		return nil
	})
}

// MustReadAll reads topics from the start to their high watermarks with a
// read_committed consumer (control records kept only to track the position)
// and returns the data records per topic.
func (w *world) MustReadAll(t testing.TB, topics ...string) map[string][]*kgo.Record {
	t.Helper()
	type tp struct {
		topic string
		part  int32
	}
	end := map[tp]int64{}
	for topic, ps := range w.mustPartitionStates(t, topics...) {
		for _, pi := range ps {
			if pi.hwm > 0 {
				end[tp{topic, pi.partition}] = pi.hwm
			}
		}
	}
	out := map[string][]*kgo.Record{}
	if len(end) == 0 {
		return out
	}
	cl, err := kgo.NewClient(kgo.SeedBrokers(w.brokers...), kgo.ConsumeTopics(topics...),
		kgo.FetchIsolationLevel(kgo.ReadCommitted()), kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()),
		kgo.KeepControlRecords())
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	deadline := time.Now().Add(60 * time.Second)
	for len(end) > 0 {
		if time.Now().After(deadline) {
			t.Fatalf("read_committed consumer did not reach the end of %d partitions: %v", len(end), end)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		f := cl.PollFetches(ctx)
		cancel()
		f.EachRecord(func(r *kgo.Record) {
			k := tp{r.Topic, r.Partition}
			if e, ok := end[k]; ok && r.Offset+1 >= e {
				delete(end, k)
			}
			if !r.Attrs.IsControl() {
				out[r.Topic] = append(out[r.Topic], r)
			}
		})
	}
	return out
}

// MustVerify stops nothing; call it after MustStopAll. It checks the
// oracle of the package documentation and returns the number of records
// per output topic.
func (w *world) MustVerify(t testing.TB) {
	t.Helper()
	w.MustVerifyAllowing(t, 0)
}

// MustVerifyAllowing is MustVerify when up to maxTooLarge orders may have
// been dead-lettered as too large (their copies refused by the broker):
// such an order must reach no system at all. It returns the number of
// orders dead-lettered.
func (w *world) MustVerifyAllowing(t testing.TB, maxTooLarge int) int {
	t.Helper()
	w.MustNoOpenTransaction(t, 2*transactionTimeout)
	recs := w.MustReadAll(t, append([]string{w.topics.Forgotten, w.topics.OrdersDeadLetter, w.topics.ForgetDeadLetter}, w.outputTopics()...)...)

	w.mu.Lock()
	events, forgets, resent := maps.Clone(w.events), maps.Clone(w.forgets), w.resent
	w.mu.Unlock()
	if resent > 0 {
		t.Logf("%d input records were produced again after the client failed them (broker unreachable)", resent)
	}
	wantOrders, wantForgets := len(events), len(forgets)
	if wantOrders == 0 {
		t.Fatal("no orders were produced")
	}

	// P6/P7: no dead letter, not even an aborted one, unless allowed.
	dead := map[int64]bool{} // occurred_at of dead-lettered orders
	for _, r := range recs[w.topics.OrdersDeadLetter] {
		ev, err := schema.UnmarshalOrderEvent(r.Value)
		if err != nil {
			t.Errorf("dead letter at %d/%d: the original value does not decode: %v", r.Partition, r.Offset, err)
			continue
		}
		dead[ev.OccurredAt.UnixMilli()] = true
		if got := headerValue(r, "error.class"); maxTooLarge == 0 || got != "too_large" {
			t.Errorf("P6: a valid order was dead-lettered with class %q", got)
		}
	}
	if len(dead) > maxTooLarge {
		t.Errorf("%d orders dead-lettered, want at most %d", len(dead), maxTooLarge)
	}
	dlqTopics := []string{w.topics.ForgetDeadLetter}
	if maxTooLarge == 0 {
		dlqTopics = append(dlqTopics, w.topics.OrdersDeadLetter)
	}
	for topic, ps := range w.mustPartitionStates(t, dlqTopics...) {
		var hwm int64
		for _, pi := range ps {
			hwm += pi.hwm
		}
		if hwm != 0 {
			t.Errorf("%s: %d records written (committed or aborted), want 0", topic, hwm)
		}
	}

	// P4: one confirmation per forget request.
	conf := map[string]int{}
	for _, r := range recs[w.topics.Forgotten] {
		c, err := schema.UnmarshalForgetConfirmation(r.Value)
		if err != nil {
			t.Errorf("confirmation does not decode: %v", err)
			continue
		}
		conf[c.RequestID]++
		if got, want := string(r.Key), forgets[c.RequestID]; got != want {
			t.Errorf("confirmation of %s: key %q, want the subject %q", c.RequestID, got, want)
		}
		if got, want := c.Status, "UNKNOWN_SUBJECT"; got != want {
			t.Errorf("confirmation of %s: status %s, want %s", c.RequestID, got, want)
		}
	}
	for req := range forgets {
		if got := conf[req]; got != 1 {
			t.Errorf("P4: request %s has %d confirmations, want 1", req, got)
		}
	}
	if got := len(conf); got != wantForgets {
		t.Errorf("P4: confirmations for %d requests, want %d", got, wantForgets)
	}

	// P4, P3, P2, P1 on every system's topic.
	owner := map[string]string{} // pseudonym -> system
	for i, sys := range w.plan.Systems() {
		topic := w.topics.PseudoPrefix + sys
		seen := map[int64]int{}
		pseudonym := map[string]string{} // customer -> key
		unknown, leaks, splits := 0, 0, 0
		for _, r := range recs[topic] {
			if leak := leakIn(r); leak != "" {
				leaks++
				if leaks <= 3 {
					t.Errorf("P1: %s record at %d/%d carries a raw identifier (marker %q)", sys, r.Partition, r.Offset, leak)
				}
			}
			var v map[string]any
			if err := avro.Unmarshal(w.plan.OutputSchema(i), r.Value, &v); err != nil {
				t.Errorf("%s record at %d/%d does not decode: %v", sys, r.Partition, r.Offset, err)
				continue
			}
			at, ok := v["occurred_at"].(time.Time)
			if !ok {
				t.Errorf("%s record at %d/%d: occurred_at is %T", sys, r.Partition, r.Offset, v["occurred_at"])
				continue
			}
			ev := events[at.UnixMilli()]
			if ev == nil {
				unknown++
				continue
			}
			seen[at.UnixMilli()]++
			if dead[at.UnixMilli()] {
				t.Errorf("P6: %s received a copy of a dead-lettered order", sys)
			}
			for _, raw := range sample.RawIdentifiers(ev) {
				if bytes.Contains(r.Value, []byte(raw)) || bytes.Contains(r.Key, []byte(raw)) {
					leaks++
					t.Errorf("P1: %s output of an event carries one of its raw identifiers", sys)
					break
				}
			}
			key := string(r.Key)
			if prev, ok := pseudonym[ev.CustomerID]; !ok {
				pseudonym[ev.CustomerID] = key
			} else if prev != key {
				splits++
			}
			if o, ok := owner[key]; ok && o != sys {
				t.Errorf("P2: pseudonym appears in %s and %s", o, sys)
			}
			owner[key] = sys
		}
		missing, dups := 0, 0
		var example []string
		for at := range events {
			n := seen[at]
			switch {
			case n == 0 && dead[at]:
				// Dead-lettered: reaches no system.
			case n == 0:
				missing++
			case n > 1:
				dups += n - 1
			}
			if n != 1 && !dead[at] && len(example) < 3 {
				example = append(example, fmt.Sprintf("occurred_at %d seen %d times", at, n))
			}
		}
		if missing > 0 || dups > 0 || unknown > 0 {
			t.Errorf("P4: %s: %d records for %d events: %d missing, %d duplicates, %d unknown (e.g. %v)", sys, len(recs[topic]), wantOrders, missing, dups, unknown, example)
		}
		if splits > 0 {
			t.Errorf("P3: %s: %d records carry a second pseudonym of their customer", sys, splits)
		}
		t.Logf("%s: %d committed records for %d events, %d customers", sys, len(recs[topic]), wantOrders, len(pseudonym))
	}
	t.Logf("%d forget requests, %d confirmed, %d orders dead-lettered", wantForgets, len(conf), len(dead))
	w.mustCleanLogs(t)
	return len(dead)
}

func headerValue(r *kgo.Record, key string) string {
	for _, h := range r.Headers {
		if h.Key == key {
			return string(h.Value)
		}
	}
	return ""
}

// leakIn returns the leak marker found in r's key, value or headers.
func leakIn(r *kgo.Record) string {
	for _, m := range leakMarkers {
		mb := []byte(m)
		if bytes.Contains(r.Key, mb) || bytes.Contains(r.Value, mb) {
			return m
		}
		for _, h := range r.Headers {
			if strings.Contains(h.Key, m) || bytes.Contains(h.Value, mb) {
				return m
			}
		}
	}
	return ""
}

// mustCleanLogs checks P8 on every process log: no raw identifier.
func (w *world) mustCleanLogs(t testing.TB) {
	t.Helper()
	for _, p := range w.logFiles() {
		b, err := os.ReadFile(p)
		if err != nil {
			t.Errorf("read log: %v", err)
			continue
		}
		for _, m := range leakMarkers {
			if i := bytes.Index(b, []byte(m)); i >= 0 {
				t.Errorf("P8: log %s contains a raw identifier (marker %q)", filepath.Base(p), m)
			}
		}
	}
}

// logContains reports whether some log of the instance contains s.
func (in *instance) logContains(s string) bool {
	in.mu.Lock()
	logs := append([]string(nil), in.logs...)
	in.mu.Unlock()
	for _, p := range logs {
		if b, err := os.ReadFile(p); err == nil && bytes.Contains(b, []byte(s)) {
			return true
		}
	}
	return false
}

// startReaper does for the test what a Kafka group coordinator does on its
// own and kfake does not (see the package documentation): it removes, with
// LeaveGroup, the group members of processes that exited at least one
// session timeout ago. The returned func stops the reaper and waits for it.
func (w *world) startReaper(t testing.TB) func() {
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		tick := time.NewTicker(500 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
			}
			w.mu.Lock()
			dead := map[string]bool{}
			for id, at := range w.exited {
				if time.Since(at) >= sessionTimeout {
					dead[id] = true
				}
			}
			w.mu.Unlock()
			if len(dead) == 0 {
				continue
			}
			for _, m := range w.reap(ctx, dead) {
				t.Logf("reaper: removed member %s of %s, still in the group a session timeout after its process exited", m.MemberID, m.ClientID)
			}
		}
	}()
	return func() {
		cancel()
		wg.Wait()
	}
}

// reap sends LeaveGroup for every member of the groups (the order lane's
// and the forget lane's) whose client ID is in dead and returns the
// members removed.
func (w *world) reap(ctx context.Context, dead map[string]bool) []kadm.DescribedGroupMember {
	var removed []kadm.DescribedGroupMember
	for _, group := range []string{w.group, w.group + processor.ForgetLaneSuffix} {
		removed = append(removed, w.reapGroup(ctx, group, dead)...)
	}
	return removed
}

func (w *world) reapGroup(ctx context.Context, group string, dead map[string]bool) []kadm.DescribedGroupMember {
	rctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	groups, err := w.adm.DescribeGroups(rctx, group)
	if err != nil {
		return nil
	}
	ghosts := map[string]kadm.DescribedGroupMember{}
	req := kmsg.NewPtrLeaveGroupRequest()
	req.Group = group
	for _, m := range groups[group].Members {
		if dead[m.ClientID] {
			ghosts[m.MemberID] = m
			lm := kmsg.NewLeaveGroupRequestMember()
			lm.MemberID = m.MemberID
			req.Members = append(req.Members, lm)
		}
	}
	if len(ghosts) == 0 {
		return nil
	}
	resp, err := req.RequestWith(rctx, w.cl)
	if err != nil || resp.ErrorCode != 0 {
		return nil
	}
	var removed []kadm.DescribedGroupMember
	for _, m := range resp.Members {
		if g, ok := ghosts[m.MemberID]; ok && m.ErrorCode == 0 {
			removed = append(removed, g)
		}
	}
	return removed
}
