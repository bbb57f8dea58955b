package main

import (
	"bufio"
	"bytes"
	"cmp"
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"runtime/pprof"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/hygiene/pseudonymizer/processor"
	"github.com/hygiene/pseudonymizer/processor/config"
	"github.com/hygiene/pseudonymizer/processor/policy"
	"github.com/hygiene/pseudonymizer/schema"
	"github.com/hygiene/pseudonymizer/schema/sample"
	"github.com/hygiene/pseudonymizer/store"
	"github.com/hygiene/pseudonymizer/store/embedded"
	"github.com/hygiene/pseudonymizer/store/postgres"
)

// benchWorkerEnv marks a process started by `pseudonymizer bench` as one of
// its pipelines (test binaries dispatch on it in TestMain).
const benchWorkerEnv = "PSEUDONYMIZER_BENCH_WORKER"

// benchDefaultDSN is the local test database.
const benchDefaultDSN = "postgres://postgres@127.0.0.1:5432/test?sslmode=disable"

// benchPolicies are the demo's systems; --systems takes the first N.
func benchPolicies(n int) ([]policy.Policy, error) {
	cfg := config.Default()
	if err := config.Parse([]byte(demoSystems), &cfg); err != nil {
		return nil, err
	}
	all := cfg.Policies()
	order := []string{"google-analytics", "meta", "tiktok", "crm"}
	var out []policy.Policy
	for _, name := range order {
		for _, p := range all {
			if p.System == name && len(out) < n {
				out = append(out, p)
			}
		}
	}
	if n < 1 || len(out) < n {
		return nil, fmt.Errorf("--systems must be between 1 and %d", len(order))
	}
	return out, nil
}

// runBench is `pseudonymizer bench` and, as bench-worker, one pipeline.
func runBench(ctx context.Context, cmd string, args []string, stdout, stderr io.Writer) error {
	if cmd == "bench-worker" {
		return runBenchWorker(ctx, args, stdout, stderr)
	}
	fs := newFlags("bench", "bench [--quick] [--events N] [--customers N] [--systems N] [--no-postgres] [--profile DIR]", "Pushes one backlog of sample orders through a plain copy, a transactional\ncopy and the pseudonymizer (PostgreSQL and embedded store) and compares\ntheir throughput.")
	events := fs.Int("events", 200_000, "events in the backlog")
	customers := fs.Int("customers", 20_000, "distinct customers")
	systems := fs.Int("systems", 3, "marketing systems (1-4, the demo's)")
	partitions := fs.Int("partitions", 3, "partitions of every topic")
	quick := fs.Bool("quick", false, "smoke test: 20,000 events of 2,000 customers unless --events/--customers say otherwise")
	dsn := fs.String("postgres", benchDefaultDSN, "PostgreSQL DSN for pipeline (c); a fresh schema is created and dropped")
	noPG := fs.Bool("no-postgres", false, "skip pipeline (c), the PostgreSQL store")
	only := fs.String("only", "", "comma-separated pipelines to run (copy,txcopy,pg,embedded); default all")
	profile := fs.String("profile", "", "directory for CPU and allocation profiles of the pseudonymizer workers")
	timeout := fs.Duration("timeout", 10*time.Minute, "give up on a pipeline after this long")
	verbose := fs.Bool("v", false, "pass the workers' logs through")
	brokers := fs.String("brokers", "", "seed brokers (host:port,…) of a Kafka cluster to run against instead of the embedded broker; the run's topics and groups get a unique prefix and are deleted afterwards")
	if err := fs.parse(args, stdout, stderr); err != nil {
		return err
	}
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	if *quick {
		if !set["events"] {
			*events = 20_000
		}
		if !set["customers"] {
			*customers = 2_000
		}
	}
	if *events < 1 || *customers < 1 || *partitions < 1 {
		return errors.New("bench: --events, --customers and --partitions must be positive")
	}
	pols, err := benchPolicies(*systems)
	if err != nil {
		return fmt.Errorf("bench: %w", err)
	}
	want := map[string]bool{"copy": true, "txcopy": true, "pg": !*noPG, "embedded": true}
	if *only != "" {
		want = map[string]bool{}
		for _, s := range strings.Split(*only, ",") {
			want[strings.TrimSpace(s)] = true
		}
	}
	if *noPG {
		want["pg"] = false
	}
	b := &bench{
		events: *events, customers: *customers, partitions: *partitions, pols: pols,
		dsn: *dsn, profile: *profile, timeout: *timeout, verbose: *verbose, stderr: stderr,
		topics: config.Default().Topics,
	}
	if *brokers != "" {
		b.brokers = strings.Split(*brokers, ",")
		var rnd [4]byte
		_, _ = rand.Read(rnd[:])
		b.ns = "bench-" + hex.EncodeToString(rnd[:]) + "."
		b.topics = benchTopics(b.ns)
	}
	defer b.close()
	return b.run(ctx, want, stdout)
}

