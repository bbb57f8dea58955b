package policy

import (
	"bytes"

	"github.com/hygiene/pseudonymizer/processor/pseudonym"
)

// pseudoPrefix is the Avro length prefix of a pseudonym: zigzag(36).
const pseudoPrefix = pseudonym.Size << 1

// projector walks one input record and writes one system's output.
type projector struct {
	reader
	system string
	key    []byte
	pk     *pseudonym.Key // if set, used instead of key
	d      *pseudonym.Deriver
	// customerID and subject, when set, are the event's customer_id and
	// its pseudonym in this system, written without deriving it again.
	customerID, subject []byte
}

// Project appends to dst system i's output record (Avro binary of
// OutputSchema(i)) for the input record b, with pseudonyms derived from the
// subject key. It validates b as it goes, like Scan, and on error returns
// dst unchanged with a *DecodeError. It does not allocate in steady state
// (once dst and d have grown). It panics if i is out of range.
func (p *Plan) Project(dst []byte, i int, b []byte, key []byte, d *pseudonym.Deriver) ([]byte, error) {
	s := &p.systems[i]
	w := projector{reader: reader{b: b}, system: s.name, key: key, d: d}
	out, err := w.project(dst, &s.root)
	if err == nil && w.pos != len(b) {
		err = fail(w.pos, reasonTrailing)
	}
	if err != nil {
		return dst, err
	}
	return out, nil
}

// ProjectScanned is Project for an input record b that Scan accepted, with
// the customer's pseudonym in system i already at hand. It trusts that b's
// strings are valid UTF-8 (Scan checked them; lengths and bounds are still
// checked), and where it would derive the pseudonym of the top-level
// customer_id field and that field's value equals customerID, it writes
// subjectPseudonym instead: the value SubjectPseudonym(nil, i, key,
// customerID, d) returned. Its output is byte for byte that of Project; it
// saves one derivation and the UTF-8 checks per call. A subjectPseudonym
// that is not pseudonym.Size bytes long is ignored.
func (p *Plan) ProjectScanned(dst []byte, i int, b []byte, key, customerID, subjectPseudonym []byte, d *pseudonym.Deriver) ([]byte, error) {
	s := &p.systems[i]
	w := projector{reader: reader{b: b, scanned: true}, system: s.name, key: key, d: d}
	if len(subjectPseudonym) == pseudonym.Size {
		w.customerID, w.subject = customerID, subjectPseudonym
	}
	out, err := w.project(dst, &s.root)
	if err == nil && w.pos != len(b) {
		err = fail(w.pos, reasonTrailing)
	}
	if err != nil {
		return dst, err
	}
	return out, nil
}

// ProjectHead is ProjectScanned for a record b and the Head that Scan(b)
// returned, with the subject key prepared (k = d.Prepare(key)). Top-level
// fields that the system drops are passed over and kept ones copied by the
// offsets Scan recorded, without walking them again. Its output is byte for
// byte that of Project.
func (p *Plan) ProjectHead(dst []byte, i int, b []byte, h *Head, k *pseudonym.Key, subjectPseudonym []byte, d *pseudonym.Deriver) ([]byte, error) {
	s := &p.systems[i]
	w := projector{reader: reader{b: b, scanned: true}, system: s.name, pk: k, d: d}
	if len(subjectPseudonym) == pseudonym.Size {
		w.customerID, w.subject = h.CustomerID, subjectPseudonym
	}
	var out []byte
	var err error
	if root := &s.root; h.nOff == len(root.sub)+1 && root.act == actRecord && int(h.off[h.nOff-1]) == len(b) {
		out, err = w.projectTop(dst, root, h.off[:h.nOff])
	} else {
		out, err = w.project(dst, &s.root)
	}
	if err == nil && w.pos != len(b) {
		err = fail(w.pos, reasonTrailing)
	}
	if err != nil {
		return dst, err
	}
	return out, nil
}

// projectTop projects the top-level record by the field offsets off.
func (w *projector) projectTop(dst []byte, root *op, off []int32) ([]byte, error) {
	if err := w.enter(); err != nil {
		return dst, err
	}
	var err error
	for i := range root.sub {
		o := &root.sub[i]
		start, end := int(off[i]), int(off[i+1])
		if w.pos != start || end < start {
			return dst, fail(w.pos, "field offsets do not match the record")
		}
		switch o.act {
		case actDrop:
			w.pos = end
			continue
		case actKeep:
			dst = append(dst, w.b[start:end]...)
			w.pos = end
			continue
		}
		if dst, err = w.project(dst, o); err != nil {
			return dst, err
		}
	}
	w.depth--
	return dst, nil
}

// SubjectPseudonymKey is SubjectPseudonym with a prepared key.
func (p *Plan) SubjectPseudonymKey(dst []byte, i int, k *pseudonym.Key, customerID []byte, d *pseudonym.Deriver) []byte {
	return d.AppendKey(dst, k, p.systems[i].name, FieldCustomerID, customerID)
}

// SubjectUUID is SubjectPseudonymKey in binary form (see pseudonym.UUID).
func (p *Plan) SubjectUUID(i int, k *pseudonym.Key, customerID []byte, d *pseudonym.Deriver) pseudonym.UUID {
	return d.SumKey(k, p.systems[i].name, FieldCustomerID, customerID)
}

