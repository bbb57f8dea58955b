package pii

import (
	"net/netip"
	"slices"

	"github.com/nyaruka/phonenumbers"
)

// isLocal reports whether c may be part of an e-mail address's local part
// as found in the wild (RFC 5322 allows more, such as '=' and '/', which
// in URLs and campaign names separate other things).
func isLocal(c byte) bool {
	return isAlnum(c) || c == '.' || c == '_' || c == '-' || c == '+' || c == '\'' || c >= 0x80
}

func isDomain(c byte) bool { return isAlnum(c) || c == '.' || c == '-' || c >= 0x80 }

// findEmails finds local@domain.tld, the domain with at least two labels
// and a top-level label of two or more letters.
func findEmails(dst []Match, b []byte) []Match {
	for i := 0; i < len(b); i++ {
		if b[i] != '@' {
			continue
		}
		l := i
		for l > 0 && isLocal(b[l-1]) {
			l--
		}
		for l < i && (b[l] == '.' || b[l] == '+' || b[l] == '-') {
			l++
		}
		if l == i {
			continue
		}
		r := i + 1
		for r < len(b) && isDomain(b[r]) {
			r++
		}
		for r > i+1 && (b[r-1] == '.' || b[r-1] == '-') {
			r--
		}
		if !validDomain(b[i+1 : r]) {
			continue
		}
		dst = append(dst, Match{Start: l, End: r, Kind: KindEmail})
		i = r - 1
	}
	return dst
}

// validDomain reports whether d has two or more non-empty labels and ends
// in a label of two or more letters.
func validDomain(d []byte) bool {
	if len(d) < 4 || d[0] == '.' || d[0] == '-' {
		return false
	}
	last := -1
	for i, c := range d {
		if c == '.' {
			if i > 0 && d[i-1] == '.' {
				return false
			}
			last = i
		}
	}
	if last < 0 || len(d)-last-1 < 2 {
		return false
	}
	for _, c := range d[last+1:] {
		if class[c]&cAlpha == 0 && c < 0x80 {
			return false
		}
	}
	return !fileExtensions[string(lowerASCII(d[last+1:]))]
}

// fileExtensions are top-level labels that make name@2x.png a file name,
// not an address.
var fileExtensions = map[string]bool{"png": true, "jpg": true, "jpeg": true, "gif": true, "svg": true, "webp": true,
	"avif": true, "css": true, "js": true, "html": true, "htm": true, "pdf": true, "mp4": true, "webm": true}

// lowerASCII lower-cases a short label into a fixed buffer.
func lowerASCII(b []byte) []byte {
	var buf [8]byte
	if len(b) > len(buf) {
		return nil
	}
	for i, c := range b {
		buf[i] = lower(c)
	}
	return buf[:len(b)]
}

// phoneSep reports whether c may separate the digit groups of a phone
// number ('+' is a space in form-encoded text).
func phoneSep(c byte) bool {
	return c == ' ' || c == '-' || c == '.' || c == '/' || c == '(' || c == ')' || c == '+'
}

// nationalBoundary reports whether c may precede a phone number written
// in national format: a number glued to an ID by '-' or '_' is more likely
// part of the ID.
func nationalBoundary(c byte) bool {
	switch c {
	case ' ', ':', '=', ',', ';', '"', '\'', '+', '(', '\t':
		return true
	}
	return false
}

// findPhones finds phone numbers: runs of 7 to 15 digits (17 with a 00
// prefix) with separators, bounded by non-alphanumerics, written like a
// phone number (see phoneAt) and valid by libphonenumber.
func (s *Scanner) findPhones(dst []Match, b []byte) []Match {
	for i := 0; i < len(b); i++ {
		c := b[i]
		if !(isDigit(c) || (c == '+' || c == '(') && i+1 < len(b) && isDigit(b[i+1])) {
			continue
		}
		if i > 0 && (isAlnum(b[i-1]) || b[i-1] == '.' || b[i-1] == ',' || isDigit(c) && b[i-1] == '(') {
			continue
		}
		end, next, ok := s.phoneAt(b, i)
		if !ok && len(s.digits) > 15 {
			// One long number (a tracking or reference number): skip it.
			i = max(i, next-1)
			continue
		}
		if ok {
			dst = append(dst, Match{Start: i, End: end, Kind: KindPhone})
			i = end - 1
			continue
		}
		// Try again from the next group within the candidate.
		if next > i+1 {
			i = next - 1
		}
	}
	return dst
}

