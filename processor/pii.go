package processor

import (
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/hygiene/pseudonymizer/processor/pii"
	"github.com/hygiene/pseudonymizer/processor/policy"
)

// The PII guard (issue #27): before a system's record is produced, every
// string it keeps is scanned for identifying data (processor/pii): e-mail
// addresses, phone numbers, card numbers, IBANs, IP addresses, custom
// patterns, and the event's own identifiers that the system does not
// keep. A system's mode decides what a match does.

// PII guard modes, per system (policy.Policy.PII).
const (
	PIIRedact = "redact" // replace each match by [redacted:<kind>] (the default)
	PIIDrop   = "drop"   // the system does not get the event
	PIIOff    = "off"    // no scan
)

// CheckPIIMode checks a system's PII guard mode; "" is PIIRedact.
func CheckPIIMode(mode string) error {
	switch mode {
	case "", PIIRedact, PIIDrop, PIIOff:
		return nil
	}
	return fmt.Errorf("pii %q is not redact, drop or off", mode)
}

// PIIConfig configures the PII guard.
type PIIConfig struct {
	// Detector finds identifying data; nil turns the guard off for every
	// system.
	Detector *pii.Detector
	// IdentifierFields are the input fields (dotted paths of strings at a
	// fixed place, outside arrays and maps) whose raw values are looked
	// for inside the strings a system keeps, unless the system keeps the
	// field itself; nil means DefaultIdentifierFields.
	IdentifierFields []string
	// QuarantineTopic, if set, receives the original record of events in
	// which the guard found something, at most QuarantinePerBatch per
	// batch, with headers naming the systems, fields and kinds.
	QuarantineTopic string
	// QuarantinePerBatch caps the quarantined records per batch; 0 means
	// DefaultQuarantinePerBatch.
	QuarantinePerBatch int
}

// DefaultQuarantinePerBatch is the default sample size of the quarantine
// topic per batch.
const DefaultQuarantinePerBatch = 10

// DefaultIdentifierFields returns the identifier fields of a plan when
// none are configured: event_id, order_id, customer_id and every string
// field at a fixed place whose name suggests personal data
// (policy.SuggestsPersonalData: email, phone, shipping_address.line1...).
func DefaultIdentifierFields(k *policy.Kept) []string {
	var out []string
	for _, f := range k.IDFields() {
		switch {
		case f.Path == policy.FieldEventID, f.Path == policy.FieldOrderID, f.Path == policy.FieldCustomerID,
			policy.SuggestsPersonalData(f.Path):
			out = append(out, f.Path)
		}
	}
	return out
}

// piiGuard is the compiled guard, shared by the workers.
type piiGuard struct {
	plan   *policy.Plan
	det    *pii.Detector
	kept   *policy.Kept
	fields []policy.KeptField
	ids    []policy.IDField
	idWant []bool
	anyID  bool   // some idWant
	head   [3]int // indices in ids of event_id, order_id, customer_id (-1: not wanted)
	// on[s] means system s is scanned, drop[s] that it drops events.
	on, drop []bool
	// scan[f] means some scanned system keeps field f.
	scan       []bool
	quarantine string
	perBatch   int
}

// newPIIGuard compiles the guard, or returns nil if no system is scanned.
func newPIIGuard(cfg PIIConfig, plan *policy.Plan, pols []policy.Policy) (*piiGuard, error) {
	if cfg.Detector == nil {
		return nil, nil
	}
	n := len(plan.Systems())
	g := &piiGuard{plan: plan, det: cfg.Detector, on: make([]bool, n), drop: make([]bool, n), quarantine: cfg.QuarantineTopic, perBatch: cfg.QuarantinePerBatch}
	if g.perBatch <= 0 {
		g.perBatch = DefaultQuarantinePerBatch
	}
	any := false
	for i := range n {
		mode := ""
		if i < len(pols) {
			mode = pols[i].PII
		}
		if err := CheckPIIMode(mode); err != nil {
			return nil, fmt.Errorf("processor: system %s: %w", plan.Systems()[i], err)
		}
		g.on[i] = mode != PIIOff
		g.drop[i] = mode == PIIDrop
		any = any || g.on[i]
	}
	if !any {
		return nil, nil
	}
	g.kept = plan.Kept()
	g.fields = g.kept.Fields()
	g.ids = g.kept.IDFields()
	g.scan = make([]bool, len(g.fields))
	for f, kf := range g.fields {
		for s, k := range kf.Systems {
			g.scan[f] = g.scan[f] || k && g.on[s]
		}
	}
	names := cfg.IdentifierFields
	if names == nil {
		names = DefaultIdentifierFields(g.kept)
	}
	g.idWant = make([]bool, len(g.ids))
	g.head = [3]int{-1, -1, -1}
	for _, name := range names {
		i := slices.IndexFunc(g.ids, func(f policy.IDField) bool { return f.Path == name })
		if i < 0 {
			return nil, fmt.Errorf("processor: pii identifier field %q is not a string field outside arrays and maps of the input schema", name)
		}
		switch name {
		case policy.FieldEventID:
			g.head[0] = i
		case policy.FieldOrderID:
			g.head[1] = i
		case policy.FieldCustomerID:
			g.head[2] = i
		default:
			g.idWant[i] = true
			g.anyID = true
		}
	}
	return g, nil
}

