package pseudonym

import (
	"encoding/binary"
	"math/rand/v2"
	"os"
	"runtime"
	"strings"
	"testing"
)

// TestCompressPaths checks that the assembly compression (where this CPU
// has it) and the crypto/sha256 one agree, over random chaining values and
// one to four blocks.
func TestCompressPaths(t *testing.T) {
	if !haveSHANI {
		t.Skip("no SHA extensions on this CPU: only the crypto/sha256 path runs")
	}
	r := rand.New(rand.NewPCG(1, 2))
	d := NewDeriver()
	for i := range 2000 {
		var h [8]uint32
		for j := range h {
			h[j] = r.Uint32()
		}
		p := make([]byte, 64*(1+i%4))
		for j := 0; j < len(p); j += 8 {
			binary.LittleEndian.PutUint64(p[j:], r.Uint64())
		}
		fast, std := h, h
		if !blockFast(&fast, p) {
			t.Fatal("blockFast did nothing although haveSHANI")
		}
		d.compressStd(&std, p)
		if fast != std {
			t.Fatalf("case %d: SHA-NI %x, crypto/sha256 %x", i, fast, std)
		}
	}
}

// FuzzCompressPaths is TestCompressPaths over fuzzed blocks.
func FuzzCompressPaths(f *testing.F) {
	f.Add(uint32(0x6a09e667), make([]byte, 64))
	f.Add(uint32(1), []byte(strings.Repeat("pseudonymizer/v1\x00", 8)))
	d := NewDeriver()
	f.Fuzz(func(t *testing.T, seed uint32, p []byte) {
		if !haveSHANI {
			t.Skip("no SHA extensions on this CPU")
		}
		p = p[:len(p)&^63]
		var h [8]uint32
		for j := range h {
			h[j] = seed * uint32(j+1)
		}
		fast, std := h, h
		blockFast(&fast, p)
		d.compressStd(&std, p)
		if fast != std {
			t.Fatalf("SHA-NI %x, crypto/sha256 %x", fast, std)
		}
	})
}

// TestSHANIDetected checks the CPU feature detection against what Linux
// reports, so that a broken detection cannot silently fall back to the
// slower path (or pick an instruction the CPU lacks).
func TestSHANIDetected(t *testing.T) {
	if runtime.GOOS != "linux" || !shaniBuilt {
		t.Skip("reads /proc/cpuinfo of linux/amd64, for builds with the assembly")
	}
	info, err := os.ReadFile("/proc/cpuinfo")
	if err != nil {
		t.Skipf("cpuinfo: %v", err)
	}
	var flags []string
	for line := range strings.SplitSeq(string(info), "\n") {
		if name, value, ok := strings.Cut(line, ":"); ok && strings.TrimSpace(name) == "flags" {
			flags = strings.Fields(value)
			break
		}
	}
	has := func(f string) bool {
		for _, g := range flags {
			if g == f {
				return true
			}
		}
		return false
	}
	want := has("sha_ni") && has("avx") && has("sse4_1") && has("ssse3")
	if haveSHANI != want {
		t.Fatalf("haveSHANI = %v, /proc/cpuinfo says %v", haveSHANI, want)
	}
}
