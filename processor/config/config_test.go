package config

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func writeConfig(t *testing.T, text string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "config.yaml")
	if err := os.WriteFile(p, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

const minimal = `
store: {path: ./keys.db}
keys: {kek_file: ./kek.b64}
systems:
  meta:
    keep: [event_type]
    pseudonymize: [customer_id]
`

func TestDefaultsAndFile(t *testing.T) {
	cfg, err := Load(writeConfig(t, minimal+"kafka: {brokers: [a:9092, b:9092]}\n"), nil)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := strings.Join(cfg.Kafka.Brokers, ","), "a:9092,b:9092"; got != want {
		t.Errorf("brokers %s, want %s", got, want)
	}
	if got, want := cfg.Topics.Orders, "orders.raw"; got != want {
		t.Errorf("orders topic %s, want the contract's default %s", got, want)
	}
	if got, want := cfg.Processing.MaxRecordBytes, 0; got != want {
		t.Errorf("max_record_bytes %d, want %d (derived from the producer batch cap)", got, want)
	}
	if got := cfg.Policies(); len(got) != 1 || got[0].System != "meta" {
		t.Errorf("policies %+v", got)
	}
}

func TestEnvironmentOverrides(t *testing.T) {
	env := []string{
		"PSEUDONYMIZER_KAFKA_BROKERS=x:1, y:2",
		"PSEUDONYMIZER_KAFKA_TRANSACTION_TIMEOUT=5s",
		"PSEUDONYMIZER_KAFKA_TLS_ENABLED=true",
		"PSEUDONYMIZER_STORE_PATH=",
		"PSEUDONYMIZER_STORE_POSTGRES=postgres://u@h/db",
		"PSEUDONYMIZER_KEK=c2VjcmV0",
		"PSEUDONYMIZER_TOPICS_PSEUDO_PREFIX=out.",
		"PSEUDONYMIZER_PROCESSING_CACHE_SUBJECTS=42",
		"OTHER_VARIABLE=ignored",
	}
	cfg, err := Load(writeConfig(t, minimal), env)
	if err != nil {
		t.Fatal(err)
	}
	switch {
	case strings.Join(cfg.Kafka.Brokers, ",") != "x:1,y:2":
		t.Errorf("brokers %v", cfg.Kafka.Brokers)
	case cfg.Kafka.TransactionTimeout != 5*time.Second:
		t.Errorf("transaction timeout %v", cfg.Kafka.TransactionTimeout)
	case !cfg.Kafka.TLS.Enabled:
		t.Errorf("tls not enabled")
	case cfg.Store.Postgres != "postgres://u@h/db" || cfg.Store.Path != "":
		t.Errorf("store %+v", cfg.Store)
	case cfg.Keys.KEK != "c2VjcmV0":
		t.Errorf("KEK not taken from PSEUDONYMIZER_KEK")
	case cfg.Topics.PseudoPrefix != "out.":
		t.Errorf("prefix %q", cfg.Topics.PseudoPrefix)
	case cfg.Processing.CacheSubjects != 42:
		t.Errorf("cache %d", cfg.Processing.CacheSubjects)
	}
}

func TestInvalid(t *testing.T) {
	for _, tc := range []struct{ name, text, env, want string }{
		{"unknown key", minimal + "kafka: {brokerz: [a]}\n", "", "brokerz"},
		{"two stores", minimal, "PSEUDONYMIZER_STORE_POSTGRES=postgres://h/db", "only one"},
		{"no systems", "store: {path: a}\nkeys: {kek_file: k}\n", "", "no systems"},
		{"long transaction timeout", minimal + "kafka: {transaction_timeout: 60s}\n", "", "transaction_timeout"},
		{"bad duration in env", minimal, "PSEUDONYMIZER_KAFKA_SESSION_TIMEOUT=soon", "SESSION_TIMEOUT"},
		{"bad log level", minimal + "log: {level: loud}\n", "", "log.level"},
		{"bad sasl", minimal + "kafka: {sasl: {mechanism: GSSAPI}}\n", "", "sasl"},
		// Issue 12 case 4: a dead letter of a record this large cannot be
		// produced whole.
		{"max_record_bytes above the client's batch cap", minimal + "processing: {max_record_bytes: 1048576}\n", "",
			"processing.max_record_bytes (1048576) leaves no room for a dead letter's key and headers within kafka.producer_batch_max_bytes (the client default 1000012): set it to at most 983628"},
		{"max_record_bytes above a lowered batch cap", minimal + "kafka: {producer_batch_max_bytes: 262144}\nprocessing: {max_record_bytes: 262144}\n", "",
			"kafka.producer_batch_max_bytes (262144): set it to at most 245760"},
		{"tiny batch cap", minimal + "kafka: {producer_batch_max_bytes: 1000}\n", "", "kafka.producer_batch_max_bytes must be at least"},
		// Issue 12 case 5: raw orders or raw subject IDs on a marketing
		// system's topic (P1).
		{"dead letters on an output topic", minimal + "topics: {orders_dead_letter: orders.pseudo.meta}\n", "",
			"topics.orders_dead_letter and the output topic of systems.meta"},
		{"confirmations on an output topic", minimal + "topics: {forgotten: orders.pseudo.meta}\n", "",
			"topics.forgotten and the output topic of systems.meta"},
		{"forget dead letters on an output topic", minimal, "PSEUDONYMIZER_TOPICS_FORGET_DEAD_LETTER=orders.pseudo.meta",
			"topics.forget_dead_letter and the output topic of systems.meta"},
		{"prefix and system name make an input topic", "store: {path: a}\nkeys: {kek_file: k}\ntopics: {pseudo_prefix: orders.}\nsystems: {raw: {keep: [event_type], pseudonymize: [customer_id]}}\n", "",
			"topics.orders and the output topic of systems.raw"},
		{"one topic for both dead-letter kinds", minimal + "topics: {forget_dead_letter: orders.raw.dlq}\n", "",
			"topics.orders_dead_letter and topics.forget_dead_letter"},
		{"dead letters on an input topic", minimal + "topics: {orders_dead_letter: subjects.forget}\n", "",
			"topics.forget and topics.orders_dead_letter"},
		{"confirmations on the forget topic", minimal + "topics: {forgotten: subjects.forget}\n", "",
			"topics.forget and topics.forgotten"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var env []string
			if tc.env != "" {
				env = []string{tc.env}
			}
			_, err := Load(writeConfig(t, tc.text), env)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %v, want one naming %q", err, tc.want)
			}
			if strings.Contains(err.Error(), "\n") {
				t.Errorf("error spans lines: %q", err)
			}
		})
	}
}

