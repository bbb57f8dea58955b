package embedded

import (
	"bytes"
	"context"
	"fmt"
	"slices"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/hygiene/pseudonymizer/store"
)

// subjectState is what the store holds about one subject.
type subjectState struct {
	wrapped     []byte
	forgottenAt time.Time
	objection   *store.Objection // active only
}

// Resolve returns one Entry per lookup. It reads every subject in one read
// transaction; subjects that need a fresh key are created in one write
// transaction, which checks their state again first.
func (s *Store) Resolve(ctx context.Context, lookups []store.Lookup) ([]store.Entry, error) {
	entries := make([]store.Entry, len(lookups))
	if len(lookups) == 0 {
		return entries, nil
	}
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("embedded: resolve: %w", err)
	}
	latest := make(map[store.SubjectHash]time.Time, len(lookups))
	var hashes []store.SubjectHash
	for i, l := range lookups {
		h := s.hasher.Hash(l.SubjectID)
		entries[i].Hash = h
		if t, seen := latest[h]; !seen || l.Latest.After(t) {
			if !seen {
				hashes = append(hashes, h)
			}
			latest[h] = l.Latest
		}
	}
	// In key order, consecutive reads and writes touch neighbouring pages
	// of the B+trees (about 10% less CPU per event when nearly every
	// subject is new, pseudonymizer-bench at 200,000 customers).
	slices.SortFunc(hashes, func(a, b store.SubjectHash) int { return bytes.Compare(a[:], b[:]) })
	needs := func(h store.SubjectHash, st subjectState) bool {
		return store.NeedsKey(st.wrapped != nil, st.forgottenAt, latest[h])
	}

	states := make(map[store.SubjectHash]subjectState, len(hashes))
	var need []store.SubjectHash
	err := s.db.View(func(tx *bolt.Tx) error {
		for _, h := range hashes {
			st := readState(tx, h)
			states[h] = st
			if needs(h, st) {
				need = append(need, h)
			}
		}
		return nil
	})
	if err == nil && len(need) > 0 {
		now := time.Now()
		// Keys for every subject that needed one when read; the update
		// re-checks each under the write lock and leaves a key unused when
		// another writer got there first.
		bindings := make([][]byte, len(need))
		for i := range need {
			bindings[i] = need[i][:]
		}
		var fresh [][]byte
		fresh, err = s.kr.NewWrappedKeys(store.PurposeSubjectKey, bindings)
		if err != nil {
			return nil, fmt.Errorf("embedded: resolve: %w", err)
		}
		err = s.db.Update(func(tx *bolt.Tx) error {
			keys := tx.Bucket(bucketKeys)
			for i, h := range need {
				st := readState(tx, h)
				if needs(h, st) {
					w := fresh[i]
					if err := keys.Put(h[:], w); err != nil {
						return err
					}
					if err := tx.Bucket(bucketCreated).Put(h[:], putTime(nil, now)); err != nil {
						return err
					}
					st.wrapped = w
				}
				states[h] = st
			}
			return nil
		})
	}
	if err != nil {
		return nil, fmt.Errorf("embedded: resolve: %w", err)
	}

	stateOf := func(h store.SubjectHash) ([]byte, time.Time) {
		st := states[h]
		return st.wrapped, st.forgottenAt
	}
	if err := s.kr.FillEntries(entries, stateOf); err != nil {
		return nil, wrongKEK("resolve", err)
	}
	for i := range entries {
		entries[i].Objection = states[entries[i].Hash].objection
	}
	return entries, nil
}

// readState reads a subject's key, tombstone and active objection, copied out of tx.
func readState(tx *bolt.Tx, h store.SubjectHash) subjectState {
	var st subjectState
	if w := tx.Bucket(bucketKeys).Get(h[:]); w != nil {
		st.wrapped = append([]byte(nil), w...)
	}
	if t := tx.Bucket(bucketTombs).Get(h[:]); len(t) >= 8 {
		st.forgottenAt = getTime(t)
	}
	st.objection = readObjection(tx, h)
	return st
}
