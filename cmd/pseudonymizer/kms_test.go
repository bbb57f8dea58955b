package main

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/twmb/franz-go/pkg/kfake"

	"github.com/hygiene/pseudonymizer/internal/config"
	"github.com/hygiene/pseudonymizer/internal/kafkatest"
	"github.com/hygiene/pseudonymizer/store"
	"github.com/hygiene/pseudonymizer/store/kmstest"
	"github.com/hygiene/pseudonymizer/store/postgres/pgtest"
)

// kmsEnv is a key store and a broker for the KMS tests.
type kmsEnv struct {
	t         *testing.T
	dir       string
	storeYAML string
	cfg       config.Store
	brokers   string
}

func newKMSEnv(t *testing.T, kind string, cluster *kfake.Cluster) *kmsEnv {
	e := &kmsEnv{t: t, dir: t.TempDir(), brokers: strings.Join(cluster.ListenAddrs(), ",")}
	switch kind {
	case "embedded":
		e.cfg.Path = filepath.Join(e.dir, "data", "keys.db")
		e.storeYAML = "store: {path: " + e.cfg.Path + "}\n"
	case "postgres":
		e.cfg.Postgres = pgtest.MustTempSchemaDSN(t)
		e.storeYAML = "store: {postgres: '" + e.cfg.Postgres + "'}\n"
	}
	return e
}

// config writes a configuration file with the given keys section.
func (e *kmsEnv) config(name, keys string) (path, httpAddr string) {
	httpAddr = freeAddr(e.t)
	return writeFile(e.t, e.dir, name, "kafka: {brokers: ["+e.brokers+"], transactional_id: kms-test}\n"+e.storeYAML+keys+"\n"+
		"http: {listen: '"+httpAddr+"'}\nlog: {level: debug, format: json}\n"+validSystems), httpAddr
}

// run runs a command and returns its stdout, stderr and error.
func (e *kmsEnv) run(args ...string) (string, string, error) {
	var out, errb bytes.Buffer
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	err := run(ctx, args, &out, &errb)
	return out.String(), errb.String(), err
}

func (e *kmsEnv) mustRun(args ...string) string {
	e.t.Helper()
	out, errOut, err := e.run(args...)
	if err != nil {
		e.t.Fatalf("%s: %v\nstdout: %s\nstderr: %s", strings.Join(args, " "), err, out, errOut)
	}
	return out
}

// dataKey returns the stored data key record of a KMS URL, or nil.
func (e *kmsEnv) dataKey(url string) []byte {
	e.t.Helper()
	m, closeMeta, err := openMeta(context.Background(), e.cfg, keysReadOnly)
	if err != nil {
		e.t.Fatal(err)
	}
	defer closeMeta()
	rec, err := m.GetMeta(context.Background(), store.DataKeyName(url))
	if err != nil {
		e.t.Fatal(err)
	}
	return rec
}

// mustBeEmpty fails if the store holds anything: no file, no table.
func (e *kmsEnv) mustBeEmpty() {
	e.t.Helper()
	if e.cfg.Path != "" {
		if _, err := os.Stat(e.cfg.Path); !errors.Is(err, os.ErrNotExist) {
			e.t.Fatalf("the store file exists (stat: %v)", err)
		}
		return
	}
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, e.cfg.Postgres)
	if err != nil {
		e.t.Fatal(err)
	}
	defer conn.Close(ctx)
	var tables int
	if err := conn.QueryRow(ctx, "SELECT count(*) FROM information_schema.tables WHERE table_schema = current_schema()").Scan(&tables); err != nil {
		e.t.Fatal(err)
	}
	if tables != 0 {
		e.t.Fatalf("the store's schema has %d tables", tables)
	}
}

// mustResolve has the configured store create (or find) the key of a
// subject, as the service does for an order.
func (e *kmsEnv) mustResolve(cfgPath, subject string) {
	e.t.Helper()
	ctx := context.Background()
	cfg, err := config.Load(cfgPath, nil)
	if err != nil {
		e.t.Fatal(err)
	}
	kr, _, err := loadKeys(ctx, cfg, keysCreate)
	if err != nil {
		e.t.Fatal(err)
	}
	st, err := openStore(ctx, cfg.Store, kr)
	if err != nil {
		e.t.Fatal(err)
	}
	defer st.Close()
	if _, err := st.Resolve(ctx, []store.Lookup{{SubjectID: subject, Latest: time.Now()}}); err != nil {
		e.t.Fatal(err)
	}
}

