// Package store defines the KeyStore: the one place where the secret key of
// each subject (customer) lives, wrapped by a key encryption key (KEK).
//
// Pseudonyms are derived from these keys (see processor/pseudonym), so the
// store is written once per new subject, not once per event. Forgetting a
// subject deletes its key (crypto-shredding) and leaves a tombstone that
// suppresses the subject's older events and makes later ones use a fresh key.
//
// Implementations live in subpackages (postgres, embedded) and must all pass
// the conformance suite in store/storetest.
package store

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"fmt"
	"time"
)

// KeySize is the size in bytes of a subject key and of a KEK.
const KeySize = 32

// SubjectHash is a keyed hash (HMAC-SHA-256 under the store's index key) of a
// subject ID. Stores index subjects by it and never persist raw subject IDs.
type SubjectHash [32]byte

// Lookup asks for the key of one subject.
type Lookup struct {
	// SubjectID is the raw subject (customer) ID. It never leaves memory.
	SubjectID string
	// Latest is the newest occurred_at among the events that need the key.
	// A subject with a tombstone gets a fresh key only when Latest is after
	// the tombstone's RequestedAt; otherwise no key is created.
	Latest time.Time
}

// NeedsKey is the rule for creating keys: a subject without a key gets a
// fresh one for an event at latest unless it has a tombstone (forgottenAt,
// zero if none) at or after latest; such events are suppressed instead.
// Both stores create keys by it, and the processor's cache asks it.
func NeedsKey(hasKey bool, forgottenAt, latest time.Time) bool {
	return !hasKey && (forgottenAt.IsZero() || latest.After(forgottenAt))
}

// Entry is the state of one subject as returned by Resolve.
type Entry struct {
	// Hash is the subject's keyed hash.
	Hash SubjectHash
	// Key is the subject's current secret key, or nil when the subject has
	// no key (it was forgotten and no event newer than the tombstone asked).
	Key []byte
	// ForgottenAt is the RequestedAt of the subject's newest tombstone, or
	// the zero time when the subject was never forgotten. Events that
	// occurred at or before it must be suppressed.
	ForgottenAt time.Time
	// Objection is the subject's objection state when it objects to some
	// system, or nil (no objection, or a withdrawn one). Lookups of the
	// same subject share it; the caller must not modify it.
	Objection *Objection
}

// ForgetRequest asks to destroy the key material of one subject.
type ForgetRequest struct {
	// RequestID identifies the request; Forget is idempotent per RequestID.
	RequestID string
	// SubjectID is the raw subject ID to forget.
	SubjectID string
	// RequestedAt is when the request was made; events of the subject that
	// occurred at or before it are suppressed from now on.
	RequestedAt time.Time
	// Retain asks Forget to keep the subject's destroyed key, still
	// wrapped by the KEK, until Settle (or SettleCommitted) releases it,
	// and to return it, unwrapped, in ForgetResult.Key: the caller derives
	// the subject's erasure notices from it (see processor/notices.go).
	// Only a request that destroys a key (Forgotten) retains one. Without
	// Retain nothing is kept.
	Retain bool
	// Partition and Offset locate the request's record in its input topic;
	// they are stored with a retained key so that SettleCommitted can
	// release keys whose request the consumer group has committed.
	Partition int32
	Offset    int64
}

// ForgetStatus is the outcome of a forget request.
type ForgetStatus int

// Forget outcomes; they map to hygiene.v1.ForgetStatus.
const (
	// Forgotten: the subject had a key, and it is destroyed.
	Forgotten ForgetStatus = iota + 1
	// UnknownSubject: the subject never had a key and was never forgotten.
	UnknownSubject
	// AlreadyForgotten: the subject has no key but an earlier tombstone.
	AlreadyForgotten
)

// String returns the hygiene.v1.ForgetStatus symbol.
func (s ForgetStatus) String() string {
	switch s {
	case Forgotten:
		return "FORGOTTEN"
	case UnknownSubject:
		return "UNKNOWN_SUBJECT"
	case AlreadyForgotten:
		return "ALREADY_FORGOTTEN"
	}
	return "INVALID"
}

// ForgetResult is the durable outcome of one ForgetRequest. Repeating a
// request with the same RequestID returns the same result.
type ForgetResult struct {
	Status      ForgetStatus
	CompletedAt time.Time
	// Key is the key that the request destroyed, returned when the request
	// asked to Retain it and it is not settled yet: on the call that
	// destroyed it and on every repetition of the request until Settle.
	// It is nil otherwise. The caller owns it and should wipe it when done.
	Key []byte
}

