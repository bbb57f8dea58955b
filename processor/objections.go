package processor

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/hygiene/pseudonymizer/processor/pseudonym"
	"github.com/hygiene/pseudonymizer/schema"
	"github.com/hygiene/pseudonymizer/store"
)

// Objections
//
// A customer who objects to direct marketing, or withdraws consent, stops
// some systems (or all: "*") from getting their events, without being
// forgotten: the key stays, the other systems keep getting the same
// pseudonyms, and a withdrawal resumes delivery with the same pseudonyms.
//
// The states come from a compacted topic keyed by subject ID. The forget
// lane consumes it next to the forget requests (its own group and
// transactional session: an order batch never waits for it), and in each
// batch, after the forgets, Store.Object records the states in the key
// store next to the subjects' keys and returns only when the confirmations
// may follow (see doc.go, "Why a confirmed objection is enforced"). The
// confirmations and any erasure notices go out in the batch's transaction,
// with its offsets. The newest state by effective_at wins, so a replay of
// the topic (or of what compaction left of it) ends in the same states.
//
// In the order lane, Store.Resolve returns a subject's active objection
// with its key (one more column of the same read), and the cache keeps it
// next to the key, in a map of the few subjects that object (about 1% of
// active customers): a subject without one costs one flag test per event.
// An event that occurred at or after the objection's effective_at gets no
// output for the objected systems (its slot stays empty and is not handed
// to the client), counted in pseudonymizer_objected_events_total{system}.

// Objection limits: a state names at most maxObjectionSystems systems of at
// most maxSystemNameBytes each, so that its confirmation stays small.
const (
	maxObjectionSystems = 256
	maxSystemNameBytes  = 256
)

// HeaderObjectedAt is the header of an erasure notice sent because the
// subject objected to the system: the objection's effective_at truncated
// to the system's time unit, RFC 3339 in UTC with milliseconds; left out
// with drop_requested_at, like requested_at.
const HeaderObjectedAt = "objected_at"

// flagObjection is the slot flag (cache.go) of a subject with an active
// objection, whose state is in its generation's objs.
const flagObjection = flagPseudo << 1

// objectionState is a cached subject's active objection: its effective
// time in ms since the epoch and, per system in plan order, whether it
// objects to it.
type objectionState struct {
	at  int64
	sys []bool
}

// newObjectionState maps an objection to the plan's systems.
func newObjectionState(o *store.Objection, systems []string) objectionState {
	st := objectionState{at: o.EffectiveAt.UnixMilli(), sys: make([]bool, len(systems))}
	all := o.All()
	for i, name := range systems {
		st.sys[i] = all || slices.Contains(o.Systems, name)
	}
	return st
}

// objection returns the subject's objection state if an event that
// occurred at ms is covered by one.
func (s subject) objection(ms int64) (objectionState, bool) {
	if s.g.slot(s.i)[s.g.flagsAt]&flagObjection == 0 {
		return objectionState{}, false
	}
	st := s.g.objs[s.i]
	return st, ms >= st.at
}

// Objected answers the lookup API's question for one subject: whether an
// event of subjectID that occurred at at must not be sent to system. It
// reads the store (one Resolve, which creates the subject's key if it has
// none and at is after any tombstone), so it sees every objection whose
// confirmation was published.
func Objected(ctx context.Context, ks KeyStore, subjectID, system string, at time.Time) (bool, error) {
	entries, err := ks.Resolve(ctx, []store.Lookup{{SubjectID: subjectID, Latest: at}})
	if err != nil {
		return false, fmt.Errorf("objected: %w", err)
	}
	if len(entries) != 1 {
		return false, fmt.Errorf("objected: %d entries for one lookup", len(entries))
	}
	clear(entries[0].Key)
	return entries[0].Objection.Objects(system, at), nil
}

