package main

import (
	"bytes"
	"context"
	"slices"
	"strings"
	"testing"

	"github.com/twmb/franz-go/pkg/kfake"
)

// TestCheckConfigPIIWarnings: --check-config warns about kept fields whose
// names suggest personal data and about systems with the guard off, and
// refuses a bad mode or identifier field.
func TestCheckConfigPIIWarnings(t *testing.T) {
	cluster, err := kfake.NewCluster(kfake.SeedTopics(1, "orders.raw", "subjects.forget"))
	if err != nil {
		t.Fatal(err)
	}
	defer cluster.Close()
	dir := t.TempDir()
	writeFile(t, dir, "kek.b64", testKEK)
	head := "kafka: {brokers: [" + strings.Join(cluster.ListenAddrs(), ",") + "]}\nstore: {path: data/keys.db}\nkeys: {kek_file: kek.b64}\n"
	cfg := writeFile(t, dir, "config.yaml", head+`
pii: {region: FR, quarantine_topic: orders.pii}
systems:
  crm:
    keep: [email, shipping_address]
    pseudonymize: [customer_id]
    pii: off
  meta:
    keep: [event_type, shipping_address.country]
    pseudonymize: [customer_id]
`)
	var out, errb bytes.Buffer
	if err := run(context.Background(), []string{"run", "--config", cfg, "--check-config"}, &out, &errb); err != nil {
		t.Fatalf("check-config: %v\n%s", err, errb.String())
	}
	for _, want := range []string{
		"warning: systems.crm keeps email, whose name suggests personal data (the PII guard is off for this system)",
		"warning: systems.crm keeps shipping_address.line1,",
		"warning: systems.crm: pii is off",
		"configuration ok",
		"orders.pii",
	} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("output lacks %q:\n%s", want, out.String())
		}
	}
	if strings.Contains(out.String(), "systems.meta") {
		t.Errorf("warning about meta:\n%s", out.String())
	}

	for name, tc := range map[string]struct{ yaml, want string }{
		"bad mode":       {"systems: {meta: {keep: [currency], pseudonymize: [customer_id], pii: scrub}}\n", "systems.meta.pii \"scrub\""},
		"bad field":      {"pii: {identifier_fields: [items.sku]}\nsystems: {meta: {keep: [currency], pseudonymize: [customer_id]}}\n", "items.sku"},
		"bad region":     {"pii: {region: XX}\n" + validSystems, "region"},
		"bad pattern":    {"pii: {patterns: [{name: loyalty, regexp: '[0-9]+'}]}\n" + validSystems, "literal"},
		"topic conflict": {"pii: {quarantine_topic: orders.raw}\n" + validSystems, "pii.quarantine_topic"},
	} {
		t.Run(name, func(t *testing.T) {
			c := writeFile(t, dir, "bad.yaml", head+tc.yaml)
			err := run(context.Background(), []string{"run", "--config", c, "--check-config"}, &out, &errb)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %v, want one containing %q", err, tc.want)
			}
		})
	}
}

func TestTailRedactions(t *testing.T) {
	v := map[string]any{
		"items":      []any{map[string]any{"sku": "ENGRAVE call [redacted:phone]"}, map[string]any{"sku": "SKU-MUG"}},
		"attributes": map[string]any{"utm_content": "ref-[redacted:identifier]-[redacted:email]", "utm_source": "google"},
		"currency":   "EUR",
	}
	got := redactions(nil, v, "")
	want := []string{"attributes.utm_content: identifier", "attributes.utm_content: email", "items[0].sku: phone"}
	if !slices.Equal(got, want) {
		t.Errorf("redactions %q, want %q", got, want)
	}
}
