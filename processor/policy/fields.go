package policy

import (
	"slices"

	"github.com/hygiene/pseudonymizer/processor/pseudonym"
)

// FieldKind is the type of a pseudonymized field's values.
type FieldKind int

// Field kinds: what Project reads before it derives a pseudonym.
const (
	// KindString is an Avro string (or a nullable one).
	KindString FieldKind = iota + 1
	// KindInt is an Avro int (or a nullable one): 32 bits.
	KindInt
	// KindLong is an Avro long (or a nullable one): 64 bits.
	KindLong
)

// Field is a path that a system pseudonymizes, with the type of its
// values.
type Field struct {
	Path string
	Kind FieldKind
}

// fieldKind returns the kind of a pseudonymizable node.
func fieldKind(n *node) FieldKind {
	if i := nullable(n); i >= 0 {
		n = n.sub[i]
	}
	switch n.kind {
	case kInt:
		return KindInt
	case kLong:
		return KindLong
	}
	return KindString
}

// Pseudonymized returns the paths system i pseudonymizes, in the order of
// its policy; customer_id is always among them.
func (p *Plan) Pseudonymized(i int) []Field { return slices.Clone(p.systems[i].pseudo) }

// AppendStringPseudonym appends system i's pseudonym of v as a value of the
// string field path, under the prepared subject key k: the 36 bytes that
// Project writes (after the Avro length) for that value, at any depth of
// the record. customer_id's pseudonym is SubjectPseudonymKey's.
func (p *Plan) AppendStringPseudonym(dst []byte, i int, path string, k *pseudonym.Key, v []byte, d *pseudonym.Deriver) []byte {
	return d.AppendKey(dst, k, p.systems[i].name, path, v)
}

// AppendIntPseudonym is AppendStringPseudonym for an int or long field.
func (p *Plan) AppendIntPseudonym(dst []byte, i int, path string, k *pseudonym.Key, v int64, d *pseudonym.Deriver) []byte {
	return d.AppendIntKey(dst, k, p.systems[i].name, path, v)
}
