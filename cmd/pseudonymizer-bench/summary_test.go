package main

import (
	"bytes"
	"context"
	"strings"
	"testing"
	"time"
)

// TestSummarize checks the medians, ranges and per-round efficiencies of
// the summary: each round's efficiency is against that round's copy.
func TestSummarize(t *testing.T) {
	round := func(bin string, copyMS, oursMS, pgMS int) benchRound {
		return benchRound{binary: bin, results: []*benchResult{
			{name: "b", kind: "txcopy", cpu: time.Duration(copyMS) * time.Millisecond, pgCPU: -1, rate: 1000},
			{name: "c", kind: "pg", cpu: time.Duration(oursMS) * time.Millisecond, pgCPU: time.Duration(pgMS) * time.Millisecond, pseudonymizer: true},
			{name: "d", kind: "embedded", skipped: "skipped"},
		}}
	}
	// 1,000 events: 1 ms is 1 µs per event.
	rounds := []benchRound{
		round("new", 4, 6, 2), round("old", 4, 14, 2),
		round("new", 6, 10, 2), round("old", 6, 10, 2),
		round("new", 5, 8, 2), round("old", 5, 18, 2),
	}
	var out bytes.Buffer
	summarize(&out, 1000, rounds)
	rows := map[string]string{}
	for _, line := range strings.Split(out.String(), "\n") {
		if f := strings.Fields(line); len(f) > 2 {
			rows[f[0]+" "+f[1]] = line
		}
	}
	want := map[string][]string{
		// c: 4/8, 6/12, 5/10 = 0.50 each; ours 6, 10, 8.
		"new c": {"3", "8.00 (6.00–10.00)", "2.00 (2.00–2.00)", "0.50 (0.50–0.50)"},
		// c: 4/16 = 0.25, 6/12 = 0.50, 5/20 = 0.25.
		"old c": {"3", "14.00 (10.00–18.00)", "0.25 (0.25–0.50)"},
		"new b": {"3", "1000 (1000–1000)", "5.00 (4.00–6.00)"},
	}
	for k, parts := range want {
		line, ok := rows[k]
		if !ok {
			t.Fatalf("no row %q in:\n%s", k, out.String())
		}
		for _, p := range parts {
			if !strings.Contains(line, p) {
				t.Errorf("row %q: %q lacks %q", k, line, p)
			}
		}
	}
	if _, ok := rows["new d"]; ok {
		t.Errorf("a skipped pipeline has a row:\n%s", out.String())
	}
	if !strings.HasPrefix(out.String(), "summary of 6 runs") {
		t.Errorf("header: %q", strings.SplitN(out.String(), "\n", 2)[0])
	}
}

// TestBenchRuns runs the quick bench twice and checks that both runs and
// the summary are printed.
func TestBenchRuns(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	var out, errOut bytes.Buffer
	args := []string{"--quick", "--events", "3000", "--no-postgres", "--only", "txcopy", "--runs", "2"}
	if err := run(ctx, args, &out, &errOut); err != nil {
		t.Fatalf("bench: %v\nstdout:\n%s\nstderr:\n%s", err, out.String(), errOut.String())
	}
	s := out.String()
	for _, want := range []string{"== run 1 of 2", "== run 2 of 2", "summary of 2 runs"} {
		if !strings.Contains(s, want) {
			t.Errorf("output lacks %q:\n%s", want, s)
		}
	}
	var row string
	for _, line := range strings.Split(s[strings.Index(s, "summary of"):], "\n") {
		if f := strings.Fields(line); len(f) > 3 && f[0] == "this" && f[2] == "b" {
			row = line
		}
	}
	if f := strings.Fields(row); len(f) < 6 || f[3] != "2" {
		t.Errorf("summary row of the copy %q, want 2 runs", row)
	}
	if err := run(ctx, []string{"--runs", "0"}, &out, &errOut); err == nil {
		t.Error("--runs 0 accepted")
	}
}
