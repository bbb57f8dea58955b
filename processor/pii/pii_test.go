package pii

import (
	"strings"
	"testing"
	"unicode/utf8"
)

// TestDetectors checks each detector on the corpus's values of its kind:
// every positive is found with that kind, and the spans of hand-picked
// cases are exact.
func TestDetectors(t *testing.T) {
	d, s := corpusScanner(t)
	for _, tc := range []struct{ in, want string }{
		{"winback-jane.doe@example.com", "[redacted:email]"},
		{"utm=jane%40example.com&x=1", "utm=[redacted:email]&x=1"},
		{"Call +49 151 23456789 now", "Call [redacted:phone] now"},
		{"(030) 12345678", "[redacted:phone]"},
		{"card 4111 1111 1111 1111.", "card [redacted:card]."},
		{"IBAN DE89 3704 0044 0532 0130 00", "IBAN [redacted:iban]"},
		{"from 203.0.113.45:8080", "from [redacted:ip]:8080"},
		{"ip 2001:db8::1 seen", "ip [redacted:ip] seen"},
		{"ref-CUST-100042-x", "ref-[redacted:identifier]-x"},
		{"shopper.cust-100042@example.com", "[redacted:email]"},
		{"SKU-TSHIRT-M", "SKU-TSHIRT-M"},
		{"4006381333931", "4006381333931"},
	} {
		got := string(d.Redact(nil, []byte(tc.in), s.Scan(nil, []byte(tc.in))))
		if got != tc.want {
			t.Errorf("Redact(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
	entries := append(readCorpus(t, "testdata/corpus.tsv"), readCorpus(t, "testdata/hard.tsv")...)
	for _, k := range Kinds() {
		t.Run(k.String(), func(t *testing.T) {
			n, found := 0, 0
			for _, e := range entries {
				if e.label != k.String() {
					continue
				}
				n++
				for _, m := range s.Scan(nil, []byte(e.value)) {
					if m.Kind == k {
						found++
						break
					}
				}
			}
			if n == 0 || float64(found) < 0.99*float64(n) {
				t.Errorf("%s: found in %d of %d values", k, found, n)
			}
		})
	}
}

// TestPrefilter checks on the corpus that the summary the processor
// filters strings by never hides a match.
func TestPrefilter(t *testing.T) {
	d, s := corpusScanner(t)
	entries := append(readCorpus(t, "testdata/corpus.tsv"), readCorpus(t, "testdata/hard.tsv")...)
	for _, e := range entries {
		sum := Summarize([]byte(e.value))
		for _, m := range s.Scan(nil, []byte(e.value)) {
			if m.Kind == KindIdentifier {
				if !MayContain(sum, []byte(corpusIdentifiers[m.Index])) {
					t.Errorf("%q: identifier %d found, but MayContain says no", e.value, m.Index)
				}
			} else if !d.Candidate(sum) {
				t.Errorf("%q: %s found, but Candidate says no", e.value, m.Kind)
			}
		}
	}
}

func TestCustomPattern(t *testing.T) {
	d, err := New(Config{Patterns: []Pattern{{Name: "loyalty", Regexp: `LOY-[0-9]{8}`}}})
	if err != nil {
		t.Fatal(err)
	}
	s := d.NewScanner()
	in := []byte("card LOY-12345678 and LOY-1")
	if got := string(d.Redact(nil, in, s.Scan(nil, in))); got != "card [redacted:loyalty] and LOY-1" {
		t.Errorf("got %q", got)
	}
	for _, bad := range []Pattern{{Name: "x", Regexp: `[0-9]+`}, {Name: "email", Regexp: `AB[0-9]`}, {Name: "Bad Name", Regexp: `AB`}, {Name: "y", Regexp: `AB(`}} {
		if _, err := New(Config{Patterns: []Pattern{bad}}); err == nil {
			t.Errorf("pattern %+v accepted", bad)
		}
	}
	if _, err := New(Config{Region: "XX"}); err == nil {
		t.Error("region XX accepted")
	}
}

// TestRegion checks that the default region decides national formats.
func TestRegion(t *testing.T) {
	us, err := New(Config{Region: "us"})
	if err != nil {
		t.Fatal(err)
	}
	de, _ := New(Config{})
	for _, tc := range []struct {
		in     string
		us, de bool
	}{
		{"(415) 555-0132", true, false},
		{"0151 23456789", false, true},
		{"+49 151 23456789", true, true},
	} {
		if got := len(us.NewScanner().Scan(nil, []byte(tc.in))) > 0; got != tc.us {
			t.Errorf("US: %q found %v", tc.in, got)
		}
		if got := len(de.NewScanner().Scan(nil, []byte(tc.in))) > 0; got != tc.de {
			t.Errorf("DE: %q found %v", tc.in, got)
		}
	}
}

// TestScanNoAlloc checks that values without a match cost no allocation.
func TestScanNoAlloc(t *testing.T) {
	_, s := corpusScanner(t)
	vals := [][]byte{[]byte("SKU-TSHIRT-M"), []byte("black-friday-2024"), []byte("EUR"), []byte("4006381333931"), []byte("google"), []byte("2024-05-17")}
	dst := make([]Match, 0, 8)
	allocs := testing.AllocsPerRun(100, func() {
		for _, v := range vals {
			if ms := s.Scan(dst[:0], v); len(ms) != 0 {
				t.Fatalf("%q: %v", v, ms)
			}
		}
	})
	if allocs != 0 {
		t.Errorf("%.1f allocations per run, want 0", allocs)
	}
}

// FuzzScan checks that Scan never panics, returns sorted matches within
// the input, and that Redact's output contains no match any more (except
// of the redaction markers themselves) and is valid UTF-8 when the input is.
func FuzzScan(f *testing.F) {
	for _, s := range []string{"", "jane@example.com", "+49 151 23456789", "4111 1111 1111 1111", "DE89370400440532013000",
		"192.168.0.1", "2001:db8::1", "cust-100042", "%2B49%20151%2012345678", "0151/23456789", "a@b.c@d.de", "%", "%4", "::", "00 00"} {
		f.Add(s)
	}
	d, err := New(Config{Patterns: []Pattern{{Name: "loyalty", Regexp: `LOY-[0-9]{4}`}}})
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, in string) {
		s := d.NewScanner()
		s.AddIdentifier(0, []byte("cust-100042"))
		ms := s.Scan(nil, []byte(in))
		for i, m := range ms {
			if m.Start < 0 || m.End > len(in) || m.Start >= m.End {
				t.Fatalf("match %+v outside %d bytes", m, len(in))
			}
			if i > 0 && m.Start < ms[i-1].Start {
				t.Fatalf("matches not sorted: %v", ms)
			}
		}
		// The prefilters the processor relies on never hide a match.
		sum := Summarize([]byte(in))
		for _, m := range ms {
			if m.Kind == KindIdentifier && !MayContain(sum, []byte("cust-100042")) || m.Kind != KindIdentifier && !d.Candidate(sum) {
				t.Fatalf("%q: match %+v, but the summary says none can be there", in, m)
			}
		}
		out := d.Redact(nil, []byte(in), ms)
		if len(ms) == 0 && string(out) != in {
			t.Fatalf("Redact without matches changed %q to %q", in, out)
		}
		if utf8.ValidString(in) && !utf8.Valid(out) && !strings.Contains(in, "%") {
			t.Fatalf("Redact(%q) = %q: invalid UTF-8", in, out)
		}
	})
}

func BenchmarkScan(b *testing.B) {
	_, s := corpusScanner(b)
	vals := [][]byte{[]byte("EUR"), []byte("SKU-TSHIRT-M"), []byte("SKU-MUG"), []byte("google"), []byte("black-friday"), []byte("Berlin"), []byte("DE")}
	n := 0
	for _, v := range vals {
		n += len(v)
	}
	dst := make([]Match, 0, 8)
	b.SetBytes(int64(n))
	for b.Loop() {
		for _, v := range vals {
			dst = s.Scan(dst[:0], v)
		}
	}
}
