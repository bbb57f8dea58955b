//go:build purego || !amd64

package pseudonym

// Without the amd64 assembly, compress goes through crypto/sha256.
const (
	shaniBuilt = false
	haveSHANI  = false
)

// blockFast reports false: there is no fast path in this build.
func blockFast(h *[8]uint32, p []byte) bool { return false }
