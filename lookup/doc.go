// Package lookup is the lookup API: it tells a web shop, while it renders
// a page, the pseudonyms each marketing system will see for an event in
// the stream, byte for byte, so that conversion pixels (Google Analytics'
// transaction_id, Meta's eventID, TikTok's event_id) carry pseudonyms
// rather than raw IDs and still deduplicate against the server-side copy.
//
// POST /v1/pseudonyms with a bearer token and
//
//	{"customer_id": "...", "occurred_at": "RFC 3339 (optional)",
//	 "values": {"order_id": "...", "event_id": "..."}, "systems": ["meta"]}
//
// answers 200 {"pseudonyms": {"meta": {"customer_id": "...", ...}}}, or
// 410 {"status": "suppressed"} for a customer forgotten at or after
// occurred_at; docs/lookup-api.yaml is the contract (OpenAPI 3.1), and
// docs/conversion-pixels.md walks a shop through it.
//
// # The same pseudonyms as the stream
//
// The API derives with the stream's code: the subject's key from the same
// store (Store.Resolve, which creates a new customer's key exactly as an
// order batch would, durable before it is used), prepared as the processor
// prepares it, and the customer pseudonym from policy.Plan's
// SubjectPseudonymKey, the other values from AppendStringPseudonym and
// AppendIntPseudonym, which make the Deriver calls Project makes. Which
// values each system gets is the policy's list of pseudonymized paths
// (Plan.Pseudonymized). occurred_at is taken in milliseconds, as the
// stream carries it; suppression (at or before the newest tombstone) and
// key creation (store.NeedsKey) follow the processor's rules.
//
// # One batch
//
// Lookups are served in batches by one goroutine (batch.go): the requests
// that arrive while a batch runs form the next one (at most MaxBatch), so
// under load a store round trip serves many lookups, and an idle API
// answers at once. A batch:
//
//  1. looks each subject up in its cache; the misses are resolved in one
//     Store.Resolve (Latest: the newest occurred_at asked for the subject);
//  2. takes the store Guard since the position of its previous guard,
//     evicts the subjects the guard lists as forgotten (all of them if
//     the guard is not Complete) and, if it used one of them, releases the
//     guard and starts again from 1 (at most 5 times, then 503);
//  3. under the guard: decides suppression and objections,
//     derives the answers, hands each to its request's handler, and waits
//     until every handler has written its response (each write bounded by
//     the write timeout, at most 20s);
//  4. releases the guard.
//
// Resolve runs before the guard, never under it, for the processor's
// reason (processor/txn.go): key creation takes the same lock shared on
// another connection, which must never queue behind a waiting Forget while
// this goroutine holds the lock.
//
// # Why no response derives from a key after that key's forget was confirmed
//
// The API takes the store's Guard around its responses as an order batch
// takes it around its Kafka commit, and the processor's proof
// (processor/doc.go, "Why no instance can publish with a forgotten key")
// carries over with "the response is written" in place of "the batch
// committed":
//
//   - Forget(S) takes the guard lock exclusively and appends S to the
//     forget log; its confirmation is published only after it committed.
//   - A batch writes responses only while it holds the lock shared, and it
//     holds it from before it checks the forget log (step 2) until every
//     response is written (step 3).
//   - The cache is read only by the batcher; the position it passes to
//     Guard is that of its previous guard, and the first is read before
//     any key is cached, so every forget committed after a key was cached
//     or resolved is listed by the batch's guard.
//
// So a response derived from S's key K was written either before Forget(S)
// could take the lock, and thus before its confirmation exists, or the
// batch's guard listed S: then K was evicted and the batch redone, and the
// redo resolves S afresh (no key, so 410 for an event at or before the
// tombstone; a fresh key for a later one). A forget that committed before
// K was resolved is seen by Resolve itself.
//
// A PostgreSQL guard is lost with its connection. The batch does not
// check the guard before writing: a Forget that finds a guard's connection
// gone waits, after committing, until 30s have passed since it first saw
// it gone (store/postgres/lostguard.go), and a batch writes all its
// responses within the write timeout (at most MaxWriteTimeout, 20s) of
// taking the guard, so they are written before any such confirmation. A
// lost guard is logged and counted (pseudonymizer_lookup_guard_lost_total).
// The embedded store's guards cannot be lost.
//
// # Objections
//
// A subject's objection state comes with its key from the same Resolve
// (store.Entry.Objection) and is cached with it. A system the subject
// objects to at the request's occurred_at (store.Objection.Objects, the
// stream's test) gets no pseudonyms: the 200 body leaves it out and lists
// it under "objected", and a request whose every system is objected is
// answered 410 {"status": "objected"}, so the shop fires no pixel for it.
// A new objection state is recorded in the forget log (store.KeyStore's
// Object), so the next guard lists the subject like a forgotten one: the
// batch that used the old state is redone, and a response written after
// the objection's confirmation reflects it (the argument of the section
// above, with "objection" for "forget").
//
// # Access and privacy
//
// The API is an oracle from customer IDs to pseudonyms, so it is off unless
// lookup.listen is set, listens apart from the metrics port, and answers
// only bearer tokens listed (by SHA-256) in lookup.tokens_file, a file
// that must not be readable by group or others. Tokens are compared in
// constant time; each has its systems (403 for others) and a rate (429
// above it). Error messages name the member and the rule, never a value;
// metrics carry token names, configured system names and status codes;
// nothing logs a customer ID or a value. Keys are cached prepared (the
// HMAC chaining values), by a keyed digest of the customer ID (the cache
// keeps no raw IDs, so an entry's size does not depend on the ID's
// length), and wiped when evicted, forgotten or at shutdown.
//
// # Files
//
//	server.go   Config, New, Serve, the handler: auth, rate, decode, scope, errors
//	request.go  the request decoder (hand-written, answering as encoding/json did:
//	            FuzzDecodeRequestEquivalence) and its limits
//	tokens.go   the tokens file, token generation, constant-time auth, rate buckets
//	batch.go    the batcher: cache, Resolve, Guard, derive, answer
//	metrics.go  Prometheus metrics
package lookup