// KeyStore holds wrapped subject keys and tombstones.
//
// Implementations must be safe for concurrent use by many goroutines, and the
// PostgreSQL implementation also by many processes.
type KeyStore interface {
	// Objector records objection states (objection.go); Resolve returns
	// them in Entry.Objection, read in the same statement as the keys.
	Objector

	// Hash returns the keyed hash that identifies subjectID in the store.
	Hash(subjectID string) SubjectHash

	// Resolve returns one Entry per lookup, in order, in a single round
	// trip when every subject already has a key and in one more (committed)
	// write when some need a fresh key (a store may need one more read when
	// another instance or a forget raced that write). A new key is durable
	// before Resolve returns. Lookups of the same subject get one Entry each,
	// all equal.
	Resolve(ctx context.Context, lookups []Lookup) ([]Entry, error)

	// Forget destroys the keys of the requests' subjects and records their
	// tombstones (hash, requested_at, request id), atomically per call, and
	// returns one result per request, in order. It is idempotent per
	// RequestID. While it runs it excludes every Guard (see Guard).
	Forget(ctx context.Context, reqs []ForgetRequest) ([]ForgetResult, error)

	// Settle releases (deletes) the keys retained for reqs (matched by
	// request ID and subject, as Forget does), in one round trip; requests
	// with nothing retained are ignored. The caller settles a request once
	// the outputs derived from its key are durable elsewhere (committed to
	// Kafka).
	Settle(ctx context.Context, reqs []ForgetRequest) error

	// SettleCommitted releases every retained key whose request's Offset
	// is below committed[Partition] (the consumer group's committed offset
	// of the request topic: the next offset to consume), for leftovers of
	// an instance that stopped between its Kafka commit and Settle.
	// Partitions missing from committed are left alone. It returns how many
	// keys stay retained.
	SettleCommitted(ctx context.Context, committed map[int32]int64) (retained int, err error)

	// Guard takes a shared guard that excludes Forget and Object until
	// Release, and returns the hashes of the subjects forgotten (or whose
	// objection state changed) after position since (the Position of the
	// caller's previous guard), plus the newest position. The processor holds a guard across its Kafka commit: a
	// forget can then never complete between the check of its keys and the
	// commit of outputs derived from them. A since with a zero Tag is not
	// checked for divergence (see Position).
	Guard(ctx context.Context, since Position) (Guard, error)

	// Rewrap re-wraps up to limit keys that are not wrapped by the active
	// KEK, and reports how many it changed; 0 means all are current.
	Rewrap(ctx context.Context, limit int) (int, error)

	// Ping reports whether the store is reachable.
	Ping(ctx context.Context) error

	// Close releases the store's resources.
	Close() error
}

// TagSize is the size of a Position's tag.
const TagSize = 16

// Position is a point of a store's forget log: the sequence number of an
// entry and the entry's tag, a random value that the store drew (from
// crypto/rand) when it wrote the entry; for Seq 0 the tag is the log's
// epoch, drawn when the log was created. Sequence numbers alone cannot
// tell a log from an older copy of itself: restored from a backup, the log
// continues from the backup's sequence number, and once enough forgets
// happened after the restore the counter is back where a running instance
// last saw it. The tags tell: an entry written after the restore has a
// fresh tag, and no restore can recreate the tag of an entry that it lost.
// A zero Tag means "unknown" (entries written before tags existed).
type Position struct {
	Seq uint64
	Tag [TagSize]byte
}

// NewTag returns a fresh random tag.
func NewTag() ([TagSize]byte, error) {
	var t [TagSize]byte
	if _, err := rand.Read(t[:]); err != nil {
		return t, fmt.Errorf("forget log tag: %w", err)
	}
	return t, nil
}

// Auditor answers an operator's questions about subjects and forget
// requests without changing anything: the data subject's "what do you hold
// about me" and "have you forgotten me", and the forget log as evidence.
// Every KeyStore implementation is also an Auditor.
type Auditor interface {
	// Subject reports what the store holds about subjectID. It never
	// creates a key.
	Subject(ctx context.Context, subjectID string) (SubjectState, error)
	// ForgetLog calls fn for every forget request completed at or after
	// since, in order of completion, and stops at fn's first error.
	ForgetLog(ctx context.Context, since time.Time, fn func(ForgetRecord) error) error
	// ObjectionLog calls fn for every objection state change carried out
	// at or after since, in order, and stops at fn's first error.
	ObjectionLog(ctx context.Context, since time.Time, fn func(ObjectionRecord) error) error
}

// SubjectState is what a store holds about one subject.
type SubjectState struct {
	// Hash is the subject's keyed hash.
	Hash SubjectHash
	// Key is the subject's current key (unwrapped), or nil when it has none.
	// The caller should wipe it when done.
	Key []byte
	// KeyCreatedAt is when the current key was created; zero when it has
	// no key or the key predates the recording of creation times.
	KeyCreatedAt time.Time
	// Forgotten describes the newest tombstone, or is nil when the subject
	// was never forgotten.
	Forgotten *Tombstone
	// Objection is the subject's newest objection state, also when it was
	// withdrawn (no systems), or nil when none is recorded (none was ever
	// set, or a forget removed it).
	Objection *Objection
}

