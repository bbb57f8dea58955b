package main

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/hamba/avro/v2"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/hygiene/pseudonymizer/internal/config"
	"github.com/hygiene/pseudonymizer/processor/policy"
	"github.com/hygiene/pseudonymizer/schema"
	"github.com/hygiene/pseudonymizer/schema/sample"
)

// demoSystems is the demo's policy set when no --config is given: the
// example systems.
func demoSystems() map[string]policy.Policy {
	systems := map[string]policy.Policy{}
	for _, p := range policy.Examples() {
		systems[p.System] = p
	}
	return systems
}

// demoTopicPrefix prefixes every topic of the demo's service, so that a
// user's own `run` against the demo's broker (default topics, group
// "pseudonymizer") never shares a topic, group, transactional ID or store
// with it.
const demoTopicPrefix = "demo."

// runDemo is `pseudonymizer demo`: the real service against an embedded
// broker and the embedded key store, with a narrated run.
// demoMetricsAddr is the demo service's default HTTP address with
// --keep-running: one port above http.listen's default, so that a user's own
// `pseudonymizer run` (examples/config.yaml, or the default) can run next to
// the demo on the same host.
const demoMetricsAddr = "127.0.0.1:9465"

func runDemo(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlags("demo", "demo [--orders N] [--customers N] [--config FILE] [-v] [--keep-running] [--broker-only]",
		"Starts an embedded Kafka-protocol broker (franz-go's kfake: in memory, on\n"+
			"127.0.0.1) and the embedded key store in a temporary directory, runs the\n"+
			"service against them and narrates what each marketing system receives and\n"+
			"what a forget request does. The demo's service uses its own topics\n"+
			"(demo.orders.raw, ...), group, transactional ID and store, so your own\n"+
			"`run` can share the broker with --keep-running without interference.\n"+
			"--broker-only starts only the broker, with orders.raw and subjects.forget.")
	orders := fs.Int("orders", 12, "number of sample orders")
	customers := fs.Int("customers", 4, "number of sample customers")
	keep := fs.Bool("keep-running", false, "keep the broker and the service running until Ctrl-C")
	brokerOnly := fs.Bool("broker-only", false, "only start a local broker (with the input topics) until Ctrl-C")
	port := fs.Int("port", 9092, "broker port with --keep-running or --broker-only (0: any free port)")
	metrics := fs.String("metrics-addr", demoMetricsAddr, "with --keep-running: address of the demo service's /metrics, /healthz, /readyz (port 0: any free port; empty: none); not 9464, which your own `run` takes by default")
	path := fs.String("config", "", "optional configuration file: its systems and topic names (prefixed with demo.) replace the demo's")
	verbose := fs.Bool("v", false, "show the service's logs")
	if err := fs.parse(args, stdout, stderr); err != nil {
		return err
	}
	if *orders < 1 || *customers < 1 {
		return fs.usageError(stderr, errors.New("--orders and --customers must be at least 1"))
	}
	if *brokerOnly {
		if *keep {
			return fs.usageError(stderr, errors.New("--broker-only and --keep-running exclude each other"))
		}
		return runBroker(ctx, stdout, *path, *port)
	}
	if !*keep {
		*port, *metrics = 0, ""
	}
	d, err := newDemo(*path, *port, *metrics, *verbose, stderr)
	if err != nil {
		return err
	}
	defer d.close()
	return d.run(ctx, stdout, *orders, *customers, *keep)
}

