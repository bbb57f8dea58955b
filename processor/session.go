package processor

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/hygiene/pseudonymizer/store"
)

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
