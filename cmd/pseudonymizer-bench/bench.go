package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/hygiene/pseudonymizer/internal/config"
	"github.com/hygiene/pseudonymizer/processor"
	"github.com/hygiene/pseudonymizer/processor/policy"
	"github.com/hygiene/pseudonymizer/schema"
	"github.com/hygiene/pseudonymizer/schema/sample"
	"github.com/hygiene/pseudonymizer/store"
)

// benchDefaultDSN is the local test database.
const benchDefaultDSN = "postgres://postgres@127.0.0.1:5432/test?sslmode=disable"

// benchPolicies are the demo's systems (policy.Examples); --systems takes
// the first N.
func benchPolicies(n int) ([]policy.Policy, error) {
	all := policy.Examples()
	if n < 1 || n > len(all) {
		return nil, fmt.Errorf("--systems must be between 1 and %d", len(all))
	}
	return all[:n], nil
}

// runBench is the benchmark: it parses args and runs the pipelines.
func runBench(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("pseudonymizer-bench", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprint(fs.Output(), "Usage: pseudonymizer-bench [--quick] [--events N] [--customers N] [--systems N] [--cache-subjects N] [--max-poll-records N] [--no-postgres] [--profile DIR] [--brokers HOST:PORT,...]\n\n"+
			"Pushes one backlog of sample orders through a plain copy, a transactional\n"+
			"copy and the pseudonymizer (PostgreSQL and embedded store) and compares\n"+
			"their throughput. The pseudonymizer pipelines are `pseudonymizer run`\n"+
			"processes (--pseudonymizer, built from this module by default), so the\n"+
			"bench measures the service exactly as it runs.\n\nFlags:\n")
		fs.PrintDefaults()
	}
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
	forgetRate := fs.Int("forgets-per-second", 0, "while pipeline (c) runs, send this many forget requests a second and report their latency (produce to readable confirmation)")
	cacheSubjects := fs.Int("cache-subjects", -1, "processing.cache_subjects of the pseudonymizer pipelines (0 caches nothing); default: the service's default")
	maxPoll := fs.Int("max-poll-records", 0, "processing.max_poll_records of the pseudonymizer pipelines; default: the service's default")
	binary := fs.String("pseudonymizer", "", "the pseudonymizer binary whose `run` the pseudonymizer pipelines measure; default: built from this module with `go build`")
	runs := fs.Int("runs", 1, "run the whole bench this many times and end with the median and range of each pipeline's CPU per event and efficiency")
	baseline := fs.String("baseline", "", "a second pseudonymizer binary (e.g. a release) to run interleaved with --pseudonymizer's, round by round, and compare in the summary")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil
		}
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
	if *maxPoll < 0 {
		return errors.New("bench: --max-poll-records must not be negative")
	}
	if *runs < 1 {
		return errors.New("bench: --runs must be at least 1")
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
		topics: config.Default().Topics, binary: *binary, forgetRate: *forgetRate,
		cacheSubjects: *cacheSubjects, maxPoll: *maxPoll,
	}
	binaries := []string{*binary}
	if *baseline != "" {
		binaries = append(binaries, *baseline)
	}
	if len(binaries) == 1 && *runs == 1 {
		b.external(*brokers)
		defer b.close()
		_, err := b.run(ctx, want, stdout)
		return err
	}
	if *binary == "" && (want["pg"] || want["embedded"]) {
		// Built once for every run (a run's directory goes with it).
		dir, err := os.MkdirTemp("", "pseudonymizer-bench-bin-")
		if err != nil {
			return err
		}
		defer os.RemoveAll(dir)
		bb := &bench{dir: dir}
		if err := bb.buildPseudonymizer(ctx); err != nil {
			return err
		}
		binaries[0] = bb.binary
	}
	labels := []string{orDefault(*binary, "this module"), *baseline}
	var rounds []benchRound
	for i := range *runs {
		for j, bin := range binaries {
			rb := *b
			rb.binary = bin
			rb.external(*brokers)
			fmt.Fprintf(stdout, "== run %d of %d, pseudonymizer: %s\n", i+1, *runs, labels[j])
			results, err := rb.run(ctx, want, stdout)
			rb.close()
			if err != nil {
				return err
			}
			fmt.Fprintln(stdout)
			rounds = append(rounds, benchRound{binary: labels[j], results: results})
		}
	}
	summarize(stdout, b.events, rounds)
	return nil
}