// phoneAt examines the candidate starting at b[i]; it returns its end and
// whether it is a phone number, and otherwise where the candidate's next
// digit group starts (0: none). A candidate is a phone number if
// libphonenumber finds it valid and it is written like one:
//
//   - international: +CC or 00CC, any separators;
//   - national (the default region's format): preceded by the start, a
//     space or punctuation other than '-', '_', '.' or '/'; starting with
//     the region's trunk prefix if it has one (0 in most of Europe);
//     either formatted (groups separated by spaces, '-', '/' or
//     parentheses, the first group of 3 or more digits unless all are of
//     2, not shaped like a date; after '-' or '_' only if grouped by
//     spaces) or bare, and then not a valid GTIN barcode, and either
//     alone (the whole string or a word of a text) with 9 to 11 digits,
//     or a mobile number of 10 or more digits (11 after '-' or '_'): a
//     bare fixed-line number glued to other text looks like an article
//     or tracking number.
func (s *Scanner) phoneAt(b []byte, i int) (end, next int, ok bool) {
	d := s.digits[:0]
	plus := b[i] == '+'
	j := i
	if plus {
		j++
	}
	run := 0    // consecutive separators
	groups := 0 // digit groups
	glen := 0   // current group's length
	var lens [8]int
	var sepc byte
	mixed := false
	lastDigit := -1
	for ; j < len(b); j++ {
		c := b[j]
		if isDigit(c) {
			if glen == 0 {
				if groups > 0 && next == 0 {
					next = j
				}
				groups++
			}
			glen++
			d = append(d, c)
			lastDigit = j
			run = 0
			if groups <= len(lens) {
				lens[groups-1] = glen
			}
			if len(d) > 17 {
				break
			}
			continue
		}
		if !phoneSep(c) || run >= 2 {
			break
		}
		if c != '(' && c != ')' {
			if sepc == 0 {
				sepc = c
			} else if sepc != c {
				mixed = true
			}
		}
		run++
		glen = 0
	}
	s.digits = d
	if lastDigit < 0 {
		return 0, next, false
	}
	if len(d) > 15 {
		for j < len(b) && (isDigit(b[j]) || phoneSep(b[j])) {
			j++
		}
		return 0, j, false
	}
	end = lastDigit + 1
	if end < len(b) && b[end] == ')' {
		end++
	}
	if end < len(b) && (isAlnum(b[end]) || b[end] == '_' || b[end] == '.' && end+1 < len(b) && isDigit(b[end+1])) {
		return 0, next, false
	}
	n := len(d)
	if n < 7 || n > 17 || groups > len(lens) {
		return 0, next, false
	}
	formatted := groups > 1 || b[i] == '('
	intl := plus || n > 2 && d[0] == '0' && d[1] == '0'
	if intl {
		if !plus {
			if !formatted && gtin(d) {
				return 0, next, false
			}
			d = d[2:]
		}
		if len(d) > 15 {
			return 0, next, false
		}
		s.cand = append(append(s.cand[:0], '+'), d...)
		num, err := phonenumbers.Parse(string(s.cand), "ZZ")
		return end, next, err == nil && phonenumbers.IsValidNumber(num)
	}
	spaced := sepc == ' ' || b[i] == '('
	glued := i > 0 && (b[i-1] == '-' || b[i-1] == '_')
	if n > 15 || sepc == '.' || i > 0 && !nationalBoundary(b[i-1]) && !(glued && (spaced || !formatted)) {
		return 0, next, false
	}
	if formatted {
		lens := lens[:groups]
		if !mixed && sepc != 0 && dateShaped(lens, sepc) {
			return 0, next, false
		}
		if lens[0] < 3 && slices.ContainsFunc(lens, func(l int) bool { return l > 2 }) {
			return 0, next, false
		}
	}
	t := s.d.trunk
	switch {
	case t != "" && t != "1":
		if string(d[:min(len(t), n)]) != t {
			return 0, next, false
		}
	case !formatted:
		return 0, next, false
	}
	// alone: the whole string, or a word of a text.
	alone := (i == 0 || b[i-1] == ' ') && (end == len(b) || b[end] == ' ')
	if !formatted && (n < 9 || n < 10 && !alone || glued && n < 11 || gtin(d)) {
		return 0, next, false
	}
	num, err := phonenumbers.Parse(string(d), s.d.region)
	if err != nil || !phonenumbers.IsValidNumberForRegion(num, s.d.region) {
		return 0, next, false
	}
	if !formatted && (!alone || n > 11) {
		// A bare number glued to punctuation, or a long one: only a
		// mobile one is taken for a phone number.
		if t := phonenumbers.GetNumberType(num); t != phonenumbers.MOBILE && t != phonenumbers.FIXED_LINE_OR_MOBILE {
			return 0, next, false
		}
	}
	return end, next, true
}

