// Package linkability measures how far two marketing systems could join
// their pseudonymized records on what they share: the kept fields (at the
// coarser of the two systems' precisions), the record timestamps and the
// headers. Pseudonyms never match across systems (P2), so they are left
// out.
//
// For a pair of systems A and B, the join key of a record is the tuple of
// the fields both receive. Records with equal keys form an equivalence
// class; its size k is the number of B records that a join of one of them
// matches (both systems receive every event, so the classes are the same on
// both sides). The measures follow ARX and sdcMicro: the share of records
// in classes of size 1 (records at risk, "sample uniques"), the highest
// risk (1/smallest k), the average risk (classes/records, the prosecutor
// model's expected share of correct re-identifications) and a histogram
// of class sizes. Customers are linked when the intersection of the
// candidates of all their events leaves exactly their own pseudonym in B:
// a customer with several events, each in a small class, is often linked
// although no single event is unique.
//
// All fields together give the finest classes: a subset of them can only
// merge classes, never split one, so the share linked on all shared fields
// bounds that on any combination of them.
package linkability

import (
	"fmt"
	"io"
	"maps"
	"math/big"
	"slices"
	"strings"
	"time"

	"github.com/hygiene/pseudonymizer/processor/policy"
)

// Pseudo-fields: what a system receives besides the record value.
const (
	// FieldTimestamp is the record timestamp.
	FieldTimestamp = "@timestamp"
	// HeaderPrefix prefixes a header name.
	HeaderPrefix = "@header:"
)

// System is what one system received for a sample of events.
type System struct {
	Name string
	// Generalize gives the precision of fields that are not exact, by
	// path (FieldTimestamp included: its unit as a truncation).
	Generalize map[string]policy.Generalization
	// Records holds one record per event.
	Records []Record
}

// Record is one system's record of one event, with the ground truth the
// report knows and the systems do not.
type Record struct {
	Event    string // the same for the same event in every system
	Customer string // the same for the same customer in every system
	// Fields maps each received leaf path (dotted, through records, arrays
	// and map keys) to its value as hamba/avro decodes it; an array's
	// leaves are lists. Pseudonymized fields are left out.
	Fields map[string]any
}

// Pair is the report of one pair of systems.
type Pair struct {
	A, B string
	// Shared lists the fields both receive, sorted, with the precision
	// they are compared at.
	Shared []Shared
	// Events and Customers count the sample (events both received).
	Events, Customers int
	// UniqueEvents counts events in classes of size 1; LinkedCustomers the
	// customers whose candidates in B are only themselves.
	UniqueEvents, LinkedCustomers int
	// Classes counts the equivalence classes; MinK is the smallest.
	Classes, MinK int
	// Below5 counts events in classes smaller than 5.
	Below5 int
	// Histogram counts classes and events by class size (HistogramBounds).
	Histogram []Bucket
}

// Shared is a field two systems share.
type Shared struct {
	Path string
	// At is the precision of the join: the coarser of the two systems'.
	At policy.Generalization
}

// Bucket is one row of a class-size histogram: classes of size Lo to Hi
// (0: no upper bound).
type Bucket struct {
	Lo, Hi          int
	Classes, Events int
}

// HistogramBounds are the lower bounds of the histogram's buckets.
var HistogramBounds = []int{1, 2, 3, 5, 10, 20, 50, 100}

// UniqueEventShare is UniqueEvents/Events (0 for no events).
func (p *Pair) UniqueEventShare() float64 { return share(p.UniqueEvents, p.Events) }

// LinkedCustomerShare is LinkedCustomers/Customers.
func (p *Pair) LinkedCustomerShare() float64 { return share(p.LinkedCustomers, p.Customers) }

// AverageRisk is Classes/Events: the expected share of records a
// prosecutor re-identifies by picking one of each class's records.
func (p *Pair) AverageRisk() float64 { return share(p.Classes, p.Events) }

func share(n, of int) float64 {
	if of == 0 {
		return 0
	}
	return float64(n) / float64(of)
}

// Analyze reports every pair of systems, in the order given.
func Analyze(systems []System) ([]Pair, error) {
	var out []Pair
	for i := range systems {
		for j := i + 1; j < len(systems); j++ {
			p, err := Join(&systems[i], &systems[j])
			if err != nil {
				return nil, err
			}
			out = append(out, p)
		}
	}
	return out, nil
}

// fieldsOf returns the leaf paths a system received in any record.
func fieldsOf(s *System) map[string]bool {
	out := map[string]bool{}
	for _, r := range s.Records {
		for f := range r.Fields {
			out[f] = true
		}
	}
	return out
}

