package processor

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/hygiene/pseudonymizer/processor/policy"
	"github.com/hygiene/pseudonymizer/schema"
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

// batch holds the per-transaction buffers, reused across transactions.
type batch struct {
	arena   []byte
	recs    []kgo.Record
	orders  []order
	lookups []store.Lookup
	pending map[string]int // subject ID -> index in lookups
	used    map[store.SubjectHash]struct{}
	stats   Stats
	forgets []forgetDone
	dlq     []deadLettered
}

type order struct {
	rec   *kgo.Record
	value []byte // bare Avro of the bundled schema
	head  policy.Head
	subj  *subject
}

type forgetDone struct {
	status    string
	published time.Time // the request record's timestamp
}

type deadLettered struct{ topic, class string }

func (b *batch) reset() {
	b.arena = b.arena[:0]
	clear(b.recs)
	b.recs = b.recs[:0]
	clear(b.orders)
	b.orders = b.orders[:0]
	b.lookups = b.lookups[:0]
	if b.pending == nil {
		b.pending = map[string]int{}
		b.used = map[store.SubjectHash]struct{}{}
	}
	clear(b.pending)
	clear(b.used)
	b.stats = Stats{}
	b.forgets = b.forgets[:0]
	b.dlq = b.dlq[:0]
}

// add queues a record for production and returns it; records point into
// the batch's slab, so production waits until the batch is complete.
func (b *batch) add(r kgo.Record) {
	b.recs = append(b.recs, r)
}

// processBatch runs one transaction: forgets first, then orders, then the
// guarded commit. See doc.go.
func (p *Processor) processBatch(ctx context.Context, sess *kgo.GroupTransactSession, recs []*kgo.Record) (outcome, error) {
	start := time.Now()
	defer func() { p.m.BatchDuration.Observe(time.Since(start).Seconds()) }()
	b := &p.b
	b.reset()

	if err := sess.Begin(); err != nil {
		return outcomeAborted, fmt.Errorf("%w: begin: %w", errSessionBroken, err)
	}
	abort := func(cause error) (outcome, error) {
		if _, err := sess.End(ctx, kgo.TryAbort); err != nil {
			return outcomeAborted, fmt.Errorf("%w: abort: %w (after: %w)", errSessionBroken, err, cause)
		}
		p.m.Batches.WithLabelValues("aborted").Inc()
		p.count(func(s *Stats) { s.Batches++; s.Aborted++ })
		return outcomeAborted, cause
	}

	var forgets, orders []*kgo.Record
	for _, r := range recs {
		switch r.Topic {
		case p.cfg.Topics.Forget:
			forgets = append(forgets, r)
		case p.cfg.Topics.Orders:
			orders = append(orders, r)
		}
	}
	if err := p.forgets(ctx, b, forgets); err != nil {
		return abort(err)
	}
	if len(b.forgets) > 0 {
		p.failpoint("after-forget")
	}
	if err := p.orders(ctx, b, orders); err != nil {
		return abort(err)
	}
	if len(b.lookups) > 0 {
		p.failpoint("after-resolve")
	}

	promise := kgo.AbortingFirstErrPromise(sess.Client())
	for i := range b.recs {
		sess.Produce(ctx, &b.recs[i], promise.Promise())
	}
	if err := sess.Client().Flush(ctx); err != nil {
		return abort(fmt.Errorf("flush: %w", err))
	}
	if err := promise.Err(); err != nil {
		return abort(fmt.Errorf("produce: %w", err))
	}

	// The guard excludes forgets until the Kafka commit is done, and tells
	// which subjects were forgotten since the last guard.
	g, err := p.storeGuard(ctx)
	if err != nil {
		return abort(err)
	}
	defer func() {
		if err := g.Release(context.WithoutCancel(ctx)); err != nil {
			p.log.Warn("releasing store guard", "err", err)
		}
	}()
	if stale := p.invalidate(g, b); stale {
		o, err := abort(errStale)
		if errors.Is(err, errStale) {
			p.m.Batches.WithLabelValues("stale").Inc()
			p.count(func(s *Stats) { s.Stale++ })
			return outcomeStale, nil
		}
		return o, err
	}

	p.failpoint("before-commit")
	commitStart := time.Now()
	committed, err := sess.End(ctx, kgo.TryCommit)
	p.m.CommitDuration.Observe(time.Since(commitStart).Seconds())
	p.failpoint("after-commit")
	if err != nil {
		return outcomeAborted, fmt.Errorf("%w: commit: %w", errSessionBroken, err)
	}
	if !committed {
		p.m.Batches.WithLabelValues("aborted").Inc()
		p.count(func(s *Stats) { s.Batches++; s.Aborted++ })
		return outcomeAborted, nil
	}
	p.committed(b, time.Now())
	return outcomeCommitted, nil
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
	p.m.Suppressed.Add(float64(b.stats.Suppressed))
	for _, f := range b.forgets {
		p.m.Forgets.WithLabelValues(f.status).Inc()
		p.m.ForgetLatency.Observe(now.Sub(f.published).Seconds())
	}
	for _, d := range b.dlq {
		p.m.DeadLetters.WithLabelValues(d.topic, d.class).Inc()
	}
	for i := range b.recs {
		r := &b.recs[i]
		for s, t := range p.topics {
			if r.Topic == t {
				p.m.RecordsOut.WithLabelValues(p.systems[s]).Inc()
			}
		}
	}
	p.m.CachedSubjects.Set(float64(p.cache.len()))
	p.count(func(s *Stats) {
		s.Batches++
		s.Committed++
		s.OrdersIn += b.stats.OrdersIn
		s.ForgetsIn += b.stats.ForgetsIn
		s.Out += b.stats.Out
		s.DeadLetters += b.stats.DeadLetters
		s.Suppressed += b.stats.Suppressed
	})
}

