package processor

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/hygiene/pseudonymizer/store"
)

// errSessionBroken marks errors after which the transactional client cannot
// be used any more (a failed Begin or End); Run starts a new session.
var errSessionBroken = errors.New("kafka transaction failed")

// errStale means a forget committed while the batch was being processed
// with a key it destroyed; the batch is aborted and redone.
var errStale = errors.New("a subject of the batch was forgotten meanwhile")

type outcome int

const (
	outcomeAborted outcome = iota
	outcomeCommitted
	outcomeStale
)

// abortTimeout bounds aborting a batch's transaction.
const abortTimeout = 10 * time.Second

// txn is one Kafka transaction of a session: it hands the batch's records
// to the client as the steps complete them, and ends in a commit (guarded,
// for orders) or an abort. See doc.go, "One order batch" and "One forget
// batch".
type txn struct {
	p       *Processor
	ctx     context.Context
	sess    *kgo.GroupTransactSession
	input   string // the lane's input topic
	promise *producePromise
	done    func(*kgo.Record, error) // promise.done, bound once: a method value per record would allocate
}

// beginTxn begins a transaction on sess, a session consuming input.
func (p *Processor) beginTxn(ctx context.Context, sess *kgo.GroupTransactSession, input string) (*txn, error) {
	if err := sess.Begin(); err != nil {
		return nil, fmt.Errorf("%w: begin: %w", errSessionBroken, err)
	}
	promise := &producePromise{cl: sess.Client()}
	return &txn{p: p, ctx: ctx, sess: sess, input: input, promise: promise, done: promise.done}, nil
}

// produce hands r to the client; a failed record aborts the transaction.
func (t *txn) produce(r *kgo.Record) {
	t.promise.wg.Add(1)
	t.sess.Produce(t.ctx, r, t.done)
}

// abort aborts the transaction because of cause, which it returns (or a
// session error if the abort itself failed).
func (t *txn) abort(cause error) (outcome, error) {
	p := t.p
	// The abort gets its own time: the cause may be that the batch's
	// deadline passed (a slow store), and an End cut short by its
	// context leaves the client unusable.
	actx, cancel := context.WithTimeout(context.WithoutCancel(t.ctx), abortTimeout)
	defer cancel()
	_, err := t.sess.End(actx, kgo.TryAbort)
	t.promise.Err() // every record's promise has run: nothing touches the next batch
	if err != nil {
		return outcomeAborted, fmt.Errorf("%w: abort: %w (after: %w)", errSessionBroken, err, cause)
	}
	p.m.Batches.WithLabelValues("aborted").Inc()
	p.count(func(s *Stats) { s.Batches++; s.Aborted++ })
	return outcomeAborted, cause
}

// flush hands the rest of b's records to the client and waits until every
// record is acknowledged; records refused as too large are blamed (see
// blameTooLarge) before the error is returned.
func (t *txn) flush(b *batch) error {
	b.handOver(len(b.recs))
	if err := t.sess.Client().Flush(t.ctx); err != nil {
		return fmt.Errorf("flush: %w", err)
	}
	if err := t.promise.Err(); err != nil {
		t.p.blameTooLarge(b, t.promise.refused)
		return fmt.Errorf("produce: %w", err)
	}
	return nil
}

// guarded takes the store guard, checks that no subject b used was
// forgotten since the batch looked its keys up, runs the rest of the
// batch's work (projection, flush) and commits the transaction (offsets
// included), all while holding the guard. Order batches end here.
//
// The guard is taken after the keys are resolved (key creation takes the
// same lock shared on another connection, which must never queue behind a
// waiting Forget while this batch holds the lock), and before anything is
// produced: a forget that completes during the projection cannot make the
// batch stale, it waits for the commit instead, so a forget costs the
// order lane at most a redo of admit and resolve, never of the projection.
func (t *txn) guarded(b *batch, work func() error) (outcome, error) {
	p, ctx := t.p, t.ctx
	// The guard excludes forgets until the Kafka commit is done, and tells
	// which subjects were forgotten since the last guard.
	g, err := p.storeGuard(ctx)
	if err != nil {
		return t.abort(err)
	}
	committedWithGuard := false
	defer func() {
		err := g.Release(context.WithoutCancel(ctx))
		switch {
		case err == nil:
		case committedWithGuard:
			// The guard was lost during the EndTxn round trip: the store
			// makes forgets wait until this commit is decided. See doc.go.
			p.m.GuardLost.Inc()
			p.log.Warn("store guard lost while committing; forget confirmations wait until this transaction has certainly ended", "err", err)
		default:
			p.log.Warn("releasing store guard", "err", err)
		}
	}()
	if stale := p.invalidate(g, b); stale {
		o, err := t.abort(errStale)
		if errors.Is(err, errStale) {
			p.m.Batches.WithLabelValues("stale").Inc()
			p.count(func(s *Stats) { s.Stale++ })
			return outcomeStale, nil
		}
		return o, err
	}

	if err := work(); err != nil {
		return t.abort(err)
	}
	// A guard is lost with its connection (a killed backend, a restart):
	// check it right before committing, so that only the EndTxn round trip
	// itself remains exposed, and that only to the store's wait.
	if err := g.Check(ctx); err != nil {
		return t.abort(fmt.Errorf("store guard lost before commit: %w", err))
	}
	o, err := t.commit(b, "")
	committedWithGuard = o == outcomeCommitted
	if committedWithGuard {
		p.m.CachedSubjects.Set(float64(p.cache.len())) // the cache is the order lane's
	}
	return o, err
}

