package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"runtime/pprof"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/plugin/kprom"

	"github.com/hygiene/pseudonymizer/internal/config"
	"github.com/hygiene/pseudonymizer/internal/linkability"
	"github.com/hygiene/pseudonymizer/processor"
	"github.com/hygiene/pseudonymizer/store"
)

// runService is `pseudonymizer run`.
func runService(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlags("run", "run --config FILE [--check-config]", "Runs the service: pseudonymizes orders.raw for every configured system and\nhonours forget requests, until SIGINT/SIGTERM. --check-config checks the\nconfiguration, the KEK, the key store and the brokers without writing\nanything, then exits.")
	path := fs.String("config", "", "configuration file (YAML)")
	check := fs.Bool("check-config", false, "check the configuration, KEK, key store, schema registry, brokers and topics without writing anything, then exit")
	if err := fs.parse(args, stdout, stderr); err != nil {
		return err
	}
	cfg, err := loadConfig(*path)
	if err != nil {
		return err
	}
	log := newLogger(cfg.Log, stderr)
	if *check {
		return checkConfig(ctx, cfg, log, stdout)
	}
	stopProfile, err := profileFromEnv(log)
	if err != nil {
		return err
	}
	defer stopProfile()
	svc, err := newService(ctx, cfg, log)
	if err != nil {
		return err
	}
	svc.stderr = stderr
	defer svc.close()
	return svc.run(ctx)
}

// service is the wired-up service: store, processor, HTTP endpoint.
type service struct {
	cfg     config.Config
	log     *slog.Logger
	store   store.KeyStore
	proc    *processor.Processor
	reg     *prometheus.Registry
	metrics *processor.Metrics
	kopts   []kgo.Opt
	stderr  io.Writer
	ln      net.Listener // bound by listen
	lookup  *lookupService
}

// newService checks everything that can be checked before consuming: the
// policies, the KEK, the store. Each failure is one line naming the problem.
func newService(ctx context.Context, cfg config.Config, log *slog.Logger) (*service, error) {
	pols, plan, err := compilePlan(&cfg)
	if err != nil {
		return nil, err
	}
	for _, w := range linkability.ConfigWarnings(plan) {
		log.Warn("policies: " + w)
	}
	kr, _, err := loadKeys(ctx, cfg, keysCreate)
	if err != nil {
		return nil, err
	}
	octx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	st, err := openStore(octx, cfg.Store, kr)
	if err != nil {
		return nil, err
	}
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	kopts, err := kafkaOpts(cfg.Kafka, log)
	if err != nil {
		st.Close()
		return nil, err
	}
	// Only the processor's clients report through kprom, one kprom per
	// lane (label lane): kprom registers its collectors once per live
	// client.
	laneHooks := map[string][]kgo.Hook{}
	for _, lane := range []string{"orders", "forgets"} {
		laneHooks[lane] = []kgo.Hook{kprom.NewMetrics("pseudonymizer_kafka", kprom.Registerer(reg), kprom.Gatherer(reg),
			kprom.WithStaticLabel(prometheus.Labels{"lane": lane}))}
	}
	metrics := processor.NewMetrics(reg)
	wire, err := newWire(ctx, cfg, plan, log, reg)
	if err != nil {
		st.Close()
		return nil, err
	}
	piiCfg, err := cfg.PIIConfig()
	if err != nil {
		st.Close()
		return nil, err
	}
	proc, err := processor.New(processor.Config{
		Topics:                processor.Topics(cfg.Topics),
		Policies:              pols,
		Plan:                  plan,
		Store:                 st,
		Wire:                  wire,
		Kafka:                 kopts,
		LaneHooks:             func(lane string) []kgo.Hook { return laneHooks[lane] },
		GroupID:               cfg.Kafka.GroupID,
		TransactionalID:       cfg.TxnID(),
		TransactionTimeout:    cfg.Kafka.TransactionTimeout,
		SessionTimeout:        cfg.Kafka.SessionTimeout,
		MaxRecordBytes:        cfg.Processing.MaxRecordBytes,
		MaxPollRecords:        cfg.Processing.MaxPollRecords,
		CacheSubjects:         cfg.Processing.CacheSubjects,
		MaxBackoff:            cfg.Processing.MaxBackoff,
		ProducerBatchMaxBytes: int32(cfg.Kafka.ProducerBatchMaxBytes),
		Logger:                log.With("component", "processor"),
		Metrics:               metrics,
		Failpoint:             failpointFromEnv(log),
		PII:                   piiCfg,
	})
	if err != nil {
		st.Close()
		return nil, err
	}
	lk, err := newLookupService(cfg, plan, st, reg, log)
	if err != nil {
		st.Close()
		return nil, err
	}
	return &service{cfg: cfg, log: log, store: st, proc: proc, reg: reg, metrics: metrics, kopts: kopts, stderr: os.Stderr, lookup: lk}, nil
}