// storeGuard takes the store guard, measuring it as a store call.
func (p *Processor) storeGuard(ctx context.Context) (store.Guard, error) {
	t := time.Now()
	g, err := p.cfg.Store.Guard(ctx, p.seq)
	p.storeCall("guard", t, err)
	if err != nil {
		return nil, fmt.Errorf("store guard: %w", err)
	}
	return g, nil
}

func (p *Processor) storeCall(op string, start time.Time, err error) {
	p.m.StoreRoundTrips.WithLabelValues(op).Inc()
	p.m.StoreLatency.WithLabelValues(op).Observe(time.Since(start).Seconds())
	p.setStoreOK(err == nil)
	p.count(func(s *Stats) { s.StoreCalls++ })
}

// invalidate drops forgotten subjects from the cache and reports whether
// the batch used a key that a forget destroyed after it was loaded.
func (p *Processor) invalidate(g store.Guard, b *batch) (stale bool) {
	if !g.Complete() {
		p.cache.clear()
		stale = len(b.used) > 0
	}
	for _, h := range g.Forgotten() {
		p.cache.forget(h)
		if _, ok := b.used[h]; ok {
			stale = true
		}
	}
	p.seq = g.Seq()
	return stale
}

// deadLetter queues the original record on topic with the reason headers.
func (p *Processor) deadLetter(b *batch, topic string, r *kgo.Record, class, msg string) {
	b.add(kgo.Record{
		Topic: topic,
		Key:   r.Key,
		Value: r.Value,
		Headers: []kgo.RecordHeader{
			{Key: "error.class", Value: []byte(class)},
			{Key: "error.message", Value: []byte(redact(msg))},
			{Key: "source.topic", Value: []byte(r.Topic)},
			{Key: "source.partition", Value: strconv.AppendInt(nil, int64(r.Partition), 10)},
			{Key: "source.offset", Value: strconv.AppendInt(nil, r.Offset, 10)},
		},
	})
	b.stats.DeadLetters++
	b.dlq = append(b.dlq, deadLettered{topic: r.Topic, class: class})
	p.log.Warn("dead-lettered a record", "topic", r.Topic, "partition", r.Partition, "offset", r.Offset, "class", class, "reason", redact(msg))
}

