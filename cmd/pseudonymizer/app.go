package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"

	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/sasl/plain"
	"github.com/twmb/franz-go/pkg/sasl/scram"
	"github.com/twmb/franz-go/plugin/kslog"
	"golang.org/x/term"

	"github.com/hygiene/pseudonymizer/internal/config"
	"github.com/hygiene/pseudonymizer/processor/policy"
	"github.com/hygiene/pseudonymizer/schema"
	"github.com/hygiene/pseudonymizer/store"
	"github.com/hygiene/pseudonymizer/store/embedded"
	"github.com/hygiene/pseudonymizer/store/postgres"
)

// errMissingConfig is a usage error: exit status 2, as for any missing
// argument.
var errMissingConfig = &exitError{code: 2, err: errors.New("--config FILE is required")}

// loadConfig loads the file and the environment.
func loadConfig(path string) (config.Config, error) {
	if path == "" {
		return config.Config{}, errMissingConfig
	}
	return config.Load(path, os.Environ())
}

// loadSchemaConfig loads the file and the environment, checking only what
// commands that never connect need.
func loadSchemaConfig(path string) (config.Config, error) {
	if path == "" {
		return config.Config{}, errMissingConfig
	}
	return config.Read(path, os.Environ())
}

// newLogger builds the slog logger the configuration asks for.
func newLogger(c config.Log, w io.Writer) *slog.Logger {
	var level slog.Level
	_ = level.UnmarshalText([]byte(c.Level))
	opts := &slog.HandlerOptions{Level: level}
	format := strings.ToLower(c.Format)
	if format == "auto" || format == "" {
		format = "json"
		if f, ok := w.(*os.File); ok && term.IsTerminal(int(f.Fd())) {
			format = "text"
		}
	}
	if format == "text" {
		return slog.New(slog.NewTextHandler(w, opts))
	}
	return slog.New(slog.NewJSONHandler(w, opts))
}

// compilePlan compiles the systems' policies against the bundled schema.
func compilePlan(cfg *config.Config) ([]policy.Policy, *policy.Plan, error) {
	pols := cfg.Policies()
	plan, err := policy.Compile(schema.OrderEventSchema(), pols)
	if err != nil {
		return nil, nil, fmt.Errorf("config: %w", err)
	}
	return pols, plan, nil
}

// loadKeyring reads the active KEK (environment first, then file) and the
// retired ones from files; KEKs held by a KMS are loadKeys' business.
func loadKeyring(k config.Keys) (*store.Keyring, error) {
	active, err := activeFileKEK(k)
	if err != nil {
		return nil, err
	}
	older, err := oldKEKFiles(k, active.ID())
	if err != nil {
		return nil, err
	}
	kr, err := store.NewKeyring(active, older...)
	if err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	return kr, nil
}

// oldKEKFiles reads keys.old_kek_files, leaving out the active KEK.
func oldKEKFiles(k config.Keys, activeID uint32) ([]*store.KEK, error) {
	var older []*store.KEK
	for _, f := range k.OldKEKFiles {
		kek, err := store.ReadKEKFile(f, k.AllowReadableKEKFiles)
		if err != nil {
			return nil, fmt.Errorf("config: keys.old_kek_files: %w", err)
		}
		if kek.ID() == activeID {
			continue
		}
		older = append(older, kek)
	}
	return older, nil
}

// kafkaLogger passes the Kafka client's warnings and errors through and
// turns its info messages (connections, group joins, metadata) into debug
// ones: they describe the client's internals, not the service.
type kafkaLogger struct{ kgo.Logger }

// Log logs msg, at debug level if the client said info.
func (l kafkaLogger) Log(level kgo.LogLevel, msg string, keyvals ...any) {
	if level == kgo.LogLevelInfo {
		level = kgo.LogLevelDebug
	}
	l.Logger.Log(level, msg, keyvals...)
}

// checkStore checks the configured key store without writing to it (see
// postgres.Check and embedded.Check).
func checkStore(ctx context.Context, c config.Store, kr *store.Keyring) (initialized bool, err error) {
	if c.Postgres != "" {
		ok, err := postgres.Check(ctx, c.Postgres, kr)
		if err != nil {
			return false, fmt.Errorf("store.postgres: %w", err)
		}
		return ok, nil
	}
	ok, err := embedded.Check(c.Path, kr)
	if err != nil {
		return false, fmt.Errorf("store.path: %w", err)
	}
	return ok, nil
}

// storeKind names the configured key store for logs and --check-config:
// "postgres" (the DSN may hold a password: it is not shown) or "embedded
// <path>".
func storeKind(c config.Store) string {
	if c.Postgres != "" {
		return "postgres"
	}
	return "embedded " + c.Path
}

// openStore opens the configured key store.
func openStore(ctx context.Context, c config.Store, kr *store.Keyring) (store.KeyStore, error) {
	if c.Postgres != "" {
		s, err := postgres.Open(ctx, c.Postgres, kr)
		if err != nil {
			return nil, fmt.Errorf("store.postgres: %w", err)
		}
		return s, nil
	}
	s, err := embedded.Open(c.Path, kr)
	if err != nil {
		return nil, fmt.Errorf("store.path: %w", err)
	}
	return s, nil
}

// kafkaOpts are the client options shared by every command.
func kafkaOpts(c config.Kafka, log *slog.Logger) ([]kgo.Opt, error) {
	opts := []kgo.Opt{
		kgo.SeedBrokers(c.Brokers...),
		kgo.ClientID(c.ClientID),
		kgo.WithLogger(kafkaLogger{kslog.New(log.With("component", "kafka"))}),
	}
	if c.TLS.Enabled {
		tc, err := tlsConfig(c.TLS)
		if err != nil {
			return nil, fmt.Errorf("config: kafka.tls: %w", err)
		}
		opts = append(opts, kgo.DialTLSConfig(tc))
	}
	switch strings.ToUpper(c.SASL.Mechanism) {
	case "":
	case "PLAIN":
		opts = append(opts, kgo.SASL(plain.Auth{User: c.SASL.Username, Pass: c.SASL.Password}.AsMechanism()))
	case "SCRAM-SHA-256":
		opts = append(opts, kgo.SASL(scram.Auth{User: c.SASL.Username, Pass: c.SASL.Password}.AsSha256Mechanism()))
	case "SCRAM-SHA-512":
		opts = append(opts, kgo.SASL(scram.Auth{User: c.SASL.Username, Pass: c.SASL.Password}.AsSha512Mechanism()))
	}
	return opts, nil
}

// tlsConfig builds a client TLS configuration.
func tlsConfig(c config.TLS) (*tls.Config, error) {
	tc := &tls.Config{MinVersion: tls.VersionTLS12, ServerName: c.ServerName, InsecureSkipVerify: c.InsecureSkipVerify} //nolint:gosec // opt-in
	if c.CAFile != "" {
		pem, err := os.ReadFile(c.CAFile)
		if err != nil {
			return nil, err
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("ca_file %s holds no PEM certificate", c.CAFile)
		}
		tc.RootCAs = pool
	}
	if c.CertFile != "" || c.KeyFile != "" {
		cert, err := tls.LoadX509KeyPair(c.CertFile, c.KeyFile)
		if err != nil {
			return nil, err
		}
		tc.Certificates = []tls.Certificate{cert}
	}
	return tc, nil
}
