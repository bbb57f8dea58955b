package lookup

// The lookup API's request decoder before it was written by hand
// (request.go): encoding/json's Decoder into a struct. It is the reference
// FuzzDecodeRequestEquivalence compares decodeRequest with, changed only
// to check the values members in key order rather than Go's random map
// order.

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"maps"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/hygiene/pseudonymizer/processor/policy"
)

// wireRequest is the JSON body.
type wireRequest struct {
	CustomerID *string                    `json:"customer_id"`
	OccurredAt *string                    `json:"occurred_at"`
	Values     map[string]json.RawMessage `json:"values"`
	Systems    []json.RawMessage          `json:"systems"`
}

// decodeRequestStd reads and validates a request body; now is the default
// occurred_at. Every error is a *BadRequestError.
func (si *schemaInfo) decodeRequestStd(body []byte, now time.Time) (*Request, error) {
	if len(body) > MaxBodyBytes {
		return nil, bad("request body is larger than %d bytes", MaxBodyBytes)
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	var w wireRequest
	if err := dec.Decode(&w); err != nil {
		return nil, jsonErrorStd(err)
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return nil, bad("malformed JSON: data after the request object")
	}
	r := &Request{}
	switch {
	case w.CustomerID == nil:
		return nil, bad("customer_id is required")
	case *w.CustomerID == "":
		return nil, bad("customer_id is empty")
	case len(*w.CustomerID) > MaxIDBytes:
		return nil, bad("customer_id is longer than %d bytes", MaxIDBytes)
	}
	r.CustomerID = *w.CustomerID
	if w.OccurredAt == nil {
		r.OccurredAt = time.UnixMilli(now.UnixMilli())
	} else {
		t, err := time.Parse(time.RFC3339Nano, *w.OccurredAt)
		if err != nil {
			return nil, bad("occurred_at is not an RFC 3339 date-time")
		}
		if y := t.UTC().Year(); y < 1 || y > 9999 {
			return nil, bad("occurred_at is outside the years 1 to 9999")
		}
		// The stream carries occurred_at in milliseconds.
		r.OccurredAt = time.UnixMilli(t.UnixMilli())
	}
	if len(w.Systems) == 0 {
		return nil, bad("systems is required and must name at least one system")
	}
	if len(w.Systems) > len(si.systems) {
		return nil, bad("systems names more than the %d configured systems", len(si.systems))
	}
	seen := make(map[int]bool, len(w.Systems))
	for i, raw := range w.Systems {
		var name string
		if err := json.Unmarshal(raw, &name); err != nil {
			return nil, bad("systems[%d] is not a string", i)
		}
		sys, ok := si.systems[name]
		if !ok {
			return nil, bad("systems[%d] is not a configured system", i)
		}
		if seen[sys] {
			return nil, bad("systems[%d] repeats a system", i)
		}
		seen[sys] = true
		r.Systems = append(r.Systems, sys)
	}
	if len(w.Values) > MaxValues {
		return nil, bad("values has more than %d members", MaxValues)
	}
	// In key order, so that a body with several bad values gets the
	// message of the first in key order, as decodeRequest answers (the
	// original took them in Go's random map order).
	for _, path := range slices.Sorted(maps.Keys(w.Values)) {
		raw := w.Values[path]
		f, ok := si.fields[path]
		if !ok {
			if path == policy.FieldCustomerID {
				return nil, bad("values must not contain customer_id: it is the request's customer_id")
			}
			return nil, bad("values has a member that no configured system pseudonymizes (they are: %s)", si.known)
		}
		v, err := decodeValueStd(f, raw)
		if err != nil {
			return nil, err
		}
		r.Values = append(r.Values, v)
	}
	slices.SortFunc(r.Values, func(a, b Value) int { return strings.Compare(a.Field.Path, b.Field.Path) })
	return r, nil
}

// decodeValueStd decodes one value of field f: a string for a string field;
// an integer, or a string holding one, for an int or long field.
func decodeValueStd(f policy.Field, raw json.RawMessage) (Value, error) {
	v := Value{Field: f}
	raw = bytes.TrimSpace(raw)
	var s string
	isString := len(raw) > 0 && raw[0] == '"'
	if isString {
		if err := json.Unmarshal(raw, &s); err != nil {
			return v, bad("values.%s is not a valid JSON string", f.Path)
		}
		if len(s) > MaxValueBytes {
			return v, bad("values.%s is longer than %d bytes", f.Path, MaxValueBytes)
		}
	}
	if f.Kind == policy.KindString {
		if !isString {
			return v, bad("values.%s must be a string", f.Path)
		}
		v.Str = []byte(s)
		return v, nil
	}
	if !isString {
		if len(raw) > 32 {
			return v, bad("values.%s must be an integer", f.Path)
		}
		s = string(raw)
	}
	bits := 64
	if f.Kind == policy.KindInt {
		bits = 32
	}
	n, err := strconv.ParseInt(s, 10, bits)
	if err != nil {
		return v, bad("values.%s must be an integer of %d bits", f.Path, bits)
	}
	v.Int = n
	return v, nil
}

// jsonErrorStd turns a JSON decoding error into a message that names no value.
func jsonErrorStd(err error) error {
	var syn *json.SyntaxError
	var typ *json.UnmarshalTypeError
	switch {
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
		return bad("malformed JSON: the body is empty or ends early")
	case errors.As(err, &syn):
		return bad("malformed JSON at byte %d", syn.Offset)
	case errors.As(err, &typ):
		if typ.Field != "" && knownMember(typ.Field) {
			return bad("%s has the wrong type", typ.Field)
		}
		return bad("the request body must be a JSON object of customer_id, occurred_at, values and systems")
	case strings.HasPrefix(err.Error(), "json: unknown field"):
		return bad("the request body has a member other than customer_id, occurred_at, values and systems")
	}
	return bad("malformed JSON")
}

func knownMember(s string) bool {
	switch s {
	case "customer_id", "occurred_at", "values", "systems":
		return true
	}
	return false
}
