package processor

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/hygiene/pseudonymizer/processor/policy"
	"github.com/hygiene/pseudonymizer/processor/pseudonym"
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
	inForgets []*kgo.Record
	inOrders  []*kgo.Record
	recs      []kgo.Record
	emitted   int      // orders emitted, each once per system
	prefix    [][]byte // each system's output value prefix, this batch
	orders    []order
	lookups   []store.Lookup
	pending   map[string]int // subject ID -> index in lookups
	used      map[store.SubjectHash]struct{}
	stats     Stats
	forgets   []forgetDone
	dlq       []deadLettered
	// origin maps the index in recs of each dead letter and confirmation
	// to the input record it answers, to tell which input a refused
	// record belongs to.
	origin map[int]*kgo.Record
	// produce, if set, hands a record to the Kafka client; orders calls it
	// for the records of recs as they are completed, in recs order, so
	// that the client sends them while the rest is being projected.
	// recs[:produced] have been handed over; orders[:nextOrder] have had
	// their outputs handed over.
	produce   func(*kgo.Record)
	produced  int
	nextOrder int
}

type order struct {
	rec   *kgo.Record
	value []byte // bare Avro of the bundled schema
	head  policy.Head
	subj  *subject
	slot  int // index in recs of its first output; -1: suppressed
	// class and reason, while the batch's orders are being scanned, mark
	// a record for the dead-letter topic (class "" means valid so far).
	class, reason string
	scanErr       error
}

// worker derives and projects a share of a batch's events. Each has its own
// Deriver and buffers, reused across batches; the output records point
// into its arena, so a worker's buffers are reused only by the next batch.
type worker struct {
	d     *pseudonym.Deriver
	arena []byte
	hdrs  []kgo.RecordHeader
}

// minShare is the least number of events worth a goroutine of their own.
const minShare = 256

type forgetDone struct {
	status    string
	published time.Time // the request record's timestamp
}

type deadLettered struct{ topic, class string }

func (b *batch) reset() {
	clear(b.inForgets)
	b.inForgets = b.inForgets[:0]
	clear(b.inOrders)
	b.inOrders = b.inOrders[:0]
	clear(b.recs)
	b.recs = b.recs[:0]
	b.emitted = 0
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
	if b.origin == nil {
		b.origin = map[int]*kgo.Record{}
	}
	clear(b.origin)
	b.produce, b.produced, b.nextOrder = nil, 0, 0
}

// add queues a record for production and returns it; records point into
// the batch's slab, so production waits until the batch is complete.
func (b *batch) add(r kgo.Record) {
	b.recs = append(b.recs, r)
}

// abortTimeout bounds aborting a batch's transaction.
const abortTimeout = 10 * time.Second

