package linkability

import (
	"crypto/rand"
	"fmt"
	"strconv"
	"time"

	"github.com/hamba/avro/v2"

	"github.com/hygiene/pseudonymizer/processor/policy"
	"github.com/hygiene/pseudonymizer/processor/pseudonym"
)

// Event is one raw order event: the bare Avro of the bundled schema and
// the headers it came with.
type Event struct {
	Value   []byte
	Headers []Header
}

// Header is a Kafka record header.
type Header struct {
	Key   string
	Value []byte
}

// Observe runs every system's policy on events, as the processor does, and
// returns what each system receives: its records' kept fields, the record
// timestamp (for a system that keeps no occurred_at, the batch's start is
// taken to be occurred_at: the processor handles events soon after they
// occur) and the headers its policy allows. Pseudonyms are derived from a
// random key per customer, drawn for this call: they play no part in the
// report (pseudonyms never match across systems) and no stored key is
// read. Events that are not valid records are skipped and counted.
func Observe(plan *policy.Plan, events []Event) ([]System, int, error) {
	systems := make([]System, len(plan.Systems()))
	for i := range systems {
		systems[i] = For(plan, i)
	}
	keys := map[string][]byte{}
	defer func() {
		for _, k := range keys {
			clear(k)
		}
	}()
	d := pseudonym.NewDeriver()
	skipped := 0
	var out []byte
	for ev, e := range events {
		h, err := plan.Scan(e.Value)
		if err != nil {
			skipped++
			continue
		}
		customer := string(h.CustomerID)
		key := keys[customer]
		if key == nil {
			key = make([]byte, 32)
			if _, err := rand.Read(key); err != nil {
				return nil, 0, fmt.Errorf("linkability: %w", err)
			}
			keys[customer] = key
		}
		occurred := time.UnixMilli(h.OccurredAt)
		for i := range systems {
			if out, err = plan.Project(out[:0], i, e.Value, key, d); err != nil {
				return nil, 0, fmt.Errorf("linkability: project for %s: %w", systems[i].Name, err)
			}
			fields, err := Fields(plan, i, out, plan.RecordTime(i, h.OccurredAt, occurred), e.Headers)
			if err != nil {
				return nil, 0, err
			}
			systems[i].Records = append(systems[i].Records, Record{Event: strconv.Itoa(ev), Customer: customer, Fields: fields})
		}
	}
	return systems, skipped, nil
}

// For returns system i of plan without records: its name and the
// precision of its generalized fields and of its record timestamps.
func For(plan *policy.Plan, i int) System {
	pol := plan.Policy(i)
	g := map[string]policy.Generalization{}
	for path, x := range pol.Generalize {
		g[path] = x
	}
	if u := plan.TimeUnit(i); u > time.Millisecond {
		g[FieldTimestamp] = policy.Generalization{Truncate: policy.FormatUnit(u)}
	}
	return System{Name: plan.Systems()[i], Generalize: g}
}

// Fields returns what system i receives in one output record: the leaves
// of its value (bare Avro of OutputSchema(i)) without the pseudonymized
// ones, the record timestamp ts and the headers its policy allows.
func Fields(plan *policy.Plan, i int, value []byte, ts time.Time, headers []Header) (map[string]any, error) {
	var v any
	if err := avro.Unmarshal(plan.OutputSchema(i), value, &v); err != nil {
		return nil, fmt.Errorf("linkability: decode %s's record: %w", plan.Systems()[i], err)
	}
	pseudo := map[string]bool{}
	for _, p := range plan.Policy(i).Pseudonymize {
		pseudo[p] = true
	}
	fields := map[string]any{}
	flatten(plan.OutputSchema(i), v, "", func(path string, x any) {
		if !pseudo[path] {
			fields[path] = x
		}
	})
	fields[FieldTimestamp] = ts.UTC()
	for _, name := range plan.Headers(i) {
		for _, h := range headers {
			if h.Key == name {
				fields[HeaderPrefix+name] = string(h.Value)
			}
		}
	}
	return fields, nil
}

// flatten calls put with each leaf of a value decoded by hamba/avro with
// schema s: dotted paths through records and map keys, lists for the
// leaves of an array's items, nil for the leaves of an absent record.
func flatten(s avro.Schema, v any, path string, put func(string, any)) {
	switch t := s.(type) {
	case *avro.RefSchema:
		flatten(t.Schema(), v, path, put)
	case *avro.RecordSchema:
		m, _ := v.(map[string]any)
		for _, f := range t.Fields() {
			flatten(f.Type(), m[f.Name()], join(path, f.Name()), put)
		}
	case *avro.UnionSchema:
		var branch avro.Schema
		for _, b := range t.Types() {
			if b.Type() != avro.Null {
				branch = b
			}
		}
		if branch == nil {
			put(path, nil)
			return
		}
		if m, ok := v.(map[string]any); ok && len(m) == 1 {
			if n, named := branch.(avro.NamedSchema); named {
				if x, ok := m[n.FullName()]; ok {
					v = x
				}
			}
		}
		flatten(branch, v, path, put)
	case *avro.ArraySchema:
		lists := map[string][]any{}
		var order []string
		add := func(p string, x any) {
			if _, ok := lists[p]; !ok {
				order = append(order, p)
			}
			lists[p] = append(lists[p], x)
		}
		flatten(t.Items(), nil, path, func(p string, _ any) { lists[p] = []any{}; order = append(order, p) })
		l, _ := v.([]any)
		for _, x := range l {
			flatten(t.Items(), x, path, add)
		}
		for _, p := range order {
			put(p, lists[p])
		}
	case *avro.MapSchema:
		m, _ := v.(map[string]any)
		for k, x := range m {
			flatten(t.Values(), x, join(path, k), put)
		}
	default:
		put(path, v)
	}
}

func join(path, seg string) string {
	if path == "" {
		return seg
	}
	return path + "." + seg
}
