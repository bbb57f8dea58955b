// Package avrowalk validates Avro binary against an arbitrary writer schema
// with work bounded by the input's size, so that a library decoder
// (hamba/avro) only ever sees bytes it can decode safely and quickly.
//
// hamba/avro trusts its input and its schemas in ways that hostile input
// turns into crashes or endless work:
//
//   - An array block count of MinInt64, written as a negative count with a
//     byte size, is negated into a negative slice length that passes the
//     allocation check: a fatal SIGSEGV no recover can catch.
//   - Skip decoders (for writer fields the reader schema drops) loop over
//     the announced block count without looking at the end of input, so a
//     count of 2^62 in a few bytes loops for centuries.
//   - Skip decoders are built eagerly and without a cycle check, so a
//     recursive type in a dropped field overflows the stack (fatal).
//   - Skip decoders are built by expanding every named type at each use,
//     and a union branch's skip decoder is built again for every value, so
//     a small schema that reuses named types (a DAG) costs exponential
//     time per record.
//
// Compile therefore rejects schemas that are recursive, nested deeper than
// MaxDepth, or whose expansion as a tree (what hamba builds) has more than
// MaxNodes nodes. Validate accepts exactly the valid encodings of one value
// of the schema, with nothing after it, and bounds:
//
//   - every block count (arrays and maps): a negative count is followed by
//     a byte size that must lie within the input and match the block;
//     MinInt64 is refused; the items of a block must fit in the bytes that
//     remain (each item takes at least its type's minimum encoded size),
//   - items that take no bytes at all (an empty record, fixed(0)) are not
//     bounded by bytes; they are charged against the work budget instead,
//   - the work: every value visited, and every value a library decoder
//     would visit on its behalf (the expanded size of a union's branch, of
//     empty items), is charged against a budget of BudgetPerByte per input
//     byte plus BudgetBase, so the work of Validate and of a decoder that
//     runs after it grows linearly with the input,
//   - the nesting: data can nest no deeper than its non-recursive schema.
//
// It is stricter than the Avro specification requires only where a valid
// writer never differs: booleans are 0 or 1, ints fit 32 bits in at most 5
// bytes, longs fit 64 bits in at most 10, strings are UTF-8.
package avrowalk

import (
	"errors"
	"fmt"
	"math"

	"github.com/hamba/avro/v2"
)

// Limits of Compile and Validate.
const (
	// MaxDepth bounds the nesting of records, arrays, maps and unions in a
	// schema, and so in its data.
	MaxDepth = 64
	// MaxNodes bounds a schema's size expanded as a tree, every use of a
	// named type counted with its whole definition.
	MaxNodes = 10_000
	// BudgetPerByte and BudgetBase give the work budget of one input.
	BudgetPerByte = 32
	BudgetBase    = 1024
)

// ErrSchema is wrapped by every error of Compile.
var ErrSchema = errors.New("avrowalk: unsupported schema")

// kind is the Avro type of a node.
type kind uint8

const (
	kNull kind = iota
	kBool
	kInt
	kLong
	kFloat
	kDouble
	kBytes
	kString
	kEnum
	kFixed
	kRecord
	kArray
	kMap
	kUnion
)

// node is one compiled type. Named types are shared, so nodes form a DAG.
type node struct {
	kind   kind
	size   int     // enum: number of symbols; fixed: size in bytes
	min    int64   // least encoded size of a value, at most maxMin; 0: always empty
	weight int64   // nodes of the type expanded as a tree, at most MaxNodes+1
	depth  int     // nesting of records, arrays, maps and unions
	sub    []*node // record fields, union branches
	elem   *node   // array items, map values
}

// maxMin caps node.min so that sums cannot overflow.
const maxMin = math.MaxInt32

// Schema is a compiled schema. It is immutable and safe for concurrent use.
type Schema struct {
	root *node
}

// Compile compiles s. Its errors wrap ErrSchema and name the offending
// type, never data.
func Compile(s avro.Schema) (*Schema, error) {
	if s == nil {
		return nil, fmt.Errorf("%w: no schema", ErrSchema)
	}
	c := compiler{named: map[string]*node{}, open: map[string]bool{}}
	n, err := c.build(s)
	if err != nil {
		return nil, err
	}
	return &Schema{root: n}, nil
}