// TestMaxRecordBytesDerived: without processing.max_record_bytes, the limit
// leaves room for a dead letter within the producer's batch cap; an explicit
// value that does is accepted.
func TestMaxRecordBytesDerived(t *testing.T) {
	if got, want := MaxRecordBytesFor(0), 1_000_012-16384; got != want {
		t.Errorf("derived limit %d, want %d", got, want)
	}
	if got, want := MaxRecordBytesFor(262144), 262144-16384; got != want {
		t.Errorf("derived limit for a 256 KiB batch cap %d, want %d", got, want)
	}
	if _, err := Load(writeConfig(t, minimal+"processing: {max_record_bytes: 983628}\n"), nil); err != nil {
		t.Errorf("the largest explicit limit that fits: %v", err)
	}
	if _, err := Load(writeConfig(t, minimal+"kafka: {producer_batch_max_bytes: 2000000}\nprocessing: {max_record_bytes: 1048576}\n"), nil); err != nil {
		t.Errorf("1 MiB with a 2 MB batch cap: %v", err)
	}
}

// FuzzParse: the YAML loader never panics on arbitrary input.
func FuzzParse(f *testing.F) {
	f.Add([]byte(minimal))
	f.Add([]byte("kafka: {brokers: [a]}\nsystems: {x: {keep: [a.b.c]}}"))
	f.Fuzz(func(t *testing.T, b []byte) {
		cfg := Default()
		if Parse(b, &cfg) == nil {
			_ = cfg.Validate()
		}
	})
}
