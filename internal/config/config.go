// Package config loads and validates the pseudonymizer's YAML configuration
// (see docs/configuration.md): defaults first, then the file, then
// environment variables named PSEUDONYMIZER_<SECTION>_<KEY>. Relative file
// paths in the file are relative to the file's directory.
package config

import (
	"os"
	"sort"
	"time"

	"github.com/hygiene/pseudonymizer/processor"
	"github.com/hygiene/pseudonymizer/processor/policy"
)

// EnvPrefix prefixes every environment override.
const EnvPrefix = "PSEUDONYMIZER_"

// Config is the whole configuration file.
type Config struct {
	Kafka          Kafka                    `yaml:"kafka"`
	Topics         Topics                   `yaml:"topics"`
	Store          Store                    `yaml:"store"`
	Keys           Keys                     `yaml:"keys"`
	HTTP           HTTP                     `yaml:"http"`
	Lookup         Lookup                   `yaml:"lookup"`
	Log            Log                      `yaml:"log"`
	Processing     Processing               `yaml:"processing"`
	SchemaRegistry SchemaRegistry           `yaml:"schema_registry"`
	Systems        map[string]policy.Policy `yaml:"systems"`
	PII            PII                      `yaml:"pii"`
}

// Kafka configures the Kafka client.
type Kafka struct {
	// Brokers are the seed brokers, host:port.
	Brokers []string `yaml:"brokers"`
	// GroupID is the consumer group shared by all instances.
	GroupID string `yaml:"group_id"`
	// TransactionalID must be unique per running instance and stable
	// across its restarts. Default: "<group_id>-<hostname>".
	TransactionalID string `yaml:"transactional_id"`
	// ClientID is sent to the brokers for their logs and quotas.
	ClientID string `yaml:"client_id"`
	// TransactionTimeout bounds how long an open transaction of a stalled
	// instance can hold back read_committed consumers.
	TransactionTimeout time.Duration `yaml:"transaction_timeout"`
	// SessionTimeout is the consumer group session timeout.
	SessionTimeout time.Duration `yaml:"session_timeout"`
	// CreateTopics creates missing output, confirmation and dead-letter
	// topics at start-up.
	CreateTopics bool `yaml:"create_topics"`
	// ProducerBatchMaxBytes caps the producer's record batches; 0 keeps
	// the client's default (1,000,012). Set it no higher than the smallest
	// max.message.bytes of the output, confirmation and dead-letter topics.
	ProducerBatchMaxBytes int `yaml:"producer_batch_max_bytes"`
	// TLS enables TLS to the brokers.
	TLS TLS `yaml:"tls"`
	// SASL configures SASL authentication.
	SASL SASL `yaml:"sasl"`
}

// TLS configures client TLS.
type TLS struct {
	Enabled            bool   `yaml:"enabled"`
	CAFile             string `yaml:"ca_file"`
	CertFile           string `yaml:"cert_file"`
	KeyFile            string `yaml:"key_file"`
	ServerName         string `yaml:"server_name"`
	InsecureSkipVerify bool   `yaml:"insecure_skip_verify"`
}

// SASL configures SASL authentication: mechanism PLAIN, SCRAM-SHA-256 or
// SCRAM-SHA-512.
type SASL struct {
	Mechanism string `yaml:"mechanism"`
	Username  string `yaml:"username"`
	Password  string `yaml:"password"`
}

// Topics names the topics; the defaults are those of docs/topics-and-schemas.md.
type Topics struct {
	Orders           string `yaml:"orders"`
	Forget           string `yaml:"forget"`
	Forgotten        string `yaml:"forgotten"`
	OrdersDeadLetter string `yaml:"orders_dead_letter"`
	ForgetDeadLetter string `yaml:"forget_dead_letter"`
	PseudoPrefix     string `yaml:"pseudo_prefix"`

	// Objections (issue 28): the objection states (input), their
	// confirmations and their dead letters.
	Objections           string `yaml:"objections"`
	ObjectionsApplied    string `yaml:"objections_applied"`
	ObjectionsDeadLetter string `yaml:"objections_dead_letter"`
}

// Store selects the key store: PostgreSQL (shared by many instances) or the
// embedded single-file store (one instance).
type Store struct {
	Postgres string `yaml:"postgres"`
	Path     string `yaml:"path"`
}

