// Package registry implements the Confluent wire format (magic byte 0, a
// 4-byte big-endian schema ID, then Avro binary) with a schema registry, as
// a schema.Wire.
//
// Input values are read with their writer schema, fetched by ID from the
// registry and cached, through Avro schema resolution into the bundled
// reader schemas of package schema: the order service may add optional
// fields or still publish an older version. When a writer schema is
// canonically the bundled one, the body is used as it is (no copy);
// otherwise it is decoded with the resolved schema and re-encoded as bare
// Avro of the bundled schema, so the allowlist then drops any field the
// bundled schema does not have. Fields dropped that way are reported once
// per schema ID (a log line and pseudonymizer_unmapped_fields_total).
//
// Output schemas are registered at start-up under "<topic>-value" and the
// outputs carry their IDs.
//
// Writers and bodies are hostile until proven otherwise: hamba/avro can
// crash the process or loop for ever on input it was not built to doubt.
// Each writer schema is compiled by package avrowalk when it is
// first fetched, which refuses recursive, too deeply nested and
// exponentially expanding schemas (class schema) before any hamba decoder
// is built for them; every body that hamba decodes is first validated
// against its writer schema by avrowalk, with work bounded by its size
// (class decode). Bodies of a writer identical to the bundled OrderEvent
// go to the pipeline's own scanner instead, and bare ForgetRequests are
// validated by package schema.
//
// Errors: a bad header is class decode; an unknown ID (the registry answers
// 404 with error code 40403), a non-Avro or incompatible writer schema is
// class schema; a registry that cannot be reached or answers otherwise is
// a plain error, so the pipeline aborts and retries rather than
// dead-lettering good records.
package registry

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"

	"github.com/hamba/avro/v2"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/twmb/franz-go/pkg/sr"

	"github.com/hygiene/pseudonymizer/schema"
)

// Option configures New and NewForgetClient.
type Option func(*options)

type options struct {
	log *slog.Logger
	reg prometheus.Registerer
	// objectionsApplied is the topic of objection confirmations
	// (WithObjectionConfirmations).
	objectionsApplied string
}

// WithLogger sets the logger; the default discards.
func WithLogger(l *slog.Logger) Option { return func(o *options) { o.log = l } }

// WithRegisterer registers the package's metrics with reg.
func WithRegisterer(reg prometheus.Registerer) Option { return func(o *options) { o.reg = reg } }

func buildOptions(opts []Option) options {
	o := options{log: slog.New(slog.DiscardHandler)}
	for _, f := range opts {
		f(&o)
	}
	return o
}

// Subject returns the registry subject of the values of topic.
func Subject(topic string) string { return topic + "-value" }

// Wire is the Confluent wire format with a schema registry. It is safe for
// concurrent use.
type Wire struct {
	res     *resolver
	orders  *reader
	forgets *reader
	outIDs  []int
	outPre  [][headerLen]byte
	confID  int
	confPre [headerLen]byte
	// objections reads ObjectionStates; objConfPre is the header of
	// ObjectionConfirmations (objection.go).
	objections *reader
	objConfID  int
	objConfPre [headerLen]byte
}

var (
	_ schema.Wire       = (*Wire)(nil)
	_ schema.Prefetcher = (*Wire)(nil)
)

// PrefetchOrders looks up the writer schemas of a batch of orders that are
// not cached, each once and in parallel, at most 64 per batch; the other
// records with unknown IDs are dead-lettered as schema (see
// schema.Prefetcher).
func (w *Wire) PrefetchOrders(ctx context.Context, values [][]byte) error {
	return w.orders.prefetch(ctx, values)
}

// PrefetchForgets does for forget requests what PrefetchOrders does for
// orders.
func (w *Wire) PrefetchForgets(ctx context.Context, values [][]byte) error {
	return w.forgets.prefetch(ctx, values)
}

// Output is one system's output topic and the schema of its values.
type Output struct {
	// System names the system, for logs and errors.
	System string
	// Topic is the output topic; the schema is registered under
	// Subject(Topic).
	Topic string
	// Schema is the system's output schema (policy.Plan.OutputSchema).
	Schema avro.Schema
}