func (s *service) close() {
	if err := s.store.Close(); err != nil {
		s.log.Warn("closing key store", "err", err)
	}
}

// listen binds http.listen (once), so that a taken port fails at once;
// run calls it too. It returns nil when the endpoint is disabled.
func (s *service) listen() (net.Addr, error) {
	if s.cfg.HTTP.Listen == "" {
		return nil, nil
	}
	if s.ln == nil {
		ln, err := net.Listen("tcp", s.cfg.HTTP.Listen)
		if err != nil {
			return nil, fmt.Errorf("http.listen: %w", err)
		}
		s.ln = ln
	}
	return s.ln.Addr(), nil
}

// run serves HTTP and processes until ctx is canceled. The HTTP server and
// the lag reporter end before run returns; so does the processor, unless
// it outlives processing.shutdown_timeout (then run returns an error and
// the process exits).
func (s *service) run(ctx context.Context) error {
	if _, err := s.listen(); err != nil {
		return err
	}
	if err := s.lookup.listen(); err != nil {
		return err
	}
	var wg sync.WaitGroup
	defer wg.Wait()
	if s.lookup != nil {
		lctx, stopLookup := context.WithCancel(ctx)
		// Stopped before the processor's shutdown wait: requests in flight
		// are answered (the batcher runs until the server has shut down).
		defer stopLookup()
		wg.Go(func() { s.lookup.serve(lctx) })
	}
	if ln := s.ln; ln != nil {
		srv := &http.Server{Handler: s.handler(), ReadHeaderTimeout: 5 * time.Second}
		wg.Go(func() {
			if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
				s.log.Error("http server", "err", err)
			}
		})
		defer func() {
			sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			_ = srv.Shutdown(sctx)
		}()
		s.log.Info("serving /metrics, /healthz, /readyz", "addr", ln.Addr().String())
	}
	if a, ok := s.store.(store.Auditor); ok && s.cfg.Store.Postgres == "" {
		// status and forget-log cannot open the embedded store's file
		// while this process holds it: they ask through this socket.
		adm, err := listenAdmin(s.cfg.Store.Path, a, s.log)
		if err != nil {
			s.log.Warn("no admin socket: `pseudonymizer status` and `forget-log` cannot read the embedded store while this service runs", "err", err)
		} else {
			defer adm.close()
			s.log.Info("serving status and forget-log questions on the admin socket (mode 0600)", "path", adm.path)
		}
	}
	s.probeBrokers(ctx)
	if s.cfg.Kafka.CreateTopics {
		s.ensureTopics(ctx)
	}
	s.log.Info("pseudonymizer started", "version", version(), "systems", len(s.proc.OutputTopics()),
		"group", s.cfg.Kafka.GroupID, "transactional_id", s.cfg.TxnID(), "store", storeKind(s.cfg.Store))
	lagCtx, stopLag := context.WithCancel(ctx)
	defer stopLag()
	wg.Go(func() {
		reportLag(lagCtx, s.kopts, map[string]string{
			s.cfg.Kafka.GroupID:   s.cfg.Topics.Orders,
			s.cfg.ForgetGroupID(): s.cfg.Topics.Forget,
		}, s.metrics, 15*time.Second)
	})

	// The processor is waited for through done, within the shutdown
	// timeout; not through wg, which must not wait beyond it.
	done := make(chan error, 1)
	go func() { done <- s.proc.Run(ctx) }()
	select {
	case err := <-done:
		s.log.Info("pseudonymizer stopped")
		return err
	case <-ctx.Done():
	}
	// Shutting down: the open transaction is finished or aborted, the group
	// left; bounded by processing.shutdown_timeout.
	select {
	case err := <-done:
		s.log.Info("pseudonymizer stopped")
		return err
	case <-time.After(s.cfg.Processing.ShutdownTimeout):
		// Show where it hangs: goroutine stacks carry no record data.
		_ = pprof.Lookup("goroutine").WriteTo(s.stderr, 1)
		return fmt.Errorf("shutdown did not finish within %s (processing.shutdown_timeout); open transactions are aborted by the broker", s.cfg.Processing.ShutdownTimeout)
	}
}