// Keys configures the key encryption keys (KEKs) that wrap subject keys.
type Keys struct {
	// KEKFile holds the active KEK, base64 of 32 bytes. The environment
	// variable PSEUDONYMIZER_KEK, if set, takes precedence.
	KEKFile string `yaml:"kek_file"`
	// KEK is the active KEK itself; only meant to come from the
	// environment (PSEUDONYMIZER_KEK), never from a file in a repo.
	KEK string `yaml:"-"`
	// OldKEKFiles hold retired KEKs, still used to unwrap keys until
	// `pseudonymizer rewrap` has re-wrapped them with the active KEK.
	OldKEKFiles []string `yaml:"old_kek_files"`
	// KEKURL names the active KEK in a key-management service, as a
	// gocloud.dev/secrets URL (awskms://, gcpkms://, azurekeyvault://;
	// base64key:// for tests). The KMS wraps one data key, kept in the
	// store, which wraps the subject keys. Set it or a KEK file, not both.
	KEKURL string `yaml:"kek_url"`
	// OldKEKURLs name retired KMS keys, still used to unwrap their data
	// keys until `pseudonymizer rewrap` has re-wrapped every key.
	OldKEKURLs []string `yaml:"old_kek_urls"`
	// AllowReadableKEKFiles accepts KEK files that group or others may
	// access. By default such a file stops start-up: a KEK should be
	// readable by the service's user only (chmod 600).
	AllowReadableKEKFiles bool `yaml:"allow_readable_kek_files"`
}

// HTTP configures the operational HTTP endpoint.
type HTTP struct {
	// Listen is the address of /metrics, /healthz and /readyz; empty
	// disables it.
	Listen string `yaml:"listen"`
}

// Log configures logging.
type Log struct {
	// Level is debug, info, warn or error.
	Level string `yaml:"level"`
	// Format is json, text or auto (text on a terminal, else json).
	Format string `yaml:"format"`
}

// Processing tunes the pipeline.
type Processing struct {
	// MaxRecordBytes is the largest raw record value accepted; larger ones
	// are dead-lettered with class too_large. 0 (the default) derives it
	// from the producer's batch cap (processor.MaxRecordBytesFor), so that every raw
	// record can be dead-lettered whole; a larger explicit value is a
	// configuration error.
	MaxRecordBytes int `yaml:"max_record_bytes"`
	// MaxPollRecords caps the records of one transaction.
	MaxPollRecords int `yaml:"max_poll_records"`
	// CacheSubjects bounds the number of subject keys cached in memory.
	CacheSubjects int `yaml:"cache_subjects"`
	// MaxBackoff caps the retry backoff during outages.
	MaxBackoff time.Duration `yaml:"max_backoff"`
	// ShutdownTimeout bounds a clean shutdown.
	ShutdownTimeout time.Duration `yaml:"shutdown_timeout"`
}

// SchemaRegistry configures the Confluent wire format; empty URL means bare
// Avro with the bundled schemas.
type SchemaRegistry struct {
	URL         string `yaml:"url"`
	Username    string `yaml:"username"`
	Password    string `yaml:"password"`
	BearerToken string `yaml:"bearer_token"`
	TLS         TLS    `yaml:"tls"`
}

// Default returns the configuration used where the file says nothing. The
// processing defaults are the processor's own (processor.Default*).
func Default() Config {
	return Config{
		Kafka: Kafka{
			Brokers:            []string{"127.0.0.1:9092"},
			GroupID:            "pseudonymizer",
			ClientID:           "pseudonymizer",
			TransactionTimeout: processor.DefaultTransactionTimeout,
			SessionTimeout:     processor.DefaultSessionTimeout,
			CreateTopics:       true,
		},
		Topics: Topics(processor.DefaultTopics()),
		HTTP:   HTTP{Listen: "127.0.0.1:9464"},
		Log:    Log{Level: "info", Format: "auto"},
		Processing: Processing{
			MaxPollRecords:  processor.DefaultMaxPollRecords,
			CacheSubjects:   processor.DefaultCacheSubjects,
			MaxBackoff:      processor.DefaultMaxBackoff,
			ShutdownTimeout: 30 * time.Second,
		},
	}
}

// Policies returns the systems' policies, sorted by system name.
func (c *Config) Policies() []policy.Policy {
	names := make([]string, 0, len(c.Systems))
	for n := range c.Systems {
		names = append(names, n)
	}
	sort.Strings(names)
	out := make([]policy.Policy, 0, len(names))
	for _, n := range names {
		p := c.Systems[n]
		p.System = n
		out = append(out, p)
	}
	return out
}

// ForgetGroupID returns the consumer group of the forget lane.
func (c *Config) ForgetGroupID() string { return c.Kafka.GroupID + processor.ForgetLaneSuffix }

// TxnID returns the transactional ID of this instance.
func (c *Config) TxnID() string {
	if c.Kafka.TransactionalID != "" {
		return c.Kafka.TransactionalID
	}
	host, err := os.Hostname()
	if err != nil || host == "" {
		host = "localhost"
	}
	return c.Kafka.GroupID + "-" + host
}
