package pseudonym

import (
	"bytes"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"regexp"
	"testing"
)

// reference computes a pseudonym with crypto/hmac, independently of Deriver.
func reference(key []byte, system, field, value string) string {
	m := hmac.New(sha256.New, key)
	m.Write([]byte("pseudonymizer/v1\x00" + system + "\x00" + field + "\x00" + value))
	s := m.Sum(nil)[:16]
	s[6] = s[6]&0x0f | 0x80
	s[8] = s[8]&0x3f | 0x80
	h := hex.EncodeToString(s)
	return h[0:8] + "-" + h[8:12] + "-" + h[12:16] + "-" + h[16:20] + "-" + h[20:32]
}

func testKey(b byte) []byte { return bytes.Repeat([]byte{b}, 32) }

var uuidV8 = regexp.MustCompile(`^[0-9a-f]{8}-[0-9a-f]{4}-8[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$`)

func TestKnownAnswer(t *testing.T) {
	key := make([]byte, 32)
	for i := range key {
		key[i] = byte(i)
	}
	d := NewDeriver()
	tests := []struct {
		key                  []byte
		system, field, value string
	}{
		{key, "meta", "customer_id", "c-1"},
		{key, "google-analytics", "customer_id", "c-1"},
		{key, "meta", "order_id", ""},
		{key, "meta", "attributes.gclid", "ünïcödé ✓"},
		{testKey(7), "meta", "customer_id", "c-1"},
		{bytes.Repeat([]byte{9}, 100), "x", "y", "long key"}, // > block size: hashed first
		{nil, "x", "y", "empty key"},
		{key, "s", "f", string(bytes.Repeat([]byte("v"), 1000))},
	}
	for _, tt := range tests {
		want := reference(tt.key, tt.system, tt.field, tt.value)
		if got := d.String(tt.key, tt.system, tt.field, tt.value); got != want {
			t.Errorf("String(%x, %q, %q, %q) = %s, want %s", tt.key, tt.system, tt.field, tt.value, got, want)
		}
	}
	// A fixed vector, so that an accidental change of the derivation (which
	// would unlink every pseudonym ever published) fails loudly. Computed
	// independently with Python's hmac module.
	const fixed = "f6cac62e-a836-8126-9a9c-34788a94ad08"
	if got := d.String(key, "meta", "customer_id", "c-1"); got != fixed {
		t.Errorf("fixed vector = %s, want %s", got, fixed)
	}
}

func TestDistinctAndStable(t *testing.T) {
	d := NewDeriver()
	k1, k2 := testKey(1), testKey(2)
	base := d.String(k1, "meta", "customer_id", "c-1")
	for _, tc := range []struct {
		name string
		got  string
	}{
		{"other system", d.String(k1, "google-analytics", "customer_id", "c-1")},
		{"other field", d.String(k1, "meta", "order_id", "c-1")},
		{"other key", d.String(k2, "meta", "customer_id", "c-1")},
		{"other value", d.String(k1, "meta", "customer_id", "c-2")},
		{"shifted separator", d.String(k1, "meta\x00customer_id", "", "c-1")},
	} {
		if tc.got == base {
			t.Errorf("%s: pseudonym equals the base one", tc.name)
		}
	}
	// Stable across key switches and fresh Derivers.
	if got := NewDeriver().String(k1, "meta", "customer_id", "c-1"); got != base {
		t.Errorf("fresh deriver: %s, want %s", got, base)
	}
	if got := d.String(k1, "meta", "customer_id", "c-1"); got != base {
		t.Errorf("after key switch: %s, want %s", got, base)
	}
	d.Reset()
	if got := d.String(k1, "meta", "customer_id", "c-1"); got != base {
		t.Errorf("after Reset: %s, want %s", got, base)
	}
}

func TestFormat(t *testing.T) {
	d := NewDeriver()
	for i := range 1000 {
		s := d.String(testKey(byte(i)), "sys", "f", fmt.Sprint(i))
		if len(s) != Size || !uuidV8.MatchString(s) {
			t.Fatalf("pseudonym %q is not a lowercase v8 UUID", s)
		}
	}
}

func TestAppendInt(t *testing.T) {
	d := NewDeriver()
	k := testKey(3)
	for _, v := range []int64{0, 42, -7, 1<<63 - 1, -1 << 63} {
		got := string(d.AppendInt(nil, k, "s", "total_minor", v))
		want := reference(k, "s", "total_minor", fmt.Sprint(v))
		if got != want {
			t.Errorf("AppendInt(%d) = %s, want %s", v, got, want)
		}
	}
}

func TestAppendKeepsPrefix(t *testing.T) {
	d := NewDeriver()
	got := d.Append([]byte("prefix:"), testKey(1), "s", "f", []byte("v"))
	want := "prefix:" + reference(testKey(1), "s", "f", "v")
	if string(got) != want {
		t.Errorf("Append = %q, want %q", got, want)
	}
}

func TestZeroAllocs(t *testing.T) {
	if raceEnabled {
		t.Skip("the race detector allocates; allocations are asserted without -race")
	}
	d := NewDeriver()
	k1, k2 := testKey(1), testKey(2)
	dst := make([]byte, 0, 64)
	v := []byte("customer-123")
	d.Append(dst, k1, "meta", "customer_id", v) // warm up
	if n := testing.AllocsPerRun(100, func() {
		d.Append(dst, k1, "meta", "customer_id", v)
	}); n != 0 {
		t.Errorf("Append with cached key: %v allocs, want 0", n)
	}
	if n := testing.AllocsPerRun(100, func() {
		d.Append(dst, k1, "meta", "customer_id", v)
		d.Append(dst, k2, "meta", "customer_id", v)
		d.AppendInt(dst, k2, "meta", "total_minor", 12345)
	}); n != 0 {
		t.Errorf("Append with key switches: %v allocs, want 0", n)
	}
}

func FuzzAppend(f *testing.F) {
	f.Add([]byte("k"), "meta", []byte("c-1"))
	d := NewDeriver()
	f.Fuzz(func(t *testing.T, key []byte, system string, value []byte) {
		got := string(d.Append(nil, key, system, "f", value))
		if want := reference(key, system, "f", string(value)); got != want {
			t.Fatalf("got %s, want %s", got, want)
		}
	})
}

func BenchmarkAppend(b *testing.B) {
	d := NewDeriver()
	dst := make([]byte, 0, 64)
	v := []byte("8d3c2f0e-8a7b-4c1d-9e2f-123456789abc")
	b.Run("same-key", func(b *testing.B) {
		k := testKey(1)
		b.ReportAllocs()
		for b.Loop() {
			dst = d.Append(dst[:0], k, "google-analytics", "customer_id", v)
		}
	})
	b.Run("new-key", func(b *testing.B) {
		k1, k2 := testKey(1), testKey(2)
		b.ReportAllocs()
		i := 0
		for b.Loop() {
			k := k1
			if i&1 == 1 {
				k = k2
			}
			i++
			dst = d.Append(dst[:0], k, "google-analytics", "customer_id", v)
		}
	})
	b.Run("crypto-hmac", func(b *testing.B) {
		k := testKey(1)
		b.ReportAllocs()
		for b.Loop() {
			m := hmac.New(sha256.New, k)
			m.Write([]byte("pseudonymizer/v1\x00google-analytics\x00customer_id\x00"))
			m.Write(v)
			dst = m.Sum(dst[:0])
		}
	})
}
