package embedded

import (
	"context"
	"encoding/binary"
	"fmt"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/hygiene/pseudonymizer/store"
)

var _ store.Objector = (*Store)(nil)

// Objection buckets (layout 4).
var (
	// bucketObjections maps a subject hash to its objection state
	// (encodeObjection), also a withdrawn one.
	bucketObjections = []byte("objections")
	// bucketObjectionLog maps a request hash (store.ObjectionResultKey) to
	// the carried-out request (encodeObjectionRecord).
	bucketObjectionLog = []byte("objection_log")
	// bucketObjectionHistory orders the objection log by application: its
	// keys are the time (8 bytes) followed by the request hash.
	bucketObjectionHistory = []byte("objection_history")
)

// encodeObjection: effective_at (8), recorded_at (8), then the request ID
// and the systems as strings (appendStrings).
func encodeObjection(o *store.Objection) []byte {
	b := putTime(nil, o.EffectiveAt)
	b = putTime(b, o.RecordedAt)
	return appendStrings(b, append([]string{o.RequestID}, o.Systems...))
}

func decodeObjection(v []byte) (*store.Objection, bool) {
	if len(v) < 16 {
		return nil, false
	}
	ss, ok := readStrings(v[16:])
	if !ok || len(ss) == 0 {
		return nil, false
	}
	return &store.Objection{EffectiveAt: getTime(v), RecordedAt: getTime(v[8:]), RequestID: ss[0], Systems: ss[1:]}, true
}

// encodeObjectionRecord: status (1), superseded (1), applied_at (8),
// effective_at (8), subject (32), then the request ID and the systems.
func encodeObjectionRecord(r *store.ObjectionRecord) []byte {
	b := []byte{byte(r.Status), 0}
	if r.Superseded {
		b[1] = 1
	}
	b = putTime(b, r.AppliedAt)
	b = putTime(b, r.EffectiveAt)
	b = append(b, r.Subject[:]...)
	return appendStrings(b, append([]string{r.RequestID}, r.Systems...))
}

func decodeObjectionRecord(v []byte) (store.ObjectionRecord, bool) {
	if len(v) < 50 {
		return store.ObjectionRecord{}, false
	}
	ss, ok := readStrings(v[50:])
	if !ok || len(ss) == 0 {
		return store.ObjectionRecord{}, false
	}
	return store.ObjectionRecord{
		Status: store.ObjectionStatus(v[0]), Superseded: v[1] == 1,
		AppliedAt: getTime(v[2:]), EffectiveAt: getTime(v[10:]), Subject: store.SubjectHash(v[18:50]),
		RequestID: ss[0], Systems: ss[1:],
	}, true
}

// appendStrings appends a count and each string with its length, as
// uvarints.
func appendStrings(b []byte, ss []string) []byte {
	b = binary.AppendUvarint(b, uint64(len(ss)))
	for _, s := range ss {
		b = binary.AppendUvarint(b, uint64(len(s)))
		b = append(b, s...)
	}
	return b
}

func readStrings(b []byte) ([]string, bool) {
	n, w := binary.Uvarint(b)
	if w <= 0 || n > uint64(len(b)) {
		return nil, false
	}
	b = b[w:]
	ss := make([]string, 0, n)
	for range n {
		l, w := binary.Uvarint(b)
		if w <= 0 || l > uint64(len(b)-w) {
			return nil, false
		}
		ss = append(ss, string(b[w:w+int(l)]))
		b = b[w+int(l):]
	}
	return ss, true
}

// readObjection returns the subject's active objection state from tx, or
// nil.
func readObjection(tx *bolt.Tx, h store.SubjectHash) *store.Objection {
	b := tx.Bucket(bucketObjections)
	if b == nil {
		return nil
	}
	v := b.Get(h[:])
	if v == nil {
		return nil
	}
	o, ok := decodeObjection(v)
	if !ok || !o.Active() {
		return nil
	}
	return o
}