// Join reports the pair a, b.
func Join(a, b *System) (Pair, error) {
	p := Pair{A: a.Name, B: b.Name}
	fa, fb := fieldsOf(a), fieldsOf(b)
	for _, f := range slices.Sorted(maps.Keys(fa)) {
		if !fb[f] {
			continue
		}
		at, err := coarser(a.Generalize[f], b.Generalize[f])
		if err != nil {
			return Pair{}, fmt.Errorf("linkability: %s and %s, field %s: %w", a.Name, b.Name, f, err)
		}
		p.Shared = append(p.Shared, Shared{Path: f, At: at})
	}
	byEvent := map[string]*Record{}
	for i := range b.Records {
		byEvent[b.Records[i].Event] = &b.Records[i]
	}
	// Keys of both sides; classes are counted on B's keys, which a join of
	// an A record looks up.
	type rec struct {
		ka, kb   string
		customer string
	}
	var recs []rec
	classB := map[string][]int{} // key -> indices into recs
	for i := range a.Records {
		ra := &a.Records[i]
		rb := byEvent[ra.Event]
		if rb == nil {
			continue
		}
		ka, err := joinKey(ra, p.Shared)
		if err != nil {
			return Pair{}, fmt.Errorf("linkability: %s: %w", a.Name, err)
		}
		kb, err := joinKey(rb, p.Shared)
		if err != nil {
			return Pair{}, fmt.Errorf("linkability: %s: %w", b.Name, err)
		}
		classB[kb] = append(classB[kb], len(recs))
		recs = append(recs, rec{ka, kb, ra.Customer})
	}
	p.Events = len(recs)
	countA := map[string]int{}
	for _, r := range recs {
		countA[r.ka]++
	}
	// Events: unique when the A record's key matches exactly one B record,
	// which is the same event, and no other A record has that key.
	for _, r := range recs {
		if len(classB[r.ka]) == 1 && r.ka == r.kb && countA[r.ka] == 1 {
			p.UniqueEvents++
		}
	}
	// Classes and histogram, by B's keys.
	p.Histogram = make([]Bucket, len(HistogramBounds))
	for i, lo := range HistogramBounds {
		p.Histogram[i].Lo = lo
		if i+1 < len(HistogramBounds) {
			p.Histogram[i].Hi = HistogramBounds[i+1] - 1
		}
	}
	for _, members := range classB {
		k := len(members)
		p.Classes++
		if p.MinK == 0 || k < p.MinK {
			p.MinK = k
		}
		if k < 5 {
			p.Below5 += k
		}
		i := len(HistogramBounds) - 1
		for HistogramBounds[i] > k {
			i--
		}
		p.Histogram[i].Classes++
		p.Histogram[i].Events += k
	}
	// Customers: the candidates of a customer are the B customers of the
	// classes its A records' keys select, intersected over its events.
	events := map[string][]string{} // customer -> A keys
	for _, r := range recs {
		events[r.customer] = append(events[r.customer], r.ka)
	}
	p.Customers = len(events)
	for c, keys := range events {
		// Start from the smallest class.
		slices.SortFunc(keys, func(x, y string) int { return len(classB[x]) - len(classB[y]) })
		cand := map[string]bool{}
		for _, i := range classB[keys[0]] {
			cand[recs[i].customer] = true
		}
		for _, k := range keys[1:] {
			if len(cand) <= 1 {
				break
			}
			in := map[string]bool{}
			for _, i := range classB[k] {
				if cand[recs[i].customer] {
					in[recs[i].customer] = true
				}
			}
			cand = in
		}
		if len(cand) == 1 && cand[c] {
			p.LinkedCustomers++
		}
	}
	return p, nil
}

// joinKey is the tuple of a record's shared fields at the join's precision.
func joinKey(r *Record, shared []Shared) (string, error) {
	var sb strings.Builder
	for _, s := range shared {
		v, err := generalize(s.At, r.Fields[s.Path])
		if err != nil {
			return "", fmt.Errorf("field %s: %w", s.Path, err)
		}
		fmt.Fprintf(&sb, "%d:%v\x00", len(s.Path), v)
	}
	return sb.String(), nil
}

// generalize applies g to a value or to each value of a list.
func generalize(g policy.Generalization, v any) (any, error) {
	if l, ok := v.([]any); ok {
		out := make([]any, len(l))
		for i, x := range l {
			y, err := policy.GeneralizeValue(g, x)
			if err != nil {
				return nil, err
			}
			out[i] = y
		}
		return out, nil
	}
	if t, ok := v.(time.Time); ok {
		v = t.UTC()
	}
	return policy.GeneralizeValue(g, v)
}

