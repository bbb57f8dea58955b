package processor

import (
	"errors"
	"fmt"
	"log/slog"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/hygiene/pseudonymizer/processor/policy"
	"github.com/hygiene/pseudonymizer/processor/pseudonym"
	"github.com/hygiene/pseudonymizer/schema"
	"github.com/hygiene/pseudonymizer/store"
)

// Config is what a Processor needs; cmd/pseudonymizer builds it from the
// configuration file.
type Config struct {
	// Topics names the topics.
	Topics Topics
	// Policies are the systems' policies, in the order Plan was compiled.
	// Their headers and erasure notices are taken from here.
	Policies []policy.Policy
	// Plan is the compiled policies.
	Plan *policy.Plan
	// Store holds the subject keys.
	Store KeyStore
	// Wire is the framing of values; nil means schema.BareWire.
	Wire schema.Wire
	// Kafka are client options: seed brokers, TLS, SASL, logger. The
	// processor adds the group, topics and transaction options.
	Kafka []kgo.Opt
	// LaneHooks, if set, returns the hooks of a lane's transactional
	// clients ("orders" or "forgets"); other clients get none. kprom, for
	// one, registers its collectors once per live client, so each lane
	// needs its own.
	LaneHooks func(lane string) []kgo.Hook
	// GroupID is the consumer group of the order lane; TransactionalID
	// this instance's transactional ID in it.
	GroupID, TransactionalID string
	// ForgetGroupID and ForgetTransactionalID are the forget lane's; empty
	// means GroupID and TransactionalID with ForgetLaneSuffix.
	ForgetGroupID, ForgetTransactionalID string
	// TransactionTimeout is the Kafka transaction timeout.
	TransactionTimeout time.Duration
	// SessionTimeout is the consumer group session timeout.
	SessionTimeout time.Duration
	// MaxRecordBytes is the largest raw record value accepted; 0 derives
	// it from ProducerBatchMaxBytes (MaxRecordBytesFor).
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
	// PII configures the guard against identifying data inside the
	// fields a system keeps (pii.go); each system's mode is its policy's
	// PII. A zero PIIConfig turns the guard off.
	PII PIIConfig
	// Failpoint, if set, is called at named points of a batch, for crash
	// tests. Order lane: "after-resolve" (new keys committed),
	// "before-commit" (guard held, before EndTxn), "after-commit" (EndTxn
	// returned, guard still held). Forget lane: "after-forget" (store
	// forget committed, its wait for lost guards over), "after-object"
	// (store objection states committed, likewise),
	// "forget-before-commit", "forget-after-commit".
	Failpoint func(name string)
}

// Processor consumes orders.raw, subjects.forget and subjects.objections
// and produces the pseudonymized copies, confirmations and dead letters,
// exactly once. See doc.go for the design.
type Processor struct {
	cfg     Config
	log     *slog.Logger
	m       *Metrics
	systems []string
	topics  []string // output topic per system
	headers []map[string]bool
	// notices are the systems (plan indices) with erasure notices on;
	// sweep is the state of their retained-key sweep (notices.go).
	notices []int
	sweep   sweepState

	cache *subjectCache
	pos   store.Position     // newest forget-log position seen by a guard
	fd    *pseudonym.Deriver // the forget lane's (erasure notices)
	b     batch              // the order lane's
	fb    batch              // the forget lane's
	// forgetsSeeded is set once the forget lane's group has offsets (see
	// seedForgetGroup); only the forget lane touches it.
	forgetsSeeded bool

	// pii is the PII guard; nil: off for every system.
	pii *piiGuard

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

	ordersJoined  atomic.Bool
	forgetsJoined atomic.Bool
	// ordersFenced and forgetsFenced hold the lane's transactional ID
	// while another producer with it has fenced the lane, until a session
	// of that lane commits again.
	ordersFenced, forgetsFenced atomic.Pointer[string]
	storeOK                     atomic.Bool
	// storeDownSince is when a store call first failed (Unix ns), 0 while
	// the store answers: its recovery is logged.
	storeDownSince atomic.Int64
	stats          Stats
	statsMu        sync.Mutex
}

