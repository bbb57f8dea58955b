package policy

import (
	"bytes"
	"math/rand/v2"
	"slices"
	"testing"

	"github.com/hygiene/pseudonymizer/processor/pseudonym"
	"github.com/hygiene/pseudonymizer/schema"
)

// TestProjectHead checks that ProjectHead, which copies and skips top-level
// fields by the offsets Scan recorded and derives with a prepared key,
// writes exactly what Project writes, for hamba's encoding and hand
// encodings with random block layouts.
func TestProjectHead(t *testing.T) {
	r := rand.New(rand.NewPCG(3, 4))
	p := mustCompile(allPolicies...)
	d := pseudonym.NewDeriver()
	var want, got []byte
	for n := range 300 {
		e := randEvent(r)
		key := subjectKey(r)
		k := d.Prepare(key)
		for _, b := range [][]byte{must(schema.MarshalOrderEvent(e)), encodeEvent(r, e)} {
			h, err := p.Scan(b)
			if err != nil {
				t.Fatalf("event %d: Scan: %v", n, err)
			}
			for i, pol := range allPolicies {
				if want, err = p.Project(want[:0], i, b, key, d); err != nil {
					t.Fatalf("event %d system %s: Project: %v", n, pol.System, err)
				}
				sp := p.SubjectPseudonymKey(nil, i, &k, h.CustomerID, d)
				if !bytes.Equal(sp, p.SubjectPseudonym(nil, i, key, h.CustomerID, d)) {
					t.Fatalf("event %d system %s: SubjectPseudonymKey differs from SubjectPseudonym", n, pol.System)
				}
				for _, subj := range [][]byte{nil, sp} {
					if got, err = p.ProjectHead(append(got[:0], 'x'), i, b, &h, &k, subj, d); err != nil {
						t.Fatalf("event %d system %s: ProjectHead: %v", n, pol.System, err)
					}
					if !bytes.Equal(got[1:], want) || got[0] != 'x' {
						t.Fatalf("event %d system %s: ProjectHead differs from Project", n, pol.System)
					}
				}
			}
		}
	}
}

// TestProjectHeadMismatch: the Head of another record of another length
// is not used (the output is Project's); one of the same length but other
// field boundaries is detected where a walked field ends.
func TestProjectHeadMismatch(t *testing.T) {
	r := rand.New(rand.NewPCG(5, 6))
	p := mustCompile(allPolicies...)
	d := pseudonym.NewDeriver()
	key := subjectKey(r)
	k := d.Prepare(key)
	e1 := randEvent(r)
	e1.EventID, e1.OrderID = "event-1", "order-1"
	b1 := must(schema.MarshalOrderEvent(e1))
	e2 := *e1
	e2.EventID = "event-10"
	b2 := must(schema.MarshalOrderEvent(&e2))
	e3 := *e1
	e3.EventID, e3.OrderID = "event-10", "order-"
	b3 := must(schema.MarshalOrderEvent(&e3))
	if len(b3) != len(b1) {
		t.Fatalf("test records of %d and %d bytes", len(b1), len(b3))
	}
	h2, err := p.Scan(b2)
	if err != nil {
		t.Fatal(err)
	}
	h3, err := p.Scan(b3)
	if err != nil {
		t.Fatal(err)
	}
	for i := range allPolicies {
		want := must(p.Project(nil, i, b1, key, d))
		if got, err := p.ProjectHead(nil, i, b1, &h2, &k, nil, d); err != nil || !bytes.Equal(got, want) {
			t.Errorf("system %d: ProjectHead with the head of a longer record: %v", i, err)
		}
		// Where the system walks event_id, the boundary after it is
		// checked. (A system that only copies or skips top-level fields
		// trusts the head: it must be the record's own.)
		if !slices.Contains(allPolicies[i].Pseudonymize, FieldEventID) {
			continue
		}
		if _, err := p.ProjectHead(nil, i, b1, &h3, &k, nil, d); err == nil {
			t.Errorf("system %d: ProjectHead accepted the head of another record", i)
		}
	}
}

func TestProjectHeadZeroAllocs(t *testing.T) {
	if raceEnabled {
		t.Skip("the race detector allocates; allocations are asserted without -race")
	}
	r := rand.New(rand.NewPCG(9, 10))
	p := mustCompile(allPolicies...)
	d := pseudonym.NewDeriver()
	e := randEvent(r)
	b := must(schema.MarshalOrderEvent(e))
	k := d.Prepare(subjectKey(r))
	dst := make([]byte, 0, 64<<10)
	sp := make([]byte, 0, pseudonym.Size)
	if n := testing.AllocsPerRun(50, func() {
		h, err := p.Scan(b)
		if err != nil {
			t.Fatal(err)
		}
		sp = p.SubjectPseudonymKey(sp[:0], 0, &k, h.CustomerID, d)
		for i := range allPolicies {
			if dst, err = p.ProjectHead(dst[:0], i, b, &h, &k, sp, d); err != nil {
				t.Fatal(err)
			}
		}
	}); n != 0 {
		t.Errorf("Scan+ProjectHead: %v allocs, want 0", n)
	}
}

// BenchmarkProjectHead3Systems is BenchmarkProject3Systems the way the
// processor projects: by Scan's offsets, with a prepared key.
func BenchmarkProjectHead3Systems(b *testing.B) {
	rec := benchRecord(b)
	p := mustCompile(gaPolicy, metaPolicy, crmPolicy)
	d := pseudonym.NewDeriver()
	k := d.Prepare(bytes.Repeat([]byte{1}, 32))
	h, err := p.Scan(rec)
	if err != nil {
		b.Fatal(err)
	}
	dst := make([]byte, 0, 4096)
	b.SetBytes(int64(len(rec)))
	b.ReportAllocs()
	for b.Loop() {
		for i := range 3 {
			if dst, err = p.ProjectHead(dst[:0], i, rec, &h, &k, nil, d); err != nil {
				b.Fatal(err)
			}
		}
	}
}