// commit ends the transaction with a commit (offsets included). Failpoints
// are named with prefix, the lane's.
func (t *txn) commit(b *batch, prefix string) (outcome, error) {
	p := t.p
	p.failpoint(prefix + "before-commit")
	commitStart := time.Now()
	committed, err := t.sess.End(t.ctx, kgo.TryCommit)
	p.m.CommitDuration.Observe(time.Since(commitStart).Seconds())
	p.failpoint(prefix + "after-commit")
	if err != nil {
		return outcomeAborted, fmt.Errorf("%w: commit: %w", errSessionBroken, err)
	}
	if !committed {
		p.m.Batches.WithLabelValues("aborted").Inc()
		p.count(func(s *Stats) { s.Batches++; s.Aborted++ })
		return outcomeAborted, nil
	}
	p.clearTooLarge(t.input)
	p.committed(b, time.Now())
	return outcomeCommitted, nil
}

// processBatch runs one order batch in one transaction: admit, resolve and
// assign, then, under the store guard, projection and commit. See doc.go.
func (p *Processor) processBatch(ctx context.Context, sess *kgo.GroupTransactSession, recs []*kgo.Record) (outcome, error) {
	ctx, cancel := p.batchContext(ctx)
	defer cancel()
	start := time.Now()
	defer func() { p.m.BatchDuration.Observe(time.Since(start).Seconds()) }()
	b := &p.b
	b.reset()
	// Every path out of this function has waited for its records'
	// promises: no record points into an evicted subject any more.
	defer p.cache.wipeEvicted()

	t, err := p.beginTxn(ctx, sess, p.cfg.Topics.Orders)
	if err != nil {
		return outcomeAborted, err
	}
	// Records go to the client as soon as they are complete (see
	// batch.send); a failed batch aborts them with the transaction.
	b.send = t.produce
	if err := p.orders(ctx, b, recs); err != nil {
		return t.abort(err)
	}
	if len(b.lookups) > 0 {
		p.failpoint("after-resolve")
	}
	return t.guarded(b, func() error {
		if b.emitted > 0 {
			if err := p.project(b); err != nil {
				return err
			}
		}
		return t.flush(b)
	})
}

func (p *Processor) count(f func(*Stats)) {
	p.statsMu.Lock()
	f(&p.stats)
	p.statsMu.Unlock()
}

