package lookup_test

import (
	"context"
	"errors"
	"net/http"
	"testing"

	"github.com/hygiene/pseudonymizer/lookup"
)

// screenFunc is a Screener from a function.
type screenFunc func(ctx context.Context, asks []lookup.Ask) ([]string, error)

func (f screenFunc) Screen(ctx context.Context, asks []lookup.Ask) ([]string, error) {
	return f(ctx, asks)
}

// TestScreener: the objections hook refuses an answer with 410 and its
// status, sees the systems asked for and the subject's hash (never the raw
// ID), and a failing screen answers 503.
func TestScreener(t *testing.T) {
	var fail bool
	var seen []lookup.Ask
	w := newWorld(t, "embedded", false, false, func(c *lookup.Config) {
		c.Screener = screenFunc(func(_ context.Context, asks []lookup.Ask) ([]string, error) {
			if fail {
				return nil, errors.New("objections unavailable")
			}
			seen = append(seen, asks...)
			out := make([]string, len(asks))
			for i, a := range asks {
				for _, s := range a.Systems {
					if s == "tiktok" {
						out[i] = "objected"
					}
				}
			}
			return out, nil
		})
	})
	body := func(systems ...string) lookupReq { return lookupReq{CustomerID: "c-1", Systems: systems} }
	if code, _, _ := post(t, w.url, allToken, body("meta")); code != http.StatusOK {
		t.Errorf("not objected: %d, want 200", code)
	}
	if code, b, _ := post(t, w.url, allToken, body("meta", "tiktok")); code != http.StatusGone || string(b) != "{\"status\":\"objected\"}\n" {
		t.Errorf("objected: %d %s, want 410 objected", code, b)
	}
	if len(seen) != 2 || len(seen[1].Systems) != 2 || seen[1].Subject != w.st.Hash("c-1") {
		t.Errorf("the screen saw %+v", seen)
	}
	fail = true
	if code, _, hdr := post(t, w.url, allToken, body("meta")); code != http.StatusServiceUnavailable || hdr.Get("Retry-After") == "" {
		t.Errorf("failing screen: %d, want 503 with Retry-After", code)
	}
}
