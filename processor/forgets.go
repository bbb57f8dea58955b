package processor

import (
	"context"
	"fmt"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/hygiene/pseudonymizer/schema"
	"github.com/hygiene/pseudonymizer/store"
)

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