// runBroker is `demo --broker-only`: a local Kafka-protocol broker with the
// input topics, until ctx is canceled.
func runBroker(ctx context.Context, w io.Writer, path string, port int) error {
	topics := config.Default().Topics
	if path != "" {
		own, err := config.Read(path, os.Environ())
		if err != nil {
			return err
		}
		topics = own.Topics
	}
	cluster, err := kfake.NewCluster(kfake.Ports(port), kfake.SeedTopics(3, topics.Orders, topics.Forget))
	if err != nil {
		return fmt.Errorf("embedded broker: %w", err)
	}
	defer cluster.Close()
	addr := strings.Join(cluster.ListenAddrs(), ",")
	fmt.Fprintf(w, "Kafka-protocol broker at %s (franz-go kfake: in memory, gone at exit)\n", addr)
	fmt.Fprintf(w, "topics %s and %s (3 partitions each); the service creates its output topics.\n", topics.Orders, topics.Forget)
	fmt.Fprintf(w, "Try: pseudonymizer run --config examples/config.yaml   (kafka.brokers: [\"%s\"])\n", cluster.ListenAddrs()[0])
	fmt.Fprintf(w, "     pseudonymizer produce-sample --config examples/config.yaml --orders 10\n")
	fmt.Fprintf(w, "     pseudonymizer tail --config examples/config.yaml --system meta\nPress Ctrl-C to stop.\n")
	<-ctx.Done()
	return nil
}

type demo struct {
	cluster *kfake.Cluster
	dir     string
	cfg     config.Config
	plan    *policy.Plan
	svc     *service
	client  *kgo.Client
	stop    context.CancelFunc
	done    chan error
	// ended is closed when the service's run returns, with svcErr set.
	ended  chan struct{}
	svcErr error
}

func newDemo(path string, port int, metricsAddr string, verbose bool, stderr io.Writer) (*demo, error) {
	cfg := config.Default()
	cfg.Systems = demoSystems()
	if path != "" {
		own, err := config.Read(path, os.Environ())
		if err != nil {
			return nil, err
		}
		cfg.Systems, cfg.Topics = own.Systems, own.Topics
	}
	for _, t := range []*string{&cfg.Topics.Orders, &cfg.Topics.Forget, &cfg.Topics.Forgotten,
		&cfg.Topics.OrdersDeadLetter, &cfg.Topics.ForgetDeadLetter, &cfg.Topics.PseudoPrefix,
		&cfg.Topics.Objections, &cfg.Topics.ObjectionsApplied, &cfg.Topics.ObjectionsDeadLetter} {
		*t = demoTopicPrefix + *t
	}
	cluster, err := kfake.NewCluster(kfake.Ports(port), kfake.SeedTopics(3, cfg.Topics.Orders, cfg.Topics.Forget))
	if err != nil {
		return nil, fmt.Errorf("embedded broker: %w", err)
	}
	d := &demo{cluster: cluster}
	if d.dir, err = os.MkdirTemp("", "pseudonymizer-demo-"); err != nil {
		d.close()
		return nil, err
	}
	kek := make([]byte, 32)
	_, _ = rand.Read(kek)
	id := make([]byte, 4)
	_, _ = rand.Read(id)
	cfg.Kafka.Brokers = cluster.ListenAddrs()
	cfg.Kafka.GroupID = fmt.Sprintf("pseudonymizer-demo-%x", id)
	cfg.Kafka.TransactionalID = cfg.Kafka.GroupID
	cfg.Kafka.SessionTimeout = 6 * time.Second
	cfg.Store = config.Store{Path: filepath.Join(d.dir, "keys.db")}
	cfg.Keys = config.Keys{KEK: base64.StdEncoding.EncodeToString(kek)}
	cfg.SchemaRegistry = config.SchemaRegistry{}
	cfg.HTTP.Listen = metricsAddr
	cfg.Log = config.Log{Level: "error", Format: "text"}
	if verbose {
		cfg.Log.Level = "info"
	}
	if err := cfg.Validate(); err != nil {
		d.close()
		return nil, err
	}
	d.cfg = cfg
	log := newLogger(cfg.Log, stderr)
	if d.svc, err = newService(context.Background(), cfg, log); err != nil {
		d.close()
		return nil, err
	}
	// Bind the metrics address now: a taken port fails at once, with the
	// real error.
	if _, err := d.svc.listen(); err != nil {
		d.close()
		return nil, err
	}
	_, d.plan, _ = compilePlan(&cfg)
	kopts, _ := kafkaOpts(cfg.Kafka, newLogger(config.Log{Level: "error", Format: "text"}, stderr))
	var outputs []string
	for _, s := range d.plan.Systems() {
		outputs = append(outputs, cfg.Topics.PseudoPrefix+s)
	}
	if d.client, err = kgo.NewClient(append(kopts, kgo.ConsumeTopics(outputs...),
		kgo.FetchIsolationLevel(kgo.ReadCommitted()), kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()))...); err != nil {
		d.close()
		return nil, err
	}
	return d, nil
}