// Dead-letter classes (header error.class).
const (
	ClassDecode   = "decode"
	ClassContract = "contract"
	ClassTooLarge = "too_large"
	ClassSchema   = "schema"
)

// orders pseudonymizes the batch's order records.
func (p *Processor) orders(ctx context.Context, b *batch, recs []*kgo.Record) error {
	plan := p.cfg.Plan
	dlq := p.cfg.Topics.OrdersDeadLetter
	hits := 0
	for _, r := range recs {
		b.stats.OrdersIn++
		if len(r.Value) > p.cfg.MaxRecordBytes {
			p.deadLetter(b, dlq, r, ClassTooLarge, fmt.Sprintf("record of %d bytes exceeds the limit of %d", len(r.Value), p.cfg.MaxRecordBytes))
			continue
		}
		value, err := p.cfg.Wire.Order(ctx, r.Value)
		if err != nil {
			if re, ok := AsRecordError(err); ok {
				p.deadLetter(b, dlq, r, re.Class, re.Reason)
				continue
			}
			return fmt.Errorf("decode order: %w", err)
		}
		h, err := plan.Scan(value)
		if err != nil {
			p.deadLetter(b, dlq, r, ClassDecode, err.Error())
			continue
		}
		switch {
		case len(h.EventID) == 0:
			p.deadLetter(b, dlq, r, ClassContract, "event_id is empty")
			continue
		case len(h.OrderID) == 0:
			p.deadLetter(b, dlq, r, ClassContract, "order_id is empty")
			continue
		case len(h.CustomerID) == 0:
			p.deadLetter(b, dlq, r, ClassContract, "customer_id is empty")
			continue
		}
		o := order{rec: r, value: value, head: h}
		if s := p.cache.get(h.CustomerID); s != nil && !s.needsKey(h.OccurredAt) {
			o.subj = s
			hits++
		} else {
			at := time.UnixMilli(h.OccurredAt)
			if i, ok := b.pending[string(h.CustomerID)]; ok {
				if at.After(b.lookups[i].Latest) {
					b.lookups[i].Latest = at
				}
			} else {
				id := string(h.CustomerID)
				b.pending[id] = len(b.lookups)
				b.lookups = append(b.lookups, store.Lookup{SubjectID: id, Latest: at})
			}
		}
		b.orders = append(b.orders, o)
	}
	p.m.CacheHits.Add(float64(hits))
	p.m.CacheMisses.Add(float64(len(b.orders) - hits))

	var resolved []*subject
	if len(b.lookups) > 0 {
		t := time.Now()
		entries, err := p.cfg.Store.Resolve(ctx, b.lookups)
		p.storeCall("resolve", t, err)
		if err != nil {
			return fmt.Errorf("store resolve: %w", err)
		}
		if len(entries) != len(b.lookups) {
			return fmt.Errorf("store resolve: %d entries for %d lookups", len(entries), len(b.lookups))
		}
		resolved = make([]*subject, len(entries))
		for i, e := range entries {
			s := &subject{id: b.lookups[i].SubjectID, hash: e.Hash, key: e.Key}
			if !e.ForgottenAt.IsZero() {
				s.forgottenAt = e.ForgottenAt.UnixMilli()
			}
			resolved[i] = s
			p.cache.put(s)
		}
	}

	for i := range b.orders {
		o := &b.orders[i]
		if o.subj == nil {
			o.subj = resolved[b.pending[string(o.head.CustomerID)]]
		}
		s := o.subj
		if o.head.OccurredAt <= s.forgottenAt {
			b.stats.Suppressed++
			continue
		}
		if s.key == nil {
			return fmt.Errorf("store resolve: no key for a subject that needs one")
		}
		b.used[s.hash] = struct{}{}
		for sys := range p.systems {
			start := len(b.arena)
			b.arena = plan.SubjectPseudonym(b.arena, sys, s.key, o.head.CustomerID, p.d)
			key := b.arena[start:len(b.arena):len(b.arena)]
			start = len(b.arena)
			b.arena = p.cfg.Wire.AppendOutputPrefix(b.arena, sys)
			var err error
			b.arena, err = plan.Project(b.arena, sys, o.value, s.key, p.d)
			if err != nil {
				// Scan accepted the record, so this is a defect, not bad input.
				return fmt.Errorf("project for system %s: %w", p.systems[sys], err)
			}
			val := b.arena[start:len(b.arena):len(b.arena)]
			b.add(kgo.Record{Topic: p.topics[sys], Key: key, Value: val, Headers: p.allowedHeaders(sys, o.rec.Headers)})
			b.stats.Out++
		}
	}
	return nil
}

