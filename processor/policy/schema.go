package policy

import (
	"errors"
	"fmt"

	"github.com/hamba/avro/v2"
)

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

var kindNames = [...]string{"null", "boolean", "int", "long", "float", "double", "bytes", "string", "enum", "fixed", "record", "array", "map", "union"}

func (k kind) String() string { return kindNames[k] }

// node is the compiled input schema, as the binary walker needs it.
type node struct {
	kind     kind
	size     int         // enum: number of symbols; fixed: size in bytes
	min      int         // minimum encoded size; 0 means always empty
	sub      []*node     // record fields or union branches
	names    []string    // record field names
	elem     *node       // array items or map values
	schema   avro.Schema // the input schema, references resolved
	building bool
}

// buildInput compiles the top-level input schema, which must be a record.
func buildInput(s avro.Schema) (*node, error) {
	if s == nil {
		return nil, errors.New("missing")
	}
	n, err := buildNode(s, map[string]*node{})
	if err != nil {
		return nil, err
	}
	if n.kind != kRecord {
		return nil, fmt.Errorf("top level is a %s, not a record", n.kind)
	}
	return n, nil
}

func buildNode(s avro.Schema, memo map[string]*node) (*node, error) {
	switch t := s.(type) {
	case *avro.RefSchema:
		return buildNode(t.Schema(), memo)
	case *avro.NullSchema:
		return &node{kind: kNull, schema: s}, nil
	case *avro.PrimitiveSchema:
		k, min := kNull, 0
		switch t.Type() {
		case avro.Null:
		case avro.Boolean:
			k, min = kBool, 1
		case avro.Int:
			k, min = kInt, 1
		case avro.Long:
			k, min = kLong, 1
		case avro.Float:
			k, min = kFloat, 4
		case avro.Double:
			k, min = kDouble, 8
		case avro.Bytes:
			k, min = kBytes, 1
		case avro.String:
			k, min = kString, 1
		default:
			return nil, fmt.Errorf("unsupported primitive type %s", t.Type())
		}
		return &node{kind: k, min: min, schema: s}, nil
	case *avro.EnumSchema:
		if len(t.Symbols()) == 0 {
			return nil, fmt.Errorf("enum %s has no symbols", t.FullName())
		}
		return &node{kind: kEnum, size: len(t.Symbols()), min: 1, schema: s}, nil
	case *avro.FixedSchema:
		return &node{kind: kFixed, size: t.Size(), min: t.Size(), schema: s}, nil
	case *avro.RecordSchema:
		if n := memo[t.FullName()]; n != nil {
			if n.building {
				return nil, fmt.Errorf("record %s contains itself without a union, array or map", t.FullName())
			}
			return n, nil
		}
		n := &node{kind: kRecord, schema: s, building: true}
		memo[t.FullName()] = n
		for _, f := range t.Fields() {
			c, err := buildNode(f.Type(), memo)
			if err != nil {
				return nil, err
			}
			n.sub = append(n.sub, c)
			n.names = append(n.names, f.Name())
			n.min += c.min
		}
		n.building = false
		return n, nil
	case *avro.ArraySchema:
		n := &node{kind: kArray, min: 1, schema: s}
		return n, buildChild(&n.elem, t.Items(), memo)
	case *avro.MapSchema:
		n := &node{kind: kMap, min: 1, schema: s}
		return n, buildChild(&n.elem, t.Values(), memo)
	case *avro.UnionSchema:
		n := &node{kind: kUnion, min: 1, schema: s}
		if len(t.Types()) == 0 {
			return nil, errors.New("empty union")
		}
		n.sub = make([]*node, len(t.Types()))
		for i, b := range t.Types() {
			if err := buildChild(&n.sub[i], b, memo); err != nil {
				return nil, err
			}
		}
		return n, nil
	}
	return nil, fmt.Errorf("unsupported schema type %s", s.Type())
}

// buildChild builds an item of an array or map or a branch of a union. A
// record in construction may be reached here: arrays, maps and unions
// always take at least one byte, so that recursion is finite.
func buildChild(dst **node, s avro.Schema, memo map[string]*node) error {
	if r, ok := resolve(s).(*avro.RecordSchema); ok {
		if n := memo[r.FullName()]; n != nil {
			*dst = n
			return nil
		}
	}
	c, err := buildNode(s, memo)
	*dst = c
	return err
}

