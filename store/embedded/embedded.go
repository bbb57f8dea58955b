// Package embedded implements store.KeyStore in a single bbolt file, for one
// process (the demo and single-instance deployments).
//
// The file holds only keyed hashes of subject IDs, SHA-256 hashes of request
// IDs and keys wrapped by the store.Keyring. bbolt locks the file, so one
// process at a time can open it. Forget and Guard exclude each other with an
// in-process reader/writer lock (Forget exclusive, Guard shared) that honours
// contexts and prefers a waiting Forget over new Guards, like the PostgreSQL
// store's advisory lock.
//
// Forget-log entries carry random tags (store.Position), so a store file
// replaced by an older copy is detected by the next Guard (Diverged) even
// once later forgets brought the sequence number back.
package embedded

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"time"

	bolt "go.etcd.io/bbolt"
	bolterrors "go.etcd.io/bbolt/errors"
	"golang.org/x/sync/semaphore"

	"github.com/hygiene/pseudonymizer/store"
)

const (
	// FileName is the name of the store file when Open is given a directory.
	FileName = "pseudonymizer.db"
	// lockTimeout bounds the wait for another process's lock on the file.
	lockTimeout = time.Second
	// logRetention is how long forget-log entries are kept at most.
	logRetention = 24 * time.Hour
	// guardWeight is the weight of the exclusive (Forget) side of the lock.
	guardWeight = 1 << 30
	// schemaVersion is the layout version written to the meta bucket:
	// 1 the first layout; 2 adds key creation times, the request ID,
	// subject and requested_at to forget results, and the forget history;
	// 3 adds the retained keys (bucketRetained); 4 the objection states,
	// log and history (objection.go).
	schemaVersion = 4
)

// Bucket and meta key names.
var (
	bucketMeta    = []byte("meta")
	bucketKeys    = []byte("keys")
	bucketTombs   = []byte("tombstones")
	bucketResults = []byte("forget_results")
	bucketLog     = []byte("forget_log")
	// bucketCreated maps a subject hash to its key's creation time.
	bucketCreated = []byte("key_created")
	// bucketHistory orders forget results by completion: its keys are the
	// completion time (8 bytes) followed by the request hash, its values
	// empty.
	bucketHistory = []byte("forget_history")
	// bucketRetained holds the keys retained for erasure notices
	// (store.ForgetRequest.Retain), by request hash (see retain.go).
	bucketRetained = []byte("forget_retained")

	metaVersion  = []byte("schema_version")
	metaIndexKey = []byte("index_key")
	metaSeq      = []byte("forget_seq")
	metaPruned   = []byte("forget_pruned_through")
	metaEpoch    = []byte("forget_epoch") // the tag of position 0
	metaTag      = []byte("forget_tag")   // the tag of the newest log entry
)

// Store is a store.KeyStore in a bbolt file. It is safe for concurrent use
// by many goroutines of one process.
type Store struct {
	db     *bolt.DB
	kr     *store.Keyring
	hasher *store.Hasher
	// guard is a reader/writer lock: Guard holds weight 1, Forget all of it.
	guard *semaphore.Weighted
	// maxLog is the forget-log limit (WithForgetLogLimit).
	maxLog uint64

	// rewrapMu guards rewrapAfter, the subject hash after which the next
	// Rewrap continues (nil: from the start).
	rewrapMu    sync.Mutex
	rewrapAfter []byte

	closeOnce sync.Once
	closeErr  error
}

var _ store.KeyStore = (*Store)(nil)

// Option configures Open.
type Option func(*Store)

// WithForgetLogLimit sets the most forget-log entries a Guard returns and
// the store keeps (default store.DefaultForgetLogLimit); tests set a small
// one to reach it quickly.
func WithForgetLogLimit(n int) Option {
	return func(s *Store) {
		if n > 0 {
			s.maxLog = uint64(n)
		}
	}
}

// Open opens (creating if needed, mode 0600) the store file at path; if path
// is an existing directory, the file is FileName inside it. Missing parent
// directories are created (0700). The index key is created on first use. It
// fails if the file is locked by another process (store.ErrUnavailable) or
// if kr cannot unwrap the stored index key (store.ErrWrongKEK).
func Open(path string, kr *store.Keyring, opts ...Option) (*Store, error) {
	if kr == nil {
		return nil, errors.New("embedded: open: no keyring")
	}
	if fi, err := os.Stat(path); err == nil && fi.IsDir() {
		path = filepath.Join(path, FileName)
	} else if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, fmt.Errorf("embedded: open: %w", err)
	}
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: lockTimeout})
	if err != nil {
		if errors.Is(err, bolterrors.ErrTimeout) {
			return nil, fmt.Errorf("embedded: open: %s is in use by another process: %w", path, store.ErrUnavailable)
		}
		return nil, fmt.Errorf("embedded: open: %w", err)
	}
	s := &Store{db: db, kr: kr, guard: semaphore.NewWeighted(guardWeight), maxLog: store.DefaultForgetLogLimit}
	for _, opt := range opts {
		opt(s)
	}
	if err := s.init(); err != nil {
		_ = db.Close()
		return nil, err
	}
	return s, nil
}