// committed publishes a committed batch's counts.
func (p *Processor) committed(b *batch, now time.Time) {
	p.m.Batches.WithLabelValues("committed").Inc()
	p.m.RecordsIn.WithLabelValues(p.cfg.Topics.Orders).Add(float64(b.stats.OrdersIn))
	p.m.RecordsIn.WithLabelValues(p.cfg.Topics.Forget).Add(float64(b.stats.ForgetsIn))
	if b.stats.ObjectionsIn > 0 {
		p.m.RecordsIn.WithLabelValues(p.cfg.Topics.Objections).Add(float64(b.stats.ObjectionsIn))
	}
	for _, s := range b.objections {
		p.m.Objections.WithLabelValues(s).Inc()
	}
	p.m.Suppressed.Add(float64(b.stats.Suppressed))
	for _, f := range b.forgets {
		p.m.Forgets.WithLabelValues(f.status).Inc()
		p.m.ForgetLatency.Observe(now.Sub(f.published).Seconds())
	}
	for _, d := range b.dlq {
		p.m.DeadLetters.WithLabelValues(d.topic, d.class).Inc()
	}
	dropped := p.committedPII(b)
	if b.emitted > 0 {
		for i, sys := range p.systems {
			objected := 0
			if i < len(b.objected) {
				objected = b.objected[i]
			}
			n := b.emitted - objected
			if i < len(b.piiDropped) {
				n -= b.piiDropped[i]
			}
			p.m.RecordsOut.WithLabelValues(sys).Add(float64(n))
			if objected > 0 {
				p.m.ObjectedEvents.WithLabelValues(sys).Add(float64(objected))
			}
		}
	}
	p.count(func(s *Stats) {
		s.Batches++
		s.Committed++
		s.OrdersIn += b.stats.OrdersIn
		s.ForgetsIn += b.stats.ForgetsIn
		s.ObjectionsIn += b.stats.ObjectionsIn
		s.Objected += b.stats.Objected
		s.Out += b.stats.Out - dropped
		s.PIIDropped += dropped
		s.PIIFindings += len(b.pii)
		s.DeadLetters += b.stats.DeadLetters
		s.Suppressed += b.stats.Suppressed
	})
}

// producePromise collects the outcome of a transaction's produce calls:
// like kgo.AbortingFirstErrPromise it keeps the first error and aborts the
// buffered records at once. It also keeps the records refused as too
// large.
type producePromise struct {
	cl     *kgo.Client
	wg     sync.WaitGroup
	failed atomic.Bool
	err    error

	mu      sync.Mutex
	refused []*kgo.Record // read after wg.Wait
}

// done is the promise of every produced record.
func (f *producePromise) done(r *kgo.Record, err error) {
	defer f.wg.Done()
	if err == nil {
		return
	}
	if errors.Is(err, kerr.MessageTooLarge) || errors.Is(err, kerr.RecordListTooLarge) {
		f.mu.Lock()
		f.refused = append(f.refused, r)
		f.mu.Unlock()
	}
	if !f.failed.Swap(true) {
		f.err = err
		f.wg.Add(1)
		go func() {
			defer f.wg.Done()
			f.cl.AbortBufferedRecords(context.Background())
		}()
	}
}

// Err waits for every record's promise and returns the first error.
func (f *producePromise) Err() error {
	f.wg.Wait()
	return f.err
}

// storeGuard takes the store guard, measuring it as a store call.
func (p *Processor) storeGuard(ctx context.Context) (store.Guard, error) {
	t := time.Now()
	g, err := p.cfg.Store.Guard(ctx, p.pos)
	p.storeCall("guard", t, err)
	if err != nil {
		return nil, fmt.Errorf("store guard: %w", err)
	}
	return g, nil
}

func (p *Processor) storeCall(op string, start time.Time, err error) {
	p.m.StoreRoundTrips.WithLabelValues(op).Inc()
	p.m.StoreLatency.WithLabelValues(op).Observe(time.Since(start).Seconds())
	// A store that refused a record's data answered: /readyz saying it is
	// unreachable would send operators after the wrong cause.
	p.setStoreOK(err == nil || errors.Is(err, store.ErrRejected))
	p.count(func(s *Stats) { s.StoreCalls++ })
}

// invalidate drops forgotten subjects from the cache and reports whether
// the batch used a key that a forget destroyed after it was loaded.
func (p *Processor) invalidate(g store.Guard, b *batch) (stale bool) {
	if g.Diverged() {
		// Keys this instance cached may have been destroyed by forgets
		// that the restored store no longer lists (see doc.go).
		p.m.StoreRewound.Inc()
		p.log.Error("the key store's forget log was rewound (restored from a backup or recreated): dropping every cached key; "+
			"forgets after the backup must be repeated, see docs/operations.md",
			"seen_seq", p.pos.Seq, "store_seq", g.Seq())
	}
	// The subjects the batch used, read before the cache drops any: a
	// set only when there are forgets to check it against (most guards
	// have none), so that an event costs no set insertion.
	forgotten := g.Forgotten()
	var used map[store.SubjectHash]bool
	if len(forgotten) > 0 || !g.Complete() {
		used = map[store.SubjectHash]bool{}
		for i := range b.orders {
			if o := &b.orders[i]; o.used {
				used[*o.subj.hash()] = true
			}
		}
	}
	if !g.Complete() {
		p.cache.clear()
		stale = len(used) > 0
	}
	for _, h := range forgotten {
		p.cache.forget(h)
		if used[h] {
			stale = true
		}
	}
	p.pos = g.Position()
	return stale
}
