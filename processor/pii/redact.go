package pii

// Redaction returns the text that replaces a match of kind name.
func Redaction(name string) string { return "[redacted:" + name + "]" }

// Redact appends b to dst with each match replaced by
// [redacted:<kind>]; overlapping matches are merged and named after the
// first (ms sorted as Scan returns them). ms must lie within b.
func (d *Detector) Redact(dst, b []byte, ms []Match) []byte {
	pos := 0
	for i := 0; i < len(ms); {
		m := ms[i]
		start, end := max(m.Start, pos), m.End
		i++
		for i < len(ms) && ms[i].Start < end {
			end = max(end, ms[i].End)
			i++
		}
		if end <= start {
			continue
		}
		dst = append(dst, b[pos:start]...)
		dst = append(dst, "[redacted:"...)
		dst = append(dst, d.KindName(m)...)
		dst = append(dst, ']')
		pos = end
	}
	return append(dst, b[pos:]...)
}
