package processor_test

import (
	"context"
	"testing"
	"time"

	"github.com/hygiene/pseudonymizer/schema"
	"github.com/hygiene/pseudonymizer/schema/sample"
	"github.com/hygiene/pseudonymizer/store"
	"github.com/hygiene/pseudonymizer/store/storetest"
)

// TestKEKRotationKeepsPseudonyms rotates the KEK (new active KEK, old one
// kept for unwrapping), re-wraps every stored key, drops the old KEK, and
// checks that every customer keeps its pseudonyms in every system.
func TestKEKRotationKeepsPseudonyms(t *testing.T) {
	for _, kind := range storeKinds {
		t.Run(kind, func(t *testing.T) {
			t.Parallel()
			e := newEnv(t, kind)
			systems := e.plan.Systems()
			const customers = 5
			gen := sample.New(11, customers, time.Now().Add(-time.Hour))
			byAt := map[int64]*schema.OrderEvent{}
			produce := func() {
				for c := 0; c < customers; c++ {
					ev := gen.ForCustomer(c)
					byAt[ev.OccurredAt.UnixMilli()] = ev
					e.produce(t, e.orderRecord(t, ev))
				}
			}
			pseudonyms := func(n int) map[string]string { // system/customer -> pseudonym
				t.Helper()
				out := map[string]string{}
				recs := e.settled(t, e.outputTopics()...)
				if len(recs) != n*len(systems) {
					t.Fatalf("%d outputs, want %d", len(recs), n*len(systems))
				}
				for _, d := range e.decode(t, recs) {
					k := d.system + "/" + byAt[d.at.UnixMilli()].CustomerID
					if prev, ok := out[k]; ok && prev != d.key {
						t.Fatalf("%s: two pseudonyms", k)
					}
					out[k] = d.key
				}
				return out
			}

			produce()
			in := e.start(t, "pz-1")
			before := pseudonyms(customers)
			in.stop(t)

			// Rotate: KEK 2 wraps, KEK 1 still unwraps; re-wrap everything.
			oldKEK := e.kek
			newKEK := storetest.MustKEK(t, 2)
			kr2, err := store.NewKeyring(newKEK, oldKEK)
			if err != nil {
				t.Fatal(err)
			}
			e.kr = kr2
			st := e.open(t)
			total := 0
			for {
				n, err := st.Rewrap(context.Background(), 2)
				if err != nil {
					t.Fatalf("rewrap: %v", err)
				}
				if n == 0 {
					break
				}
				total += n
			}
			if total < customers {
				t.Fatalf("re-wrapped %d keys, want at least %d", total, customers)
			}
			st.Close()

			// The old KEK is gone; the service still derives the same pseudonyms.
			kr3, _ := store.NewKeyring(newKEK)
			e.kr = kr3
			produce()
			e.start(t, "pz-1")
			after := pseudonyms(2 * customers)
			if len(after) != len(before) {
				t.Fatalf("%d pseudonyms after rotation, %d before", len(after), len(before))
			}
			for k, v := range before {
				if after[k] != v {
					t.Errorf("%s: pseudonym changed across KEK rotation", k)
				}
			}
		})
	}
}