// Tombstone is the trace a forget leaves: when it was requested, and by
// which request.
type Tombstone struct {
	// RequestedAt is the request's requested_at: events that occurred at
	// or before it are suppressed.
	RequestedAt time.Time
	// RequestID identifies the request; empty if it was recorded by a
	// version that did not keep request IDs.
	RequestID string
	// CompletedAt is when the key was destroyed; zero if unknown.
	CompletedAt time.Time
}

// ForgetRecord is one completed forget request, as kept for evidence. It
// names the subject only by its keyed hash.
type ForgetRecord struct {
	// RequestID identifies the request; empty for requests recorded by a
	// version that did not keep request IDs.
	RequestID string
	// Subject is the subject's keyed hash (zero if not recorded).
	Subject SubjectHash
	// Status is the request's outcome.
	Status ForgetStatus
	// RequestedAt is the request's requested_at (zero if not recorded).
	RequestedAt time.Time
	// CompletedAt is when the request was carried out.
	CompletedAt time.Time
}

// Guard is a shared lock against Forget, held across a Kafka commit.
type Guard interface {
	// Seq is the newest forget sequence number at the time of the guard.
	Seq() uint64
	// Position is the newest position of the forget log at the time of
	// the guard; the caller passes it to its next Guard.
	Position() Position
	// Diverged reports that the forget log does not continue the one the
	// requested position was read from: it ends before it, or its entry
	// there has another tag. The store was restored to an older state (or
	// recreated) since; keys the caller cached may have been destroyed by
	// forgets the store no longer lists. Complete is then false.
	Diverged() bool
	// Forgotten lists the subjects forgotten, or whose objection state
	// changed, after the requested sequence number, oldest first: a
	// caller drops them from its cache either way.
	Forgotten() []SubjectHash
	// Complete is false when Forgotten cannot list every subject forgotten
	// since the requested position (the forget log was pruned past it, it
	// is too long to return, or it diverged). The caller must then drop
	// every key it caches and must not commit work derived from cached
	// keys.
	Complete() bool
	// Check verifies that the guard is still held (a PostgreSQL guard is
	// lost with its connection). The processor checks right before its
	// Kafka commit and aborts the batch if the guard is gone.
	Check(ctx context.Context) error
	// Release gives the guard up. It is safe to call more than once. An
	// error means the guard may have been lost before Release.
	Release(ctx context.Context) error
}

// DefaultForgetLogLimit is the most forget-log entries a Guard returns, and
// the most a store keeps, unless the store is opened with another limit
// (a test's). A guard further behind is not Complete.
const DefaultForgetLogLimit = 100_000

// CheckSince decides a guard's Diverged and Complete for a caller at since,
// given the log's newest position, the highest pruned sequence number,
// the most entries a guard returns, and the stored tag of since.Seq
// (known false when the log no longer holds it). Both stores use it.
func CheckSince(since, newest Position, pruned, maxLog uint64, stored [TagSize]byte, known bool) (diverged, complete bool) {
	var zero [TagSize]byte
	switch {
	case since.Seq > newest.Seq:
		diverged = true
	case since.Tag != zero && known && stored != since.Tag:
		diverged = true
	}
	complete = !diverged && since.Seq >= pruned && newest.Seq-since.Seq <= maxLog && (known || since.Tag == zero)
	return diverged, complete
}

// ForgetResultKey is what a store keeps to recognise a forget request when
// it is repeated: a hash of its request ID together with the subject, so
// that two requests that happen to share an ID but name different subjects
// are both carried out.
func ForgetResultKey(requestID string, subject SubjectHash) []byte {
	h := sha256.New()
	h.Write([]byte("pseudonymizer/forget-request/v1\x00"))
	h.Write(subject[:])
	h.Write([]byte(requestID))
	return h.Sum(nil)
}

// ErrUnavailable wraps errors that mean the store could not be reached or
// could not finish a transaction; the caller should back off and retry.
var ErrUnavailable = errors.New("store unavailable")

// ErrRejected wraps errors that mean the store refused a request's data
// (a value it cannot represent, such as text with a NUL byte in
// PostgreSQL), as opposed to an outage: retrying the same request cannot
// help. The error text names the cause without echoing the data. The
// caller isolates the refused request and dead-letters it, so that the
// requests around it go through.
var ErrRejected = errors.New("the key store rejected the data")

// ErrWrongKEK is returned when a stored key cannot be unwrapped with any
// configured KEK.
var ErrWrongKEK = errors.New("no configured KEK unwraps the stored keys")
