package processor_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/hamba/avro/v2"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/hygiene/pseudonymizer/internal/linkability"
	"github.com/hygiene/pseudonymizer/processor/policy"
	"github.com/hygiene/pseudonymizer/processor/pseudonym"
	"github.com/hygiene/pseudonymizer/schema"
	"github.com/hygiene/pseudonymizer/schema/sample"
	"github.com/hygiene/pseudonymizer/store"
)

// TestExamplesUnlinkable is P2 end to end, on the demo's data: the demo's
// sample generator with 1,000 customers of 3 orders each (the demo's
// ratio, 12 orders of 4 customers, at a size where a share means
// something), run through the real pipeline with the example policies
// (kfake over TCP). The outputs are read to their high watermarks and
// every pair of systems is joined on everything both receive: the kept
// fields at the coarser of their precisions, the record timestamps and
// the headers. A subset of those fields can only merge classes, so the
// join on all of them bounds the join on any combination. It checks that
//
//   - no pseudonym (record key or pseudonymized field) appears in two
//     systems;
//   - no value, record timestamps included, is more precise than the
//     system's policy declares;
//   - no pair identifies more than 5% of the events uniquely (k = 1) or
//     links more than 5% of the customers (the candidates left by all of
//     a customer's events are the customer alone).
//
// The ground truth, which the systems lack, comes from the key store: each
// customer's pseudonym in each system, and a customer's n-th record in a
// system is their n-th event (one partition per customer, in order).
func TestExamplesUnlinkable(t *testing.T) {
	const customers, perCustomer = 1000, 3
	e := newEnv(t, "embedded")
	e.pols = policy.Examples()
	var err error
	if e.plan, err = policy.Compile(schema.OrderEventSchema(), e.pols); err != nil {
		t.Fatal(err)
	}
	gen := sample.New(42, customers, time.Now().Add(-time.Hour))
	for i := range customers * perCustomer {
		ev := gen.ForCustomer(i % customers)
		r := e.orderRecord(t, ev)
		// A header unique per event, which no example policy lets through.
		r.Headers = []kgo.RecordHeader{{Key: "traceparent", Value: []byte(fmt.Sprintf("00-%032x-%016x-01", i, i))}}
		e.produce(t, r)
	}
	e.start(t, "pz-link")
	outs := e.settled(t, e.outputTopics()...)
	if want := customers * perCustomer * len(e.pols); len(outs) != want {
		t.Fatalf("%d outputs, want %d", len(outs), want)
	}

	// Ground truth: each customer's pseudonym in each system.
	st := e.open(t)
	lookups := make([]store.Lookup, customers)
	for c := range lookups {
		lookups[c] = store.Lookup{SubjectID: sample.CustomerID(c), Latest: time.Now()}
	}
	entries, err := st.Resolve(context.Background(), lookups)
	if err != nil {
		t.Fatal(err)
	}
	d := pseudonym.NewDeriver()
	owner := map[string]string{} // system/pseudonym -> customer
	for c, en := range entries {
		for i, sys := range e.plan.Systems() {
			owner[sys+"/"+string(e.plan.SubjectPseudonym(nil, i, en.Key, []byte(sample.CustomerID(c)), d))] = sample.CustomerID(c)
		}
	}

	systems := make([]linkability.System, len(e.pols))
	for i := range systems {
		systems[i] = linkability.For(e.plan, i)
	}
	seen := map[string]string{} // pseudonym -> system
	nth := map[string]int{}
	for _, r := range outs {
		sys := systemOf(e, r.Topic)
		i := indexOf(e.plan.Systems(), sys)
		cust, ok := owner[sys+"/"+string(r.Key)]
		if !ok {
			t.Fatalf("%s: a record key that is no customer's pseudonym in it", sys)
		}
		var hdrs []linkability.Header
		for _, h := range r.Headers {
			hdrs = append(hdrs, linkability.Header{Key: h.Key, Value: h.Value})
		}
		fields, err := linkability.Fields(e.plan, i, r.Value, r.Timestamp, hdrs)
		if err != nil {
			t.Fatal(err)
		}
		// P2, first clause: pseudonyms never match across systems.
		pseudos := []string{string(r.Key)}
		for _, p := range e.pols[i].Pseudonymize {
			if v, ok := pseudoValue(t, e.plan, i, r.Value, p); ok {
				pseudos = append(pseudos, v)
			}
		}
		for _, p := range pseudos {
			if other, ok := seen[p]; ok && other != sys {
				t.Fatalf("a pseudonym of %s appears in %s", other, sys)
			}
			seen[p] = sys
		}
		k := sys + "/" + cust
		nth[k]++
		systems[i].Records = append(systems[i].Records, linkability.Record{
			Event: fmt.Sprintf("%s#%d", cust, nth[k]), Customer: cust, Fields: fields})
	}
	// Every value is at most as precise as the policy declares, record
	// timestamps included: the join below compares at that precision.
	for i := range systems {
		if err := linkability.CheckPrecision(&systems[i]); err != nil {
			t.Error(err)
		}
	}
	pairs, err := linkability.Analyze(systems)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range pairs {
		t.Logf("%s × %s: %d fields shared; %d of %d events unique, %d of %d customers linked",
			p.A, p.B, len(p.Shared), p.UniqueEvents, p.Events, p.LinkedCustomers, p.Customers)
		if p.Events != customers*perCustomer || p.Customers != customers {
			t.Errorf("%s × %s: joined %d events of %d customers, want all %d of %d", p.A, p.B, p.Events, p.Customers, customers*perCustomer, customers)
		}
		if p.UniqueEventShare() > 0.05 || p.LinkedCustomerShare() > 0.05 {
			t.Errorf("%s × %s: %.2f%% of events unique, %.2f%% of customers linked; want at most 5%% each",
				p.A, p.B, 100*p.UniqueEventShare(), 100*p.LinkedCustomerShare())
		}
	}
	if len(pairs) != len(e.pols)*(len(e.pols)-1)/2 {
		t.Fatalf("%d pairs", len(pairs))
	}
}

// pseudoValue returns the pseudonymized top-level string field path of
// system i's record value, if it is one.
func pseudoValue(t *testing.T, plan *policy.Plan, i int, value []byte, path string) (string, bool) {
	t.Helper()
	var v map[string]any
	if err := avro.Unmarshal(plan.OutputSchema(i), value, &v); err != nil {
		t.Fatal(err)
	}
	s, ok := v[path].(string)
	return s, ok
}
