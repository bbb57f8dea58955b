package main

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/hygiene/pseudonymizer/internal/config"
	"github.com/hygiene/pseudonymizer/processor"
	"github.com/hygiene/pseudonymizer/schema"
)

// runForget is `pseudonymizer forget`: publish a forget request and wait
// for its confirmation.
func runForget(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlags("forget", "forget --config FILE [--timeout D] [--reason TEXT] SUBJECT_ID", "Publishes a forget request for SUBJECT_ID (a customer_id) and waits for\nits confirmation. Exit status 3 if none arrives within --timeout.")
	path := fs.String("config", "", "configuration file (YAML)")
	timeout := fs.Duration("timeout", 60*time.Second, "how long to wait for the confirmation")
	reason := fs.String("reason", "", "optional reason recorded in the request")
	if err := fs.parse(args, stdout, stderr); err != nil {
		return err
	}
	if fs.NArg() != 1 || fs.Arg(0) == "" {
		return fs.usageError(stderr, errors.New("want exactly one SUBJECT_ID"))
	}
	if reason := processor.IDProblem("SUBJECT_ID", fs.Arg(0)); reason != "" {
		// The service dead-letters such a request (and no order with
		// such a customer_id ever got a key).
		return fs.usageError(stderr, errors.New(reason))
	}
	cfg, err := loadSchemaConfig(*path)
	if err != nil {
		return err
	}
	log := newLogger(config.Log{Level: "warn", Format: "text"}, stderr)
	kopts, err := kafkaOpts(cfg.Kafka, log)
	if err != nil {
		return err
	}
	req := schema.ForgetRequest{RequestID: newUUID(), SubjectID: fs.Arg(0), RequestedAt: time.Now().Truncate(time.Millisecond)}
	if *reason != "" {
		req.Reason = reason
	}
	codec, err := newForgetCodec(ctx, cfg)
	if err != nil {
		return err
	}
	wctx, cancel := context.WithTimeout(ctx, *timeout)
	defer cancel()
	conf, err := forgetWith(wctx, kopts, cfg.Topics, req, codec)
	if err != nil {
		if errors.Is(err, errUnconfirmed) && ctx.Err() == nil {
			return &exitError{code: 3, err: fmt.Errorf("no confirmation for request %s within %s (is `pseudonymizer run` running?); the request is published and stays queued: the service carries it out when it runs (check with `pseudonymizer status` or `pseudonymizer forget-log`), no need to send it again", req.RequestID, *timeout)}
		}
		return err
	}
	fmt.Fprintf(stdout, "request %s: %s at %s (requested %s); systems: %v\n", conf.RequestID, conf.Status,
		conf.CompletedAt.UTC().Format(time.RFC3339Nano), conf.RequestedAt.UTC().Format(time.RFC3339Nano), conf.Systems)
	return nil
}

// errUnconfirmed reports a forget request that was published but whose
// confirmation did not arrive in time: it stays queued.
var errUnconfirmed = errors.New("published, not yet confirmed")

// forget publishes req and waits on the confirmations topic for the
// confirmation of req.RequestID, in bare Avro.
func forget(ctx context.Context, kopts []kgo.Opt, topics config.Topics, req schema.ForgetRequest) (*schema.ForgetConfirmation, error) {
	return forgetWith(ctx, kopts, topics, req, bareForget{})
}

// forgetWith is forget with the framing of codec.
func forgetWith(ctx context.Context, kopts []kgo.Opt, topics config.Topics, req schema.ForgetRequest, codec forgetCodec) (*schema.ForgetConfirmation, error) {
	admCl, err := kgo.NewClient(kopts...)
	if err != nil {
		return nil, fmt.Errorf("kafka: %w", err)
	}
	defer admCl.Close()
	adm := kadm.NewClient(admCl)
	// Read the confirmations topic from its current end, fixed before the
	// request is published, so the confirmation cannot be missed.
	ends, err := adm.ListEndOffsets(ctx, topics.Forgotten)
	if err != nil {
		return nil, fmt.Errorf("list offsets of %s: %w", topics.Forgotten, err)
	}
	start := map[string]map[int32]kgo.Offset{topics.Forgotten: {}}
	ends.Each(func(o kadm.ListedOffset) {
		if o.Err == nil {
			start[topics.Forgotten][o.Partition] = kgo.NewOffset().At(o.Offset)
		}
	})
	if len(start[topics.Forgotten]) == 0 {
		return nil, fmt.Errorf("topic %s does not exist yet (start `pseudonymizer run` first)", topics.Forgotten)
	}
	cons, err := kgo.NewClient(append(append([]kgo.Opt{}, kopts...),
		kgo.ConsumePartitions(start), kgo.FetchIsolationLevel(kgo.ReadCommitted()))...)
	if err != nil {
		return nil, fmt.Errorf("kafka: %w", err)
	}
	defer cons.Close()

	val, err := codec.Request(&req)
	if err != nil {
		return nil, fmt.Errorf("encode request: %w", err)
	}
	if err := admCl.ProduceSync(ctx, &kgo.Record{Topic: topics.Forget, Key: []byte(req.SubjectID), Value: val}).FirstErr(); err != nil {
		return nil, fmt.Errorf("publish to %s: %w", topics.Forget, err)
	}
	for {
		fetches := cons.PollFetches(ctx)
		if err := ctx.Err(); err != nil {
			return nil, fmt.Errorf("%w: %w", errUnconfirmed, err)
		}
		for _, r := range fetches.Records() {
			c, err := codec.Confirmation(ctx, r.Value)
			if err == nil && c.RequestID == req.RequestID {
				return c, nil
			}
		}
	}
}

// newUUID returns a random (version 4) UUID.
func newUUID() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:16])
}
