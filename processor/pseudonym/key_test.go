package pseudonym

import (
	"bytes"
	"encoding/hex"
	"fmt"
	"math/rand/v2"
	"testing"
)

// TestAppendKey checks prepared keys against crypto/hmac for keys and
// values of every length around the block boundaries.
func TestAppendKey(t *testing.T) {
	d := NewDeriver()
	for _, kl := range []int{0, 1, 31, 32, 63, 64, 65, 100} {
		key := bytes.Repeat([]byte{byte(kl + 1)}, kl)
		k := d.Prepare(key)
		for vl := 0; vl <= 200; vl++ {
			v := bytes.Repeat([]byte{'a' + byte(vl%26)}, vl)
			want := reference(key, "google-analytics", "event_id", string(v))
			if got := string(d.AppendKey(nil, &k, "google-analytics", "event_id", v)); got != want {
				t.Fatalf("key %d value %d: AppendKey = %s, want %s", kl, vl, got, want)
			}
			if got := string(d.Append([]byte("p"), key, "google-analytics", "event_id", v)); got != "p"+want {
				t.Fatalf("key %d value %d: Append = %s, want %s", kl, vl, got, want)
			}
		}
		for _, n := range []int64{0, -1, 1 << 40} {
			want := reference(key, "meta", "total_minor", fmt.Sprint(n))
			if got := string(d.AppendIntKey(nil, &k, "meta", "total_minor", n)); got != want {
				t.Fatalf("AppendIntKey(%d) = %s, want %s", n, got, want)
			}
		}
	}
}

func TestAppendKeyZeroAllocs(t *testing.T) {
	if raceEnabled {
		t.Skip("the race detector allocates; allocations are asserted without -race")
	}
	d := NewDeriver()
	k1, k2 := d.Prepare(testKey(1)), d.Prepare(testKey(2))
	raw := testKey(3)
	dst := make([]byte, 0, 64)
	v := []byte("customer-123")
	d.AppendKey(dst, &k1, "meta", "customer_id", v) // warm up
	if n := testing.AllocsPerRun(100, func() {
		d.AppendKey(dst, &k1, "meta", "customer_id", v)
		d.AppendKey(dst, &k2, "meta", "customer_id", v)
		d.AppendIntKey(dst, &k2, "meta", "total_minor", 12345)
		_ = d.Prepare(raw)
	}); n != 0 {
		t.Errorf("AppendKey: %v allocs, want 0", n)
	}
}

func BenchmarkAppendKey(b *testing.B) {
	d := NewDeriver()
	dst := make([]byte, 0, 64)
	v := []byte("8d3c2f0e-8a7b-4c1d-9e2f-123456789abc")
	k1, k2 := d.Prepare(testKey(1)), d.Prepare(testKey(2))
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		k := &k1
		if i&1 == 1 {
			k = &k2
		}
		i++
		dst = d.AppendKey(dst[:0], k, "google-analytics", "customer_id", v)
	}
}

// TestUUIDAppend checks the SWAR formatting against encoding/hex, over
// every nibble value in every position and random bytes.
func TestUUIDAppend(t *testing.T) {
	check := func(u UUID) {
		t.Helper()
		h := hex.EncodeToString(u[:])
		want := h[0:8] + "-" + h[8:12] + "-" + h[12:16] + "-" + h[16:20] + "-" + h[20:32]
		if got := string(u.Append([]byte("x"))[1:]); got != want {
			t.Fatalf("Append(%x) = %s, want %s", u[:], got, want)
		}
	}
	for b := range 256 {
		var u UUID
		for i := range u {
			u[i] = byte(b + i)
		}
		check(u)
	}
	r := rand.New(rand.NewPCG(1, 2))
	for range 10000 {
		var u UUID
		for i := range u {
			u[i] = byte(r.Uint32())
		}
		check(u)
	}
}

// TestSumKey: SumKey is AppendKey in binary form.
func TestSumKey(t *testing.T) {
	d := NewDeriver()
	k := d.Prepare(testKey(3))
	u := d.SumKey(&k, "meta", "customer_id", []byte("c-1"))
	if got, want := string(u.Append(nil)), reference(testKey(3), "meta", "customer_id", "c-1"); got != want {
		t.Errorf("SumKey = %s, want %s", got, want)
	}
}
