package postgres_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/hygiene/pseudonymizer/store"
	"github.com/hygiene/pseudonymizer/store/postgres"
	"github.com/hygiene/pseudonymizer/store/postgres/pgtest"
	"github.com/hygiene/pseudonymizer/store/storetest"
)

// BenchmarkResolveNewKeys resolves batches of 8,192 subjects that are all
// new, as a poll batch of first-time customers does, with key creation on
// one connection and split over up to four. Each op is one batch; the
// table grows by a batch per op.
func BenchmarkResolveNewKeys(b *testing.B) {
	for _, shards := range []int{1, 4} {
		b.Run(fmt.Sprintf("shards=%d", shards), func(b *testing.B) {
			s := pgtest.MustOpen(b, storetest.MustKeyring(b, storetest.MustKEK(b, 1)))
			postgres.SetResolveShards(s, shards)
			ctx := context.Background()
			now := time.Now()
			lookups := make([]store.Lookup, 8192)
			b.ResetTimer()
			for i := range b.N {
				for j := range lookups {
					lookups[j] = store.Lookup{SubjectID: fmt.Sprintf("bench-%d-%d", i, j), Latest: now}
				}
				entries, err := s.Resolve(ctx, lookups)
				if err != nil {
					b.Fatal(err)
				}
				if entries[0].Key == nil {
					b.Fatal("no key for a new subject")
				}
			}
			b.ReportMetric(float64(b.Elapsed().Microseconds())/float64(b.N*len(lookups)), "µs/key")
		})
	}
}

// BenchmarkResolveKnown resolves batches of 8,192 subjects that all have
// keys (the read every order batch with cache misses makes), with none or
// 1% of them objecting: the objection state is one more column of the same
// statement, not another round trip.
func BenchmarkResolveKnown(b *testing.B) {
	for _, objecting := range []int{0, 1} {
		b.Run(fmt.Sprintf("objecting=%d%%", objecting), func(b *testing.B) {
			s := pgtest.MustOpen(b, storetest.MustKeyring(b, storetest.MustKEK(b, 1)))
			ctx := context.Background()
			now := time.Now()
			lookups := make([]store.Lookup, 8192)
			var reqs []store.ObjectionRequest
			for j := range lookups {
				lookups[j] = store.Lookup{SubjectID: fmt.Sprintf("known-%d", j), Latest: now}
				if objecting > 0 && j%(100/objecting) == 0 {
					reqs = append(reqs, store.ObjectionRequest{RequestID: fmt.Sprint("o-", j), SubjectID: lookups[j].SubjectID,
						EffectiveAt: now.Add(-time.Hour), Systems: []string{"meta"}})
				}
			}
			if _, err := s.Resolve(ctx, lookups); err != nil {
				b.Fatal(err)
			}
			if _, err := s.Object(ctx, reqs); err != nil {
				b.Fatal(err)
			}
			b.ResetTimer()
			objected := 0
			for range b.N {
				entries, err := s.Resolve(ctx, lookups)
				if err != nil {
					b.Fatal(err)
				}
				objected = 0
				for _, e := range entries {
					if e.Objection != nil {
						objected++
					}
				}
			}
			if objected != len(reqs) {
				b.Fatalf("%d entries with an objection, want %d", objected, len(reqs))
			}
			b.ReportMetric(float64(b.Elapsed().Microseconds())/float64(b.N*len(lookups)), "µs/key")
		})
	}
}