func resolve(s avro.Schema) avro.Schema {
	if r, ok := s.(*avro.RefSchema); ok {
		return r.Schema()
	}
	return s
}

// act is what a projection does with a value.
type act uint8

const (
	actDrop   act = iota // skip the value
	actKeep              // copy its bytes verbatim
	actPseudo            // replace a string, int or long by its pseudonym
	actRecord            // project a record field by field
	actUnion             // project the non-null branch of a nullable union
	actArray             // project every item
	actMap               // keep only some keys
	actGen               // copy a value generalized (generalize.go)
)

// op is the compiled projection of one input value for one system.
type op struct {
	act  act
	in   *node
	path string  // actPseudo: the policy path, the pseudonym's field name
	sub  []op    // actRecord: one per input field; actUnion: one per branch
	elem *op     // actArray: the items' projection
	keys []keyOp // actMap: the selected keys
	gen  *gen    // actGen: the transform
}

type keyOp struct {
	key string
	op  op
}

// builder derives the ops and output schema of one system.
type builder struct {
	ns     string // namespace suffix, "pseudo.<system>"
	system string
	names  map[string]int  // full names used in the output schema
	open   map[string]bool // input records being copied, to refuse recursion
}

var stringSchema = avro.NewPrimitiveSchema(avro.String, nil)

// build derives the op and output schema of the value n for trie node t.
func (b *builder) build(n *node, t *tnode) (op, avro.Schema, error) {
	switch {
	case t.mark == markKeep:
		s, err := b.rename(n.schema)
		if t.gen != nil {
			return op{act: actGen, in: n, gen: t.gen}, s, err
		}
		return op{act: actKeep, in: n}, s, err
	case t.mark == markPseudo:
		o := op{act: actPseudo, in: n, path: t.path}
		if i := nullable(n); i >= 0 {
			br := make([]avro.Schema, 2)
			br[i], br[1-i] = stringSchema, avro.NewNullSchema()
			u, err := avro.NewUnionSchema(br)
			return o, u, err
		}
		return o, stringSchema, nil
	}
	switch n.kind {
	case kRecord:
		rec := n.schema.(*avro.RecordSchema)
		o := op{act: actRecord, in: n, sub: make([]op, len(n.sub))}
		name, ns := b.name(rec) // before the fields: outer records keep the plain name
		var fields []*avro.Field
		for i, f := range rec.Fields() {
			c := t.child(f.Name())
			if c == nil {
				o.sub[i] = op{act: actDrop, in: n.sub[i]}
				continue
			}
			co, cs, err := b.build(n.sub[i], c)
			if err != nil {
				return op{}, nil, err
			}
			o.sub[i] = co
			var opts []avro.SchemaOption
			switch {
			case co.act == actPseudo:
				opts = append(opts, avro.WithDoc("Pseudonym (UUID) of the input value, specific to this system and subject."))
			case f.Doc() != "" || hasGen(c):
				opts = append(opts, avro.WithDoc(genDoc(f.Doc(), c)))
			}
			if def, ok := keepDefault(f, co.act, cs); ok {
				opts = append(opts, avro.WithDefault(def))
			}
			nf, err := avro.NewField(f.Name(), cs, opts...)
			if err != nil {
				return op{}, nil, err
			}
			fields = append(fields, nf)
		}
		doc := fmt.Sprintf("Derived by pseudonymizer from %s for system %s: fields not allowed by its policy are dropped, pseudonymized ones are UUID strings.", rec.FullName(), b.system)
		s, err := avro.NewRecordSchema(name, ns, fields, avro.WithDoc(doc))
		return o, s, err
	case kUnion:
		i := nullable(n)
		o := op{act: actUnion, in: n, sub: make([]op, 2)}
		o.sub[1-i] = op{act: actKeep, in: n.sub[1-i]}
		co, cs, err := b.build(n.sub[i], t)
		if err != nil {
			return op{}, nil, err
		}
		o.sub[i] = co
		br := make([]avro.Schema, 2)
		br[i], br[1-i] = cs, n.sub[1-i].schema
		u, err := avro.NewUnionSchema(br)
		return o, u, err
	case kArray:
		co, cs, err := b.build(n.elem, t)
		if err != nil {
			return op{}, nil, err
		}
		return op{act: actArray, in: n, elem: &co}, avro.NewArraySchema(cs), nil
	case kMap:
		o := op{act: actMap, in: n}
		var vs avro.Schema
		for _, c := range t.kids {
			co, cs, err := b.build(n.elem, c.n)
			if err != nil {
				return op{}, nil, err
			}
			if vs != nil && vs.String() != cs.String() {
				return op{}, nil, fmt.Errorf("path %q: map keys would get values of different types", c.n.path)
			}
			vs = cs
			o.keys = append(o.keys, keyOp{c.seg, co})
		}
		return o, avro.NewMapSchema(vs), nil
	}
	return op{}, nil, fmt.Errorf("cannot project a %s", n.kind)
}

