package store

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
	"hash"
	"slices"
	"strings"
	"sync"
	"time"
)

// wrapVersion is the first byte of every wrapped key.
const wrapVersion = 1

// WrappedSize is the size of a key wrapped by Keyring.Wrap:
// version (1) | KEK id (4) | nonce (12) | ciphertext (32) | tag (16).
const WrappedSize = 1 + 4 + 12 + KeySize + 16

// Purposes bind a wrapped key to what it is for (AES-GCM additional data),
// so a wrapped key cannot be swapped into another row or role.
const (
	PurposeSubjectKey = "pseudonymizer/subject-key/v1"
	PurposeIndexKey   = "pseudonymizer/index-key/v1"
)

// KEK is a key encryption key. Its ID is derived from the key itself, so
// wrapped keys name the KEK that can unwrap them without revealing it.
type KEK struct {
	id   uint32
	aead cipher.AEAD
}

// ID returns the KEK's public identifier (a truncated hash of the key).
func (k *KEK) ID() uint32 { return k.id }

// NewKEK returns a KEK for a 32-byte key.
func NewKEK(key []byte) (*KEK, error) {
	if len(key) != KeySize {
		return nil, fmt.Errorf("kek: want %d bytes, got %d", KeySize, len(key))
	}
	block, err := aes.NewCipher(key)
	if err != nil {
		return nil, fmt.Errorf("kek: %w", err)
	}
	aead, err := cipher.NewGCM(block)
	if err != nil {
		return nil, fmt.Errorf("kek: %w", err)
	}
	h := sha256.Sum256(append([]byte("pseudonymizer/kek-id/v1\x00"), key...))
	return &KEK{id: binary.BigEndian.Uint32(h[:4]), aead: aead}, nil
}

// ParseKEK decodes a base64 (standard or URL, padded or not) 32-byte KEK.
// Surrounding whitespace is ignored. The error never contains key material.
func ParseKEK(text string) (*KEK, error) {
	text = strings.TrimSpace(text)
	var key []byte
	var err error
	for _, enc := range []*base64.Encoding{base64.StdEncoding, base64.RawStdEncoding, base64.URLEncoding, base64.RawURLEncoding} {
		if key, err = enc.DecodeString(text); err == nil {
			break
		}
	}
	if strings.HasPrefix(text, "REPLACE") {
		// deploy/kubernetes/secret.yaml's placeholder.
		clear(key)
		return nil, errors.New("kek: still the placeholder, not a KEK: create a KEK with (umask 077; head -c 32 /dev/urandom | base64 > kek.b64) and put that into the Secret")
	}
	if err != nil {
		return nil, errors.New("kek: not valid base64")
	}
	return NewKEK(key)
}

// Keyring wraps keys with its active KEK and unwraps keys wrapped by any of
// its KEKs, which lets operators rotate KEKs without changing pseudonyms.
// A Keyring is safe for concurrent use.
type Keyring struct {
	active *KEK
	byID   map[uint32]*KEK
}

// NewKeyring returns a keyring that wraps with active and also unwraps with
// older.
func NewKeyring(active *KEK, older ...*KEK) (*Keyring, error) {
	if active == nil {
		return nil, errors.New("keyring: no active KEK")
	}
	r := &Keyring{active: active, byID: map[uint32]*KEK{active.id: active}}
	for _, k := range older {
		if _, dup := r.byID[k.id]; dup {
			return nil, fmt.Errorf("keyring: KEK %08x configured twice", k.id)
		}
		r.byID[k.id] = k
	}
	return r, nil
}

// ActiveID returns the ID of the KEK used for wrapping.
func (r *Keyring) ActiveID() uint32 { return r.active.id }

// Has reports whether the keyring holds the KEK with ID id.
func (r *Keyring) Has(id uint32) bool {
	_, ok := r.byID[id]
	return ok
}

// KEKCensus counts a store's wrapped keys (subject keys, retained keys and
// the index key) by the ID of the KEK that wraps them; Malformed counts
// values that name no KEK.
type KEKCensus struct {
	ByKEK     map[uint32]int
	Malformed int
}

// Add counts one wrapped key.
func (c *KEKCensus) Add(wrapped []byte) { c.AddN(wrapped, 1) }

// AddN counts n wrapped keys wrapped like wrapped (only its header is
// read).
func (c *KEKCensus) AddN(wrapped []byte, n int) {
	if len(wrapped) >= 5 && wrapped[0] == wrapVersion {
		if c.ByKEK == nil {
			c.ByKEK = map[uint32]int{}
		}
		c.ByKEK[binary.BigEndian.Uint32(wrapped[1:5])] += n
		return
	}
	c.Malformed += n
}

