package config

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/hygiene/pseudonymizer/processor"
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
		{"two stores", strings.Replace(minimal, "store: {path: ./keys.db}", "store: {path: a, postgres: 'postgres://h/db'}", 1), "", "only one"},
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
		{"objection confirmations on the objections topic", minimal + "topics: {objections_applied: subjects.objections}\n", "",
			"topics.objections and topics.objections_applied"},
		{"objection dead letters on an output topic", minimal, "PSEUDONYMIZER_TOPICS_OBJECTIONS_DEAD_LETTER=orders.pseudo.meta",
			"topics.objections_dead_letter and the output topic of systems.meta"},
		{"no objections topic", minimal + "topics: {objections: \"\"}\n", "", "topics.objections is empty"},
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

// TestEnvironmentNames: a PSEUDONYMIZER_* variable that names no
// configuration key is an error with a suggestion; the listed non-config
// variables are accepted.
func TestEnvironmentNames(t *testing.T) {
	_, err := Load(writeConfig(t, minimal), []string{"PSEUDONYMIZER_KAFKA_BROKER=h:9092"})
	if err == nil {
		t.Fatal("misspelled PSEUDONYMIZER_KAFKA_BROKER accepted")
	}
	for _, want := range []string{"PSEUDONYMIZER_KAFKA_BROKER ", "did you mean PSEUDONYMIZER_KAFKA_BROKERS?"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q lacks %q", err, want)
		}
	}
	if strings.Contains(err.Error(), "h:9092") {
		t.Errorf("error %q echoes the value", err)
	}
	ok := []string{
		"PSEUDONYMIZER_KEK=c2VjcmV0", "PSEUDONYMIZER_FAILPOINT=x:1", "PSEUDONYMIZER_TEST_POSTGRES=postgres://x",
		"PSEUDONYMIZER_REQUIRE_POSTGRES=1", "PSEUDONYMIZER_INTEGRATION=1", "PSEUDONYMIZER_INTEGRATION_LOGS=1",
		"PSEUDONYMIZER_BENCH_WORKER=1", "PSEUDONYMIZER_SCHEMA_REGISTRY_TLS_CA_FILE=ca.pem",
		"PSEUDONYMIZER_REQUIRE_KMS=1", "PSEUDONYMIZER_REQUIRE_KAFKA=1",
	}
	if _, err := Load(writeConfig(t, minimal), ok); err != nil {
		t.Errorf("non-config and nested variables rejected: %v", err)
	}
}

// TestStoreOverride: a store given in the environment replaces the file's
// other store; two in the environment are still an error.
func TestStoreOverride(t *testing.T) {
	cfg, err := Load(writeConfig(t, minimal), []string{"PSEUDONYMIZER_STORE_POSTGRES=postgres://u@h/db"})
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Store.Postgres != "postgres://u@h/db" || cfg.Store.Path != "" {
		t.Errorf("store %+v, want only postgres", cfg.Store)
	}
	pgFile := strings.Replace(minimal, "store: {path: ./keys.db}", "store: {postgres: 'postgres://u@h/db'}", 1)
	cfg, err = Load(writeConfig(t, pgFile), []string{"PSEUDONYMIZER_STORE_PATH=/var/lib/keys.db"})
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Store.Postgres != "" || cfg.Store.Path != "/var/lib/keys.db" {
		t.Errorf("store %+v, want only path", cfg.Store)
	}
	_, err = Load(writeConfig(t, minimal), []string{"PSEUDONYMIZER_STORE_POSTGRES=postgres://u@h/db", "PSEUDONYMIZER_STORE_PATH=/k.db"})
	if err == nil || !strings.Contains(err.Error(), "only one") {
		t.Errorf("two stores from the environment: %v", err)
	}
}