// keepDefault returns the default of an output field, if the input field
// has one that is still valid.
func keepDefault(f *avro.Field, a act, out avro.Schema) (any, bool) {
	if !f.HasDefault() {
		return nil, false
	}
	def := f.Default()
	switch {
	case a == actKeep:
		return def, true
	case def == nil:
		u, ok := out.(*avro.UnionSchema)
		return nil, ok && u.Types()[0].Type() == avro.Null
	case a == actMap:
		if m, ok := def.(map[string]any); ok && len(m) == 0 {
			return map[string]any{}, true
		}
	}
	return nil, false
}

// name returns the output name and namespace of a named input type, unique
// within the output schema.
func (b *builder) name(s avro.NamedSchema) (string, string) {
	ns := b.ns
	if s.Namespace() != "" {
		ns = s.Namespace() + "." + b.ns
	}
	name := s.Name()
	b.names[ns+"."+name]++
	if n := b.names[ns+"."+name]; n > 1 {
		name = fmt.Sprintf("%s_%d", name, n)
		b.names[ns+"."+name]++
	}
	return name, ns
}

// rename copies a kept subtree of the input schema, moving named types into
// the system's namespace.
func (b *builder) rename(s avro.Schema) (avro.Schema, error) {
	switch t := resolve(s).(type) {
	case *avro.PrimitiveSchema, *avro.NullSchema:
		return t, nil
	case *avro.EnumSchema:
		name, ns := b.name(t)
		opts := []avro.SchemaOption{avro.WithDoc(t.Doc())}
		if t.HasDefault() {
			opts = append(opts, avro.WithDefault(t.Default()))
		}
		return avro.NewEnumSchema(name, ns, t.Symbols(), opts...)
	case *avro.FixedSchema:
		name, ns := b.name(t)
		return avro.NewFixedSchema(name, ns, t.Size(), t.Logical())
	case *avro.RecordSchema:
		if b.open[t.FullName()] {
			return nil, fmt.Errorf("cannot keep recursive record %s", t.FullName())
		}
		b.open[t.FullName()] = true
		defer delete(b.open, t.FullName())
		name, ns := b.name(t)
		var fields []*avro.Field
		for _, f := range t.Fields() {
			fs, err := b.rename(f.Type())
			if err != nil {
				return nil, err
			}
			opts := []avro.SchemaOption{avro.WithDoc(f.Doc())}
			if f.HasDefault() {
				opts = append(opts, avro.WithDefault(f.Default()))
			}
			nf, err := avro.NewField(f.Name(), fs, opts...)
			if err != nil {
				return nil, err
			}
			fields = append(fields, nf)
		}
		return avro.NewRecordSchema(name, ns, fields, avro.WithDoc(t.Doc()))
	case *avro.ArraySchema:
		items, err := b.rename(t.Items())
		if err != nil {
			return nil, err
		}
		return avro.NewArraySchema(items), nil
	case *avro.MapSchema:
		vals, err := b.rename(t.Values())
		if err != nil {
			return nil, err
		}
		return avro.NewMapSchema(vals), nil
	case *avro.UnionSchema:
		var br []avro.Schema
		for _, x := range t.Types() {
			y, err := b.rename(x)
			if err != nil {
				return nil, err
			}
			br = append(br, y)
		}
		return avro.NewUnionSchema(br)
	}
	return nil, fmt.Errorf("cannot copy schema type %s", s.Type())
}