type bench struct {
	events, customers, partitions int
	pols                          []policy.Policy
	dsn, profile                  string
	timeout                       time.Duration
	verbose                       bool
	stderr                        io.Writer

	brokers  []string // seed brokers; the embedded broker's when cluster is set
	ns       string   // prefix of the run's topics and groups on an external broker
	topics   config.Topics
	created  []string // topics to delete at close
	cluster  *kfake.Cluster
	adm      *kadm.Client
	cl       *kgo.Client
	dir      string
	kek      string
	pgSchema string
	inEnd    map[int32]int64
	avgBytes float64
}

// benchResult is one pipeline's measurements.
type benchResult struct {
	name, label    string
	wall, startup  time.Duration
	rate           float64
	rssKiB         int64
	cpu            time.Duration
	stats          processor.Stats
	pseudonymizer  bool
	skipped, error string
}

// topics of the bench: the backlog and every pipeline's outputs.
func (b *bench) outputs(prefix string) []string {
	var ts []string
	for _, p := range b.pols {
		ts = append(ts, prefix+p.System)
	}
	return ts
}

var benchPipelines = []struct{ name, kind, label string }{
	{"a", "copy", "plain consume-and-copy"},
	{"b", "txcopy", "transactional copy (5k rec/100 ms txns)"},
	{"c-cold", "pg", "pseudonymizer, PostgreSQL, cold store"},
	{"c", "pg", "pseudonymizer, PostgreSQL, warm store"},
	{"d-cold", "embedded", "pseudonymizer, embedded, cold store"},
	{"d", "embedded", "pseudonymizer, embedded, warm store"},
}

// benchTopics are the default topic names with prefix ns.
func benchTopics(ns string) config.Topics {
	t := config.Default().Topics
	return config.Topics{
		Orders: ns + t.Orders, Forget: ns + t.Forget, Forgotten: ns + t.Forgotten,
		OrdersDeadLetter: ns + t.OrdersDeadLetter, ForgetDeadLetter: ns + t.ForgetDeadLetter,
		PseudoPrefix: ns + t.PseudoPrefix,
	}
}

func (b *bench) close() {
	if b.adm != nil && len(b.created) > 0 {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		if _, err := b.adm.DeleteTopics(ctx, b.created...); err != nil {
			fmt.Fprintf(b.stderr, "bench: deleting the run's topics: %v\n", err)
		}
		var groups []string
		for _, p := range benchPipelines {
			groups = append(groups, b.ns+"bench-"+p.name)
		}
		_, _ = b.adm.DeleteGroups(ctx, groups...)
		cancel()
	}
	if b.cl != nil {
		b.cl.Close()
	}
	if b.cluster != nil {
		b.cluster.Close()
	}
	if b.dir != "" {
		os.RemoveAll(b.dir)
	}
	if b.pgSchema != "" {
		ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
		defer cancel()
		if conn, err := pgx.Connect(ctx, b.dsn); err == nil {
			if _, err := conn.Exec(ctx, "DROP SCHEMA IF EXISTS "+pgx.Identifier{b.pgSchema}.Sanitize()+" CASCADE"); err != nil {
				fmt.Fprintf(b.stderr, "bench: dropping schema %s: %v\n", b.pgSchema, err)
			}
			_ = conn.Close(ctx)
		}
	}
}

