package lookup

import (
	"bytes"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode/utf16"
	"unicode/utf8"

	"github.com/hygiene/pseudonymizer/processor"
	"github.com/hygiene/pseudonymizer/processor/policy"
)

// Request size limits. A value or ID above them is refused with 400 and
// a message naming the limit.
const (
	// MaxBodyBytes bounds a request body.
	MaxBodyBytes = 64 << 10
	// MaxIDBytes bounds customer_id, as in the stream (processor.MaxIDBytes).
	MaxIDBytes = processor.MaxIDBytes
	// MaxValueBytes bounds each of values.
	MaxValueBytes = 4096
	// MaxValues bounds the number of values.
	MaxValues = 64
)

// Request is a decoded, validated lookup request.
type Request struct {
	// CustomerID is the raw customer ID.
	CustomerID string
	// OccurredAt is the event's occurred_at, in milliseconds as the stream
	// carries it.
	OccurredAt time.Time
	// Values are the raw values to pseudonymize, by field.
	Values []Value
	// Systems are the indices (in the Plan) of the systems asked for, in
	// request order, without repeats.
	Systems []int
}

// Value is one raw value of a pseudonymized field.
type Value struct {
	Field policy.Field
	Str   []byte // for KindString
	Int   int64  // for KindInt and KindLong
}

// BadRequestError is a request the caller must change: its message names
// the member and the rule it breaks, never a value the caller sent.
type BadRequestError struct{ Msg string }

func (e *BadRequestError) Error() string { return e.Msg }

func bad(format string, args ...any) error {
	return &BadRequestError{Msg: fmt.Sprintf(format, args...)}
}

// schemaInfo is what the decoder knows of the configured systems.
type schemaInfo struct {
	systems map[string]int          // name -> index in the Plan
	fields  map[string]policy.Field // every path some system pseudonymizes, but customer_id
	known   string                  // the field names, for messages
}

func newSchemaInfo(plan *policy.Plan) *schemaInfo {
	si := &schemaInfo{systems: map[string]int{}, fields: map[string]policy.Field{}}
	var names []string
	for i, name := range plan.Systems() {
		si.systems[name] = i
		for _, f := range plan.Pseudonymized(i) {
			if f.Path == policy.FieldCustomerID {
				continue
			}
			if _, ok := si.fields[f.Path]; !ok {
				names = append(names, f.Path)
			}
			si.fields[f.Path] = f
		}
	}
	si.known = strings.Join(names, ", ")
	if si.known == "" {
		si.known = "none"
	}
	return si
}

