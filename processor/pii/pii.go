// Package pii finds identifying data inside strings: e-mail addresses,
// phone numbers, payment card numbers, IBANs, IP addresses, the event's
// own identifiers and named custom patterns. The processor runs it over
// every string a system keeps, before the system's record is produced
// (processor/pii.go), and redacts what it finds or drops the event.
//
// A Detector is the compiled configuration, immutable and shared; a
// Scanner is one goroutine's scratch space. Scan reads each byte of a
// string once through a class table (no regular expression, no
// allocation) and runs a detector only when the string can contain what it
// looks for: an '@' for e-mail, enough digits for phones, cards and
// IBANs, a '.' or ':' with digits for IP addresses, the literal prefix of
// a custom pattern, the bytes of an identifier. Only then does a detector
// look closer (the phone detector calls libphonenumber, a custom pattern
// its regular expression), so strings without candidates cost one pass.
//
// The detectors are tuned for precision on the values marketing systems
// keep (SKUs, barcodes, prices, dates, campaign names): a number is a
// phone only if it is written like one (international with + or 00, or
// national with the region's trunk prefix or with separators) and
// libphonenumber finds it valid; a card needs 14 to 19 digits, an issuer
// prefix and the Luhn check, and a bare run that is a valid GTIN barcode
// is neither a card nor a phone. See docs/guarantees.md for the measured
// precision and recall and for the limits.
package pii

import (
	"bytes"
	"errors"
	"fmt"
	"regexp"
	"regexp/syntax"
	"strings"

	"github.com/nyaruka/phonenumbers"
)

// Kind is what a match is.
type Kind uint8

// The kinds of match. KindCustom matches carry the pattern's index.
const (
	KindEmail Kind = iota + 1
	KindPhone
	KindCard
	KindIBAN
	KindIP
	KindIdentifier
	KindCustom
)

var kindNames = [...]string{"", "email", "phone", "card", "iban", "ip", "identifier", "custom"}

// String returns the kind's name as used in metrics and redactions.
func (k Kind) String() string {
	if int(k) < len(kindNames) {
		return kindNames[k]
	}
	return "unknown"
}

// Kinds lists the built-in kinds.
func Kinds() []Kind {
	return []Kind{KindEmail, KindPhone, KindCard, KindIBAN, KindIP, KindIdentifier}
}

// Match is one finding in a string: bytes [Start, End) of it.
type Match struct {
	Start, End int
	Kind       Kind
	// Index is the pattern's index for KindCustom and the identifier's
	// tag (see Scanner.AddIdentifier) for KindIdentifier.
	Index int
}

// Pattern is a named custom pattern: a Go regular expression (RE2
// syntax) that starts with a literal of at least MinLiteral bytes, so that
// the expression runs only on strings that contain that literal.
type Pattern struct {
	Name   string `yaml:"name"`
	Regexp string `yaml:"regexp"`
}

// MinLiteral is the shortest literal prefix a custom pattern must have.
const MinLiteral = 2

// DefaultRegion is the default region for phone numbers written in
// national format.
const DefaultRegion = "DE"

// Config configures a Detector.
type Config struct {
	// Region is the ISO 3166-1 alpha-2 region whose national format phone
	// numbers are recognised (international ones are, whatever the
	// region); "" means DefaultRegion.
	Region string
	// Patterns are the custom patterns; a match is redacted as
	// [redacted:<name>].
	Patterns []Pattern
}

// Detector is a compiled Config, safe for concurrent use.
type Detector struct {
	region   string
	trunk    string // the region's national (trunk) prefix, e.g. "0"; "" if none
	patterns []pattern
}

type pattern struct {
	name   string
	prefix []byte
	re     *regexp.Regexp
}