// keptString is one kept string of the event being checked, its summary
// and its matches, ms[m0:m1] of the worker's.
type keptString struct {
	field, lenAt, at, end int
	sum                   pii.Summary
	m0, m1                int
}

// piiFinding is one system's finding in one event, for the metrics and
// the log once the batch committed.
type piiFinding struct {
	rec     *kgo.Record
	system  int
	field   int
	kind    string
	dropped bool
}

// piiWorker is a worker's guard state.
type piiWorker struct {
	sc       *pii.Scanner
	g        *piiGuard
	value    []byte // the record being walked
	union    pii.Summary
	cand     bool // some string is a candidate for a detector
	strs     []keptString
	headers  []policy.BlockHeader
	ms       []pii.Match
	sel      []pii.Match
	ids      [][]byte
	edits    []policy.StringEdit
	buf      []byte
	rec      []byte
	findings []piiFinding
	// quarantine holds the events this worker found something in, in
	// its share's order.
	quarantine []*kgo.Record
}

// KeptString is policy.StringSink: it summarizes each string that a
// scanned system keeps.
func (w *piiWorker) KeptString(field, lenAt, at, end int) {
	if !w.g.scan[field] {
		return
	}
	sum := pii.Summarize(w.value[at:end])
	w.union = w.union.Union(sum)
	w.cand = w.cand || w.g.det.Candidate(sum)
	w.strs = append(w.strs, keptString{field: field, lenAt: lenAt, at: at, end: end, sum: sum})
}

// SizedBlock is policy.StringSink.
func (w *piiWorker) SizedBlock(at, end int, count int64) {
	w.headers = append(w.headers, policy.BlockHeader{At: at, End: end, Count: count})
}

// scanOrder is Plan.Scan for o with the guard's first look in the same
// pass (policy.Kept.Scan): it sets o.head and o.scanErr, and o.piiFound
// if the guard may find something in o (projectShare then checks o
// again, with every match).
func (g *piiGuard) scanOrder(w *piiWorker, o *order) {
	w.strs, w.headers, w.ms = w.strs[:0], w.headers[:0], w.ms[:0]
	w.value, w.union, w.cand = o.value, pii.Summary{}, false
	o.head, o.scanErr = g.kept.Scan(o.value, w)
	w.value = nil
	if o.scanErr != nil {
		return
	}
	found, err := g.examine(w, o)
	o.piiFound = found || err != nil // an error comes back from check
}

// check scans the kept strings of o and reports whether anything was
// found (then decide tells each system what to do). It reads each kept
// string once to summarize it (policy.Kept.Walk, pii.Summarize); only the
// identifiers that the kept strings together may contain are looked for,
// and only strings that may hold a match are scanned.
func (g *piiGuard) check(w *piiWorker, o *order) (bool, error) {
	w.strs, w.headers, w.ms = w.strs[:0], w.headers[:0], w.ms[:0]
	w.value, w.union, w.cand = o.value, pii.Summary{}, false
	err := g.kept.Walk(o.value, &o.head, w)
	w.value = nil
	if err != nil {
		return false, fmt.Errorf("pii guard: %w", err)
	}
	return g.examine(w, o)
}

// examine is check after the walk: w holds o's kept strings.
func (g *piiGuard) examine(w *piiWorker, o *order) (bool, error) {
	if len(w.strs) == 0 {
		return false, nil
	}
	w.sc.ResetIdentifiers()
	ids := false
	add := func(tag int, v []byte) {
		if pii.MayContain(w.union, v) {
			w.sc.AddIdentifier(tag, v)
			ids = true
		}
	}
	h := &o.head
	for i, v := range [3][]byte{h.EventID, h.OrderID, h.CustomerID} {
		if g.head[i] >= 0 {
			add(g.head[i], v)
		}
	}
	if g.anyID {
		if len(w.ids) != len(g.ids) {
			w.ids = make([][]byte, len(g.ids))
		}
		maxLen := w.union.MaxLen() // longer identifiers cannot be inside
		if err := g.kept.IDValues(o.value, h, g.idWant, maxLen, w.ids); err != nil {
			return false, fmt.Errorf("pii guard: %w", err)
		}
		for i, v := range w.ids {
			if v != nil {
				add(i, v)
			}
		}
	}
	if !w.cand && !ids {
		return false, nil
	}
	found := false
	for i := range w.strs {
		s := &w.strs[i]
		s.m0 = len(w.ms)
		if ids || g.det.Candidate(s.sum) {
			w.ms = w.sc.ScanSummarized(w.ms, o.value[s.at:s.end], s.sum)
		}
		s.m1 = len(w.ms)
		found = found || s.m1 > s.m0
	}
	return found, nil
}

