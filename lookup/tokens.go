package lookup

import (
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"runtime"
	"strings"
	"sync"
	"time"

	"go.yaml.in/yaml/v3"
)

// Token is one entry of lookup.tokens_file: a caller of the API.
type Token struct {
	// Name identifies the caller in metrics and logs: 1-64 characters of
	// [A-Za-z0-9._-].
	Name string `yaml:"name"`
	// SHA256 is the hex SHA-256 of the bearer token; the token itself is
	// never stored.
	SHA256 string `yaml:"sha256"`
	// Systems lists the systems the token may ask for.
	Systems []string `yaml:"systems"`
	// Rate is the most requests per second the token may make (a token
	// bucket with a burst of one second's worth).
	Rate float64 `yaml:"rate"`
}

// ErrTokensFileReadable is returned for a tokens file that group or others
// may read.
var ErrTokensFileReadable = errors.New("the tokens file is readable by group or others")

// LoadTokens reads and checks a tokens file; it refuses a file whose mode
// grants any access to group or others (as the KEK file), checked on the
// opened file.
func LoadTokens(path string) ([]Token, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("lookup.tokens_file: %w", err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("lookup.tokens_file: %w", err)
	}
	if !fi.Mode().IsRegular() {
		return nil, fmt.Errorf("lookup.tokens_file: %s is not a regular file", path)
	}
	if perm := fi.Mode().Perm(); perm&0o077 != 0 && runtime.GOOS != "windows" {
		return nil, fmt.Errorf("lookup.tokens_file: %s has mode %04o: %w; run chmod 600 %s", path, perm, ErrTokensFileReadable, path)
	}
	b, err := io.ReadAll(io.LimitReader(f, 4<<20))
	if err != nil {
		return nil, fmt.Errorf("lookup.tokens_file: %w", err)
	}
	toks, err := ParseTokens(b)
	if err != nil {
		return nil, fmt.Errorf("lookup.tokens_file %s: %w", path, err)
	}
	return toks, nil
}

// ParseTokens parses and checks the YAML list of a tokens file. Errors
// name the entry by index and name, never a hash.
func ParseTokens(b []byte) ([]Token, error) {
	var toks []Token
	dec := yaml.NewDecoder(bytes.NewReader(b))
	dec.KnownFields(true)
	if err := dec.Decode(&toks); err != nil && !errors.Is(err, io.EOF) {
		return nil, fmt.Errorf("parse: %w", err)
	}
	names := map[string]bool{}
	hashes := map[string]bool{}
	for i := range toks {
		t := &toks[i]
		if err := checkName(t.Name); err != nil {
			return nil, fmt.Errorf("entry %d: %w", i, err)
		}
		if names[t.Name] {
			return nil, fmt.Errorf("entry %d (%s): name listed twice", i, t.Name)
		}
		names[t.Name] = true
		h, err := hex.DecodeString(t.SHA256)
		if err != nil || len(h) != sha256.Size {
			return nil, fmt.Errorf("entry %d (%s): sha256 must be 64 hex digits", i, t.Name)
		}
		t.SHA256 = strings.ToLower(t.SHA256)
		if hashes[t.SHA256] {
			return nil, fmt.Errorf("entry %d (%s): the same token as another entry", i, t.Name)
		}
		hashes[t.SHA256] = true
		if len(t.Systems) == 0 {
			return nil, fmt.Errorf("entry %d (%s): systems must list at least one system", i, t.Name)
		}
		if !(t.Rate > 0) || math.IsInf(t.Rate, 0) {
			return nil, fmt.Errorf("entry %d (%s): rate must be a number of requests per second above 0", i, t.Name)
		}
	}
	return toks, nil
}

func checkName(name string) error {
	if name == "" || len(name) > 64 {
		return errors.New("name must be 1-64 characters")
	}
	for i := 0; i < len(name); i++ {
		c := name[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '.' || c == '_' || c == '-') {
			return errors.New("name may only contain A-Z a-z 0-9 . _ -")
		}
	}
	return nil
}

// TokenPrefix starts every token NewToken makes, so that a leaked one is
// recognisable (secret scanners, logs).
const TokenPrefix = "pzl_"

// NewToken returns a fresh random bearer token (256 bits from crypto/rand)
// and the hex SHA-256 that goes in the tokens file.
func NewToken() (token, sha string, err error) {
	var b [32]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", "", fmt.Errorf("lookup token: %w", err)
	}
	token = TokenPrefix + base64.RawURLEncoding.EncodeToString(b[:])
	sum := sha256.Sum256([]byte(token))
	return token, hex.EncodeToString(sum[:]), nil
}

// caller is a loaded token: its hash, the systems it may see (indices in
// the Plan) and its rate limiter.
type caller struct {
	name    string
	sum     [sha256.Size]byte
	systems []bool
	served  []lazyCounter // per system: its 200s (pseudonymizer_lookup_requests_total)
	bucket  bucket
}

// authenticate returns the caller whose token hashes to sum, comparing
// with every token in constant time (no early exit), or nil.
func authenticate(callers []*caller, token string) *caller {
	sum := sha256.Sum256([]byte(token))
	var found *caller
	for _, c := range callers {
		if subtle.ConstantTimeCompare(sum[:], c.sum[:]) == 1 {
			found = c
		}
	}
	return found
}

// bucket is a token bucket: rate tokens per second, at most burst.
type bucket struct {
	mu     sync.Mutex
	rate   float64
	burst  float64
	tokens float64
	last   time.Time
}

func newBucket(rate float64) bucket {
	burst := math.Max(1, rate)
	return bucket{rate: rate, burst: burst, tokens: burst}
}

// take takes one token at now, or returns how long until one is there.
func (b *bucket) take(now time.Time) (ok bool, wait time.Duration) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if !b.last.IsZero() {
		b.tokens = math.Min(b.burst, b.tokens+now.Sub(b.last).Seconds()*b.rate)
	}
	b.last = now
	if b.tokens >= 1 {
		b.tokens--
		return true, 0
	}
	return false, time.Duration((1 - b.tokens) / b.rate * float64(time.Second))
}
