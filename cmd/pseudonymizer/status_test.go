package main

import (
	"bytes"
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/hygiene/pseudonymizer/processor/pseudonym"
	"github.com/hygiene/pseudonymizer/store"
	"github.com/hygiene/pseudonymizer/store/embedded"
	"github.com/hygiene/pseudonymizer/store/postgres"
	"github.com/hygiene/pseudonymizer/store/postgres/pgtest"
)

// TestStatusAndForgetLog answers the data subject's questions from each
// store: an active subject with its pseudonym in each system, a forgotten
// one with its request, an unknown one, each with its exit status; and the
// forget log as JSON lines without raw subject IDs.
func TestStatusAndForgetLog(t *testing.T) {
	const kekText = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY="
	for _, kind := range []string{"embedded", "postgres"} {
		t.Run(kind, func(t *testing.T) {
			dir := t.TempDir()
			kek := writeFile(t, dir, "kek.b64", kekText+"\n")
			kr, err := store.NewKeyring(mustParseKEK(t, kekText))
			if err != nil {
				t.Fatal(err)
			}
			var storeYAML string
			var open func() store.KeyStore
			switch kind {
			case "embedded":
				path := filepath.Join(dir, "keys.db")
				storeYAML = "store: {path: " + path + "}\n"
				open = func() store.KeyStore {
					s, err := embedded.Open(path, kr)
					if err != nil {
						t.Fatal(err)
					}
					return s
				}
			case "postgres":
				dsn := pgtest.MustTempSchemaDSN(t)
				storeYAML = "store: {postgres: '" + dsn + "'}\n"
				open = func() store.KeyStore {
					s, err := postgres.Open(context.Background(), dsn, kr)
					if err != nil {
						t.Fatal(err)
					}
					return s
				}
			}
			cfg := writeFile(t, dir, "config.yaml", "keys: {kek_file: "+kek+"}\n"+storeYAML+`
systems:
  meta:
    keep: [event_type]
    pseudonymize: [order_id, customer_id]
  crm:
    keep: [total_minor]
    pseudonymize: [customer_id]
`)
			// The store as the service leaves it: an active customer, a
			// forgotten one, and a forget of an unknown one.
			ctx := context.Background()
			ks := open()
			t0 := time.Date(2026, 5, 1, 10, 0, 0, 0, time.UTC)
			entries, err := ks.Resolve(ctx, []store.Lookup{{SubjectID: "cust-active-7", Latest: t0}, {SubjectID: "cust-gone-8", Latest: t0}})
			if err != nil {
				t.Fatal(err)
			}
			if _, err := ks.Forget(ctx, []store.ForgetRequest{
				{RequestID: "req-1", SubjectID: "cust-gone-8", RequestedAt: t0.Add(time.Hour)},
				{RequestID: "req-2", SubjectID: "cust-never-9", RequestedAt: t0.Add(2 * time.Hour)},
			}); err != nil {
				t.Fatal(err)
			}
			if _, err := ks.Object(ctx, []store.ObjectionRequest{
				{RequestID: "obj-1", SubjectID: "cust-active-7", EffectiveAt: t0.Add(time.Hour), Systems: []string{"meta"}},
			}); err != nil {
				t.Fatal(err)
			}
			activeKey := append([]byte(nil), entries[0].Key...)
			hashes := map[string]string{}
			for _, id := range []string{"cust-active-7", "cust-gone-8", "cust-never-9", "cust-other-1"} {
				h := ks.Hash(id)
				hashes[id] = hex.EncodeToString(h[:])
			}
			if err := ks.Close(); err != nil {
				t.Fatal(err)
			}

			status := func(id string) (subjectReport, int) {
				t.Helper()
				var out, errb bytes.Buffer
				err := run(ctx, []string{"status", "--config", cfg, "--json", id}, &out, &errb)
				var rep subjectReport
				if jerr := json.Unmarshal(out.Bytes(), &rep); jerr != nil {
					t.Fatalf("status %s: output %q: %v (err %v, stderr %q)", id, out.String(), jerr, err, errb.String())
				}
				if strings.Contains(out.String(), id) || strings.Contains(errb.String(), id) {
					t.Errorf("status %s: output repeats the raw subject ID", id)
				}
				return rep, exitCodeOf(err)
			}

			rep, code := status("cust-active-7")
			d := pseudonym.NewDeriver()
			if code != 0 || rep.State != "active" || rep.SubjectHash != hashes["cust-active-7"] || rep.KeyCreatedAt == nil {
				t.Errorf("active: exit %d, %+v", code, rep)
			}
			if o := rep.Objection; o == nil || o.RequestID != "obj-1" || len(o.Systems) != 1 || o.Systems[0] != "meta" || !o.EffectiveAt.Equal(t0.Add(time.Hour)) {
				t.Errorf("active: objection %+v, want obj-1 to meta", rep.Objection)
			}
			for _, sys := range []string{"meta", "crm"} {
				if want := d.String(activeKey, sys, "customer_id", "cust-active-7"); rep.Pseudonyms[sys] != want {
					t.Errorf("active: pseudonym in %s %q, want %q (the record key the service writes)", sys, rep.Pseudonyms[sys], want)
				}
			}
			rep, code = status("cust-gone-8")
			if code != exitForgotten || rep.State != "forgotten" || len(rep.Pseudonyms) != 0 || rep.Forgotten == nil ||
				rep.Forgotten.RequestID != "req-1" || !rep.Forgotten.RequestedAt.Equal(t0.Add(time.Hour)) || rep.Forgotten.CompletedAt == nil {
				t.Errorf("forgotten: exit %d, %+v", code, rep)
			}
			rep, code = status("cust-other-1")
			if code != exitUnknown || rep.State != "unknown" || rep.Forgotten != nil || rep.SubjectHash != hashes["cust-other-1"] {
				t.Errorf("unknown: exit %d, %+v", code, rep)
			}
			// Asking did not create a key.
			rep, code = status("cust-other-1")
			if code != exitUnknown {
				t.Errorf("unknown, asked twice: exit %d, %+v", code, rep)
			}

			// The PostgreSQL sessions are read-only: nothing was written.
			if kind == "postgres" {
				ro, err := readOnlyDSN(dsnOf(storeYAML))
				if err != nil || !strings.Contains(ro, "default_transaction_read_only=on") {
					t.Errorf("readOnlyDSN: %q, %v", ro, err)
				}
			}

			// The human form names the state and each system's pseudonym.
			var out bytes.Buffer
			if err := run(ctx, []string{"status", "--config", cfg, "cust-active-7"}, &out, &bytes.Buffer{}); err != nil {
				t.Fatalf("status (text): %v", err)
			}
			if !strings.Contains(out.String(), "active") || !strings.Contains(out.String(), d.String(activeKey, "crm", "customer_id", "cust-active-7")) ||
				!strings.Contains(out.String(), "objects to:") || !strings.Contains(out.String(), "request obj-1") {
				t.Errorf("status (text): %q", out.String())
			}

			// The objection log: the state, as a JSON line, no raw IDs.
			out.Reset()
			if err := run(ctx, []string{"objection-log", "--config", cfg}, &out, &bytes.Buffer{}); err != nil {
				t.Fatalf("objection-log: %v", err)
			}
			var ol objectionLogLine
			if err := json.Unmarshal(out.Bytes(), &ol); err != nil || ol.RequestID != "obj-1" || ol.Status != "APPLIED" ||
				ol.SubjectHash != hashes["cust-active-7"] || strings.Contains(out.String(), "cust-active-7") {
				t.Errorf("objection-log: %q (%v)", out.String(), err)
			}

			// The forget log: both requests, as JSON lines, no raw IDs.
			out.Reset()
			if err := run(ctx, []string{"forget-log", "--config", cfg}, &out, &bytes.Buffer{}); err != nil {
				t.Fatalf("forget-log: %v", err)
			}
			var lines []forgetLogLine
			for _, l := range strings.Split(strings.TrimSpace(out.String()), "\n") {
				var line forgetLogLine
				if err := json.Unmarshal([]byte(l), &line); err != nil {
					t.Fatalf("forget-log line %q: %v", l, err)
				}
				lines = append(lines, line)
			}
			got := map[string]forgetLogLine{}
			for _, l := range lines {
				got[l.RequestID] = l
			}
			if len(lines) != 2 || got["req-1"].Status != "FORGOTTEN" || got["req-1"].SubjectHash != hashes["cust-gone-8"] ||
				got["req-2"].Status != "UNKNOWN_SUBJECT" || got["req-2"].SubjectHash != hashes["cust-never-9"] ||
				got["req-1"].RequestedAt == nil || !got["req-1"].RequestedAt.Equal(t0.Add(time.Hour)) {
				t.Errorf("forget-log: %s", out.String())
			}
			for _, id := range []string{"cust-gone-8", "cust-never-9"} {
				if strings.Contains(out.String(), id) {
					t.Errorf("forget-log contains the raw subject ID %s", id)
				}
			}
			out.Reset()
			if err := run(ctx, []string{"forget-log", "--config", cfg, "--since", "-1h"}, &out, &bytes.Buffer{}); err == nil {
				t.Errorf("forget-log --since -1h: no error")
			}
			if err := run(ctx, []string{"forget-log", "--config", cfg, "--since", time.Now().Add(time.Hour).Format(time.RFC3339)}, &out, &bytes.Buffer{}); err != nil || out.Len() != 0 {
				t.Errorf("forget-log --since the future: err %v, output %q", err, out.String())
			}
		})
	}
}

