package registry

import (
	"context"
	"fmt"

	"github.com/twmb/franz-go/pkg/sr"

	"github.com/hygiene/pseudonymizer/schema"
)

// DefaultObjectionConfirmations is the topic whose subject New registers
// the ObjectionConfirmation schema under unless WithObjectionConfirmations
// names another.
const DefaultObjectionConfirmations = "subjects.objections.applied"

// WithObjectionConfirmations sets the topic of objection confirmations:
// New registers the ObjectionConfirmation schema under Subject(topic).
func WithObjectionConfirmations(topic string) Option {
	return func(o *options) { o.objectionsApplied = topic }
}

// initObjections prepares the reader of ObjectionStates and registers the
// ObjectionConfirmation schema.
func (w *Wire) initObjections(ctx context.Context, cl *sr.Client, o options) error {
	w.objections = newReader(w.res, schema.ObjectionStateSchema(), nil)
	topic := o.objectionsApplied
	if topic == "" {
		topic = DefaultObjectionConfirmations
	}
	subject := Subject(topic)
	id, err := register(ctx, cl, subject, schema.ObjectionConfirmationSchema())
	if err != nil {
		return fmt.Errorf("registry: register the objection confirmation schema: %w", err)
	}
	w.objConfID, w.objConfPre = id, prefix(id)
	o.log.Info("registered objection confirmation schema", "subject", subject, "schema_id", id)
	return nil
}

// ObjectionConfirmationSchemaID returns the registered schema ID of
// objection confirmations.
func (w *Wire) ObjectionConfirmationSchemaID() int { return w.objConfID }

// Objection decodes an ObjectionState in the wire format, written with any
// schema the bundled one can read.
func (w *Wire) Objection(ctx context.Context, value []byte) (*schema.ObjectionState, error) {
	p, body, err := w.objections.plan(ctx, value)
	if err != nil {
		return nil, err
	}
	if p.fast {
		s, err := schema.UnmarshalObjectionState(body)
		if err != nil {
			return nil, &schema.RecordError{Class: schema.ClassDecode, Reason: "not a hygiene.v1.ObjectionState in the wire format"}
		}
		return s, nil
	}
	var s schema.ObjectionState
	if err := p.decode(body, &s); err != nil {
		return nil, err
	}
	if s.Systems == nil {
		s.Systems = []string{}
	}
	return &s, nil
}

// ObjectionConfirmation encodes c in the wire format.
func (w *Wire) ObjectionConfirmation(c *schema.ObjectionConfirmation) ([]byte, error) {
	body, err := schema.MarshalObjectionConfirmation(c)
	if err != nil {
		return nil, fmt.Errorf("registry: encode objection confirmation: %w", err)
	}
	out := make([]byte, 0, headerLen+len(body))
	out = append(out, w.objConfPre[:]...)
	return append(out, body...), nil
}
