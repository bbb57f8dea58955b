// Package config loads and validates the pseudonymizer's YAML configuration
// (see docs/configuration.md): defaults first, then the file, then
// environment variables named PSEUDONYMIZER_<SECTION>_<KEY>. Relative file
// paths in the file are relative to the file's directory.
package config

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"reflect"
	"sort"
	"strconv"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/hygiene/pseudonymizer/processor/policy"
)

// EnvPrefix prefixes every environment override.
const EnvPrefix = "PSEUDONYMIZER_"

// DefaultProducerBatchMaxBytes is the Kafka client's default cap on a
// record batch (franz-go's, and the Java producer's max.request.size is of
// the same order); no record larger than it can be produced.
const DefaultProducerBatchMaxBytes = 1_000_012

// DeadLetterHeadroom is what a dead letter may add to the raw value it
// carries: its original key, the error.* and source.* headers and the
// record framing. A raw record of up to the producer's batch cap minus this
// can always be dead-lettered whole.
const DeadLetterHeadroom = 16 << 10

// MaxRecordBytesFor returns the derived default of
// processing.max_record_bytes for a producer batch cap (0: the client's
// default): the largest raw value whose dead letter still fits in one
// record batch.
func MaxRecordBytesFor(producerBatchMaxBytes int) int {
	if producerBatchMaxBytes <= 0 {
		producerBatchMaxBytes = DefaultProducerBatchMaxBytes
	}
	return producerBatchMaxBytes - DeadLetterHeadroom
}