// decide returns what system sys does with the event that check found
// something in: drop it, or project redacted (a record of the input
// schema, in w's buffer, with its head), or neither (nothing relevant to
// sys). The findings are recorded in w.
func (g *piiGuard) decide(w *piiWorker, o *order, sys int) (drop bool, redacted []byte, head policy.Head, err error) {
	if !g.on[sys] {
		return false, nil, head, nil
	}
	w.edits, w.buf = w.edits[:0], w.buf[:0]
	n0 := len(w.findings)
	for i := range w.strs {
		s := &w.strs[i]
		if s.m1 == s.m0 || !g.fields[s.field].Systems[sys] {
			continue
		}
		w.sel = w.sel[:0]
		for _, m := range w.ms[s.m0:s.m1] {
			if m.Kind == pii.KindIdentifier && g.ids[m.Index].KeptBy[sys] {
				continue // the system gets this identifier anyway
			}
			w.sel = append(w.sel, m)
			w.addFinding(piiFinding{rec: o.rec, system: sys, field: s.field, kind: g.det.KindName(m)})
		}
		if len(w.sel) == 0 || g.drop[sys] {
			continue
		}
		start := len(w.buf)
		w.buf = g.det.Redact(w.buf, o.value[s.at:s.end], w.sel)
		w.edits = append(w.edits, policy.StringEdit{LenAt: s.lenAt, End: s.end, Value: w.buf[start:len(w.buf):len(w.buf)]})
	}
	if len(w.findings) == n0 {
		return false, nil, head, nil
	}
	if g.drop[sys] {
		for i := n0; i < len(w.findings); i++ {
			w.findings[i].dropped = true
		}
		return true, nil, head, nil
	}
	// The edits' values point into w.buf, which no longer grows.
	w.rec = policy.AppendEdited(w.rec[:0], o.value, w.edits, w.headers)
	head, err = planScan(g, w.rec)
	if err != nil {
		return false, nil, head, err
	}
	return false, w.rec, head, nil
}

// addFinding records f once per system, field and kind.
func (w *piiWorker) addFinding(f piiFinding) {
	for i := len(w.findings) - 1; i >= 0 && w.findings[i].rec == f.rec; i-- {
		if e := w.findings[i]; e.system == f.system && e.field == f.field && e.kind == f.kind {
			return
		}
	}
	w.findings = append(w.findings, f)
}

// errRedactedRecord means a redacted record did not scan: a defect.
var errRedactedRecord = errors.New("pii guard: redacted record is invalid")

// planScan scans a redacted record.
func planScan(g *piiGuard, b []byte) (policy.Head, error) {
	h, err := g.plan.Scan(b)
	if err != nil {
		return h, fmt.Errorf("%w: %w", errRedactedRecord, err)
	}
	return h, nil
}

// quarantineRecord returns the quarantine copy of r: the original record,
// with headers naming what was found where (never the values).
func (g *piiGuard) quarantineRecord(r *kgo.Record, findings []piiFinding, systems []string) kgo.Record {
	hdrs := []kgo.RecordHeader{
		{Key: "source.topic", Value: []byte(r.Topic)},
		{Key: "source.partition", Value: strconv.AppendInt(nil, int64(r.Partition), 10)},
		{Key: "source.offset", Value: strconv.AppendInt(nil, r.Offset, 10)},
	}
	for _, f := range findings {
		if f.rec != r {
			continue
		}
		action := PIIRedact
		if f.dropped {
			action = PIIDrop
		}
		hdrs = append(hdrs, kgo.RecordHeader{Key: "pii.finding", Value: fmt.Appendf(nil, "system=%s field=%s kind=%s action=%s",
			systems[f.system], g.fields[f.field].Path, f.kind, action)})
	}
	return kgo.Record{Topic: g.quarantine, Key: r.Key, Value: r.Value, Headers: hdrs}
}

// workerOf returns w's guard state, made on first use.
func (g *piiGuard) workerOf(w *worker) *piiWorker {
	if w.pii == nil {
		w.pii = &piiWorker{sc: g.det.NewScanner(), g: g}
	}
	return w.pii
}