// New compiles cfg. Errors name the setting, never data.
func New(cfg Config) (*Detector, error) {
	d := &Detector{region: strings.ToUpper(cfg.Region)}
	if d.region == "" {
		d.region = DefaultRegion
	}
	if !phonenumbers.GetSupportedRegions()[d.region] {
		return nil, fmt.Errorf("pii: region %q is not an ISO 3166-1 alpha-2 region libphonenumber knows", cfg.Region)
	}
	d.trunk = phonenumbers.GetNddPrefixForRegion(d.region, true)
	seen := map[string]bool{}
	for i, p := range cfg.Patterns {
		if err := CheckPatternName(p.Name); err != nil {
			return nil, fmt.Errorf("pii: pattern %d: %w", i+1, err)
		}
		if seen[p.Name] {
			return nil, fmt.Errorf("pii: pattern %q: defined twice", p.Name)
		}
		seen[p.Name] = true
		re, err := regexp.Compile(p.Regexp)
		if err != nil {
			return nil, fmt.Errorf("pii: pattern %q: %w", p.Name, err)
		}
		lit, _ := re.LiteralPrefix()
		if len(lit) < MinLiteral {
			return nil, fmt.Errorf("pii: pattern %q: must start with a literal of at least %d characters (e.g. LOY-[0-9]{8}), so that it runs only on strings that contain it", p.Name, MinLiteral)
		}
		if _, err := syntax.Parse(p.Regexp, syntax.Perl); err != nil {
			return nil, fmt.Errorf("pii: pattern %q: %w", p.Name, err)
		}
		d.patterns = append(d.patterns, pattern{name: p.Name, prefix: []byte(lit), re: re})
	}
	return d, nil
}

// CheckPatternName checks a custom pattern's name: 1-40 characters of
// [a-z0-9_-], not the name of a built-in kind.
func CheckPatternName(name string) error {
	if name == "" || len(name) > 40 {
		return errors.New("name must be 1-40 characters")
	}
	for i := 0; i < len(name); i++ {
		c := name[i]
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '_' || c == '-') {
			return fmt.Errorf("name %q may only contain a-z 0-9 _ -", name)
		}
	}
	for _, k := range kindNames {
		if name == k {
			return fmt.Errorf("name %q is a built-in kind", name)
		}
	}
	return nil
}

// Region returns the default region of phone numbers.
func (d *Detector) Region() string { return d.region }

// KindName returns the name of a match's kind: the pattern's name for
// custom patterns.
func (d *Detector) KindName(m Match) string {
	if m.Kind == KindCustom && m.Index >= 0 && m.Index < len(d.patterns) {
		return d.patterns[m.Index].name
	}
	return m.Kind.String()
}

// Scanner scans strings with a Detector. It holds scratch space and the
// current event's identifiers; it is not safe for concurrent use.
type Scanner struct {
	d *Detector
	// ids are the identifiers of the current event.
	ids []ident
	// dec and decIdx hold the percent-decoded form of a string and, for
	// each of its bytes, the offset in the original.
	dec    []byte
	decIdx []int32
	// digits is scratch space for the phone and card detectors.
	digits []byte
	cand   []byte
}

// ident is one identifier of the current event.
type ident struct {
	v   []byte // as given (aliases the caller's buffer)
	set uint64 // a sample of its bytes (see sampleSet)
	tag int
}

// NewScanner returns a Scanner of d.
func (d *Detector) NewScanner() *Scanner { return &Scanner{d: d} }

// MinIdentifierLen is the shortest identifier value that is looked for:
// shorter values (a country code, a house number) would match too much.
const MinIdentifierLen = 5

// ResetIdentifiers forgets the current event's identifiers.
func (s *Scanner) ResetIdentifiers() { s.ids = s.ids[:0] }

// AddIdentifier adds a value of the current event to look for, with a tag
// that matches report in Index. v is not copied: it must not change until
// the next ResetIdentifiers. Values shorter than MinIdentifierLen are
// ignored.
func (s *Scanner) AddIdentifier(tag int, v []byte) {
	if len(v) < MinIdentifierLen {
		return
	}
	s.ids = append(s.ids, ident{v: v, set: sampleSet(v), tag: tag})
}

// sampleSet returns the set (see bitOf) of up to 8 alphanumeric bytes of
// v spread over it: a string that contains v (in any case,
// percent-encoded or not) contains each of them.
func sampleSet(v []byte) uint64 {
	var set uint64
	n := 0
	step := max(len(v)/8, 1)
	for i := 0; i < len(v) && n < 8; i += step {
		t := tab[v[i]]
		if t&(cDigit|cAlpha) == 0 {
			continue
		}
		set |= 1 << (t >> 8 & 63)
		n++
	}
	return set
}