func (b *bench) run(ctx context.Context, want map[string]bool, w io.Writer) error {
	topics := b.topics
	seed := []string{topics.Orders, topics.Forget, topics.Forgotten, topics.OrdersDeadLetter, topics.ForgetDeadLetter}
	for _, p := range benchPipelines {
		seed = append(seed, b.outputs(b.ns+"bench."+p.name+".")...)
	}
	var err error
	brokerKind := "Kafka broker"
	if b.brokers == nil {
		if b.cluster, err = kfake.NewCluster(kfake.Ports(0), kfake.SeedTopics(int32(b.partitions), seed...)); err != nil {
			return fmt.Errorf("bench: embedded broker: %w", err)
		}
		b.brokers = b.cluster.ListenAddrs()
		brokerKind = "kfake broker"
	}
	if b.cl, err = kgo.NewClient(kgo.SeedBrokers(b.brokers...), kgo.ProducerLinger(5*time.Millisecond)); err != nil {
		return err
	}
	b.adm = kadm.NewClient(b.cl)
	if b.cluster == nil {
		if err := b.createTopics(ctx, seed); err != nil {
			return err
		}
	}
	if b.dir, err = os.MkdirTemp("", "pseudonymizer-bench-"); err != nil {
		return err
	}
	kek := make([]byte, store.KeySize)
	_, _ = rand.Read(kek)
	b.kek = base64.StdEncoding.EncodeToString(kek)

	t0 := time.Now()
	if err := b.backlog(ctx, topics.Orders); err != nil {
		return err
	}
	fmt.Fprintf(w, "pseudonymizer bench: %d events (%.0f B Avro on average) of %d customers, %d systems, %d partitions; %s at %s (backlog written in %s)\n",
		b.events, b.avgBytes, b.customers, len(b.pols), b.partitions, brokerKind, strings.Join(b.brokers, ","), time.Since(t0).Round(time.Millisecond))
	fmt.Fprintf(w, "machine: %d CPUs (%s), GOMAXPROCS %d, %s\n\n", runtime.NumCPU(), cpuModel(), runtime.GOMAXPROCS(0), runtime.Version())

	if want["pg"] {
		var rnd [6]byte
		_, _ = rand.Read(rnd[:])
		b.pgSchema = "bench_" + hex.EncodeToString(rnd[:])
	}
	var results []*benchResult
	for _, p := range benchPipelines {
		r := &benchResult{name: p.name, label: p.label, pseudonymizer: p.kind == "pg" || p.kind == "embedded"}
		results = append(results, r)
		if !want[p.kind] {
			r.skipped = "skipped"
			continue
		}
		if err := b.pipeline(ctx, p.kind, r); err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			r.error = err.Error()
			fmt.Fprintf(b.stderr, "bench: pipeline %s: %v\n", p.name, err)
		}
	}
	b.table(w, results)
	for _, r := range results {
		if r.error != "" {
			return fmt.Errorf("bench: pipeline %s failed: %s", r.name, r.error)
		}
	}
	return nil
}

