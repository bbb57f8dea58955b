package registry

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"

	"github.com/twmb/franz-go/pkg/sr"

	"github.com/hygiene/pseudonymizer/schema"
)

// ForgetClient is the GDPR workflow's side of the wire format (used by
// `pseudonymizer forget`): it encodes ForgetRequests and decodes
// ForgetConfirmations. It is safe for concurrent use.
type ForgetClient struct {
	reqPre [headerLen]byte
	reqID  int
	confs  *reader
}

// NewForgetClient looks up the bundled ForgetRequest schema under
// Subject(topics.Forget), registering it if the subject does not have it.
func NewForgetClient(ctx context.Context, cl *sr.Client, forgetTopic string, opts ...Option) (*ForgetClient, error) {
	if cl == nil {
		return nil, errors.New("registry: a client is required")
	}
	o := buildOptions(opts)
	subject := Subject(forgetTopic)
	text, err := json.Marshal(schema.ForgetRequestSchema())
	if err != nil {
		return nil, fmt.Errorf("registry: %w", err)
	}
	s := sr.Schema{Schema: string(text), Type: sr.TypeAvro}
	id := 0
	ss, err := cl.LookupSchema(ctx, subject, s)
	switch {
	case err == nil:
		id = ss.ID
	case notFound(err):
		if id, err = cl.RegisterSchema(ctx, subject, s, -1, -1); err != nil {
			return nil, fmt.Errorf("registry: register the forget request schema under subject %s: %w", subject, describe(err))
		}
	default:
		return nil, fmt.Errorf("registry: look up the forget request schema under subject %s: %w", subject, describe(err))
	}
	return &ForgetClient{
		reqPre: prefix(id),
		reqID:  id,
		confs:  newReader(newResolver(cl, o.log), schema.ForgetConfirmationSchema(), nil),
	}, nil
}

// RequestSchemaID returns the schema ID that requests are written with.
func (f *ForgetClient) RequestSchemaID() int { return f.reqID }

// Request encodes r in the wire format.
func (f *ForgetClient) Request(r *schema.ForgetRequest) ([]byte, error) {
	body, err := schema.MarshalForgetRequest(r)
	if err != nil {
		return nil, fmt.Errorf("registry: encode forget request: %w", err)
	}
	out := make([]byte, 0, headerLen+len(body))
	out = append(out, f.reqPre[:]...)
	return append(out, body...), nil
}

// Confirmation decodes a ForgetConfirmation in the wire format, written
// with any schema the bundled one can read.
func (f *ForgetClient) Confirmation(ctx context.Context, value []byte) (*schema.ForgetConfirmation, error) {
	p, body, err := f.confs.plan(ctx, value)
	if err != nil {
		return nil, err
	}
	var c schema.ForgetConfirmation
	if p.fast {
		if err := p.validate(body); err != nil {
			return nil, err
		}
		if err := decodeAPI.Unmarshal(f.confs.schema, body, &c); err != nil {
			return nil, errors.New("registry: not a hygiene.v1.ForgetConfirmation in the wire format")
		}
		return &c, nil
	}
	if err := p.decode(body, &c); err != nil {
		return nil, err
	}
	return &c, nil
}
