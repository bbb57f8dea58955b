package policy

import (
	"math"
	"slices"
	"strings"
	"unicode/utf8"
)

// Kept is the walk over the strings that a Plan's systems keep, for the
// PII guard (processor/pii): it visits, once per record, every string
// that at least one system copies into its output (record fields, array
// items, map keys and values, nested records), and tells which systems
// keep each. It also locates the identifying strings of a record (see
// IDFields). It is immutable and safe for concurrent use.
type Kept struct {
	in      *node
	head    [4]int // the plan's: indices of event_id, order_id, customer_id, occurred_at
	root    *kop
	fields  []KeptField
	ids     []IDField
	systems int
}

// KeptField is a place in the input record where kept strings sit.
type KeptField struct {
	// Path names it by schema, never by data: dotted field names, with
	// ".*" for the values of a map kept whole and "[key]" for its keys;
	// a map key that a policy selects is named (attributes.utm_source).
	Path string
	// Systems[i] reports whether system i keeps it.
	Systems []bool
}

// IDField is a string field at a fixed place of the input record (not
// inside an array or map): a candidate identifier, whose raw value must
// not appear inside the strings a system keeps unless the system keeps
// the field itself.
type IDField struct {
	// Path is its dotted path.
	Path string
	// KeptBy[i] reports whether system i keeps it (then its value may
	// appear in system i's output anyway).
	KeptBy []bool
	steps  []int // field indices from the top-level record, through nullable unions
}

// kop is the compiled walk of one input value.
type kop struct {
	field int    // string: its index in fields; map: the field of its keys (-1: keys not kept)
	sub   []*kop // record fields or union branches; nil: nothing kept inside
	elem  *kop   // array items; map values not selected by key
	keys  []kkey // map values selected by key
}

type kkey struct {
	key string
	op  *kop
}

// Kept compiles the walk over the plan's kept strings.
func (p *Plan) Kept() *Kept {
	k := &Kept{in: p.in, head: p.head, systems: len(p.systems)}
	ops := make([]*op, len(p.systems))
	for i := range p.systems {
		ops[i] = &p.systems[i].root
	}
	k.root = k.build(p.in, ops, make([]bool, len(p.systems)), "")
	k.findIDs(p.in, ops, make([]bool, len(p.systems)), "", nil)
	return k
}

// Fields returns the kept-string fields; a field's index is what the
// StringSink receives.
func (k *Kept) Fields() []KeptField { return k.fields }

// IDFields returns the string fields at fixed places of the record, in
// schema order.
func (k *Kept) IDFields() []IDField { return k.ids }

func join(path, seg string) string {
	if path == "" {
		return seg
	}
	return path + "." + seg
}

func (k *Kept) addField(path string, keep []bool) int {
	k.fields = append(k.fields, KeptField{Path: path, Systems: slices.Clone(keep)})
	return len(k.fields) - 1
}

