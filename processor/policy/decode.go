package policy

import (
	"math"
	"strconv"
	"unicode/utf8"
)

// maxDepth bounds the nesting of records, arrays, maps and unions.
const maxDepth = 64

// maxZeroSizeItems bounds the items of one block of an array whose items
// take no bytes (arrays of null, for example).
const maxZeroSizeItems = 1 << 16

// DecodeError reports input that is not a valid Avro record of the input
// schema. It never contains input bytes.
type DecodeError struct {
	Offset int    // byte offset where the problem was found
	Reason string // short, fixed description
}

// Error implements error.
func (e *DecodeError) Error() string {
	return "decode: " + e.Reason + " at byte " + strconv.Itoa(e.Offset)
}

// Reasons of DecodeError.
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
	reasonDepth        = "nesting too deep"
	reasonTrailing     = "trailing bytes after record"
)

// Head holds the top-level fields every event is routed by. The byte
// slices alias the input; they are not copies.
type Head struct {
	EventID    []byte
	OrderID    []byte
	CustomerID []byte
	OccurredAt int64 // milliseconds since the Unix epoch

	// off[i] is where top-level field i starts and off[i+1] where it ends,
	// for the nOff-1 fields of a record that Scan accepted (nOff 0: not
	// recorded). Projections copy or skip top-level fields by them.
	off  [maxHeadFields + 1]int32
	nOff int
}

// maxHeadFields is the most top-level fields whose offsets Scan records.
const maxHeadFields = 15

// reader walks Avro binary. It never allocates except for errors.
type reader struct {
	b     []byte
	pos   int
	depth int
	// scanned means b was accepted by Scan: its strings are known to be
	// valid UTF-8 and are not checked again (bounds still are).
	scanned bool
}

func fail(at int, reason string) error { return &DecodeError{Offset: at, Reason: reason} }

// long reads a zigzag varint of at most 10 bytes. The one-byte case is
// inlined into callers.
func (r *reader) long() (int64, error) {
	if r.pos < len(r.b) && r.b[r.pos] < 0x80 {
		c := uint64(r.b[r.pos])
		r.pos++
		return int64(c>>1) ^ -int64(c&1), nil
	}
	return r.longSlow()
}

func (r *reader) longSlow() (int64, error) {
	var u uint64
	for i := uint(0); ; i++ {
		if r.pos >= len(r.b) {
			return 0, fail(r.pos, reasonTruncated)
		}
		c := r.b[r.pos]
		if i == 9 && c > 1 {
			return 0, fail(r.pos, reasonVarint)
		}
		r.pos++
		u |= uint64(c&0x7f) << (7 * i)
		if c < 0x80 {
			return int64(u>>1) ^ -int64(u&1), nil
		}
	}
}

// int reads a zigzag varint of at most 5 bytes that fits 32 bits.
func (r *reader) int() (int64, error) {
	start := r.pos
	v, err := r.long()
	if err != nil {
		return 0, err
	}
	if r.pos-start > 5 || r.pos-start == 5 && r.b[r.pos-1] > 0x0f || v < math.MinInt32 || v > math.MaxInt32 {
		return 0, fail(start, reasonIntRange)
	}
	return v, nil
}

// bytes reads a length-prefixed byte string and returns it.
func (r *reader) bytes() ([]byte, error) {
	at := r.pos
	n, err := r.long()
	if err != nil {
		return nil, err
	}
	if n < 0 {
		return nil, fail(at, reasonLength)
	}
	if n > int64(len(r.b)-r.pos) {
		return nil, fail(len(r.b), reasonTruncated)
	}
	v := r.b[r.pos : r.pos+int(n)]
	r.pos += int(n)
	return v, nil
}

// str reads a string, which must be valid UTF-8.
func (r *reader) str() ([]byte, error) {
	at := r.pos
	v, err := r.bytes()
	if err != nil {
		return nil, err
	}
	if !r.scanned && !utf8.Valid(v) {
		return nil, fail(at, reasonUTF8)
	}
	return v, nil
}

func (r *reader) fixed(n int) error {
	if n > len(r.b)-r.pos {
		return fail(len(r.b), reasonTruncated)
	}
	r.pos += n
	return nil
}