// dsnOf extracts the DSN from a store: {postgres: '…'} line.
func dsnOf(storeYAML string) string {
	_, after, _ := strings.Cut(storeYAML, "'")
	dsn, _, _ := strings.Cut(after, "'")
	return dsn
}

// TestStatusOfEmptyStore: asking an empty store creates nothing.
func TestStatusOfEmptyStore(t *testing.T) {
	dir := t.TempDir()
	kek := writeFile(t, dir, "kek.b64", "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=\n")
	path := filepath.Join(dir, "data", "keys.db")
	cfg := writeFile(t, dir, "config.yaml", "keys: {kek_file: "+kek+"}\nstore: {path: "+path+"}\n"+validSystems)
	var out bytes.Buffer
	err := run(context.Background(), []string{"status", "--config", cfg, "--json", "cust-1"}, &out, &bytes.Buffer{})
	if code := exitCodeOf(err); code != exitUnknown || !strings.Contains(out.String(), `"unknown"`) {
		t.Errorf("status on an empty store: exit %d, %q", code, out.String())
	}
	if err := run(context.Background(), []string{"forget-log", "--config", cfg}, &out, &bytes.Buffer{}); err != nil {
		t.Errorf("forget-log on an empty store: %v", err)
	}
	if _, err := os.Stat(path); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("status created the store file (stat: %v)", err)
	}
}

func mustParseKEK(t *testing.T, text string) *store.KEK {
	t.Helper()
	k, err := store.ParseKEK(text)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// exitCodeOf is the exit status main would use for err.
func exitCodeOf(err error) int {
	if err == nil {
		return 0
	}
	var ee *exitError
	if errors.As(err, &ee) {
		return ee.code
	}
	return exitCode(err)
}

func TestParseSince(t *testing.T) {
	now := time.Date(2026, 12, 3, 12, 0, 0, 0, time.UTC)
	for in, want := range map[string]time.Time{
		"":                     {},
		"2026-01-02T15:04:05Z": time.Date(2026, 1, 2, 15, 4, 5, 0, time.UTC),
		"2026-01-02":           time.Date(2026, 1, 2, 0, 0, 0, 0, time.UTC),
		"72h":                  now.Add(-72 * time.Hour),
	} {
		got, err := parseSince(in, now)
		if err != nil || !got.Equal(want) {
			t.Errorf("parseSince(%q) = %v, %v; want %v", in, got, err, want)
		}
	}
	for _, bad := range []string{"yesterday", "-5h", "2026-13-01"} {
		if _, err := parseSince(bad, now); err == nil {
			t.Errorf("parseSince(%q): no error", bad)
		}
	}
}
