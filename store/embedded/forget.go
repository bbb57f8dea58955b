package embedded

import (
	"context"
	"fmt"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/hygiene/pseudonymizer/store"
)

// Forget applies the requests in order in one write transaction, holding
// the guard lock exclusively (it waits for every Guard to be released).
func (s *Store) Forget(ctx context.Context, reqs []store.ForgetRequest) ([]store.ForgetResult, error) {
	results := make([]store.ForgetResult, len(reqs))
	if len(reqs) == 0 {
		return results, nil
	}
	if err := s.guard.Acquire(ctx, guardWeight); err != nil {
		return nil, fmt.Errorf("embedded: forget: %w", err)
	}
	defer s.guard.Release(guardWeight)
	now := time.Now().UTC().Truncate(time.Millisecond)
	err := s.db.Update(func(tx *bolt.Tx) error {
		meta := tx.Bucket(bucketMeta)
		keys := tx.Bucket(bucketKeys)
		tombs := tx.Bucket(bucketTombs)
		done := tx.Bucket(bucketResults)
		log := tx.Bucket(bucketLog)
		seq := getUint(meta.Get(metaSeq))
		for i, r := range reqs {
			h := s.hasher.Hash(r.SubjectID)
			rh := store.ForgetResultKey(r.RequestID, h)
			if v := done.Get(rh); len(v) >= resultHead {
				results[i] = store.ForgetResult{Status: store.ForgetStatus(v[0]), CompletedAt: getTime(v[1:])}
				if err := s.giveRetained(tx, &results[i], r, rh); err != nil {
					return err
				}
				continue
			}
			status := store.UnknownSubject
			tomb := tombs.Get(h[:])
			switch {
			case keys.Get(h[:]) != nil:
				status = store.Forgotten
				if err := retain(tx, r, rh, h, keys.Get(h[:]), now); err != nil {
					return err
				}
				if err := keys.Delete(h[:]); err != nil {
					return err
				}
				if err := tx.Bucket(bucketCreated).Delete(h[:]); err != nil {
					return err
				}
			case tomb != nil:
				status = store.AlreadyForgotten
			}
			at := ceilMilli(r.RequestedAt)
			if len(tomb) < 8 || at.After(getTime(tomb)) {
				if err := tombs.Put(h[:], append(putTime(nil, at), rh...)); err != nil {
					return err
				}
				// Forget wins: the objection state goes with the key.
				if err := forgetObjection(tx, h, at); err != nil {
					return err
				}
			}
			seq++
			tag, err := store.NewTag()
			if err != nil {
				return err
			}
			// A log entry: subject hash (32), time (8), tag (16).
			if err := log.Put(putUint(seq), append(putTime(h[:], now), tag[:]...)); err != nil {
				return err
			}
			if err := meta.Put(metaTag, tag[:]); err != nil {
				return err
			}
			if err := done.Put(rh, encodeResult(status, now, at, h, r.RequestID)); err != nil {
				return err
			}
			if err := tx.Bucket(bucketHistory).Put(append(putTime(nil, now), rh...), nil); err != nil {
				return err
			}
			results[i] = store.ForgetResult{Status: status, CompletedAt: now}
			if err := s.giveRetained(tx, &results[i], r, rh); err != nil {
				return err
			}
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
		return nil, fmt.Errorf("embedded: forget: %w", err)
	}
	return results, nil
}

// prune deletes forget-log entries beyond the newest maxLog and older than
// logRetention, and records the highest deleted sequence number.
func prune(meta, log *bolt.Bucket, seq uint64, now time.Time, maxLog uint64) error {
	cutoff := now.Add(-logRetention)
	var doomed [][]byte
	c := log.Cursor()
	for k, v := c.First(); k != nil; k, v = c.Next() {
		n := getUint(k)
		if !(n+maxLog <= seq || (len(v) >= 40 && getTime(v[32:40]).Before(cutoff))) {
			break
		}
		doomed = append(doomed, append([]byte(nil), k...))
	}
	if len(doomed) == 0 {
		return nil
	}
	for _, k := range doomed {
		if err := log.Delete(k); err != nil {
			return err
		}
	}
	last := getUint(doomed[len(doomed)-1])
	if last > getUint(meta.Get(metaPruned)) {
		return meta.Put(metaPruned, putUint(last))
	}
	return nil
}