// build compiles the walk of value n, given each system's op for it (nil:
// the system has none here) and the systems that keep an enclosing value
// whole (inherited).
func (k *Kept) build(n *node, ops []*op, inherited []bool, path string) *kop {
	keep := slices.Clone(inherited)
	desc := make([]*op, len(ops))
	anyDesc := false
	for s, o := range ops {
		switch {
		case o == nil:
		case o.act == actKeep:
			keep[s] = true
		case o.act == actRecord || o.act == actUnion || o.act == actArray || o.act == actMap:
			desc[s] = o
			anyDesc = true
		}
	}
	anyKeep := slices.Contains(keep, true)
	if !anyKeep && !anyDesc {
		return nil
	}
	child := func(f func(o *op) *op) []*op {
		c := make([]*op, len(desc))
		for s, o := range desc {
			if o != nil {
				c[s] = f(o)
			}
		}
		return c
	}
	switch n.kind {
	case kString:
		if anyKeep {
			return &kop{field: k.addField(path, keep)}
		}
	case kRecord:
		o := &kop{sub: make([]*kop, len(n.sub))}
		found := false
		for i, f := range n.sub {
			o.sub[i] = k.build(f, child(func(o *op) *op {
				if o.act == actRecord {
					return &o.sub[i]
				}
				return nil
			}), keep, join(path, n.names[i]))
			found = found || o.sub[i] != nil
		}
		if found {
			return o
		}
	case kUnion:
		o := &kop{sub: make([]*kop, len(n.sub))}
		found := false
		for i, b := range n.sub {
			o.sub[i] = k.build(b, child(func(o *op) *op {
				if o.act == actUnion {
					return &o.sub[i]
				}
				return nil
			}), keep, path)
			found = found || o.sub[i] != nil
		}
		if found {
			return o
		}
	case kArray:
		if e := k.build(n.elem, child(func(o *op) *op {
			if o.act == actArray {
				return o.elem
			}
			return nil
		}), keep, path); e != nil {
			return &kop{elem: e}
		}
	case kMap:
		o := &kop{field: -1}
		if anyKeep {
			o.field = k.addField(path+"[key]", keep)
			o.elem = k.build(n.elem, make([]*op, len(ops)), keep, path+".*")
		}
		var keys []string
		for _, d := range desc {
			if d != nil && d.act == actMap {
				for _, ko := range d.keys {
					if !slices.Contains(keys, ko.key) {
						keys = append(keys, ko.key)
					}
				}
			}
		}
		for _, key := range keys {
			ko := k.build(n.elem, child(func(o *op) *op {
				if o.act == actMap {
					for j := range o.keys {
						if o.keys[j].key == key {
							return &o.keys[j].op
						}
					}
				}
				return nil
			}), keep, join(path, key))
			if ko != nil {
				o.keys = append(o.keys, kkey{key, ko})
			}
		}
		if o.field >= 0 || o.elem != nil || len(o.keys) > 0 {
			return o
		}
	}
	return nil
}

// findIDs lists the string fields reachable through records and nullable
// unions, with the systems that keep each.
func (k *Kept) findIDs(n *node, ops []*op, kept []bool, path string, steps []int) {
	kept = slices.Clone(kept)
	for s, o := range ops {
		if o != nil && o.act == actKeep {
			kept[s] = true
		}
	}
	switch n.kind {
	case kString:
		if path != "" {
			k.ids = append(k.ids, IDField{Path: path, KeptBy: kept, steps: slices.Clone(steps)})
		}
	case kUnion:
		i := nullable(n)
		if i < 0 {
			return
		}
		sub := make([]*op, len(ops))
		for s, o := range ops {
			if o != nil && o.act == actUnion {
				sub[s] = &o.sub[i]
			}
		}
		k.findIDs(n.sub[i], sub, kept, path, steps)
	case kRecord:
		if len(steps) >= maxDepth/2 {
			return
		}
		for i, f := range n.sub {
			sub := make([]*op, len(ops))
			for s, o := range ops {
				if o != nil && o.act == actRecord {
					sub[s] = &o.sub[i]
				}
			}
			k.findIDs(f, sub, kept, join(path, n.names[i]), append(steps, i))
		}
	}
}

// StringSink receives what Walk finds.
type StringSink interface {
	// KeptString receives a kept string of field (an index in Fields):
	// its length prefix starts at b[lenAt], its bytes are b[at:end].
	KeptString(field, lenAt, at, end int)
	// SizedBlock receives an array or map block header written with a
	// byte size, b[at:end], on the way to kept strings: a record whose
	// kept strings change length must rewrite it (as a plain count).
	SizedBlock(at, end int, count int64)
}

// Walk visits the kept strings of b, a record that Scan accepted with
// head h, in the order of their offsets. It does not allocate.
func (k *Kept) Walk(b []byte, h *Head, sink StringSink) error {
	if k.root == nil {
		return nil
	}
	w := keptWalker{reader: reader{b: b, scanned: true}, sink: sink}
	if h.nOff == len(k.in.sub)+1 {
		for i, o := range k.root.sub {
			if o == nil {
				continue
			}
			w.pos = int(h.off[i])
			if err := w.walk(o, k.in.sub[i]); err != nil {
				return err
			}
		}
		return nil
	}
	return w.walk(k.root, k.in)
}

type keptWalker struct {
	reader
	sink StringSink
}