// objections records the objection states of a forget-lane batch and
// queues their confirmations and erasure notices, in three steps like
// forgets: admit, carry out (one Store.Object call), confirm.
func (p *Processor) objections(ctx context.Context, b *batch, recs []*kgo.Record) error {
	if len(recs) == 0 {
		return nil
	}
	reqs, valid, err := p.admitObjections(ctx, b, recs)
	if err != nil || len(reqs) == 0 {
		return err
	}
	results := make([]store.ObjectionResult, len(reqs))
	defer func() {
		for i := range results {
			clear(results[i].Key)
		}
	}()
	refused := make([]error, len(reqs))
	err = isolating(ctx, reqs, results, refused, "object", func(ctx context.Context, reqs []store.ObjectionRequest) ([]store.ObjectionResult, error) {
		t := time.Now()
		res, err := p.cfg.Store.Object(ctx, reqs)
		p.storeCall("object", t, err)
		if d := time.Since(t); d > slowForget {
			p.log.Warn("store object was slow; the key store waited for a lost guard's transaction to end, or is overloaded",
				"took", d.Round(time.Millisecond), "states", len(reqs))
		}
		if err == nil && len(res) != len(reqs) {
			for i := range res {
				clear(res[i].Key)
			}
			return nil, fmt.Errorf("store object: %d results for %d states", len(res), len(reqs))
		}
		return res, err
	})
	if err != nil {
		return err
	}
	p.failpoint("after-object")
	dlq := p.cfg.Topics.ObjectionsDeadLetter
	derived := false
	for i, req := range reqs {
		if refused[i] != nil {
			p.deadLetter(b, dlq, valid[i], schema.ClassRejected, refusedReason(refused[i]))
			p.log.Warn("objection state dead-lettered: the key store refused its data", "partition", valid[i].Partition, "offset", valid[i].Offset, "err", refused[i])
			continue
		}
		res := results[i]
		if p.takeTooLarge(valid[i]) {
			p.deadLetter(b, dlq, valid[i], schema.ClassTooLarge, "the objection state was recorded, but its confirmation exceeds the message size limit of the confirmation topic")
			continue
		}
		val, err := p.cfg.Wire.ObjectionConfirmation(&schema.ObjectionConfirmation{
			RequestID:   req.RequestID,
			SubjectID:   req.SubjectID,
			Status:      res.Status.String(),
			EffectiveAt: req.EffectiveAt,
			AppliedAt:   res.AppliedAt,
			Systems:     req.Systems,
			Superseded:  res.Superseded,
		})
		if err != nil {
			return fmt.Errorf("encode objection confirmation: %w", err)
		}
		b.origin[len(b.recs)] = valid[i]
		b.add(kgo.Record{Topic: p.cfg.Topics.ObjectionsApplied, Key: []byte(req.SubjectID), Value: val})
		status := res.Status.String()
		if res.Superseded {
			status = "SUPERSEDED"
		}
		b.objections = append(b.objections, status)
		p.log.Info("objection state confirmed", "partition", valid[i].Partition, "offset", valid[i].Offset,
			"status", res.Status.String(), "superseded", res.Superseded, "systems", len(req.Systems))
		if res.Key != nil && p.queueObjectionNotices(b, &req, res.Key) {
			derived = true
		}
	}
	if derived {
		p.fd.Reset() // its buffers held state derived from subject keys
	}
	return nil
}

// queueObjectionNotices queues an erasure notice for each system with
// notices on that the applied state objects to, and reports whether it
// derived any.
func (p *Processor) queueObjectionNotices(b *batch, req *store.ObjectionRequest, key []byte) bool {
	o := store.Objection{EffectiveAt: req.EffectiveAt, Systems: req.Systems}
	var pk pseudonym.Key
	derived := false
	plan := p.cfg.Plan
	for _, sys := range p.notices {
		if !o.All() && !slices.Contains(o.Systems, p.systems[sys]) {
			continue
		}
		if !derived {
			pk, derived = p.fd.Prepare(key), true
		}
		nk := p.cfg.Plan.SubjectPseudonymKey(make([]byte, 0, pseudonym.Size), sys, &pk, []byte(req.SubjectID), p.fd)
		// The header and the record time at the system's time unit, as a
		// forget's notice (notices.go): never finer than the policy allows.
		var hdrs []kgo.RecordHeader
		if !plan.DropRequestedAt(sys) {
			at := plan.NoticeTime(sys, req.EffectiveAt).UTC().Format(requestedAtLayout)
			hdrs = []kgo.RecordHeader{{Key: HeaderObjectedAt, Value: []byte(at)}}
		}
		b.add(kgo.Record{Topic: p.topics[sys], Key: nk, Headers: hdrs, Timestamp: plan.NoticeTime(sys, b.start)})
		if b.notices == nil {
			b.notices = map[int]int{}
		}
		b.notices[sys]++
	}
	if derived {
		pk.Wipe()
	}
	return derived
}

