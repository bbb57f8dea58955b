package policy

import (
	"errors"
	"fmt"
	"maps"
	"math"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/hamba/avro/v2"
)

// Generalization is the transform of one kept field (Policy.Generalize):
// exactly one of its fields is set. A generalized field keeps its type in
// the output schema, so consumers read it as before; the field's doc says
// what was done.
type Generalization struct {
	// Truncate rounds a timestamp (long, logical type timestamp-millis or
	// timestamp-micros) down to a multiple of a unit since the Unix epoch
	// in UTC: a Go duration (30m, 1h) or whole days (1d, 7d). See ParseUnit.
	Truncate string `yaml:"truncate"`
	// Round rounds an int or long (an amount in minor units) to the
	// nearest multiple of Round, halves away from zero; at least 2.
	Round int64 `yaml:"round"`
	// Prefix keeps the first Prefix characters (Unicode code points) of a
	// string, such as a postal code; at least 1.
	Prefix int `yaml:"prefix"`
}

// Limits of a Generalization.
const (
	// MaxUnit is the longest truncation unit.
	MaxUnit   = 3660 * 24 * time.Hour
	maxPrefix = 1000
	// DefaultTimeUnit is the precision of the record timestamps (and
	// erasure notices' requested_at) of a system that keeps no
	// occurred_at, unless its time_unit says otherwise.
	DefaultTimeUnit = time.Hour
)

// ParseUnit parses a truncation unit: a Go duration (time.ParseDuration,
// such as 15m, 1h or 1h30m) or a whole number of days written with a d
// (1d, 7d). It must be a positive whole number of milliseconds, at most
// MaxUnit.
func ParseUnit(s string) (time.Duration, error) {
	var d time.Duration
	if days, ok := strings.CutSuffix(s, "d"); ok && days != "" && strings.Trim(days, "0123456789") == "" {
		n, err := strconv.ParseInt(days, 10, 64)
		if err != nil || n > int64(MaxUnit/(24*time.Hour)) {
			return 0, fmt.Errorf("unit %q: more than %d days", s, MaxUnit/(24*time.Hour))
		}
		d = time.Duration(n) * 24 * time.Hour
	} else {
		var err error
		if d, err = time.ParseDuration(s); err != nil {
			return 0, fmt.Errorf("unit %q: not a duration such as 1h or 1d", s)
		}
	}
	switch {
	case d <= 0:
		return 0, fmt.Errorf("unit %q: must be positive", s)
	case d%time.Millisecond != 0:
		return 0, fmt.Errorf("unit %q: must be a whole number of milliseconds", s)
	case d > MaxUnit:
		return 0, fmt.Errorf("unit %q: longer than %d days", s, MaxUnit/(24*time.Hour))
	}
	return d, nil
}

// FormatUnit writes a unit as ParseUnit reads it: whole days as 1d, other
// units as Go durations.
func FormatUnit(d time.Duration) string {
	if d >= 24*time.Hour && d%(24*time.Hour) == 0 {
		return strconv.FormatInt(int64(d/(24*time.Hour)), 10) + "d"
	}
	s := d.String()
	if strings.HasSuffix(s, "m0s") {
		s = s[:len(s)-2]
	}
	if strings.HasSuffix(s, "h0m") {
		s = s[:len(s)-2]
	}
	return s
}

// genKind is what a gen does.
type genKind uint8

const (
	genTruncate genKind = iota + 1
	genRound
	genPrefix
)

// gen is a compiled Generalization for one field.
type gen struct {
	kind genKind
	// n is the truncation unit in the field's units (ms or µs), the
	// rounding multiple or the number of characters.
	n    int64
	unit time.Duration // genTruncate: the unit
}

// String describes the transform for a schema doc.
func (g *gen) String() string {
	switch g.kind {
	case genTruncate:
		return "truncated to " + FormatUnit(g.unit) + " (UTC, since the Unix epoch)"
	case genRound:
		return "rounded to the nearest multiple of " + strconv.FormatInt(g.n, 10)
	}
	return "cut to its first " + strconv.FormatInt(g.n, 10) + " characters"
}

// compileGen checks a Generalization against the kept value n (nullable
// allowed) at path and compiles it.
func compileGen(n *node, path string, g Generalization) (*gen, error) {
	set := 0
	for _, b := range []bool{g.Truncate != "", g.Round != 0, g.Prefix != 0} {
		if b {
			set++
		}
	}
	if set != 1 {
		return nil, fmt.Errorf("generalize %q: give exactly one of truncate, round and prefix", path)
	}
	v := n
	if i := nullable(n); i >= 0 {
		v = n.sub[i]
	}
	switch {
	case g.Truncate != "":
		unit, err := ParseUnit(g.Truncate)
		if err != nil {
			return nil, fmt.Errorf("generalize %q: truncate: %w", path, err)
		}
		per := timestampUnit(v)
		if per == 0 {
			return nil, fmt.Errorf("generalize %q: truncate needs a long with logical type timestamp-millis or timestamp-micros", path)
		}
		return &gen{kind: genTruncate, n: int64(unit / per), unit: unit}, nil
	case g.Round != 0:
		if v.kind != kInt && v.kind != kLong {
			return nil, fmt.Errorf("generalize %q: round needs an int or long", path)
		}
		if g.Round < 2 || v.kind == kInt && g.Round > math.MaxInt32 {
			return nil, fmt.Errorf("generalize %q: round must be at least 2 and fit the field", path)
		}
		return &gen{kind: genRound, n: g.Round}, nil
	}
	if v.kind != kString {
		return nil, fmt.Errorf("generalize %q: prefix needs a string", path)
	}
	if g.Prefix < 1 || g.Prefix > maxPrefix {
		return nil, fmt.Errorf("generalize %q: prefix must be 1 to %d", path, maxPrefix)
	}
	return &gen{kind: genPrefix, n: int64(g.Prefix)}, nil
}

