package processor

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/hygiene/pseudonymizer/schema"
	"github.com/hygiene/pseudonymizer/store"
)

// forgetCallTimeout bounds one Store.Forget call. It includes the store's
// wait for guards that were lost while their Kafka commit may have been
// under way (30s in the PostgreSQL store), with room to spare.
const forgetCallTimeout = 2 * time.Minute

// slowForget is the Store.Forget duration above which the forget lane logs
// that a confirmation waited (most likely for a lost guard).
const slowForget = 2 * time.Second

// forgetBatch runs one batch of the forget lane in one transaction: the
// forget step, then a commit. The transaction is begun first, so that an
// error rewinds the batch, but the client sends nothing to the broker
// before the step's records are handed over: the transaction timeout
// does not run while Store.Forget waits. No guard is needed, since no
// record of this lane is derived from a key.
func (p *Processor) forgetBatch(ctx context.Context, sess *kgo.GroupTransactSession, recs []*kgo.Record) (outcome, error) {
	start := time.Now()
	defer func() { p.m.BatchDuration.Observe(time.Since(start).Seconds()) }()
	b := &p.fb
	b.reset()
	t, err := p.beginTxn(ctx, sess, p.cfg.Topics.Forget)
	if err != nil {
		return outcomeAborted, err
	}
	// The step may wait long (see forgetCallTimeout); shutdown cancels
	// the wait and the redone batch resumes it.
	fctx, fcancel := context.WithTimeout(ctx, forgetCallTimeout)
	forgets, objections := p.splitForgetLane(b, recs)
	err = p.forgets(fctx, b, forgets)
	if err == nil {
		// After the forgets: a state and a forget of one subject in one
		// batch end the same in either order (see objections.go).
		err = p.objections(fctx, b, objections)
	}
	fcancel()
	if err != nil {
		return t.abort(err)
	}
	// The transaction's own time starts now, after any wait.
	bctx, cancel := p.batchContext(ctx)
	defer cancel()
	t.ctx = bctx
	b.send = t.produce
	if err := t.flush(b); err != nil {
		return t.abort(err)
	}
	o, err := t.commit(b, "forget-")
	if o == outcomeCommitted {
		p.clearTooLarge(p.cfg.Topics.Objections)
		// The notices are committed: release the keys retained for them.
		p.settleNotices(ctx, sess.Client(), b)
	}
	return o, err
}

// splitForgetLane sorts the forget lane's records into forget requests and
// objection states, keeping their order; b.inForgets holds the forget
// requests.
func (p *Processor) splitForgetLane(b *batch, recs []*kgo.Record) (forgets, objections []*kgo.Record) {
	for _, r := range recs {
		if r.Topic == p.cfg.Topics.Objections {
			objections = append(objections, r)
		} else {
			b.inForgets = append(b.inForgets, r)
		}
	}
	return b.inForgets, objections
}

// forgets destroys the keys of the batch's forget requests and queues their
// confirmations, in three steps: admit (decode, check the contract), carry
// out (one Store.Forget call) and confirm. Store.Forget returns only once
// no order batch that used a destroyed key can still commit (see doc.go),
// so the confirmations follow every such batch.
func (p *Processor) forgets(ctx context.Context, b *batch, recs []*kgo.Record) error {
	b.start = p.cfg.Now()
	if len(recs) == 0 {
		return nil
	}
	reqs, valid, err := p.admitForgets(ctx, b, recs)
	if err != nil || len(reqs) == 0 {
		return err
	}
	results := make([]store.ForgetResult, len(reqs))
	// Retained keys are wiped whatever happens next.
	defer wipeResultKeys(results)
	refused := make([]error, len(reqs))
	if err := p.forgetIsolating(ctx, reqs, results, refused); err != nil {
		return err
	}
	p.failpoint("after-forget")
	reqs, results, valid = p.dropRefused(b, reqs, results, valid, refused)
	if err := p.confirm(b, reqs, results, valid); err != nil {
		return err
	}
	p.queueNotices(b, reqs, results)
	return nil
}

// forgetIsolating carries out reqs with Store.Forget and fills results,
// one per request, isolating the requests the store refuses for their data
// (see isolating). Forget is atomic per call and idempotent per request
// ID, so a refused call changed nothing, and a request carried out by an
// earlier, refused attempt of this batch's retry is confirmed with the
// same status.
func (p *Processor) forgetIsolating(ctx context.Context, reqs []store.ForgetRequest, results []store.ForgetResult, refused []error) error {
	return isolating(ctx, reqs, results, refused, "forget", func(ctx context.Context, reqs []store.ForgetRequest) ([]store.ForgetResult, error) {
		t := time.Now()
		res, err := p.cfg.Store.Forget(ctx, reqs)
		p.storeCall("forget", t, err)
		if d := time.Since(t); d > slowForget {
			p.log.Warn("store forget was slow; the key store waited for a lost guard's transaction to end, or is overloaded",
				"took", d.Round(time.Millisecond), "requests", len(reqs))
		}
		if err == nil && len(res) != len(reqs) {
			wipeResultKeys(res)
			return nil, fmt.Errorf("store forget: %d results for %d requests", len(res), len(reqs))
		}
		return res, err
	})
}

