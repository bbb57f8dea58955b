package main

import (
	"bytes"
	"context"
	"encoding/base64"
	"log/slog"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/twmb/franz-go/pkg/sr/srfake"

	"github.com/hygiene/pseudonymizer/internal/config"
	"github.com/hygiene/pseudonymizer/schema"
	"github.com/hygiene/pseudonymizer/schema/registry"
)

func wireConfig(t *testing.T, sreg config.SchemaRegistry) config.Config {
	t.Helper()
	cfg := config.Default()
	if err := config.Parse([]byte(validSystems), &cfg); err != nil {
		t.Fatal(err)
	}
	cfg.SchemaRegistry = sreg
	return cfg
}

func TestNewWire(t *testing.T) {
	log := slog.New(slog.DiscardHandler)
	t.Run("bare without a registry", func(t *testing.T) {
		cfg := wireConfig(t, config.SchemaRegistry{})
		_, plan, err := compilePlan(&cfg)
		if err != nil {
			t.Fatal(err)
		}
		w, err := newWire(context.Background(), cfg, plan, log, prometheus.NewRegistry())
		if err != nil {
			t.Fatal(err)
		}
		if _, ok := w.(schema.BareWire); !ok {
			t.Fatalf("wire %T, want schema.BareWire", w)
		}
		fc, err := newForgetCodec(context.Background(), cfg)
		if err != nil {
			t.Fatal(err)
		}
		if _, ok := fc.(bareForget); !ok {
			t.Fatalf("forget codec %T, want bareForget", fc)
		}
	})
	t.Run("registry with basic auth", func(t *testing.T) {
		fake := srfake.New(srfake.WithAuth("Basic " + base64.StdEncoding.EncodeToString([]byte("svc:pw"))))
		defer fake.Close()
		cfg := wireConfig(t, config.SchemaRegistry{URL: fake.URL(), Username: "svc", Password: "pw"})
		_, plan, err := compilePlan(&cfg)
		if err != nil {
			t.Fatal(err)
		}
		w, err := newWire(context.Background(), cfg, plan, log, prometheus.NewRegistry())
		if err != nil {
			t.Fatal(err)
		}
		rw, ok := w.(*registry.Wire)
		if !ok {
			t.Fatalf("wire %T, want *registry.Wire", w)
		}
		ss, ok := fake.GetSchema("orders.pseudo.meta-value", 1)
		if !ok || ss.ID != rw.OutputSchemaID(0) {
			t.Fatal("output schema not registered under orders.pseudo.meta-value")
		}
		if _, ok := fake.GetSchema("subjects.forgotten-value", 1); !ok {
			t.Fatal("confirmation schema not registered")
		}
		fc, err := newForgetCodec(context.Background(), cfg)
		if err != nil {
			t.Fatal(err)
		}
		c := &schema.ForgetConfirmation{RequestID: "r", SubjectID: "s", Status: schema.StatusForgotten,
			RequestedAt: time.UnixMilli(1), CompletedAt: time.UnixMilli(2), Systems: []string{"meta"}}
		v, err := rw.Confirmation(c)
		if err != nil {
			t.Fatal(err)
		}
		got, err := fc.Confirmation(context.Background(), v)
		if err != nil || got.RequestID != "r" {
			t.Fatalf("confirmation round trip: %+v, %v", got, err)
		}
		req, err := fc.Request(&schema.ForgetRequest{RequestID: "r", SubjectID: "s", RequestedAt: time.UnixMilli(1)})
		if err != nil {
			t.Fatal(err)
		}
		if fr, err := rw.Forget(context.Background(), req); err != nil || fr.RequestID != "r" {
			t.Fatalf("request round trip: %+v, %v", fr, err)
		}
	})
	t.Run("bearer", func(t *testing.T) {
		fake := srfake.New(srfake.WithAuth("Bearer tok"))
		defer fake.Close()
		cfg := wireConfig(t, config.SchemaRegistry{URL: fake.URL(), BearerToken: "tok"})
		_, plan, _ := compilePlan(&cfg)
		if _, err := newWire(context.Background(), cfg, plan, log, nil); err != nil {
			t.Fatal(err)
		}
	})
	for _, tc := range []struct {
		name string
		sreg config.SchemaRegistry
		want string
	}{
		{"both auth kinds", config.SchemaRegistry{URL: "http://127.0.0.1:1", Username: "u", Password: "p", BearerToken: "t"}, "only one"},
		{"bad CA file", config.SchemaRegistry{URL: "https://127.0.0.1:1", TLS: config.TLS{Enabled: true, CAFile: filepath.Join(t.TempDir(), "none.pem")}}, "schema_registry.tls"},
		{"unreachable", config.SchemaRegistry{URL: "http://127.0.0.1:1"}, "schema_registry"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := wireConfig(t, tc.sreg)
			_, plan, _ := compilePlan(&cfg)
			_, err := newWire(context.Background(), cfg, plan, log, nil)
			if err == nil || !strings.Contains(err.Error(), tc.want) || strings.Contains(err.Error(), "\n") {
				t.Fatalf("error %v, want one line naming %q", err, tc.want)
			}
		})
	}
}

// TestCheckConfigRegistry: an unreachable registry stops start-up with one
// line naming it.
func TestCheckConfigRegistry(t *testing.T) {
	dir := t.TempDir()
	kek := writeFile(t, dir, "kek.b64", "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=\n")
	conf := "keys: {kek_file: " + kek + "}\nstore: {path: " + filepath.Join(dir, "keys.db") + "}\n" +
		"schema_registry: {url: 'http://127.0.0.1:1'}\n" + validSystems
	var out, errb bytes.Buffer
	err := run(context.Background(), []string{"run", "--config", writeFile(t, dir, "config.yaml", conf), "--check-config"}, &out, &errb)
	if err == nil || !strings.Contains(err.Error(), "schema_registry") || strings.Contains(err.Error(), "\n") {
		t.Fatalf("error %v, want one line naming schema_registry", err)
	}
}
