package schema_test

import (
	"encoding/binary"
	"math"
	"testing"
	"time"

	"github.com/hygiene/pseudonymizer/schema"
)

type enc []byte

func (e enc) long(v int64) enc { return binary.AppendUvarint(e, uint64(v<<1)^uint64(v>>63)) }

func (e enc) str(s string) enc { return append(e.long(int64(len(s))), s...) }

// The Unmarshal functions validate before hamba decodes: a confirmation
// whose systems array starts with a block of count MinInt64 (hamba: a
// negative slice length, then a fatal SIGSEGV on the next block), a
// request announcing a long string in a few bytes (hamba: allocates it),
// an order with trailing bytes.
func TestUnmarshalRefusesHostileInput(t *testing.T) {
	ms := time.UnixMilli(1_760_000_000_000).UnixMilli()
	conf := enc{}.str("r-1").str("cust-42").long(0).long(ms).long(ms).
		long(math.MinInt64).long(0).long(2).str("meta").str("crm").long(0)
	if _, err := schema.UnmarshalForgetConfirmation(conf); err == nil {
		t.Error("confirmation with a MinInt64 block count accepted")
	}
	if _, err := schema.UnmarshalForgetRequest(enc{}.long(1<<20 - 1).str("x")); err == nil {
		t.Error("request with a string longer than the input accepted")
	}
	bare, err := schema.MarshalOrderEvent(&schema.OrderEvent{EventID: "e", EventType: schema.Placed, OrderID: "o", CustomerID: "c", Currency: "EUR"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := schema.UnmarshalOrderEvent(append(bare, 0)); err == nil {
		t.Error("order with a trailing byte accepted")
	}
	// The valid encodings still decode.
	good := enc{}.str("r-1").str("cust-42").long(0).long(ms).long(ms).long(-2).long(9).str("meta").str("crm").long(0)
	c, err := schema.UnmarshalForgetConfirmation(good)
	if err != nil || len(c.Systems) != 2 || c.Systems[1] != "crm" {
		t.Fatalf("valid confirmation: %+v, %v", c, err)
	}
	if _, err := schema.UnmarshalOrderEvent(bare); err != nil {
		t.Fatal(err)
	}
}
