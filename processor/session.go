package processor

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/hygiene/pseudonymizer/store"
)

// Run processes until ctx is canceled, then finishes or aborts the open
// transactions, leaves the groups and returns nil. It returns an error only
// for problems that retrying cannot fix.
//
// Orders and forget requests run in two lanes, each its own consumer group
// and transactional session (see doc.go, "Two lanes"), so that neither ever
// waits for the other.
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
	var wg sync.WaitGroup
	for _, l := range []*lane{p.orderLane(), p.forgetLane()} {
		wg.Go(func() { p.runLane(ctx, l) })
	}
	wg.Wait()
	return nil
}

// lane is one transactional consumer of its input topics: its group, its
// transactional ID and the handler of its poll batches.
type lane struct {
	name   string // "orders" or "forgets", in logs
	group  string
	txnID  string
	topics []string
	joined *atomic.Bool
	// fenced holds the transactional ID while another producer with it
	// fenced this lane (see fencedBy).
	fenced *atomic.Pointer[string]
	// prepare, if set, runs before each session's client is created.
	prepare func(ctx context.Context) error
	// process runs one poll batch in one transaction; ctx is the
	// session's (see batchContext).
	process func(ctx context.Context, sess *kgo.GroupTransactSession, recs []*kgo.Record) (outcome, error)
}

// orderLane consumes orders in the configured group.
func (p *Processor) orderLane() *lane {
	return &lane{name: "orders", group: p.cfg.GroupID, txnID: p.cfg.TransactionalID, topics: []string{p.cfg.Topics.Orders},
		joined: &p.ordersJoined, fenced: &p.ordersFenced, process: p.processBatch}
}

// forgetLane consumes forget requests and objection states in a group and
// a transactional session of their own (see doc.go, "Two lanes").
func (p *Processor) forgetLane() *lane {
	topics := []string{p.cfg.Topics.Forget}
	if p.cfg.Topics.Objections != "" {
		topics = append(topics, p.cfg.Topics.Objections)
	}
	return &lane{name: "forgets", group: p.cfg.ForgetGroupID, txnID: p.cfg.ForgetTransactionalID, topics: topics,
		joined: &p.forgetsJoined, fenced: &p.forgetsFenced, prepare: p.prepareForgetLane, process: p.forgetBatch}
}

// batchContext bounds one batch's transaction. The batch runs to its end
// even when ctx is canceled meanwhile: shutdown then finishes (or aborts)
// the transaction.
func (p *Processor) batchContext(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.WithoutCancel(ctx), p.cfg.TransactionTimeout+p.cfg.MaxBackoff)
}

// runLane runs one session of l after another until ctx is canceled.
func (p *Processor) runLane(ctx context.Context, l *lane) {
	bo := backoff{max: p.cfg.MaxBackoff}
	for ctx.Err() == nil {
		err := p.session(ctx, l)
		if err == nil {
			return
		}
		if fencedBy(err) {
			// Two live producers with one transactional ID fence each
			// other for as long as both run: say once what to change,
			// and stay unready until a session commits again.
			if l.fenced.Swap(&l.txnID) == nil {
				p.log.Error("fenced: another instance uses this transactional ID (two instances with one configuration on one host?): give every instance its own kafka.transactional_id (or PSEUDONYMIZER_KAFKA_TRANSACTIONAL_ID); not ready until this instance commits again",
					"lane", l.name, "transactional_id", l.txnID)
			}
			p.updateReady()
		} else {
			p.log.Error("kafka session failed, starting a new one", "lane", l.name, "err", err)
		}
		if !bo.sleep(ctx) {
			return
		}
	}
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

// session runs one transactional client of lane l until ctx is canceled
// (nil) or the client fails in a way only a new producer ID can fix
// (error).
func (p *Processor) session(ctx context.Context, l *lane) error {
	if l.prepare != nil {
		if err := l.prepare(ctx); err != nil {
			return err
		}
	}
	opts := append([]kgo.Opt{}, p.cfg.Kafka...)
	if p.cfg.LaneHooks != nil {
		opts = append(opts, kgo.WithHooks(p.cfg.LaneHooks(l.name)...))
	}
	opts = append(opts,
		kgo.ConsumerGroup(l.group),
		kgo.ConsumeTopics(l.topics...),
		kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()),
		kgo.FetchIsolationLevel(kgo.ReadCommitted()),
		kgo.TransactionalID(l.txnID),
		kgo.TransactionTimeout(p.cfg.TransactionTimeout),
		kgo.SessionTimeout(p.cfg.SessionTimeout),
		kgo.OnPartitionsAssigned(func(context.Context, *kgo.Client, map[string][]int32) {
			l.joined.Store(true)
			p.updateReady()
		}),
		kgo.OnPartitionsLost(func(context.Context, *kgo.Client, map[string][]int32) {
			l.joined.Store(false)
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
		l.joined.Store(false)
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
		outcome, err := l.process(ctx, sess, recs)
		switch {
		case errors.Is(err, errSessionBroken):
			return err
		case outcome == outcomeCommitted:
			bo.reset()
			if l.fenced.Swap(nil) != nil {
				p.log.Info("no longer fenced: this instance committed again", "lane", l.name)
				p.updateReady()
			}
		case outcome == outcomeStale:
			// A forget raced with this batch; retry at once.
		default:
			if err != nil {
				p.log.Warn("batch aborted, will retry", "lane", l.name, "err", err, "records", len(recs))
			} else {
				p.log.Info("batch aborted by a rebalance, will retry", "lane", l.name, "records", len(recs))
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

// fencedBy reports whether err means that another producer with the
// session's transactional ID fenced it.
func fencedBy(err error) bool {
	return errors.Is(err, kerr.ProducerFenced)
}

// backoff is capped exponential backoff with "equal jitter": each wait is
// drawn uniformly from [next/2, next], so it never falls below half the
// current interval.
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
