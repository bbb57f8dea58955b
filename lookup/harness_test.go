package lookup_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/hamba/avro/v2"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/hygiene/pseudonymizer/internal/kafkatest"
	"github.com/hygiene/pseudonymizer/lookup"
	"github.com/hygiene/pseudonymizer/processor"
	"github.com/hygiene/pseudonymizer/processor/policy"
	"github.com/hygiene/pseudonymizer/schema"
	"github.com/hygiene/pseudonymizer/store"
	"github.com/hygiene/pseudonymizer/store/embedded"
	"github.com/hygiene/pseudonymizer/store/postgres"
	"github.com/hygiene/pseudonymizer/store/postgres/pgtest"
	"github.com/hygiene/pseudonymizer/store/storetest"
)

func TestMain(m *testing.M) {
	if os.Getenv(loadGenEnv) != "" {
		os.Exit(loadGen())
	}
	if os.Getenv("PSEUDONYMIZER_TEST_VERBOSE") == "" {
		slog.SetDefault(slog.New(slog.DiscardHandler))
	}
	os.Exit(m.Run())
}

// testPolicies are the example systems plus "audit", which pseudonymizes
// int, long, nullable and array fields, so that every kind of value the API
// takes is compared with the stream. The examples' generalizations are
// left out: the tests find an event's outputs by their exact occurred_at
// (generalization changes no pseudonym).
func testPolicies(notices bool) []policy.Policy {
	pols := append(policy.Examples(), policy.Policy{
		System:       "audit",
		Keep:         []string{"occurred_at", "event_type"},
		Pseudonymize: []string{"customer_id", "order_id", "total_minor", "email", "items.sku", "items.quantity"},
	})
	for i := range pols {
		pols[i].ErasureNotices = notices
		pols[i].Generalize, pols[i].TimeUnit = nil, ""
	}
	return pols
}

// The token every test world admits (all systems), and one limited to
// meta.
const (
	allToken  = "pzl_test-all-systems"
	metaToken = "pzl_test-meta-only"
)

func tokenEntry(name, token string, rate float64, systems ...string) lookup.Token {
	sum := sha256.Sum256([]byte(token))
	return lookup.Token{Name: name, SHA256: hex.EncodeToString(sum[:]), Systems: systems, Rate: rate}
}

// world is a test world: a Kafka cluster, a key store, a processor and the
// lookup API on the same store and Plan.
type world struct {
	kc     *kafkatest.Cluster
	topics processor.Topics
	group  string
	pols   []policy.Policy
	plan   *policy.Plan
	st     store.KeyStore
	api    *served
	url    string
}

// openStore opens a key store of kind (embedded or postgres).
func openStore(t testing.TB, kind string) store.KeyStore {
	t.Helper()
	kr := storetest.MustKeyring(t, storetest.MustKEK(t, 1))
	switch kind {
	case "embedded":
		s, err := embedded.Open(filepath.Join(t.TempDir(), "keys.db"), kr)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { s.Close() })
		return s
	case "postgres":
		dsn, schemaName := pgtest.MustTempSchema(t)
		s, err := postgres.Open(context.Background(), dsn, kr, postgres.WithSchema(schemaName))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { s.Close() })
		return s
	}
	t.Fatalf("unknown store kind %q", kind)
	return nil
}

// newWorld builds a world; with stream false it runs no Kafka and no
// processor (API-only tests).
func newWorld(t testing.TB, kind string, notices, stream bool, tweak ...func(*lookup.Config)) *world {
	t.Helper()
	w := &world{pols: testPolicies(notices)}
	var err error
	if w.plan, err = policy.Compile(schema.OrderEventSchema(), w.pols); err != nil {
		t.Fatal(err)
	}
	w.st = openStore(t, kind)
	cfg := lookup.Config{
		Plan:  w.plan,
		Store: w.st,
		Tokens: []lookup.Token{
			tokenEntry("shop", allToken, 1e6, w.plan.Systems()...),
			tokenEntry("meta-only", metaToken, 1e6, "meta"),
		},
	}
	for _, f := range tweak {
		f(&cfg)
	}
	w.api = mustServe(t, cfg)
	w.url = w.api.URL()
	if stream {
		w.startStream(t)
	}
	return w
}

// served is a running lookup.Server behind httptest.
type served struct {
	*lookup.Server
	ts *httptest.Server
}

func (s *served) URL() string { return s.ts.URL + lookup.Path }

// mustServe runs a Server (its batcher and an httptest server) until the
// test ends.
func mustServe(t testing.TB, cfg lookup.Config) *served {
	t.Helper()
	srv, err := lookup.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); srv.Run(ctx) }()
	ts := httptest.NewServer(srv)
	t.Cleanup(func() {
		ts.Close()
		cancel()
		<-done
	})
	return &served{Server: srv, ts: ts}
}

func (w *world) startStream(t testing.TB) {
	t.Helper()
	w.setupKafka(t, kafkatest.New(t))
	w.startProcessor(t)
}