// createTopics creates the run's topics on an external broker, with the
// broker's default replication factor, and waits until each partition has
// a leader.
func (b *bench) createTopics(ctx context.Context, topics []string) error {
	cctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	resp, err := b.adm.CreateTopics(cctx, int32(b.partitions), -1, nil, topics...)
	for _, r := range resp {
		if r.Err == nil {
			b.created = append(b.created, r.Topic)
		}
	}
	if err == nil {
		err = resp.Error()
	}
	if err != nil {
		return fmt.Errorf("bench: creating topics on %s: %w", strings.Join(b.brokers, ","), err)
	}
	for {
		td, err := b.adm.ListTopics(cctx, topics...)
		ready := err == nil && len(td) == len(topics)
		td.EachPartition(func(p kadm.PartitionDetail) { ready = ready && p.Err == nil && p.Leader >= 0 })
		if ready {
			return nil
		}
		select {
		case <-cctx.Done():
			return fmt.Errorf("bench: the run's topics have no leaders after a minute (%v)", err)
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// backlog writes the events to the input topic.
func (b *bench) backlog(ctx context.Context, topic string) error {
	gen := sample.New(42, b.customers, time.Now().Add(-30*24*time.Hour))
	var total int
	const chunk = 5000
	recs := make([]*kgo.Record, 0, chunk)
	flush := func() error {
		err := b.cl.ProduceSync(ctx, recs...).FirstErr()
		recs = recs[:0]
		return err
	}
	for i := 0; i < b.events; i++ {
		e := gen.Next()
		v, err := schema.MarshalOrderEvent(e)
		if err != nil {
			return err
		}
		total += len(v)
		recs = append(recs, &kgo.Record{Topic: topic, Key: []byte(e.CustomerID), Value: v})
		if len(recs) == chunk {
			if err := flush(); err != nil {
				return fmt.Errorf("bench: writing the backlog: %w", err)
			}
		}
	}
	if err := flush(); err != nil {
		return fmt.Errorf("bench: writing the backlog: %w", err)
	}
	b.avgBytes = float64(total) / float64(b.events)
	ends, err := b.adm.ListEndOffsets(ctx, topic)
	if err != nil {
		return err
	}
	b.inEnd = map[int32]int64{}
	ends.Each(func(o kadm.ListedOffset) { b.inEnd[o.Partition] = o.Offset })
	return nil
}

// pipeline runs one worker process and measures it.
func (b *bench) pipeline(ctx context.Context, kind string, r *benchResult) error {
	exe, err := os.Executable()
	if err != nil {
		return err
	}
	prefix := b.ns + "bench." + r.name + "."
	group := b.ns + "bench-" + r.name
	args := []string{"bench-worker", "--mode", kind, "--brokers", strings.Join(b.brokers, ","),
		"--ns", b.ns, "--prefix", prefix, "--group", group, "--systems", fmt.Sprint(len(b.pols))}
	switch kind {
	case "pg":
		args = append(args, "--postgres", b.dsn, "--schema", b.pgSchema)
	case "embedded":
		args = append(args, "--path", filepath.Join(b.dir, "keys.db"))
	}
	if b.profile != "" && r.pseudonymizer {
		if err := os.MkdirAll(b.profile, 0o755); err != nil {
			return err
		}
		args = append(args, "--cpuprofile", filepath.Join(b.profile, r.name+".cpu.pprof"),
			"--memprofile", filepath.Join(b.profile, r.name+".alloc.pprof"))
	}
	cmd := exec.Command(exe, args...)
	cmd.Env = append(os.Environ(), benchWorkerEnv+"=1", "PSEUDONYMIZER_KEK="+b.kek)
	var out, errOut bytes.Buffer
	cmd.Stdout = &out
	cmd.Stderr = &errOut
	if b.verbose {
		cmd.Stderr = io.MultiWriter(&errOut, b.stderr)
	}
	outputs := b.outputs(prefix)
	txn := kind != "copy"

	start := time.Now()
	if err := cmd.Start(); err != nil {
		return err
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	stop := func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(30 * time.Second):
			_ = cmd.Process.Kill()
			<-exited
		}
	}
	deadline := start.Add(b.timeout)
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	var first time.Time
	for {
		select {
		case <-ctx.Done():
			stop()
			return ctx.Err()
		case err := <-exited:
			return fmt.Errorf("worker exited early (%v): %s", err, lastLine(errOut.String()))
		case <-tick.C:
		}
		if time.Now().After(deadline) {
			stop()
			return fmt.Errorf("not done after %s", b.timeout)
		}
		done, any, err := b.progress(ctx, outputs, group, txn)
		if err != nil {
			continue
		}
		if any && first.IsZero() {
			first = time.Now()
		}
		if done {
			break
		}
	}
	r.wall = time.Since(start)
	r.startup = first.Sub(start)
	r.rate = float64(b.events) / r.wall.Seconds()
	// VmHWM, not rusage: a child's ru_maxrss starts from its parent's
	// (the broker's) resident size at fork.
	r.rssKiB = vmHWM(cmd.Process.Pid)
	stop()
	if ru, ok := cmd.ProcessState.SysUsage().(*syscall.Rusage); ok {
		r.cpu = time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
	}
	if r.pseudonymizer {
		sc := bufio.NewScanner(&out)
		for sc.Scan() {
			if err := json.Unmarshal(sc.Bytes(), &r.stats); err == nil {
				break
			}
		}
		if r.stats.OrdersIn < b.events {
			return fmt.Errorf("worker reports %d committed orders, want %d", r.stats.OrdersIn, b.events)
		}
	}
	return nil
}

// progress reports whether every output topic holds the whole backlog,
// readable by a read_committed consumer, and whether any output exists yet.
func (b *bench) progress(ctx context.Context, outputs []string, group string, txn bool) (done, any bool, err error) {
	cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	var offs kadm.ListedOffsets
	if txn {
		offs, err = b.adm.ListCommittedOffsets(cctx, outputs...) // last stable offsets
	} else {
		offs, err = b.adm.ListEndOffsets(cctx, outputs...)
	}
	if err != nil {
		return false, false, err
	}
	sum := map[string]int64{}
	offs.Each(func(o kadm.ListedOffset) {
		sum[o.Topic] += o.Offset
		any = any || o.Offset > 0
	})
	for _, t := range outputs {
		if sum[t] < int64(b.events) {
			return false, any, nil
		}
	}
	if !txn {
		return true, any, nil
	}
	// Stable offsets count commit markers too: the backlog is through when
	// the group's offsets, committed in the same transactions, reach the
	// input's end.
	resp, err := b.adm.FetchOffsets(cctx, group)
	if err != nil {
		return false, any, err
	}
	for p, end := range b.inEnd {
		o, ok := resp.Lookup(b.topics.Orders, p)
		if end > 0 && (!ok || o.Err != nil || o.At < end) {
			return false, any, nil
		}
	}
	return true, any, nil
}

func (b *bench) table(w io.Writer, results []*benchResult) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "pipeline\tevents/s\twall\tfirst output\tpeak RSS\tCPU\tµs CPU/event\tbatches\tstore calls/batch\t")
	for _, r := range results {
		if r.skipped != "" || r.error != "" {
			fmt.Fprintf(tw, "%s %s\t%s\t\t\t\t\t\t\t\t\n", r.name, r.label, orDefault(r.skipped, "failed"))
			continue
		}
		batches, calls := "-", "-"
		if r.pseudonymizer && r.stats.Batches > 0 {
			batches = fmt.Sprint(r.stats.Batches)
			calls = fmt.Sprintf("%.2f", float64(r.stats.StoreCalls)/float64(r.stats.Batches))
		}
		fmt.Fprintf(tw, "%s %s\t%.0f\t%s\t%s\t%.0f MiB\t%s\t%.2f\t%s\t%s\t\n", r.name, r.label, r.rate,
			r.wall.Round(time.Millisecond), r.startup.Round(time.Millisecond), float64(r.rssKiB)/1024,
			r.cpu.Round(10*time.Millisecond), float64(r.cpu.Microseconds())/float64(b.events), batches, calls)
	}
	tw.Flush()
	by := map[string]*benchResult{}
	for _, r := range results {
		if r.skipped == "" && r.error == "" {
			by[r.name] = r
		}
	}
	var ratios []string
	for _, q := range [][2]string{{"c", "a"}, {"c", "b"}, {"d", "a"}, {"d", "b"}} {
		if x, y := by[q[0]], by[q[1]]; x != nil && y != nil {
			ratios = append(ratios, fmt.Sprintf("%s/%s %.2f", q[0], q[1], x.rate/y.rate))
		}
	}
	if len(ratios) > 0 {
		fmt.Fprintf(w, "\nthroughput ratios (warm store): %s\n", strings.Join(ratios, "  "))
	}
	fmt.Fprintln(w, "cold: every customer new, keys created in the store; warm: same store, new process (empty cache), new group.")
}