// Config is the whole configuration file.
type Config struct {
	Kafka          Kafka                    `yaml:"kafka"`
	Topics         Topics                   `yaml:"topics"`
	Store          Store                    `yaml:"store"`
	Keys           Keys                     `yaml:"keys"`
	HTTP           HTTP                     `yaml:"http"`
	Log            Log                      `yaml:"log"`
	Processing     Processing               `yaml:"processing"`
	SchemaRegistry SchemaRegistry           `yaml:"schema_registry"`
	Systems        map[string]policy.Policy `yaml:"systems"`
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
	// from the producer's batch cap (MaxRecordBytesFor), so that every raw
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

// Default returns the configuration used where the file says nothing.
func Default() Config {
	return Config{
		Kafka: Kafka{
			Brokers:            []string{"127.0.0.1:9092"},
			GroupID:            "pseudonymizer",
			ClientID:           "pseudonymizer",
			TransactionTimeout: 10 * time.Second,
			SessionTimeout:     15 * time.Second,
			CreateTopics:       true,
		},
		Topics: Topics{
			Orders:           "orders.raw",
			Forget:           "subjects.forget",
			Forgotten:        "subjects.forgotten",
			OrdersDeadLetter: "orders.raw.dlq",
			ForgetDeadLetter: "subjects.forget.dlq",
			PseudoPrefix:     "orders.pseudo.",
		},
		HTTP: HTTP{Listen: "127.0.0.1:9464"},
		Log:  Log{Level: "info", Format: "auto"},
		Processing: Processing{
			MaxPollRecords:  10000,
			CacheSubjects:   1_000_000,
			MaxBackoff:      30 * time.Second,
			ShutdownTimeout: 30 * time.Second,
		},
	}
}

// Load reads a configuration file, applies environment overrides from
// environ (os.Environ() form) and validates the result.
func Load(path string, environ []string) (Config, error) {
	cfg, err := Read(path, environ)
	if err != nil {
		return cfg, err
	}
	if err := cfg.Validate(); err != nil {
		return cfg, err
	}
	return cfg, nil
}

// Read is Load without Validate, for commands that need only part of the
// configuration (such as `pseudonymizer schema`).
func Read(path string, environ []string) (Config, error) {
	cfg := Default()
	if path != "" {
		b, err := os.ReadFile(path)
		if err != nil {
			return cfg, fmt.Errorf("config: %w", err)
		}
		if err := Parse(b, &cfg); err != nil {
			return cfg, err
		}
		if err := cfg.resolvePaths(filepath.Dir(path)); err != nil {
			return cfg, err
		}
	}
	if err := applyEnv(&cfg, environ); err != nil {
		return cfg, err
	}
	return cfg, nil
}

// Parse decodes YAML into cfg, rejecting unknown keys. Errors name the key
// path (kafka.group_id) and line, never Go types or the offending value.
func Parse(b []byte, cfg *Config) error {
	var root yaml.Node
	if err := yaml.Unmarshal(b, &root); err != nil {
		return fmt.Errorf("config: %s", strings.ReplaceAll(err.Error(), "\n", "; "))
	}
	if len(root.Content) == 0 {
		return nil // empty file
	}
	if err := checkNode(root.Content[0], reflect.TypeOf(cfg).Elem(), ""); err != nil {
		return err
	}
	dec := yaml.NewDecoder(bytes.NewReader(b))
	dec.KnownFields(true)
	if err := dec.Decode(cfg); err != nil && !errors.Is(err, io.EOF) {
		return fmt.Errorf("config: %s", strings.ReplaceAll(err.Error(), "\n", "; "))
	}
	return nil
}

var durationType = reflect.TypeOf(time.Duration(0))

// checkNode checks n against the configuration type t: every mapping key
// must be a field's YAML name and every scalar must decode into its field.
// path is n's key path, for the error.
func checkNode(n *yaml.Node, t reflect.Type, path string) error {
	if n.Kind == yaml.AliasNode && n.Alias != nil {
		n = n.Alias
	}
	if n.Tag == "!!null" {
		return nil
	}
	switch {
	case t.Kind() == reflect.Struct:
		if n.Kind != yaml.MappingNode {
			return typeError(n, t, path)
		}
		for i := 0; i+1 < len(n.Content); i += 2 {
			k, v := n.Content[i], n.Content[i+1]
			if k.Value == "<<" {
				continue // a merge key: yaml checks the merged keys
			}
			f, ok := fieldByTag(t, k.Value)
			if !ok {
				return fmt.Errorf("config: line %d: unknown key %s%s", k.Line, join(path, k.Value), suggest(t, k.Value))
			}
			if err := checkNode(v, f.Type, join(path, k.Value)); err != nil {
				return err
			}
		}
	case t.Kind() == reflect.Map:
		if n.Kind != yaml.MappingNode {
			return typeError(n, t, path)
		}
		for i := 0; i+1 < len(n.Content); i += 2 {
			if err := checkNode(n.Content[i+1], t.Elem(), join(path, n.Content[i].Value)); err != nil {
				return err
			}
		}
	case t.Kind() == reflect.Slice:
		if n.Kind != yaml.SequenceNode {
			return typeError(n, t, path)
		}
		for _, e := range n.Content {
			if err := checkNode(e, t.Elem(), path); err != nil {
				return err
			}
		}
	default:
		if n.Kind != yaml.ScalarNode || n.Decode(reflect.New(t).Interface()) != nil {
			return typeError(n, t, path)
		}
	}
	return nil
}

// typeError names the key path and what it wants, without the value (which
// may be a secret).
func typeError(n *yaml.Node, t reflect.Type, path string) error {
	want := "a string"
	switch {
	case t == durationType:
		want = "a duration such as 10s"
	case t.Kind() == reflect.Bool:
		want = "true or false"
	case t.Kind() >= reflect.Int && t.Kind() <= reflect.Uint64:
		want = "an integer"
	case t.Kind() == reflect.Slice:
		want = "a list"
	case t.Kind() == reflect.Struct || t.Kind() == reflect.Map:
		want = "a mapping"
	}
	if path == "" {
		path = "the file"
	}
	return fmt.Errorf("config: line %d: %s must be %s", n.Line, path, want)
}

func join(path, key string) string {
	if path == "" {
		return key
	}
	return path + "." + key
}

// fieldByTag finds the field of struct type t whose YAML name is name.
func fieldByTag(t reflect.Type, name string) (reflect.StructField, bool) {
	for i := 0; i < t.NumField(); i++ {
		f := t.Field(i)
		if tag := strings.Split(f.Tag.Get("yaml"), ",")[0]; tag != "" && tag != "-" && tag == name {
			return f, true
		}
	}
	return reflect.StructField{}, false
}

// suggest returns " (did you mean X?)" for the field of t closest to name.
func suggest(t reflect.Type, name string) string {
	var cands []string
	for i := 0; i < t.NumField(); i++ {
		if tag := strings.Split(t.Field(i).Tag.Get("yaml"), ",")[0]; tag != "" && tag != "-" {
			cands = append(cands, tag)
		}
	}
	if best := closest(name, cands); best != "" {
		return " (did you mean " + best + "?)"
	}
	return ""
}

// closest returns the candidate nearest to s that differs from it in at
// most 3 edits (ignoring case and underscores), or "".
func closest(s string, cands []string) string {
	norm := func(x string) string { return strings.ReplaceAll(strings.ToLower(x), "_", "") }
	best, bestD := "", 4
	for _, c := range cands {
		if d := editDistance(norm(s), norm(c)); d < bestD {
			best, bestD = c, d
		}
	}
	return best
}

func editDistance(a, b string) int {
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}

// resolvePaths makes the file's relative paths relative to dir, the
// directory of the configuration file, rather than the working directory.
//
// Earlier versions resolved them against the working directory. For
// store.path that difference is dangerous: a deployment started from another
// directory would open a new, empty store and hand out new keys (new
// pseudonyms for every customer). So a relative store.path that exists only
// relative to the working directory is an error, not a silent new store.
func (c *Config) resolvePaths(dir string) error {
	if p := c.Store.Path; p != "" && !filepath.IsAbs(p) {
		inDir := filepath.Join(dir, p)
		if _, err := os.Stat(inDir); errors.Is(err, os.ErrNotExist) {
			if _, err := os.Stat(p); err == nil && filepath.Clean(dir) != "." {
				return fmt.Errorf("config: store.path %q is relative to the configuration file's directory, where it does not exist, but exists relative to the working directory (where older versions looked); set an absolute path", p)
			}
		}
	}
	abs := func(p *string) {
		if *p != "" && !filepath.IsAbs(*p) {
			*p = filepath.Join(dir, *p)
		}
	}
	abs(&c.Keys.KEKFile)
	for i := range c.Keys.OldKEKFiles {
		abs(&c.Keys.OldKEKFiles[i])
	}
	abs(&c.Store.Path)
	for _, t := range []*TLS{&c.Kafka.TLS, &c.SchemaRegistry.TLS} {
		abs(&t.CAFile)
		abs(&t.CertFile)
		abs(&t.KeyFile)
	}
	return nil
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
	case c.Kafka.ProducerBatchMaxBytes > 0 && c.Kafka.ProducerBatchMaxBytes < 2*DeadLetterHeadroom:
		return fmt.Errorf("config: kafka.producer_batch_max_bytes must be at least %d", 2*DeadLetterHeadroom)
	case c.Processing.MaxRecordBytes < 0:
		return errors.New("config: processing.max_record_bytes must not be negative (0 derives it from kafka.producer_batch_max_bytes)")
	case c.Processing.MaxRecordBytes > MaxRecordBytesFor(c.Kafka.ProducerBatchMaxBytes):
		// A bad record of that size could not be dead-lettered whole: its
		// dead letter would be cut (error.truncated), see README.
		batch := "the client default " + strconv.Itoa(DefaultProducerBatchMaxBytes)
		if c.Kafka.ProducerBatchMaxBytes > 0 {
			batch = strconv.Itoa(c.Kafka.ProducerBatchMaxBytes)
		}
		return fmt.Errorf("config: processing.max_record_bytes (%d) leaves no room for a dead letter's key and headers within kafka.producer_batch_max_bytes (%s): set it to at most %d, or leave it unset to derive it",
			c.Processing.MaxRecordBytes, batch, MaxRecordBytesFor(c.Kafka.ProducerBatchMaxBytes))
	case c.Processing.MaxPollRecords <= 0:
		return errors.New("config: processing.max_poll_records must be positive")
	case c.Processing.CacheSubjects < 0:
		return errors.New("config: processing.cache_subjects must not be negative")
	}
	for field, v := range map[string]string{
		"topics.orders": c.Topics.Orders, "topics.forget": c.Topics.Forget,
		"topics.forgotten": c.Topics.Forgotten, "topics.orders_dead_letter": c.Topics.OrdersDeadLetter,
		"topics.forget_dead_letter": c.Topics.ForgetDeadLetter, "topics.pseudo_prefix": c.Topics.PseudoPrefix,
	} {
		if v == "" {
			return fmt.Errorf("config: %s is empty", field)
		}
	}
	if err := c.validateTopics(); err != nil {
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

// ForgetLaneSuffix is appended to the group ID and the transactional ID to
// name the forget lane's consumer group and transactional ID: forget
// requests are consumed and confirmed apart from orders (processor/doc.go,
// "Two lanes").
const ForgetLaneSuffix = ".forgets"

// ForgetGroupID returns the consumer group of the forget lane.
func (c *Config) ForgetGroupID() string { return c.Kafka.GroupID + ForgetLaneSuffix }

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

// NonConfigEnv lists the PSEUDONYMIZER_* environment variables that are
// not configuration keys but are read elsewhere; names ending in "*" are
// prefixes. Any other PSEUDONYMIZER_* variable that names no configuration
// key is an error, so that a misspelled override is not silently ignored.
var NonConfigEnv = []string{
	EnvPrefix + "KEK",           // the active KEK itself (keys.kek_file's alternative)
	EnvPrefix + "FAILPOINT",     // crash injection for the fault tests
	EnvPrefix + "BENCH_WORKER",  // set by cmd/pseudonymizer-bench for its copy workers
	EnvPrefix + "PROFILE",       // set by cmd/pseudonymizer-bench: profile `run`
	EnvPrefix + "REQUIRE_*",     // tests: a missing PostgreSQL, Kafka broker, … fails instead of skipping
	EnvPrefix + "INTEGRATION",   // tests: run the integration suite
	EnvPrefix + "INTEGRATION_*", // tests: integration suite options
	EnvPrefix + "TEST_*",        // tests: PostgreSQL, Kafka and verbosity settings
}

func nonConfig(name string) bool {
	for _, n := range NonConfigEnv {
		if p, ok := strings.CutSuffix(n, "*"); ok && strings.HasPrefix(name, p) || name == n {
			return true
		}
	}
	return false
}

// applyEnv overrides scalar and list fields from PSEUDONYMIZER_<PATH>
// variables, where PATH is the YAML path in upper case joined by "_"
// (PSEUDONYMIZER_KAFKA_BROKERS="a:9092,b:9092",
// PSEUDONYMIZER_STORE_POSTGRES=...). PSEUDONYMIZER_KEK sets the KEK itself.
// A store set from the environment replaces the file's other store.
func applyEnv(cfg *Config, environ []string) error {
	env := map[string]string{}
	for _, kv := range environ {
		if k, v, ok := strings.Cut(kv, "="); ok && strings.HasPrefix(k, EnvPrefix) {
			env[k] = v
		}
	}
	if v, ok := env[EnvPrefix+"KEK"]; ok {
		cfg.Keys.KEK = v
	}
	known := map[string]bool{}
	if err := walkEnv(reflect.ValueOf(cfg).Elem(), strings.TrimSuffix(EnvPrefix, "_"), env, known); err != nil {
		return err
	}
	var unknown []string
	for k := range env {
		if !known[k] && !nonConfig(k) {
			unknown = append(unknown, k)
		}
	}
	if len(unknown) > 0 {
		sort.Strings(unknown)
		var names []string
		for k := range known {
			names = append(names, k)
		}
		hint := ""
		if best := closest(unknown[0], names); best != "" {
			hint = " (did you mean " + best + "?)"
		}
		return fmt.Errorf("config: unknown environment variable %s%s; configuration keys map to %s<SECTION>_<KEY>",
			strings.Join(unknown, ", "), hint, EnvPrefix)
	}
	// Likewise an active KEK given in the environment replaces the file's
	// active KEK of the other kind.
	_, kekSet := env[EnvPrefix+"KEK"]
	_, fileSet := env[EnvPrefix+"KEYS_KEK_FILE"]
	_, urlSet := env[EnvPrefix+"KEYS_KEK_URL"]
	switch {
	case urlSet && !kekSet && !fileSet && cfg.Keys.KEKURL != "":
		cfg.Keys.KEKFile = ""
	case (kekSet || fileSet) && !urlSet && (cfg.Keys.KEK != "" || cfg.Keys.KEKFile != ""):
		cfg.Keys.KEKURL = ""
	}
	pg, pgSet := env[EnvPrefix+"STORE_POSTGRES"]
	path, pathSet := env[EnvPrefix+"STORE_PATH"]
	switch {
	case pgSet && !pathSet && pg != "":
		cfg.Store.Path = ""
	case pathSet && !pgSet && path != "":
		cfg.Store.Postgres = ""
	}
	return nil
}

// walkEnv sets v's fields from env and records every variable name it
// knows in known.
func walkEnv(v reflect.Value, prefix string, env map[string]string, known map[string]bool) error {
	t := v.Type()
	for i := 0; i < t.NumField(); i++ {
		f := t.Field(i)
		tag := strings.Split(f.Tag.Get("yaml"), ",")[0]
		if tag == "" || tag == "-" {
			continue
		}
		name := prefix + "_" + strings.ToUpper(tag)
		fv := v.Field(i)
		if fv.Kind() == reflect.Struct && fv.Type() != durationType {
			if err := walkEnv(fv, name, env, known); err != nil {
				return err
			}
			continue
		}
		known[name] = true
		raw, ok := env[name]
		if !ok {
			continue
		}
		if err := setFromString(fv, raw); err != nil {
			return fmt.Errorf("config: environment %s: %w", name, err)
		}
	}
	return nil
}

func setFromString(fv reflect.Value, raw string) error {
	switch fv.Interface().(type) {
	case time.Duration:
		d, err := time.ParseDuration(raw)
		if err != nil {
			return err
		}
		fv.SetInt(int64(d))
		return nil
	}
	switch fv.Kind() {
	case reflect.String:
		fv.SetString(raw)
	case reflect.Bool:
		b, err := strconv.ParseBool(raw)
		if err != nil {
			return err
		}
		fv.SetBool(b)
	case reflect.Int, reflect.Int64:
		n, err := strconv.ParseInt(raw, 10, 64)
		if err != nil {
			return err
		}
		fv.SetInt(n)
	case reflect.Slice:
		var parts []string
		for _, p := range strings.Split(raw, ",") {
			if p = strings.TrimSpace(p); p != "" {
				parts = append(parts, p)
			}
		}
		fv.Set(reflect.ValueOf(parts))
	default:
		// Maps (systems) are configured in the file only.
		return fmt.Errorf("cannot be set from the environment")
	}
	return nil
}
