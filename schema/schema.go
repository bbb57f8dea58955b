// Package schema holds the Avro schemas of the pseudonymizer's wire contract
// (see docs/topics-and-schemas.md) and the Go types that mirror them.
//
// The .avsc files in this folder are the source of truth: they are embedded
// in the binary, and field order is part of the contract. The Go types exist
// for producers, tests and the demo; the order pipeline itself works on the
// encoded bytes (see processor/policy).
package schema

import (
	"bytes"
	_ "embed"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/hamba/avro/v2"

	"github.com/hygiene/pseudonymizer/schema/avrowalk"
)

var (
	//go:embed order_event.avsc
	orderEventJSON string
	//go:embed forget_request.avsc
	forgetRequestJSON string
	//go:embed forget_confirmation.avsc
	forgetConfirmationJSON string
)

// OrderEventJSON returns the bundled OrderEvent schema text.
func OrderEventJSON() string { return orderEventJSON }

// ForgetRequestJSON returns the bundled ForgetRequest schema text.
func ForgetRequestJSON() string { return forgetRequestJSON }

// ForgetConfirmationJSON returns the bundled ForgetConfirmation schema text.
func ForgetConfirmationJSON() string { return forgetConfirmationJSON }

// parsed caches the parsed bundled schemas. They are immutable once parsed,
// and a parse failure is a build defect, so it panics.
var parsed = sync.OnceValue(func() [3]avro.Schema {
	var out [3]avro.Schema
	for i, text := range []string{orderEventJSON, forgetRequestJSON, forgetConfirmationJSON} {
		s, err := avro.ParseBytes([]byte(text))
		if err != nil {
			panic(fmt.Sprintf("schema: bundled schema %d does not parse: %v", i, err))
		}
		out[i] = s
	}
	return out
})

// walkers holds the validators of the bundled schemas, in the order of
// parsed. hamba/avro can crash or loop on hostile input (see package
// avrowalk), so every Unmarshal function validates its input first.
var walkers = sync.OnceValue(func() [3]*avrowalk.Schema {
	var out [3]*avrowalk.Schema
	for i, s := range parsed() {
		w, err := avrowalk.Compile(s)
		if err != nil {
			panic(fmt.Sprintf("schema: bundled schema %d does not compile: %v", i, err))
		}
		out[i] = w
	}
	return out
})

// unmarshal validates b with walker i, then decodes it into v.
func unmarshal(i int, b []byte, v any) error {
	if err := walkers()[i].Validate(b); err != nil {
		return fmt.Errorf("schema: %w", err)
	}
	return avro.Unmarshal(parsed()[i], b, v)
}

// OrderEventSchema returns the parsed hygiene.v1.OrderEvent schema.
func OrderEventSchema() avro.Schema { return parsed()[0] }

// ForgetRequestSchema returns the parsed hygiene.v1.ForgetRequest schema.
func ForgetRequestSchema() avro.Schema { return parsed()[1] }

// ForgetConfirmationSchema returns the parsed hygiene.v1.ForgetConfirmation schema.
func ForgetConfirmationSchema() avro.Schema { return parsed()[2] }

// Address mirrors hygiene.v1.Address.
type Address struct {
	Line1      string `avro:"line1" json:"line1"`
	PostalCode string `avro:"postal_code" json:"postal_code"`
	City       string `avro:"city" json:"city"`
	Country    string `avro:"country" json:"country"`
}

// LineItem mirrors hygiene.v1.LineItem.
type LineItem struct {
	SKU            string `avro:"sku" json:"sku"`
	Quantity       int32  `avro:"quantity" json:"quantity"`
	UnitPriceMinor int64  `avro:"unit_price_minor" json:"unit_price_minor"`
}

// Order event types (hygiene.v1.OrderEventType).
const (
	Placed    = "PLACED"
	Updated   = "UPDATED"
	Cancelled = "CANCELLED"
	Refunded  = "REFUNDED"
)