// init creates the buckets and the index key, and loads the index key.
func (s *Store) init() error {
	var wrapped []byte
	err := s.db.Update(func(tx *bolt.Tx) error {
		for _, name := range [][]byte{bucketMeta, bucketKeys, bucketTombs, bucketResults, bucketLog, bucketCreated, bucketHistory, bucketRetained,
			bucketObjections, bucketObjectionLog, bucketObjectionHistory} {
			if _, err := tx.CreateBucketIfNotExists(name); err != nil {
				return err
			}
		}
		meta := tx.Bucket(bucketMeta)
		if v := meta.Get(metaVersion); v != nil {
			got := getUint(v)
			if got > schemaVersion {
				return fmt.Errorf("file layout version %d is newer than this binary supports (%d)", got, schemaVersion)
			}
			if got < 2 {
				if err := upgradeHistory(tx); err != nil {
					return fmt.Errorf("upgrade to layout 2: %w", err)
				}
			}
		}
		if err := meta.Put(metaVersion, putUint(schemaVersion)); err != nil {
			return err
		}
		if meta.Get(metaEpoch) == nil {
			epoch, err := store.NewTag()
			if err != nil {
				return err
			}
			if err := meta.Put(metaEpoch, epoch[:]); err != nil {
				return err
			}
		}
		if w := meta.Get(metaIndexKey); w != nil {
			wrapped = append([]byte(nil), w...)
			return nil
		}
		key, err := store.NewKey()
		if err != nil {
			return err
		}
		if wrapped, err = s.kr.Wrap(key, store.PurposeIndexKey, nil); err != nil {
			return err
		}
		return meta.Put(metaIndexKey, wrapped)
	})
	if err != nil {
		return fmt.Errorf("embedded: open: %w", err)
	}
	// Every key, not only the index key: a rotation killed half-way
	// leaves keys under the old KEK, and each would stop every batch
	// that touches it. One read of every key, at start-up only.
	var counted store.KEKCensus
	if err := s.db.View(func(tx *bolt.Tx) error { counted = census(tx); return nil }); err != nil {
		return fmt.Errorf("embedded: open: %w", err)
	}
	if err := counted.Check(s.kr); err != nil {
		return fmt.Errorf("embedded: open: %w", err)
	}
	key, err := s.kr.Unwrap(wrapped, store.PurposeIndexKey, nil)
	if err != nil {
		return wrongKEK("open: index key", err)
	}
	s.hasher, err = store.NewHasher(key)
	clear(key) // the Hasher holds its own copy, wiped on Close
	if err != nil {
		return fmt.Errorf("embedded: open: %w", err)
	}
	return nil
}

// Hash returns the keyed hash that identifies subjectID in the store.
func (s *Store) Hash(subjectID string) store.SubjectHash { return s.hasher.Hash(subjectID) }

// Ping reports whether the store is open.
func (s *Store) Ping(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("embedded: ping: %w", err)
	}
	if err := s.db.View(func(*bolt.Tx) error { return nil }); err != nil {
		return fmt.Errorf("embedded: ping: %w", err)
	}
	return nil
}

// Close closes the file, after waiting for running transactions, and wipes
// the index key from memory (Hash must not be called after Close). It is
// safe to call more than once.
func (s *Store) Close() error {
	s.closeOnce.Do(func() {
		s.closeErr = s.db.Close()
		s.hasher.Wipe()
	})
	if s.closeErr != nil {
		return fmt.Errorf("embedded: close: %w", s.closeErr)
	}
	return nil
}

// wrongKEK reports a key that the keyring cannot unwrap; the error always
// matches store.ErrWrongKEK.
func wrongKEK(op string, err error) error {
	if errors.Is(err, store.ErrWrongKEK) {
		return fmt.Errorf("embedded: %s: %w", op, err)
	}
	return fmt.Errorf("embedded: %s: %w: %v", op, store.ErrWrongKEK, err)
}

// ceilMilli rounds t up to whole milliseconds (the store's precision), so
// that rounding never lets an event at the requested time escape its
// tombstone.
func ceilMilli(t time.Time) time.Time {
	r := t.Truncate(time.Millisecond)
	if r.Before(t) {
		r = r.Add(time.Millisecond)
	}
	return r.UTC()
}

func putUint(v uint64) []byte { return binary.BigEndian.AppendUint64(nil, v) }

func getUint(b []byte) uint64 {
	if len(b) != 8 {
		return 0
	}
	return binary.BigEndian.Uint64(b)
}

func putTime(b []byte, t time.Time) []byte {
	return binary.BigEndian.AppendUint64(b, uint64(t.UnixMilli()))
}

func getTime(b []byte) time.Time { return time.UnixMilli(int64(binary.BigEndian.Uint64(b))).UTC() }