func lower(c byte) byte {
	if c >= 'A' && c <= 'Z' {
		return c + 'a' - 'A'
	}
	return c
}

// Byte classes.
const (
	cDigit   = 1 << iota // 0-9
	cAlpha               // A-Z a-z
	cAt                  // @
	cDot                 // .
	cColon               // :
	cPercent             // %
	cPlus                // +
	cHex                 // a-f A-F (with cAlpha)
)

// tab holds each byte's class in its low byte and, in its high byte, its
// bit in a string's byte set: 0-9 and a-z (A-Z folded onto a-z) have bits
// 0 to 35, every other byte bit 63, which no identifier's set has.
var tab = func() (t [256]uint16) {
	for c := range t {
		bit := uint16(63)
		switch {
		case c >= '0' && c <= '9':
			bit = uint16(c - '0')
		case c >= 'a' && c <= 'z':
			bit = uint16(c-'a') + 10
		case c >= 'A' && c <= 'Z':
			bit = uint16(c-'A') + 10
		}
		t[c] = uint16(class[c]) | bit<<8
	}
	return t
}()

var class = func() (t [256]byte) {
	for c := '0'; c <= '9'; c++ {
		t[c] = cDigit
	}
	for c := 'a'; c <= 'z'; c++ {
		t[c] = cAlpha
		t[c-'a'+'A'] = cAlpha
	}
	for c := 'a'; c <= 'f'; c++ {
		t[c] |= cHex
		t[c-'a'+'A'] |= cHex
	}
	t['@'] = cAt
	t['.'] = cDot
	t[':'] = cColon
	t['%'] = cPercent
	t['+'] = cPlus
	return t
}()

func isAlnum(c byte) bool { return class[c]&(cDigit|cAlpha) != 0 }
func isDigit(c byte) bool { return c >= '0' && c <= '9' }

// Scan appends the matches in b to dst, in order of their start, and
// returns it. Matches may overlap (an e-mail address that contains the
// customer ID). It does not allocate when b has no match and dst has
// room.
func (s *Scanner) Scan(dst []Match, b []byte) []Match {
	return s.ScanSummarized(dst, b, Summarize(b))
}

// Summary is what one pass over a string tells about it: its classes of
// bytes, its number of digits and its set of alphanumerics. Summaries of
// several strings combine with Union.
type Summary struct {
	set    uint64
	fl     uint16
	digits int32
	len    int32
}

// Summarize reads b once.
func Summarize(b []byte) Summary {
	var fl uint16
	digits := 0
	var set uint64
	for _, c := range b {
		t := tab[c]
		fl |= t
		digits += int(t & cDigit)
		set |= 1 << (t >> 8 & 63)
	}
	return Summary{set: set, fl: fl, digits: int32(digits), len: int32(len(b))}
}

// Union returns the summary of strings s and o together (their longest
// length, their most digits).
func (s Summary) Union(o Summary) Summary {
	return Summary{set: s.set | o.set, fl: s.fl | o.fl, digits: max(s.digits, o.digits), len: max(s.len, o.len)}
}

// MaxLen returns the length of the longest identifier that MayContain may
// accept for summary s: the longest string's length, or -1 (no bound)
// for percent-encoded strings.
func (s Summary) MaxLen() int {
	if s.fl&cPercent != 0 {
		return -1
	}
	return int(s.len)
}

// Candidate reports whether a detector other than the identifiers' may
// match in a string of summary s.
func (d *Detector) Candidate(s Summary) bool {
	return s.fl&(cAt|cPercent) != 0 || s.digits >= 4 || s.fl&cColon != 0 && s.fl&(cDigit|cHex) != 0 || len(d.patterns) > 0
}

// MayContain reports whether a string of summary s may contain the
// identifier v (see AddIdentifier): only then need it be added.
func MayContain(s Summary, v []byte) bool {
	switch {
	case len(v) < MinIdentifierLen:
		return false
	case s.fl&cPercent != 0:
		return true // encoded, it may be longer than the identifier
	case int(s.len) < len(v):
		return false
	}
	// sampleSet(v) ⊆ s.set, giving up at the first byte that is missing.
	n := 0
	step := max(len(v)/8, 1)
	for i := 0; i < len(v) && n < 8; i += step {
		t := tab[v[i]]
		if t&(cDigit|cAlpha) == 0 {
			continue
		}
		if s.set&(1<<(t>>8&63)) == 0 {
			return false
		}
		n++
	}
	return true
}

