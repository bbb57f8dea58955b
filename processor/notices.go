package processor

import (
	"context"
	"errors"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/hygiene/pseudonymizer/processor/pseudonym"
	"github.com/hygiene/pseudonymizer/store"
)

// Erasure notices
//
// A system with erasure_notices on receives, for each subject with a key
// that is forgotten, a tombstone on its output topic: a record with a null
// value, keyed by the subject's customer pseudonym in that system (the key
// of every record it got for the subject), with the header requested_at
// truncated to the system's time unit (policy.Plan.NoticeTime; left off
// with drop_requested_at) and the batch's start, truncated likewise, as
// its record timestamp: two systems' notices share no time finer than
// their policies allow.
// It is queued in the transaction of the confirmation, so it is committed
// with it, exactly once in effect.
//
// The pseudonym derives from the key that Forget destroys. So while some
// system has notices on, every forget request asks the store to Retain the
// destroyed key (still wrapped by the KEK, with the request's partition
// and offset) and to return it: on the first call, and on every
// repetition until it is settled, so a batch that is aborted and redone
// after the store committed (a failed produce or EndTxn, a rebalance, a
// crash) derives the same notices again. The key is wiped as soon as the
// notices are derived. Once the batch's transaction committed, one
// Store.Settle call releases the batch's retained keys. An instance that
// stops between its Kafka commit and Settle leaves its keys behind; every
// instance sweeps them (Store.SettleCommitted with the group's committed
// offsets of the request topic: a request below them was committed, with
// its notices) after its first commit and then at most every sweepEvery
// after a commit. A key is thus retained from its forget until right after
// the commit of its confirmation, or, after a crash, until the next sweep
// of any instance that commits (the gauge retained_forget_keys shows the
// count at the last sweep).
//
// No system gets anything of another's: a notice carries only that
// system's own pseudonym, and a header whose value the request's
// confirmation carries too.

// HeaderRequestedAt is the header of an erasure notice: the forget
// request's requested_at truncated to the system's time unit, RFC 3339 in
// UTC with milliseconds.
const HeaderRequestedAt = "requested_at"

// requestedAtLayout formats HeaderRequestedAt.
const requestedAtLayout = "2006-01-02T15:04:05.000Z07:00"

// sweepEvery is the least time between two sweeps of retained keys.
const sweepEvery = time.Minute

// settleTimeout bounds a Settle or a sweep after a commit.
const settleTimeout = 10 * time.Second

// sweepState is when this instance last swept retained keys.
type sweepState struct {
	last time.Time
}

// queueNotices queues the erasure notices of the requests whose Forget
// returned a retained key, once per request, and takes the key (results'
// keys are wiped by the caller). The batch settles those requests after
// its commit.
func (p *Processor) queueNotices(b *batch, reqs []store.ForgetRequest, results []store.ForgetResult) {
	var seen map[string]bool
	derived := false
	for i, res := range results {
		if res.Key == nil {
			continue
		}
		req := reqs[i]
		id := req.RequestID + "\x00" + req.SubjectID
		if seen[id] {
			continue // the same request twice in one batch
		}
		if seen == nil {
			seen = map[string]bool{}
		}
		seen[id] = true
		b.settle = append(b.settle, req)
		if len(p.notices) == 0 {
			continue
		}
		derived = true
		pk := p.fd.Prepare(res.Key)
		for _, sys := range p.notices {
			plan := p.cfg.Plan
			key := plan.SubjectPseudonymKey(make([]byte, 0, pseudonym.Size), sys, &pk, []byte(req.SubjectID), p.fd)
			var hdrs []kgo.RecordHeader
			if !plan.DropRequestedAt(sys) {
				at := plan.NoticeTime(sys, req.RequestedAt).UTC().Format(requestedAtLayout)
				hdrs = []kgo.RecordHeader{{Key: HeaderRequestedAt, Value: []byte(at)}}
			}
			b.add(kgo.Record{
				Topic:     p.topics[sys],
				Key:       key,
				Headers:   hdrs,
				Timestamp: plan.NoticeTime(sys, b.start),
			})
			if b.notices == nil {
				b.notices = map[int]int{}
			}
			b.notices[sys]++
		}
		pk.Wipe()
		p.log.Info("erasure notices queued", "partition", req.Partition, "offset", req.Offset, "systems", len(p.notices))
	}
	if derived {
		p.fd.Reset() // its buffers held state derived from the destroyed keys
	}
}

// wipeResultKeys wipes the keys that Forget returned.
func wipeResultKeys(results []store.ForgetResult) {
	for i := range results {
		clear(results[i].Key)
		results[i].Key = nil
	}
}

// settleNotices runs after a batch committed: it counts the batch's
// notices, releases the keys retained for them and, when due, sweeps the
// keys retained by requests the group has committed. A failure only
// leaves keys retained until a later sweep; it is logged and counted.
func (p *Processor) settleNotices(ctx context.Context, cl *kgo.Client, b *batch) {
	for sys, n := range b.notices {
		p.m.ErasureNotices.WithLabelValues(p.systems[sys]).Add(float64(n))
	}
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), settleTimeout)
	defer cancel()
	if len(b.settle) > 0 {
		t := time.Now()
		err := p.cfg.Store.Settle(ctx, b.settle)
		p.storeCall("settle", t, err)
		if err != nil {
			p.m.SettleErrors.Inc()
			p.log.Warn("releasing retained keys after commit failed; a later sweep releases them", "err", err, "requests", len(b.settle))
		}
	}
	// Sweep after the first commit of the process (also without notices:
	// a configuration that turned them off leaves no key behind), then
	// at most every sweepEvery while notices are on.
	now := p.cfg.Now()
	if !p.sweep.last.IsZero() && (len(p.notices) == 0 || now.Sub(p.sweep.last) < sweepEvery) {
		return
	}
	p.sweep.last = now
	p.sweepRetained(ctx, kadm.NewClient(cl))
}

// sweepRetained releases the keys retained for requests below the group's
// committed offsets of the request topic (the forget lane's group).
func (p *Processor) sweepRetained(ctx context.Context, adm *kadm.Client) {
	offs, err := adm.FetchOffsets(ctx, p.cfg.ForgetGroupID)
	if errors.Is(err, kerr.GroupIDNotFound) {
		// A group that never committed (the first start, or a broker that
		// has not seen it yet): nothing is below a committed offset, but
		// the sweep still counts what stays retained.
		offs, err = nil, nil
	}
	if err != nil {
		p.m.SettleErrors.Inc()
		p.log.Warn("sweeping retained keys: fetching the group's offsets failed", "err", err)
		return
	}
	committed := map[int32]int64{}
	offs.Each(func(o kadm.OffsetResponse) {
		if o.Err == nil && o.Topic == p.cfg.Topics.Forget && o.At >= 0 {
			committed[o.Partition] = o.At
		}
	})
	t := time.Now()
	n, err := p.cfg.Store.SettleCommitted(ctx, committed)
	p.storeCall("settle", t, err)
	if err != nil {
		p.m.SettleErrors.Inc()
		p.log.Warn("sweeping retained keys failed", "err", err)
		return
	}
	p.m.RetainedKeys.Set(float64(n))
	if n > 0 {
		p.log.Debug("keys retained for erasure notices of uncommitted requests", "count", n)
	}
}