// dateShaped reports whether digit groups of these lengths separated by
// sep look like a date or time: 2024-05-17, 17.05.2024, 5/17/24.
func dateShaped(lens []int, sep byte) bool {
	if sep != '-' && sep != '.' && sep != '/' || len(lens) != 3 {
		return false
	}
	a, b, c := lens[0], lens[1], lens[2]
	return a == 4 && b <= 2 && c <= 2 || a <= 2 && b <= 2 && (c == 4 || c == 2)
}

// thousands reports whether groups look like a number with thousands
// separators: 1.234.567.
func thousands(lens []int) bool {
	if len(lens) < 2 || lens[0] > 3 {
		return false
	}
	for _, l := range lens[1:] {
		if l != 3 {
			return false
		}
	}
	return true
}

// gtin reports whether d is a valid GTIN-8, -12 (UPC-A), -13 (EAN) or -14
// barcode number by its check digit.
func gtin(d []byte) bool {
	switch len(d) {
	case 8, 12, 13, 14:
	default:
		return false
	}
	sum := 0
	for i := len(d) - 2; i >= 0; i-- {
		v := int(d[i] - '0')
		if (len(d)-2-i)%2 == 0 {
			v *= 3
		}
		sum += v
	}
	return (10-sum%10)%10 == int(d[len(d)-1]-'0')
}

// findCards finds payment card numbers: 14 to 19 digits, bare or in groups
// separated by single spaces or hyphens (one kind), bounded by
// non-alphanumerics, with a known issuer prefix for their length and a
// valid Luhn check digit. A bare 14-digit run that is a valid GTIN-14 is
// not a card.
func (s *Scanner) findCards(dst []Match, b []byte) []Match {
	for i := 0; i < len(b); i++ {
		if !isDigit(b[i]) || i > 0 && (isAlnum(b[i-1]) || b[i-1] == '.' || b[i-1] == ',') {
			continue
		}
		d := s.digits[:0]
		var sep byte
		j := i
		lastDigit := i
		for ; j < len(b); j++ {
			c := b[j]
			if isDigit(c) {
				d = append(d, c)
				lastDigit = j
				continue
			}
			if (c == ' ' || c == '-') && j+1 < len(b) && isDigit(b[j+1]) && (sep == 0 || sep == c) {
				sep = c
				continue
			}
			break
		}
		s.digits = d
		end := lastDigit + 1
		if end < len(b) && (isAlnum(b[end]) || (b[end] == '.' || b[end] == ',') && end+1 < len(b) && isDigit(b[end+1])) {
			i = end
			continue
		}
		if n := len(d); n >= 14 && n <= 19 && issuer(d) && luhn(d) && !(sep == 0 && gtin(d)) {
			dst = append(dst, Match{Start: i, End: end, Kind: KindCard})
		}
		i = end
	}
	return dst
}