// Check returns an error matching ErrWrongKEK that names every KEK the
// census counted keys of and kr does not hold, with how many keys each
// wraps, or nil when kr can unwrap every key. A store opens only if it
// passes: a key that no configured KEK unwraps would stop every batch that
// touches it (a KEK removed before rewrap finished).
func (c *KEKCensus) Check(kr *Keyring) error {
	var missing []string
	ids := make([]uint32, 0, len(c.ByKEK))
	for id := range c.ByKEK {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	for _, id := range ids {
		if !kr.Has(id) {
			missing = append(missing, fmt.Sprintf("KEK %08x (%d keys)", id, c.ByKEK[id]))
		}
	}
	if c.Malformed > 0 {
		missing = append(missing, fmt.Sprintf("%d keys that name no KEK", c.Malformed))
	}
	if len(missing) == 0 {
		return nil
	}
	return fmt.Errorf("%w: the store holds keys the configured KEKs cannot unwrap: %s; configure the missing KEK (keys.old_kek_files or keys.old_kek_urls) and run rewrap to completion before removing it",
		ErrWrongKEK, strings.Join(missing, ", "))
}

// NewKey returns a fresh random key from crypto/rand.
func NewKey() ([]byte, error) {
	key := make([]byte, KeySize)
	if _, err := rand.Read(key); err != nil {
		return nil, fmt.Errorf("new key: %w", err)
	}
	return key, nil
}

// Wrap encrypts key with the active KEK. purpose and binding (for example
// the subject hash) are authenticated, not stored.
func (r *Keyring) Wrap(key []byte, purpose string, binding []byte) ([]byte, error) {
	if len(key) != KeySize {
		return nil, fmt.Errorf("wrap: want %d-byte key, got %d", KeySize, len(key))
	}
	out := make([]byte, 1+4+12, WrappedSize)
	out[0] = wrapVersion
	binary.BigEndian.PutUint32(out[1:5], r.active.id)
	if _, err := rand.Read(out[5:17]); err != nil {
		return nil, fmt.Errorf("wrap: %w", err)
	}
	return r.active.aead.Seal(out, out[5:17], key, aad(purpose, binding, out[:5])), nil
}

// NewWrappedKeys makes a fresh random key for each binding and returns the
// keys wrapped with the active KEK, as Wrap(key, purpose, bindings[i])
// would, without the plaintext keys. It draws the randomness of all keys
// and nonces with one crypto/rand read and lays the wrapped keys out in one
// allocation, which is what key creation for a batch of new subjects costs
// most per key otherwise.
func (r *Keyring) NewWrappedKeys(purpose string, bindings [][]byte) ([][]byte, error) {
	const nonceSize = 12
	const per = KeySize + nonceSize
	n := len(bindings)
	if n == 0 {
		return nil, nil
	}
	random := make([]byte, n*per)
	defer clear(random)
	if _, err := rand.Read(random); err != nil {
		return nil, fmt.Errorf("new keys: %w", err)
	}
	out := make([]byte, n*WrappedSize)
	wrapped := make([][]byte, n)
	var ad []byte
	for i, binding := range bindings {
		key := random[i*per : i*per+KeySize]
		w := out[i*WrappedSize : i*WrappedSize+1+4+nonceSize : (i+1)*WrappedSize]
		w[0] = wrapVersion
		binary.BigEndian.PutUint32(w[1:5], r.active.id)
		copy(w[5:17], random[i*per+KeySize:(i+1)*per])
		ad = append(ad[:0], purpose...)
		ad = append(ad, 0)
		ad = append(ad, binding...)
		ad = append(ad, w[:5]...)
		wrapped[i] = r.active.aead.Seal(w, w[5:17], key, ad)
	}
	return wrapped, nil
}

// Unwrap decrypts a key made by Wrap with the same purpose and binding.
func (r *Keyring) Unwrap(wrapped []byte, purpose string, binding []byte) ([]byte, error) {
	if len(wrapped) != WrappedSize || wrapped[0] != wrapVersion {
		return nil, errors.New("unwrap: malformed wrapped key")
	}
	k, ok := r.byID[binary.BigEndian.Uint32(wrapped[1:5])]
	if !ok {
		return nil, fmt.Errorf("unwrap: key wrapped by KEK %08x: %w", binary.BigEndian.Uint32(wrapped[1:5]), ErrWrongKEK)
	}
	key, err := k.aead.Open(nil, wrapped[5:17], wrapped[17:], aad(purpose, binding, wrapped[:5]))
	if err != nil {
		return nil, errors.New("unwrap: authentication failed (wrong KEK or tampered key)")
	}
	return key, nil
}

// Rewrap unwraps a key and wraps it again with the active KEK, for KEK
// rotation: the key itself, and so every pseudonym, stays the same. An
// unwrap failure always matches ErrWrongKEK.
func (r *Keyring) Rewrap(wrapped []byte, purpose string, binding []byte) ([]byte, error) {
	key, err := r.Unwrap(wrapped, purpose, binding)
	if err != nil {
		if errors.Is(err, ErrWrongKEK) {
			return nil, err
		}
		return nil, fmt.Errorf("%w: %v", ErrWrongKEK, err)
	}
	defer clear(key)
	return r.Wrap(key, purpose, binding)
}

// FillEntries completes entries whose Hash is set from the stored state of
// each subject (its wrapped key, nil if none, and its newest tombstone),
// unwrapping each subject's key once. Every entry gets its own copy of the
// key, and FillEntries keeps none: the caller owns them and should clear
// them when done. On error the keys unwrapped so far are cleared. An
// unwrap failure matches ErrWrongKEK.
func (r *Keyring) FillEntries(entries []Entry, state func(SubjectHash) (wrapped []byte, forgottenAt time.Time)) error {
	first := make(map[SubjectHash]int) // the entry that holds the unwrapped key
	for i := range entries {
		h := entries[i].Hash
		wrapped, forgottenAt := state(h)
		entries[i].ForgottenAt = forgottenAt
		if wrapped == nil {
			continue
		}
		if j, ok := first[h]; ok {
			entries[i].Key = append([]byte(nil), entries[j].Key...)
			continue
		}
		key, err := r.Unwrap(wrapped, PurposeSubjectKey, h[:])
		if err != nil {
			for j := range entries[:i] {
				clear(entries[j].Key)
				entries[j].Key = nil
			}
			if errors.Is(err, ErrWrongKEK) {
				return err
			}
			return fmt.Errorf("%w: %v", ErrWrongKEK, err)
		}
		entries[i].Key = key
		first[h] = i
	}
	return nil
}

// WrappedBy returns the ID of the KEK that wrapped a key, or false when the
// bytes are not a wrapped key.
func WrappedBy(wrapped []byte) (uint32, bool) {
	if len(wrapped) != WrappedSize || wrapped[0] != wrapVersion {
		return 0, false
	}
	return binary.BigEndian.Uint32(wrapped[1:5]), true
}

func aad(purpose string, binding, header []byte) []byte {
	b := make([]byte, 0, len(purpose)+1+len(binding)+len(header))
	b = append(b, purpose...)
	b = append(b, 0)
	b = append(b, binding...)
	return append(b, header...)
}

// Hasher computes SubjectHash values under a secret index key. It is safe
// for concurrent use.
type Hasher struct {
	key []byte
	// mu guards m, one HMAC reused for every Hash: Reset restores its
	// state after the key blocks, which saves two of its four SHA-256
	// compressions and its allocations per call.
	mu sync.Mutex
	m  hash.Hash
}

// NewHasher returns a Hasher for a 32-byte index key.
func NewHasher(indexKey []byte) (*Hasher, error) {
	if len(indexKey) != KeySize {
		return nil, fmt.Errorf("hasher: want %d-byte index key, got %d", KeySize, len(indexKey))
	}
	key := append([]byte(nil), indexKey...)
	return &Hasher{key: key, m: hmac.New(sha256.New, key)}, nil
}

// Wipe overwrites the Hasher's copy of the index key and drops its HMAC
// (whose key-derived state Go gives no way to overwrite); Hash must not be
// used after it (it would hash under a zero key).
func (h *Hasher) Wipe() {
	h.mu.Lock()
	defer h.mu.Unlock()
	clear(h.key)
	h.m = hmac.New(sha256.New, h.key)
}

// Hash returns HMAC-SHA-256(index key, "subject\x00" + subjectID).
func (h *Hasher) Hash(subjectID string) SubjectHash {
	var out SubjectHash
	h.mu.Lock()
	defer h.mu.Unlock()
	h.m.Reset()
	h.m.Write([]byte("subject\x00"))
	h.m.Write([]byte(subjectID))
	h.m.Sum(out[:0])
	return out
}