// setupKafka creates the world's topics in kc.
func (w *world) setupKafka(t testing.TB, kc *kafkatest.Cluster) {
	t.Helper()
	w.kc = kc
	w.topics = processor.Topics{}
	d := processor.DefaultTopics()
	w.topics = processor.Topics{
		Orders: w.kc.Topic(d.Orders), Forget: w.kc.Topic(d.Forget), Forgotten: w.kc.Topic(d.Forgotten),
		OrdersDeadLetter: w.kc.Topic(d.OrdersDeadLetter), ForgetDeadLetter: w.kc.Topic(d.ForgetDeadLetter),
		PseudoPrefix: w.kc.Topic(d.PseudoPrefix),
	}
	w.group = w.kc.Group("pseudonymizer")
	w.kc.CreateTopics(t, 3, nil, w.topics.Orders, w.topics.Forget)
}

// startProcessor runs a processor on the world's topics and store until
// the test ends.
func (w *world) startProcessor(t testing.TB) {
	t.Helper()
	p, err := processor.New(processor.Config{
		Topics:             w.topics,
		Policies:           w.pols,
		Plan:               w.plan,
		Store:              w.st,
		Kafka:              []kgo.Opt{kgo.SeedBrokers(w.kc.Brokers()...), kafkatest.FastMetadata()},
		GroupID:            w.group,
		TransactionalID:    w.kc.TxnID("lookup-test"),
		TransactionTimeout: 10 * time.Second,
		SessionTimeout:     6 * time.Second,
		CacheSubjects:      1000,
		MaxBackoff:         2 * time.Second,
	})
	if err != nil {
		t.Fatal(err)
	}
	tctx, tcancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer tcancel()
	if err := p.EnsureTopics(tctx, w.kc.Admin()); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- p.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("processor Run: %v", err)
			}
		case <-time.After(60 * time.Second):
			t.Errorf("processor did not stop within 60s")
		}
	})
}

func (w *world) outputTopic(system string) string { return w.topics.PseudoPrefix + system }

func (w *world) outputTopics() []string {
	var ts []string
	for _, s := range w.plan.Systems() {
		ts = append(ts, w.outputTopic(s))
	}
	return ts
}

// produceOrder writes one order event to the input topic.
func (w *world) produceOrder(t *testing.T, ev *schema.OrderEvent) {
	t.Helper()
	b, err := schema.MarshalOrderEvent(ev)
	if err != nil {
		t.Fatal(err)
	}
	w.kc.Produce(t, &kgo.Record{Topic: w.topics.Orders, Key: []byte(ev.CustomerID), Value: b})
}

// forget writes a forget request and waits for its confirmation (the n-th
// confirmation overall).
func (w *world) forget(t *testing.T, n int, reqID, subject string, at time.Time) {
	t.Helper()
	b, err := schema.MarshalForgetRequest(&schema.ForgetRequest{RequestID: reqID, SubjectID: subject, RequestedAt: at})
	if err != nil {
		t.Fatal(err)
	}
	w.kc.Produce(t, &kgo.Record{Topic: w.topics.Forget, Key: []byte(subject), Value: b})
	w.kc.AwaitCount(t, n, 60*time.Second, w.topics.Forgotten)
}

// streamed returns, per system, the committed output of the event that
// occurred at at (identified by its kept occurred_at), decoded, with its
// record key; it waits until every system has it.
func (w *world) streamed(t *testing.T, at time.Time) map[string]output {
	t.Helper()
	out := map[string]output{}
	kafkatest.WaitFor(t, 60*time.Second, "the event's outputs on every system's topic", func() bool {
		recs := w.kc.ReadToEnd(t, w.outputTopics()...)
		for _, r := range recs {
			if r.Value == nil {
				continue // an erasure notice
			}
			sys := strings.TrimPrefix(r.Topic, w.topics.PseudoPrefix)
			i := indexOf(w.plan.Systems(), sys)
			var m map[string]any
			if err := avro.Unmarshal(w.plan.OutputSchema(i), r.Value, &m); err != nil {
				t.Fatalf("decode %s output: %v", sys, err)
			}
			if occurredAt(m["occurred_at"]).Equal(at) {
				out[sys] = output{key: string(r.Key), value: m}
			}
		}
		return len(out) == len(w.plan.Systems())
	})
	return out
}

type output struct {
	key   string
	value map[string]any
}

func occurredAt(v any) time.Time {
	switch x := v.(type) {
	case time.Time:
		return x
	case int64:
		return time.UnixMilli(x)
	}
	return time.Time{}
}

func indexOf(list []string, s string) int {
	for i, x := range list {
		if x == s {
			return i
		}
	}
	return -1
}

// post sends a lookup request with token (none if empty).
func post(t testing.TB, url, token string, body any) (int, []byte, http.Header) {
	t.Helper()
	var b []byte
	switch x := body.(type) {
	case string:
		b = []byte(x)
	case []byte:
		b = x
	default:
		var err error
		if b, err = json.Marshal(body); err != nil {
			t.Fatal(err)
		}
	}
	req, err := http.NewRequest(http.MethodPost, url, bytes.NewReader(b))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	rb, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, rb, resp.Header
}

// lookupReq is a request body.
type lookupReq struct {
	CustomerID string         `json:"customer_id"`
	OccurredAt string         `json:"occurred_at,omitempty"`
	Values     map[string]any `json:"values,omitempty"`
	Systems    []string       `json:"systems"`
}

type pseudonymsResp struct {
	Pseudonyms map[string]map[string]string `json:"pseudonyms"`
}
