package processor_test

import (
	"context"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/plugin/kslog"

	"github.com/hygiene/pseudonymizer/internal/kafkatest"
	"github.com/hygiene/pseudonymizer/processor"
	"github.com/hygiene/pseudonymizer/processor/policy"
	"github.com/hygiene/pseudonymizer/schema"
	"github.com/hygiene/pseudonymizer/store"
	"github.com/hygiene/pseudonymizer/store/embedded"
	"github.com/hygiene/pseudonymizer/store/postgres"
	"github.com/hygiene/pseudonymizer/store/postgres/pgtest"
	"github.com/hygiene/pseudonymizer/store/storetest"
)

// testPolicies are two systems that keep exact times and amounts plus a CRM that may see a
// trace header and pseudonymizes no event ID.
func testPolicies() []policy.Policy {
	return []policy.Policy{
		{System: "crm", Keep: []string{"event_type", "occurred_at", "total_minor", "shipping_address.city"}, Pseudonymize: []string{"order_id", "customer_id"}, Headers: []string{"traceparent"}},
		// The example systems before they were generalized: the tests
		// match outputs to inputs by the exact occurred_at.
		{System: "google-analytics", Keep: []string{"event_type", "occurred_at", "currency", "total_minor", "items", "attributes.utm_source"},
			Pseudonymize: []string{"event_id", "order_id", "customer_id"}},
		{System: "meta", Keep: []string{"event_type", "occurred_at", "currency", "total_minor", "shipping_address.country"},
			Pseudonymize: []string{"event_id", "order_id", "customer_id"}},
	}
}

// env is one test world: a Kafka cluster (kfake over TCP, or the real broker
// of PSEUDONYMIZER_TEST_KAFKA) with the test's own topics, a key store,
// policies.
type env struct {
	t      *testing.T
	kind   string
	kc     *kafkatest.Cluster
	group  string
	topics processor.Topics
	pols   []policy.Policy
	plan   *policy.Plan
	kr     *store.Keyring
	kek    *store.KEK // the first active KEK
	open   func(t *testing.T) store.KeyStore
	log    *slog.Logger
	logMu  sync.Mutex
	logBuf strings.Builder
}

// storeKinds lists the key stores every pipeline test runs against.
var storeKinds = []string{"embedded", "postgres"}

// newEnv builds a test world with the given store kind. With kfake options
// (faults), the world always runs on kfake; otherwise on the real broker of
// PSEUDONYMIZER_TEST_KAFKA if set.
func newEnv(t *testing.T, kind string, opts ...kfake.Opt) *env {
	t.Helper()
	kc := kafkatest.New
	if len(opts) > 0 {
		kc = kafkatest.NewFake
	}
	e := &env{t: t, kind: kind, kc: kc(t, opts...), pols: testPolicies()}
	e.topics = namespaced(e.kc, processor.DefaultTopics())
	e.group = e.kc.Group("pseudonymizer")
	var err error
	if e.plan, err = policy.Compile(schema.OrderEventSchema(), e.pols); err != nil {
		t.Fatal(err)
	}
	e.kc.CreateTopics(t, 3, nil, e.topics.Orders, e.topics.Forget, e.topics.Objections)
	e.kek = storetest.MustKEK(t, 1)
	e.kr = storetest.MustKeyring(t, e.kek)
	switch kind {
	case "embedded":
		path := filepath.Join(t.TempDir(), "keys.db")
		var shared store.KeyStore
		var sharedKR *store.Keyring
		e.open = func(t *testing.T) store.KeyStore {
			// bbolt allows one opener per file: instances of one test
			// share the store, as threads of one single-node service.
			// A new keyring (KEK rotation) reopens it.
			if shared != nil && sharedKR != e.kr {
				shared.Close()
				shared = nil
			}
			if shared == nil {
				s, err := embedded.Open(path, e.kr)
				if err != nil {
					t.Fatal(err)
				}
				shared, sharedKR = s, e.kr
				t.Cleanup(func() { s.Close() })
			}
			return nopClose{shared}
		}
	case "postgres":
		dsn, schemaName := pgtest.MustTempSchema(t)
		e.open = func(t *testing.T) store.KeyStore {
			s, err := postgres.Open(context.Background(), dsn, e.kr, postgres.WithSchema(schemaName))
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { s.Close() })
			return s
		}
	default:
		t.Fatalf("unknown store kind %q", kind)
	}
	e.log = slog.New(slog.NewTextHandler(&lockedWriter{e}, &slog.HandlerOptions{Level: slog.LevelDebug}))
	return e
}

// namespaced returns topics with every name in the cluster's namespace.
func namespaced(kc *kafkatest.Cluster, topics processor.Topics) processor.Topics {
	return processor.Topics{
		Orders:           kc.Topic(topics.Orders),
		Forget:           kc.Topic(topics.Forget),
		Forgotten:        kc.Topic(topics.Forgotten),
		OrdersDeadLetter: kc.Topic(topics.OrdersDeadLetter),
		ForgetDeadLetter: kc.Topic(topics.ForgetDeadLetter),
		PseudoPrefix:     kc.Topic(topics.PseudoPrefix),

		Objections:           kc.Topic(topics.Objections),
		ObjectionsApplied:    kc.Topic(topics.ObjectionsApplied),
		ObjectionsDeadLetter: kc.Topic(topics.ObjectionsDeadLetter),
	}
}

