package lookup

import (
	"fmt"
	"runtime"
	"strings"
	"testing"

	"github.com/hygiene/pseudonymizer/processor"
	"github.com/hygiene/pseudonymizer/store"
)

// TestCacheKeepsNoRawIDs: the lookup cache is keyed by a keyed digest of
// the customer ID, so 2,000 cached customers with 4,096-byte IDs take
// about the same heap as with short ones (with the IDs as keys: 8 MiB),
// and a cached customer is still found by its ID.
func TestCacheKeepsNoRawIDs(t *testing.T) {
	const n, size = 2000, processor.MaxIDBytes
	id := func(i int) string { return fmt.Sprintf("%0*d", size, i) }
	c := newCache(n)
	runtime.GC()
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	for i := range n {
		var h store.SubjectHash
		h[0], h[1] = byte(i), byte(i>>8)
		c.put(&subject{id: c.ids.digest(id(i)), hash: h})
	}
	runtime.GC()
	runtime.ReadMemStats(&after)
	if grew := int64(after.HeapAlloc) - int64(before.HeapAlloc); grew > n*size/4 {
		t.Errorf("the cache grew the heap by %d B for %d customers with %d-byte IDs: it keeps the IDs", grew, n, size)
	}
	k := 1234
	if s, ok := c.get(id(k)); !ok || s.hash[0] != byte(k) || s.hash[1] != byte(k>>8) {
		t.Errorf("customer 1234 not found by its ID")
	}
	if _, ok := c.get(strings.Repeat("x", size)); ok {
		t.Errorf("an unknown ID was found")
	}
	runtime.KeepAlive(c)
}