func orDefault(s, d string) string {
	if s == "" {
		return d
	}
	return s
}

func lastLine(s string) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	return lines[len(lines)-1]
}

// cpuModel returns the CPU model from /proc/cpuinfo.
func cpuModel() string {
	b, err := os.ReadFile("/proc/cpuinfo")
	if err != nil {
		return runtime.GOARCH
	}
	for _, line := range strings.Split(string(b), "\n") {
		if k, v, ok := strings.Cut(line, ":"); ok && strings.TrimSpace(k) == "model name" {
			return strings.TrimSpace(v)
		}
	}
	return runtime.GOARCH
}

// runBenchWorker is one pipeline, until SIGTERM.
func runBenchWorker(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("bench-worker", flag.ContinueOnError)
	fs.SetOutput(stderr)
	mode := fs.String("mode", "", "copy, txcopy, pg or embedded")
	brokers := fs.String("brokers", "", "seed brokers")
	prefix := fs.String("prefix", "", "output topic prefix")
	ns := fs.String("ns", "", "prefix of the input, confirmation and dead-letter topics")
	group := fs.String("group", "", "consumer group")
	nsys := fs.Int("systems", 3, "systems")
	dsn := fs.String("postgres", "", "PostgreSQL DSN")
	pgSchema := fs.String("schema", "", "PostgreSQL schema")
	path := fs.String("path", "", "embedded store file")
	cpuprofile := fs.String("cpuprofile", "", "write a CPU profile")
	memprofile := fs.String("memprofile", "", "write an allocation profile")
	if err := fs.Parse(args); err != nil {
		return err
	}
	pols, err := benchPolicies(*nsys)
	if err != nil {
		return err
	}
	if *cpuprofile != "" {
		f, err := os.Create(*cpuprofile)
		if err != nil {
			return err
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			return err
		}
		defer pprof.StopCPUProfile()
	}
	if *memprofile != "" {
		// Also keep the heap profile of the largest heap seen.
		pctx, cancel := context.WithCancel(ctx)
		defer cancel()
		go peakHeapProfile(pctx, *memprofile+".peak")
		defer func() {
			if f, err := os.Create(*memprofile); err == nil {
				_ = pprof.Lookup("allocs").WriteTo(f, 0)
				f.Close()
			}
		}()
	}
	topics := benchTopics(*ns)
	var outputs []string
	for _, p := range pols {
		outputs = append(outputs, *prefix+p.System)
	}
	kopts := []kgo.Opt{kgo.SeedBrokers(strings.Split(*brokers, ",")...)}
	switch *mode {
	case "copy":
		return benchCopy(ctx, kopts, topics.Orders, *group, outputs)
	case "txcopy":
		return benchTxCopy(ctx, kopts, topics.Orders, *group, outputs)
	case "pg", "embedded":
	default:
		return fmt.Errorf("bench-worker: unknown mode %q", *mode)
	}
	kr, err := loadKeyring(config.Keys{KEK: os.Getenv("PSEUDONYMIZER_KEK")})
	if err != nil {
		return err
	}
	var st store.KeyStore
	if *mode == "pg" {
		st, err = postgres.Open(ctx, *dsn, kr, postgres.WithSchema(*pgSchema))
	} else {
		st, err = embedded.Open(*path, kr)
	}
	if err != nil {
		return err
	}
	defer st.Close()
	plan, err := policy.Compile(schema.OrderEventSchema(), pols)
	if err != nil {
		return err
	}
	def := config.Default()
	topics.PseudoPrefix = *prefix
	p, err := processor.New(processor.Config{
		Topics: topics, Policies: pols, Plan: plan, Store: st, Kafka: kopts,
		GroupID: *group, TransactionalID: *group, SessionTimeout: 6 * time.Second,
		MaxPollRecords: def.Processing.MaxPollRecords, CacheSubjects: def.Processing.CacheSubjects,
		MaxBackoff: 2 * time.Second,
		Logger:     slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: slog.LevelWarn})),
	})
	if err != nil {
		return err
	}
	if err := p.Run(ctx); err != nil {
		return err
	}
	return json.NewEncoder(stdout).Encode(p.Stats())
}

