package linkability

import (
	"fmt"

	"github.com/hamba/avro/v2"

	"github.com/hygiene/pseudonymizer/processor/policy"
)

// ConfigWarnings returns a warning for each pair of systems that both
// receive a timestamp to the millisecond or an amount (a long) exactly:
// such a field alone joins most of their records (run the linkability
// report to measure how many). One warning per pair and field, in the
// order of the systems.
func ConfigWarnings(plan *policy.Plan) []string {
	type leaf struct {
		path string
		kind string // "timestamp" or "amount"
	}
	exact := make([][]leaf, len(plan.Systems()))
	for i := range plan.Systems() {
		g := plan.Policy(i).Generalize
		schemaLeaves(plan.OutputSchema(i), "", func(path string, s avro.Schema) {
			if _, ok := g[path]; ok {
				return
			}
			if k := leafKind(s); k != "" {
				exact[i] = append(exact[i], leaf{path, k})
			}
		})
	}
	var out []string
	names := plan.Systems()
	for i := range names {
		for j := i + 1; j < len(names); j++ {
			for _, a := range exact[i] {
				for _, b := range exact[j] {
					if a != b {
						continue
					}
					fix := "{round: 1000}"
					what := "exactly"
					if a.kind == "timestamp" {
						fix, what = "{truncate: 1h}", "to the millisecond"
					}
					out = append(out, fmt.Sprintf("systems %s and %s both receive %s %s %s: a join on it links most of their customers; generalize it in at least one of them (generalize: {%s: %s})",
						names[i], names[j], a.kind, a.path, what, a.path, fix))
				}
			}
		}
	}
	return out
}

// leafKind classifies a leaf schema (nullable or not): a timestamp, an
// amount (a long without logical type) or "" for anything else.
func leafKind(s avro.Schema) string {
	if u, ok := s.(*avro.UnionSchema); ok {
		for _, b := range u.Types() {
			if b.Type() != avro.Null {
				s = b
			}
		}
	}
	p, ok := s.(*avro.PrimitiveSchema)
	if !ok || p.Type() != avro.Long {
		return ""
	}
	if p.Logical() == nil {
		return "amount"
	}
	switch p.Logical().Type() {
	case avro.TimestampMillis, avro.TimestampMicros, avro.LocalTimestampMillis, avro.LocalTimestampMicros:
		return "timestamp"
	}
	return ""
}

// schemaLeaves calls f with each leaf of schema s and its dotted path
// (through records, unions and arrays; a map is a leaf: its keys are not
// in the schema).
func schemaLeaves(s avro.Schema, path string, f func(string, avro.Schema)) {
	switch t := s.(type) {
	case *avro.RefSchema:
		schemaLeaves(t.Schema(), path, f)
	case *avro.RecordSchema:
		for _, fl := range t.Fields() {
			schemaLeaves(fl.Type(), join(path, fl.Name()), f)
		}
	case *avro.UnionSchema:
		for _, b := range t.Types() {
			if b.Type() == avro.Null {
				continue
			}
			if _, scalar := b.(*avro.PrimitiveSchema); scalar {
				f(path, s)
				continue
			}
			schemaLeaves(b, path, f)
		}
	case *avro.ArraySchema:
		schemaLeaves(t.Items(), path, f)
	default:
		f(path, s)
	}
}
