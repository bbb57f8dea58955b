package schema

import (
	"context"
	"errors"
)

// Wire is the framing of Avro values on the topics: bare Avro with the
// bundled schemas (BareWire), or the Confluent wire format with a schema
// registry (package schema/registry).
//
// Errors that are the record's fault are *RecordError and send the record
// to the dead-letter topic; any other error is treated as transient (an
// outage): the batch is aborted and retried, nothing is dead-lettered.
// Implementations must be safe for use by one goroutine at a time.
type Wire interface {
	// Order returns the value's OrderEvent as bare Avro binary of the
	// bundled schema. It may return value itself.
	Order(ctx context.Context, value []byte) ([]byte, error)
	// Forget decodes a ForgetRequest.
	Forget(ctx context.Context, value []byte) (*ForgetRequest, error)
	// AppendOutputPrefix appends what precedes the Avro body of system i's
	// output records (nothing for bare Avro).
	AppendOutputPrefix(dst []byte, system int) []byte
	// Confirmation encodes a ForgetConfirmation.
	Confirmation(c *ForgetConfirmation) ([]byte, error)
	// Objection decodes an ObjectionState.
	Objection(ctx context.Context, value []byte) (*ObjectionState, error)
	// ObjectionConfirmation encodes an ObjectionConfirmation.
	ObjectionConfirmation(c *ObjectionConfirmation) ([]byte, error)
}

// Prefetcher is implemented by a Wire that looks schemas up in a remote
// service. The processor calls it once per batch, before the batch's
// Order (or Forget) calls, with the values of the batch: it looks up, in
// parallel and each once, the schema IDs it has no answer for, up to a
// bound per batch; the values with other unknown IDs then fail with a
// RecordError of class schema. That keeps the time a batch waits for the
// service bounded whatever the input. An error is an outage, as for Order.
type Prefetcher interface {
	// PrefetchOrders looks up the schemas of a batch of order values.
	PrefetchOrders(ctx context.Context, values [][]byte) error
	// PrefetchForgets looks up the schemas of a batch of forget requests.
	PrefetchForgets(ctx context.Context, values [][]byte) error
}

// Dead-letter classes (header error.class).
const (
	// ClassDecode: the value is not in the expected framing or encoding.
	ClassDecode = "decode"
	// ClassContract: the value decodes but breaks the contract (an empty
	// or too long ID, a timestamp out of range).
	ClassContract = "contract"
	// ClassTooLarge: the record or one of its outputs exceeds a size limit.
	ClassTooLarge = "too_large"
	// ClassSchema: the writer schema is unknown, not Avro or incompatible.
	ClassSchema = "schema"
	// ClassRejected: the key store refused the record's data (a value it
	// cannot hold); retrying cannot help. The contract's checks keep
	// known cases out, so this is a last line.
	ClassRejected = "rejected"
)

// RecordError is a problem of one record; it is dead-lettered with Class.
type RecordError struct {
	// Class is the dead-letter class (header error.class).
	Class string
	// Reason is a short description without any input bytes.
	Reason string
}

// Error returns the class and the reason.
func (e *RecordError) Error() string { return e.Class + ": " + e.Reason }

// AsRecordError reports whether err is a RecordError.
func AsRecordError(err error) (*RecordError, bool) {
	var re *RecordError
	ok := errors.As(err, &re)
	return re, ok
}

// BareWire is bare Avro binary with the bundled schemas, the default.
type BareWire struct{}

var _ Wire = BareWire{}

// Order returns value: the pipeline's scanner validates it.
func (BareWire) Order(_ context.Context, value []byte) ([]byte, error) { return value, nil }

// Forget strictly decodes a bare ForgetRequest.
func (BareWire) Forget(_ context.Context, value []byte) (*ForgetRequest, error) {
	fr, err := UnmarshalForgetRequest(value)
	if err != nil {
		return nil, &RecordError{Class: ClassDecode, Reason: "not a hygiene.v1.ForgetRequest in bare Avro"}
	}
	return fr, nil
}

// AppendOutputPrefix appends nothing.
func (BareWire) AppendOutputPrefix(dst []byte, _ int) []byte { return dst }

// Confirmation encodes bare Avro.
func (BareWire) Confirmation(c *ForgetConfirmation) ([]byte, error) {
	return MarshalForgetConfirmation(c)
}

// Objection decodes a bare ObjectionState.
func (BareWire) Objection(_ context.Context, value []byte) (*ObjectionState, error) {
	s, err := UnmarshalObjectionState(value)
	if err != nil {
		return nil, &RecordError{Class: ClassDecode, Reason: "not a hygiene.v1.ObjectionState in bare Avro"}
	}
	return s, nil
}

// ObjectionConfirmation encodes bare Avro.
func (BareWire) ObjectionConfirmation(c *ObjectionConfirmation) ([]byte, error) {
	return MarshalObjectionConfirmation(c)
}