// timestampUnit is the unit of a timestamp long, or 0 for other values.
func timestampUnit(n *node) time.Duration {
	if n.kind != kLong {
		return 0
	}
	ps, ok := n.schema.(*avro.PrimitiveSchema)
	if !ok || ps.Logical() == nil {
		return 0
	}
	switch ps.Logical().Type() {
	case avro.TimestampMillis, avro.LocalTimestampMillis:
		return time.Millisecond
	case avro.TimestampMicros, avro.LocalTimestampMicros:
		return time.Microsecond
	}
	return 0
}

// apply generalizes an integer value.
func (g *gen) apply(v int64, lo, hi int64) int64 {
	if g.kind == genTruncate {
		return floorMultiple(v, g.n)
	}
	return roundMultiple(v, g.n, lo, hi)
}

// floorMultiple is the largest multiple of m (> 0) at most v; for the few
// values where that does not fit an int64, the smallest multiple above.
func floorMultiple(v, m int64) int64 {
	r := v % m
	if r >= 0 {
		return v - r
	}
	if v-r < math.MinInt64+m { // the multiple below does not fit
		return v - r
	}
	return v - r - m
}

// roundMultiple is the multiple of m (> 1) nearest v, halves away from
// zero, within [lo, hi] (it goes towards zero where that would not fit).
func roundMultiple(v, m, lo, hi int64) int64 {
	q := v - v%m // towards zero: always in range
	r := v % m
	switch {
	case r > 0 && r >= m-r && q <= hi-m:
		return q + m
	case r < 0 && -r >= m+r && q >= lo+m:
		return q - m
	}
	return q
}

// prefixLen is the byte length of the first n code points of s.
func prefixLen(s []byte, n int64) int {
	i := 0
	for ; n > 0 && i < len(s); n-- {
		if s[i] < utf8.RuneSelf {
			i++
			continue
		}
		_, size := utf8.DecodeRune(s[i:])
		i += size
	}
	return i
}

// generalize reads a kept value and writes it generalized.
func (w *projector) generalize(dst []byte, o *op) ([]byte, error) {
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
	switch n.kind {
	case kLong:
		v, err := w.long()
		if err != nil {
			return dst, err
		}
		return appendLong(dst, o.gen.apply(v, math.MinInt64, math.MaxInt64)), nil
	case kInt:
		v, err := w.int()
		if err != nil {
			return dst, err
		}
		return appendLong(dst, o.gen.apply(v, math.MinInt32, math.MaxInt32)), nil
	case kString:
		v, err := w.str()
		if err != nil {
			return dst, err
		}
		v = v[:prefixLen(v, o.gen.n)]
		return append(appendLong(dst, int64(len(v))), v...), nil
	}
	return dst, fail(w.pos, "unsupported type")
}

// GeneralizeValue applies g to a value decoded by hamba/avro (int or
// int32 for an Avro int, int64 for a long, string, time.Time or nil) as a
// projection does to the encoded one; with a zero g it returns v. The linkability report uses it to compare two systems'
// values at the coarser of their precisions.
func GeneralizeValue(g Generalization, v any) (any, error) {
	if g == (Generalization{}) || v == nil {
		return v, nil
	}
	switch {
	case g.Truncate != "":
		unit, err := ParseUnit(g.Truncate)
		if err != nil {
			return nil, err
		}
		t, ok := v.(time.Time)
		if !ok {
			return nil, errors.New("truncate needs a time")
		}
		return time.UnixMicro(floorMultiple(t.UnixMicro(), int64(unit/time.Microsecond))).UTC(), nil
	case g.Round != 0:
		if g.Round < 2 {
			return nil, errors.New("round must be at least 2")
		}
		switch x := v.(type) {
		case int:
			return int(roundMultiple(int64(x), g.Round, math.MinInt32, math.MaxInt32)), nil
		case int32:
			return int32(roundMultiple(int64(x), g.Round, math.MinInt32, math.MaxInt32)), nil
		case int64:
			return roundMultiple(x, g.Round, math.MinInt64, math.MaxInt64), nil
		}
		return nil, errors.New("round needs an integer")
	}
	s, ok := v.(string)
	if !ok || g.Prefix < 1 {
		return nil, errors.New("prefix needs a string and a positive length")
	}
	return s[:prefixLen([]byte(s), int64(g.Prefix))], nil
}

