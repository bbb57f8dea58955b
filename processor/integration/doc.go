// Package integration is the end-to-end fault suite of the pseudonymizer:
// exactly once under crashes, rebalances and outages (guarantees P4 and P7
// of docs/guarantees.md).
//
// The tests build the real service binary (./cmd/pseudonymizer) once, take
// a Kafka cluster and a fresh PostgreSQL schema per test, and run several
// `pseudonymizer run` subprocesses in one consumer group while sample
// orders and forget requests stream in. They then inject faults: SIGKILL at
// random points and at each failpoint (PSEUDONYMIZER_FAILPOINT), broker
// errors through kfake faults and controls (Produce, EndTxn,
// InitProducerID, TxnOffsetCommit), PostgreSQL backends terminated and a
// PostgreSQL server stopped and restarted, a zombie instance (SIGSTOP past
// the session and transaction timeouts, then SIGCONT), and faults of a
// real Kafka cluster (below).
//
// After the faults every instance is stopped and a read_committed consumer
// reads every topic to its high watermarks. The oracle: each order event
// appears exactly once on each system's topic (events are identified by
// their kept, per-event unique occurred_at), each customer has exactly one
// pseudonym per system across all crashes and no pseudonym appears in two
// systems, no raw identifier appears in any output key, value or header or
// in any log line, each forget request has exactly one confirmation,
// nothing was dead-lettered, and no transaction was left open (last stable
// offset equals high watermark on every partition).
//
// # Running
//
// The tests only run with PSEUDONYMIZER_INTEGRATION=1 (set by .ci/run);
// otherwise they skip. PostgreSQL comes from pgtest
// (PSEUDONYMIZER_TEST_POSTGRES). PSEUDONYMIZER_INTEGRATION_LOGS=DIR keeps
// the service logs in DIR. The PostgreSQL restart test runs its own
// private PostgreSQL server (initdb as the postgres user on a free port) so
// that stopping it cannot disturb other packages' tests running at the
// same time; set PSEUDONYMIZER_INTEGRATION_PG_RESTART=shared to stop and
// restart the shared cluster with pg_ctlcluster instead (it is always
// restarted at cleanup).
//
// # Which broker
//
// By default every test runs on an in-process kfake cluster over TCP.
// With PSEUDONYMIZER_TEST_KAFKA=host:port[,host:port…] the crash,
// rebalance, failpoint, zombie, PostgreSQL and oracle tests run against
// that Kafka cluster instead, each in its own namespace: topics, consumer
// group and transactional IDs get a unique prefix, and the topics and the
// group are deleted at cleanup. For example, with a broker from
// scripts/kafka/kafka.sh:
//
//	scripts/kafka/kafka.sh start -p 19092 -d /tmp/it-kafka
//	PSEUDONYMIZER_INTEGRATION=1 PSEUDONYMIZER_TEST_KAFKA=127.0.0.1:19092 go test ./processor/integration/
//
// TestBrokerFaults and TestOutputTooLarge inject errors with kfake's Fault
// and ControlKey, which a real broker does not have; they always run on
// kfake.
//
// # Real-broker faults
//
// The TestReal* tests run on private Apache Kafka clusters that they
// start with scripts/kafka/kafka.sh in a temporary directory on free ports
// (one single-node and one three-node cluster, each shared by the tests of
// the package that need it and stopped at the end), so that killing a node
// disturbs nobody else. They need Java and Maven (or Maven's cache of the
// broker's jars) and skip without them, unless PSEUDONYMIZER_REQUIRE_KAFKA=1
// makes that a failure. The brokers run detached from the test binary: one
// killed before its cleanup (a test timeout) leaves them running, in
// $TMPDIR/pz-it-kafka-*, to be stopped with `kafka.sh stop -d DIR`. Each
// checks the oracle after:
//
//   - TestRealBrokerKilled: the single broker SIGKILLed three times while
//     an output partition has an open transaction, and restarted.
//   - TestRealBrokerPaused: the broker SIGSTOPped past the session timeout,
//     then past the session and transaction timeouts, and resumed.
//   - TestRealClusterNodesKilled: on three nodes (replication factor 3,
//     min.insync.replicas 2), the leader of an output partition that has an
//     open transaction SIGKILLed, then the transaction coordinator of an
//     instance whose transaction is Ongoing; each restarted and back in sync
//     before the next kill.
//   - TestRealBrokerJoinKilled: a joining instance SIGKILLed three times
//     while the coordinator holds its JoinGroup (group PreparingRebalance
//     with it as a member, and its log shows the JoinGroup unanswered); the
//     group must become Stable with exactly the survivors by itself.
//
// # The kfake reaper
//
// One kfake gap is bridged by the harness, on kfake only: a group member
// whose process died while its JoinGroup was held in a rebalance never
// gets a session timer in kfake, so it stays in the group for good and
// every later rebalance waits for it; since kfake restarts the rebalance
// timer on each join, the group can stall forever (every instance logging
// a JoinGroup "i/o timeout" every 70s). A Kafka broker expires such a
// member after its session timeout (TestRealBrokerJoinKilled shows it).
// The harness's reaper does the same on kfake: it removes, with
// LeaveGroup, the members of a process that exited at least one session
// timeout ago, and logs each removal. Each process gets its own Kafka
// client ID (name.start) so the reaper can tell them apart. On a real
// broker no reaper runs.
package integration
