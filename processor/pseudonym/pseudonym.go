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
	"hash"
	"strconv"
)

// Domain is the prefix of every HMAC message; it versions the derivation.
const Domain = "pseudonymizer/v1\x00"

// Size is the length in bytes of a pseudonym's text.
const Size = 36

const hexDigits = "0123456789abcdef"

// Deriver computes pseudonyms without allocating in steady state. It caches
// the HMAC state of the last key it saw, so consecutive derivations with the
// same subject key cost three SHA-256 compressions or fewer for short values.
//
// A Deriver is not safe for concurrent use; use one per goroutine.
type Deriver struct {
	h     hash.Hash
	app   encoding.BinaryAppender
	unm   encoding.BinaryUnmarshaler
	key   []byte // copy of the key whose midstates are cached
	has   bool
	inner []byte // marshaled SHA-256 state after absorbing key^ipad
	outer []byte // marshaled SHA-256 state after absorbing key^opad
	msg   []byte // header of the message (domain, system, field)
	sum   [sha256.Size]byte
	pad   [sha256.BlockSize]byte
	num   [24]byte
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
	return &Deriver{h: h, app: app, unm: unm, msg: make([]byte, 0, 128)}
}

// Reset wipes the cached key material from d. Call it when a subject's key
// has been destroyed and d may outlive that moment.
func (d *Deriver) Reset() {
	clear(d.key)
	clear(d.inner)
	clear(d.outer)
	clear(d.sum[:])
	clear(d.pad[:])
	clear(d.num[:])
	d.key, d.inner, d.outer = d.key[:0], d.inner[:0], d.outer[:0]
	d.has = false
	d.h.Reset()
}

// Append appends the pseudonym (36 bytes of UUID text) of value, as a value
// of field in system, under the subject key, to dst and returns the extended
// buffer. key is normally 32 bytes; any length is accepted, as in HMAC.
func (d *Deriver) Append(dst []byte, key []byte, system, field string, value []byte) []byte {
	d.setKey(key)
	m := append(d.msg[:0], Domain...)
	m = append(m, system...)
	m = append(m, 0)
	m = append(m, field...)
	m = append(m, 0)
	d.msg = m

	if err := d.unm.UnmarshalBinary(d.inner); err != nil {
		panic("pseudonym: restoring HMAC state: " + err.Error())
	}
	d.h.Write(m)
	d.h.Write(value)
	s := d.h.Sum(d.sum[:0])
	if err := d.unm.UnmarshalBinary(d.outer); err != nil {
		panic("pseudonym: restoring HMAC state: " + err.Error())
	}
	d.h.Write(s)
	s = d.h.Sum(d.sum[:0])
	return appendUUID(dst, s)
}

// AppendInt is Append for a number: integers are pseudonymized over their
// decimal text, so AppendInt(dst, k, s, f, 42) equals Append(dst, k, s, f,
// []byte("42")).
func (d *Deriver) AppendInt(dst []byte, key []byte, system, field string, v int64) []byte {
	n := strconv.AppendInt(d.num[:0], v, 10)
	return d.Append(dst, key, system, field, n)
}

// String returns the pseudonym of value; a convenience that allocates.
func (d *Deriver) String(key []byte, system, field, value string) string {
	return string(d.Append(make([]byte, 0, Size), key, system, field, []byte(value)))
}

// setKey prepares the inner and outer HMAC midstates for key, unless they
// are already cached.
func (d *Deriver) setKey(key []byte) {
	if d.has && bytes.Equal(d.key, key) {
		return
	}
	k := key
	if len(k) > sha256.BlockSize {
		d.h.Reset()
		d.h.Write(k)
		k = d.h.Sum(d.sum[:0])
	}
	var err error
	for i := range d.pad {
		d.pad[i] = 0x36
	}
	for i, c := range k {
		d.pad[i] ^= c
	}
	d.h.Reset()
	d.h.Write(d.pad[:])
	if d.inner, err = d.app.AppendBinary(d.inner[:0]); err != nil {
		panic("pseudonym: saving HMAC state: " + err.Error())
	}
	for i := range d.pad {
		d.pad[i] ^= 0x36 ^ 0x5c
	}
	d.h.Reset()
	d.h.Write(d.pad[:])
	if d.outer, err = d.app.AppendBinary(d.outer[:0]); err != nil {
		panic("pseudonym: saving HMAC state: " + err.Error())
	}
	clear(d.pad[:])
	d.key = append(d.key[:0], key...)
	d.has = true
}

// appendUUID formats the first 16 bytes of s as a version 8, RFC 9562
// variant UUID.
func appendUUID(dst []byte, s []byte) []byte {
	var u [16]byte
	copy(u[:], s)
	u[6] = u[6]&0x0f | 0x80 // version 8
	u[8] = u[8]&0x3f | 0x80 // variant 10xx
	var t [Size]byte
	j := 0
	for i, c := range u {
		if i == 4 || i == 6 || i == 8 || i == 10 {
			t[j] = '-'
			j++
		}
		t[j] = hexDigits[c>>4]
		t[j+1] = hexDigits[c&0x0f]
		j += 2
	}
	return append(dst, t[:]...)
}