// benchCopy copies every input record to each output topic, at least once:
// per poll, produce, flush, commit the offsets.
func benchCopy(ctx context.Context, kopts []kgo.Opt, in, group string, outputs []string) error {
	cl, err := kgo.NewClient(append(kopts, kgo.ConsumerGroup(group), kgo.ConsumeTopics(in),
		kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()), kgo.FetchIsolationLevel(kgo.ReadCommitted()),
		kgo.DisableAutoCommit())...)
	if err != nil {
		return err
	}
	defer cl.Close()
	var mu sync.Mutex
	var failed error
	promise := func(_ *kgo.Record, err error) {
		if err != nil {
			mu.Lock()
			failed = cmp.Or(failed, err)
			mu.Unlock()
		}
	}
	for {
		fetches := cl.PollRecords(ctx, 10000)
		if ctx.Err() != nil || fetches.IsClientClosed() {
			return nil
		}
		for _, r := range fetches.Records() {
			for _, t := range outputs {
				cl.Produce(ctx, &kgo.Record{Topic: t, Key: r.Key, Value: r.Value}, promise)
			}
		}
		if err := cl.Flush(ctx); err != nil {
			return nil
		}
		mu.Lock()
		err := failed
		mu.Unlock()
		if err != nil {
			return err
		}
		if err := cl.CommitUncommittedOffsets(ctx); err != nil && ctx.Err() == nil {
			return err
		}
	}
}

