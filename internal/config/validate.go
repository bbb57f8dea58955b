package config

import (
	"errors"
	"fmt"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/hygiene/pseudonymizer/processor"
)

// Validate checks what can be checked without connecting anywhere. The
// policies are checked against the input schema by policy.Compile, and the
// KEK and store when they are opened.
func (c *Config) Validate() error {
	switch {
	case len(c.Kafka.Brokers) == 0:
		return errors.New("config: kafka.brokers is empty")
	case c.Kafka.GroupID == "":
		return errors.New("config: kafka.group_id is empty")
	case c.Kafka.TransactionTimeout < time.Second || c.Kafka.TransactionTimeout > 15*time.Second:
		// The broker aborts a stalled transaction within its timeout plus
		// about 10s; that must come before PostgreSQL ends the stalled
		// instance's guard (30s idle-in-transaction timeout), see
		// processor/doc.go.
		return errors.New("config: kafka.transaction_timeout must be between 1s and 15s")
	case c.Kafka.ProducerBatchMaxBytes < 0:
		return errors.New("config: kafka.producer_batch_max_bytes must not be negative")
	case c.Store.Postgres == "" && c.Store.Path == "":
		return errors.New("config: no key store: set store.postgres or store.path")
	case c.Store.Postgres != "" && c.Store.Path != "":
		return errors.New("config: set only one of store.postgres and store.path")
	case c.Keys.KEK == "" && c.Keys.KEKFile == "" && c.Keys.KEKURL == "":
		return errors.New("config: no KEK: set keys.kek_url (a KMS key), keys.kek_file or PSEUDONYMIZER_KEK")
	case c.Keys.KEKURL != "" && c.Keys.KEK != "":
		return errors.New("config: set only one of keys.kek_url and PSEUDONYMIZER_KEK")
	case c.Keys.KEKURL != "" && c.Keys.KEKFile != "":
		return errors.New("config: set only one of keys.kek_url and keys.kek_file (a retired KEK file goes to keys.old_kek_files)")
	case len(c.Systems) == 0:
		return errors.New("config: no systems configured")
	case c.Kafka.ProducerBatchMaxBytes > 0 && c.Kafka.ProducerBatchMaxBytes < 2*processor.DeadLetterHeadroom:
		return fmt.Errorf("config: kafka.producer_batch_max_bytes must be at least %d", 2*processor.DeadLetterHeadroom)
	case c.Processing.MaxRecordBytes < 0:
		return errors.New("config: processing.max_record_bytes must not be negative (0 derives it from kafka.producer_batch_max_bytes)")
	case c.Processing.MaxRecordBytes > processor.MaxRecordBytesFor(c.Kafka.ProducerBatchMaxBytes):
		// A bad record of that size could not be dead-lettered whole: its
		// dead letter would be cut (error.truncated), see
		// docs/topics-and-schemas.md, "Dead letters".
		batch := "the client default " + strconv.Itoa(processor.DefaultProducerBatchMaxBytes)
		if c.Kafka.ProducerBatchMaxBytes > 0 {
			batch = strconv.Itoa(c.Kafka.ProducerBatchMaxBytes)
		}
		return fmt.Errorf("config: processing.max_record_bytes (%d) leaves no room for a dead letter's key and headers within kafka.producer_batch_max_bytes (%s): set it to at most %d, or leave it unset to derive it",
			c.Processing.MaxRecordBytes, batch, processor.MaxRecordBytesFor(c.Kafka.ProducerBatchMaxBytes))
	case c.Processing.MaxPollRecords <= 0:
		return errors.New("config: processing.max_poll_records must be positive")
	case c.Processing.CacheSubjects < 0:
		return errors.New("config: processing.cache_subjects must not be negative")
	}
	for field, v := range map[string]string{
		"topics.orders": c.Topics.Orders, "topics.forget": c.Topics.Forget,
		"topics.forgotten": c.Topics.Forgotten, "topics.orders_dead_letter": c.Topics.OrdersDeadLetter,
		"topics.forget_dead_letter": c.Topics.ForgetDeadLetter, "topics.pseudo_prefix": c.Topics.PseudoPrefix,
		"topics.objections": c.Topics.Objections, "topics.objections_applied": c.Topics.ObjectionsApplied,
		"topics.objections_dead_letter": c.Topics.ObjectionsDeadLetter,
	} {
		if v == "" {
			return fmt.Errorf("config: %s is empty", field)
		}
	}
	if err := c.validateTopics(); err != nil {
		return err
	}
	if err := c.validateLookup(); err != nil {
		return err
	}
	if err := c.validatePII(); err != nil {
		return err
	}
	switch strings.ToUpper(c.Kafka.SASL.Mechanism) {
	case "", "PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512":
	default:
		return fmt.Errorf("config: kafka.sasl.mechanism %q is not PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512", c.Kafka.SASL.Mechanism)
	}
	switch strings.ToLower(c.Log.Level) {
	case "debug", "info", "warn", "error":
	default:
		return fmt.Errorf("config: log.level %q is not debug, info, warn or error", c.Log.Level)
	}
	switch strings.ToLower(c.Log.Format) {
	case "auto", "json", "text":
	default:
		return fmt.Errorf("config: log.format %q is not auto, json or text", c.Log.Format)
	}
	return nil
}

// validateTopics rejects any two roles that share a topic: the inputs, the
// confirmations, the dead letters and every system's output (pseudo_prefix
// + system name). A dead-letter or confirmation topic that is also a
// system's output would put raw orders or raw subject IDs on a marketing
// system's topic (P1); an output that is an input would loop.
func (c *Config) validateTopics() error {
	type role struct{ key, topic string }
	roles := []role{
		{"topics.orders", c.Topics.Orders},
		{"topics.forget", c.Topics.Forget},
		{"topics.forgotten", c.Topics.Forgotten},
		{"topics.orders_dead_letter", c.Topics.OrdersDeadLetter},
		{"topics.forget_dead_letter", c.Topics.ForgetDeadLetter},
		{"topics.objections", c.Topics.Objections},
		{"topics.objections_applied", c.Topics.ObjectionsApplied},
		{"topics.objections_dead_letter", c.Topics.ObjectionsDeadLetter},
	}
	if c.PII.QuarantineTopic != "" {
		roles = append(roles, role{"pii.quarantine_topic", c.PII.QuarantineTopic})
	}
	names := make([]string, 0, len(c.Systems))
	for n := range c.Systems {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		roles = append(roles, role{"the output topic of systems." + n + " (topics.pseudo_prefix + system name)", c.Topics.PseudoPrefix + n})
	}
	seen := make(map[string]string, len(roles))
	for _, r := range roles {
		if first, dup := seen[r.topic]; dup {
			return fmt.Errorf("config: %s and %s are the same topic %q; every input, confirmation, dead-letter and output topic must be distinct", first, r.key, r.topic)
		}
		seen[r.topic] = r.key
	}
	return nil
}