// decodeRequest reads and validates a request body; now is the default
// occurred_at. Every error is a *BadRequestError.
//
// It is written by hand for the small fixed schema, in one pass over the
// body and with few allocations, and answers as encoding/json's Decoder
// (with DisallowUnknownFields, into a struct of *string, *string,
// map[string]json.RawMessage and []json.RawMessage) did before it, message
// for message: members are matched case-insensitively and a later one
// overrides an earlier one (repeated values objects merge, as into one
// map), null is as if the member were absent, strings are unquoted as
// encoding/json unquotes them (invalid UTF-8 and lone surrogates become
// U+FFFD), nesting is bounded at 10,000 levels, the first syntax error is
// reported by its byte offset, and otherwise the first member of the wrong
// type or unknown; a body with several bad values gets the message of the
// first in key order. FuzzDecodeRequestEquivalence checks this against
// the encoding/json decoder (request_std_test.go).
func (si *schemaInfo) decodeRequest(body []byte, now time.Time) (*Request, error) {
	if len(body) > MaxBodyBytes {
		return nil, bad("request body is larger than %d bytes", MaxBodyBytes)
	}
	var room struct { // for the usual request, in one allocation
		values  [8]rawMember
		systems [8][]byte
	}
	p := reqParser{b: body, maxSystems: len(si.systems), values: room.values[:0], systems: room.systems[:0]}
	if err := p.parse(); err != nil {
		return nil, err
	}
	r := &Request{}
	switch {
	case !p.hasID:
		return nil, bad("customer_id is required")
	case len(p.id) == 0:
		return nil, bad("customer_id is empty")
	case len(p.id) > MaxIDBytes:
		return nil, bad("customer_id is longer than %d bytes", MaxIDBytes)
	}
	r.CustomerID = string(p.id)
	if !p.hasAt {
		r.OccurredAt = time.UnixMilli(now.UnixMilli())
	} else {
		t, err := time.Parse(time.RFC3339Nano, string(p.at))
		if err != nil {
			return nil, bad("occurred_at is not an RFC 3339 date-time")
		}
		if y := t.UTC().Year(); y < 1 || y > 9999 {
			return nil, bad("occurred_at is outside the years 1 to 9999")
		}
		// The stream carries occurred_at in milliseconds.
		r.OccurredAt = time.UnixMilli(t.UnixMilli())
	}
	if p.nSystems == 0 {
		return nil, bad("systems is required and must name at least one system")
	}
	if p.nSystems > len(si.systems) {
		return nil, bad("systems names more than the %d configured systems", len(si.systems))
	}
	r.Systems = make([]int, 0, p.nSystems)
	var name [64]byte
	for i, raw := range p.systems {
		var n []byte
		switch raw[0] {
		case '"':
			n = appendUnquoted(name[:0], raw)
		case 'n': // null: the empty name, as encoding/json leaves a string
		default:
			return nil, bad("systems[%d] is not a string", i)
		}
		sys, ok := si.systems[string(n)]
		if !ok {
			return nil, bad("systems[%d] is not a configured system", i)
		}
		if slices.Contains(r.Systems, sys) {
			return nil, bad("systems[%d] repeats a system", i)
		}
		r.Systems = append(r.Systems, sys)
	}
	if p.valuesOver {
		return nil, bad("values has more than %d members", MaxValues)
	}
	if len(p.values) == 0 {
		return r, nil
	}
	slices.SortFunc(p.values, func(a, b rawMember) int { return bytes.Compare(a.key, b.key) })
	r.Values = make([]Value, 0, len(p.values))
	var strs []byte // the values' strings, one allocation for all
	for _, m := range p.values {
		f, ok := si.fields[string(m.key)]
		if !ok {
			if string(m.key) == policy.FieldCustomerID {
				return nil, bad("values must not contain customer_id: it is the request's customer_id")
			}
			return nil, bad("values has a member that no configured system pseudonymizes (they are: %s)", si.known)
		}
		if m.raw[0] == '"' && strs == nil {
			strs = make([]byte, 0, len(body))
		}
		v, err := decodeValue(f, m.raw, &strs)
		if err != nil {
			return nil, err
		}
		r.Values = append(r.Values, v)
	}
	return r, nil
}

// decodeValue decodes one value of field f from its JSON text raw (valid
// JSON): a string for a string field; an integer, or a string holding
// one, for an int or long field. A string is unquoted onto *strs.
func decodeValue(f policy.Field, raw []byte, strs *[]byte) (Value, error) {
	v := Value{Field: f}
	var s []byte
	isString := raw[0] == '"'
	if isString {
		start := len(*strs)
		*strs = appendUnquoted(*strs, raw)
		s = (*strs)[start:len(*strs):len(*strs)]
		if len(s) > MaxValueBytes {
			return v, bad("values.%s is longer than %d bytes", f.Path, MaxValueBytes)
		}
	}
	if f.Kind == policy.KindString {
		if !isString {
			return v, bad("values.%s must be a string", f.Path)
		}
		v.Str = s
		return v, nil
	}
	if !isString {
		if len(raw) > 32 {
			return v, bad("values.%s must be an integer", f.Path)
		}
		s = raw
	}
	bits := 64
	if f.Kind == policy.KindInt {
		bits = 32
	}
	n, err := strconv.ParseInt(string(s), 10, bits)
	if err != nil {
		return v, bad("values.%s must be an integer of %d bits", f.Path, bits)
	}
	v.Int = n
	return v, nil
}