// benchTxCopy copies like benchCopy, exactly once: transactions of up to
// 5,000 input records or 100 ms, whichever comes first.
func benchTxCopy(ctx context.Context, kopts []kgo.Opt, in, group string, outputs []string) error {
	sess, err := kgo.NewGroupTransactSession(append(kopts, kgo.ConsumerGroup(group), kgo.ConsumeTopics(in),
		kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()), kgo.FetchIsolationLevel(kgo.ReadCommitted()),
		kgo.RequireStableFetchOffsets(), kgo.TransactionalID(group), kgo.SessionTimeout(6*time.Second))...)
	if err != nil {
		return err
	}
	defer sess.Close()
	const maxRecords, maxAge = 5000, 100 * time.Millisecond
	for ctx.Err() == nil {
		if err := sess.Begin(); err != nil {
			return err
		}
		promise := kgo.AbortingFirstErrPromise(sess.Client())
		n := 0
		deadline := time.Now().Add(maxAge)
		for n < maxRecords && ctx.Err() == nil {
			pctx, cancel := context.WithDeadline(ctx, deadline)
			fetches := sess.PollRecords(pctx, maxRecords-n)
			cancel()
			for _, r := range fetches.Records() {
				for _, t := range outputs {
					sess.Produce(ctx, &kgo.Record{Topic: t, Key: r.Key, Value: r.Value}, promise.Promise())
				}
				n++
			}
			if !time.Now().Before(deadline) {
				break
			}
		}
		ectx := context.WithoutCancel(ctx)
		if err := sess.Client().Flush(ectx); err != nil {
			return err
		}
		how := kgo.TryCommit
		if promise.Err() != nil {
			how = kgo.TryAbort
		}
		if _, err := sess.End(ectx, how); err != nil {
			return err
		}
	}
	return nil
}

// peakHeapProfile writes the heap profile to path whenever the heap in use
// grew by a tenth since the last one, until ctx ends.
func peakHeapProfile(ctx context.Context, path string) {
	var peak uint64
	t := time.NewTicker(50 * time.Millisecond)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		var ms runtime.MemStats
		runtime.ReadMemStats(&ms)
		if ms.HeapInuse > peak+peak/10 {
			peak = ms.HeapInuse
			if f, err := os.Create(path); err == nil {
				_ = pprof.Lookup("heap").WriteTo(f, 0)
				f.Close()
			}
		}
	}
}

// vmHWM returns the peak resident set size of process pid in KiB, from
// /proc/<pid>/status (Linux), or 0.
func vmHWM(pid int) int64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "VmHWM:"); ok {
			kb, _ := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			return kb
		}
	}
	return 0
}