// blockHeader reads the item count of an array or map block. It returns a
// non-negative count and, for blocks written with a byte size, the offset
// where the block must end (else -1). elemMin is the least number of bytes
// one item takes.
func (r *reader) blockHeader(elemMin int) (int64, int, error) {
	at := r.pos
	n, err := r.long()
	if err != nil {
		return 0, 0, err
	}
	end := -1
	if n < 0 {
		if n == math.MinInt64 {
			return 0, 0, fail(at, reasonBlockCount)
		}
		n = -n
		sat := r.pos
		size, err := r.long()
		if err != nil {
			return 0, 0, err
		}
		if size < 0 || size > int64(len(r.b)-r.pos) {
			return 0, 0, fail(sat, reasonBlockSize)
		}
		end = r.pos + int(size)
	}
	if elemMin == 0 && n > maxZeroSizeItems || elemMin > 0 && n > int64((len(r.b)-r.pos)/elemMin) {
		return 0, 0, fail(at, reasonBlockCount)
	}
	return n, end, nil
}

// blockEnd checks that a block written with a byte size ends where it said.
func (r *reader) blockEnd(end int) error {
	if end >= 0 && r.pos != end {
		return fail(r.pos, reasonBlockSizeMis)
	}
	return nil
}

func (r *reader) enter() error {
	r.depth++
	if r.depth > maxDepth {
		return fail(r.pos, reasonDepth)
	}
	return nil
}

// skip validates one value of n and moves past it.
func (r *reader) skip(n *node) error {
	switch n.kind {
	case kNull:
		return nil
	case kBool:
		if r.pos >= len(r.b) {
			return fail(r.pos, reasonTruncated)
		}
		if r.b[r.pos] > 1 {
			return fail(r.pos, reasonBool)
		}
		r.pos++
		return nil
	case kInt:
		_, err := r.int()
		return err
	case kLong:
		_, err := r.long()
		return err
	case kFloat:
		return r.fixed(4)
	case kDouble:
		return r.fixed(8)
	case kBytes:
		_, err := r.bytes()
		return err
	case kString:
		_, err := r.str()
		return err
	case kEnum:
		at := r.pos
		i, err := r.int()
		if err != nil {
			return err
		}
		if i < 0 || i >= int64(n.size) {
			return fail(at, reasonEnum)
		}
		return nil
	case kFixed:
		return r.fixed(n.size)
	}
	if err := r.enter(); err != nil {
		return err
	}
	err := r.skipNested(n)
	r.depth--
	return err
}

// skipNested is skip for records, unions, arrays and maps.
func (r *reader) skipNested(n *node) error {
	switch n.kind {
	case kRecord:
		for _, f := range n.sub {
			if err := r.skip(f); err != nil {
				return err
			}
		}
		return nil
	case kUnion:
		i, err := r.unionIndex(n)
		if err != nil {
			return err
		}
		return r.skip(n.sub[i])
	case kArray, kMap:
		for {
			count, end, err := r.blockHeader(itemMin(n))
			if err != nil {
				return err
			}
			if count == 0 {
				return r.blockEnd(end)
			}
			if n.kind == kArray && n.elem.min == 0 {
				// Items take no bytes; nothing to walk.
			} else {
				for range count {
					if n.kind == kMap {
						if _, err := r.str(); err != nil {
							return err
						}
					}
					if err := r.skip(n.elem); err != nil {
						return err
					}
				}
			}
			if err := r.blockEnd(end); err != nil {
				return err
			}
		}
	}
	return fail(r.pos, "unsupported type")
}

func (r *reader) unionIndex(n *node) (int, error) {
	at := r.pos
	i, err := r.long()
	if err != nil {
		return 0, err
	}
	if i < 0 || i >= int64(len(n.sub)) {
		return 0, fail(at, reasonUnion)
	}
	return int(i), nil
}

// Scan validates b as one Avro record of the input schema, with nothing
// after it, and returns its head fields. It does not allocate unless it
// fails; errors are *DecodeError.
func (p *Plan) Scan(b []byte) (Head, error) {
	r := reader{b: b}
	var h Head
	record := len(p.in.sub) <= maxHeadFields && len(b) <= math.MaxInt32
	for i, f := range p.in.sub {
		if record {
			h.off[i] = int32(r.pos)
		}
		var err error
		switch i {
		case p.head[0]:
			h.EventID, err = r.str()
		case p.head[1]:
			h.OrderID, err = r.str()
		case p.head[2]:
			h.CustomerID, err = r.str()
		case p.head[3]:
			h.OccurredAt, err = r.long()
		default:
			err = r.skip(f)
		}
		if err != nil {
			return Head{}, err
		}
	}
	if r.pos != len(b) {
		return Head{}, fail(r.pos, reasonTrailing)
	}
	if record {
		h.off[len(p.in.sub)] = int32(r.pos)
		h.nOff = len(p.in.sub) + 1
	}
	return h, nil
}

// itemMin is the least number of bytes one item of an array or map takes.
func itemMin(n *node) int {
	if n.kind == kMap {
		return n.elem.min + 1 // the key's length
	}
	return n.elem.min
}
