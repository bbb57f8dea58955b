package main

import (
	"fmt"
	"io"
	"slices"
	"text/tabwriter"
)

// benchRound is one run of the whole bench with one pseudonymizer binary.
type benchRound struct {
	binary  string // as the summary names it
	results []*benchResult
}

// summarize prints, per binary and pipeline, the median and range over
// rounds of the events per second, the CPU per event, PostgreSQL's CPU per event and the
// efficiency, each round's efficiency against that round's transactional
// copy: single runs on a shared machine move by ±15% or more, so versions
// are compared over interleaved rounds.
func summarize(w io.Writer, events int, rounds []benchRound) {
	type key struct{ binary, name string }
	type series struct{ rate, ours, pg, eff []float64 }
	all := map[key]*series{}
	var order []key
	for _, rd := range rounds {
		copyUS := -1.0
		for _, r := range rd.results {
			if r.name == "b" && r.skipped == "" && r.error == "" {
				copyUS = perEvent(r.cpu, events)
			}
		}
		for _, r := range rd.results {
			if r.skipped != "" || r.error != "" {
				continue
			}
			k := key{rd.binary, r.name}
			s := all[k]
			if s == nil {
				s = &series{}
				all[k] = s
				order = append(order, k)
			}
			ours := perEvent(r.cpu, events)
			s.rate = append(s.rate, r.rate)
			s.ours = append(s.ours, ours)
			var pgUS float64
			if r.kind == "pg" && r.pgCPU >= 0 {
				pgUS = perEvent(r.pgCPU, events)
				s.pg = append(s.pg, pgUS)
			}
			if e := efficiency(copyUS, ours, pgUS); r.pseudonymizer && e > 0 {
				s.eff = append(s.eff, e)
			}
		}
	}
	fmt.Fprintf(w, "summary of %d runs: median (min–max)\n", len(rounds))
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "pseudonymizer\tpipeline\truns\tevents/s\tµs CPU/event\tµs PostgreSQL/event\tefficiency\t")
	for _, k := range order {
		s := all[k]
		fmt.Fprintf(tw, "%s\t%s\t%d\t%s\t%s\t%s\t%s\t\n", k.binary, k.name, len(s.ours), spreadf(s.rate, "%.0f"), spread(s.ours), spread(s.pg), spread(s.eff))
	}
	tw.Flush()
}

// spread formats the median and range of xs, or "-" when there are none.
func spread(xs []float64) string { return spreadf(xs, "%.2f") }

// spreadf is spread with the number format f.
func spreadf(xs []float64, f string) string {
	if len(xs) == 0 {
		return "-"
	}
	s := slices.Sorted(slices.Values(xs))
	med := s[len(s)/2]
	if len(s)%2 == 0 {
		med = (s[len(s)/2-1] + s[len(s)/2]) / 2
	}
	if len(s) == 1 {
		return fmt.Sprintf(f, med)
	}
	return fmt.Sprintf(f+" ("+f+"–"+f+")", med, s[0], s[len(s)-1])
}