// TestRelativePaths: file paths in the file are relative to its directory;
// paths from the environment stay relative to the working directory.
func TestRelativePaths(t *testing.T) {
	p := writeConfig(t, minimal+"kafka: {tls: {ca_file: ca.pem}}\n")
	dir := filepath.Dir(p)
	cfg, err := Load(p, []string{"PSEUDONYMIZER_KEYS_OLD_KEK_FILES=old.b64"})
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct{ key, got, want string }{
		{"keys.kek_file", cfg.Keys.KEKFile, filepath.Join(dir, "kek.b64")},
		{"store.path", cfg.Store.Path, filepath.Join(dir, "keys.db")},
		{"kafka.tls.ca_file", cfg.Kafka.TLS.CAFile, filepath.Join(dir, "ca.pem")},
		{"keys.old_kek_files (environment)", strings.Join(cfg.Keys.OldKEKFiles, ","), "old.b64"},
	} {
		if tc.got != tc.want {
			t.Errorf("%s = %s, want %s", tc.key, tc.got, tc.want)
		}
	}
}

// TestStorePathOfOlderVersions: a relative store.path that exists only
// relative to the working directory (where versions before 0.2 looked) is an
// error, not a new empty store with new keys.
func TestStorePathOfOlderVersions(t *testing.T) {
	work := t.TempDir()
	t.Chdir(work)
	if err := os.MkdirAll(filepath.Join(work, "data"), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(work, "data", "keys.db"), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(t.TempDir(), "config.yaml")
	if err := os.WriteFile(p, []byte("store: {path: data/keys.db}\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := Read(p, nil); err == nil || !strings.Contains(err.Error(), "store.path") {
		t.Fatalf("Read: %v, want an error naming store.path", err)
	}
	// Once it exists beside the file (or nowhere yet), the file's directory wins.
	if err := os.MkdirAll(filepath.Join(filepath.Dir(p), "data"), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(filepath.Dir(p), "data", "keys.db"), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	cfg, err := Read(p, nil)
	if err != nil || cfg.Store.Path != filepath.Join(filepath.Dir(p), "data", "keys.db") {
		t.Fatalf("Read: %q, %v", cfg.Store.Path, err)
	}
}

// TestKeyPathErrors: file errors name the key path and line, not Go types,
// and never echo the value.
func TestKeyPathErrors(t *testing.T) {
	for _, tc := range []struct{ name, text, want string }{
		{"unknown nested key", "kafka:\n  groupid: x\n", "line 2: unknown key kafka.groupid (did you mean group_id?)"},
		{"unknown top-level key", "systemz: {}\n", "unknown key systemz (did you mean systems?)"},
		{"unknown policy key", "systems:\n  meta:\n    keepp: [a]\n", "line 3: unknown key systems.meta.keepp"},
		{"bad duration", "kafka:\n  session_timeout: s3cr3t\n", "line 2: kafka.session_timeout must be a duration"},
		{"bad integer", "processing: {max_poll_records: s3cr3t}\n", "processing.max_poll_records must be an integer"},
		{"list wanted", "kafka: {brokers: {a: s3cr3t}}\n", "kafka.brokers must be a list"},
		{"mapping wanted", "kafka: s3cr3t\n", "kafka must be a mapping"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := Default()
			err := Parse([]byte(tc.text), &cfg)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %v, want one containing %q", err, tc.want)
			}
			for _, bad := range []string{"config.", "type", "s3cr3t", "time.Duration"} {
				if strings.Contains(strings.TrimPrefix(err.Error(), "config: "), bad) {
					t.Errorf("error %q contains %q", err, bad)
				}
			}
		})
	}
}

// TestMaxRecordBytesDerived: without processing.max_record_bytes, the limit
// leaves room for a dead letter within the producer's batch cap; an explicit
// value that does is accepted.
func TestMaxRecordBytesDerived(t *testing.T) {
	if got, want := processor.MaxRecordBytesFor(0), 1_000_012-16384; got != want {
		t.Errorf("derived limit %d, want %d", got, want)
	}
	if got, want := processor.MaxRecordBytesFor(262144), 262144-16384; got != want {
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

func TestKEKSources(t *testing.T) {
	const body = `
store: {path: ./keys.db}
systems:
  meta:
    keep: [event_type]
    pseudonymize: [customer_id]
`
	const url = "awskms:///alias/pz"
	for _, test := range []struct {
		name    string
		keys    string
		env     []string
		wantURL string
		file    bool // keys.kek_file remains set
		wantErr string
	}{
		{name: "url in the file", keys: "keys: {kek_url: " + url + "}", wantURL: url},
		{name: "url from the environment replaces the file's kek_file", keys: "keys: {kek_file: ./kek.b64}",
			env: []string{"PSEUDONYMIZER_KEYS_KEK_URL=" + url}, wantURL: url},
		{name: "PSEUDONYMIZER_KEK replaces the file's kek_url", keys: "keys: {kek_url: " + url + "}",
			env: []string{"PSEUDONYMIZER_KEK=c2VjcmV0"}},
		{name: "kek_file from the environment replaces the file's kek_url", keys: "keys: {kek_url: " + url + "}",
			env: []string{"PSEUDONYMIZER_KEYS_KEK_FILE=k.b64"}, file: true},
		{name: "both in the file", keys: "keys: {kek_url: " + url + ", kek_file: ./kek.b64}",
			wantErr: "set only one of keys.kek_url and keys.kek_file"},
		{name: "both in the environment", keys: "keys: {}",
			env: []string{"PSEUDONYMIZER_KEK=c2VjcmV0", "PSEUDONYMIZER_KEYS_KEK_URL=" + url}, wantErr: "set only one of keys.kek_url and PSEUDONYMIZER_KEK"},
		{name: "none", keys: "keys: {}", wantErr: "no KEK: set keys.kek_url"},
		{name: "old urls from the environment", keys: "keys: {kek_url: " + url + "}",
			env: []string{"PSEUDONYMIZER_KEYS_OLD_KEK_URLS=awskms:///alias/a,gcpkms://projects/p/locations/l/keyRings/r/cryptoKeys/k"}, wantURL: url},
	} {
		t.Run(test.name, func(t *testing.T) {
			cfg, err := Load(writeConfig(t, body+test.keys+"\n"), test.env)
			if test.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), test.wantErr) {
					t.Fatalf("Load: %v, want an error containing %q", err, test.wantErr)
				}
				if strings.Contains(err.Error(), "alias/pz") || strings.Contains(err.Error(), "c2VjcmV0") {
					t.Errorf("error echoes a value: %v", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got := cfg.Keys.KEKURL; got != test.wantURL {
				t.Errorf("kek_url %q, want %q", got, test.wantURL)
			}
			if got := cfg.Keys.KEKFile != ""; got != test.file {
				t.Errorf("kek_file set: %v, want %v", got, test.file)
			}
			if strings.Contains(test.name, "old urls") && len(cfg.Keys.OldKEKURLs) != 2 {
				t.Errorf("old_kek_urls %q, want 2", cfg.Keys.OldKEKURLs)
			}
		})
	}
}

// TestErasureNotices: systems.<name>.erasure_notices opts a system in; it
// is off by default, and a misspelling is an error.
func TestErasureNotices(t *testing.T) {
	cfg, err := Load(writeConfig(t, minimal+"  crm:\n    pseudonymize: [customer_id]\n    erasure_notices: true\n"), nil)
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]bool{}
	for _, p := range cfg.Policies() {
		got[p.System] = p.ErasureNotices
	}
	if !got["crm"] || got["meta"] {
		t.Errorf("erasure_notices per system: %v, want crm only", got)
	}
	_, err = Load(writeConfig(t, minimal+"    erasure_notice: true\n"), nil)
	if err == nil || !strings.Contains(err.Error(), "erasure_notice") {
		t.Errorf("misspelled erasure_notices: got %v, want an error naming it", err)
	}
}
