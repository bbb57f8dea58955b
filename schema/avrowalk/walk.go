package avrowalk

import (
	"math"
	"strconv"
	"unicode/utf8"
)

// Error reports input that is not one valid value of the schema, or that
// costs more work than its size allows. It never contains input bytes.
type Error struct {
	Offset int    // byte offset where the problem was found
	Reason string // short, fixed description
}

// Error implements error.
func (e *Error) Error() string {
	return "avrowalk: " + e.Reason + " at byte " + strconv.Itoa(e.Offset)
}

// Reasons of Error.
const (
	reasonTruncated    = "truncated input"
	reasonVarint       = "varint overflow"
	reasonIntRange     = "int out of range"
	reasonBool         = "invalid boolean"
	reasonLength       = "negative length"
	reasonUTF8         = "invalid UTF-8 in string"
	reasonEnum         = "enum index out of range"
	reasonUnion        = "union index out of range"
	reasonBlockCount   = "block count out of range"
	reasonBlockSize    = "block byte size out of range"
	reasonBlockSizeMis = "block byte size does not match its items"
	reasonBudget       = "too much work for the input size"
	reasonTrailing     = "trailing bytes after the value"
)

func fail(at int, reason string) error { return &Error{Offset: at, Reason: reason} }

// Validate checks that b is exactly one valid value of the schema. Its work
// is linear in len(b); errors are *Error.
func (s *Schema) Validate(b []byte) error {
	w := walker{b: b, budget: BudgetBase + BudgetPerByte*int64(len(b))}
	if err := w.value(s.root); err != nil {
		return err
	}
	if w.pos != len(b) {
		return fail(w.pos, reasonTrailing)
	}
	return nil
}

type walker struct {
	b      []byte
	pos    int
	budget int64 // work left
}

// charge spends n units of work.
func (w *walker) charge(n int64) error {
	if n > w.budget {
		return fail(w.pos, reasonBudget)
	}
	w.budget -= n
	return nil
}

// long reads a zigzag varint of at most 10 bytes that fits 64 bits.
func (w *walker) long() (int64, error) {
	var u uint64
	for i := uint(0); ; i++ {
		if w.pos >= len(w.b) {
			return 0, fail(w.pos, reasonTruncated)
		}
		c := w.b[w.pos]
		if i == 9 && c > 1 {
			return 0, fail(w.pos, reasonVarint)
		}
		w.pos++
		u |= uint64(c&0x7f) << (7 * i)
		if c < 0x80 {
			return int64(u>>1) ^ -int64(u&1), nil
		}
	}
}

// int reads a zigzag varint of at most 5 bytes that fits 32 bits.
func (w *walker) int() (int64, error) {
	start := w.pos
	v, err := w.long()
	if err != nil {
		return 0, err
	}
	if w.pos-start > 5 || w.pos-start == 5 && w.b[w.pos-1] > 0x0f || v < math.MinInt32 || v > math.MaxInt32 {
		return 0, fail(start, reasonIntRange)
	}
	return v, nil
}

// bytes reads a length-prefixed byte string.
func (w *walker) bytes() ([]byte, error) {
	at := w.pos
	n, err := w.long()
	if err != nil {
		return nil, err
	}
	if n < 0 {
		return nil, fail(at, reasonLength)
	}
	if n > int64(len(w.b)-w.pos) {
		return nil, fail(len(w.b), reasonTruncated)
	}
	v := w.b[w.pos : w.pos+int(n)]
	w.pos += int(n)
	return v, nil
}

func (w *walker) fixed(n int) error {
	if n > len(w.b)-w.pos {
		return fail(len(w.b), reasonTruncated)
	}
	w.pos += n
	return nil
}

// value validates one value of n and moves past it.
func (w *walker) value(n *node) error {
	if n.min == 0 {
		// Always empty: nothing to read, but a decoder still visits it.
		return w.charge(n.weight)
	}
	if err := w.charge(1); err != nil {
		return err
	}
	switch n.kind {
	case kBool:
		if w.pos >= len(w.b) {
			return fail(w.pos, reasonTruncated)
		}
		if w.b[w.pos] > 1 {
			return fail(w.pos, reasonBool)
		}
		w.pos++
		return nil
	case kInt:
		_, err := w.int()
		return err
	case kLong:
		_, err := w.long()
		return err
	case kFloat:
		return w.fixed(4)
	case kDouble:
		return w.fixed(8)
	case kBytes:
		_, err := w.bytes()
		return err
	case kString:
		at := w.pos
		v, err := w.bytes()
		if err != nil {
			return err
		}
		if !utf8.Valid(v) {
			return fail(at, reasonUTF8)
		}
		return nil
	case kEnum:
		at := w.pos
		i, err := w.int()
		if err != nil {
			return err
		}
		if i < 0 || i >= int64(n.size) {
			return fail(at, reasonEnum)
		}
		return nil
	case kFixed:
		return w.fixed(n.size)
	case kRecord:
		for _, f := range n.sub {
			if err := w.value(f); err != nil {
				return err
			}
		}
		return nil
	case kUnion:
		at := w.pos
		i, err := w.int()
		if err != nil {
			return err
		}
		if i < 0 || i >= int64(len(n.sub)) {
			return fail(at, reasonUnion)
		}
		// A skip decoder builds the branch's decoder for every value.
		br := n.sub[i]
		if err := w.charge(br.weight); err != nil {
			return err
		}
		return w.value(br)
	case kArray, kMap:
		return w.blocks(n)
	}
	return fail(w.pos, "unsupported type")
}

// blocks validates the blocks of an array or map.
func (w *walker) blocks(n *node) error {
	itemMin := n.elem.min
	if n.kind == kMap {
		itemMin++ // the key's length
	}
	for {
		at := w.pos
		count, err := w.long()
		if err != nil {
			return err
		}
		end := -1
		if count < 0 {
			if count == math.MinInt64 {
				return fail(at, reasonBlockCount)
			}
			count = -count
			sat := w.pos
			size, err := w.long()
			if err != nil {
				return err
			}
			if size < 0 || size > int64(len(w.b)-w.pos) {
				return fail(sat, reasonBlockSize)
			}
			end = w.pos + int(size)
		}
		if count == 0 {
			if end >= 0 && w.pos != end {
				return fail(w.pos, reasonBlockSizeMis)
			}
			return nil
		}
		if itemMin == 0 {
			// Items take no bytes (arrays only: a map item has a key):
			// charge what a decoder spends on them instead of walking.
			if count > w.budget/n.elem.weight {
				return fail(at, reasonBudget)
			}
			w.budget -= count * n.elem.weight
		} else {
			if count > int64(len(w.b)-w.pos)/itemMin {
				return fail(at, reasonBlockCount)
			}
			for range count {
				if n.kind == kMap {
					if err := w.value(&stringNode); err != nil {
						return err
					}
				}
				if err := w.value(n.elem); err != nil {
					return err
				}
			}
		}
		if end >= 0 && w.pos != end {
			return fail(w.pos, reasonBlockSizeMis)
		}
	}
}

// stringNode is a map key.
var stringNode = node{kind: kString, min: 1, weight: 1}