func (d *demo) close() {
	if d.stop != nil {
		d.stop()
		<-d.done
	}
	if d.client != nil {
		d.client.Close()
	}
	if d.svc != nil {
		if d.svc.ln != nil && d.stop == nil {
			d.svc.ln.Close() // bound but never served
		}
		d.svc.close()
	}
	if d.cluster != nil {
		d.cluster.Close()
	}
	if d.dir != "" {
		os.RemoveAll(d.dir)
	}
}

// output is one record a marketing system received.
type output struct {
	system string
	key    string
	value  map[string]any
}

func (d *demo) run(ctx context.Context, w io.Writer, nOrders, nCustomers int, keep bool) error {
	systems := d.plan.Systems()
	fmt.Fprintf(w, "pseudonymizer demo: embedded Kafka-protocol broker at %s, embedded key store in %s\n",
		strings.Join(d.cfg.Kafka.Brokers, ","), d.dir)
	fmt.Fprintf(w, "marketing systems: %s\n\n", strings.Join(systems, ", "))

	sctx, stop := context.WithCancel(ctx)
	d.stop, d.done, d.ended = stop, make(chan error, 1), make(chan struct{})
	go func() {
		err := d.svc.run(sctx)
		d.svcErr = err
		close(d.ended)
		d.done <- err
	}()

	// 1. Orders.
	gen := sample.New(42, nCustomers, time.Now().Add(-time.Hour))
	var events []*schema.OrderEvent
	for i := 0; i < nOrders; i++ {
		c := i % nCustomers
		events = append(events, gen.ForCustomer(c))
	}
	// The first order goes alone, so that its outputs are known without
	// matching them to it: the example policies share no field precise
	// enough for that (docs/linkability.md).
	if err := d.produceOrders(ctx, events[0]); err != nil {
		return err
	}
	firstOuts, err := d.collect(ctx, len(systems))
	if err != nil {
		return err
	}
	if err := d.produceOrders(ctx, events[1:]...); err != nil {
		return err
	}
	fmt.Fprintf(w, "1. The order service published %d orders of %d customers to %s.\n", nOrders, nCustomers, d.cfg.Topics.Orders)
	outs, err := d.collect(ctx, len(systems)*(nOrders-1))
	if err != nil {
		return err
	}
	outs = append(firstOuts, outs...)
	first := events[0]
	fmt.Fprintf(w, "\n   raw order on %s (key %s):\n", d.cfg.Topics.Orders, first.CustomerID)
	fmt.Fprintf(w, "   raw %s\n", jsonLine(first))
	fmt.Fprintf(w, "\n2. What each marketing system received for it (record key = that system's customer pseudonym):\n")
	before := map[string]string{}
	for _, sys := range systems {
		for _, o := range firstOuts {
			if o.system == sys {
				fmt.Fprintf(w, "   → %-18s key=%s %s\n", sys, o.key, jsonLine(o.value))
				before[sys] = o.key
				break
			}
		}
	}
	if err := checkStable(outs, systems, nOrders, nCustomers); err != nil {
		return err
	}
	fmt.Fprintf(w, "\n   Checked over all %d outputs: within a system every order of a customer carries the same\n", len(outs))
	fmt.Fprintf(w, "   customer pseudonym; no pseudonym appears in two systems; dropped fields are absent.\n")

	// 2. Forget.
	victim := first.CustomerID
	fmt.Fprintf(w, "\n3. The GDPR workflow asks to forget customer %s (a request on %s).\n", victim, d.cfg.Topics.Forget)
	requestedAt := time.Now().Truncate(time.Millisecond)
	kopts, _ := kafkaOpts(d.cfg.Kafka, newLogger(config.Log{Level: "error", Format: "text"}, io.Discard))
	fctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	conf, err := forget(fctx, kopts, d.cfg.Topics, schema.ForgetRequest{RequestID: newUUID(), SubjectID: victim, RequestedAt: requestedAt})
	cancel()
	if err != nil {
		return fmt.Errorf("forget: %w", err)
	}
	fmt.Fprintf(w, "   confirmation on %s: %s, systems %v, %s after the request\n", d.cfg.Topics.Forgotten, conf.Status,
		conf.Systems, conf.CompletedAt.Sub(requestedAt).Round(time.Millisecond))
	fmt.Fprintf(w, "   The customer's key is destroyed: every pseudonym above is now anonymous in every system.\n")

	// 3. Replay and a new order.
	suppressedBefore := d.svc.proc.Stats().Suppressed
	newer := gen.ForCustomer(0)
	newer.OccurredAt = requestedAt.Add(time.Second)
	if err := d.produceOrders(ctx, first, newer); err != nil {
		return err
	}
	fresh, err := d.collect(ctx, len(systems))
	if err != nil {
		return err
	}
	deadline := time.Now().Add(10 * time.Second)
	for d.svc.proc.Stats().Suppressed == suppressedBefore && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	suppressed := d.svc.proc.Stats().Suppressed - suppressedBefore
	fmt.Fprintf(w, "\n4. The old order of %s is replayed on %s: suppressed (%d event, nothing emitted).\n", victim, d.cfg.Topics.Orders, suppressed)
	fmt.Fprintf(w, "   A new order of %s after the request gets pseudonyms from a fresh key:\n", victim)
	for _, sys := range systems {
		for _, o := range fresh {
			if o.system == sys {
				fmt.Fprintf(w, "   → %-18s key=%s (was %s)\n", sys, o.key, before[sys])
				if o.key == before[sys] {
					return fmt.Errorf("system %s: pseudonym unchanged after forget", sys)
				}
			}
		}
	}
	if suppressed != 1 {
		return fmt.Errorf("expected the replayed order to be suppressed, %d were", suppressed)
	}
	st := d.svc.proc.Stats()
	fmt.Fprintf(w, "\nTotals: %d orders in, %d records out, %d suppressed, %d dead letters, %d transactions, %d key store calls.\n",
		st.OrdersIn, st.Out, st.Suppressed, st.DeadLetters, st.Committed, st.StoreCalls)

	if keep {
		metrics := "off"
		if addr, _ := d.svc.listen(); addr != nil {
			metrics = "http://" + addr.String() + "/metrics"
		}
		fmt.Fprintf(w, "\nStill running. Broker: %s  Metrics: %s  Group: %s\n", strings.Join(d.cfg.Kafka.Brokers, ","), metrics, d.cfg.Kafka.GroupID)
		fmt.Fprintf(w, "Produce OrderEvents (bare Avro, schema/order_event.avsc) to %s and read %s<system>, e.g.\n", d.cfg.Topics.Orders, d.cfg.Topics.PseudoPrefix)
		fmt.Fprintf(w, "  kcat -b %s -C -t %s%s -e\n", d.cfg.Kafka.Brokers[0], d.cfg.Topics.PseudoPrefix, systems[0])
		fmt.Fprintf(w, "Your own `pseudonymizer run` may share this broker: the demo's service keeps to its %s* topics,\n", demoTopicPrefix)
		fmt.Fprintf(w, "its own group and its own key store (its HTTP endpoint is not your service's 127.0.0.1:9464;\n")
		fmt.Fprintf(w, "change either with --metrics-addr here or http.listen / PSEUDONYMIZER_HTTP_LISTEN there).\nPress Ctrl-C to stop.\n")
		select {
		case <-ctx.Done():
		case err := <-d.done:
			d.stop = nil
			return err
		}
	}
	return nil
}

