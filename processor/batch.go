package processor

import (
	"fmt"
	"time"
	"unicode/utf8"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/hygiene/pseudonymizer/processor/policy"
	"github.com/hygiene/pseudonymizer/processor/pseudonym"
	"github.com/hygiene/pseudonymizer/store"
)

// batch holds one transaction's buffers, reused across transactions. The
// steps (forgets, orders, dead letters) append their records to recs; the
// transaction (txn) hands them to the Kafka client in recs order.
type batch struct {
	// start is when the batch's step began: the time, at each system's
	// precision, of its records that carry no event time (notices, and
	// orders of systems that keep no occurred_at).
	start     time.Time
	inForgets []*kgo.Record
	inOrders  []*kgo.Record
	recs      []kgo.Record
	emitted   int      // orders emitted, each once per system
	prefix    [][]byte // each system's output value prefix, this batch
	orders    []order
	lookups   []store.Lookup
	lookupIDs [][]byte       // the ID of each lookup, in the input record
	resolved  []subject      // the subject of each lookup
	pending   map[string]int // subject ID -> index in lookups
	// derive holds an order of each subject whose customer pseudonyms are
	// to be derived; deriving maps those subjects to their index in
	// derive, and keys[i] is the prepared key of derive[i]'s subject, which
	// the projection of that subject's events uses (the cache keeps no
	// prepared keys). keys is wiped when the batch is reset.
	derive   []*order
	deriving map[subject]int32
	keys     []pseudonym.Key
	stats    Stats
	forgets  []forgetDone
	// objections holds the status of each confirmed objection state
	// (APPLIED, UNKNOWN_SUBJECT or SUPERSEDED), for the metrics.
	objections []string
	// objected counts, per system, the emitted events not sent to it
	// because their subject objects.
	objected []int
	// settle holds the requests whose retained keys this batch used for
	// erasure notices; they are settled once it committed (notices.go).
	// notices counts the batch's notices per system.
	settle  []store.ForgetRequest
	notices map[int]int
	dlq     []deadLettered
	// origin maps the index in recs of each dead letter and confirmation
	// to the input record it answers, to tell which input a refused
	// record belongs to.
	origin map[int]*kgo.Record
	// send, if set, hands a record to the Kafka client (txn.produce).
	// handOver calls it for recs[produced:n]; the order step hands over
	// each chunk as soon as it and every chunk before it are complete, so
	// that the client sends them while the rest is being projected.
	// orders[:nextOrder] have had their outputs handed over.
	send      func(*kgo.Record)
	produced  int
	nextOrder int
	vals      [][]byte // values, for a schema.Prefetcher
	// pii are the PII guard's findings in this batch's outputs, piiDropped
	// the outputs it dropped per system, and quarantine the sampled
	// originals for the quarantine topic (pii.go).
	pii        []piiFinding
	piiDropped []int
	quarantine []kgo.Record
}

// order is one order record on its way through the order step.
type order struct {
	rec   *kgo.Record
	value []byte // bare Avro of the bundled schema
	head  policy.Head
	subj  subject
	key   int32 // 1 + index in batch.keys of the subject's prepared key; 0: none
	slot  int   // index in recs of its first output; -1: suppressed
	// objected: its subject objects to some system at its occurred_at;
	// those systems' slots stay empty.
	objected bool
	// used: the batch derives from its subject's key (invalidate).
	used bool
	// class and reason, while the batch's orders are being admitted, mark
	// a record for the dead-letter topic (class "" means valid so far).
	class, reason string
	scanErr       error
	// piiFound means the PII guard's first look, in the scan, found
	// something to look at closer (pii.go).
	piiFound bool
}

type forgetDone struct {
	status    string
	published time.Time // the request record's timestamp
}

type deadLettered struct{ topic, class string }

func (b *batch) reset() {
	clear(b.inForgets)
	b.inForgets = b.inForgets[:0]
	clear(b.inOrders)
	b.inOrders = b.inOrders[:0]
	clear(b.recs)
	b.recs = b.recs[:0]
	b.emitted = 0
	clear(b.orders)
	b.orders = b.orders[:0]
	b.lookups = b.lookups[:0]
	clear(b.lookupIDs)
	b.lookupIDs = b.lookupIDs[:0]
	clear(b.resolved)
	b.resolved = b.resolved[:0]
	clear(b.derive)
	b.derive = b.derive[:0]
	clear(b.keys)
	b.keys = b.keys[:0]
	if b.pending == nil {
		b.pending = map[string]int{}
		b.deriving = map[subject]int32{}
	}
	clear(b.pending)
	clear(b.deriving)
	b.stats = Stats{}
	b.forgets = b.forgets[:0]
	b.objections = b.objections[:0]
	clear(b.objected)
	clear(b.settle)
	b.settle = b.settle[:0]
	clear(b.notices)
	b.dlq = b.dlq[:0]
	if b.origin == nil {
		b.origin = map[int]*kgo.Record{}
	}
	clear(b.origin)
	b.send, b.produced, b.nextOrder = nil, 0, 0
	clear(b.pii)
	b.pii = b.pii[:0]
	clear(b.piiDropped)
	clear(b.quarantine)
	b.quarantine = b.quarantine[:0]
}