// allowedHeaders returns the input headers that system sys's policy names.
func (p *Processor) allowedHeaders(sys int, in []kgo.RecordHeader) []kgo.RecordHeader {
	allowed := p.headers[sys]
	if len(allowed) == 0 || len(in) == 0 {
		return nil
	}
	var out []kgo.RecordHeader
	for _, h := range in {
		if allowed[h.Key] {
			out = append(out, h)
		}
	}
	return out
}

// forgets destroys the keys of the batch's forget requests and queues their
// confirmations.
func (p *Processor) forgets(ctx context.Context, b *batch, recs []*kgo.Record) error {
	if len(recs) == 0 {
		return nil
	}
	dlq := p.cfg.Topics.ForgetDeadLetter
	var reqs []store.ForgetRequest
	var valid []*kgo.Record
	for _, r := range recs {
		b.stats.ForgetsIn++
		if len(r.Value) > p.cfg.MaxRecordBytes {
			p.deadLetter(b, dlq, r, ClassTooLarge, fmt.Sprintf("record of %d bytes exceeds the limit of %d", len(r.Value), p.cfg.MaxRecordBytes))
			continue
		}
		fr, err := p.cfg.Wire.Forget(ctx, r.Value)
		if err != nil {
			if re, ok := AsRecordError(err); ok {
				p.deadLetter(b, dlq, r, re.Class, re.Reason)
				continue
			}
			return fmt.Errorf("decode forget request: %w", err)
		}
		switch {
		case fr.RequestID == "":
			p.deadLetter(b, dlq, r, ClassContract, "request_id is empty")
			continue
		case fr.SubjectID == "":
			p.deadLetter(b, dlq, r, ClassContract, "subject_id is empty")
			continue
		}
		reqs = append(reqs, store.ForgetRequest{RequestID: fr.RequestID, SubjectID: fr.SubjectID, RequestedAt: fr.RequestedAt})
		valid = append(valid, r)
	}
	if len(reqs) == 0 {
		return nil
	}
	t := time.Now()
	results, err := p.cfg.Store.Forget(ctx, reqs)
	p.storeCall("forget", t, err)
	if err != nil {
		return fmt.Errorf("store forget: %w", err)
	}
	if len(results) != len(reqs) {
		return fmt.Errorf("store forget: %d results for %d requests", len(results), len(reqs))
	}
	for i, req := range reqs {
		p.cache.forget(p.cfg.Store.Hash(req.SubjectID))
		res := results[i]
		systems := []string{}
		if res.Status != store.UnknownSubject {
			systems = p.systems
		}
		val, err := p.cfg.Wire.Confirmation(&schema.ForgetConfirmation{
			RequestID:   req.RequestID,
			SubjectID:   req.SubjectID,
			Status:      res.Status.String(),
			RequestedAt: req.RequestedAt,
			CompletedAt: res.CompletedAt,
			Systems:     systems,
		})
		if err != nil {
			return fmt.Errorf("encode confirmation: %w", err)
		}
		b.add(kgo.Record{Topic: p.cfg.Topics.Forgotten, Key: []byte(req.SubjectID), Value: val})
		b.forgets = append(b.forgets, forgetDone{status: res.Status.String(), published: valid[i].Timestamp})
		p.log.Info("forget request confirmed", "partition", valid[i].Partition, "offset", valid[i].Offset, "status", res.Status.String())
	}
	return nil
}
