package pii

import (
	"bufio"
	"fmt"
	"os"
	"slices"
	"strings"
	"testing"
)

// readCorpus reads a corpus file (see corpus_gen_test.go).
func readCorpus(t testing.TB, path string) []labelled {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var out []labelled
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := sc.Text()
		if strings.HasPrefix(line, "#") || line == "" {
			continue
		}
		label, value, ok := strings.Cut(line, "\t")
		if !ok {
			t.Fatalf("%s: line %q has no tab", path, line)
		}
		out = append(out, labelled{label, value})
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

// corpusScanner returns a scanner with the corpus's identifiers.
func corpusScanner(t testing.TB) (*Detector, *Scanner) {
	d, err := New(Config{})
	if err != nil {
		t.Fatal(err)
	}
	s := d.NewScanner()
	for i, v := range corpusIdentifiers {
		s.AddIdentifier(i, []byte(v))
	}
	return d, s
}

// kindScore counts one detector's results over a corpus.
type kindScore struct {
	pos, found int // positives labelled with the kind, and those it found
	fp         int // values not labelled with the kind on which it fired, among the negatives
}

// TestCorpus scans the labelled corpus and reports precision and recall
// per detector; it fails below recall 0.99 on the positives or above 0.5%
// false positives on the negatives (for any detector and overall).
func TestCorpus(t *testing.T) {
	entries := append(readCorpus(t, "testdata/corpus.tsv"), readCorpus(t, "testdata/hard.tsv")...)
	if len(entries) < 2000 {
		t.Fatalf("corpus has %d values, want at least 2,000", len(entries))
	}
	scoreCorpus(t, entries)
}

// TestCorpusHeldOut scores values the detectors were not tuned on: the
// generator with other seeds (same distributions, other values).
func TestCorpusHeldOut(t *testing.T) {
	for _, seed := range []uint64{1, 2, 3} {
		t.Run(fmt.Sprint("seed=", seed), func(t *testing.T) { scoreCorpus(t, generateCorpus(seed)) })
	}
}

// scoreCorpus scans entries and reports and checks the scores.
func scoreCorpus(t *testing.T, entries []labelled) {
	_, s := corpusScanner(t)
	score := map[string]*kindScore{}
	for _, k := range Kinds() {
		score[k.String()] = &kindScore{}
	}
	negatives, negHit := 0, 0
	var misses, falsePos []string
	for _, e := range entries {
		ms := s.Scan(nil, []byte(e.value))
		fired := map[string]bool{}
		for _, m := range ms {
			fired[m.Kind.String()] = true
		}
		if e.label == "none" {
			negatives++
			if len(ms) > 0 {
				negHit++
				falsePos = append(falsePos, fmt.Sprintf("%q: %v", e.value, ms))
			}
			for k := range fired {
				score[k].fp++
			}
			continue
		}
		sc, ok := score[e.label]
		if !ok {
			t.Fatalf("unknown label %q", e.label)
		}
		sc.pos++
		if fired[e.label] {
			sc.found++
		} else {
			misses = append(misses, fmt.Sprintf("%s %q: %v", e.label, e.value, ms))
		}
	}
	t.Logf("%d values: %d positives, %d negatives", len(entries), len(entries)-negatives, negatives)
	t.Logf("%-11s %9s %7s %9s %7s %9s", "detector", "positives", "recall", "FP (neg)", "FP rate", "precision")
	allPos, allFound := 0, 0
	for _, k := range Kinds() {
		sc := score[k.String()]
		allPos += sc.pos
		allFound += sc.found
		recall := float64(sc.found) / float64(max(sc.pos, 1))
		precision := float64(sc.found) / float64(max(sc.found+sc.fp, 1))
		fpRate := float64(sc.fp) / float64(negatives)
		t.Logf("%-11s %9d %7.4f %9d %6.2f%% %9.4f", k, sc.pos, recall, sc.fp, 100*fpRate, precision)
		if recall < 0.99 {
			t.Errorf("%s: recall %.4f < 0.99", k, recall)
		}
		if fpRate > 0.005 {
			t.Errorf("%s: false positives on %.2f%% of the negatives > 0.5%%", k, 100*fpRate)
		}
	}
	negRate := float64(negHit) / float64(negatives)
	t.Logf("%-11s %9d %7.4f %9d %6.2f%%", "all", allPos, float64(allFound)/float64(allPos), negHit, 100*negRate)
	if negRate > 0.005 {
		t.Errorf("false positives on %.2f%% of the negatives > 0.5%%", 100*negRate)
	}
	slices.Sort(misses)
	for _, m := range misses {
		t.Logf("missed: %s", m)
	}
	for _, f := range falsePos {
		t.Logf("false positive: %s", f)
	}
}
