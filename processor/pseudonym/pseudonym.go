// Package pseudonym derives per-subject, per-system pseudonyms.
//
// A pseudonym is HMAC-SHA-256, keyed by the subject's secret key, over the
// domain-separated message
//
//	"pseudonymizer/v1\x00" + system + "\x00" + field + "\x00" + value
//
// truncated to 16 bytes and formatted as an RFC 9562 version 8 UUID in its
// canonical 36-character lowercase form. System and field names must not
// contain NUL bytes (policy names never do), which makes the message
// unambiguous. Without the subject's key a pseudonym can be neither
// recomputed nor reversed; deleting the key makes all of the subject's
// pseudonyms anonymous.
package pseudonym

import (
	"bytes"
	"crypto/sha256"
	"encoding"
	"encoding/binary"
	"hash"
	"slices"
	"strconv"
)

// Domain is the prefix of every HMAC message; it versions the derivation.
const Domain = "pseudonymizer/v1\x00"

// Size is the length in bytes of a pseudonym's text.
const Size = 36

// iv is SHA-256's initial chaining value.
var iv = [8]uint32{0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19}

// Key is a subject key prepared for derivation: the SHA-256 chaining values
// of HMAC's inner and outer hashes after their key block (64 bytes). It is
// exactly as secret as the key it was prepared from; Wipe it with the key.
// With a Key at hand a pseudonym of a short value costs three SHA-256
// compressions and no key schedule.
type Key struct {
	in, out [8]uint32
}

// Wipe overwrites k.
func (k *Key) Wipe() { *k = Key{} }

// Deriver computes pseudonyms without allocating in steady state. It keeps
// the prepared Key of the last raw key given to Append, so consecutive
// derivations with the same subject key skip the key schedule; callers that
// hold many subjects prepare each key once (Prepare) and use AppendKey.
//
// A Deriver is not safe for concurrent use; use one per goroutine.
type Deriver struct {
	key []byte // copy of the raw key whose Key is cached
	has bool
	k   Key
	buf []byte                 // the padded inner message
	blk [sha256.BlockSize]byte // the padded outer message
	pad [sha256.BlockSize]byte // a key block
	num [24]byte

	// On amd64 with the SHA extensions, the compressions are one
	// assembly call each (sha256_amd64.s). Elsewhere crypto/sha256 does
	// them, the chaining value moving in and out through its binary
	// marshaling, which lets HMAC's key blocks be absorbed once per key.
	h     hash.Hash
	app   encoding.BinaryAppender
	unm   encoding.BinaryUnmarshaler
	state []byte
}

// NewDeriver returns a Deriver.
func NewDeriver() *Deriver {
	h := sha256.New()
	app, ok1 := h.(encoding.BinaryAppender)
	unm, ok2 := h.(encoding.BinaryUnmarshaler)
	if !ok1 || !ok2 {
		// crypto/sha256 has supported both since Go 1.24.
		panic("pseudonym: sha256 digest does not support state marshaling")
	}
	return &Deriver{h: h, app: app, unm: unm, buf: make([]byte, 0, 3*sha256.BlockSize), state: make([]byte, marshaledSize)}
}

// Reset wipes the cached key material from d. Call it when a subject's key
// has been destroyed and d may outlive that moment.
func (d *Deriver) Reset() {
	clear(d.key)
	d.key = d.key[:0]
	d.k.Wipe()
	d.has = false
	clear(d.buf[:cap(d.buf)])
	d.buf = d.buf[:0]
	clear(d.blk[:])
	clear(d.pad[:])
	clear(d.num[:])
	clear(d.state)
	d.h.Reset()
}

// Prepare returns the prepared Key of the raw subject key. key is normally
// 32 bytes; any length is accepted, as in HMAC.
func (d *Deriver) Prepare(key []byte) Key {
	pad := &d.pad
	clear(pad[:])
	if len(key) > sha256.BlockSize {
		s := sha256.Sum256(key)
		copy(pad[:], s[:])
		clear(s[:])
	} else {
		copy(pad[:], key)
	}
	k := Key{in: iv, out: iv}
	for i := range pad {
		pad[i] ^= 0x36
	}
	d.compress(&k.in, pad[:])
	for i := range pad {
		pad[i] ^= 0x36 ^ 0x5c
	}
	d.compress(&k.out, pad[:])
	clear(pad[:])
	return k
}

