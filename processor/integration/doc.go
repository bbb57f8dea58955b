// Package integration is the end-to-end fault suite of the pseudonymizer
// (GitHub issue 4: exactly once under crashes, rebalances and outages,
// guarantees P4 and P7 of docs/guarantees.md).
//
// The tests build the real service binary (./cmd/pseudonymizer) once, start
// an in-process kfake cluster over TCP and a fresh PostgreSQL schema per
// test, and run several `pseudonymizer run` subprocesses in one consumer
// group while sample orders and forget requests stream in. They then inject
// faults: SIGKILL at random points and at each failpoint
// (PSEUDONYMIZER_FAILPOINT), broker errors through kfake faults and controls
// (Produce, EndTxn, InitProducerID, TxnOffsetCommit), PostgreSQL backends
// terminated and a PostgreSQL server stopped and restarted, and a zombie
// instance (SIGSTOP past the session and transaction timeouts, then
// SIGCONT).
//
// After the faults every instance is stopped and a read_committed consumer
// reads every topic to its end. The oracle: each order event appears exactly
// once on each system's topic (events are identified by their kept,
// per-event unique occurred_at), each customer has exactly one pseudonym per
// system across all crashes and no pseudonym appears in two systems, no raw
// identifier appears in any output key, value or header or in any log line,
// each forget request has exactly one confirmation, nothing was
// dead-lettered, and no transaction was left open (last stable offset equals
// high watermark on every partition).
//
// The tests only run with PSEUDONYMIZER_INTEGRATION=1 (set by .ci/run);
// otherwise they skip. PostgreSQL comes from pgtest (PSEUDONYMIZER_TEST_POSTGRES).
// The PostgreSQL restart test runs its own private PostgreSQL server
// (initdb as the postgres user on a free port) so that stopping it cannot
// disturb other packages' tests running at the same time; set
// PSEUDONYMIZER_INTEGRATION_PG_RESTART=shared to stop and restart the shared
// cluster with pg_ctlcluster instead (it is always restarted at cleanup).
// PSEUDONYMIZER_INTEGRATION_LOGS=DIR keeps the service logs in DIR.
//
// One kfake gap is bridged by the harness: a group member whose process
// died while its JoinGroup was held in a rebalance never gets a session
// timer in kfake, so it stays in the group for good and every later
// rebalance waits for it; since kfake restarts the rebalance timer on each
// join, the group can stall forever (every instance logging a JoinGroup
// "i/o timeout" every 70s). A Kafka broker expires such a member after its
// session timeout. The harness's reaper does the same: it removes, with
// LeaveGroup, the members of a process that exited at least one session
// timeout ago, and logs each removal. Each process gets its own Kafka
// client ID (name.start) so the reaper can tell them apart.
package integration