// Object applies the requests in order in one write transaction, holding
// the guard lock exclusively, like Forget: each state that changes
// something is recorded and its subject appended to the forget log, so
// that every later Guard reports it.
func (s *Store) Object(ctx context.Context, reqs []store.ObjectionRequest) ([]store.ObjectionResult, error) {
	results := make([]store.ObjectionResult, len(reqs))
	if len(reqs) == 0 {
		return results, nil
	}
	if err := s.guard.Acquire(ctx, guardWeight); err != nil {
		return nil, fmt.Errorf("embedded: object: %w", err)
	}
	defer s.guard.Release(guardWeight)
	now := time.Now().UTC().Truncate(time.Millisecond)
	err := s.db.Update(func(tx *bolt.Tx) error {
		meta := tx.Bucket(bucketMeta)
		log := tx.Bucket(bucketLog)
		objs := tx.Bucket(bucketObjections)
		olog := tx.Bucket(bucketObjectionLog)
		seq := getUint(meta.Get(metaSeq))
		changed := false
		for i := range reqs {
			r := &reqs[i]
			h := s.hasher.Hash(r.SubjectID)
			rh := store.ObjectionResultKey(r, h)
			wrapped := tx.Bucket(bucketKeys).Get(h[:])
			var res store.ObjectionResult
			if rec, ok := decodeObjectionRecord(olog.Get(rh)); ok {
				res = store.ObjectionResult{Status: rec.Status, Superseded: rec.Superseded, AppliedAt: rec.AppliedAt}
			} else {
				at := r.EffectiveAt.UTC().Truncate(time.Millisecond)
				res = store.ObjectionResult{Status: store.ObjectionUnknownSubject, AppliedAt: now}
				if wrapped != nil {
					res.Status = store.ObjectionApplied
				}
				var forgottenAt, storedAt time.Time
				if t := tx.Bucket(bucketTombs).Get(h[:]); len(t) >= 8 {
					forgottenAt = getTime(t)
				}
				stored, hasStored := decodeObjection(objs.Get(h[:]))
				if hasStored {
					storedAt = stored.EffectiveAt
				}
				res.Superseded = store.ObjectionSupersedes(at, hasStored, storedAt, forgottenAt)
				if !res.Superseded {
					o := store.Objection{RequestID: r.RequestID, EffectiveAt: at, Systems: r.Systems, RecordedAt: now}
					if err := objs.Put(h[:], encodeObjection(&o)); err != nil {
						return err
					}
					seq++
					changed = true
					tag, err := store.NewTag()
					if err != nil {
						return err
					}
					if err := log.Put(putUint(seq), append(putTime(h[:], now), tag[:]...)); err != nil {
						return err
					}
					if err := meta.Put(metaTag, tag[:]); err != nil {
						return err
					}
				}
				rec := store.ObjectionRecord{RequestID: r.RequestID, Subject: h, EffectiveAt: at, Systems: r.Systems,
					Status: res.Status, Superseded: res.Superseded, AppliedAt: now}
				if err := olog.Put(rh, encodeObjectionRecord(&rec)); err != nil {
					return err
				}
				if err := tx.Bucket(bucketObjectionHistory).Put(append(putTime(nil, now), rh...), nil); err != nil {
					return err
				}
			}
			results[i] = res
			if r.WithKey && !res.Superseded && wrapped != nil {
				key, err := s.kr.Unwrap(wrapped, store.PurposeSubjectKey, h[:])
				if err != nil {
					return wrongKEK("object", err)
				}
				results[i].Key = key
			}
		}
		if !changed {
			return nil
		}
		if err := meta.Put(metaSeq, putUint(seq)); err != nil {
			return err
		}
		return prune(meta, log, seq, now, s.maxLog)
	})
	if err != nil {
		for i := range results {
			clear(results[i].Key)
		}
		return nil, fmt.Errorf("embedded: object: %w", err)
	}
	return results, nil
}

// forgetObjection is Forget's: the subject's objection state, if it took
// effect at or before the tombstone at, goes with the key.
func forgetObjection(tx *bolt.Tx, h store.SubjectHash, at time.Time) error {
	objs := tx.Bucket(bucketObjections)
	if o, ok := decodeObjection(objs.Get(h[:])); ok && !o.EffectiveAt.After(at) {
		return objs.Delete(h[:])
	}
	return nil
}

// subjectObjection reads a subject's objection state for Subject.
func subjectObjection(tx *bolt.Tx, h store.SubjectHash) *store.Objection {
	o, ok := decodeObjection(tx.Bucket(bucketObjections).Get(h[:]))
	if !ok {
		return nil
	}
	return o
}

// ObjectionLog calls fn for the objection state changes carried out at or
// after since, in order, from one read transaction.
func (s *Store) ObjectionLog(ctx context.Context, since time.Time, fn func(store.ObjectionRecord) error) error {
	return readLog(ctx, s.db, "objection log", bucketObjectionHistory, bucketObjectionLog, since, decodeObjectionRecord,
		func(r store.ObjectionRecord) time.Time { return r.AppliedAt }, fn)
}