// Scan is Plan.Scan, and Walk in the same pass: it validates b as one
// record of the input schema and returns its head, and meanwhile hands
// the kept strings to sink. Its result and errors are Plan.Scan's; sink
// may have received strings of a record that then fails. It does not
// allocate unless it fails.
func (k *Kept) Scan(b []byte, sink StringSink) (Head, error) {
	w := keptWalker{reader: reader{b: b}, sink: sink}
	var h Head
	record := len(k.in.sub) <= maxHeadFields && len(b) <= math.MaxInt32
	for i, f := range k.in.sub {
		if record {
			h.off[i] = int32(w.pos)
		}
		var o *kop
		if k.root != nil {
			o = k.root.sub[i]
		}
		var err error
		switch i {
		case k.head[0], k.head[1], k.head[2]:
			lenAt := w.pos
			var v []byte
			if v, err = w.str(); err != nil {
				break
			}
			switch i {
			case k.head[0]:
				h.EventID = v
			case k.head[1]:
				h.OrderID = v
			default:
				h.CustomerID = v
			}
			if o != nil {
				sink.KeptString(o.field, lenAt, w.pos-len(v), w.pos)
			}
		case k.head[3]:
			h.OccurredAt, err = w.long()
		default:
			err = w.walk(o, f)
		}
		if err != nil {
			return Head{}, err
		}
	}
	if w.pos != len(b) {
		return Head{}, fail(w.pos, reasonTrailing)
	}
	if record {
		h.off[len(k.in.sub)] = int32(w.pos)
		h.nOff = len(k.in.sub) + 1
	}
	return h, nil
}

func (w *keptWalker) walk(o *kop, n *node) error {
	switch n.kind {
	case kString:
		lenAt := w.pos
		at, err := w.span()
		if err != nil {
			return err
		}
		if o != nil {
			w.sink.KeptString(o.field, lenAt, at, w.pos)
		}
		return nil
	case kInt, kLong:
		if !w.scanned {
			return w.skip(n) // validates the range
		}
		return w.skipVarint()
	}
	if o == nil {
		return w.skip(n)
	}
	if err := w.enter(); err != nil {
		return err
	}
	err := w.walkNested(o, n)
	w.depth--
	return err
}

// walkNested is walk for records, unions, arrays and maps.
func (w *keptWalker) walkNested(o *kop, n *node) error {
	switch n.kind {
	case kRecord:
		for i, f := range n.sub {
			if err := w.walk(o.sub[i], f); err != nil {
				return err
			}
		}
		return nil
	case kUnion:
		i, err := w.unionIndex(n)
		if err != nil {
			return err
		}
		return w.walk(o.sub[i], n.sub[i])
	case kArray, kMap:
		for {
			at := w.pos
			count, end, err := w.blockHeader(itemMin(n))
			if err != nil {
				return err
			}
			if end >= 0 {
				w.sink.SizedBlock(at, w.pos, count)
			}
			if count == 0 {
				return w.blockEnd(end)
			}
			for range count {
				eo := o.elem
				if n.kind == kMap {
					lenAt := w.pos
					at, err := w.span()
					if err != nil {
						return err
					}
					key := w.b[at:w.pos]
					if o.field >= 0 {
						w.sink.KeptString(o.field, lenAt, at, w.pos)
					}
					for j := range o.keys {
						if o.keys[j].key == string(key) {
							eo = o.keys[j].op
							break
						}
					}
				}
				if err := w.walk(eo, n.elem); err != nil {
					return err
				}
			}
			if err := w.blockEnd(end); err != nil {
				return err
			}
		}
	}
	return w.skip(n)
}

// span moves past a string of a scanned record and returns where its bytes
// start; one-byte lengths (up to 63 bytes) take the short way.
func (w *keptWalker) span() (int, error) {
	if w.pos < len(w.b) {
		if c := w.b[w.pos]; c < 0x80 && c&1 == 0 {
			at := w.pos + 1
			if end := at + int(c>>1); end <= len(w.b) && (w.scanned || utf8.Valid(w.b[at:end])) {
				w.pos = end
				return at, nil
			}
		}
	}
	v, err := w.str()
	if err != nil {
		return 0, err
	}
	return w.pos - len(v), nil
}

// skipVarint moves past an int or long.
func (w *keptWalker) skipVarint() error {
	for i := 0; i < 10 && w.pos < len(w.b); i++ {
		c := w.b[w.pos]
		w.pos++
		if c < 0x80 {
			return nil
		}
	}
	return fail(w.pos, reasonTruncated)
}