// values returns the values of recs that are within the size limit (the
// others are dead-lettered unread), for a schema.Prefetcher, in a buffer
// the batch reuses.
func (b *batch) values(recs []*kgo.Record, limit int) [][]byte {
	clear(b.vals)
	b.vals = b.vals[:0]
	for _, r := range recs {
		if len(r.Value) <= limit {
			b.vals = append(b.vals, r.Value)
		}
	}
	return b.vals
}

// split sorts the polled records into the two inputs, keeping their order.
func (b *batch) split(recs []*kgo.Record, orders, forgets string) {
	for _, r := range recs {
		switch r.Topic {
		case forgets:
			b.inForgets = append(b.inForgets, r)
		case orders:
			b.inOrders = append(b.inOrders, r)
		}
	}
}

// add queues a record at the end of recs. Records may point into buffers
// the batch reuses, so they stay valid until the batch's transaction ends;
// only the order step hands records over before recs is complete, once
// recs no longer grows.
func (b *batch) add(r kgo.Record) {
	b.recs = append(b.recs, r)
}

// handOver hands recs[produced:n] to send, in order; without send (a
// benchmark of the order step alone) it does nothing.
func (b *batch) handOver(n int) {
	if b.send == nil {
		return
	}
	for ; b.produced < n; b.produced++ {
		if b.recs[b.produced].Topic == "" {
			continue // an output of a system the subject objects to, or that the PII guard dropped
		}
		b.send(&b.recs[b.produced])
	}
}

// MaxIDBytes bounds every ID: event_id, order_id and customer_id in
// orders, subject_id and request_id in forget requests; longer ones break
// the contract. A confirmation echoes them, so this keeps every
// confirmation small.
const MaxIDBytes = 4096

// idProblem returns why id, the value of the ID field name, breaks the
// contract, or "": every ID is 1 to MaxIDBytes bytes of valid UTF-8
// without NUL bytes. A store keeps request IDs as text, which refuses
// both NUL and invalid UTF-8 (PostgreSQL), and a confirmation echoes the
// IDs as Avro strings; checking here keeps such a record from reaching the
// store at all. The reason never contains the ID's bytes.
func idProblem[T ~string | ~[]byte](name string, id T) string {
	switch {
	case len(id) == 0:
		return name + " is empty"
	case len(id) > MaxIDBytes:
		return fmt.Sprintf("%s is longer than %d bytes", name, MaxIDBytes)
	case !validUTF8(id):
		return name + " is not valid UTF-8"
	case containsNUL(id):
		return name + " contains a NUL byte"
	}
	return ""
}

// IDProblem returns why id breaks the contract's rule for the ID field
// name (1 to MaxIDBytes bytes of valid UTF-8 without NUL), or "". Tools
// that publish or look up IDs (`pseudonymizer forget`, `status`) check
// with it, so that they refuse what the service would dead-letter. The
// reason never contains the ID.
func IDProblem(name, id string) string { return idProblem(name, id) }

func validUTF8[T ~string | ~[]byte](id T) bool {
	switch v := any(id).(type) {
	case string:
		return utf8.ValidString(v)
	case []byte:
		return utf8.Valid(v)
	}
	return utf8.ValidString(string(id))
}

func containsNUL[T ~string | ~[]byte](id T) bool {
	for i := 0; i < len(id); i++ {
		if id[i] == 0 {
			return true
		}
	}
	return false
}

// Timestamps the pipeline accepts: the years 1 to 9999, which every store
// represents exactly. Others break the contract (and would overflow).
var (
	minMillis = time.Date(1, 1, 1, 0, 0, 0, 0, time.UTC).UnixMilli()
	maxMillis = time.Date(9999, 12, 31, 23, 59, 59, 999e6, time.UTC).UnixMilli()
)

func timeInRange(ms int64) bool { return ms >= minMillis && ms <= maxMillis }