// maxNestingDepth is encoding/json's bound on nested arrays and objects.
const maxNestingDepth = 10000

// rawMember is a member of the values object: its unquoted key and its
// JSON text.
type rawMember struct{ key, raw []byte }

// reqParser parses a request body in one pass. Its slices point into the
// body (keys with escapes excepted).
type reqParser struct {
	b []byte
	i int
	// err is the first member of the wrong type or unknown: reported
	// if the body is well-formed JSON.
	err error

	id, at       []byte // unquoted
	hasID, hasAt bool
	// values are the members of the values object(s), without repeats;
	// valuesOver: more than MaxValues (then values are no longer kept).
	values     []rawMember
	valuesOver bool
	// systems are the first maxSystems+1 elements of systems; nSystems
	// counts them all.
	systems    [][]byte
	nSystems   int
	maxSystems int
}

// The request's members.
const (
	memberUnknown = iota
	memberCustomerID
	memberOccurredAt
	memberValues
	memberSystems
)

// member returns which member key names, matched as encoding/json matches
// a struct's fields: exactly, else case-insensitively (Unicode folding).
func member(key []byte) int {
	switch string(key) {
	case "customer_id":
		return memberCustomerID
	case "occurred_at":
		return memberOccurredAt
	case "values":
		return memberValues
	case "systems":
		return memberSystems
	}
	switch {
	case bytes.EqualFold(key, []byte("customer_id")):
		return memberCustomerID
	case bytes.EqualFold(key, []byte("occurred_at")):
		return memberOccurredAt
	case bytes.EqualFold(key, []byte("values")):
		return memberValues
	case bytes.EqualFold(key, []byte("systems")):
		return memberSystems
	}
	return memberUnknown
}

// syntaxError is the error for the byte at p.i, or for the body's end.
func (p *reqParser) syntaxError() error {
	if p.i >= len(p.b) {
		return bad("malformed JSON: the body is empty or ends early")
	}
	return bad("malformed JSON at byte %d", p.i+1)
}

// note records the first member of the wrong type or unknown.
func (p *reqParser) note(err error) {
	if p.err == nil {
		p.err = err
	}
}

func (p *reqParser) ws() {
	for p.i < len(p.b) {
		switch p.b[p.i] {
		case ' ', '\t', '\n', '\r':
			p.i++
		default:
			return
		}
	}
}

// parse parses the body into p, or returns the error encoding/json's
// Decoder would have (see decodeRequest).
func (p *reqParser) parse() error {
	p.ws()
	if p.i >= len(p.b) {
		return p.syntaxError()
	}
	if p.b[p.i] != '{' {
		isNull := p.b[p.i] == 'n'
		if err := p.skipValue(0); err != nil {
			return err
		}
		if !isNull {
			return bad("the request body must be a JSON object of customer_id, occurred_at, values and systems")
		}
	} else if err := p.object(); err != nil {
		return err
	}
	if p.err != nil {
		return p.err
	}
	p.ws()
	if p.i < len(p.b) {
		return bad("malformed JSON: data after the request object")
	}
	return nil
}

