package processor

import (
	"context"
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
func breaksContract(h *policy.Head) string {
	switch {
	case len(h.EventID) == 0:
		return "event_id is empty"
	case len(h.OrderID) == 0:
		return "order_id is empty"
	case len(h.CustomerID) == 0:
		return "customer_id is empty"
	case !timeInRange(h.OccurredAt):
		return "occurred_at is outside the years 1 to 9999"
	case len(h.CustomerID) > MaxIDBytes:
		// Its forget request would be refused (see forgets): a subject
		// that could not be forgotten gets no key.
		return fmt.Sprintf("customer_id is longer than %d bytes", MaxIDBytes)
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
	if err != nil {
		return nil, fmt.Errorf("store resolve: %w", err)
	}
	if len(entries) != len(b.lookups) {
		return nil, fmt.Errorf("store resolve: %d entries for %d lookups", len(entries), len(b.lookups))
	}
	resolved := b.resolved[:0]
	for i := range entries {
		resolved = append(resolved, p.cache.put(b.lookupIDs[i], &entries[i]))
		// The cache keeps its own copy: the store's may go.
		clear(entries[i].Key)
	}
	b.resolved = resolved
	return resolved, nil
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
		b.used[*s.hash()] = struct{}{}
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
	b.stats.Out += b.emitted * nsys
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