// coarser returns the precision at which values generalized by a and by b
// can be compared: the least common multiple of two units or multiples,
// the shorter prefix; a zero Generalization is exact.
func coarser(a, b policy.Generalization) (policy.Generalization, error) {
	switch {
	case a == b || b == (policy.Generalization{}):
		return a, nil
	case a == (policy.Generalization{}):
		return b, nil
	case a.Truncate != "" && b.Truncate != "":
		ua, err := policy.ParseUnit(a.Truncate)
		if err != nil {
			return a, err
		}
		ub, err := policy.ParseUnit(b.Truncate)
		if err != nil {
			return a, err
		}
		l := lcm(int64(ua/time.Millisecond), int64(ub/time.Millisecond))
		if l <= 0 || l > int64(policy.MaxUnit/time.Millisecond) {
			l = int64(policy.MaxUnit / time.Millisecond)
		}
		return policy.Generalization{Truncate: policy.FormatUnit(time.Duration(l) * time.Millisecond)}, nil
	case a.Round != 0 && b.Round != 0:
		l := lcm(a.Round, b.Round)
		if l <= 0 {
			l = max(a.Round, b.Round)
		}
		return policy.Generalization{Round: l}, nil
	case a.Prefix != 0 && b.Prefix != 0:
		return policy.Generalization{Prefix: min(a.Prefix, b.Prefix)}, nil
	}
	return a, fmt.Errorf("transforms %+v and %+v do not compare", a, b)
}

// lcm is the least common multiple of two positive numbers, or -1 if it
// overflows.
func lcm(a, b int64) int64 {
	g := new(big.Int).GCD(nil, nil, big.NewInt(a), big.NewInt(b))
	l := new(big.Int).Mul(big.NewInt(a), big.NewInt(b))
	l.Quo(l, g)
	if !l.IsInt64() {
		return -1
	}
	return l.Int64()
}

// Describe writes a precision as the report prints it.
func Describe(g policy.Generalization) string {
	switch {
	case g.Truncate != "":
		return "truncated to " + g.Truncate
	case g.Round != 0:
		return fmt.Sprintf("rounded to %d", g.Round)
	case g.Prefix != 0:
		return fmt.Sprintf("first %d characters", g.Prefix)
	}
	return "exact"
}

// Write prints pairs as the linkability command does.
func Write(w io.Writer, pairs []Pair) {
	for _, p := range pairs {
		fmt.Fprintf(w, "\n%s × %s\n", p.A, p.B)
		if len(p.Shared) == 0 {
			fmt.Fprintf(w, "  shared fields: none: every record of one matches every record of the other\n")
		} else {
			var fs []string
			for _, s := range p.Shared {
				fs = append(fs, s.Path+" ("+Describe(s.At)+")")
			}
			fmt.Fprintf(w, "  shared fields: %s\n", strings.Join(fs, ", "))
		}
		fmt.Fprintf(w, "  unique join (k = 1): %d of %d events (%.2f%%), %d of %d customers (%.2f%%)\n",
			p.UniqueEvents, p.Events, 100*p.UniqueEventShare(), p.LinkedCustomers, p.Customers, 100*p.LinkedCustomerShare())
		highest := 0.0
		if p.MinK > 0 {
			highest = 1 / float64(p.MinK)
		}
		fmt.Fprintf(w, "  risk: %d classes, smallest k %d (highest risk %.2f%%), average risk %.2f%%, events in classes below k = 5: %d (%.2f%%)\n",
			p.Classes, p.MinK, 100*highest, 100*p.AverageRisk(), p.Below5, 100*share(p.Below5, p.Events))
		fmt.Fprintf(w, "  %-9s %8s %8s\n", "k", "classes", "events")
		for _, b := range p.Histogram {
			k := fmt.Sprintf("%d-%d", b.Lo, b.Hi)
			switch {
			case b.Hi == 0:
				k = fmt.Sprintf("%d+", b.Lo)
			case b.Lo == b.Hi:
				k = fmt.Sprint(b.Lo)
			}
			fmt.Fprintf(w, "  %-9s %8d %8d\n", k, b.Classes, b.Events)
		}
	}
}

// CheckPrecision returns an error naming the first field of s's records
// whose value is finer than s.Generalize declares (a received timestamp
// that is not a whole unit, an amount that is not a multiple): the join
// compares at the declared precision, which holds only if the values
// respect it.
func CheckPrecision(s *System) error {
	for _, r := range s.Records {
		for path, g := range s.Generalize {
			v, ok := r.Fields[path]
			if !ok {
				continue
			}
			if t, isTime := v.(time.Time); isTime {
				v = t.UTC()
			}
			got, err := generalize(g, v)
			if err != nil {
				return fmt.Errorf("linkability: %s: field %s: %w", s.Name, path, err)
			}
			if fmt.Sprint(got) != fmt.Sprint(v) {
				return fmt.Errorf("linkability: %s: field %s of event %s is finer than %s", s.Name, path, r.Event, Describe(g))
			}
		}
	}
	return nil
}
