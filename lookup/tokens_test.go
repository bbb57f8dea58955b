package lookup_test

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hygiene/pseudonymizer/lookup"
)

func TestParseTokens(t *testing.T) {
	sum := strings.Repeat("ab", 32)
	for _, tc := range []struct{ yaml, err string }{
		{"- {name: shop, sha256: " + sum + ", systems: [meta], rate: 10}", ""},
		{"[]", ""},
		{"- {name: '', sha256: " + sum + ", systems: [meta], rate: 10}", "name must be"},
		{"- {name: 'a b', sha256: " + sum + ", systems: [meta], rate: 10}", "name may only"},
		{"- {name: a, sha256: abc, systems: [meta], rate: 10}", "64 hex digits"},
		{"- {name: a, sha256: " + sum + ", systems: [], rate: 10}", "at least one system"},
		{"- {name: a, sha256: " + sum + ", systems: [meta], rate: 0}", "rate must be"},
		{"- {name: a, sha256: " + sum + ", systems: [meta], rate: 1, token: x}", "field token not found"},
		{"- {name: a, sha256: " + sum + ", systems: [meta], rate: 1}\n- {name: a, sha256: " + strings.Repeat("cd", 32) + ", systems: [meta], rate: 1}", "listed twice"},
		{"- {name: a, sha256: " + sum + ", systems: [meta], rate: 1}\n- {name: b, sha256: " + strings.ToUpper(sum) + ", systems: [meta], rate: 1}", "same token"},
	} {
		_, err := lookup.ParseTokens([]byte(tc.yaml))
		switch {
		case tc.err == "" && err != nil:
			t.Errorf("%s: %v", tc.yaml, err)
		case tc.err != "" && (err == nil || !strings.Contains(err.Error(), tc.err)):
			t.Errorf("%s: error %v, want %q", tc.yaml, err, tc.err)
		case err != nil && strings.Contains(err.Error(), sum):
			t.Errorf("error %v names a hash", err)
		}
	}
}

func TestLoadTokensMode(t *testing.T) {
	path := filepath.Join(t.TempDir(), "tokens.yaml")
	if err := os.WriteFile(path, []byte("- {name: shop, sha256: "+strings.Repeat("ab", 32)+", systems: [meta], rate: 10}\n"), 0o640); err != nil {
		t.Fatal(err)
	}
	if _, err := lookup.LoadTokens(path); !errors.Is(err, lookup.ErrTokensFileReadable) {
		t.Fatalf("a group-readable tokens file: %v, want ErrTokensFileReadable", err)
	}
	if err := os.Chmod(path, 0o600); err != nil {
		t.Fatal(err)
	}
	toks, err := lookup.LoadTokens(path)
	if err != nil || len(toks) != 1 || toks[0].Name != "shop" {
		t.Fatalf("LoadTokens: %v %+v", err, toks)
	}
}

func TestNewToken(t *testing.T) {
	tok, sum, err := lookup.NewToken()
	if err != nil {
		t.Fatal(err)
	}
	h := sha256.Sum256([]byte(tok))
	if !strings.HasPrefix(tok, lookup.TokenPrefix) || len(tok) < 40 || hex.EncodeToString(h[:]) != sum {
		t.Errorf("token %d bytes, sha256 %s", len(tok), sum)
	}
	tok2, _, _ := lookup.NewToken()
	if tok2 == tok {
		t.Errorf("two tokens are equal")
	}
}

// TestRateLimit: a token gets its rate (a burst of one second's worth),
// refilled with time; another token is not affected.
func TestRateLimit(t *testing.T) {
	var mu sync.Mutex
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	clock := func() time.Time { mu.Lock(); defer mu.Unlock(); return now }
	advance := func(d time.Duration) { mu.Lock(); now = now.Add(d); mu.Unlock() }
	w := newWorld(t, "embedded", false, false, func(c *lookup.Config) {
		c.Now = clock
		c.Tokens = []lookup.Token{tokenEntry("two", "pzl_two", 2, "meta"), tokenEntry("other", "pzl_other", 1, "meta")}
	})
	req := lookupReq{CustomerID: "c", OccurredAt: "2026-01-01T00:00:00Z", Systems: []string{"meta"}}
	codes := func(token string, n int) []int {
		var out []int
		for range n {
			code, _, _ := post(t, w.url, token, req)
			out = append(out, code)
		}
		return out
	}
	if got := codes("pzl_two", 3); got[0] != 200 || got[1] != 200 || got[2] != http.StatusTooManyRequests {
		t.Fatalf("a burst of 3 at rate 2: %v, want 200 200 429", got)
	}
	if got := codes("pzl_other", 1); got[0] != 200 {
		t.Fatalf("another token: %v, want 200", got)
	}
	advance(500 * time.Millisecond)
	if got := codes("pzl_two", 2); got[0] != 200 || got[1] != http.StatusTooManyRequests {
		t.Fatalf("after half a second at rate 2: %v, want 200 429", got)
	}
}