type compiler struct {
	named map[string]*node // compiled named types by full name
	open  map[string]bool  // records being compiled: reaching one again is recursion
}

func (c *compiler) build(s avro.Schema) (*node, error) {
	switch t := s.(type) {
	case *avro.RefSchema:
		return c.build(t.Schema())
	case *avro.NullSchema:
		return &node{kind: kNull, weight: 1}, nil
	case *avro.PrimitiveSchema:
		n := &node{weight: 1, min: 1}
		switch t.Type() {
		case avro.Boolean:
			n.kind = kBool
		case avro.Int:
			n.kind = kInt
		case avro.Long:
			n.kind = kLong
		case avro.Float:
			n.kind, n.min = kFloat, 4
		case avro.Double:
			n.kind, n.min = kDouble, 8
		case avro.Bytes:
			n.kind = kBytes
		case avro.String:
			n.kind = kString
		case avro.Null:
			n.kind, n.min = kNull, 0
		default:
			return nil, fmt.Errorf("%w: primitive type %s", ErrSchema, t.Type())
		}
		return n, nil
	case *avro.EnumSchema:
		if n := c.named[t.FullName()]; n != nil {
			return n, nil
		}
		if len(t.Symbols()) == 0 {
			return nil, fmt.Errorf("%w: enum %s has no symbols", ErrSchema, t.FullName())
		}
		n := &node{kind: kEnum, size: len(t.Symbols()), min: 1, weight: 1}
		c.named[t.FullName()] = n
		return n, nil
	case *avro.FixedSchema:
		if n := c.named[t.FullName()]; n != nil {
			return n, nil
		}
		if t.Size() < 0 {
			return nil, fmt.Errorf("%w: fixed %s has a negative size", ErrSchema, t.FullName())
		}
		n := &node{kind: kFixed, size: t.Size(), min: min(int64(t.Size()), maxMin), weight: 1}
		c.named[t.FullName()] = n
		return n, nil
	case *avro.RecordSchema:
		name := t.FullName()
		if n := c.named[name]; n != nil {
			return n, nil
		}
		if c.open[name] {
			return nil, fmt.Errorf("%w: record %s is recursive", ErrSchema, name)
		}
		c.open[name] = true
		n := &node{kind: kRecord, weight: 1}
		for _, f := range t.Fields() {
			sub, err := c.build(f.Type())
			if err != nil {
				return nil, err
			}
			n.sub = append(n.sub, sub)
		}
		delete(c.open, name)
		if err := c.finish(n, name); err != nil {
			return nil, err
		}
		c.named[name] = n
		return n, nil
	case *avro.ArraySchema:
		elem, err := c.build(t.Items())
		if err != nil {
			return nil, err
		}
		n := &node{kind: kArray, min: 1, weight: 1, elem: elem}
		return n, c.finish(n, "array")
	case *avro.MapSchema:
		elem, err := c.build(t.Values())
		if err != nil {
			return nil, err
		}
		n := &node{kind: kMap, min: 1, weight: 1, elem: elem}
		return n, c.finish(n, "map")
	case *avro.UnionSchema:
		if len(t.Types()) == 0 {
			return nil, fmt.Errorf("%w: empty union", ErrSchema)
		}
		n := &node{kind: kUnion, min: 1, weight: 1}
		for _, b := range t.Types() {
			sub, err := c.build(b)
			if err != nil {
				return nil, err
			}
			n.sub = append(n.sub, sub)
		}
		return n, c.finish(n, "union")
	}
	return nil, fmt.Errorf("%w: type %s", ErrSchema, s.Type())
}

// finish derives the size, weight and depth of a nested node from its
// children and checks the limits.
func (c *compiler) finish(n *node, what string) error {
	kids := n.sub
	if n.elem != nil {
		kids = []*node{n.elem}
	}
	for _, k := range kids {
		n.weight = min(n.weight+k.weight, MaxNodes+1)
		n.depth = max(n.depth, k.depth)
		if n.kind == kRecord {
			n.min = min(n.min+k.min, maxMin)
		}
	}
	n.depth++
	switch {
	case n.depth > MaxDepth:
		return fmt.Errorf("%w: %s nested deeper than %d", ErrSchema, what, MaxDepth)
	case n.weight > MaxNodes:
		return fmt.Errorf("%w: %s expands to more than %d types", ErrSchema, what, MaxNodes)
	}
	return nil
}
