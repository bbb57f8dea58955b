package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"strings"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/hygiene/pseudonymizer/internal/config"
	"github.com/hygiene/pseudonymizer/internal/linkability"
	"github.com/hygiene/pseudonymizer/processor"
)

// checkTimeout bounds each network check of --check-config.
const checkTimeout = 10 * time.Second

// checkConfig is `run --check-config`: it checks the policies, the KEK (a
// KMS key must answer: it decrypts the stored data key, or encrypts and
// decrypts a probe when there is none yet), the key store, the schema
// registry and the brokers and topics, and writes nothing anywhere: no
// table, file, index key, data key, schema or topic is created.
func checkConfig(ctx context.Context, cfg config.Config, log *slog.Logger, stdout io.Writer) error {
	pols, plan, err := compilePlan(&cfg)
	if err != nil {
		return err
	}
	if cfg.Lookup.Listen != "" {
		if _, _, err := checkLookup(cfg.Lookup, plan); err != nil {
			return err
		}
	}
	for _, w := range linkability.ConfigWarnings(plan) {
		fmt.Fprintln(stdout, "warning:", w)
	}
	piiCfg, err := cfg.PIIConfig()
	if err != nil {
		return err
	}
	if err := processor.CheckPII(piiCfg, plan, pols); err != nil {
		return err
	}
	for _, w := range processor.PIIWarnings(plan, pols) {
		fmt.Fprintf(stdout, "warning: %s\n", w)
	}
	kr, kmsState, err := loadKeys(ctx, cfg, keysReadOnly)
	if err != nil {
		return err
	}
	sctx, cancel := context.WithTimeout(ctx, checkTimeout)
	initialized, err := checkStore(sctx, cfg.Store, kr)
	cancel()
	if err != nil {
		return err
	}
	storeState := "initialized, the KEK unwraps its index key"
	if !initialized {
		storeState = "empty (`run` will initialize it and bind it to this KEK)"
	}
	if kmsState != "" {
		storeState += "; " + kmsState
	}
	if cfg.SchemaRegistry.URL != "" {
		cl, err := newRegistryClient(cfg.SchemaRegistry)
		if err != nil {
			return err
		}
		rctx, cancel := context.WithTimeout(ctx, checkTimeout)
		_, err = cl.Subjects(rctx)
		cancel()
		if err != nil {
			return fmt.Errorf("schema_registry: %w", err)
		}
	}
	kopts, err := kafkaOpts(cfg.Kafka, log)
	if err != nil {
		return err
	}
	var outputs []string
	for _, s := range plan.Systems() {
		outputs = append(outputs, cfg.Topics.PseudoPrefix+s)
	}
	topics, err := checkTopics(ctx, kopts, cfg, outputs)
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "configuration ok: %d systems; key store (%s) %s; brokers %s answer; %s\n",
		len(outputs), storeKind(cfg.Store), storeState, strings.Join(cfg.Kafka.Brokers, ","), topics)
	return nil
}

// checkTopics checks that a broker answers, that the input topics exist and
// that the topics the service writes exist or can be created (validated by
// the broker, not created). It returns a summary.
func checkTopics(ctx context.Context, kopts []kgo.Opt, cfg config.Config, outputs []string) (string, error) {
	cl, err := kgo.NewClient(kopts...)
	if err != nil {
		return "", fmt.Errorf("kafka: %w", err)
	}
	defer cl.Close()
	adm := kadm.NewClient(cl)
	cctx, cancel := context.WithTimeout(ctx, checkTimeout)
	defer cancel()
	if _, err := adm.BrokerMetadata(cctx); err != nil {
		return "", fmt.Errorf("kafka.brokers: no broker answers at %s within %s (for a local broker: `pseudonymizer demo --broker-only`): %w",
			strings.Join(cfg.Kafka.Brokers, ","), checkTimeout, err)
	}
	inputs := []string{cfg.Topics.Orders, cfg.Topics.Forget}
	written := append([]string{cfg.Topics.Forgotten, cfg.Topics.OrdersDeadLetter, cfg.Topics.ForgetDeadLetter,
		cfg.Topics.Objections, cfg.Topics.ObjectionsApplied, cfg.Topics.ObjectionsDeadLetter}, outputs...)
	if cfg.PII.QuarantineTopic != "" {
		written = append(written, cfg.PII.QuarantineTopic)
	}
	td, err := adm.ListTopics(cctx, append(slices.Clone(inputs), written...)...)
	if err != nil {
		return "", fmt.Errorf("kafka: list topics: %w", err)
	}
	exists := func(t string) bool { d, ok := td[t]; return ok && d.Err == nil }
	var missingIn, missingOut []string
	for _, t := range inputs {
		if !exists(t) {
			missingIn = append(missingIn, t)
		}
	}
	for _, t := range written {
		if !exists(t) {
			missingOut = append(missingOut, t)
		}
	}
	if len(missingIn) > 0 {
		return "", fmt.Errorf("topics: missing input topic %s: create it (same partition count for both inputs, keyed by customer ID)",
			strings.Join(missingIn, ", "))
	}
	if len(missingOut) == 0 {
		return fmt.Sprintf("all %d topics exist", len(inputs)+len(written)), nil
	}
	if !cfg.Kafka.CreateTopics {
		return "", fmt.Errorf("topics: missing %s, and kafka.create_topics is false: create them", strings.Join(missingOut, ", "))
	}
	partitions := int32(len(td[cfg.Topics.Orders].Partitions))
	resp, err := adm.ValidateCreateTopics(cctx, partitions, -1, nil, missingOut...)
	if err != nil {
		return "", fmt.Errorf("kafka: validate topic creation: %w", err)
	}
	for _, r := range resp.Sorted() {
		if r.Err != nil && !errors.Is(r.Err, kerr.TopicAlreadyExists) {
			return "", fmt.Errorf("topics: %s is missing and cannot be created: %w", r.Topic, r.Err)
		}
	}
	return fmt.Sprintf("%d topics exist, %s will be created at start-up", len(inputs)+len(written)-len(missingOut), strings.Join(missingOut, ", ")), nil
}
