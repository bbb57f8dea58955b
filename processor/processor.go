package processor

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/hygiene/pseudonymizer/processor/config"
	"github.com/hygiene/pseudonymizer/processor/policy"
	"github.com/hygiene/pseudonymizer/processor/pseudonym"
	"github.com/hygiene/pseudonymizer/schema"
	"github.com/hygiene/pseudonymizer/store"
)

// Config is what a Processor needs; cmd/pseudonymizer builds it from the
// configuration file.
type Config struct {
	// Topics names the topics.
	Topics config.Topics
	// Policies are the systems' policies, in the order Plan was compiled.
	Policies []policy.Policy
	// Plan is the compiled policies.
	Plan *policy.Plan
	// Store holds the subject keys.
	Store store.KeyStore
	// Wire is the framing of values; nil means schema.BareWire.
	Wire schema.Wire
	// Kafka are client options: seed brokers, TLS, SASL, logger. The
	// processor adds the group, topics and transaction options.
	Kafka []kgo.Opt
	// GroupID is the consumer group; TransactionalID this instance's ID.
	GroupID, TransactionalID string
	// TransactionTimeout is the Kafka transaction timeout.
	TransactionTimeout time.Duration
	// SessionTimeout is the consumer group session timeout.
	SessionTimeout time.Duration
	// MaxRecordBytes is the largest raw record value accepted; 0 derives
	// it from ProducerBatchMaxBytes (config.MaxRecordBytesFor).
	MaxRecordBytes int
	// MaxPollRecords caps the records of one transaction.
	MaxPollRecords int
	// CacheSubjects bounds the subject cache; 0 disables caching.
	CacheSubjects int
	// MaxBackoff caps the retry backoff during outages.
	MaxBackoff time.Duration
	// ProducerBatchMaxBytes, if set, caps the producer's record batches
	// (the client's default is 1,000,012 bytes). It must not exceed the
	// smallest max.message.bytes of the output topics.
	ProducerBatchMaxBytes int32
	// Logger receives structured logs; never identifiers.
	Logger *slog.Logger
	// Metrics, if not nil, are updated.
	Metrics *Metrics
	// Now returns the current time (tests may replace it).
	Now func() time.Time
	// Failpoint, if set, is called at named points of a batch, for crash
	// tests: "after-forget" (store forget committed), "after-resolve"
	// (new keys committed), "before-commit" (guard held, before EndTxn),
	// "after-commit" (EndTxn returned, guard still held).
	Failpoint func(name string)
}

// Processor consumes orders.raw and subjects.forget and produces the
// pseudonymized copies, confirmations and dead letters, exactly once. See
// doc.go for the design.
type Processor struct {
	cfg     Config
	log     *slog.Logger
	m       *Metrics
	systems []string
	topics  []string // output topic per system
	headers []map[string]bool

	cache *subjectCache
	pos   store.Position // newest forget-log position seen by a guard
	d     *pseudonym.Deriver
	b     batch

	// workers is the number of goroutines that derive and project the
	// events of a batch (GOMAXPROCS); work are their states.
	workers int
	work    []*worker

	// tooLarge holds inputs whose pseudonymized output the broker (or the
	// client's batch limit) refused as too large; the redone batch
	// dead-letters them instead of retrying them for ever. Written by
	// produce promises, hence the mutex.
	tooLargeMu sync.Mutex
	tooLarge   map[inputRef]struct{}
	// cutDeadLetters holds inputs whose dead letter was refused as too
	// large although it fitted the known limits; the redone batch cuts it
	// to deadLetterMinLimit.
	cutDeadLetters map[inputRef]struct{}
	topicLimits    map[string]int // max.message.bytes of the output topics, if known
	// batchMax is the producer's record batch cap: the client refuses
	// any record larger than it.
	batchMax int

	joined  atomic.Bool
	storeOK atomic.Bool
	stats   Stats
	statsMu sync.Mutex
}

// inputRef names one consumed record.
type inputRef struct {
	topic     string
	partition int32
	offset    int64
}

// Stats are running totals, for the demo, tests and benchmarks.
type Stats struct {
	Batches, Committed, Aborted, Stale int
	OrdersIn, ForgetsIn                int
	Out, DeadLetters, Suppressed       int
	StoreCalls                         int
}

