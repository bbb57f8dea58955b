// Package policy compiles per-system allowlists into a Plan that projects
// Avro-encoded order events straight from their bytes.
//
// A Plan validates each input record once (Scan) and then writes, for each
// system, that system's output record (Project): kept fields are copied
// verbatim or generalized (generalize.go: timestamps truncated, integers
// rounded, strings cut to a prefix), pseudonymized ones are replaced by
// pseudonyms and everything else is dropped. RecordTime and NoticeTime
// give the times the processor adds to a system's records, at that
// system's precision. Neither step decodes into Go values, uses reflection or
// allocates in steady state. Output schemas are derived from the input
// schema and the policies (OutputSchema).
//
// Paths are dotted field names. They reach into records (also inside a union
// of null and a record), through arrays (items.sku selects the sku of every
// item) and into maps, where a segment is a key: attributes.utm_source keeps
// only that key of the map. Map keys that contain a dot cannot be selected.
package policy

import (
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/hamba/avro/v2"
)

// Policy is one marketing system's allowlist.
type Policy struct {
	// System names the marketing system: 1-100 characters of
	// [A-Za-z0-9._-].
	System string `yaml:"-"`
	// Keep lists the paths copied unchanged.
	Keep []string `yaml:"keep"`
	// Pseudonymize lists the paths replaced by pseudonyms. It must contain
	// customer_id, the subject.
	Pseudonymize []string `yaml:"pseudonymize"`
	// Headers lists the input header names the system may receive.
	Headers []string `yaml:"headers"`
	// ErasureNotices opts the system in to erasure notices: when a subject
	// with a key is forgotten, its output topic gets a tombstone keyed by
	// the subject's customer pseudonym in this system (see
	// processor/notices.go). It does not change the system's schema.
	ErasureNotices bool `yaml:"erasure_notices"`
	// Generalize maps kept paths (each listed in Keep) to the transform
	// applied to their values: a timestamp truncated, an amount rounded, a
	// string cut to a prefix (see Generalization).
	Generalize map[string]Generalization `yaml:"generalize"`
	// TimeUnit is the precision (ParseUnit) of the times the service adds
	// for a system that keeps no occurred_at: its record timestamps and its
	// erasure notices' requested_at are truncated to it. Empty means
	// DefaultTimeUnit. A system that keeps occurred_at gets those times at
	// occurred_at's precision instead, and must leave TimeUnit empty.
	TimeUnit string `yaml:"time_unit"`
	// DropRequestedAt leaves the requested_at header off the system's
	// erasure notices.
	DropRequestedAt bool `yaml:"drop_requested_at"`
	// PII is the system's PII guard mode (processor/pii.go): "redact"
	// (or empty) replaces identifying data found inside kept strings by
	// [redacted:<kind>], "drop" withholds such events from the system,
	// "off" scans nothing. It does not change the system's schema.
	PII string `yaml:"pii"`
}

// Field names the top-level input fields a Plan relies on.
const (
	FieldEventID    = "event_id"
	FieldOrderID    = "order_id"
	FieldCustomerID = "customer_id"
	FieldOccurredAt = "occurred_at"
)

const (
	maxSystemLen = 100
	maxPathLen   = 256
	maxPaths     = 1000
)

// Plan is a compiled set of policies for one input schema. It is immutable
// and safe for concurrent use; the Deriver passed to Project is not.
type Plan struct {
	in      *node
	head    [4]int // indices of event_id, order_id, customer_id, occurred_at
	systems []system
}

type system struct {
	name    string
	headers []string
	root    op
	out     avro.Schema
	pseudo  []Field // the pseudonymized paths, in policy order
	pol     Policy
	// unit is the precision of the times the service adds (RecordTime,
	// TimeUnit); fromEvent means they derive from occurred_at.
	unit      time.Duration
	fromEvent bool
}

// Systems returns the system names in the order of the policies given to
// Compile; a system's index is its position in this list.
func (p *Plan) Systems() []string {
	out := make([]string, len(p.systems))
	for i := range p.systems {
		out[i] = p.systems[i].name
	}
	return out
}

// Headers returns the input header names that system i may receive.
func (p *Plan) Headers(i int) []string { return slices.Clone(p.systems[i].headers) }

