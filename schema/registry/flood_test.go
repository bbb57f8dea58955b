package registry_test

import (
	"context"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hygiene/pseudonymizer/schema"
)

// TestUnknownIDFlood (issue 24, item 2): a batch of 10,000 five-byte
// records with distinct unknown schema IDs, and three valid orders of a
// writer schema that is not cached yet, the first after the flood. The
// batch's lookups are deduplicated, capped at 64 and run in parallel (at
// most 8 in flight): the valid orders decode, every other record is a
// schema error, and the registry sees at most 64 requests (the old code
// looked up every ID in turn, 10,001 requests, which at 5ms each outlasted
// the batch's deadline on every retry). A redone batch asks only for IDs
// it has not asked before.
func TestUnknownIDFlood(t *testing.T) {
	w := newWorld(t, nil)
	wire := w.start(t)
	id := w.registerWriter(t, evolve(t, withExtra))
	var (
		mu          sync.Mutex
		inFlight    int
		maxInFlight int
		two         = make(chan struct{})
	)
	w.fake.Intercept(func(_ http.ResponseWriter, r *http.Request) bool {
		if !strings.HasPrefix(r.URL.Path, "/schemas/ids/") {
			return false
		}
		mu.Lock()
		inFlight++
		if inFlight > maxInFlight {
			maxInFlight = inFlight
			if maxInFlight == 2 {
				close(two)
			}
		}
		mu.Unlock()
		// Hold the first request until a second one is in flight (or a
		// while has passed), so that parallel lookups show.
		select {
		case <-two:
		case <-time.After(5 * time.Second):
		}
		mu.Lock()
		inFlight--
		mu.Unlock()
		return false
	})
	valid := encodeAs(t, evolve(t, withExtra), sampleEvent(), map[string]any{"channel": "web"}, nil)
	var values [][]byte
	for i := range 10_000 {
		values = append(values, frame(1_000_000+i, nil))
		if i == 9_999 || i == 5_000 || i == 7_000 {
			values = append(values, frame(id, valid))
		}
	}
	ctx := context.Background()
	if err := wire.PrefetchOrders(ctx, values); err != nil {
		t.Fatal(err)
	}
	good, bad := 0, 0
	for _, v := range values {
		if _, err := wire.Order(ctx, v); err == nil {
			good++
		} else {
			wantClass(t, err, schema.ClassSchema)
			bad++
		}
	}
	if good != 3 || bad != 10_000 {
		t.Fatalf("%d orders decoded and %d schema errors, want 3 and 10,000", good, bad)
	}
	if n := w.requests.Load(); n > 64 {
		t.Fatalf("%d registry requests for one batch, want at most 64", n)
	}
	mu.Lock()
	if maxInFlight > 8 || maxInFlight < 2 {
		t.Errorf("at most %d lookups in flight, want 2 to 8", maxInFlight)
	}
	mu.Unlock()
	// The batch redone: the answers are cached, only new IDs are asked.
	before := w.requests.Load()
	if err := wire.PrefetchOrders(ctx, values); err != nil {
		t.Fatal(err)
	}
	if n := w.requests.Load() - before; n > 64 {
		t.Fatalf("%d registry requests for the redone batch, want at most 64", n)
	}
	if _, err := wire.Order(ctx, frame(1_000_000, nil)); err == nil || !strings.Contains(err.Error(), "not in the registry") {
		t.Errorf("an ID looked up in the first attempt: %v, want the cached not found", err)
	}
}
