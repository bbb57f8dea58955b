package main

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/sr"

	"github.com/hygiene/pseudonymizer/internal/config"
	"github.com/hygiene/pseudonymizer/schema"
	"github.com/hygiene/pseudonymizer/schema/sample"
)

// runProduceSample is `pseudonymizer produce-sample`: it publishes sample
// orders to the orders topic, as the order service would.
func runProduceSample(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlags("produce-sample", "produce-sample --config FILE [--orders N] [--customers N] [--seed N]",
		"Publishes realistic sample OrderEvents (keyed by customer_id) to the orders\n"+
			"topic, in bare Avro or, with a schema registry, in its wire format (the\n"+
			"bundled OrderEvent schema is looked up, or registered, under <topic>-value).\n"+
			"Customer IDs are cust-100000, cust-100001, ...; orders are dated now, so a\n"+
			"forgotten customer's new sample orders are pseudonymized with a new key.")
	path := fs.String("config", "", "configuration file (YAML)")
	orders := fs.Int("orders", 10, "number of orders")
	customers := fs.Int("customers", 3, "number of distinct customers")
	seed := fs.Uint64("seed", uint64(time.Now().UnixNano()), "random seed (the same seed gives the same orders)")
	if err := fs.parse(args, stdout, stderr); err != nil {
		return err
	}
	if *orders < 1 || *customers < 1 {
		return fs.usageError(stderr, errors.New("--orders and --customers must be at least 1"))
	}
	cfg, err := loadSchemaConfig(*path)
	if err != nil {
		return err
	}
	prefix, err := orderPrefix(ctx, cfg)
	if err != nil {
		return err
	}
	kopts, err := kafkaOpts(cfg.Kafka, newLogger(config.Log{Level: "warn", Format: "text"}, stderr))
	if err != nil {
		return err
	}
	if err := requireTopics(ctx, kopts, cfg.Topics.Orders); err != nil {
		return err
	}
	// Orders are dated now, as the order service would date them: an order
	// dated before a customer's forget request would be suppressed (it is
	// the forgotten customer's past), one dated after it is a new order.
	gen := sample.New(*seed, *customers, time.Now())
	recs := make([]*kgo.Record, 0, *orders)
	for i := 0; i < *orders; i++ {
		e := gen.Next()
		e.OccurredAt = time.Now().Truncate(time.Millisecond)
		body, err := schema.MarshalOrderEvent(e)
		if err != nil {
			return fmt.Errorf("encode order: %w", err)
		}
		recs = append(recs, &kgo.Record{Topic: cfg.Topics.Orders, Key: []byte(e.CustomerID), Value: append(append([]byte(nil), prefix...), body...)})
	}
	cl, err := kgo.NewClient(kopts...)
	if err != nil {
		return fmt.Errorf("kafka: %w", err)
	}
	defer cl.Close()
	pctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if err := cl.ProduceSync(pctx, recs...).FirstErr(); err != nil {
		return fmt.Errorf("publish to %s: %w", cfg.Topics.Orders, err)
	}
	fmt.Fprintf(stdout, "published %d sample orders of up to %d customers to %s\n", *orders, *customers, cfg.Topics.Orders)
	return nil
}

// orderPrefix returns what precedes an order's Avro body: nothing for bare
// Avro, else the wire format header of the bundled OrderEvent schema.
func orderPrefix(ctx context.Context, cfg config.Config) ([]byte, error) {
	if cfg.SchemaRegistry.URL == "" {
		return nil, nil
	}
	cl, err := newRegistryClient(cfg.SchemaRegistry)
	if err != nil {
		return nil, err
	}
	text, err := json.Marshal(schema.OrderEventSchema())
	if err != nil {
		return nil, err
	}
	rctx, cancel := context.WithTimeout(ctx, registryTimeout)
	defer cancel()
	subject := cfg.Topics.Orders + "-value"
	s := sr.Schema{Schema: string(text), Type: sr.TypeAvro}
	id := 0
	if ss, err := cl.LookupSchema(rctx, subject, s); err == nil {
		id = ss.ID
	} else if id, err = cl.RegisterSchema(rctx, subject, s, -1, -1); err != nil {
		return nil, fmt.Errorf("schema_registry: register the OrderEvent schema under %s: %w", subject, err)
	}
	return binary.BigEndian.AppendUint32([]byte{0}, uint32(id)), nil
}
