// Package postgres implements store.KeyStore on PostgreSQL.
//
// Several pseudonymizer instances may share one database (and schema). They
// coordinate through the database alone:
//
//   - Subject keys are created in one write transaction per Resolve batch
//     (a plain INSERT; if another process created one of the keys since
//     they were read, it fails whole and is repeated as INSERT ... ON
//     CONFLICT DO NOTHING, then re-select), so concurrent creators in
//     different processes converge on one key.
//   - Forget takes an exclusive transaction-level advisory lock; Guard and the
//     key-creating part of Resolve take it shared. The lock key is derived
//     from the store's schema, so stores in different schemas of one database
//     do not contend.
//   - Every connection sets idle_in_transaction_session_timeout (30s by
//     default), so a stalled process that holds a Guard cannot block Forget
//     forever: PostgreSQL ends its session and releases the lock.
//
// The forget log's entries carry random tags (store.Position): after a
// restore from a backup (pg_restore, a PITR, a restored volume), a guard
// whose caller saw an entry that the restore lost reports Diverged, even
// when later forgets brought the sequence number back. A migration adds the
// tags; entries written before it carry none and are not checked.
//
// Raw subject IDs and request IDs are never sent to the database: rows are
// keyed by the subject's keyed hash and by SHA-256 of the request ID, and
// keys are stored only wrapped by the store.Keyring.
//
// Errors that mean "the database could not be reached or could not finish a
// transaction" match store.ErrUnavailable with errors.Is.
package postgres
