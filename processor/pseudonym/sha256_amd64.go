//go:build !purego

package pseudonym

import "golang.org/x/sys/cpu"

// shaniBuilt reports whether this build has the assembly path.
const shaniBuilt = true

// haveSHANI reports whether this CPU has the SHA extensions and what else
// blockSHANI uses (AVX with the operating system's support for it, SSE4.1,
// SSSE3), as crypto/sha256 decides for itself.
var haveSHANI = func() bool {
	if !cpu.X86.HasAVX || !cpu.X86.HasSSE41 || !cpu.X86.HasSSSE3 {
		return false
	}
	if maxLeaf, _, _, _ := cpuid(0, 0); maxLeaf < 7 {
		return false
	}
	_, ebx, _, _ := cpuid(7, 0)
	return ebx&(1<<29) != 0 // CPUID.(EAX=7,ECX=0):EBX.SHA
}()

// blockSHANI runs the SHA-256 compression function over the 64-byte blocks
// of p, updating the chaining value h, with the SHA extensions.
//
//go:noescape
func blockSHANI(h *[8]uint32, p []byte)

// cpuid executes the CPUID instruction.
func cpuid(leaf, sub uint32) (a, b, c, d uint32)

// blockFast runs blockSHANI and reports true where the CPU has the SHA
// extensions; elsewhere it does nothing and reports false.
func blockFast(h *[8]uint32, p []byte) bool {
	if !haveSHANI {
		return false
	}
	blockSHANI(h, p)
	return true
}