// isolating carries out reqs with call (a store call that is atomic per
// call and idempotent per request) and fills results, one per request. A
// request that the store refuses for its data (store.ErrRejected: not an
// outage, retrying cannot help) is isolated by halving the calls that
// fail, and its error is put in refused instead: k such requests among n
// cost about 2k·log2(n) more calls, and only in a batch that has them.
// Any other error aborts the batch: a lane never stops for good on one
// record. call must return one result per request when it returns no
// error.
func isolating[Q, R any](ctx context.Context, reqs []Q, results []R, refused []error, what string, call func(context.Context, []Q) ([]R, error)) error {
	res, err := call(ctx, reqs)
	switch {
	case err == nil:
		copy(results, res)
		return nil
	case !errors.Is(err, store.ErrRejected):
		return fmt.Errorf("store %s: %w", what, err)
	case len(reqs) == 1:
		refused[0] = err
		return nil
	}
	mid := len(reqs) / 2
	if err := isolating(ctx, reqs[:mid], results[:mid], refused[:mid], what, call); err != nil {
		return err
	}
	return isolating(ctx, reqs[mid:], results[mid:], refused[mid:], what, call)
}

// dropRefused dead-letters the requests that the store refused (class
// rejected, with the store's reason, which names the cause and not the
// data) and returns the others, carried out, in order.
func (p *Processor) dropRefused(b *batch, reqs []store.ForgetRequest, results []store.ForgetResult, valid []*kgo.Record, refused []error) ([]store.ForgetRequest, []store.ForgetResult, []*kgo.Record) {
	n := 0
	for i := range reqs {
		if refused[i] != nil {
			p.deadLetter(b, p.cfg.Topics.ForgetDeadLetter, valid[i], schema.ClassRejected, refusedReason(refused[i]))
			p.log.Warn("forget request dead-lettered: the key store refused its data", "partition", valid[i].Partition, "offset", valid[i].Offset, "err", refused[i])
			continue
		}
		reqs[n], results[n], valid[n] = reqs[i], results[i], valid[i]
		n++
	}
	return reqs[:n], results[:n], valid[:n]
}

// refusedReason is the dead-letter reason of a record whose data the
// store refused. Stores keep input bytes out of store.ErrRejected's text.
func refusedReason(err error) string {
	return "the key store refused the record's data: " + err.Error()
}

// admitForgets returns the requests that keep the contract and their
// records; the others are dead-lettered.
func (p *Processor) admitForgets(ctx context.Context, b *batch, recs []*kgo.Record) (reqs []store.ForgetRequest, valid []*kgo.Record, err error) {
	dlq := p.cfg.Topics.ForgetDeadLetter
	if pf, ok := p.cfg.Wire.(schema.Prefetcher); ok {
		if err := pf.PrefetchForgets(ctx, b.values(recs, p.cfg.MaxRecordBytes)); err != nil {
			return nil, nil, fmt.Errorf("look up forget request schemas: %w", err)
		}
	}
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
			return nil, nil, fmt.Errorf("decode forget request: %w", err)
		}
		if reason := forgetBreaksContract(fr); reason != "" {
			p.deadLetter(b, dlq, r, schema.ClassContract, reason)
			continue
		}
		reqs = append(reqs, store.ForgetRequest{RequestID: fr.RequestID, SubjectID: fr.SubjectID, RequestedAt: fr.RequestedAt,
			// With erasure notices the store keeps the destroyed key until
			// this request's transaction is known committed (notices.go).
			Retain: len(p.notices) > 0, Partition: r.Partition, Offset: r.Offset})
		valid = append(valid, r)
	}
	return reqs, valid, nil
}

// forgetBreaksContract returns why a decoded forget request breaks the
// contract, or "".
func forgetBreaksContract(fr *schema.ForgetRequest) string {
	// A confirmation echoes both IDs, the subject twice (key and value):
	// bounded IDs keep it far below any topic's limit.
	if reason := idProblem("request_id", fr.RequestID); reason != "" {
		return reason
	}
	if reason := idProblem("subject_id", fr.SubjectID); reason != "" {
		return reason
	}
	if !timeInRange(fr.RequestedAt.UnixMilli()) {
		return "requested_at is outside the years 1 to 9999"
	}
	return ""
}

// confirm queues a confirmation per carried-out request (valid holds their
// records). The order lane drops the forgotten subjects from its cache at
// its next guard, like every other instance.
func (p *Processor) confirm(b *batch, reqs []store.ForgetRequest, results []store.ForgetResult, valid []*kgo.Record) error {
	dlq := p.cfg.Topics.ForgetDeadLetter
	for i, req := range reqs {
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