func (d *demo) produceOrders(ctx context.Context, events ...*schema.OrderEvent) error {
	var recs []*kgo.Record
	for _, e := range events {
		b, err := schema.MarshalOrderEvent(e)
		if err != nil {
			return err
		}
		recs = append(recs, &kgo.Record{Topic: d.cfg.Topics.Orders, Key: []byte(e.CustomerID), Value: b})
	}
	return d.client.ProduceSync(ctx, recs...).FirstErr()
}

// collect reads n more records from the systems' topics.
func (d *demo) collect(ctx context.Context, n int) ([]output, error) {
	systems := d.plan.Systems()
	cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	go func() { // a failed service ends the wait at once
		select {
		case <-d.ended:
			cancel()
		case <-cctx.Done():
		}
	}()
	var outs []output
	for len(outs) < n {
		f := d.client.PollFetches(cctx)
		if cctx.Err() != nil {
			select {
			case <-d.ended:
				if d.svcErr != nil {
					return nil, fmt.Errorf("the demo's service failed: %w", d.svcErr)
				}
				return nil, errors.New("the demo's service stopped")
			default:
			}
			return nil, fmt.Errorf("waited 30s for %d outputs, got %d (-v shows the service's logs)", n, len(outs))
		}
		for _, r := range f.Records() {
			sys := strings.TrimPrefix(r.Topic, d.cfg.Topics.PseudoPrefix)
			i := indexOf(systems, sys)
			var v map[string]any
			if err := avro.Unmarshal(d.plan.OutputSchema(i), r.Value, &v); err != nil {
				return nil, fmt.Errorf("decode %s output: %w", sys, err)
			}
			outs = append(outs, output{system: sys, key: string(r.Key), value: v})
		}
	}
	return outs, nil
}