// OutputSchema returns the Avro schema of system i's output records. Its
// String method gives the parsing canonical form; json.Marshal gives the
// full schema with docs and defaults.
func (p *Plan) OutputSchema(i int) avro.Schema { return p.systems[i].out }

// Compile validates policies against the input schema and compiles them.
// Errors are one line naming the system and path, never data values.
func Compile(input avro.Schema, policies []Policy) (*Plan, error) {
	in, err := buildInput(input)
	if err != nil {
		return nil, fmt.Errorf("policy: input schema: %w", err)
	}
	p := &Plan{in: in}
	rec := in.schema.(*avro.RecordSchema)
	for i, req := range []struct {
		name string
		kind kind
	}{{FieldEventID, kString}, {FieldOrderID, kString}, {FieldCustomerID, kString}, {FieldOccurredAt, kLong}} {
		j := slices.IndexFunc(rec.Fields(), func(f *avro.Field) bool { return f.Name() == req.name })
		if j < 0 || in.sub[j].kind != req.kind {
			return nil, fmt.Errorf("policy: input schema: field %s must exist and be a %s", req.name, req.kind)
		}
		p.head[i] = j
	}
	if len(policies) == 0 {
		return nil, errors.New("policy: no systems configured")
	}
	seen := map[string]bool{}
	for _, pol := range policies {
		if err := checkSystemName(pol.System); err != nil {
			return nil, err
		}
		if seen[pol.System] {
			return nil, fmt.Errorf("policy: system %q: configured twice", pol.System)
		}
		seen[pol.System] = true
		s, err := compileSystem(in, pol)
		if err != nil {
			return nil, fmt.Errorf("policy: system %q: %w", pol.System, err)
		}
		p.systems = append(p.systems, s)
	}
	return p, nil
}

func checkSystemName(name string) error {
	if name == "" {
		return errors.New("policy: empty system name")
	}
	if len(name) > maxSystemLen {
		return fmt.Errorf("policy: system %q...: name longer than %d characters", name[:20], maxSystemLen)
	}
	for i := 0; i < len(name); i++ {
		c := name[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '.' || c == '_' || c == '-') {
			return fmt.Errorf("policy: system %q: name may only contain A-Z a-z 0-9 . _ -", name)
		}
	}
	return nil
}

// Path marks in the trie of a system's paths.
const (
	markNone = iota
	markKeep
	markPseudo
)

// tnode is a node of the trie of one system's paths.
type tnode struct {
	mark int
	path string
	kids []tchild
	in   *node // the marked value's input schema
	gen  *gen  // a kept value's generalization
}

type tchild struct {
	seg string
	n   *tnode
}

func (t *tnode) child(seg string) *tnode {
	for _, c := range t.kids {
		if c.seg == seg {
			return c.n
		}
	}
	return nil
}

func compileSystem(in *node, pol Policy) (system, error) {
	if len(pol.Keep)+len(pol.Pseudonymize) > maxPaths {
		return system{}, fmt.Errorf("more than %d paths", maxPaths)
	}
	root := &tnode{}
	var pseudo []Field
	for _, list := range []struct {
		paths []string
		mark  int
	}{{pol.Keep, markKeep}, {pol.Pseudonymize, markPseudo}} {
		for _, path := range list.paths {
			n, err := addPath(root, in, path, list.mark)
			if err != nil {
				return system{}, err
			}
			if list.mark == markPseudo {
				pseudo = append(pseudo, Field{Path: path, Kind: fieldKind(n)})
			}
		}
	}
	if c := root.child(FieldCustomerID); c == nil || c.mark != markPseudo {
		return system{}, errors.New("no pseudonymized subject: customer_id must be in pseudonymize")
	}
	unit, fromEvent, err := compileGeneralize(root, pol)
	if err != nil {
		return system{}, err
	}
	seenH := map[string]bool{}
	for _, h := range pol.Headers {
		if h == "" || !utf8.ValidString(h) || strings.ContainsFunc(h, unicode.IsControl) {
			return system{}, fmt.Errorf("header %q: invalid name", h)
		}
		if seenH[h] {
			return system{}, fmt.Errorf("header %q: listed twice", h)
		}
		seenH[h] = true
	}
	b := builder{ns: "pseudo." + avroName(pol.System), system: pol.System, names: map[string]int{}, open: map[string]bool{}}
	o, out, err := b.build(in, root)
	if err != nil {
		return system{}, err
	}
	return system{name: pol.System, headers: slices.Clone(pol.Headers), root: o, out: out, pseudo: pseudo, pol: clonePolicy(pol),
		unit: unit, fromEvent: fromEvent}, nil
}