// external points b at the Kafka cluster of brokers (host:port,…), if
// any, with topics and groups under a fresh prefix of their own (a run's
// topics are deleted when it ends, and a deleted name is not at once
// free again).
func (b *bench) external(brokers string) {
	if brokers == "" {
		return
	}
	b.brokers = strings.Split(brokers, ",")
	var rnd [4]byte
	_, _ = rand.Read(rnd[:])
	b.ns = "bench-" + hex.EncodeToString(rnd[:]) + "."
	b.topics = benchTopics(b.ns)
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
	binary   string // the pseudonymizer binary
	// forgetRate is the forget requests a second sent during pipeline (c).
	forgetRate int
	// cacheSubjects and maxPoll set processing.cache_subjects (if >= 0)
	// and processing.max_poll_records (if > 0) of the pseudonymizer.
	cacheSubjects, maxPoll int
	inEnd                  map[int32]int64
	avgBytes               float64
}

// benchResult is one pipeline's measurements.
type benchResult struct {
	name, kind, label string
	wall, startup     time.Duration
	rate              float64
	rssKiB            int64
	cpu               time.Duration
	// selfCPU is the bench process's CPU during the run (with the
	// embedded broker: mostly kfake's), pgCPU PostgreSQL's and kafkaCPU a
	// local Kafka broker's (-1 unknown or none).
	selfCPU, pgCPU, kafkaCPU time.Duration
	stats                    processor.Stats
	forgets                  *forgetStats // with --forgets-per-second
	pseudonymizer            bool
	skipped, error           string
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

// createSchema creates the PostgreSQL schema of pipeline (c); close drops
// it.
func (b *bench) createSchema(ctx context.Context) error {
	conn, err := pgx.Connect(ctx, b.dsn)
	if err != nil {
		return fmt.Errorf("bench: PostgreSQL (or pass --no-postgres): %w", err)
	}
	defer conn.Close(context.WithoutCancel(ctx))
	if _, err := conn.Exec(ctx, "CREATE SCHEMA "+pgx.Identifier{b.pgSchema}.Sanitize()); err != nil {
		return fmt.Errorf("bench: creating schema %s: %w", b.pgSchema, err)
	}
	return nil
}

func (b *bench) run(ctx context.Context, want map[string]bool, w io.Writer) ([]*benchResult, error) {
	topics := b.topics
	seed := []string{topics.Orders, topics.Forget, topics.Forgotten, topics.OrdersDeadLetter, topics.ForgetDeadLetter}
	for _, p := range benchPipelines {
		prefix := b.ns + "bench." + p.name + "."
		seed = append(seed, b.outputs(prefix)...)
		seed = append(seed, prefix+"forget", prefix+"forgotten") // each pipeline's own
	}
	var err error
	brokerKind := "Kafka broker"
	if b.brokers == nil {
		if b.cluster, err = kfake.NewCluster(kfake.Ports(0), kfake.SeedTopics(int32(b.partitions), seed...)); err != nil {
			return nil, fmt.Errorf("bench: embedded broker: %w", err)
		}
		b.brokers = b.cluster.ListenAddrs()
		brokerKind = "kfake broker"
	}
	if b.cl, err = kgo.NewClient(kgo.SeedBrokers(b.brokers...), kgo.ProducerLinger(5*time.Millisecond)); err != nil {
		return nil, err
	}
	b.adm = kadm.NewClient(b.cl)
	if b.cluster == nil {
		if err := b.createTopics(ctx, seed); err != nil {
			return nil, err
		}
	}
	if b.dir, err = os.MkdirTemp("", "pseudonymizer-bench-"); err != nil {
		return nil, err
	}
	kek := make([]byte, store.KeySize)
	_, _ = rand.Read(kek)
	b.kek = base64.StdEncoding.EncodeToString(kek)
	if want["pg"] || want["embedded"] {
		if err := b.buildPseudonymizer(ctx); err != nil {
			return nil, err
		}
	}

	t0 := time.Now()
	if err := b.backlog(ctx, topics.Orders); err != nil {
		return nil, err
	}
	fmt.Fprintf(w, "pseudonymizer bench: %d events (%.0f B Avro on average) of %d customers, %d systems, %d partitions; %s at %s (backlog written in %s)\n",
		b.events, b.avgBytes, b.customers, len(b.pols), b.partitions, brokerKind, strings.Join(b.brokers, ","), time.Since(t0).Round(time.Millisecond))
	fmt.Fprintf(w, "machine: %d CPUs (%s), GOMAXPROCS %d, %s; %s\n", runtime.NumCPU(), cpuModel(), runtime.GOMAXPROCS(0), runtime.Version(), loadAverage())
	if b.cacheSubjects >= 0 || b.maxPoll > 0 {
		fmt.Fprintf(w, "pseudonymizer settings: cache_subjects %s, max_poll_records %s\n", setting(b.cacheSubjects, 0), setting(b.maxPoll, 1))
	}
	fmt.Fprintln(w)

	if want["pg"] {
		var rnd [6]byte
		_, _ = rand.Read(rnd[:])
		b.pgSchema = "bench_" + hex.EncodeToString(rnd[:])
		if err := b.createSchema(ctx); err != nil {
			return nil, err
		}
	}
	var results []*benchResult
	for _, p := range benchPipelines {
		r := &benchResult{name: p.name, kind: p.kind, label: p.label, pseudonymizer: p.kind == "pg" || p.kind == "embedded"}
		results = append(results, r)
		if !want[p.kind] {
			r.skipped = "skipped"
			continue
		}
		if err := b.pipeline(ctx, p.kind, r); err != nil {
			if ctx.Err() != nil {
				return nil, ctx.Err()
			}
			r.error = err.Error()
			fmt.Fprintf(b.stderr, "bench: pipeline %s: %v\n", p.name, err)
		}
	}
	b.table(w, results)
	for _, r := range results {
		if r.error != "" {
			return results, fmt.Errorf("bench: pipeline %s failed: %s", r.name, r.error)
		}
	}
	return results, nil
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

// pipeline runs one worker process and measures it: a copy worker (this
// binary) or `pseudonymizer run`.
func (b *bench) pipeline(ctx context.Context, kind string, r *benchResult) error {
	prefix := b.ns + "bench." + r.name + "."
	group := b.ns + "bench-" + r.name
	var cmd *exec.Cmd
	var metricsURL string
	if r.pseudonymizer {
		var err error
		if cmd, metricsURL, err = b.service(kind, r.name, prefix, group); err != nil {
			return err
		}
	} else {
		exe, err := os.Executable()
		if err != nil {
			return err
		}
		cmd = exec.Command(exe, workerCommand, "--mode", kind, "--brokers", strings.Join(b.brokers, ","),
			"--ns", b.ns, "--prefix", prefix, "--group", group, "--systems", fmt.Sprint(len(b.pols)))
		cmd.Env = append(os.Environ(), workerEnv+"=1")
		if b.profile != "" {
			if err := os.MkdirAll(b.profile, 0o755); err != nil {
				return err
			}
			cmd.Env = append(cmd.Env, workerProfileEnv+"="+filepath.Join(b.profile, r.name+".cpu.pprof"))
		}
	}
	var out, errOut bytes.Buffer
	cmd.Stdout = &out
	cmd.Stderr = &errOut
	if b.verbose {
		cmd.Stderr = io.MultiWriter(&errOut, b.stderr)
	}
	outputs := b.outputs(prefix)
	txn := kind != "copy"

	// A local Kafka broker's CPU is read only when the bench runs on one
	// (on the embedded broker, bench CPU is the broker's).
	matchKafka := isKafka
	if b.cluster != nil {
		matchKafka = func(string, func() string) bool { return false }
	}
	self0, pg0, kafka0 := selfCPU(), procCPU(isPostgres), procCPU(matchKafka)
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
	var load *forgetLoad
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
			if r.name == "c" && b.forgetRate > 0 && load == nil {
				if load, err = b.startForgetLoad(ctx, prefix+"forget", prefix+"forgotten", b.forgetRate); err != nil {
					stop()
					return err
				}
			}
		}
		if done {
			break
		}
	}
	r.wall = time.Since(start)
	r.startup = first.Sub(start)
	r.selfCPU = selfCPU() - self0
	r.pgCPU = cpuSince(pg0, procCPU(isPostgres))
	r.kafkaCPU = cpuSince(kafka0, procCPU(matchKafka))
	if load != nil {
		st := load.stop(90 * time.Second)
		r.forgets = &st
	}
	r.rate = float64(b.events) / r.wall.Seconds()
	// VmHWM, not rusage: a child's ru_maxrss starts from its parent's
	// (the broker's) resident size at fork.
	r.rssKiB = vmHWM(cmd.Process.Pid)
	if r.pseudonymizer {
		// Read the service's counters before it stops: they are what the
		// transactions committed.
		// The service counts a batch just after its commit returned, so
		// the counters may lag the committed offsets by a moment.
		stats, err := b.awaitStats(ctx, metricsURL)
		if err != nil {
			stop()
			return err
		}
		r.stats = stats
	}
	stop()
	if ru, ok := cmd.ProcessState.SysUsage().(*syscall.Rusage); ok {
		r.cpu = time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
	}
	if r.pseudonymizer {
		if r.stats.OrdersIn < b.events {
			return fmt.Errorf("worker reports %d committed orders, want %d", r.stats.OrdersIn, b.events)
		}
	}
	return nil
}

