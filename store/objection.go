package store

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"slices"
	"time"
)

// AllSystems, as the only entry of an objection's systems, means every
// system, including ones configured later.
const AllSystems = "*"

// Objection is a subject's objection state: from EffectiveAt on, events of
// the subject must not be sent to Systems (AllSystems: to any system). The
// newest state by EffectiveAt replaces the previous one; a state with no
// systems withdraws the objection. An objection does not touch the key:
// the other systems keep getting the same pseudonyms.
type Objection struct {
	// RequestID identifies the state change that set it (empty for a
	// tombstone of the objections topic).
	RequestID string
	// EffectiveAt is when the state took effect; events that occurred at
	// or after it are covered by it.
	EffectiveAt time.Time
	// Systems are the systems objected to; empty means no objection any
	// more.
	Systems []string
	// RecordedAt is when the store recorded the state; zero if unknown.
	RecordedAt time.Time
}

// Objects reports whether an event of the subject that occurred at at must
// not be sent to system. A nil Objection objects to nothing.
func (o *Objection) Objects(system string, at time.Time) bool {
	if o == nil || len(o.Systems) == 0 || at.Before(o.EffectiveAt) {
		return false
	}
	return o.All() || slices.Contains(o.Systems, system)
}

// All reports whether the objection covers every system.
func (o *Objection) All() bool { return o != nil && slices.Contains(o.Systems, AllSystems) }

// Active reports whether the state objects to any system at all (a
// withdrawal is not active).
func (o *Objection) Active() bool { return o != nil && len(o.Systems) > 0 }

// ObjectionRequest sets the objection state of one subject.
type ObjectionRequest struct {
	// RequestID identifies the state change; it is echoed in its
	// confirmation and kept in the objection log.
	RequestID string
	// SubjectID is the raw subject ID.
	SubjectID string
	// EffectiveAt is when the state takes effect. The state with the
	// newest EffectiveAt wins, whatever the order of the calls; of two
	// states with the same EffectiveAt, the later call's.
	EffectiveAt time.Time
	// Systems are the systems objected to; AllSystems alone means every
	// system; empty withdraws the objection.
	Systems []string
	// WithKey asks Object to return the subject's key (unwrapped) in the
	// result when the state was applied and the subject has a key: the
	// caller derives erasure notices from it.
	WithKey bool
}

// ObjectionStatus is the outcome of an objection state change.
type ObjectionStatus int

// Objection outcomes; they map to hygiene.v1.ObjectionStatus.
const (
	// ObjectionApplied: the subject has a key, and the state is recorded.
	ObjectionApplied ObjectionStatus = iota + 1
	// ObjectionUnknownSubject: the subject has no key (never had one, or
	// was forgotten). The state is recorded all the same, so that the
	// subject's first event respects it.
	ObjectionUnknownSubject
)

// String returns the hygiene.v1.ObjectionStatus symbol.
func (s ObjectionStatus) String() string {
	switch s {
	case ObjectionApplied:
		return "APPLIED"
	case ObjectionUnknownSubject:
		return "UNKNOWN_SUBJECT"
	}
	return "INVALID"
}

// ObjectionResult is the durable outcome of one ObjectionRequest.
// Repeating a request (same request ID, subject, EffectiveAt and systems)
// returns the same Status, Superseded and AppliedAt.
type ObjectionResult struct {
	Status ObjectionStatus
	// Superseded is true when the state changed nothing: the store already
	// held a state with a later EffectiveAt, or the subject was forgotten
	// at or after EffectiveAt (a forget removes the objection state with
	// the key, and an objection from before the forget cannot bring it
	// back).
	Superseded bool
	// AppliedAt is when the store first carried out the request.
	AppliedAt time.Time
	// Key is the subject's key, returned when the request asked WithKey,
	// the state is not superseded and the subject has a key. The caller
	// owns it and should wipe it when done.
	Key []byte
}

// ObjectionRecord is one carried-out objection state change, as kept for
// evidence. It names the subject only by its keyed hash.
type ObjectionRecord struct {
	RequestID   string
	Subject     SubjectHash
	EffectiveAt time.Time
	Systems     []string
	Status      ObjectionStatus
	Superseded  bool
	AppliedAt   time.Time
}

// Objector records objection states. Every KeyStore implementation is an
// Objector; the objection state is returned by Resolve (Entry.Objection)
// and Subject (SubjectState.Objection), and the record of state changes by
// Auditor.ObjectionLog.
type Objector interface {
	// Object applies the requests in order, atomically per call, and
	// returns one result per request. Like Forget it excludes every Guard
	// while it runs, appends each subject whose state changed to the
	// forget log (so that every instance's next guard evicts it from its
	// cache and aborts a batch that used its previous state), and returns
	// only when a confirmation may follow (after a lost guard's
	// transaction has certainly ended). It is idempotent per request.
	Object(ctx context.Context, reqs []ObjectionRequest) ([]ObjectionResult, error)
}

// ObjectionResultKey is what a store keeps to recognise an objection
// request when it is repeated: a hash of the request ID, the subject, the
// effective time and the systems.
func ObjectionResultKey(r *ObjectionRequest, subject SubjectHash) []byte {
	h := sha256.New()
	h.Write([]byte("pseudonymizer/objection-request/v1\x00"))
	h.Write(subject[:])
	h.Write(binary.BigEndian.AppendUint64(nil, uint64(r.EffectiveAt.UnixMilli())))
	h.Write(binary.BigEndian.AppendUint64(nil, uint64(len(r.RequestID))))
	h.Write([]byte(r.RequestID))
	for _, s := range r.Systems {
		h.Write(binary.BigEndian.AppendUint64(nil, uint64(len(s))))
		h.Write([]byte(s))
	}
	return h.Sum(nil)
}

// ObjectionSupersedes reports whether a new state at effectiveAt leaves
// the stored state alone: the stored one (storedAt, hasStored) is newer,
// or the subject's tombstone (forgottenAt, zero if none) is at or after
// effectiveAt. Both stores decide by it.
func ObjectionSupersedes(effectiveAt time.Time, hasStored bool, storedAt, forgottenAt time.Time) bool {
	if !forgottenAt.IsZero() && !effectiveAt.After(forgottenAt) {
		return true
	}
	return hasStored && effectiveAt.Before(storedAt)
}
