package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/twmb/franz-go/pkg/sr"

	"github.com/hygiene/pseudonymizer/internal/config"
	"github.com/hygiene/pseudonymizer/processor/policy"
	"github.com/hygiene/pseudonymizer/schema"
	"github.com/hygiene/pseudonymizer/schema/registry"
)

// registryTimeout bounds each schema registry request, and the start-up
// registration as a whole.
const registryTimeout = 15 * time.Second

// newWire returns the framing of values: bare Avro without a schema
// registry, else the Confluent wire format (registering the output schemas).
func newWire(ctx context.Context, cfg config.Config, plan *policy.Plan, log *slog.Logger, reg prometheus.Registerer) (schema.Wire, error) {
	if cfg.SchemaRegistry.URL == "" {
		return schema.BareWire{}, nil
	}
	cl, err := newRegistryClient(cfg.SchemaRegistry)
	if err != nil {
		return nil, err
	}
	rctx, cancel := context.WithTimeout(ctx, registryTimeout)
	defer cancel()
	outputs := make([]registry.Output, 0, len(plan.Systems()))
	for i, sys := range plan.Systems() {
		outputs = append(outputs, registry.Output{System: sys, Topic: cfg.Topics.PseudoPrefix + sys, Schema: plan.OutputSchema(i)})
	}
	w, err := registry.New(rctx, cl, outputs, cfg.Topics.Forgotten,
		registry.WithLogger(log.With("component", "schema-registry")), registry.WithRegisterer(reg),
		registry.WithObjectionConfirmations(cfg.Topics.ObjectionsApplied))
	if err != nil {
		return nil, fmt.Errorf("schema_registry: %w", err)
	}
	return w, nil
}

// newRegistryClient builds a schema registry client: schema_registry.url
// (several URLs separated by commas), basic or bearer authentication, TLS.
func newRegistryClient(c config.SchemaRegistry) (*sr.Client, error) {
	var urls []string
	for _, u := range strings.Split(c.URL, ",") {
		if u = strings.TrimSpace(u); u != "" {
			urls = append(urls, u)
		}
	}
	if len(urls) == 0 {
		return nil, errors.New("config: schema_registry.url is empty")
	}
	opts := []sr.ClientOpt{
		sr.URLs(urls...),
		sr.UserAgent("pseudonymizer/" + version()),
		sr.HTTPClient(&http.Client{Timeout: registryTimeout}),
	}
	switch {
	case c.BearerToken != "" && (c.Username != "" || c.Password != ""):
		return nil, errors.New("config: set only one of schema_registry.bearer_token and schema_registry.username/password")
	case c.BearerToken != "":
		opts = append(opts, sr.BearerToken(c.BearerToken))
	case c.Username != "" || c.Password != "":
		opts = append(opts, sr.BasicAuth(c.Username, c.Password))
	}
	if c.TLS.Enabled {
		tc, err := tlsConfig(c.TLS)
		if err != nil {
			return nil, fmt.Errorf("config: schema_registry.tls: %w", err)
		}
		opts = append(opts, sr.DialTLSConfig(tc))
	}
	cl, err := sr.NewClient(opts...)
	if err != nil {
		return nil, fmt.Errorf("config: schema_registry: %w", err)
	}
	return cl, nil
}

// forgetCodec encodes forget requests and decodes confirmations for
// `pseudonymizer forget`.
type forgetCodec interface {
	Request(r *schema.ForgetRequest) ([]byte, error)
	Confirmation(ctx context.Context, value []byte) (*schema.ForgetConfirmation, error)
}

// bareForget is bare Avro with the bundled schemas.
type bareForget struct{}

func (bareForget) Request(r *schema.ForgetRequest) ([]byte, error) {
	return schema.MarshalForgetRequest(r)
}

func (bareForget) Confirmation(_ context.Context, value []byte) (*schema.ForgetConfirmation, error) {
	return schema.UnmarshalForgetConfirmation(value)
}

// newForgetCodec returns bare Avro without a schema registry, else the
// wire format with the ForgetRequest schema looked up (or registered)
// under "<forget topic>-value".
func newForgetCodec(ctx context.Context, cfg config.Config) (forgetCodec, error) {
	if cfg.SchemaRegistry.URL == "" {
		return bareForget{}, nil
	}
	cl, err := newRegistryClient(cfg.SchemaRegistry)
	if err != nil {
		return nil, err
	}
	rctx, cancel := context.WithTimeout(ctx, registryTimeout)
	defer cancel()
	fc, err := registry.NewForgetClient(rctx, cl, cfg.Topics.Forget)
	if err != nil {
		return nil, fmt.Errorf("schema_registry: %w", err)
	}
	return fc, nil
}