// nopClose shares one embedded store between instances of a test.
type nopClose struct{ store.KeyStore }

func (nopClose) Close() error { return nil }

type lockedWriter struct{ e *env }

func (w *lockedWriter) Write(p []byte) (int, error) {
	w.e.logMu.Lock()
	defer w.e.logMu.Unlock()
	return w.e.logBuf.Write(p)
}

// logs returns everything the processors logged so far.
func (e *env) logs() string {
	e.logMu.Lock()
	defer e.logMu.Unlock()
	return e.logBuf.String()
}

// instance is one running processor.
type instance struct {
	p      *processor.Processor
	cancel context.CancelFunc
	done   chan error
	once   sync.Once
}

// stop shuts the instance down cleanly and waits.
func (i *instance) stop(t *testing.T) {
	t.Helper()
	i.once.Do(func() {
		i.cancel()
		select {
		case err := <-i.done:
			if err != nil {
				t.Errorf("processor Run: %v", err)
			}
		case <-time.After(60 * time.Second):
			t.Errorf("processor did not stop within 60s")
		}
	})
}

// start runs a processor instance with transactional ID txnID (in the
// test's namespace).
func (e *env) start(t *testing.T, txnID string, tweak ...func(*processor.Config)) *instance {
	t.Helper()
	cfg := processor.Config{
		Topics:             e.topics,
		Policies:           e.pols,
		Plan:               e.plan,
		Store:              e.open(t),
		Kafka:              []kgo.Opt{kgo.SeedBrokers(e.kc.Brokers()...), kafkatest.FastMetadata(), kgo.WithLogger(kslog.New(e.log.With("component", "kafka")))},
		GroupID:            e.group,
		TransactionalID:    e.kc.TxnID(txnID),
		TransactionTimeout: 10 * time.Second,
		SessionTimeout:     6 * time.Second,
		CacheSubjects:      1000,
		MaxBackoff:         2 * time.Second,
		Logger:             e.log.With("instance", txnID),
	}
	for _, f := range tweak {
		f(&cfg)
	}
	p, err := processor.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	tctx, tcancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer tcancel()
	if err := p.EnsureTopics(tctx, e.kc.Admin()); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	in := &instance{p: p, cancel: cancel, done: make(chan error, 1)}
	go func() { in.done <- p.Run(ctx) }()
	t.Cleanup(func() { in.stop(t) })
	return in
}

// client returns a plain client for producing and consuming.
func (e *env) client(t *testing.T, opts ...kgo.Opt) *kgo.Client {
	t.Helper()
	return e.kc.Client(t, opts...)
}

// produce writes records synchronously.
func (e *env) produce(t *testing.T, recs ...*kgo.Record) {
	t.Helper()
	e.kc.Produce(t, recs...)
}

// orderRecord encodes an order event as a record of orders.raw.
func (e *env) orderRecord(t *testing.T, ev *schema.OrderEvent) *kgo.Record {
	t.Helper()
	b, err := schema.MarshalOrderEvent(ev)
	if err != nil {
		t.Fatal(err)
	}
	return &kgo.Record{Topic: e.topics.Orders, Key: []byte(ev.CustomerID), Value: b}
}

// forgetRecord encodes a forget request.
func (e *env) forgetRecord(t *testing.T, reqID, subject string, at time.Time) *kgo.Record {
	t.Helper()
	b, err := schema.MarshalForgetRequest(&schema.ForgetRequest{RequestID: reqID, SubjectID: subject, RequestedAt: at})
	if err != nil {
		t.Fatal(err)
	}
	return &kgo.Record{Topic: e.topics.Forget, Key: []byte(subject), Value: b}
}

// settled waits until the processors have committed every input record
// produced so far and no output transaction is open, then returns every
// committed record of topics: an exact count, with any duplicate.
func (e *env) settled(t *testing.T, topics ...string) []*kgo.Record {
	t.Helper()
	e.kc.AwaitGroup(t, e.group, 60*time.Second, e.topics.Orders)
	e.kc.AwaitGroup(t, e.group+processor.ForgetLaneSuffix, 60*time.Second, e.topics.Forget, e.topics.Objections)
	return e.kc.AwaitStable(t, 30*time.Second, topics...)
}

func systemOf(e *env, topic string) string { return strings.TrimPrefix(topic, e.topics.PseudoPrefix) }

func (e *env) outputTopics() []string {
	var ts []string
	for _, s := range e.plan.Systems() {
		ts = append(ts, e.topics.PseudoPrefix+s)
	}
	return ts
}

func TestMain(m *testing.M) {
	if os.Getenv("PSEUDONYMIZER_TEST_VERBOSE") == "" {
		slog.SetDefault(slog.New(slog.DiscardHandler))
	}
	os.Exit(m.Run())
}
