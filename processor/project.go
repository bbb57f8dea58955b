package processor

import (
	"fmt"
	"sync"
	"sync/atomic"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/hygiene/pseudonymizer/processor/pseudonym"
)

// worker derives and projects a share of a batch's events. Each has its own
// Deriver and buffers, reused across batches; the output records point
// into its arena, so a worker's buffers are reused only by the next batch.
type worker struct {
	d     *pseudonym.Deriver
	pk    pseudonym.Key // the prepared key of the event being projected
	arena []byte
	hdrs  []kgo.RecordHeader
	pii   *piiWorker // the PII guard's state, if the guard is on
}

// minShare is the least number of events worth a goroutine of their own.
const minShare = 256

// project fills the output records of the batch's emitted events, in
// chunks of minShare events spread over up to p.workers goroutines, and
// hands each chunk's records to the client in input order as soon as it
// and every chunk before it are complete.
func (p *Processor) project(b *batch) error {
	n := max(min(p.workers, len(b.orders)/minShare), 1)
	if err := p.projectChunks(b); err != nil {
		return err
	}
	if p.pii != nil {
		p.collectPII(b, p.work[:n])
	}
	return nil
}

// projectChunks is project without the PII guard's collection.
func (p *Processor) projectChunks(b *batch) error {
	// The Wire is used by one goroutine at a time: take the prefixes here.
	b.prefix = b.prefix[:0]
	for sys := range p.systems {
		b.prefix = append(b.prefix, p.cfg.Wire.AppendOutputPrefix(nil, sys))
	}
	n := min(p.workers, len(b.orders)/minShare)
	n = max(n, 1)
	p.grow(n)
	for _, w := range p.work[:n] {
		w.arena, w.hdrs = w.arena[:0], w.hdrs[:0]
		if p.pii != nil {
			p.pii.reset(w)
		}
	}
	nch := (len(b.orders) + minShare - 1) / minShare
	bounds := func(c int) (lo, hi int) { return c * minShare, min((c+1)*minShare, len(b.orders)) }
	if n == 1 {
		for c := range nch {
			lo, hi := bounds(c)
			if err := p.projectShare(p.work[0], b, b.orders[lo:hi]); err != nil {
				return err
			}
			p.handOverOrders(b, hi)
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
				p.handOverOrders(b, hi)
			}
		}
	}
	wg.Wait()
	return err
}

// handOverOrders hands the outputs of b.orders[b.nextOrder:hi] to the
// client.
func (p *Processor) handOverOrders(b *batch, hi int) {
	nsys := len(p.systems)
	for ; b.nextOrder < hi; b.nextOrder++ {
		if slot := b.orders[b.nextOrder].slot; slot >= 0 {
			b.handOver(slot + nsys)
		}
	}
}

// grow makes sure p.work has n workers.
func (p *Processor) grow(n int) {
	for len(p.work) < n {
		p.work = append(p.work, &worker{d: pseudonym.NewDeriver()})
	}
}

// parallel calls f over [0, n) in contiguous shares, on up to p.workers
// goroutines (one share of at least minShare items each), each with a
// worker of its own, and waits. f may use the worker's Deriver, not its
// buffers (the records of project point into them).
func (p *Processor) parallel(n int, f func(w *worker, lo, hi int)) {
	k := max(min(p.workers, n/minShare), 1)
	p.grow(k)
	if k == 1 {
		f(p.work[0], 0, n)
		return
	}
	per := (n + k - 1) / k
	var wg sync.WaitGroup
	for i := range k {
		lo, hi := min(i*per, n), min((i+1)*per, n)
		w := p.work[i]
		wg.Go(func() { f(w, lo, hi) })
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
		pk := &w.pk
		if o.key > 0 {
			pk = &b.keys[o.key-1] // prepared when its pseudonyms were derived
		} else {
			w.pk = w.d.Prepare(s.key())
		}
		var objecting objectionState
		if o.objected {
			objecting, _ = s.objection(o.head.OccurredAt)
		}
		found := false
		if p.pii != nil && o.piiFound {
			var err error
			if found, err = p.pii.check(w.pii, o); err != nil {
				w.pk.Wipe()
				return err
			}
		}
		for sys, topic := range p.topics {
			if o.objected && objecting.sys[sys] {
				b.recs[o.slot+sys] = kgo.Record{} // not handed over (batch.handOver)
				continue
			}
			value, head := o.value, &o.head
			if found {
				drop, redacted, h, err := p.pii.decide(w.pii, o, sys)
				switch {
				case err != nil:
					w.pk.Wipe()
					return fmt.Errorf("project for system %s: %w", p.systems[sys], err)
				case drop:
					b.recs[o.slot+sys] = kgo.Record{} // not handed over (batch.handOver)
					continue
				case redacted != nil:
					value, head = redacted, &h
				}
			}

			// The record key, the customer's pseudonym, goes first; the
			// value repeats it as customer_id.
			start := len(w.arena)
			w.arena = s.pseudonym(sys).Append(w.arena)
			key := w.arena[start:len(w.arena):len(w.arena)]
			vstart := len(w.arena)
			w.arena = append(w.arena, b.prefix[sys]...)
			var err error
			w.arena, err = plan.ProjectHead(w.arena, sys, value, head, pk, key, w.d)
			if err != nil {
				w.pk.Wipe()
				// Scan accepted the record, so this is a defect, not bad input.
				return fmt.Errorf("project for system %s: %w", p.systems[sys], err)
			}
			b.recs[o.slot+sys] = kgo.Record{
				Topic:     topic,
				Key:       key,
				Value:     w.arena[vstart:len(w.arena):len(w.arena)],
				Headers:   w.allowedHeaders(p.headers[sys], o.rec.Headers),
				Timestamp: plan.RecordTime(sys, o.head.OccurredAt, b.start),
			}
		}
		if found {
			w.pii.sampled(o.rec)
		}
	}
	w.pk.Wipe()
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