// admitObjections returns the states that keep the contract and their
// records; the others are dead-lettered. A tombstone (null value) is the
// state "no objection", effective at the record's timestamp.
func (p *Processor) admitObjections(ctx context.Context, b *batch, recs []*kgo.Record) (reqs []store.ObjectionRequest, valid []*kgo.Record, err error) {
	dlq := p.cfg.Topics.ObjectionsDeadLetter
	for _, r := range recs {
		b.stats.ObjectionsIn++
		if len(r.Value) > p.cfg.MaxRecordBytes || len(r.Key) > MaxIDBytes {
			p.deadLetter(b, dlq, r, schema.ClassTooLarge, fmt.Sprintf("record of %d bytes (key %d) exceeds the limit of %d (key %d)", len(r.Value), len(r.Key), p.cfg.MaxRecordBytes, MaxIDBytes))
			continue
		}
		var req store.ObjectionRequest
		if r.Value == nil {
			if reason := idBreaksContract("the record key (subject_id) of a tombstone", string(r.Key)); reason != "" {
				p.deadLetter(b, dlq, r, schema.ClassContract, reason)
				continue
			}
			req = store.ObjectionRequest{SubjectID: string(r.Key), EffectiveAt: r.Timestamp.UTC().Truncate(time.Millisecond), Systems: []string{}}
		} else {
			st, err := p.cfg.Wire.Objection(ctx, r.Value)
			if err != nil {
				if re, ok := schema.AsRecordError(err); ok {
					p.deadLetter(b, dlq, r, re.Class, re.Reason)
					continue
				}
				return nil, nil, fmt.Errorf("decode objection state: %w", err)
			}
			if reason := objectionBreaksContract(st, r.Key); reason != "" {
				p.deadLetter(b, dlq, r, schema.ClassContract, reason)
				continue
			}
			req = store.ObjectionRequest{RequestID: st.RequestID, SubjectID: st.SubjectID, EffectiveAt: st.EffectiveAt.UTC(), Systems: st.Systems}
		}
		req.WithKey = len(p.notices) > 0
		reqs = append(reqs, req)
		valid = append(valid, r)
	}
	return reqs, valid, nil
}

// idBreaksContract returns why an ID breaks the contract (empty, too long,
// not UTF-8, a NUL byte), or "". what names it in the reason.
func idBreaksContract(what, id string) string {
	switch {
	case id == "":
		return what + " is empty"
	case len(id) > MaxIDBytes:
		return fmt.Sprintf("%s is longer than %d bytes", what, MaxIDBytes)
	case !utf8.ValidString(id):
		return what + " is not valid UTF-8"
	case strings.IndexByte(id, 0) >= 0:
		return what + " contains a NUL byte"
	}
	return ""
}

// objectionBreaksContract returns why a decoded objection state breaks
// the contract, or "". key is its record key, which must be the
// subject_id: compaction keeps one state per key.
func objectionBreaksContract(st *schema.ObjectionState, key []byte) string {
	if reason := idBreaksContract("subject_id", st.SubjectID); reason != "" {
		return reason
	}
	if reason := idBreaksContract("request_id", st.RequestID); reason != "" {
		return reason
	}
	switch {
	case string(key) != st.SubjectID:
		return "the record key is not the subject_id (the topic is compacted by subject)"
	case !timeInRange(st.EffectiveAt.UnixMilli()):
		return "effective_at is outside the years 1 to 9999"
	case len(st.Systems) > maxObjectionSystems:
		return fmt.Sprintf("systems lists more than %d systems", maxObjectionSystems)
	}
	for _, s := range st.Systems {
		if len(s) > maxSystemNameBytes {
			return fmt.Sprintf("a system name is longer than %d bytes", maxSystemNameBytes)
		}
		if reason := idBreaksContract("a system name", s); reason != "" {
			return reason
		}
	}
	return ""
}