// Append appends the pseudonym (36 bytes of UUID text) of value, as a value
// of field in system, under the subject key, to dst and returns the extended
// buffer. key is normally 32 bytes; any length is accepted, as in HMAC.
func (d *Deriver) Append(dst []byte, key []byte, system, field string, value []byte) []byte {
	if !d.has || !bytes.Equal(d.key, key) {
		d.k = d.Prepare(key)
		d.key = append(d.key[:0], key...)
		d.has = true
	}
	return d.AppendKey(dst, &d.k, system, field, value)
}

// AppendKey is Append with a prepared key: AppendKey(dst, &k, ...) with k =
// d.Prepare(key) equals Append(dst, key, ...).
func (d *Deriver) AppendKey(dst []byte, k *Key, system, field string, value []byte) []byte {
	u := d.SumKey(k, system, field, value)
	return u.Append(dst)
}

// SumKey returns the pseudonym of value in binary form: AppendKey appends
// its text. Callers that keep many pseudonyms keep them as UUIDs (16
// bytes instead of 36) and format them when needed.
func (d *Deriver) SumKey(k *Key, system, field string, value []byte) UUID {
	// Inner hash: the key block is in k.in; what follows is the message,
	// padded as SHA-256 pads (0x80, zeros, the bit length of key block and
	// message).
	m := append(d.buf[:0], Domain...)
	m = append(m, system...)
	m = append(m, 0)
	m = append(m, field...)
	m = append(m, 0)
	m = append(m, value...)
	n := len(m)
	padded := (n + 1 + 8 + sha256.BlockSize - 1) &^ (sha256.BlockSize - 1)
	m = slices.Grow(m, padded-n)[:padded]
	m[n] = 0x80
	clear(m[n+1 : padded-8])
	binary.BigEndian.PutUint64(m[padded-8:], uint64(sha256.BlockSize+n)<<3)
	d.buf = m
	h := k.in
	d.compress(&h, m)

	// Outer hash: the inner digest, padded, after the outer key block.
	b := &d.blk
	for i, v := range h {
		binary.BigEndian.PutUint32(b[4*i:], v)
	}
	b[32] = 0x80
	clear(b[33:56])
	binary.BigEndian.PutUint64(b[56:], (sha256.BlockSize+sha256.Size)<<3)
	h = k.out
	d.compress(&h, b[:])
	return uuidOf(&h)
}

// AppendInt is Append for a number: integers are pseudonymized over their
// decimal text, so AppendInt(dst, k, s, f, 42) equals Append(dst, k, s, f,
// []byte("42")).
func (d *Deriver) AppendInt(dst []byte, key []byte, system, field string, v int64) []byte {
	n := strconv.AppendInt(d.num[:0], v, 10)
	return d.Append(dst, key, system, field, n)
}

// AppendIntKey is AppendInt with a prepared key.
func (d *Deriver) AppendIntKey(dst []byte, k *Key, system, field string, v int64) []byte {
	n := strconv.AppendInt(d.num[:0], v, 10)
	return d.AppendKey(dst, k, system, field, n)
}

// String returns the pseudonym of value; a convenience that allocates.
func (d *Deriver) String(key []byte, system, field, value string) string {
	return string(d.Append(make([]byte, 0, Size), key, system, field, []byte(value)))
}

// marshaledSize is the length of crypto/sha256's marshaled state: a magic
// of 4 bytes, the chaining value, the pending block and the length.
const marshaledSize = 4 + sha256.Size + sha256.BlockSize + 8