// compileGeneralize attaches pol's generalizations to the trie of its
// paths and returns the precision of the times the service adds for the
// system, and whether they derive from occurred_at.
func compileGeneralize(root *tnode, pol Policy) (time.Duration, bool, error) {
	paths := make([]string, 0, len(pol.Generalize))
	for path := range pol.Generalize {
		paths = append(paths, path)
	}
	slices.Sort(paths)
	for _, path := range paths {
		segs, err := parsePath(path)
		if err != nil {
			return 0, false, fmt.Errorf("generalize: %w", err)
		}
		t := root
		for _, seg := range segs {
			if t = t.child(seg); t == nil {
				break
			}
		}
		if t == nil || t.mark != markKeep || t.path != path {
			return 0, false, fmt.Errorf("generalize %q: not a path in keep", path)
		}
		if t.gen, err = compileGen(t.in, path, pol.Generalize[path]); err != nil {
			return 0, false, err
		}
	}
	occ := root.child(FieldOccurredAt)
	if occ == nil || occ.mark != markKeep {
		if pol.TimeUnit == "" {
			return DefaultTimeUnit, false, nil
		}
		unit, err := ParseUnit(pol.TimeUnit)
		if err != nil {
			return 0, false, fmt.Errorf("time_unit: %w", err)
		}
		return unit, false, nil
	}
	if pol.TimeUnit != "" {
		return 0, false, errors.New("time_unit: the system keeps occurred_at, whose precision (generalize) sets the unit")
	}
	if occ.gen != nil {
		return occ.gen.unit, true, nil
	}
	return time.Millisecond, true, nil
}

func clonePolicy(p Policy) Policy {
	p.Keep, p.Pseudonymize, p.Headers = slices.Clone(p.Keep), slices.Clone(p.Pseudonymize), slices.Clone(p.Headers)
	p.Generalize = maps.Clone(p.Generalize)
	return p
}

// Policy returns system i's policy as given to Compile (a copy).
func (p *Plan) Policy(i int) Policy { return clonePolicy(p.systems[i].pol) }

// TimeUnit returns the precision of the times the service adds to system
// i's records (record timestamps, erasure notices' requested_at): that of
// its occurred_at if it keeps it (1ms, or its truncation unit), else its
// time_unit (default DefaultTimeUnit).
func (p *Plan) TimeUnit(i int) time.Duration { return p.systems[i].unit }

// TimeFromEvent reports whether system i's record timestamps derive from
// occurred_at (it keeps it), rather than from the batch's start.
func (p *Plan) TimeFromEvent(i int) bool { return p.systems[i].fromEvent }

// RecordTime returns the timestamp of system i's output record of an event
// that occurred at occurredAt (milliseconds since the Unix epoch, Head's
// OccurredAt), in a batch that started at batchStart: occurred_at at the
// system's precision if it keeps it, else batchStart truncated to its
// TimeUnit. Never the produce clock, so two systems' records share no time
// finer than both their policies allow. It does not allocate.
func (p *Plan) RecordTime(i int, occurredAt int64, batchStart time.Time) time.Time {
	s := &p.systems[i]
	ms := batchStart.UnixMilli()
	if s.fromEvent {
		ms = occurredAt
	}
	return time.UnixMilli(floorMultiple(ms, int64(s.unit/time.Millisecond)))
}

// NoticeTime returns t truncated to system i's TimeUnit: the requested_at
// header and the timestamp of its erasure notices.
func (p *Plan) NoticeTime(i int, t time.Time) time.Time {
	return time.UnixMilli(floorMultiple(t.UnixMilli(), int64(p.systems[i].unit/time.Millisecond)))
}

// DropRequestedAt reports whether system i's erasure notices go without
// the requested_at header.
func (p *Plan) DropRequestedAt(i int) bool { return p.systems[i].pol.DropRequestedAt }

// hasGen reports whether a path at or below t is generalized.
func hasGen(t *tnode) bool {
	if t.gen != nil {
		return true
	}
	for _, c := range t.kids {
		if hasGen(c.n) {
			return true
		}
	}
	return false
}

// genDoc is the doc of an output field: the input field's doc and what the
// policy generalized at or below it, e.g. "Generalized by pseudonymizer:
// occurred_at truncated to 1h (UTC, since the Unix epoch)."
func genDoc(doc string, t *tnode) string {
	var notes []string
	var walk func(t *tnode)
	walk = func(t *tnode) {
		if t.gen != nil {
			notes = append(notes, t.path+" "+t.gen.String())
		}
		for _, c := range t.kids {
			walk(c.n)
		}
	}
	walk(t)
	if len(notes) == 0 {
		return doc
	}
	if doc != "" && !strings.HasSuffix(doc, ".") {
		doc += "."
	}
	if doc != "" {
		doc += " "
	}
	return doc + "Generalized by pseudonymizer: " + strings.Join(notes, "; ") + "."
}