// parsePath splits a dotted path into segments.
func parsePath(path string) ([]string, error) {
	switch {
	case path == "":
		return nil, errors.New("empty path")
	case len(path) > maxPathLen:
		return nil, fmt.Errorf("path %q...: longer than %d bytes", path[:20], maxPathLen)
	case !utf8.ValidString(path):
		return nil, fmt.Errorf("path %q: invalid UTF-8", path)
	case strings.ContainsFunc(path, func(r rune) bool { return unicode.IsSpace(r) || unicode.IsControl(r) }):
		return nil, fmt.Errorf("path %q: contains space or control characters", path)
	}
	segs := strings.Split(path, ".")
	for _, s := range segs {
		if s == "" {
			return nil, fmt.Errorf("path %q: empty segment", path)
		}
	}
	return segs, nil
}

// addPath checks path against the input schema and adds it to the trie;
// it returns the path's schema node.
func addPath(root *tnode, in *node, path string, mark int) (*node, error) {
	segs, err := parsePath(path)
	if err != nil {
		return nil, err
	}
	n := in
	t := root
	for i, seg := range segs {
		n = through(n)
		switch n.kind {
		case kRecord:
			j := slices.Index(n.names, seg)
			if j < 0 {
				return nil, fmt.Errorf("path %q: unknown field", path)
			}
			n = n.sub[j]
		case kMap:
			if v := through(n.elem); v.kind == kRecord || v.kind == kMap {
				return nil, fmt.Errorf("path %q: cannot select inside map values", path)
			}
			n = n.elem
		case kUnion:
			return nil, fmt.Errorf("path %q: cannot select inside a union of several types", path)
		default:
			return nil, fmt.Errorf("path %q: unknown field", path)
		}
		c := t.child(seg)
		if c == nil {
			c = &tnode{}
			t.kids = append(t.kids, tchild{seg, c})
		}
		if c.mark != markNone && i+1 < len(segs) {
			return nil, fmt.Errorf("path %q: overlaps %q", path, c.path)
		}
		t = c
	}
	switch {
	case t.mark == mark:
		return nil, fmt.Errorf("path %q: listed twice", path)
	case t.mark != markNone:
		return nil, fmt.Errorf("path %q: both kept and pseudonymized", path)
	case len(t.kids) > 0:
		return nil, fmt.Errorf("path %q: overlaps a longer path", path)
	}
	if mark == markPseudo && !pseudonymizable(n) {
		return nil, fmt.Errorf("path %q: only string, int and long fields (or nullable ones) can be pseudonymized", path)
	}
	t.mark, t.path, t.in = mark, path, n
	return n, nil
}

// through skips arrays and unions of null and one other type, which paths
// pass through transparently.
func through(n *node) *node {
	for {
		switch {
		case n.kind == kArray:
			n = n.elem
		case n.kind == kUnion && nullable(n) >= 0:
			n = n.sub[nullable(n)]
		default:
			return n
		}
	}
}

// nullable returns the index of the non-null branch of a union of null and
// one other type, or -1.
func nullable(n *node) int {
	if n.kind != kUnion || len(n.sub) != 2 {
		return -1
	}
	switch {
	case n.sub[0].kind == kNull && n.sub[1].kind != kNull:
		return 1
	case n.sub[1].kind == kNull && n.sub[0].kind != kNull:
		return 0
	}
	return -1
}

func scalar(k kind) bool { return k == kString || k == kInt || k == kLong }

func pseudonymizable(n *node) bool {
	if i := nullable(n); i >= 0 {
		return scalar(n.sub[i].kind)
	}
	return scalar(n.kind)
}

// avroName turns a system name into a valid Avro name component.
func avroName(s string) string {
	b := []byte(s)
	for i, c := range b {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_') {
			b[i] = '_'
		}
	}
	if len(b) > 0 && b[0] >= '0' && b[0] <= '9' {
		return "_" + string(b)
	}
	return string(b)
}