// object parses the request object at p.i.
func (p *reqParser) object() error {
	p.i++ // {
	p.ws()
	if p.i < len(p.b) && p.b[p.i] == '}' {
		p.i++
		return nil
	}
	for {
		key, err := p.key(nil)
		if err != nil {
			return err
		}
		m := member(key)
		if p.i >= len(p.b) {
			return p.syntaxError()
		}
		c := p.b[p.i]
		switch {
		case m == memberUnknown:
			p.note(bad("the request body has a member other than customer_id, occurred_at, values and systems"))
			err = p.skipValue(1)
		case c == 'n':
			err = p.skipValue(1)
			switch m {
			case memberCustomerID:
				p.id, p.hasID = nil, false
			case memberOccurredAt:
				p.at, p.hasAt = nil, false
			case memberValues:
				p.values, p.valuesOver = p.values[:0], false
			case memberSystems:
				p.systems, p.nSystems = p.systems[:0], 0
			}
		case c == '"' && (m == memberCustomerID || m == memberOccurredAt):
			var s []byte
			if s, err = p.str(nil); err == nil {
				if m == memberCustomerID {
					p.id, p.hasID = s, true
				} else {
					p.at, p.hasAt = s, true
				}
			}
		case c == '{' && m == memberValues:
			err = p.valuesObject()
		case c == '[' && m == memberSystems:
			err = p.systemsArray()
		default:
			p.note(bad("%s has the wrong type", [...]string{"", "customer_id", "occurred_at", "values", "systems"}[m]))
			err = p.skipValue(1)
		}
		if err != nil {
			return err
		}
		if done, err := p.next('}'); done || err != nil {
			return err
		}
	}
}

// next moves past what follows an element of an array or object: a comma
// (done is false: another element follows) or close, the end of the array
// or object (done is true).
func (p *reqParser) next(close byte) (done bool, err error) {
	p.ws()
	if p.i >= len(p.b) {
		return false, p.syntaxError()
	}
	switch p.b[p.i] {
	case ',':
		p.i++
		return false, nil
	case close:
		p.i++
		return true, nil
	}
	return false, p.syntaxError()
}

// key parses an object member's key and the colon after it, and skips
// the white space before its value. The key is unquoted onto dst (or is
// a slice of the body if it has no escapes and dst is nil).
func (p *reqParser) key(dst []byte) ([]byte, error) {
	p.ws()
	if p.i >= len(p.b) || p.b[p.i] != '"' {
		return nil, p.syntaxError()
	}
	k, err := p.str(dst)
	if err != nil {
		return nil, err
	}
	p.ws()
	if p.i >= len(p.b) || p.b[p.i] != ':' {
		return nil, p.syntaxError()
	}
	p.i++
	p.ws()
	return k, nil
}

// valuesObject parses the values object at p.i, merging its members into
// p.values.
func (p *reqParser) valuesObject() error {
	p.i++ // {
	p.ws()
	if p.i < len(p.b) && p.b[p.i] == '}' {
		p.i++
		return nil
	}
	for {
		key, err := p.key(nil)
		if err != nil {
			return err
		}
		start := p.i
		if err := p.skipValue(2); err != nil {
			return err
		}
		p.addValue(key, p.b[start:p.i])
		if done, err := p.next('}'); done || err != nil {
			return err
		}
	}
}

// addValue sets a member of values (a later one replaces an earlier one
// of the same key).
func (p *reqParser) addValue(key, raw []byte) {
	if p.valuesOver {
		return // more than MaxValues whatever follows, until a null
	}
	for k := range p.values {
		if bytes.Equal(p.values[k].key, key) {
			p.values[k].raw = raw
			return
		}
	}
	if len(p.values) == MaxValues {
		p.values, p.valuesOver = p.values[:0], true
		return
	}
	p.values = append(p.values, rawMember{key: key, raw: raw})
}

// systemsArray parses the systems array at p.i, replacing p.systems.
func (p *reqParser) systemsArray() error {
	p.i++ // [
	p.systems, p.nSystems = p.systems[:0], 0
	p.ws()
	if p.i < len(p.b) && p.b[p.i] == ']' {
		p.i++
		return nil
	}
	for {
		p.ws()
		start := p.i
		if err := p.skipValue(2); err != nil {
			return err
		}
		if p.nSystems <= p.maxSystems {
			p.systems = append(p.systems, p.b[start:p.i])
		}
		p.nSystems++
		if done, err := p.next(']'); done || err != nil {
			return err
		}
	}
}