// processBatch runs one transaction: forgets first, then orders, then the
// guarded commit. See doc.go.
func (p *Processor) processBatch(ctx context.Context, sess *kgo.GroupTransactSession, recs []*kgo.Record) (outcome, error) {
	start := time.Now()
	defer func() { p.m.BatchDuration.Observe(time.Since(start).Seconds()) }()
	b := &p.b
	b.reset()
	// Every path out of this function has waited for its records'
	// promises: no record points into an evicted subject any more.
	defer p.cache.wipeEvicted()

	if err := sess.Begin(); err != nil {
		return outcomeAborted, fmt.Errorf("%w: begin: %w", errSessionBroken, err)
	}
	var promise *producePromise
	abort := func(cause error) (outcome, error) {
		// The abort gets its own time: the cause may be that the batch's
		// deadline passed (a slow store), and an End cut short by its
		// context leaves the client unusable.
		actx, cancel := context.WithTimeout(context.WithoutCancel(ctx), abortTimeout)
		defer cancel()
		_, err := sess.End(actx, kgo.TryAbort)
		if promise != nil {
			promise.Err() // every record's promise has run: nothing touches the next batch
		}
		if err != nil {
			return outcomeAborted, fmt.Errorf("%w: abort: %w (after: %w)", errSessionBroken, err, cause)
		}
		p.m.Batches.WithLabelValues("aborted").Inc()
		p.count(func(s *Stats) { s.Batches++; s.Aborted++ })
		return outcomeAborted, cause
	}

	for _, r := range recs {
		switch r.Topic {
		case p.cfg.Topics.Forget:
			b.inForgets = append(b.inForgets, r)
		case p.cfg.Topics.Orders:
			b.inOrders = append(b.inOrders, r)
		}
	}
	if err := p.forgets(ctx, b, b.inForgets); err != nil {
		return abort(err)
	}
	if len(b.forgets) > 0 {
		p.failpoint("after-forget")
	}
	// Records go to the client as soon as they are complete (see
	// batch.produce); a failed batch aborts them with the transaction.
	promise = &producePromise{cl: sess.Client()}
	onProduced := promise.done
	b.produce = func(r *kgo.Record) {
		promise.wg.Add(1)
		sess.Produce(ctx, r, onProduced)
	}
	if err := p.orders(ctx, b, b.inOrders); err != nil {
		return abort(err)
	}
	if len(b.lookups) > 0 {
		p.failpoint("after-resolve")
	}

	for i := b.produced; i < len(b.recs); i++ {
		b.produce(&b.recs[i])
	}
	if err := sess.Client().Flush(ctx); err != nil {
		return abort(fmt.Errorf("flush: %w", err))
	}
	if err := promise.Err(); err != nil {
		p.blameTooLarge(b, promise.refused)
		return abort(fmt.Errorf("produce: %w", err))
	}

	// The guard excludes forgets until the Kafka commit is done, and tells
	// which subjects were forgotten since the last guard.
	g, err := p.storeGuard(ctx)
	if err != nil {
		return abort(err)
	}
	committedWithGuard := false
	defer func() {
		err := g.Release(context.WithoutCancel(ctx))
		switch {
		case err == nil:
		case committedWithGuard:
			// The guard was lost during the EndTxn round trip: a forget may
			// have completed before this commit landed. See doc.go.
			p.m.GuardLost.Inc()
			p.log.Error("store guard lost while committing; a concurrent forget may have completed first", "err", err)
		default:
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

	// A guard is lost with its connection (a killed backend, a restart):
	// check it right before committing, so that only the EndTxn round trip
	// itself remains exposed.
	if err := g.Check(ctx); err != nil {
		return abort(fmt.Errorf("store guard lost before commit: %w", err))
	}
	p.failpoint("before-commit")
	commitStart := time.Now()
	committed, err := sess.End(ctx, kgo.TryCommit)
	committedWithGuard = err == nil && committed
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
	p.clearTooLarge()
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
	if b.emitted > 0 {
		for _, sys := range p.systems {
			p.m.RecordsOut.WithLabelValues(sys).Add(float64(b.emitted))
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

// producePromise collects the outcome of a batch's produce calls: like
// kgo.AbortingFirstErrPromise it keeps the first error and aborts the
// buffered records at once. It also keeps the records refused as too large.
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

// Timestamps the pipeline accepts: the years 1 to 9999, which every store
// represents exactly. Others break the contract (and would overflow).
var (
	minMillis = time.Date(1, 1, 1, 0, 0, 0, 0, time.UTC).UnixMilli()
	maxMillis = time.Date(9999, 12, 31, 23, 59, 59, 999e6, time.UTC).UnixMilli()
)

func timeInRange(ms int64) bool { return ms >= minMillis && ms <= maxMillis }

// recordOverhead bounds what a record batch adds to one record's key,
// value and headers (batch header 61 bytes, record framing), and
// headerOverhead what each header adds (its two length varints).
const (
	recordOverhead = 128
	headerOverhead = 8
)

// recordSize bounds the size of a record batch that holds only r.
func recordSize(key, value []byte, hdrs []kgo.RecordHeader) int {
	size := len(key) + len(value) + recordOverhead
	for _, h := range hdrs {
		size += len(h.Key) + len(h.Value) + headerOverhead
	}
	return size
}

// limitOf returns the largest record batch that topic accepts as far as
// the processor knows: the producer's batch cap, or the topic's
// max.message.bytes if that is known and lower. known reports whether the
// topic's own limit is known.
func (p *Processor) limitOf(topic string) (limit int, known bool) {
	p.tooLargeMu.Lock()
	tl, known := p.topicLimits[topic]
	p.tooLargeMu.Unlock()
	limit = p.batchMax
	if known && tl < limit {
		limit = tl
	}
	return limit, known
}

// blameTooLarge decides which refused records are too large by themselves.
// The broker refuses whole record batches, so records that merely shared a
// batch with an oversized one are refused too: a record is blamed only when
// it cannot fit its topic's max.message.bytes on its own. When the limit is
// unknown, the largest refused record is blamed (one per attempt). When no
// record is too large by itself, the producer's batches are larger than the
// topic accepts: an operator must lower kafka.producer_batch_max_bytes or
// raise the topic's limit, and the batch is retried meanwhile.
func (p *Processor) blameTooLarge(b *batch, refused []*kgo.Record) {
	if len(refused) == 0 {
		return
	}
	var largest *kgo.Record
	blamed := 0
	for _, r := range refused {
		// The client refuses by itself any record larger than its batch
		// cap, whatever the topic accepts.
		limit, known := p.limitOf(r.Topic)
		switch {
		case recordSize(r.Key, r.Value, r.Headers) > limit:
			p.markTooLarge(b, r)
			blamed++
		case !known && (largest == nil || len(r.Value) > len(largest.Value)):
			largest = r
		}
	}
	switch {
	case blamed > 0:
	case largest != nil:
		p.markTooLarge(b, largest)
	default:
		limit, _ := p.limitOf(refused[0].Topic)
		p.log.Error("the broker refused a record batch as too large although each record fits: "+
			"lower kafka.producer_batch_max_bytes to the topic's max.message.bytes, or raise that limit",
			"topic", refused[0].Topic, "max_message_bytes", limit)
	}
}

// markTooLarge records the input of an output record that the broker (or
// the client's batch limit) refused as too large, so that the redone batch
// dead-letters it instead of retrying it for ever.
func (p *Processor) markTooLarge(b *batch, r *kgo.Record) {
	i := -1
	for j := range b.recs {
		if &b.recs[j] == r {
			i = j
			break
		}
	}
	nsys := len(p.systems)
	for k := range b.orders {
		o := &b.orders[k]
		if o.slot >= 0 && i >= o.slot && i < o.slot+nsys {
			p.tooLargeMu.Lock()
			if p.tooLarge == nil {
				p.tooLarge = map[inputRef]struct{}{}
			}
			p.tooLarge[inputRef{o.rec.Topic, o.rec.Partition, o.rec.Offset}] = struct{}{}
			p.tooLargeMu.Unlock()
			return
		}
	}
	// A dead letter or a confirmation. A dead letter is cut to fit the
	// limits the processor knows (see deadLetter), so the topic accepts
	// less than it said: the redone batch cuts it to deadLetterMinLimit.
	// A confirmation's request is dead-lettered by the redone batch.
	in, ok := b.origin[i]
	if !ok {
		p.log.Error("a record the batch did not queue was refused as too large", "topic", r.Topic)
		return
	}
	ref := inputRef{in.Topic, in.Partition, in.Offset}
	p.tooLargeMu.Lock()
	if r.Topic == p.cfg.Topics.Forgotten {
		if p.tooLarge == nil {
			p.tooLarge = map[inputRef]struct{}{}
		}
		p.tooLarge[ref] = struct{}{}
	} else {
		if p.cutDeadLetters == nil {
			p.cutDeadLetters = map[inputRef]struct{}{}
		}
		p.cutDeadLetters[ref] = struct{}{}
	}
	p.tooLargeMu.Unlock()
	p.log.Error("a dead letter or confirmation is too large for its topic; raise the topic's max.message.bytes", "topic", r.Topic)
}

// takeCutDeadLetter reports whether r's dead letter was refused as too
// large although it fitted the known limits.
func (p *Processor) takeCutDeadLetter(r *kgo.Record) bool {
	p.tooLargeMu.Lock()
	defer p.tooLargeMu.Unlock()
	_, ok := p.cutDeadLetters[inputRef{r.Topic, r.Partition, r.Offset}]
	return ok
}

// takeTooLarge reports whether r's output was refused as too large. Marks
// stay until a batch commits, so that two oversized events in one batch
// cannot take turns being retried.
func (p *Processor) takeTooLarge(r *kgo.Record) bool {
	p.tooLargeMu.Lock()
	defer p.tooLargeMu.Unlock()
	_, ok := p.tooLarge[inputRef{r.Topic, r.Partition, r.Offset}]
	return ok
}

// clearTooLarge drops the marks once a batch committed: its marked inputs
// are dead-lettered and committed, and inputs of partitions this instance
// lost are marked again by whichever batch meets them.
func (p *Processor) clearTooLarge() {
	p.tooLargeMu.Lock()
	clear(p.tooLarge)
	clear(p.cutDeadLetters)
	p.tooLargeMu.Unlock()
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
	p.setStoreOK(err == nil)
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
			"forgets after the backup must be repeated, see README",
			"seen_seq", p.pos.Seq, "store_seq", g.Seq())
	}
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
	p.pos = g.Position()
	return stale
}

// deadLetterMinLimit is the size a dead letter is cut to after its topic
// refused one that fitted every limit the processor knew of.
const deadLetterMinLimit = 8 << 10

// deadLetter queues the original record on topic with the reason headers.
// A dead letter that would not fit in one record batch of its topic (the
// producer's batch cap, or the topic's max.message.bytes) is cut to fit:
// header error.truncated holds the original value's size, and
// error.truncated_key the original key's if the key was cut too (it keeps
// at most half the room). So a dead letter can always be produced, and
// its partition never stalls on it.
func (p *Processor) deadLetter(b *batch, topic string, r *kgo.Record, class, msg string) {
	hdrs := []kgo.RecordHeader{
		{Key: "error.class", Value: []byte(class)},
		{Key: "error.message", Value: []byte(redact(msg))},
		{Key: "source.topic", Value: []byte(r.Topic)},
		{Key: "source.partition", Value: strconv.AppendInt(nil, int64(r.Partition), 10)},
		{Key: "source.offset", Value: strconv.AppendInt(nil, r.Offset, 10)},
	}
	key, value := r.Key, r.Value
	limit, _ := p.limitOf(topic)
	if p.takeCutDeadLetter(r) {
		limit = min(limit, deadLetterMinLimit)
	}
	truncated := recordSize(key, value, hdrs) > limit
	if truncated {
		cut := []kgo.RecordHeader{
			{Key: "error.truncated", Value: strconv.AppendInt(nil, int64(len(value)), 10)},
			{Key: "error.truncated_key", Value: strconv.AppendInt(nil, int64(len(key)), 10)},
		}
		room := max(limit-recordSize(nil, nil, append(hdrs, cut...)), 0)
		if len(key) > room/2 {
			key = key[:room/2]
			hdrs = append(hdrs, cut...)
		} else {
			hdrs = append(hdrs, cut[0])
		}
		value = value[:min(len(value), room-len(key))]
	}
	b.origin[len(b.recs)] = r
	b.add(kgo.Record{Topic: topic, Key: key, Value: value, Headers: hdrs})
	b.stats.DeadLetters++
	b.dlq = append(b.dlq, deadLettered{topic: r.Topic, class: class})
	p.log.Warn("dead-lettered a record", "topic", r.Topic, "partition", r.Partition, "offset", r.Offset, "class", class,
		"reason", redact(msg), "truncated", truncated)
}

// MaxIDBytes bounds customer_id in orders and subject_id and request_id in
// forget requests; longer ones break the contract. A confirmation echoes
// them, so this keeps every confirmation small.
const MaxIDBytes = 4096

// orders pseudonymizes the batch's order records.
func (p *Processor) orders(ctx context.Context, b *batch, recs []*kgo.Record) error {
	plan := p.cfg.Plan
	dlq := p.cfg.Topics.OrdersDeadLetter
	hits := 0
	// Unframe each record (Wire is used by one goroutine at a time), then
	// scan them in parallel, then decide in input order: dead letters,
	// cache lookups and the lookups for the store.
	for _, r := range recs {
		b.stats.OrdersIn++
		o := order{rec: r}
		if len(r.Value) > p.cfg.MaxRecordBytes {
			o.class, o.reason = schema.ClassTooLarge, fmt.Sprintf("record of %d bytes exceeds the limit of %d", len(r.Value), p.cfg.MaxRecordBytes)
		} else if p.takeTooLarge(r) {
			o.class, o.reason = schema.ClassTooLarge, "a pseudonymized copy exceeds the message size limit of its topic"
		} else if value, err := p.cfg.Wire.Order(ctx, r.Value); err != nil {
			re, ok := schema.AsRecordError(err)
			if !ok {
				return fmt.Errorf("decode order: %w", err)
			}
			o.class, o.reason = re.Class, re.Reason
		} else {
			o.value = value
		}
		b.orders = append(b.orders, o)
	}
	p.parallel(len(b.orders), func(lo, hi int) {
		for i := range b.orders[lo:hi] {
			o := &b.orders[lo+i]
			if o.class == "" {
				o.head, o.scanErr = plan.Scan(o.value)
			}
		}
	})
	// Compact b.orders in place to the valid records.
	n := 0
	for i := range b.orders {
		o := &b.orders[i]
		r, h := o.rec, &o.head
		switch {
		case o.class != "":
			p.deadLetter(b, dlq, r, o.class, o.reason)
			continue
		case o.scanErr != nil:
			p.deadLetter(b, dlq, r, schema.ClassDecode, o.scanErr.Error())
			continue
		}
		switch {
		case len(h.EventID) == 0:
			p.deadLetter(b, dlq, r, schema.ClassContract, "event_id is empty")
			continue
		case len(h.OrderID) == 0:
			p.deadLetter(b, dlq, r, schema.ClassContract, "order_id is empty")
			continue
		case len(h.CustomerID) == 0:
			p.deadLetter(b, dlq, r, schema.ClassContract, "customer_id is empty")
			continue
		case !timeInRange(h.OccurredAt):
			p.deadLetter(b, dlq, r, schema.ClassContract, "occurred_at is outside the years 1 to 9999")
			continue
		case len(h.CustomerID) > MaxIDBytes:
			// Its forget request would be refused (see forgets): a
			// subject that could not be forgotten gets no key.
			p.deadLetter(b, dlq, r, schema.ClassContract, fmt.Sprintf("customer_id is longer than %d bytes", MaxIDBytes))
			continue
		}
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
		if n != i {
			b.orders[n] = *o
		}
		n++
	}
	clear(b.orders[n:])
	b.orders = b.orders[:n]
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

	// Decide, in input order, which events are emitted; give each emitted
	// event len(systems) consecutive slots in b.recs, so that the outputs
	// keep the input order whichever worker fills them.
	nsys := len(p.systems)
	base := len(b.recs)
	for i := range b.orders {
		o := &b.orders[i]
		if o.subj == nil {
			o.subj = resolved[b.pending[string(o.head.CustomerID)]]
		}
		s := o.subj
		if o.head.OccurredAt <= s.forgottenAt {
			b.stats.Suppressed++
			o.slot = -1
			continue
		}
		if s.key == nil {
			return fmt.Errorf("store resolve: no key for a subject that needs one")
		}
		b.used[s.hash] = struct{}{}
		if s.pseudo == nil {
			// Once per cached key: every later event of the subject reuses
			// its pseudonyms as record keys and as its customer_id values.
			s.pk = p.d.Prepare(s.key)
			buf := make([]byte, 0, nsys*pseudonym.Size)
			for sys := range nsys {
				buf = plan.SubjectPseudonymKey(buf, sys, &s.pk, o.head.CustomerID, p.d)
			}
			s.pseudo = buf
		}
		o.slot = base + b.emitted*nsys
		b.emitted++
	}
	if b.emitted == 0 {
		return nil
	}
	b.recs = slices.Grow(b.recs, b.emitted*nsys)[:base+b.emitted*nsys]
	// b.recs does not move any more: hand over what precedes the outputs.
	if b.produce != nil {
		for ; b.produced < base; b.produced++ {
			b.produce(&b.recs[b.produced])
		}
	}
	b.stats.Out += b.emitted * nsys
	// Wire is used by one goroutine at a time: take the prefixes here.
	b.prefix = b.prefix[:0]
	for sys := range nsys {
		b.prefix = append(b.prefix, p.cfg.Wire.AppendOutputPrefix(nil, sys))
	}
	return p.project(b)
}

// project fills the output records of the batch's emitted events, in
// chunks of minShare events spread over up to p.workers goroutines, and
// hands each chunk's records to b.produce in input order as soon as it and
// every chunk before it are complete.
func (p *Processor) project(b *batch) error {
	n := min(p.workers, len(b.orders)/minShare)
	n = max(n, 1)
	for len(p.work) < n {
		p.work = append(p.work, &worker{d: pseudonym.NewDeriver()})
	}
	for _, w := range p.work[:n] {
		w.arena, w.hdrs = w.arena[:0], w.hdrs[:0]
	}
	nch := (len(b.orders) + minShare - 1) / minShare
	bounds := func(c int) (lo, hi int) { return c * minShare, min((c+1)*minShare, len(b.orders)) }
	if n == 1 {
		for c := range nch {
			lo, hi := bounds(c)
			if err := p.projectShare(p.work[0], b, b.orders[lo:hi]); err != nil {
				return err
			}
			p.emitOrders(b, hi)
		}
		return nil
	}
	type result struct {
		chunk int
		err   error
	}
	done := make(chan result, nch)
	var next atomic.Int64
	var wg sync.WaitGroup
	for _, w := range p.work[:n] {
		wg.Go(func() {
			for {
				c := int(next.Add(1) - 1)
				if c >= nch {
					return
				}
				lo, hi := bounds(c)
				done <- result{c, p.projectShare(w, b, b.orders[lo:hi])}
			}
		})
	}
	ready := make([]bool, nch)
	var err error
	for c := 0; c < nch; {
		r := <-done
		ready[r.chunk] = true
		if r.err != nil && err == nil {
			err = r.err
		}
		for ; c < nch && ready[c]; c++ {
			if err == nil {
				_, hi := bounds(c)
				p.emitOrders(b, hi)
			}
		}
	}
	wg.Wait()
	return err
}

// emitOrders hands the outputs of b.orders[b.nextOrder:hi] to b.produce.
func (p *Processor) emitOrders(b *batch, hi int) {
	if b.produce == nil {
		return
	}
	nsys := len(p.systems)
	for ; b.nextOrder < hi; b.nextOrder++ {
		if slot := b.orders[b.nextOrder].slot; slot >= 0 {
			for ; b.produced < slot+nsys; b.produced++ {
				b.produce(&b.recs[b.produced])
			}
		}
	}
}

// parallel calls f over [0, n) in contiguous shares, on up to p.workers
// goroutines (one share of at least minShare items each), and waits.
func (p *Processor) parallel(n int, f func(lo, hi int)) {
	k := max(min(p.workers, n/minShare), 1)
	if k == 1 {
		f(0, n)
		return
	}
	per := (n + k - 1) / k
	var wg sync.WaitGroup
	for i := range k {
		lo, hi := min(i*per, n), min((i+1)*per, n)
		wg.Go(func() { f(lo, hi) })
	}
	wg.Wait()
}

// projectShare writes the output records of orders, with w's Deriver and
// buffers. It only reads shared state, and writes only its events' slots.
func (p *Processor) projectShare(w *worker, b *batch, orders []order) error {
	plan := p.cfg.Plan
	for i := range orders {
		o := &orders[i]
		if o.slot < 0 {
			continue
		}
		s := o.subj
		for sys, topic := range p.topics {
			key := s.pseudo[sys*pseudonym.Size : (sys+1)*pseudonym.Size : (sys+1)*pseudonym.Size]
			start := len(w.arena)
			w.arena = append(w.arena, b.prefix[sys]...)
			var err error
			w.arena, err = plan.ProjectHead(w.arena, sys, o.value, &o.head, &s.pk, key, w.d)
			if err != nil {
				// Scan accepted the record, so this is a defect, not bad input.
				return fmt.Errorf("project for system %s: %w", p.systems[sys], err)
			}
			b.recs[o.slot+sys] = kgo.Record{
				Topic:   topic,
				Key:     key,
				Value:   w.arena[start:len(w.arena):len(w.arena)],
				Headers: w.allowedHeaders(p.headers[sys], o.rec.Headers),
			}
		}
	}
	return nil
}

// allowedHeaders returns the input headers that a system's policy names
// (allowed), in w's header slab.
func (w *worker) allowedHeaders(allowed map[string]bool, in []kgo.RecordHeader) []kgo.RecordHeader {
	if len(allowed) == 0 || len(in) == 0 {
		return nil
	}
	start := len(w.hdrs)
	for _, h := range in {
		if allowed[h.Key] {
			w.hdrs = append(w.hdrs, h)
		}
	}
	if len(w.hdrs) == start {
		return nil
	}
	return w.hdrs[start:len(w.hdrs):len(w.hdrs)]
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
			p.deadLetter(b, dlq, r, schema.ClassTooLarge, fmt.Sprintf("record of %d bytes exceeds the limit of %d", len(r.Value), p.cfg.MaxRecordBytes))
			continue
		}
		fr, err := p.cfg.Wire.Forget(ctx, r.Value)
		if err != nil {
			if re, ok := schema.AsRecordError(err); ok {
				p.deadLetter(b, dlq, r, re.Class, re.Reason)
				continue
			}
			return fmt.Errorf("decode forget request: %w", err)
		}
		switch {
		case fr.RequestID == "":
			p.deadLetter(b, dlq, r, schema.ClassContract, "request_id is empty")
			continue
		case fr.SubjectID == "":
			p.deadLetter(b, dlq, r, schema.ClassContract, "subject_id is empty")
			continue
		case !timeInRange(fr.RequestedAt.UnixMilli()):
			p.deadLetter(b, dlq, r, schema.ClassContract, "requested_at is outside the years 1 to 9999")
			continue
		case len(fr.SubjectID) > MaxIDBytes || len(fr.RequestID) > MaxIDBytes:
			// Its confirmation echoes both, the subject twice (key and
			// value): bounded IDs keep it far below any topic's limit.
			p.deadLetter(b, dlq, r, schema.ClassContract, fmt.Sprintf("subject_id or request_id is longer than %d bytes", MaxIDBytes))
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
		if p.takeTooLarge(valid[i]) {
			// Its confirmation was refused as too large: the request is
			// carried out (Forget above is idempotent), and dead-lettered
			// instead of confirmed, so the partition goes on.
			p.deadLetter(b, dlq, valid[i], schema.ClassTooLarge, "the forget request was carried out, but its confirmation exceeds the message size limit of the confirmation topic")
			continue
		}
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
		b.origin[len(b.recs)] = valid[i]
		b.add(kgo.Record{Topic: p.cfg.Topics.Forgotten, Key: []byte(req.SubjectID), Value: val})
		b.forgets = append(b.forgets, forgetDone{status: res.Status.String(), published: valid[i].Timestamp})
		p.log.Info("forget request confirmed", "partition", valid[i].Partition, "offset", valid[i].Offset, "status", res.Status.String())
	}
	return nil
}