// awaitStats reads the service's totals until they count the whole
// backlog, for up to five seconds.
func (b *bench) awaitStats(ctx context.Context, metricsURL string) (processor.Stats, error) {
	deadline := time.Now().Add(5 * time.Second)
	for {
		stats, err := scrapeStats(ctx, metricsURL, b.topics.Orders)
		if err != nil || stats.OrdersIn >= b.events || time.Now().After(deadline) {
			return stats, err
		}
		select {
		case <-ctx.Done():
			return stats, ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
	}
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
	copyCPU := -1.0 // the transactional copy's CPU per event, µs
	for _, r := range results {
		if r.name == "b" && r.skipped == "" && r.error == "" {
			copyCPU = perEvent(r.cpu, b.events)
		}
	}
	fmt.Fprintln(tw, "pipeline\tevents/s\twall\tfirst output\tpeak RSS\tCPU\tµs CPU/event\tbench CPU\tKafka CPU\tPostgreSQL CPU\tµs PostgreSQL/event\tefficiency\tbatches\tstore calls/batch\t")
	for _, r := range results {
		if r.skipped != "" || r.error != "" {
			fmt.Fprintf(tw, "%s %s\t%s\t\t\t\t\t\t\t\t\t\n", r.name, r.label, orDefault(r.skipped, "failed"))
			continue
		}
		batches, calls := "-", "-"
		if r.pseudonymizer && r.stats.Batches > 0 {
			batches = fmt.Sprint(r.stats.Batches)
			calls = fmt.Sprintf("%.2f", float64(r.stats.StoreCalls)/float64(r.stats.Batches))
		}
		pg, pgEvent, kafka, eff := "-", "-", "-", "-"
		var pgUS float64 // PostgreSQL's CPU per event, charged to pipelines that use it
		if r.pgCPU >= 0 && r.pseudonymizer {
			pg = r.pgCPU.Round(10 * time.Millisecond).String()
			if r.kind == "pg" {
				pgUS = perEvent(r.pgCPU, b.events)
				pgEvent = fmt.Sprintf("%.2f", pgUS)
			}
		}
		if r.kafkaCPU >= 0 {
			kafka = r.kafkaCPU.Round(10 * time.Millisecond).String()
		}
		if e := efficiency(copyCPU, perEvent(r.cpu, b.events), pgUS); r.pseudonymizer && e > 0 {
			eff = fmt.Sprintf("%.2f", e)
		}
		fmt.Fprintf(tw, "%s %s\t%.0f\t%s\t%s\t%.0f MiB\t%s\t%.2f\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t\n", r.name, r.label, r.rate,
			r.wall.Round(time.Millisecond), r.startup.Round(time.Millisecond), float64(r.rssKiB)/1024,
			r.cpu.Round(10*time.Millisecond), perEvent(r.cpu, b.events),
			r.selfCPU.Round(10*time.Millisecond), kafka, pg, pgEvent, eff, batches, calls)
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
	fmt.Fprintln(w, "efficiency: b's CPU per event / (the pipeline's CPU per event + PostgreSQL's during its run); CPU is user+system of the pipeline's process, start to finish.")
	for _, r := range results {
		if f := r.forgets; f != nil {
			fmt.Fprintf(w, "forget latency during %s (%d/s, produce to readable confirmation): n=%d p50=%s p99=%s max=%s unconfirmed=%d\n",
				r.name, b.forgetRate, f.n, f.p50.Round(time.Millisecond), f.p99.Round(time.Millisecond), f.max.Round(time.Millisecond), f.unconfirmed)
		}
	}
}

// perEvent is d spread over n events, in microseconds.
func perEvent(d time.Duration, n int) float64 {
	if n <= 0 {
		return 0
	}
	return float64(d.Nanoseconds()) / 1e3 / float64(n)
}

// efficiency is the issue-29 measure: the transactional copy's CPU per
// event over the pipeline's own plus PostgreSQL's; 0 when either side is
// unknown.
func efficiency(copyUS, oursUS, pgUS float64) float64 {
	if copyUS <= 0 || oursUS <= 0 || pgUS < 0 {
		return 0
	}
	return copyUS / (oursUS + pgUS)
}

// setting formats a bench setting: "default" below min.
func setting(v, min int) string {
	if v < min {
		return "default"
	}
	return strconv.Itoa(v)
}

// loadAverage returns the load averages from /proc/loadavg, which the
// table's CPU times and ratios depend on, on a shared machine.
func loadAverage() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "load average unknown"
	}
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return "load average unknown"
	}
	return "load average " + strings.Join(f[:3], " ")
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