// str parses the string at p.i (which is '"') and returns it unquoted
// onto dst, or, if it has no escapes or invalid UTF-8 and dst is nil, as
// a slice of the body.
func (p *reqParser) str(dst []byte) ([]byte, error) {
	start := p.i
	p.i++
	plain := true
	for {
		if p.i >= len(p.b) {
			return nil, p.syntaxError()
		}
		c := p.b[p.i]
		switch {
		case c == '"':
			p.i++
			if plain && dst == nil {
				return p.b[start+1 : p.i-1], nil
			}
			return appendUnquoted(dst, p.b[start:p.i]), nil
		case c == '\\':
			plain = false
			p.i++
			if p.i >= len(p.b) {
				return nil, p.syntaxError()
			}
			switch p.b[p.i] {
			case '"', '\\', '/', 'b', 'f', 'n', 'r', 't':
				p.i++
			case 'u':
				p.i++
				for range 4 {
					if p.i >= len(p.b) {
						return nil, p.syntaxError()
					}
					if _, ok := unhex(p.b[p.i]); !ok {
						return nil, p.syntaxError()
					}
					p.i++
				}
			default:
				return nil, p.syntaxError()
			}
		case c < 0x20:
			return nil, p.syntaxError()
		case c < utf8.RuneSelf:
			p.i++
		default:
			r, n := utf8.DecodeRune(p.b[p.i:])
			if r == utf8.RuneError && n == 1 {
				plain = false
			}
			p.i += n
		}
	}
}

// skipValue checks the JSON value at p.i, nested in depth arrays and
// objects, and moves past it.
func (p *reqParser) skipValue(depth int) error {
	var open [32]byte // the arrays ('[') and objects ('{') open in it
	stack := open[:0]
	for {
		// A value starts at p.i.
		p.ws()
		if p.i >= len(p.b) {
			return p.syntaxError()
		}
		closed := true // the value at p.i is a scalar
		switch c := p.b[p.i]; c {
		case '{', '[':
			if depth+len(stack)+1 > maxNestingDepth {
				return p.syntaxError()
			}
			stack = append(stack, c)
			p.i++
			p.ws()
			if p.i < len(p.b) && p.b[p.i] == c+2 { // } or ]
				p.i++
				stack = stack[:len(stack)-1]
			} else if c == '{' {
				if _, err := p.key(nil); err != nil {
					return err
				}
				closed = false
			} else {
				closed = false
			}
		case '"':
			if err := p.skipString(); err != nil {
				return err
			}
		case 't':
			if err := p.literal("true"); err != nil {
				return err
			}
		case 'f':
			if err := p.literal("false"); err != nil {
				return err
			}
		case 'n':
			if err := p.literal("null"); err != nil {
				return err
			}
		default:
			if err := p.number(); err != nil {
				return err
			}
		}
		if !closed {
			continue
		}
		// After a value: close what it ends, up to the next value.
		for {
			if len(stack) == 0 {
				return nil
			}
			p.ws()
			if p.i >= len(p.b) {
				return p.syntaxError()
			}
			top, c := stack[len(stack)-1], p.b[p.i]
			if c == top+2 {
				p.i++
				stack = stack[:len(stack)-1]
				continue
			}
			if c != ',' {
				return p.syntaxError()
			}
			p.i++
			if top == '{' {
				if _, err := p.key(nil); err != nil {
					return err
				}
			}
			break
		}
	}
}