// brokerProbeTimeout bounds the start-up check that a broker answers.
const brokerProbeTimeout = 5 * time.Second

// probeBrokers logs one clear line when no seed broker answers at start-up;
// the service goes on and keeps retrying, as it should.
func (s *service) probeBrokers(ctx context.Context) {
	cl, err := kgo.NewClient(s.kopts...)
	if err != nil {
		return
	}
	defer cl.Close()
	pctx, cancel := context.WithTimeout(ctx, brokerProbeTimeout)
	defer cancel()
	if _, err := kadm.NewClient(cl).BrokerMetadata(pctx); err != nil && ctx.Err() == nil {
		s.log.Error("no Kafka broker answers at kafka.brokers; retrying until one does (for a local broker: pseudonymizer demo --broker-only)",
			"brokers", strings.Join(s.cfg.Kafka.Brokers, ","), "err", err)
	}
}

// ensureTopics creates missing output topics; a failure is logged, not
// fatal: the broker may auto-create topics or an operator may create them.
func (s *service) ensureTopics(ctx context.Context) {
	cl, err := kgo.NewClient(s.kopts...)
	if err != nil {
		s.log.Warn("creating topics", "err", err)
		return
	}
	defer cl.Close()
	tctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	if err := s.proc.EnsureTopics(tctx, kadm.NewClient(cl)); err != nil {
		s.log.Warn("creating topics", "err", err)
	}
}

// handler serves /metrics, /healthz and /readyz.
func (s *service) handler() http.Handler {
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(s.reg, promhttp.HandlerOpts{}))
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) {
		fmt.Fprintln(w, "ok")
	})
	mux.HandleFunc("/readyz", func(w http.ResponseWriter, r *http.Request) {
		if err := s.proc.Ready(); err != nil {
			http.Error(w, err.Error(), http.StatusServiceUnavailable)
			return
		}
		if err := s.store.Ping(r.Context()); err != nil {
			http.Error(w, "not ready: key store unreachable", http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintln(w, "ready")
	})
	return mux
}

// failpointFromEnv returns a crash hook for fault-injection tests, set by
// PSEUDONYMIZER_FAILPOINT=NAME:N: the process exits with status 137 (as if
// SIGKILLed) the N-th time the processor reaches failpoint NAME. Unset, it
// is nil and costs nothing.
func failpointFromEnv(log *slog.Logger) func(string) {
	spec := os.Getenv("PSEUDONYMIZER_FAILPOINT")
	if spec == "" {
		return nil
	}
	name, nth, _ := strings.Cut(spec, ":")
	n, err := strconv.Atoi(nth)
	if err != nil || n < 1 {
		n = 1
	}
	var hits atomic.Int64
	log.Warn("failpoint armed: this process will crash on purpose", "failpoint", name, "hit", n)
	return func(at string) {
		if at == name && hits.Add(1) == int64(n) {
			fmt.Fprintf(os.Stderr, "pseudonymizer: failpoint %s hit %d: exiting 137\n", name, n)
			os.Exit(137)
		}
	}
}