// vmHWM returns the peak resident set size of process pid in KiB, from
// /proc/<pid>/status (Linux), or 0.
// selfCPU is the CPU time this process has used.
func selfCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// procCPU returns the CPU time used so far by each live process that
// match accepts, by PID; nil if /proc cannot be read. match gets the
// process's command name and reads its command line on demand.
func procCPU(match func(comm string, cmdline func() string) bool) map[int]time.Duration {
	dirs, err := os.ReadDir("/proc")
	if err != nil {
		return nil
	}
	cpu := map[int]time.Duration{}
	for _, d := range dirs {
		pid, err := strconv.Atoi(d.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile("/proc/" + d.Name() + "/stat")
		if err != nil {
			continue
		}
		// pid (comm) state ppid ... utime(14) stime(15): comm may contain
		// spaces, so split after its closing parenthesis.
		s := string(b)
		open, end := strings.IndexByte(s, '('), strings.LastIndexByte(s, ')')
		if open < 0 || end < open {
			continue
		}
		cmdline := func() string {
			c, _ := os.ReadFile("/proc/" + d.Name() + "/cmdline")
			return string(c)
		}
		if !match(s[open+1:end], cmdline) {
			continue
		}
		f := strings.Fields(s[end+1:])
		if len(f) < 13 {
			continue
		}
		u, _ := strconv.ParseInt(f[11], 10, 64)
		st, _ := strconv.ParseInt(f[12], 10, 64)
		cpu[pid] = time.Duration(u+st) * (time.Second / 100) // USER_HZ is 100 on Linux
	}
	return cpu
}

// isPostgres matches PostgreSQL's server and backends.
func isPostgres(comm string, _ func() string) bool { return comm == "postgres" }

// isKafka matches a local Apache Kafka broker's JVM.
func isKafka(comm string, cmdline func() string) bool {
	return comm == "java" && strings.Contains(cmdline(), "kafka.Kafka")
}

// cpuSince is the CPU time that the processes of a procCPU reading taken
// now used since before, another reading (-1 if either is missing, or if
// no such process is alive now). Processes that exited in between are not
// counted, and neither is what a process alive at both readings had used
// before: a backend of an earlier pipeline that exits meanwhile does not
// make the difference negative.
func cpuSince(before, now map[int]time.Duration) time.Duration {
	if before == nil || len(now) == 0 {
		return -1
	}
	var d time.Duration
	for pid, t := range now {
		if b, ok := before[pid]; ok && b <= t {
			t -= b
		} // else a new process, or a reused PID
		d += t
	}
	return d
}

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