// SubjectPseudonym appends system i's pseudonym of the customer to dst: the
// record key of its output topic, equal to the value Project writes for
// customer_id.
func (p *Plan) SubjectPseudonym(dst []byte, i int, key []byte, customerID []byte, d *pseudonym.Deriver) []byte {
	return d.Append(dst, key, p.systems[i].name, FieldCustomerID, customerID)
}

func (w *projector) project(dst []byte, o *op) ([]byte, error) {
	switch o.act {
	case actDrop:
		return dst, w.skip(o.in)
	case actKeep:
		start := w.pos
		if err := w.skip(o.in); err != nil {
			return dst, err
		}
		return append(dst, w.b[start:w.pos]...), nil
	case actPseudo:
		n := o.in
		if nullable(n) >= 0 {
			start := w.pos
			i, err := w.unionIndex(n)
			if err != nil {
				return dst, err
			}
			dst = append(dst, w.b[start:w.pos]...)
			n = n.sub[i]
			if n.kind == kNull {
				return dst, nil
			}
		}
		return w.pseudo(dst, n, o.path)
	case actGen:
		return w.generalize(dst, o)
	}
	if err := w.enter(); err != nil {
		return dst, err
	}
	dst, err := w.projectNested(dst, o)
	w.depth--
	return dst, err
}

// pseudo reads a string, int or long and writes its pseudonym as a string.
func (w *projector) pseudo(dst []byte, n *node, path string) ([]byte, error) {
	switch n.kind {
	case kString:
		v, err := w.str()
		if err != nil {
			return dst, err
		}
		if w.subject != nil && path == FieldCustomerID && bytes.Equal(v, w.customerID) {
			return append(append(dst, pseudoPrefix), w.subject...), nil
		}
		if w.pk != nil {
			return w.d.AppendKey(append(dst, pseudoPrefix), w.pk, w.system, path, v), nil
		}
		return w.d.Append(append(dst, pseudoPrefix), w.key, w.system, path, v), nil
	case kInt, kLong:
		var v int64
		var err error
		if n.kind == kInt {
			v, err = w.int()
		} else {
			v, err = w.long()
		}
		if err != nil {
			return dst, err
		}
		if w.pk != nil {
			return w.d.AppendIntKey(append(dst, pseudoPrefix), w.pk, w.system, path, v), nil
		}
		return w.d.AppendInt(append(dst, pseudoPrefix), w.key, w.system, path, v), nil
	}
	return dst, fail(w.pos, "unsupported type")
}

func (w *projector) projectNested(dst []byte, o *op) ([]byte, error) {
	var err error
	switch o.act {
	case actRecord:
		for i := range o.sub {
			if dst, err = w.project(dst, &o.sub[i]); err != nil {
				return dst, err
			}
		}
		return dst, nil
	case actUnion:
		start := w.pos
		i, err := w.unionIndex(o.in)
		if err != nil {
			return dst, err
		}
		dst = append(dst, w.b[start:w.pos]...)
		return w.project(dst, &o.sub[i])
	case actArray:
		for {
			count, end, err := w.blockHeader(itemMin(o.in))
			if err != nil {
				return dst, err
			}
			dst = appendLong(dst, count)
			if count == 0 {
				return dst, w.blockEnd(end)
			}
			if o.in.elem.min > 0 {
				for range count {
					if dst, err = w.project(dst, o.elem); err != nil {
						return dst, err
					}
				}
			}
			if err := w.blockEnd(end); err != nil {
				return dst, err
			}
		}
	case actMap:
		return w.projectMap(dst, o)
	}
	return dst, fail(w.pos, "unsupported type")
}

// projectMap writes the selected entries of a map as a single block.
func (w *projector) projectMap(dst []byte, o *op) ([]byte, error) {
	mark := len(dst)
	dst = append(dst, 0) // block count, patched below
	var kept int64
	for {
		count, end, err := w.blockHeader(itemMin(o.in))
		if err != nil {
			return dst, err
		}
		if count == 0 {
			if err := w.blockEnd(end); err != nil {
				return dst, err
			}
			break
		}
		for range count {
			start := w.pos
			k, err := w.str()
			if err != nil {
				return dst, err
			}
			var ko *op
			for j := range o.keys {
				if o.keys[j].key == string(k) {
					ko = &o.keys[j].op
					break
				}
			}
			if ko == nil {
				if err := w.skip(o.in.elem); err != nil {
					return dst, err
				}
				continue
			}
			dst = append(dst, w.b[start:w.pos]...)
			if dst, err = w.project(dst, ko); err != nil {
				return dst, err
			}
			kept++
		}
		if err := w.blockEnd(end); err != nil {
			return dst, err
		}
	}
	if kept == 0 {
		return dst, nil // the placeholder is the end marker
	}
	var buf [10]byte
	c := appendLong(buf[:0], kept)
	if len(c) > 1 {
		// Make room for a longer count.
		n := len(dst)
		dst = append(dst, c[1:]...)
		copy(dst[mark+len(c):], dst[mark+1:n])
	}
	copy(dst[mark:], c)
	return append(dst, 0), nil
}

// appendLong appends v as an Avro zigzag varint.
func appendLong(dst []byte, v int64) []byte {
	u := uint64(v<<1) ^ uint64(v>>63)
	for u >= 0x80 {
		dst = append(dst, byte(u)|0x80)
		u >>= 7
	}
	return append(dst, byte(u))
}