// New registers each output's schema under Subject(output.Topic) and the
// ForgetConfirmation schema under Subject(confirmations), and returns the
// wire; outputs are in the order of the system indexes the processor
// passes to AppendOutputPrefix. Registering a schema that is already there
// is a no-op that returns its ID.
func New(ctx context.Context, cl *sr.Client, outputs []Output, confirmations string, opts ...Option) (*Wire, error) {
	if cl == nil {
		return nil, errors.New("registry: a client is required")
	}
	o := buildOptions(opts)
	unmapped, err := unmappedCounter(o.reg)
	if err != nil {
		return nil, err
	}
	res := newResolver(cl, o.log)
	w := &Wire{
		res:     res,
		orders:  newReader(res, schema.OrderEventSchema(), unmapped),
		forgets: newReader(res, schema.ForgetRequestSchema(), nil),
	}
	for _, out := range outputs {
		subject := Subject(out.Topic)
		id, err := register(ctx, cl, subject, out.Schema)
		if err != nil {
			return nil, fmt.Errorf("registry: register the output schema of system %s: %w", out.System, err)
		}
		w.outIDs = append(w.outIDs, id)
		w.outPre = append(w.outPre, prefix(id))
		o.log.Info("registered output schema", "system", out.System, "subject", subject, "schema_id", id)
	}
	subject := Subject(confirmations)
	if w.confID, err = register(ctx, cl, subject, schema.ForgetConfirmationSchema()); err != nil {
		return nil, fmt.Errorf("registry: register the confirmation schema: %w", err)
	}
	w.confPre = prefix(w.confID)
	o.log.Info("registered confirmation schema", "subject", subject, "schema_id", w.confID)
	if err := w.initObjections(ctx, cl, o); err != nil {
		return nil, err
	}
	return w, nil
}

// register registers s under subject and returns its ID.
func register(ctx context.Context, cl *sr.Client, subject string, s avro.Schema) (int, error) {
	text, err := json.Marshal(s)
	if err != nil {
		return 0, fmt.Errorf("subject %s: %w", subject, err)
	}
	id, err := cl.RegisterSchema(ctx, subject, sr.Schema{Schema: string(text), Type: sr.TypeAvro}, -1, -1)
	if err != nil {
		return 0, fmt.Errorf("subject %s: %w", subject, describe(err))
	}
	return id, nil
}

// unmappedCounter creates or finds pseudonymizer_unmapped_fields_total.
func unmappedCounter(reg prometheus.Registerer) (*prometheus.CounterVec, error) {
	c := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "pseudonymizer_unmapped_fields_total",
		Help: "Fields of writer schemas of orders that the bundled OrderEvent schema lacks (dropped for every system), counted once per writer schema ID.",
	}, []string{"field"})
	if reg == nil {
		return c, nil
	}
	if err := reg.Register(c); err != nil {
		var are prometheus.AlreadyRegisteredError
		if errors.As(err, &are) {
			if existing, ok := are.ExistingCollector.(*prometheus.CounterVec); ok {
				return existing, nil
			}
		}
		return nil, fmt.Errorf("registry: metrics: %w", err)
	}
	return c, nil
}

// OutputSchemaID returns the registered schema ID of system i's outputs.
func (w *Wire) OutputSchemaID(system int) int { return w.outIDs[system] }

// ConfirmationSchemaID returns the registered schema ID of confirmations.
func (w *Wire) ConfirmationSchemaID() int { return w.confID }

// Order returns the value's OrderEvent as bare Avro of the bundled schema:
// the body itself when the writer schema is canonically the bundled one,
// else a re-encoded copy.
func (w *Wire) Order(ctx context.Context, value []byte) ([]byte, error) {
	p, body, err := w.orders.plan(ctx, value)
	if err != nil {
		return nil, err
	}
	if p.fast {
		return body, nil
	}
	var v any
	if err := p.decode(body, &v); err != nil {
		return nil, err
	}
	out, err := avro.Marshal(w.orders.schema, v)
	if err != nil {
		return nil, schemaErr("writer schema id %d: a record does not convert to %s", p.id, w.orders.name)
	}
	return out, nil
}

// Forget decodes a ForgetRequest in the wire format.
func (w *Wire) Forget(ctx context.Context, value []byte) (*schema.ForgetRequest, error) {
	p, body, err := w.forgets.plan(ctx, value)
	if err != nil {
		return nil, err
	}
	if p.fast {
		fr, err := schema.UnmarshalForgetRequest(body)
		if err != nil {
			return nil, &schema.RecordError{Class: schema.ClassDecode, Reason: "not a hygiene.v1.ForgetRequest in the wire format"}
		}
		return fr, nil
	}
	var fr schema.ForgetRequest
	if err := p.decode(body, &fr); err != nil {
		return nil, err
	}
	return &fr, nil
}

// AppendOutputPrefix appends the wire format header of system i's schema.
func (w *Wire) AppendOutputPrefix(dst []byte, system int) []byte {
	return append(dst, w.outPre[system][:]...)
}

// Confirmation encodes c in the wire format.
func (w *Wire) Confirmation(c *schema.ForgetConfirmation) ([]byte, error) {
	body, err := schema.MarshalForgetConfirmation(c)
	if err != nil {
		return nil, fmt.Errorf("registry: encode confirmation: %w", err)
	}
	out := make([]byte, 0, headerLen+len(body))
	out = append(out, w.confPre[:]...)
	return append(out, body...), nil
}
