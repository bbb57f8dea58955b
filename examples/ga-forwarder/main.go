// Command ga-forwarder is an example consumer of one marketing system's
// topic: it forwards the pseudonymized orders on
// orders.pseudo.google-analytics to Google Analytics 4 (Measurement
// Protocol) and, when an erasure notice arrives (a record with a null value,
// keyed by the forgotten customer's pseudonym), asks Google Analytics to
// delete that user (User Deletion API). GA knows the pseudonym as its user
// ID, because that is what it was sent.
//
// It reads read_committed and commits offsets only after every record of a
// poll was handled, so a failed forward or deletion is retried after a
// restart (at least once: both GA calls are idempotent for the same event or
// user). Values are bare Avro of the system's output schema, which
// `pseudonymizer schema --config FILE --system google-analytics` prints:
//
//	pseudonymizer schema --config examples/config.yaml --system google-analytics > ga.avsc
//	go run ./examples/ga-forwarder --schema ga.avsc --dry-run
//
// Without --dry-run it needs --measurement-id, --api-secret, --property-id
// and an OAuth access token with the analytics.user.deletion scope in
// GA_ACCESS_TOKEN. See docs/topics-and-schemas.md, "Erasure notices".
package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/hamba/avro/v2"
	"github.com/twmb/franz-go/pkg/kgo"
)

const (
	collectURL  = "https://www.google-analytics.com/mp/collect"
	deletionURL = "https://www.googleapis.com/analytics/v3/userDeletion/userDeletionRequests:upsert"
)

// forwarder holds what handling one record needs.
type forwarder struct {
	schema        avro.Schema
	http          *http.Client
	dryRun        bool
	out           io.Writer
	measurementID string
	apiSecret     string
	propertyID    string
	token         string
}

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:]); err != nil && !errors.Is(err, context.Canceled) {
		fmt.Fprintln(os.Stderr, "ga-forwarder:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("ga-forwarder", flag.ContinueOnError)
	brokers := fs.String("brokers", "127.0.0.1:9092", "seed brokers, comma-separated")
	topic := fs.String("topic", "orders.pseudo.google-analytics", "the system's output topic")
	group := fs.String("group", "ga-forwarder", "consumer group")
	schemaFile := fs.String("schema", "", "the system's output schema (pseudonymizer schema --system google-analytics)")
	dryRun := fs.Bool("dry-run", false, "print what would be sent instead of calling Google Analytics")
	measurementID := fs.String("measurement-id", "", "GA4 measurement ID (G-…)")
	apiSecret := fs.String("api-secret", "", "Measurement Protocol API secret")
	propertyID := fs.String("property-id", "", "GA4 property ID, for user deletion")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *schemaFile == "" {
		return errors.New("--schema is required")
	}
	text, err := os.ReadFile(*schemaFile)
	if err != nil {
		return fmt.Errorf("schema: %w", err)
	}
	schema, err := avro.Parse(string(text))
	if err != nil {
		return fmt.Errorf("schema: %w", err)
	}
	f := &forwarder{
		schema: schema, http: &http.Client{Timeout: 30 * time.Second}, dryRun: *dryRun, out: os.Stdout,
		measurementID: *measurementID, apiSecret: *apiSecret, propertyID: *propertyID,
		token: os.Getenv("GA_ACCESS_TOKEN"),
	}
	if !f.dryRun && (f.measurementID == "" || f.apiSecret == "" || f.propertyID == "" || f.token == "") {
		return errors.New("without --dry-run, --measurement-id, --api-secret, --property-id and GA_ACCESS_TOKEN are required")
	}

	cl, err := kgo.NewClient(
		kgo.SeedBrokers(strings.Split(*brokers, ",")...),
		kgo.ConsumerGroup(*group),
		kgo.ConsumeTopics(*topic),
		kgo.FetchIsolationLevel(kgo.ReadCommitted()),
		kgo.DisableAutoCommit(),
	)
	if err != nil {
		return fmt.Errorf("kafka: %w", err)
	}
	defer cl.Close()

	for {
		fetches := cl.PollFetches(ctx)
		if err := ctx.Err(); err != nil {
			return err
		}
		if err := fetches.Err(); err != nil {
			return fmt.Errorf("fetch: %w", err)
		}
		for _, r := range fetches.Records() {
			if err := f.handle(ctx, r); err != nil {
				// Not committed: this record and the rest of the poll are
				// handled again after a restart.
				return fmt.Errorf("%s/%d@%d: %w", r.Topic, r.Partition, r.Offset, err)
			}
		}
		if err := cl.CommitUncommittedOffsets(ctx); err != nil {
			return fmt.Errorf("commit: %w", err)
		}
	}
}

// handle forwards an order or applies an erasure notice.
func (f *forwarder) handle(ctx context.Context, r *kgo.Record) error {
	pseudonym := string(r.Key)
	if r.Value == nil {
		// An erasure notice: delete the user the pseudonym names.
		return f.deleteUser(ctx, pseudonym)
	}
	var order map[string]any
	if err := avro.Unmarshal(f.schema, r.Value, &order); err != nil {
		return fmt.Errorf("decode: %w", err)
	}
	return f.forwardOrder(ctx, pseudonym, order)
}

// forwardOrder sends a placed or refunded order as a GA4 event; other event
// types are skipped.
func (f *forwarder) forwardOrder(ctx context.Context, pseudonym string, order map[string]any) error {
	name := map[string]string{"PLACED": "purchase", "REFUNDED": "refund"}[fmt.Sprint(order["event_type"])]
	if name == "" {
		return nil
	}
	params := map[string]any{"transaction_id": order["order_id"], "currency": order["currency"]}
	if minor, ok := order["total_minor"].(int64); ok {
		params["value"] = float64(minor) / 100
	}
	body := map[string]any{
		"client_id": pseudonym,
		"user_id":   pseudonym,
		"events":    []map[string]any{{"name": name, "params": params}},
	}
	if t, ok := order["occurred_at"].(time.Time); ok {
		body["timestamp_micros"] = t.UnixMicro()
	}
	q := url.Values{"measurement_id": {f.measurementID}, "api_secret": {f.apiSecret}}
	return f.post(ctx, collectURL+"?"+q.Encode(), "", body)
}

// deleteUser asks Google Analytics to delete every event of the user ID.
func (f *forwarder) deleteUser(ctx context.Context, pseudonym string) error {
	body := map[string]any{
		"kind":       "analytics#userDeletionRequest",
		"id":         map[string]string{"type": "USER_ID", "userId": pseudonym},
		"propertyId": f.propertyID,
	}
	return f.post(ctx, deletionURL, f.token, body)
}

// post sends body as JSON, or prints it with --dry-run.
func (f *forwarder) post(ctx context.Context, target, token string, body any) error {
	b, err := json.Marshal(body)
	if err != nil {
		return fmt.Errorf("encode: %w", err)
	}
	endpoint, _, _ := strings.Cut(target, "?") // never print the API secret
	if f.dryRun {
		_, err := fmt.Fprintf(f.out, "POST %s %s\n", endpoint, b)
		return err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, target, bytes.NewReader(b))
	if err != nil {
		return fmt.Errorf("request: %w", err)
	}
	req.Header.Set("Content-Type", "application/json")
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := f.http.Do(req)
	if err != nil {
		return fmt.Errorf("post %s: %w", endpoint, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode/100 != 2 {
		msg, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
		return fmt.Errorf("post %s: %s: %s", endpoint, resp.Status, bytes.TrimSpace(msg))
	}
	_, err = io.Copy(io.Discard, resp.Body)
	return err
}