// Stats are running totals, for the demo, tests and benchmarks.
type Stats struct {
	Batches, Committed, Aborted, Stale int
	OrdersIn, ForgetsIn, ObjectionsIn  int
	Out, DeadLetters, Suppressed       int
	// Objected counts outputs not sent because the subject objects.
	Objected   int
	StoreCalls int
	// PIIFindings counts the PII guard's findings (one per event, system,
	// field and kind), PIIDropped the outputs it dropped.
	PIIFindings, PIIDropped int
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
	if cfg.ForgetGroupID == "" {
		cfg.ForgetGroupID = cfg.GroupID + ForgetLaneSuffix
	}
	if cfg.ForgetTransactionalID == "" {
		cfg.ForgetTransactionalID = cfg.TransactionalID + ForgetLaneSuffix
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.TransactionTimeout == 0 {
		cfg.TransactionTimeout = DefaultTransactionTimeout
	}
	if cfg.SessionTimeout == 0 {
		cfg.SessionTimeout = DefaultSessionTimeout
	}
	if cfg.MaxRecordBytes == 0 {
		cfg.MaxRecordBytes = MaxRecordBytesFor(int(cfg.ProducerBatchMaxBytes))
	}
	if cfg.MaxPollRecords == 0 {
		cfg.MaxPollRecords = DefaultMaxPollRecords
	}
	if cfg.MaxBackoff == 0 {
		cfg.MaxBackoff = DefaultMaxBackoff
	}
	p := &Processor{
		cfg:      cfg,
		log:      cfg.Logger,
		m:        cfg.Metrics,
		systems:  cfg.Plan.Systems(),
		cache:    newSubjectCache(cfg.CacheSubjects, len(cfg.Plan.Systems())),
		fd:       pseudonym.NewDeriver(),
		workers:  runtime.GOMAXPROCS(0),
		batchMax: DefaultProducerBatchMaxBytes,
	}
	if cfg.ProducerBatchMaxBytes > 0 {
		p.batchMax = int(cfg.ProducerBatchMaxBytes)
	}
	p.cache.systems = p.systems
	g, err := newPIIGuard(cfg.PII, cfg.Plan, cfg.Policies)
	if err != nil {
		return nil, err
	}
	p.pii = g
	for i, sys := range p.systems {
		p.topics = append(p.topics, cfg.Topics.PseudoPrefix+sys)
		allowed := map[string]bool{}
		if i < len(cfg.Policies) {
			for _, h := range cfg.Policies[i].Headers {
				allowed[h] = true
			}
		}
		p.headers = append(p.headers, allowed)
		if i < len(cfg.Policies) && cfg.Policies[i].ErasureNotices {
			p.notices = append(p.notices, i)
		}
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

// Ready reports nil when both lanes have joined their groups, neither was
// fenced by another producer with its transactional ID since its last
// commit, and the store answered its last call.
func (p *Processor) Ready() error {
	for _, f := range []*atomic.Pointer[string]{&p.ordersFenced, &p.forgetsFenced} {
		if id := f.Load(); id != nil {
			return fmt.Errorf("not ready: fenced: another producer uses transactional ID %s (two instances with one configuration on one host?); give every instance its own kafka.transactional_id", *id)
		}
	}
	switch {
	case !p.ordersJoined.Load():
		return errors.New("not ready: consumer group not joined")
	case !p.forgetsJoined.Load():
		return errors.New("not ready: forget consumer group not joined")
	case !p.storeOK.Load():
		return errors.New("not ready: key store unreachable")
	}
	return nil
}

func (p *Processor) setStoreOK(ok bool) {
	p.storeOK.Store(ok)
	if !ok {
		p.storeDownSince.CompareAndSwap(0, time.Now().UnixNano())
	} else if since := p.storeDownSince.Swap(0); since != 0 {
		p.log.Info("key store answers again", "unavailable_for", time.Since(time.Unix(0, since)).Round(time.Millisecond).String())
	}
	p.updateReady()
}

func (p *Processor) updateReady() {
	if p.Ready() == nil {
		p.m.Ready.Set(1)
	} else {
		p.m.Ready.Set(0)
	}
}