// issuer reports whether d starts with a card issuer's prefix and has a
// length that issuer uses. Visa's old 13-digit numbers are left out: they
// collide with EAN-13 barcodes.
func issuer(d []byte) bool {
	n := len(d)
	p2 := int(d[0]-'0')*10 + int(d[1]-'0')
	p3 := p2*10 + int(d[2]-'0')
	p4 := p3*10 + int(d[3]-'0')
	switch {
	case d[0] == '4':
		return n == 16 || n == 19 // Visa
	case p2 >= 51 && p2 <= 55, p4 >= 2221 && p4 <= 2720:
		return n == 16 // Mastercard
	case p2 == 34 || p2 == 37:
		return n == 15 // American Express
	case p4 == 6011, p3 >= 644 && p3 <= 649, p2 == 65:
		return n >= 16 // Discover
	case p3 >= 300 && p3 <= 305, p2 == 36, p2 == 38, p2 == 39:
		return n >= 14 // Diners Club
	case p4 >= 3528 && p4 <= 3589:
		return n >= 16 // JCB
	case p2 == 62:
		return n >= 16 // UnionPay
	case p4 >= 2200 && p4 <= 2204:
		return n >= 16 // Mir
	case p2 == 50, p2 >= 56 && p2 <= 58, p2 == 63, p2 == 67:
		return n >= 16 // Maestro
	}
	return false
}

// luhn reports whether d's last digit is its Luhn check digit.
func luhn(d []byte) bool {
	sum := 0
	for i := len(d) - 1; i >= 0; i-- {
		v := int(d[i] - '0')
		if (len(d)-1-i)%2 == 1 {
			v *= 2
			if v > 9 {
				v -= 9
			}
		}
		sum += v
	}
	return sum%10 == 0
}

// ibanLengths are the IBAN lengths by country (SWIFT IBAN registry).
var ibanLengths = func() map[[2]byte]int {
	const table = "AD24AE23AL28AT20AZ28BA20BE16BG22BH22BI27BR29BY28CH21CR22CY28CZ24DE22DJ27DK18DO28EE20EG29ES24" +
		"FI18FK18FO18FR27GB22GE22GI23GL18GR27GT28HR21HU28IE22IL23IQ23IS26IT27JO30KW30KZ20LB28LC32LI21LT20" +
		"LU20LV21LY25MC27MD24ME22MK19MN20MR27MT31MU30NI28NL18NO15OM23PK24PL28PS29PT25QA29RO24RS22RU33SA24" +
		"SC31SD18SE24SI19SK24SM27SO23ST25SV28TL23TN24TR26UA29VA22VG24XK20YE30"
	m := map[[2]byte]int{}
	for i := 0; i+4 <= len(table); i += 4 {
		m[[2]byte{table[i], table[i+1]}] = int(table[i+2]-'0')*10 + int(table[i+3]-'0')
	}
	return m
}()

func upper(c byte) byte {
	if c >= 'a' && c <= 'z' {
		return c - 'a' + 'A'
	}
	return c
}

// findIBANs finds IBANs, bare or in groups of four separated by single
// spaces, in either case, by country length and the mod-97 check.
func findIBANs(dst []Match, b []byte) []Match {
	for i := 0; i+15 <= len(b); i++ {
		if class[b[i]]&cAlpha == 0 || i > 0 && isAlnum(b[i-1]) {
			continue
		}
		if class[b[i+1]]&cAlpha == 0 || !isDigit(b[i+2]) || !isDigit(b[i+3]) {
			continue
		}
		want, ok := ibanLengths[[2]byte{upper(b[i]), upper(b[i+1])}]
		if !ok {
			continue
		}
		var buf [34]byte
		n := 0
		j := i
		for ; j < len(b) && n < want; j++ {
			c := b[j]
			if isAlnum(c) {
				buf[n] = upper(c)
				n++
				continue
			}
			if c == ' ' && n%4 == 0 && j+1 < len(b) && isAlnum(b[j+1]) {
				continue
			}
			break
		}
		if n != want || j < len(b) && isAlnum(b[j]) || !mod97(buf[:n]) {
			continue
		}
		dst = append(dst, Match{Start: i, End: j, Kind: KindIBAN})
		i = j - 1
	}
	return dst
}