// mustFailOneLine checks a start-up failure: one line that names want and
// keys.kek_url and shows none of the secrets.
func mustFailOneLine(t *testing.T, err error, stdout string, want []string, secrets ...[]byte) {
	t.Helper()
	if err == nil {
		t.Fatalf("no error; stdout %q", stdout)
	}
	msg := err.Error()
	found := false
	for _, w := range want {
		found = found || strings.Contains(msg, w)
	}
	if !found {
		t.Errorf("error %q names none of %q", msg, want)
	}
	mustNotShow(t, msg, secrets...)
}

// mustNotShow fails if text spans lines (when it is an error) or shows any
// secret, raw, hex or base64.
func mustNotShow(t *testing.T, text string, secrets ...[]byte) {
	t.Helper()
	for _, s := range secrets {
		for _, form := range []string{string(s), hex.EncodeToString(s), base64.StdEncoding.EncodeToString(s), base64.RawStdEncoding.EncodeToString(s),
			base64.URLEncoding.EncodeToString(s), base64.RawURLEncoding.EncodeToString(s)} {
			if len(form) >= 8 && strings.Contains(text, form) {
				t.Errorf("shows secret material (%d bytes): %.200q", len(s), text)
			}
		}
	}
}

func mustKfake(t *testing.T) *kfake.Cluster {
	t.Helper()
	cluster, err := kfake.NewCluster(kfake.SeedTopics(1, "orders.raw", "subjects.forget"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(cluster.Close)
	return cluster
}

// TestKMSKeyLifecycle runs the KEK's life in a real AWS KMS API
// (local-kms), with both stores: --check-config on an empty store creates
// nothing; the first start creates the data key; a disabled KMS key stops
// start-up, --check-config and status with the KMS's reason on one line,
// and so does an unreachable KMS, while a running instance goes on
// pseudonymizing with the key disabled and the KMS gone; rotation to a new KMS key plus rewrap leaves pseudonyms unchanged, after
// which the old key is not needed; a new key behind the same alias plus
// rewrap moves the data key to it. No secret shows in logs or errors.
func TestKMSKeyLifecycle(t *testing.T) {
	srv := kmstest.MustStart(t)
	disabled := []string{"DisabledException", "AccessDeniedException"}
	for _, kind := range []string{"embedded", "postgres"} {
		t.Run(kind, func(t *testing.T) {
			e := newKMSEnv(t, kind, mustKfake(t))
			k1 := srv.MustCreateKey(t)
			alias := "alias/pz-lifecycle-" + kind
			srv.MustAlias(t, alias, k1)
			url1 := "awskms:///" + alias
			cfg1, http1 := e.config("config1.yaml", "keys: {kek_url: '"+url1+"'}")

			out := e.mustRun("run", "--config", cfg1, "--check-config")
			if !strings.Contains(out, "no data key yet") {
				t.Errorf("check-config on an empty store: %q", out)
			}
			e.mustBeEmpty()

			logs, stop := startRun(t, cfg1, http1)
			_, metrics := httpGet("http://" + http1 + "/metrics")
			if !strings.Contains(metrics, "pseudonymizer_") {
				t.Fatalf("no metrics: %.200q", metrics)
			}
			if err := stop(); err != nil {
				t.Fatalf("run: %v", err)
			}
			rec := e.dataKey(url1)
			if rec == nil {
				t.Fatal("the first start stored no data key")
			}
			if got := srv.KeyOf(t, rec[5:]); got != k1 {
				t.Fatalf("data key encrypted by %s, want %s", got, k1)
			}
			plain := srv.MustDecrypt(t, rec[5:])
			mustNotShow(t, logs.String()+metrics, plain, rec, rec[5:])

			out = e.mustRun("run", "--config", cfg1, "--check-config")
			if !strings.Contains(out, "the KMS unwraps data key") {
				t.Errorf("check-config: %q", out)
			}
			e.mustResolve(cfg1, "cust-1")
			before := e.mustRun("status", "--config", cfg1, "--json", "cust-1")
			if !strings.Contains(before, `"active"`) {
				t.Fatalf("status: %q", before)
			}

			// Disabling the KMS key makes every start fail.
			srv.MustDisable(t, k1)
			for _, args := range [][]string{{"run", "--config", cfg1, "--check-config"}, {"run", "--config", cfg1}, {"status", "--config", cfg1, "cust-1"}, {"rewrap", "--config", cfg1}} {
				out, errOut, err := e.run(args...)
				mustFailOneLine(t, err, out, disabled, plain, rec, rec[5:])
				t.Logf("%s with the KMS key disabled: %v", args[0], err)
				if err != nil && !strings.HasPrefix(err.Error(), "config: keys.kek_url: kms: ") {
					t.Errorf("%s: error %q does not start with the key's name", args[0], err)
				}
				mustNotShow(t, out+errOut, plain, rec, rec[5:])
			}
			srv.MustEnable(t, k1)

			// An unreachable KMS stops start-up with a clear line, too.
			t.Setenv("AWS_ENDPOINT_URL_KMS", "http://"+freeAddr(t))
			out, _, err := e.run("run", "--config", cfg1)
			mustFailOneLine(t, err, out, []string{"connection refused"}, plain, rec, rec[5:])
			t.Logf("run with the KMS unreachable: %v", err)
			t.Setenv("AWS_ENDPOINT_URL_KMS", srv.Endpoint)

			// A running instance keeps its data key: neither a disabled
			// KMS key nor a lost KMS stops it.
			_, stop = startRun(t, cfg1, http1)
			srv.MustDisable(t, k1)
			t.Setenv("AWS_ENDPOINT_URL_KMS", "http://"+freeAddr(t))
			e.mustRun("produce-sample", "--config", cfg1, "--orders", "4", "--customers", "2", "--seed", "3")
			kafkatest.WaitFor(t, 30*time.Second, "the four orders pseudonymized", func() bool {
				return metricValue(t, http1, `pseudonymizer_records_out_total{system="meta"}`) >= 4
			})
			out = e.mustRun("tail", "--config", cfg1, "--system", "meta", "-n", "4")
			if n := len(strings.Split(strings.TrimSpace(out), "\n")); n != 4 || strings.Contains(out, `"error"`) {
				t.Errorf("outputs while the KMS key is disabled: %d lines, want 4:\n%s", n, out)
			}
			if err := stop(); err != nil {
				t.Fatalf("run while the KMS key is disabled: %v", err)
			}
			t.Setenv("AWS_ENDPOINT_URL_KMS", srv.Endpoint)
			srv.MustEnable(t, k1)

			// Rotation to a new KMS key.
			k2 := srv.MustCreateKey(t)
			url2 := "awskms:///" + k2
			cfg2, _ := e.config("config2.yaml", "keys: {kek_url: '"+url2+"', old_kek_urls: ['"+url1+"']}")
			out = e.mustRun("rewrap", "--config", cfg2)
			if !strings.Contains(out, "done: 4 keys re-wrapped") { // the index key, cust-1 and the 2 sample customers
				t.Errorf("rewrap: %q", out)
			}
			rec2 := e.dataKey(url2)
			if rec2 == nil || srv.KeyOf(t, rec2[5:]) != k2 {
				t.Fatal("rewrap: no data key encrypted by the new KMS key")
			}
			cfg3, http3 := e.config("config3.yaml", "keys: {kek_url: '"+url2+"'}")
			srv.MustDisable(t, k1) // no longer needed
			if after := e.mustRun("status", "--config", cfg3, "--json", "cust-1"); after != before {
				t.Errorf("status after rotation:\n%s\nwant\n%s", after, before)
			}
			_, stop = startRun(t, cfg3, http3)
			if err := stop(); err != nil {
				t.Fatalf("run after rotation: %v", err)
			}

			// A new key behind the same alias (or a new key version):
			// rewrap has the KMS re-encrypt the data key.
			alias2 := "alias/pz-alias-" + kind
			srv.MustAlias(t, alias2, k2)
			url3 := "awskms:///" + alias2
			cfg4, _ := e.config("config4.yaml", "keys: {kek_url: '"+url3+"', old_kek_urls: ['"+url2+"']}")
			e.mustRun("rewrap", "--config", cfg4)
			k3 := srv.MustCreateKey(t)
			srv.MustAlias(t, alias2, k3)
			cfg5, _ := e.config("config5.yaml", "keys: {kek_url: '"+url3+"'}")
			out = e.mustRun("rewrap", "--config", cfg5)
			if !strings.Contains(out, "re-encrypted") || !strings.Contains(out, "done: 0 keys") {
				t.Errorf("rewrap after the alias moved: %q", out)
			}
			if got := srv.KeyOf(t, e.dataKey(url3)[5:]); got != k3 {
				t.Fatalf("data key encrypted by %s after the alias moved, want %s", got, k3)
			}
			srv.MustDisable(t, k2)
			if after := e.mustRun("status", "--config", cfg5, "--json", "cust-1"); after != before {
				t.Errorf("status after the alias moved:\n%s\nwant\n%s", after, before)
			}
		})
	}
}

// TestKMSMigrationFromFileKEK: a deployment with a file KEK moves to a KMS
// KEK with one rewrap (keys.kek_url active, the file in
// keys.old_kek_files); afterwards the file is not needed and pseudonyms
// are unchanged. It runs against local-kms and, needing no KMS, against
// gocloud's base64key:// driver.
func TestKMSMigrationFromFileKEK(t *testing.T) {
	cluster := mustKfake(t)
	for _, kms := range []string{"base64key", "local-kms"} {
		t.Run(kms, func(t *testing.T) {
			var url string
			switch kms {
			case "base64key":
				url = "base64key://" + base64.URLEncoding.EncodeToString(bytes.Repeat([]byte{0x5a}, 32))
			case "local-kms":
				srv := kmstest.MustStart(t)
				url = "awskms:///" + srv.MustCreateKey(t)
			}
			for _, kind := range []string{"embedded", "postgres"} {
				t.Run(kind, func(t *testing.T) {
					e := newKMSEnv(t, kind, cluster)
					kek := writeFile(t, e.dir, "kek.b64", testKEK)
					if err := os.Chmod(kek, 0o600); err != nil {
						t.Fatal(err)
					}
					cfgFile, _ := e.config("file.yaml", "keys: {kek_file: "+kek+"}")
					e.mustResolve(cfgFile, "cust-1")
					before := e.mustRun("status", "--config", cfgFile, "--json", "cust-1")

					cfgMove, _ := e.config("move.yaml", "keys: {kek_url: '"+url+"', old_kek_files: ["+kek+"]}")
					out := e.mustRun("run", "--config", cfgMove, "--check-config")
					if !strings.Contains(out, "initialized") || !strings.Contains(out, "no data key yet") {
						t.Errorf("check-config before the move: %q", out)
					}
					if e.dataKey(url) != nil {
						t.Fatal("--check-config stored a data key")
					}
					out, errOut, err := e.run("rewrap", "--config", cfgMove)
					if err != nil || !strings.Contains(out, "re-wrapped 2 keys") {
						t.Fatalf("rewrap: %v, %q %q", err, out, errOut)
					}
					mustNotShow(t, out+errOut, []byte(url), []byte(strings.TrimPrefix(url, "base64key://")))
					if err := os.Remove(kek); err != nil {
						t.Fatal(err)
					}
					cfgKMS, http := e.config("kms.yaml", "keys: {kek_url: '"+url+"'}")
					if after := e.mustRun("status", "--config", cfgKMS, "--json", "cust-1"); after != before {
						t.Errorf("status after the move:\n%s\nwant\n%s", after, before)
					}
					_, stop := startRun(t, cfgKMS, http)
					if err := stop(); err != nil {
						t.Fatalf("run after the move: %v", err)
					}
					// Without the old file KEK listed, a store that still
					// needs it cannot open: the operator sees which.
					otherURL := "base64key://" + base64.URLEncoding.EncodeToString(bytes.Repeat([]byte{1}, 32))
					cfgOther, _ := e.config("other.yaml", "keys: {kek_url: '"+otherURL+"'}")
					_, _, err = e.run("status", "--config", cfgOther, "cust-1")
					if err == nil || !strings.Contains(err.Error(), "no configured KEK unwraps") {
						t.Errorf("status with another KMS key: %v", err)
					}
					// run with it refuses before creating a data key.
					_, _, err = e.run("run", "--config", cfgOther)
					if err == nil || !strings.Contains(err.Error(), "is bound to another KEK") {
						t.Errorf("run with another KMS key: %v", err)
					}
					if e.dataKey(otherURL) != nil {
						t.Error("run with another KMS key stored a data key")
					}
				})
			}
		})
	}
}
