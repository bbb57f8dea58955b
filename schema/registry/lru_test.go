package registry

import (
	"testing"
	"time"
)

// TestNotFoundCacheBounded (issue 24, item 2): the IDs remembered as
// unknown are bounded (the old map kept every one for good, 51 bytes
// each), the least recently asked go first, and an entry expires after
// its TTL.
func TestNotFoundCacheBounded(t *testing.T) {
	r := newResolver(nil, nil)
	now := time.Unix(1_000_000, 0)
	r.now = func() time.Time { return now }
	for id := range maxNotFound + 1000 {
		r.notFound.put(id, now.Add(notFoundTTL))
		if id == maxNotFound-1 {
			r.notFound.live(0, now) // 0 is used: it stays
		}
	}
	if n := r.notFound.len(); n != maxNotFound {
		t.Fatalf("%d IDs remembered, want the bound %d", n, maxNotFound)
	}
	if !r.known(0) || r.known(1) || !r.known(maxNotFound+999) {
		t.Errorf("the least recently used IDs were not the ones dropped")
	}
	now = now.Add(notFoundTTL)
	if r.known(maxNotFound + 999) {
		t.Errorf("an entry outlived its TTL")
	}
}

// TestNotFoundOutlivesRetry: a "not found" outlives the longest batch
// deadline (transaction timeout, at most 15s) plus the default backoff cap
// (30s), so that a redone batch finds what its first attempt learnt.
func TestNotFoundOutlivesRetry(t *testing.T) {
	if notFoundTTL <= 15*time.Second+30*time.Second {
		t.Fatalf("notFoundTTL %s does not outlive a batch's deadline plus backoff", notFoundTTL)
	}
}
