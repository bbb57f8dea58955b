package processor

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/hygiene/pseudonymizer/processor/policy"
	"github.com/hygiene/pseudonymizer/schema"
	"github.com/hygiene/pseudonymizer/store"
)

// orders prepares the batch's order records, in the first three of the
// order step's four: admit (unframe, scan, check the contract, look up the
// cache), resolve (the cache misses, in one store call) and assign
// (suppress or give output slots, in input order). The fourth, project
// (project.go: fill the slots, in parallel), runs under the store guard
// (txn.guarded).
func (p *Processor) orders(ctx context.Context, b *batch, recs []*kgo.Record) error {
	b.start = p.cfg.Now()
	if err := p.admit(ctx, b, recs); err != nil {
		return err
	}
	resolved, err := p.resolve(ctx, b)
	if err != nil {
		return err
	}
	return p.assign(b, resolved)
}

// admit fills b.orders with the records that keep the contract, each with
// its subject if the cache has a usable one, and b.lookups with the
// subjects to resolve; the others are dead-lettered.
func (p *Processor) admit(ctx context.Context, b *batch, recs []*kgo.Record) error {
	if err := p.unframe(ctx, b, recs); err != nil {
		return err
	}
	p.scan(b)
	// Decide in input order: dead letters, cache hits and the lookups for
	// the store; compact b.orders in place to the valid records.
	dlq := p.cfg.Topics.OrdersDeadLetter
	hits, n := 0, 0
	for i := range b.orders {
		o := &b.orders[i]
		switch {
		case o.class != "":
		case o.scanErr != nil:
			o.class, o.reason = schema.ClassDecode, o.scanErr.Error()
		default:
			if reason := breaksContract(&o.head); reason != "" {
				o.class, o.reason = schema.ClassContract, reason
			}
		}
		if o.class != "" {
			p.deadLetter(b, dlq, o.rec, o.class, o.reason)
			continue
		}
		if p.lookup(b, o) {
			hits++
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
	return nil
}

// unframe appends each record to b.orders as bare Avro of the bundled
// schema, or marks it for the dead-letter topic. The Wire is used by one
// goroutine at a time, hence this sequential pass.
func (p *Processor) unframe(ctx context.Context, b *batch, recs []*kgo.Record) error {
	if pf, ok := p.cfg.Wire.(schema.Prefetcher); ok {
		if err := pf.PrefetchOrders(ctx, b.values(recs, p.cfg.MaxRecordBytes)); err != nil {
			return fmt.Errorf("look up order schemas: %w", err)
		}
	}
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
	return nil
}

// scan validates the unframed orders and locates their IDs and top-level
// fields, in parallel.
func (p *Processor) scan(b *batch) {
	plan := p.cfg.Plan
	p.parallel(len(b.orders), func(w *worker, lo, hi int) {
		for i := range b.orders[lo:hi] {
			o := &b.orders[lo+i]
			switch {
			case o.class != "":
			case p.pii != nil:
				// The PII guard's first look, in the same pass (pii.go).
				p.pii.scanOrder(p.pii.workerOf(w), o)
			default:
				o.head, o.scanErr = plan.Scan(o.value)
			}
		}
	})
}

// breaksContract returns why a scanned order breaks the contract, or "".
// Every ID must be a usable identifier (idProblem): the scan checked that
// strings are valid UTF-8, but not for NUL bytes, and in registry mode a
// writer schema's bytes field is promoted to the bundled string.
func breaksContract(h *policy.Head) string {
	switch {
	case !timeInRange(h.OccurredAt):
		return "occurred_at is outside the years 1 to 9999"
	}
	for _, f := range [...]struct {
		name string
		id   []byte
	}{{"event_id", h.EventID}, {"order_id", h.OrderID}, {"customer_id", h.CustomerID}} {
		// A customer_id too long for its forget request would make a
		// subject that cannot be forgotten: it gets no key.
		if reason := idProblem(f.name, f.id); reason != "" {
			return reason
		}
	}
	return ""
}

// lookup gives o its cached subject and reports true, or queues its
// subject for the store (once per subject, with its latest event).
func (p *Processor) lookup(b *batch, o *order) bool {
	h := &o.head
	if s, ok := p.cache.get(h.CustomerID); ok && !s.needsKey(h.OccurredAt) {
		o.subj = s
		return true
	}
	at := time.UnixMilli(h.OccurredAt)
	if i, ok := b.pending[string(h.CustomerID)]; ok {
		if at.After(b.lookups[i].Latest) {
			b.lookups[i].Latest = at
		}
		return false
	}
	id := string(h.CustomerID)
	b.pending[id] = len(b.lookups)
	b.lookups = append(b.lookups, store.Lookup{SubjectID: id, Latest: at})
	b.lookupIDs = append(b.lookupIDs, h.CustomerID)
	return false
}

// resolve resolves b.lookups in one store call (one more write
// transaction if some need a fresh key) and caches the subjects; the
// result is in b.lookups order.
func (p *Processor) resolve(ctx context.Context, b *batch) ([]subject, error) {
	if len(b.lookups) == 0 {
		return nil, nil
	}
	t := time.Now()
	entries, err := p.cfg.Store.Resolve(ctx, b.lookups)
	p.storeCall("resolve", t, err)
	var refused []error
	if errors.Is(err, store.ErrRejected) {
		// Some subject's data was refused: find it, dead-letter its
		// orders, and resolve the others (see resolveIsolating).
		entries, refused = make([]store.Entry, len(b.lookups)), make([]error, len(b.lookups))
		err = p.resolveIsolating(ctx, b.lookups, entries, refused)
	}
	if err != nil {
		return nil, fmt.Errorf("store resolve: %w", err)
	}
	if len(entries) != len(b.lookups) {
		return nil, fmt.Errorf("store resolve: %d entries for %d lookups", len(entries), len(b.lookups))
	}
	resolved := b.resolved[:0]
	for i := range entries {
		if refused != nil && refused[i] != nil {
			resolved = append(resolved, subject{})
			continue
		}
		resolved = append(resolved, p.cache.put(b.lookupIDs[i], &entries[i]))
		// The cache keeps its own copy: the store's may go.
		clear(entries[i].Key)
	}
	b.resolved = resolved
	if refused != nil {
		p.dropRefusedOrders(b, refused)
	}
	return resolved, nil
}

// resolveIsolating resolves lookups into entries, halving the calls that
// the store refuses for their data (store.ErrRejected) down to the single
// lookups at fault, whose errors it puts in refused. Resolve changes
// nothing but creating keys, each durable before it returns, so a refused
// call leaves nothing half done. Any other error is returned.
func (p *Processor) resolveIsolating(ctx context.Context, lookups []store.Lookup, entries []store.Entry, refused []error) error {
	t := time.Now()
	res, err := p.cfg.Store.Resolve(ctx, lookups)
	p.storeCall("resolve", t, err)
	switch {
	case err == nil:
		if len(res) != len(lookups) {
			return fmt.Errorf("%d entries for %d lookups", len(res), len(lookups))
		}
		copy(entries, res)
		return nil
	case !errors.Is(err, store.ErrRejected):
		return err
	case len(lookups) == 1:
		refused[0] = err
		return nil
	}
	mid := len(lookups) / 2
	if err := p.resolveIsolating(ctx, lookups[:mid], entries[:mid], refused[:mid]); err != nil {
		return err
	}
	return p.resolveIsolating(ctx, lookups[mid:], entries[mid:], refused[mid:])
}

// dropRefusedOrders dead-letters (class rejected) the orders whose
// subject the store refused and removes them from b.orders.
func (p *Processor) dropRefusedOrders(b *batch, refused []error) {
	n := 0
	for i := range b.orders {
		o := &b.orders[i]
		if !o.subj.valid() {
			if err := refused[b.pending[string(o.head.CustomerID)]]; err != nil {
				p.deadLetter(b, p.cfg.Topics.OrdersDeadLetter, o.rec, schema.ClassRejected, refusedReason(err))
				p.log.Warn("order dead-lettered: the key store refused its data", "partition", o.rec.Partition, "offset", o.rec.Offset, "err", err)
				continue
			}
		}
		if n != i {
			b.orders[n] = *o
		}
		n++
	}
	clear(b.orders[n:])
	b.orders = b.orders[:n]
}

// assign decides, in input order, which events are emitted and which are
// suppressed, and gives each emitted event len(systems) consecutive slots
// in b.recs, so that the outputs keep the input order whichever worker
// fills them. It derives the customer pseudonyms of the subjects that
// have none yet (once per cached key, in parallel), and hands the records
// before the slots to the client.
func (p *Processor) assign(b *batch, resolved []subject) error {
	nsys := len(p.systems)
	base := len(b.recs)
	for i := range b.orders {
		o := &b.orders[i]
		if !o.subj.valid() {
			o.subj = resolved[b.pending[string(o.head.CustomerID)]]
		}
		s := o.subj
		if s.suppresses(o.head.OccurredAt) {
			b.stats.Suppressed++
			o.slot = -1
			continue
		}
		if s.key() == nil {
			return fmt.Errorf("store resolve: no key for a subject that needs one")
		}
		o.used = true
		if st, ok := s.objection(o.head.OccurredAt); ok {
			// Its slots of the objected systems stay empty (project).
			o.objected = true
			if b.objected == nil {
				b.objected = make([]int, nsys)
			}
			for sys, objects := range st.sys {
				if objects {
					b.objected[sys]++
					b.stats.Objected++
				}
			}
		}
		if _, ok := s.pseudonyms(); !ok {
			j, queued := b.deriving[s]
			if !queued {
				j = int32(len(b.derive))
				b.deriving[s] = j
				b.derive = append(b.derive, o)
			}
			o.key = j + 1
		}
		o.slot = base + b.emitted*nsys
		b.emitted++
	}
	if b.emitted == 0 {
		return nil
	}
	p.deriveSubjects(b)
	b.recs = slices.Grow(b.recs, b.emitted*nsys)[:base+b.emitted*nsys]
	// b.recs does not move any more: hand over what precedes the outputs.
	b.handOver(base)
	b.stats.Out += b.emitted*nsys - b.stats.Objected
	return nil
}

// deriveSubjects derives the customer pseudonyms of the subjects of
// b.derive (one order each, distinct subjects), in parallel: every later
// event of a subject reuses them as record keys and customer_id values.
// The prepared keys stay in b.keys for the projection of this batch.
func (p *Processor) deriveSubjects(b *batch) {
	b.keys = slices.Grow(b.keys[:0], len(b.derive))[:len(b.derive)]
	p.parallel(len(b.derive), func(w *worker, lo, hi int) {
		for j, o := range b.derive[lo:hi] {
			s := o.subj
			pk := &b.keys[lo+j]
			*pk = w.d.Prepare(s.key())
			for sys := range p.systems {
				*s.pseudonym(sys) = p.cfg.Plan.SubjectUUID(sys, pk, o.head.CustomerID, w.d)
			}
			s.setPseudonyms()
		}
	})
}