// OrderEvent mirrors hygiene.v1.OrderEvent, the value of orders.raw.
type OrderEvent struct {
	EventID         string            `avro:"event_id" json:"event_id"`
	EventType       string            `avro:"event_type" json:"event_type"`
	OccurredAt      time.Time         `avro:"occurred_at" json:"occurred_at"`
	OrderID         string            `avro:"order_id" json:"order_id"`
	CustomerID      string            `avro:"customer_id" json:"customer_id"`
	Email           *string           `avro:"email" json:"email"`
	Phone           *string           `avro:"phone" json:"phone"`
	ShippingAddress *Address          `avro:"shipping_address" json:"shipping_address"`
	Currency        string            `avro:"currency" json:"currency"`
	TotalMinor      int64             `avro:"total_minor" json:"total_minor"`
	Items           []LineItem        `avro:"items" json:"items"`
	Attributes      map[string]string `avro:"attributes" json:"attributes"`
}

// ForgetRequest mirrors hygiene.v1.ForgetRequest, the value of subjects.forget.
type ForgetRequest struct {
	RequestID   string    `avro:"request_id" json:"request_id"`
	SubjectID   string    `avro:"subject_id" json:"subject_id"`
	RequestedAt time.Time `avro:"requested_at" json:"requested_at"`
	Reason      *string   `avro:"reason" json:"reason"`
}

// Forget statuses (hygiene.v1.ForgetStatus).
const (
	StatusForgotten        = "FORGOTTEN"
	StatusUnknownSubject   = "UNKNOWN_SUBJECT"
	StatusAlreadyForgotten = "ALREADY_FORGOTTEN"
)

// ForgetConfirmation mirrors hygiene.v1.ForgetConfirmation, the value of
// subjects.forgotten.
type ForgetConfirmation struct {
	RequestID   string    `avro:"request_id" json:"request_id"`
	SubjectID   string    `avro:"subject_id" json:"subject_id"`
	Status      string    `avro:"status" json:"status"`
	RequestedAt time.Time `avro:"requested_at" json:"requested_at"`
	CompletedAt time.Time `avro:"completed_at" json:"completed_at"`
	Systems     []string  `avro:"systems" json:"systems"`
}

// MarshalOrderEvent encodes e as bare Avro binary with the bundled schema.
func MarshalOrderEvent(e *OrderEvent) ([]byte, error) { return avro.Marshal(OrderEventSchema(), e) }

// UnmarshalOrderEvent decodes bare Avro binary written with the bundled
// schema, with work bounded by len(b); trailing bytes are an error.
func UnmarshalOrderEvent(b []byte) (*OrderEvent, error) {
	var e OrderEvent
	if err := unmarshal(0, b, &e); err != nil {
		return nil, err
	}
	return &e, nil
}

// MarshalForgetRequest encodes r as bare Avro binary with the bundled schema.
func MarshalForgetRequest(r *ForgetRequest) ([]byte, error) {
	return avro.Marshal(ForgetRequestSchema(), r)
}

// MarshalForgetConfirmation encodes c as bare Avro binary with the bundled schema.
func MarshalForgetConfirmation(c *ForgetConfirmation) ([]byte, error) {
	return avro.Marshal(ForgetConfirmationSchema(), c)
}

// UnmarshalForgetConfirmation decodes bare Avro binary written with the
// bundled schema, with work bounded by len(b); trailing bytes are an error.
func UnmarshalForgetConfirmation(b []byte) (*ForgetConfirmation, error) {
	var c ForgetConfirmation
	if err := unmarshal(2, b, &c); err != nil {
		return nil, err
	}
	return &c, nil
}

// UnmarshalForgetRequest strictly decodes bare Avro binary written with the
// bundled schema, with work bounded by len(b): truncated input, trailing
// bytes and non-canonical encodings are errors. (A ForgetRequest has no arrays or maps, so its
// binary encoding is canonical and re-encoding must give the input back.)
func UnmarshalForgetRequest(b []byte) (*ForgetRequest, error) {
	var r ForgetRequest
	if err := unmarshal(1, b, &r); err != nil {
		return nil, err
	}
	again, err := avro.Marshal(ForgetRequestSchema(), &r)
	if err != nil || !bytes.Equal(again, b) {
		return nil, errors.New("forget request: not a canonical hygiene.v1.ForgetRequest encoding")
	}
	return &r, nil
}