// New validates cfg and returns a Processor. It connects to nothing.
func New(cfg Config) (*Processor, error) {
	switch {
	case cfg.Plan == nil:
		return nil, errors.New("processor: no plan")
	case cfg.Store == nil:
		return nil, errors.New("processor: no store")
	case cfg.GroupID == "" || cfg.TransactionalID == "":
		return nil, errors.New("processor: group and transactional IDs are required")
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Metrics == nil {
		cfg.Metrics = NewMetrics(nil)
	}
	if cfg.Wire == nil {
		cfg.Wire = schema.BareWire{}
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.TransactionTimeout == 0 {
		cfg.TransactionTimeout = 10 * time.Second
	}
	if cfg.SessionTimeout == 0 {
		cfg.SessionTimeout = 15 * time.Second
	}
	if cfg.MaxRecordBytes == 0 {
		cfg.MaxRecordBytes = config.MaxRecordBytesFor(int(cfg.ProducerBatchMaxBytes))
	}
	if cfg.MaxPollRecords == 0 {
		cfg.MaxPollRecords = 10000
	}
	if cfg.MaxBackoff == 0 {
		cfg.MaxBackoff = 30 * time.Second
	}
	p := &Processor{
		cfg:      cfg,
		log:      cfg.Logger,
		m:        cfg.Metrics,
		systems:  cfg.Plan.Systems(),
		cache:    newSubjectCache(cfg.CacheSubjects),
		d:        pseudonym.NewDeriver(),
		workers:  runtime.GOMAXPROCS(0),
		batchMax: config.DefaultProducerBatchMaxBytes,
	}
	if cfg.ProducerBatchMaxBytes > 0 {
		p.batchMax = int(cfg.ProducerBatchMaxBytes)
	}
	for i, sys := range p.systems {
		p.topics = append(p.topics, cfg.Topics.PseudoPrefix+sys)
		allowed := map[string]bool{}
		if i < len(cfg.Policies) {
			for _, h := range cfg.Policies[i].Headers {
				allowed[h] = true
			}
		}
		p.headers = append(p.headers, allowed)
	}
	return p, nil
}

// OutputTopics returns the output topic of each system, in plan order.
func (p *Processor) OutputTopics() []string { return append([]string(nil), p.topics...) }

// Stats returns the running totals.
func (p *Processor) Stats() Stats {
	p.statsMu.Lock()
	defer p.statsMu.Unlock()
	return p.stats
}

// Ready reports nil when the processor has joined its group and the store
// answered its last call.
func (p *Processor) Ready() error {
	switch {
	case !p.joined.Load():
		return errors.New("not ready: consumer group not joined")
	case !p.storeOK.Load():
		return errors.New("not ready: key store unreachable")
	}
	return nil
}

func (p *Processor) setStoreOK(ok bool) {
	p.storeOK.Store(ok)
	p.updateReady()
}

func (p *Processor) updateReady() {
	if p.Ready() == nil {
		p.m.Ready.Set(1)
	} else {
		p.m.Ready.Set(0)
	}
}

// Run processes until ctx is canceled, then finishes or aborts the open
// transaction, leaves the group and returns nil. It returns an error only
// for problems that retrying cannot fix.
func (p *Processor) Run(ctx context.Context) error {
	bo := backoff{max: p.cfg.MaxBackoff}
	// The forget sequence number must be read before any key is cached:
	// every forget after it is then reported by a later guard.
	for {
		err := p.baseline(ctx)
		if err == nil {
			break
		}
		p.log.Warn("key store unavailable at start, retrying", "err", err)
		if !bo.sleep(ctx) {
			return nil
		}
	}
	bo.reset()
	for ctx.Err() == nil {
		err := p.session(ctx)
		if err == nil {
			return nil
		}
		p.log.Error("kafka session failed, starting a new one", "err", err)
		if !bo.sleep(ctx) {
			return nil
		}
	}
	return nil
}

func (p *Processor) baseline(ctx context.Context) error {
	g, err := p.cfg.Store.Guard(ctx, store.Position{})
	p.setStoreOK(err == nil)
	if err != nil {
		return err
	}
	p.pos = g.Position()
	return g.Release(ctx)
}

// session runs one transactional client until ctx is canceled (nil) or the
// client fails in a way only a new producer ID can fix (error).
func (p *Processor) session(ctx context.Context) error {
	opts := append([]kgo.Opt{}, p.cfg.Kafka...)
	opts = append(opts,
		kgo.ConsumerGroup(p.cfg.GroupID),
		kgo.ConsumeTopics(p.cfg.Topics.Orders, p.cfg.Topics.Forget),
		kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()),
		kgo.FetchIsolationLevel(kgo.ReadCommitted()),
		kgo.TransactionalID(p.cfg.TransactionalID),
		kgo.TransactionTimeout(p.cfg.TransactionTimeout),
		kgo.SessionTimeout(p.cfg.SessionTimeout),
		kgo.OnPartitionsAssigned(func(context.Context, *kgo.Client, map[string][]int32) {
			p.joined.Store(true)
			p.updateReady()
		}),
		kgo.OnPartitionsLost(func(context.Context, *kgo.Client, map[string][]int32) {
			p.joined.Store(false)
			p.updateReady()
		}),
	)
	if p.cfg.ProducerBatchMaxBytes > 0 {
		opts = append(opts, kgo.ProducerBatchMaxBytes(p.cfg.ProducerBatchMaxBytes))
	}
	sess, err := kgo.NewGroupTransactSession(opts...)
	if err != nil {
		return fmt.Errorf("kafka client: %w", err)
	}
	defer func() {
		p.joined.Store(false)
		p.updateReady()
		p.closeSession(sess, ctx.Err() != nil)
	}()
	p.loadTopicLimits(ctx, kadm.NewClient(sess.Client()))

	bo := backoff{max: p.cfg.MaxBackoff}
	for {
		fetches := sess.PollRecords(ctx, p.cfg.MaxPollRecords)
		if fetches.IsClientClosed() || (ctx.Err() != nil && fetches.NumRecords() == 0) {
			return nil
		}
		fetches.EachError(func(topic string, part int32, err error) {
			if !errors.Is(err, context.Canceled) {
				p.log.Warn("fetch error", "topic", topic, "partition", part, "err", err)
			}
		})
		recs := fetches.Records()
		if len(recs) == 0 {
			continue
		}
		// The batch runs to its end even when ctx is canceled meanwhile:
		// shutdown then finishes (or aborts) this transaction.
		bctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), p.cfg.TransactionTimeout+p.cfg.MaxBackoff)
		outcome, err := p.processBatch(bctx, sess, recs)
		cancel()
		switch {
		case errors.Is(err, errSessionBroken):
			return err
		case outcome == outcomeCommitted:
			bo.reset()
		case outcome == outcomeStale:
			// A forget raced with this batch; retry at once.
		default:
			if err != nil {
				p.log.Warn("batch aborted, will retry", "err", err, "records", len(recs))
			} else {
				p.log.Info("batch aborted by a rebalance, will retry", "records", len(recs))
			}
			if !bo.sleep(ctx) {
				return nil
			}
		}
	}
}

