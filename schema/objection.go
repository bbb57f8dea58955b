package schema

import (
	_ "embed"
	"fmt"
	"sync"
	"time"

	"github.com/hamba/avro/v2"

	"github.com/hygiene/pseudonymizer/schema/avrowalk"
)

var (
	//go:embed objection_state.avsc
	objectionStateJSON string
	//go:embed objection_confirmation.avsc
	objectionConfirmationJSON string
)

// ObjectionStateJSON returns the bundled ObjectionState schema text.
func ObjectionStateJSON() string { return objectionStateJSON }

// ObjectionConfirmationJSON returns the bundled ObjectionConfirmation
// schema text.
func ObjectionConfirmationJSON() string { return objectionConfirmationJSON }

// objectionSchemas are the parsed ObjectionState and ObjectionConfirmation
// schemas and the ObjectionState's validator; a failure is a build defect.
var objectionSchemas = sync.OnceValues(func() ([2]avro.Schema, *avrowalk.Schema) {
	var out [2]avro.Schema
	for i, text := range []string{objectionStateJSON, objectionConfirmationJSON} {
		s, err := avro.ParseBytes([]byte(text))
		if err != nil {
			panic(fmt.Sprintf("schema: bundled objection schema %d does not parse: %v", i, err))
		}
		out[i] = s
	}
	w, err := avrowalk.Compile(out[0])
	if err != nil {
		panic(fmt.Sprintf("schema: bundled objection state schema does not compile: %v", err))
	}
	return out, w
})

// ObjectionStateSchema returns the parsed hygiene.v1.ObjectionState schema.
func ObjectionStateSchema() avro.Schema { s, _ := objectionSchemas(); return s[0] }

// ObjectionConfirmationSchema returns the parsed
// hygiene.v1.ObjectionConfirmation schema.
func ObjectionConfirmationSchema() avro.Schema { s, _ := objectionSchemas(); return s[1] }

// ObjectionState mirrors hygiene.v1.ObjectionState, the value of
// subjects.objections.
type ObjectionState struct {
	SubjectID   string    `avro:"subject_id" json:"subject_id"`
	RequestID   string    `avro:"request_id" json:"request_id"`
	EffectiveAt time.Time `avro:"effective_at" json:"effective_at"`
	Systems     []string  `avro:"systems" json:"systems"`
}

// Objection statuses (hygiene.v1.ObjectionStatus).
const (
	StatusApplied = "APPLIED"
	// StatusUnknownSubject (UNKNOWN_SUBJECT) is shared with ForgetStatus.
)

// ObjectionConfirmation mirrors hygiene.v1.ObjectionConfirmation, the
// value of subjects.objections.applied.
type ObjectionConfirmation struct {
	RequestID   string    `avro:"request_id" json:"request_id"`
	SubjectID   string    `avro:"subject_id" json:"subject_id"`
	Status      string    `avro:"status" json:"status"`
	EffectiveAt time.Time `avro:"effective_at" json:"effective_at"`
	AppliedAt   time.Time `avro:"applied_at" json:"applied_at"`
	Systems     []string  `avro:"systems" json:"systems"`
	Superseded  bool      `avro:"superseded" json:"superseded"`
}

// MarshalObjectionState encodes s as bare Avro binary with the bundled
// schema.
func MarshalObjectionState(s *ObjectionState) ([]byte, error) {
	if s.Systems == nil {
		c := *s
		c.Systems = []string{}
		s = &c
	}
	return avro.Marshal(ObjectionStateSchema(), s)
}

// UnmarshalObjectionState decodes bare Avro binary written with the
// bundled schema, with work bounded by len(b): the bytes are validated
// (block counts bounded by the bytes that remain, no trailing bytes)
// before they are decoded.
func UnmarshalObjectionState(b []byte) (*ObjectionState, error) {
	_, w := objectionSchemas()
	if err := w.Validate(b); err != nil {
		return nil, fmt.Errorf("schema: %w", err)
	}
	var s ObjectionState
	if err := avro.Unmarshal(ObjectionStateSchema(), b, &s); err != nil {
		return nil, fmt.Errorf("schema: objection state: %w", err)
	}
	if s.Systems == nil {
		s.Systems = []string{}
	}
	return &s, nil
}

// MarshalObjectionConfirmation encodes c as bare Avro binary with the
// bundled schema.
func MarshalObjectionConfirmation(c *ObjectionConfirmation) ([]byte, error) {
	if c.Systems == nil {
		cc := *c
		cc.Systems = []string{}
		c = &cc
	}
	return avro.Marshal(ObjectionConfirmationSchema(), c)
}

// UnmarshalObjectionConfirmation decodes bare Avro binary written with
// the bundled schema (for clients and tests).
func UnmarshalObjectionConfirmation(b []byte) (*ObjectionConfirmation, error) {
	var c ObjectionConfirmation
	if err := avro.Unmarshal(ObjectionConfirmationSchema(), b, &c); err != nil {
		return nil, fmt.Errorf("schema: objection confirmation: %w", err)
	}
	return &c, nil
}