// IDValues sets dst[i] to the value of IDFields()[i] in b (a record that
// Scan accepted with head h) for each i with want[i], and to nil for the
// others and for null values. Values longer than maxLen bytes may be left
// nil too: a top-level field whose encoded size says so is not read (a
// negative maxLen reads every value). It does not allocate.
func (k *Kept) IDValues(b []byte, h *Head, want []bool, maxLen int, dst [][]byte) error {
	offsets := h.nOff == len(k.in.sub)+1
	for i := range k.ids {
		dst[i] = nil
		f := &k.ids[i]
		if !want[i] {
			continue
		}
		if offsets && maxLen >= 0 && len(f.steps) == 1 {
			// A string of n < 64 bytes takes n+1 bytes, n+2 in a union;
			// longer ones take at most 11 more.
			size := int(h.off[f.steps[0]+1] - h.off[f.steps[0]])
			if size-2 > maxLen && (size <= 65 || size-12 > maxLen) {
				continue
			}
		}
		v, err := k.idValue(b, h, f)
		if err != nil {
			return err
		}
		dst[i] = v
	}
	return nil
}

func (k *Kept) idValue(b []byte, h *Head, f *IDField) ([]byte, error) {
	r := reader{b: b, scanned: true}
	n := k.in
	for d, step := range f.steps {
		if d == 0 && h.nOff == len(k.in.sub)+1 {
			r.pos = int(h.off[step])
		} else {
			for _, prev := range n.sub[:step] {
				if err := r.skip(prev); err != nil {
					return nil, err
				}
			}
		}
		n = n.sub[step]
		for n.kind == kUnion {
			i, err := r.unionIndex(n)
			if err != nil {
				return nil, err
			}
			if n.sub[i].kind == kNull {
				return nil, nil
			}
			n = n.sub[i]
		}
	}
	if n.kind != kString {
		return nil, nil
	}
	return r.str()
}

// SuggestsPersonalData reports whether a field path's last segment names
// personal data (email, phone, name, street, address line, IP address,
// birth date...), for warnings about kept fields and the default
// identifier fields of the PII guard.
func SuggestsPersonalData(path string) bool {
	seg := strings.ToLower(path[strings.LastIndexByte(path, '.')+1:])
	for _, w := range []string{"email", "e_mail", "mail", "phone", "mobile", "fax", "name", "street", "line1", "line2",
		"address", "ip", "ip_address", "ipaddress", "birth", "dob", "iban", "card", "passport", "ssn", "tax_id", "user_agent", "device_id", "imei"} {
		if seg == w || strings.HasPrefix(seg, w+"_") || strings.HasSuffix(seg, "_"+w) {
			return true
		}
	}
	return false
}

// StringEdit replaces the string whose length prefix starts at b[LenAt]
// and whose bytes end at b[End] by Value.
type StringEdit struct {
	LenAt, End int
	Value      []byte
}

// BlockHeader is an array or map block header b[At:End] written with a
// byte size, as StringSink.SizedBlock received it.
type BlockHeader struct {
	At, End int
	Count   int64
}

// AppendEdited appends to dst the record b with the strings of edits
// replaced and the headers rewritten as plain counts (so that block byte
// sizes cannot go stale). Both lists must be in ascending order and must
// not overlap, as Walk reports them; the result is a valid record of the
// input schema if b was.
func AppendEdited(dst, b []byte, edits []StringEdit, headers []BlockHeader) []byte {
	pos := 0
	i, j := 0, 0
	for i < len(edits) || j < len(headers) {
		if j >= len(headers) || i < len(edits) && edits[i].LenAt < headers[j].At {
			e := &edits[i]
			dst = append(dst, b[pos:e.LenAt]...)
			dst = appendLong(dst, int64(len(e.Value)))
			dst = append(dst, e.Value...)
			pos = e.End
			i++
			continue
		}
		h := &headers[j]
		dst = append(dst, b[pos:h.At]...)
		dst = appendLong(dst, h.Count)
		pos = h.End
		j++
	}
	return append(dst, b[pos:]...)
}
