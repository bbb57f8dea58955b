// Package avrowalktest writes valid Avro binary of arbitrary schemas for
// tests and fuzz targets: given values where the caller has them, random
// ones drawn from a byte string elsewhere, in every shape the specification
// allows (several blocks, blocks with and without byte sizes, empty
// blocks), so that a validator can be held to accepting all of them.
package avrowalktest

import (
	"encoding/binary"
	"fmt"
	"math"

	"github.com/hamba/avro/v2"
)

// Source is a deterministic stream of choices drawn from a byte string;
// once it is used up every choice is 0, which always terminates.
type Source struct {
	b []byte
	i int
}

// NewSource returns a Source reading b.
func NewSource(b []byte) *Source { return &Source{b: b} }

// Byte returns the next byte, or 0 when the source is used up.
func (s *Source) Byte() byte {
	if s.i >= len(s.b) {
		return 0
	}
	s.i++
	return s.b[s.i-1]
}

// Intn returns a choice in [0, n), n > 0.
func (s *Source) Intn(n int) int { return int(s.Byte()) % n }

// Random marks a value to draw from the Source.
type Random struct{}

// maxDepth is how deep random values nest before the encoder takes the
// way out that every recursive type in a test schema offers (an empty
// array or map, a null branch).
const maxDepth = 8

// Encode appends the encoding of v as a value of schema s to dst. v may
// be Random{} anywhere (draw the value from src), and a record's map may
// lack fields (drawn too). Given values: nil for null, bool, int/int32/
// int64 for int and long, float32/float64, []byte for bytes and fixed,
// string for string and enum symbols, map[string]any for records and
// maps, []any for arrays; for a union, nil picks its null branch and
// anything else its first non-null branch.
func Encode(dst []byte, s avro.Schema, v any, src *Source) []byte {
	e := encoder{src: src}
	return e.value(dst, s, v, 0)
}

type encoder struct{ src *Source }

func (e *encoder) value(dst []byte, s avro.Schema, v any, depth int) []byte {
	if ref, ok := s.(*avro.RefSchema); ok {
		s = ref.Schema()
	}
	_, random := v.(Random)
	switch t := s.(type) {
	case *avro.NullSchema:
		return dst
	case *avro.PrimitiveSchema:
		return e.primitive(dst, t, v, random)
	case *avro.EnumSchema:
		i := 0
		if random {
			i = e.src.Intn(len(t.Symbols()))
		} else {
			for j, sym := range t.Symbols() {
				if sym == v {
					i = j
				}
			}
		}
		return appendLong(dst, int64(i))
	case *avro.FixedSchema:
		if random {
			for range t.Size() {
				dst = append(dst, e.src.Byte())
			}
			return dst
		}
		return append(dst, v.([]byte)...)
	case *avro.RecordSchema:
		m, _ := v.(map[string]any)
		for _, f := range t.Fields() {
			fv, ok := m[f.Name()]
			if !ok {
				fv = Random{}
			}
			dst = e.value(dst, f.Type(), fv, depth+1)
		}
		return dst
	case *avro.UnionSchema:
		null, other := -1, -1
		for i, b := range t.Types() {
			if b.Type() == avro.Null {
				null = i
			} else if other < 0 {
				other = i
			}
		}
		i := other
		switch {
		case !random && v == nil || random && depth >= maxDepth && null >= 0:
			i = null
		case random:
			i = e.src.Intn(len(t.Types()))
		}
		return e.value(appendLong(dst, int64(i)), t.Types()[i], v, depth+1)
	case *avro.ArraySchema:
		var items []any
		if !random {
			items = v.([]any)
		} else if depth < maxDepth {
			items = make([]any, e.src.Intn(4))
			for i := range items {
				items[i] = Random{}
			}
		}
		return e.blocks(dst, len(items), depth, func(dst []byte, i int) []byte {
			return e.value(dst, t.Items(), items[i], depth+1)
		})
	case *avro.MapSchema:
		var keys []string
		var vals []any
		if !random {
			for k, x := range v.(map[string]any) {
				keys, vals = append(keys, k), append(vals, x)
			}
		} else if depth < maxDepth {
			for range e.src.Intn(4) {
				keys, vals = append(keys, e.str()), append(vals, Random{})
			}
		}
		return e.blocks(dst, len(keys), depth, func(dst []byte, i int) []byte {
			dst = appendString(dst, keys[i])
			return e.value(dst, t.Values(), vals[i], depth+1)
		})
	}
	panic(fmt.Sprintf("avrowalktest: cannot encode a %s", s.Type()))
}

// blocks writes n items in blocks of random lengths, some with a byte
// size, then the terminating empty block.
func (e *encoder) blocks(dst []byte, n, depth int, item func([]byte, int) []byte) []byte {
	for i := 0; i < n; {
		k := 1 + e.src.Intn(n-i)
		var body []byte
		for j := range k {
			body = item(body, i+j)
		}
		if e.src.Intn(2) == 0 {
			dst = appendLong(dst, int64(k))
		} else {
			dst = appendLong(appendLong(dst, -int64(k)), int64(len(body)))
		}
		dst = append(dst, body...)
		i += k
	}
	return appendLong(dst, 0)
}

func (e *encoder) primitive(dst []byte, t *avro.PrimitiveSchema, v any, random bool) []byte {
	switch t.Type() {
	case avro.Null:
		return dst
	case avro.Boolean:
		if random {
			return append(dst, e.src.Byte()&1)
		}
		if v.(bool) {
			return append(dst, 1)
		}
		return append(dst, 0)
	case avro.Int:
		if random {
			return appendLong(dst, int64(int32(e.long())))
		}
		return appendLong(dst, toInt64(v))
	case avro.Long:
		if random {
			return appendLong(dst, e.long())
		}
		return appendLong(dst, toInt64(v))
	case avro.Float:
		f := math.Float32frombits(uint32(e.long()))
		if !random {
			f = v.(float32)
		}
		return binary.LittleEndian.AppendUint32(dst, math.Float32bits(f))
	case avro.Double:
		f := math.Float64frombits(uint64(e.long()))
		if !random {
			f = v.(float64)
		}
		return binary.LittleEndian.AppendUint64(dst, math.Float64bits(f))
	case avro.Bytes:
		if random {
			return appendString(dst, e.str())
		}
		b := v.([]byte)
		return append(appendLong(dst, int64(len(b))), b...)
	case avro.String:
		if random {
			return appendString(dst, e.str())
		}
		return appendString(dst, v.(string))
	}
	panic(fmt.Sprintf("avrowalktest: cannot encode a %s", t.Type()))
}

// long draws a long, small more often than large.
func (e *encoder) long() int64 {
	switch e.src.Intn(4) {
	case 0:
		return int64(e.src.Byte()) - 128
	case 1:
		var v int64
		for range 8 {
			v = v<<8 | int64(e.src.Byte())
		}
		return v
	}
	return int64(e.src.Byte())
}

// str draws a short ASCII string.
func (e *encoder) str() string {
	b := make([]byte, e.src.Intn(6))
	for i := range b {
		b[i] = 'a' + e.src.Byte()%26
	}
	return string(b)
}

func toInt64(v any) int64 {
	switch x := v.(type) {
	case int:
		return int64(x)
	case int32:
		return int64(x)
	case int64:
		return x
	}
	panic(fmt.Sprintf("avrowalktest: %T is not an integer", v))
}

func appendLong(dst []byte, v int64) []byte {
	return binary.AppendUvarint(dst, uint64(v<<1)^uint64(v>>63))
}

func appendString(dst []byte, s string) []byte {
	return append(appendLong(dst, int64(len(s))), s...)
}
