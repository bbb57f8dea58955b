// Package processor is the pseudonymizer's stream processor: it consumes raw
// order events and forget requests and produces, in one Kafka transaction
// per poll batch, each marketing system's pseudonymized copy, the forget
// confirmations, the erasure notices and the dead letters, together with
// the consumed offsets.
//
// # Two lanes
//
// Orders and forget requests run in two lanes (session.go), each its own
// consumer group and transactional session: the order lane in the
// configured group and transactional ID, the forget lane in the same with
// the suffix ".forgets" (ForgetLaneSuffix). The forget lane also consumes
// the objection states (objections.go), for the same reasons: they change
// the store under the exclusive lock, and may wait for a lost guard. Neither ever waits for
// the other: an order batch never carries a forget, and a forget that
// must wait (see "Why no instance can publish with a forgotten key") holds
// up only other forgets. The lanes share the store and the metrics; the
// forget lane never touches the subject cache, which the order lane keeps
// current through its guards like any other instance's. Before its first
// session, the forget lane's group is seeded with the order group's
// committed offsets of the forget topic if it has none (an upgrade from
// one lane; forgetgroup.go).
//
// # One order batch
//
// A batch is what one PollRecords returns. Its Kafka transaction (txn.go)
// begins, runs the order step, which queues records in the batch and
// hands them to the client as they are complete, and ends in a guarded
// commit or an abort. The store guard is taken after the keys are
// resolved and before anything is produced, and held until EndTxn
// returned: a forget that completes while the batch projects would make it
// stale (aborted and redone), so it waits for the commit instead:
//
//  1. Orders (orders.go, project.go), in four steps. Admit: each value is
//     unframed by the Wire (bare Avro, or the Confluent wire format
//     resolved to the bundled schema), then scanned (validated, IDs and
//     top-level field offsets located, no allocation; in parallel), checked
//     against the contract and looked up in the cache; bad ones are queued
//     for the dead-letter topic. With the PII guard on, the scan also reads
//     the strings the systems keep and marks events that may carry
//     identifying data in them (pii.go); only those are looked at again
//     when they are projected. Resolve: subjects missing from the cache
//     are resolved in one Store.Resolve call (one round trip; one more
//     write transaction if some need a fresh key, which is durable before
//     anything that uses it is committed to Kafka). Assign: in input
//     order, events that occurred at or before their subject's tombstone
//     are suppressed, and each other event gets one output slot per
//     system. Project: the emitted events are projected once per system by
//     up to GOMAXPROCS workers, in chunks, each writing its events'
//     pre-assigned slots; each chunk's records are handed to the client,
//     in input order, as soon as it and every chunk before it are
//     complete, so outputs keep the input order. A subject's customer
//     pseudonyms (the record keys, kept as 16-byte UUIDs) are derived once
//     per cached key, in parallel, in the assign step; the prepared HMAC
//     key is not cached: an event takes it from that derivation if its
//     subject's pseudonyms were derived in the same batch, and prepares it
//     (two SHA-256 compressions) otherwise. Each output record's timestamp
//     is set deliberately, never left to the produce clock: the event's
//     occurred_at at the system's precision, or the batch's start
//     truncated to the system's time unit (policy.Plan.RecordTime), so two
//     systems' records share no time finer than their policies allow.
//  2. Commit (txn.go): take the store Guard (after assign, before project:
//     if a subject the batch used was forgotten meanwhile, the batch is
//     aborted before it produced anything and redone), project, hand over
//     the rest, flush, commit the Kafka transaction (offsets included),
//     release the Guard.
//
// # One forget batch
//
// The forget lane's batch (forgets.go) begins its transaction, which sends
// nothing to the broker yet, and admits the requests. One Store.Forget
// call destroys the subjects' keys and writes their tombstones in one
// store transaction, and returns only when its confirmations may follow
// (see below; the transaction timeout does not run meanwhile). Then the
// confirmations are queued, and the erasure notices of the systems that
// opted in (notices.go: with notices on, Forget retains each destroyed
// key until the batch committed, and returns it again to a redone batch).
// The transaction commits without a guard: none of its records derives
// from a key. Then the keys retained for the notices are released. Forget
// is idempotent per request ID, so a batch that is aborted and redone
// confirms with the same status.
//
// The batch's objection states follow its forget requests (objections.go):
// one Store.Object call records them, under the same lock and with the
// same wait as Forget, and returns the keys of subjects whose applied state
// objects to a system with erasure notices; then their confirmations and
// notices are queued in the same transaction. Object is idempotent per
// request (its result is recorded), so a redone batch confirms the same.
//
// Dead letters (deadletter.go) are queued by both lanes: the original
// record with the reason in headers, cut to fit its topic. An output that
// the broker refuses as too large marks its input, and the redone batch
// dead-letters that input instead of retrying it for ever.
//
// Any error aborts the transaction; the session (session.go) rewinds to
// the committed offsets and the batch is redone after a capped, jittered
// backoff. Errors of the transactional client itself end the lane's
// session and a new one starts.
//
// # Files
//
//	processor.go   Config, New, Stats, readiness
//	defaults.go    Topics, the defaults of Config (internal/config starts from them)
//	keystore.go    KeyStore: the store calls the lanes make (store.KeyStore satisfies it)
//	session.go     Run: the store baseline, the two lanes, one transactional session after another, backoff
//	txn.go         an order batch's transaction: begin, hand over, flush, guarded commit, abort
//	batch.go       a batch's buffers (one per lane) and the contract's bounds
//	forgets.go     the forget lane's batch: admit, Store.Forget, confirm, commit
//	objections.go  objection states: admit, Store.Object, confirm, notices; the order path's check
//	forgetgroup.go before a forget session: seed the lane's group (upgrade), sweep retained keys
//	notices.go     erasure notices: tombstones from retained keys, settling them
//	orders.go      the order step: admit, resolve, assign
//	project.go     the order step's projection, in parallel, in input order
//	pii.go         the PII guard: identifying data inside the strings a system keeps is redacted, or the event withheld from it
//	deadletter.go  dead letters, record size limits, too-large outputs
//	cache.go       the subject cache: pointer-free slabs keyed by a keyed digest of the ID (no raw IDs), about 145 bytes per subject
//	topics.go      EnsureTopics
//	metrics.go     Prometheus metrics
//
// # Why no instance can publish with a forgotten key
//
// Orders and forget requests of one subject may be handled by different
// instances, and every instance caches keys. Three rules make a forget
// final:
//
//   - Store.Forget (and Store.Object) takes an exclusive lock (a PostgreSQL advisory lock; an
//     RWMutex in the embedded store), and appends each forgotten subject
//     hash to a forget log with a sequence number.
//   - Before committing to Kafka, a batch takes the same lock shared
//     (Store.Guard) and holds it until its EndTxn returned. The guard lists
//     the subjects forgotten since the previous guard of this instance: they
//     are evicted from the cache, and if the batch used any of their keys it
//     is aborted and redone (it will then suppress or use a fresh key).
//   - A confirmation is published only after its Forget committed.
//
// So a batch that used S's old key either committed before Forget(S) could
// take the lock, and thus before the confirmation exists, or it sees S in
// its guard and aborts. A PostgreSQL guard is lost with its connection (a
// killed backend, a server restart, a cut network), so the batch checks the
// guard right before EndTxn and aborts if it is gone. (The check also
// bounds the wait below: a batch commits under a lost guard only if the
// loss came after the check, when its transaction had already begun, so
// that transaction ends within its timeout of the loss.) What remains is
// the EndTxn round trip itself: if the guard's connection dies during it, a
// Forget of a subject of that batch gets the lock at once, while the
// batch's commit may still land. So the PostgreSQL store registers every
// connection that takes guards, with a session-level lock that lives
// exactly as long as the connection (store/postgres/lostguard.go). A
// Forget that finds a registered connection gone waits, after committing
// and outside the lock, until 30s have passed since it first saw it gone:
// by then the broker has ended any transaction begun under that guard (the
// transaction timeout is at most 15s, and the broker aborts a timed-out
// transaction within 10s more). The batch finds its guard lost when it
// releases it; this is logged and counted
// (pseudonymizer_guard_lost_total). Such a wait holds up only the forget
// lane, and only after a connection was lost (which includes an instance
// that crashed): normal forgets do not wait. The embedded store's guards
// cannot be lost. The lock is never held while waiting for anything but
// one EndTxn. A stalled (SIGSTOPped) holder cannot block forgets for ever:
// the PostgreSQL store sets idle_in_transaction_session_timeout (30s) above
// the Kafka transaction timeout (10s by default), so the broker aborts the
// stalled transaction before PostgreSQL drops its lock (and the next
// Forget then waits for the lost guard as above).
//
// The lookup API (package lookup) answers with pseudonyms derived from the
// same keys, outside any Kafka transaction. It takes the store Guard as a
// batch does, after its Resolve, and holds it until its responses are
// written: the rules above then hold with "the response is written" for
// "the batch committed" (the proof is in lookup's doc.go).
//
// The cache needs no time-to-live for correctness: it is invalidated through
// the guard, and it is bounded (processing.cache_subjects) for memory only.
// The forget-log position is read once at start, before any key is
// cached, so every later forget is seen by some guard; if the store's forget
// log was pruned past it, the guard says so and the whole cache is dropped.
//
// # Why a confirmed objection is enforced by every instance
//
// An objection must hold for every batch of every instance that commits
// after its confirmation, although each instance caches subjects with
// their objection state. It rides on the forget machinery:
//
//   - Store.Object takes the exclusive lock that Forget takes, writes the
//     subject's state next to its key (pz_objections, or the objections
//     bucket) and appends the subject's hash to the forget log, in one store
//     transaction. A state that changes nothing (older than the stored one
//     by effective_at, or not after the subject's tombstone) appends
//     nothing. Like Forget, Object then checks for lost guards and waits
//     for them (see above) before it returns.
//   - Store.Resolve returns a subject's active objection from the read that
//     returns its key (one more branch of the same statement in
//     PostgreSQL; one more bucket read in the embedded store), and the
//     cache keeps it with the key. A batch that used a subject whose state
//     changed since the previous guard finds the subject in its guard
//     (Guard.Forgotten lists every subject appended to the log, forgotten
//     or objecting), evicts it and is aborted and redone: the redo reads
//     the new state.
//   - A confirmation is published only after Object committed and
//     returned.
//
// So a batch that sent an event of S to system X under S's previous state
// either committed before Object(S) could take the lock, and thus before
// the confirmation exists, or sees S in its guard and aborts. A guard lost
// during the EndTxn round trip is covered by the wait, as for forgets. The
// cache needs nothing more: a guard that cannot list every change since
// the instance's position (Complete false) drops the whole cache. A
// subject without a key can object (UNKNOWN_SUBJECT): the state is
// recorded under its hash, and the Resolve that creates its first key
// reads it in the same statement; a state recorded between that read and
// the key's creation is caught by the guard like any other.
//
// What a batch that raced the objection may still emit: events of S at or
// after effective_at that it committed before Object took the lock (so
// before the confirmation), to X. Events dated before effective_at go out
// to every system whenever they come (a replay, a late event), because
// processing them was lawful then; the store keeps one state per subject,
// so "before" is judged against the latest state only (an event dated in an
// objection period that a later state replaced follows the later state).
//
// Forget wins: Forget deletes, in its own transaction, the objection state
// that took effect at or before its tombstone, and Object does not record
// a state that took effect at or before the subject's tombstone. Both
// orders therefore end in the same state, and a replay of the objections
// topic cannot bring back what a forget removed. A state that took effect
// after the tombstone is kept for the subject's next key.
//
// # A store restored to an older state
//
// If the key store is restored from a backup while instances run, its
// forget log loses the entries written after the backup, and the keys
// those forgets destroyed come back. An instance that saw those forgets
// must drop its whole cache: it cannot tell which of its cached keys the
// restored store lists as live, and new forgets of those subjects may
// follow. The sequence number alone cannot detect the restore: it goes
// backwards, but once enough forgets happened after the restore it is back
// where the instance last saw it, and the instance would take the new
// entries for the ones it already knows. A random epoch stored with the log
// does not help either: the backup holds it too. PostgreSQL's system
// identifier or timeline does not cover a pg_dump restore into the same
// cluster. So a position (store.Position) is a sequence number plus the
// tag of the entry at it, 16 random bytes drawn when the entry was written
// (for position 0, when the log was created). Each guard passes the
// position of the previous one; the store compares the tag it holds at that
// sequence number. An entry written after a restore has a fresh tag, and
// no restore can bring back the tag of an entry it lost, so a mismatch, or
// a log that ends before the position, means the log was rewound: the guard
// reports Diverged (and not Complete), the instance drops every cached key
// and aborts a batch that used one, logs an error and counts it
// (pseudonymizer_store_rewound_total). An instance whose last position
// predates the backup missed nothing and goes on. Entries written before
// tags existed carry none (a zero tag), and are not checked.
//
// This only protects the caches. The restore itself resurrects the keys of
// the subjects forgotten after the backup; the forget requests since then
// must be repeated (docs/operations.md, "Restoring the key store").
//
// # Key material in memory
//
// Unwrapped keys are overwritten when they are no longer needed, as a
// best-effort hygiene: Keyring.FillEntries keeps no copy of its own (the
// processor copies each key into its cache and clears the store's), the
// cache wipes a subject's key and pseudonyms when the subject is forgotten
// (at the next use of the cache or the end of the batch, whichever is
// first), evicted or dropped (evicted entries only after the batch that
// may still use them has ended), a worker wipes an event's prepared HMAC
// key when the event is projected, a key that Forget retained for erasure
// notices is wiped as soon as the notices are derived (with the forget
// lane's Deriver's buffers), and a store wipes its index key on Close.
// Go's garbage collector may have copied memory before
// (growing maps and slices move their contents), and the runtime does not
// guarantee that freed memory is cleared, so this narrows the window in
// which a memory dump reveals a key; it does not close it.
//
// # Hostile input
//
// Anyone who may write to the input topics may send anything. The rule:
// every input record ends as outputs, a dead letter or a retried outage;
// the time spent on a record is bounded by its size; no input can stop the
// service or a partition. It holds because:
//
//   - Sizes are checked before anything else: a record above
//     processing.max_record_bytes is dead-lettered unread. That limit is
//     checked at start-up against the producer's batch cap, with room for
//     the dead letter's headers; a dead letter that still does not fit its
//     topic is cut, with header error.truncated giving the original size,
//     and an output or confirmation the broker refuses as too large is
//     blamed on its input, which is then dead-lettered as too_large.
//   - No library decoder sees bytes a bounded walker has not accepted. Bare
//     orders are scanned by policy's validating walker. A registry writer
//     schema is compiled by schema/avrowalk when first fetched: recursive,
//     too deep or exploding schemas are refused (class schema) before hamba
//     builds a decoder for them; every body is then validated (block counts
//     bounded by the bytes that remain, a work budget proportional to the
//     record's size) before hamba decodes it. Forget requests likewise, in
//     both wire formats.
//   - Every ID (event_id, order_id, customer_id, request_id, subject_id)
//     is 1 to 4096 bytes of valid UTF-8 without NUL (idProblem), in both
//     wire formats: a registry writer may declare an ID as bytes, which
//     is promoted to string unchecked, and PostgreSQL text refuses NUL
//     and invalid UTF-8.
//   - A record the store refuses for its data (store.ErrRejected, e.g. a
//     PostgreSQL data exception, SQLSTATE class 22) is found by halving
//     the refused call and dead-lettered as rejected; its neighbours go
//     through. The store's error text keeps the SQLSTATE, not the data.
//   - In registry mode a batch looks its unknown schema IDs up once each,
//     8 at a time, at most 64 per batch (schema.Prefetcher); records with
//     other unknown IDs are dead-lettered as schema, and "not found" is
//     remembered for 5 minutes in a bounded LRU. A flood of made-up IDs
//     thus costs a batch a bounded wait, whatever the registry's speed.
//   - The subject cache keeps a keyed digest of each ID, not the ID: an
//     entry's size does not depend on the ID's length.
//   - Only failures that are not the record's fault (store, broker or
//     registry unreachable) abort a batch; they are retried with backoff.
//   - Configuration cannot route raw data to a marketing system: input,
//     confirmation, dead-letter and output topics must all differ.
//
// Objection states are validated by the same walker before hamba decodes
// them (bare and registry), and their IDs and system names are bounded,
// valid UTF-8 without NUL, or the record is dead-lettered.
//
// Held by processor/limits_test.go, processor/hostile_test.go,
// processor/hostile_internal_test.go, schema/registry/hostile_test.go,
// schema/registry/flood_test.go and the fuzz targets FuzzScan,
// FuzzValidate, FuzzOrderWriter, FuzzForget, FuzzContract and
// FuzzObjection.
//
// # Exactly once
//
// The session is a franz-go GroupTransactSession: outputs and offsets commit
// atomically, a rebalance during a batch aborts it, zombies are fenced by the
// transactional ID's epoch and by the group generation (KIP-447), and an
// unconfirmed commit counts as an abort. The first failed record of a
// batch aborts the whole transaction (producePromise, which works like
// kgo.AbortingFirstErrPromise), so a batch's fan-out reaches all systems
// or none.
package processor