// reset prepares w's guard state for a batch.
func (g *piiGuard) reset(w *worker) {
	g.workerOf(w)
	clear(w.pii.findings)
	w.pii.findings = w.pii.findings[:0]
	clear(w.pii.quarantine)
	w.pii.quarantine = w.pii.quarantine[:0]
}

// sampled notes that r had findings (for some system or none: check found
// something that decide may have found irrelevant to every system).
func (w *piiWorker) sampled(r *kgo.Record) {
	if n := len(w.findings); n > 0 && w.findings[n-1].rec == r {
		w.quarantine = append(w.quarantine, r)
	}
}

// collectPII gathers the workers' findings into b, and queues and hands
// over the batch's quarantine sample.
func (p *Processor) collectPII(b *batch, workers []*worker) {
	g := p.pii
	if len(b.piiDropped) != len(p.systems) {
		b.piiDropped = make([]int, len(p.systems))
	}
	for _, w := range workers {
		if w.pii == nil {
			continue
		}
		b.pii = append(b.pii, w.pii.findings...)
		for i, f := range w.pii.findings {
			if f.dropped && !slices.ContainsFunc(w.pii.findings[:i], func(e piiFinding) bool { return e.rec == f.rec && e.system == f.system }) {
				b.piiDropped[f.system]++
			}
		}
		if g.quarantine == "" {
			continue
		}
		for _, r := range w.pii.quarantine {
			if len(b.quarantine) >= g.perBatch {
				break
			}
			b.quarantine = append(b.quarantine, g.quarantineRecord(r, w.pii.findings, p.systems))
		}
	}
	// b.quarantine is complete: its records do not move any more.
	if b.send != nil {
		for i := range b.quarantine {
			b.send(&b.quarantine[i])
		}
	}
}

// committedPII publishes a committed batch's findings: metrics and one log
// line per event, system, field and kind, never the value.
func (p *Processor) committedPII(b *batch) (dropped int) {
	if p.pii == nil {
		return 0
	}
	for _, f := range b.pii {
		sys, field := p.systems[f.system], p.pii.fields[f.field].Path
		p.m.PIIDetected.WithLabelValues(sys, field, f.kind).Inc()
		action := PIIRedact
		if f.dropped {
			action = PIIDrop
		}
		p.log.Warn("pii guard: identifying data in a kept field", "topic", f.rec.Topic, "partition", f.rec.Partition,
			"offset", f.rec.Offset, "system", sys, "field", field, "kind", f.kind, "action", action)
	}
	for s, n := range b.piiDropped {
		if n > 0 {
			p.m.PIIDropped.WithLabelValues(p.systems[s]).Add(float64(n))
			dropped += n
		}
	}
	if n := len(b.quarantine); n > 0 {
		p.m.PIIQuarantined.Add(float64(n))
	}
	return dropped
}

// CheckPII checks the guard's configuration against the plan (the
// identifier fields, each system's mode) without building a processor.
func CheckPII(cfg PIIConfig, plan *policy.Plan, pols []policy.Policy) error {
	_, err := newPIIGuard(cfg, plan, pols)
	return err
}

// PIIWarnings returns one line per system and kept field whose name
// suggests personal data (policy.SuggestsPersonalData), and per system
// whose guard is off, for --check-config.
func PIIWarnings(plan *policy.Plan, pols []policy.Policy) []string {
	var out []string
	systems := plan.Systems()
	seen := map[string]bool{}
	warn := func(sys int, path string) {
		if k := systems[sys] + "\x00" + path; !seen[k] {
			seen[k] = true
			mode := PIIRedact
			if sys < len(pols) && pols[sys].PII != "" {
				mode = pols[sys].PII
			}
			what := map[string]string{
				PIIRedact: "the PII guard redacts what it recognises in it",
				PIIDrop:   "the PII guard withholds every event in which it recognises something in it",
				PIIOff:    "the PII guard is off for this system",
			}[mode]
			out = append(out, fmt.Sprintf("systems.%s keeps %s, whose name suggests personal data (%s)", systems[sys], path, what))
		}
	}
	for i, p := range pols {
		if i >= len(systems) {
			break
		}
		for _, k := range p.Keep {
			if policy.SuggestsPersonalData(k) {
				warn(i, k)
			}
		}
	}
	for _, f := range plan.Kept().Fields() {
		if !policy.SuggestsPersonalData(strings.TrimSuffix(strings.TrimSuffix(f.Path, "[key]"), ".*")) {
			continue
		}
		for s, k := range f.Systems {
			if k {
				warn(s, f.Path)
			}
		}
	}
	for i, p := range pols {
		if i < len(systems) && p.PII == PIIOff {
			out = append(out, fmt.Sprintf("systems.%s: pii is off: identifying data inside the fields it keeps goes out unchanged", systems[i]))
		}
	}
	return out
}