// checkStable verifies P2 and P3 over the demo's outputs.
func checkStable(outs []output, systems []string, nOrders, nCustomers int) error {
	owner := map[string]string{}
	perSystem := map[string]map[string]bool{}
	for _, o := range outs {
		if s, ok := owner[o.key]; ok && s != o.system {
			return fmt.Errorf("pseudonym shared by %s and %s", s, o.system)
		}
		owner[o.key] = o.system
		if perSystem[o.system] == nil {
			perSystem[o.system] = map[string]bool{}
		}
		perSystem[o.system][o.key] = true
	}
	want := nCustomers
	if nOrders < want {
		want = nOrders
	}
	for _, s := range systems {
		if got := len(perSystem[s]); got != want {
			return fmt.Errorf("system %s: %d customer pseudonyms for %d customers", s, got, want)
		}
	}
	return nil
}

func indexOf(xs []string, x string) int {
	for i, v := range xs {
		if v == x {
			return i
		}
	}
	return -1
}

// unwrapUnions unwraps hamba's generic union values ({"ns.Name": value}) for
// display.
func unwrapUnions(v any) any {
	switch x := v.(type) {
	case map[string]any:
		if len(x) == 1 {
			for k, inner := range x {
				if strings.Contains(k, ".") {
					return unwrapUnions(inner)
				}
			}
		}
		out := make(map[string]any, len(x))
		for k, inner := range x {
			out[k] = unwrapUnions(inner)
		}
		return out
	case []any:
		out := make([]any, len(x))
		for i, inner := range x {
			out[i] = unwrapUnions(inner)
		}
		return out
	}
	return v
}

// jsonLine renders v compactly with sorted keys.
func jsonLine(v any) string {
	b, err := json.Marshal(unwrapUnions(v))
	if err != nil {
		return fmt.Sprint(v)
	}
	var m map[string]any
	if json.Unmarshal(b, &m) != nil {
		return string(b)
	}
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var sb strings.Builder
	sb.WriteString("{")
	for i, k := range keys {
		if i > 0 {
			sb.WriteString(", ")
		}
		vb, _ := json.Marshal(m[k])
		fmt.Fprintf(&sb, "%s: %s", k, vb)
	}
	sb.WriteString("}")
	return sb.String()
}