// mod97 reports whether an IBAN (upper case) passes ISO 7064 MOD 97-10.
func mod97(iban []byte) bool {
	r := 0
	add := func(c byte) bool {
		switch {
		case isDigit(c):
			r = (r*10 + int(c-'0')) % 97
		case c >= 'A' && c <= 'Z':
			r = (r*100 + int(c-'A'+10)) % 97
		default:
			return false
		}
		return true
	}
	for _, c := range iban[4:] {
		if !add(c) {
			return false
		}
	}
	for _, c := range iban[:4] {
		if !add(c) {
			return false
		}
	}
	return r == 1
}

// findIPs finds IPv4 addresses in dotted-quad form and IPv6 addresses
// (netip's syntax, without zones); 0.0.0.0 and :: are not addresses of
// anyone.
func findIPs(dst []Match, b []byte) []Match {
	for i := 0; i < len(b); i++ {
		c := b[i]
		if isDigit(c) && (i == 0 || !isAlnum(b[i-1]) && b[i-1] != '.' && (b[i-1] != ':' || i < 2 || !isHex(b[i-2]) && b[i-2] != ':')) {
			if end, ok := ipv4At(b, i); ok {
				dst = append(dst, Match{Start: i, End: end, Kind: KindIP})
				i = end - 1
				continue
			}
		}
		if (isHex(c) || c == ':') && (i == 0 || !isAlnum(b[i-1]) && b[i-1] != ':' && b[i-1] != '.') {
			j := i
			colons := 0
			for j < len(b) && (isHex(b[j]) || b[j] == ':' || b[j] == '.') {
				if b[j] == ':' {
					colons++
				}
				j++
			}
			for j > i && b[j-1] == '.' {
				j--
			}
			if colons >= 2 && (j == len(b) || !isAlnum(b[j])) {
				if a, err := netip.ParseAddr(string(b[i:j])); err == nil && a.Is6() && !a.IsUnspecified() && !a.IsLoopback() {
					dst = append(dst, Match{Start: i, End: j, Kind: KindIP})
				}
			}
			if j > i {
				i = j - 1
			}
		}
	}
	return dst
}

// ipv4At reads a dotted quad at b[i]: four decimal octets without leading
// zeros, not followed by another dot and digit or an alphanumeric.
func ipv4At(b []byte, i int) (int, bool) {
	j := i
	var oct [4]int
	for k := range 4 {
		if k > 0 {
			if j >= len(b) || b[j] != '.' {
				return 0, false
			}
			j++
		}
		start := j
		v := 0
		for j < len(b) && isDigit(b[j]) && j-start < 4 {
			v = v*10 + int(b[j]-'0')
			j++
		}
		l := j - start
		if l == 0 || l > 3 || v > 255 || l > 1 && b[start] == '0' {
			return 0, false
		}
		oct[k] = v
	}
	if j < len(b) && (isAlnum(b[j]) || b[j] == '.' && j+1 < len(b) && isDigit(b[j+1])) {
		return 0, false
	}
	if oct == [4]int{} {
		return 0, false
	}
	return j, true
}

// findIdentifiers finds the current event's identifiers in b, in any case;
// a space in an identifier also matches '+' (form encoding).
func (s *Scanner) findIdentifiers(dst []Match, b []byte) []Match {
	for k := range s.ids {
		id := &s.ids[k]
		v := id.v
		if len(v) > len(b) {
			continue
		}
		first := lower(v[0])
		for i := 0; i+len(v) <= len(b); i++ {
			if lower(b[i]) != first || !equalFold(b[i:i+len(v)], v) {
				continue
			}
			dst = append(dst, Match{Start: i, End: i + len(v), Kind: KindIdentifier, Index: id.tag})
			i += len(v) - 1
		}
	}
	return dst
}

func equalFold(h, v []byte) bool {
	for i, c := range v {
		d := h[i]
		if lower(c) == lower(d) || c == ' ' && d == '+' {
			continue
		}
		return false
	}
	return true
}