// skipString checks the string at p.i and moves past it.
func (p *reqParser) skipString() error {
	p.i++
	for {
		if p.i >= len(p.b) {
			return p.syntaxError()
		}
		switch c := p.b[p.i]; {
		case c == '"':
			p.i++
			return nil
		case c == '\\':
			p.i++
			if p.i >= len(p.b) {
				return p.syntaxError()
			}
			switch p.b[p.i] {
			case '"', '\\', '/', 'b', 'f', 'n', 'r', 't':
				p.i++
			case 'u':
				p.i++
				for range 4 {
					if p.i >= len(p.b) {
						return p.syntaxError()
					}
					if _, ok := unhex(p.b[p.i]); !ok {
						return p.syntaxError()
					}
					p.i++
				}
			default:
				return p.syntaxError()
			}
		case c < 0x20:
			return p.syntaxError()
		default:
			p.i++
		}
	}
}

// literal checks the literal lit at p.i and moves past it.
func (p *reqParser) literal(lit string) error {
	for k := 0; k < len(lit); k++ {
		if p.i >= len(p.b) || p.b[p.i] != lit[k] {
			return p.syntaxError()
		}
		p.i++
	}
	return nil
}

// number checks the number at p.i and moves past it: -?(0|[1-9][0-9]*)
// (.[0-9]+)?([eE][+-]?[0-9]+)?
func (p *reqParser) number() error {
	if p.b[p.i] == '-' {
		p.i++
	}
	if p.i >= len(p.b) {
		return p.syntaxError()
	}
	switch c := p.b[p.i]; {
	case c == '0':
		p.i++
	case c >= '1' && c <= '9':
		p.digits()
	default:
		return p.syntaxError()
	}
	if p.i < len(p.b) && p.b[p.i] == '.' {
		p.i++
		if p.i >= len(p.b) || !isDigit(p.b[p.i]) {
			return p.syntaxError()
		}
		p.digits()
	}
	if p.i < len(p.b) && (p.b[p.i] == 'e' || p.b[p.i] == 'E') {
		p.i++
		if p.i < len(p.b) && (p.b[p.i] == '+' || p.b[p.i] == '-') {
			p.i++
		}
		if p.i >= len(p.b) || !isDigit(p.b[p.i]) {
			return p.syntaxError()
		}
		p.digits()
	}
	return nil
}

func (p *reqParser) digits() {
	for p.i < len(p.b) && isDigit(p.b[p.i]) {
		p.i++
	}
}

func isDigit(c byte) bool { return c >= '0' && c <= '9' }

// appendUnquoted appends the JSON string q (quotes included, checked by
// the parser) unquoted, as encoding/json unquotes: invalid UTF-8 and
// lone surrogates become U+FFFD.
func appendUnquoted(dst, q []byte) []byte {
	s := q[1 : len(q)-1]
	for r := 0; r < len(s); {
		c := s[r]
		switch {
		case c == '\\':
			r++
			switch s[r] {
			case 'b':
				dst = append(dst, '\b')
			case 'f':
				dst = append(dst, '\f')
			case 'n':
				dst = append(dst, '\n')
			case 'r':
				dst = append(dst, '\r')
			case 't':
				dst = append(dst, '\t')
			case 'u':
				rr := hex4(s[r+1:])
				r += 5
				if utf16.IsSurrogate(rr) {
					if r+6 <= len(s) && s[r] == '\\' && s[r+1] == 'u' {
						if dec := utf16.DecodeRune(rr, hex4(s[r+2:])); dec != utf8.RuneError {
							r += 6
							dst = utf8.AppendRune(dst, dec)
							continue
						}
					}
					rr = utf8.RuneError
				}
				dst = utf8.AppendRune(dst, rr)
				continue
			default: // " \ /
				dst = append(dst, s[r])
			}
			r++
		case c < utf8.RuneSelf:
			dst = append(dst, c)
			r++
		default:
			rr, n := utf8.DecodeRune(s[r:])
			dst = utf8.AppendRune(dst, rr) // RuneError for invalid UTF-8
			r += n
		}
	}
	return dst
}

// hex4 decodes the 4 hex digits that start s (checked by the parser).
func hex4(s []byte) rune {
	var r rune
	for _, c := range s[:4] {
		h, _ := unhex(c)
		r = r<<4 | rune(h)
	}
	return r
}
