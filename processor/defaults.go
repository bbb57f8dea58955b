package processor

import "time"

// The defaults of Config, defined once: internal/config starts from them and
// New fills them in where a Config leaves a field zero.
const (
	// DefaultTransactionTimeout is the Kafka transaction timeout.
	DefaultTransactionTimeout = 10 * time.Second
	// DefaultSessionTimeout is the consumer group session timeout.
	DefaultSessionTimeout = 15 * time.Second
	// DefaultMaxPollRecords caps the records of one transaction.
	DefaultMaxPollRecords = 10_000
	// DefaultMaxBackoff caps the retry backoff during outages.
	DefaultMaxBackoff = 30 * time.Second
	// DefaultCacheSubjects bounds the subject cache of a configured
	// service (a Config with CacheSubjects 0 caches nothing).
	DefaultCacheSubjects = 1_000_000
	// DefaultProducerBatchMaxBytes is the Kafka client's default cap on a
	// record batch (franz-go's; the Java producer's max.request.size is of
	// the same order): no record larger than it can be produced.
	DefaultProducerBatchMaxBytes = 1_000_012
	// DeadLetterHeadroom is what a dead letter may add to the raw value it
	// carries: its original key, the error.* and source.* headers and the
	// record framing. A raw record of up to the producer's batch cap minus
	// this can always be dead-lettered whole.
	DeadLetterHeadroom = 16 << 10
	// ForgetLaneSuffix is appended to the order lane's group and
	// transactional IDs to name the forget lane's.
	ForgetLaneSuffix = ".forgets"
)

// MaxRecordBytesFor returns the default MaxRecordBytes for a producer batch
// cap (0: the client's default): the largest raw value whose dead letter
// still fits in one record batch.
func MaxRecordBytesFor(producerBatchMaxBytes int) int {
	if producerBatchMaxBytes <= 0 {
		producerBatchMaxBytes = DefaultProducerBatchMaxBytes
	}
	return producerBatchMaxBytes - DeadLetterHeadroom
}

// Topics names the topics a Processor reads and writes.
type Topics struct {
	// Orders is the raw order events (input).
	Orders string
	// Forget is the forget requests (input).
	Forget string
	// Forgotten is the forget confirmations (output).
	Forgotten string
	// OrdersDeadLetter and ForgetDeadLetter take the inputs that cannot be
	// processed, with their reason.
	OrdersDeadLetter, ForgetDeadLetter string
	// PseudoPrefix, followed by a system's name, is that system's output
	// topic.
	PseudoPrefix string
	// Objections is the objection states (input, compacted, keyed by
	// subject ID), consumed by the forget lane; ObjectionsApplied their
	// confirmations (output); ObjectionsDeadLetter the objection records
	// that cannot be processed.
	Objections, ObjectionsApplied, ObjectionsDeadLetter string
}

// DefaultTopics returns the topic names of docs/topics-and-schemas.md.
func DefaultTopics() Topics {
	return Topics{
		Orders:           "orders.raw",
		Forget:           "subjects.forget",
		Forgotten:        "subjects.forgotten",
		OrdersDeadLetter: "orders.raw.dlq",
		ForgetDeadLetter: "subjects.forget.dlq",
		PseudoPrefix:     "orders.pseudo.",

		Objections:           "subjects.objections",
		ObjectionsApplied:    "subjects.objections.applied",
		ObjectionsDeadLetter: "subjects.objections.dlq",
	}
}