func (p *Processor) failpoint(name string) {
	if p.cfg.Failpoint != nil {
		p.cfg.Failpoint(name)
	}
}

// leaveTimeout bounds how long closing a session waits to leave the group.
const leaveTimeout = 10 * time.Second

// closeSession closes the transactional client. No transaction is open by
// then, so all that is left is leaving the group; that waits for a JoinGroup
// in flight, which the broker may hold until the rebalance ends (a member
// that was killed is waited for up to its session timeout). When shutting
// down, the processor stops waiting after leaveTimeout: the broker drops the
// member after its session timeout, and the client finishes closing in the
// background. Before a new session it waits, so that two clients of one
// instance never overlap.
func (p *Processor) closeSession(sess *kgo.GroupTransactSession, shuttingDown bool) {
	if !shuttingDown {
		sess.Close()
		return
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		sess.Close()
	}()
	select {
	case <-done:
	case <-time.After(leaveTimeout):
		p.log.Warn("leaving the consumer group takes long (a rebalance is in progress); not waiting any longer", "waited", leaveTimeout)
	}
}

// loadTopicLimits learns the max.message.bytes of the topics the processor
// writes, to tell a record that is too large by itself from one that was
// refused with the rest of its batch. Unknown topics keep no limit.
// It asks through the session's own client (adm), so that no second client
// is opened per session.
func (p *Processor) loadTopicLimits(ctx context.Context, adm *kadm.Client) {
	dctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	topics := append([]string{p.cfg.Topics.Forgotten, p.cfg.Topics.OrdersDeadLetter, p.cfg.Topics.ForgetDeadLetter}, p.topics...)
	configs, err := adm.DescribeTopicConfigs(dctx, topics...)
	if err != nil {
		p.log.Debug("cannot describe the output topics' configs", "err", err)
		return
	}
	limits := map[string]int{}
	for _, rc := range configs {
		if rc.Err != nil {
			continue
		}
		for _, c := range rc.Configs {
			if c.Key != "max.message.bytes" || c.Value == nil {
				continue
			}
			if v, err := strconv.Atoi(*c.Value); err == nil && v > 0 {
				limits[rc.Name] = v
			}
		}
	}
	p.tooLargeMu.Lock()
	p.topicLimits = limits
	p.tooLargeMu.Unlock()
	for _, t := range []string{p.cfg.Topics.OrdersDeadLetter, p.cfg.Topics.ForgetDeadLetter} {
		if l, ok := limits[t]; ok && l < p.cfg.MaxRecordBytes+config.DeadLetterHeadroom {
			p.log.Warn("a dead-letter topic accepts less than processing.max_record_bytes plus headers: larger dead letters are truncated (header error.truncated)",
				"topic", t, "max_message_bytes", l, "max_record_bytes", p.cfg.MaxRecordBytes)
		}
	}
}

// backoff is capped exponential backoff with full jitter.
type backoff struct {
	max  time.Duration
	next time.Duration
}

func (b *backoff) reset() { b.next = 0 }

// sleep waits for the next backoff interval; false if ctx ended first.
func (b *backoff) sleep(ctx context.Context) bool {
	if b.next == 0 {
		b.next = 100 * time.Millisecond
	} else if b.next *= 2; b.next > b.max {
		b.next = b.max
	}
	d := b.next/2 + rand.N(b.next/2+1)
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}

// redact keeps error text free of anything but its own words: store and
// Kafka errors never carry identifiers, but input-derived text is not
// trusted in logs.
func redact(s string) string {
	if len(s) > 200 {
		s = s[:200]
	}
	return strings.ToValidUTF8(s, "?")
}