// compress runs the SHA-256 compression function over the 64-byte blocks
// of p (len(p) is a multiple of 64), updating the chaining value h.
func (d *Deriver) compress(h *[8]uint32, p []byte) {
	if blockFast(h, p) {
		return
	}
	d.compressStd(h, p)
}

// compressStd is compress through crypto/sha256, for CPUs without the SHA
// extensions (or builds without assembly).
func (d *Deriver) compressStd(h *[8]uint32, p []byte) {
	// crypto/sha256 resumes from a state that has absorbed exactly one
	// block with chaining value h. d.state keeps the layout between calls:
	// magic, chaining value, pending block (ignored: none is pending) and
	// length, of which only the chaining value and the length change.
	s := d.state[:marshaledSize]
	if string(s[:4]) != "sha\x03" {
		copy(s, "sha\x03")
	}
	for i, v := range h {
		binary.BigEndian.PutUint32(s[4+4*i:], v)
	}
	binary.BigEndian.PutUint64(s[marshaledSize-8:], sha256.BlockSize)
	if err := d.unm.UnmarshalBinary(s); err != nil {
		panic("pseudonym: restoring SHA-256 state: " + err.Error())
	}
	d.h.Write(p)
	s, err := d.app.AppendBinary(s[:0])
	if err != nil || len(s) != marshaledSize || string(s[:4]) != "sha\x03" {
		panic("pseudonym: saving SHA-256 state: unexpected format")
	}
	for i := range h {
		h[i] = binary.BigEndian.Uint32(s[4+4*i:])
	}
	d.state = s
}

// UUID is a pseudonym in binary form: the 16 bytes that its text spells
// (version and variant bits set).
type UUID [16]byte

// uuidOf returns the first 16 bytes of the digest with chaining value h as
// a version 8, RFC 9562 variant UUID.
func uuidOf(h *[8]uint32) UUID {
	var u UUID
	binary.BigEndian.PutUint32(u[0:], h[0])
	binary.BigEndian.PutUint32(u[4:], h[1])
	binary.BigEndian.PutUint32(u[8:], h[2])
	binary.BigEndian.PutUint32(u[12:], h[3])
	u[6] = u[6]&0x0f | 0x80 // version 8
	u[8] = u[8]&0x3f | 0x80 // variant 10xx
	return u
}

// Append appends u's canonical text: 36 bytes, lowercase hex digits in
// groups of 8, 4, 4, 4 and 12, separated by hyphens.
func (u *UUID) Append(dst []byte) []byte {
	n := len(dst)
	dst = slices.Grow(dst, Size)[:n+Size]
	t := (*[Size]byte)(dst[n:])
	a := hex8(binary.BigEndian.Uint32(u[0:]))
	b := hex8(binary.BigEndian.Uint32(u[4:]))
	c := hex8(binary.BigEndian.Uint32(u[8:]))
	d := hex8(binary.BigEndian.Uint32(u[12:]))
	binary.BigEndian.PutUint64(t[0:], a)
	t[8] = '-'
	binary.BigEndian.PutUint32(t[9:], uint32(b>>32))
	t[13] = '-'
	binary.BigEndian.PutUint32(t[14:], uint32(b))
	t[18] = '-'
	binary.BigEndian.PutUint32(t[19:], uint32(c>>32))
	t[23] = '-'
	binary.BigEndian.PutUint32(t[24:], uint32(c))
	binary.BigEndian.PutUint64(t[28:], d)
	return dst
}

// hex8 returns the 8 lowercase hex digits of v, most significant first,
// as the bytes of a big-endian uint64 (SWAR: all digits at once).
func hex8(v uint32) uint64 {
	x := uint64(v)
	x = (x | x<<16) & 0x0000ffff0000ffff
	x = (x | x<<8) & 0x00ff00ff00ff00ff
	x = (x | x<<4) & 0x0f0f0f0f0f0f0f0f
	// Each byte is a nibble n: '0'+n, plus 39 more for n > 9 ('a'-'0'-10).
	over := ((x + 0x0606060606060606) >> 4) & 0x0101010101010101
	return x + 0x3030303030303030 + over*39
}