// ScanSummarized is Scan for a string b of summary sum.
func (s *Scanner) ScanSummarized(dst []Match, b []byte, sum Summary) []Match {
	if sum.fl&cPercent != 0 {
		if dec, ok := s.decode(b); ok {
			n := len(dst)
			dst = s.scan(dst, dec, ^byte(0), int(sum.digits), len(s.ids) > 0)
			for i := n; i < len(dst); i++ {
				m := &dst[i]
				m.Start = int(s.decIdx[m.Start])
				m.End = int(s.decIdx[m.End])
			}
			return dst
		}
	}
	return s.scan(dst, b, byte(sum.fl), int(sum.digits), s.idsIn(sum.set))
}

// idsIn reports whether some identifier's sample bytes are all in set, a
// string's byte set.
func (s *Scanner) idsIn(set uint64) bool {
	for i := range s.ids {
		if s.ids[i].set&set == s.ids[i].set {
			return true
		}
	}
	return false
}

// scan runs the detectors that b's classes fl and digit count call for.
func (s *Scanner) scan(dst []Match, b []byte, fl byte, digits int, ids bool) []Match {
	n := len(dst)
	if fl&cAt != 0 {
		dst = findEmails(dst, b)
	}
	if digits >= 7 {
		dst = s.findPhones(dst, b)
		if digits >= 14 {
			dst = s.findCards(dst, b)
		}
		if fl&cAlpha != 0 {
			dst = findIBANs(dst, b)
		}
	}
	if digits >= 4 && fl&cDot != 0 || fl&cColon != 0 && fl&(cDigit|cHex) != 0 {
		dst = findIPs(dst, b)
	}
	if ids {
		dst = s.findIdentifiers(dst, b)
	}
	for i := range s.d.patterns {
		p := &s.d.patterns[i]
		if len(b) >= len(p.prefix) && containsPrefix(b, p.prefix) {
			for _, loc := range p.re.FindAllIndex(b, -1) {
				if loc[1] > loc[0] {
					dst = append(dst, Match{Start: loc[0], End: loc[1], Kind: KindCustom, Index: i})
				}
			}
		}
	}
	if len(dst)-n > 1 {
		sortMatches(dst[n:])
	}
	return dst
}

func containsPrefix(b, lit []byte) bool { return bytes.Contains(b, lit) }

// sortMatches sorts by start, then longest first (insertion sort: there
// are few).
func sortMatches(ms []Match) {
	for i := 1; i < len(ms); i++ {
		for j := i; j > 0 && (ms[j].Start < ms[j-1].Start || ms[j].Start == ms[j-1].Start && ms[j].End > ms[j-1].End); j-- {
			ms[j], ms[j-1] = ms[j-1], ms[j]
		}
	}
}

// decode percent-decodes b into s.dec, recording each decoded byte's
// origin; it reports false if b has no valid escape.
func (s *Scanner) decode(b []byte) ([]byte, bool) {
	s.dec, s.decIdx = s.dec[:0], s.decIdx[:0]
	changed := false
	for i := 0; i < len(b); i++ {
		c := b[i]
		if c == '%' && i+2 < len(b) && isHex(b[i+1]) && isHex(b[i+2]) {
			s.dec = append(s.dec, unhex(b[i+1])<<4|unhex(b[i+2]))
			s.decIdx = append(s.decIdx, int32(i))
			i += 2
			changed = true
			continue
		}
		s.dec = append(s.dec, c)
		s.decIdx = append(s.decIdx, int32(i))
	}
	s.decIdx = append(s.decIdx, int32(len(b)))
	return s.dec, changed
}

func isHex(c byte) bool { return isDigit(c) || class[c]&cHex != 0 }

func unhex(c byte) byte {
	switch {
	case isDigit(c):
		return c - '0'
	case c >= 'a':
		return c - 'a' + 10
	}
	return c - 'A' + 10
}
