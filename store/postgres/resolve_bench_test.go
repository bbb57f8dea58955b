package postgres_test

import (
	"context"
	"fmt"
	"net/url"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/hygiene/pseudonymizer/store"
	"github.com/hygiene/pseudonymizer/store/postgres"
	"github.com/hygiene/pseudonymizer/store/postgres/pgtest"
	"github.com/hygiene/pseudonymizer/store/storetest"
)

// BenchmarkResolveNewKeys resolves batches of 8,192 subjects that are all
// new, as a poll batch of first-time customers does, with key creation on
// one connection and split over up to four, into an empty table or one
// that already holds 200,000 keys. Each op is one batch; the table grows
// by a batch per op (run it with -benchtime=25x to grow an empty table to
// 200,000 keys). Besides wall time per key it reports the CPU time per key
// of the store's PostgreSQL backends (pg-µs/key), of all PostgreSQL
// processes on this machine (pgall-µs/key: also the WAL writer and
// checkpointer, and other clients of a shared server), and of this process
// (cpu-µs/key); on a shared machine the CPU times are the ones to compare.
func BenchmarkResolveNewKeys(b *testing.B) {
	for _, prefill := range []int64{0, 200_000} {
		for _, shards := range []int{1, 4} {
			b.Run(fmt.Sprintf("rows=%d/shards=%d", prefill, shards), func(b *testing.B) {
				s, meter := openMeasured(b, prefill)
				postgres.SetResolveShards(s, shards)
				ctx := context.Background()
				now := time.Now()
				lookups := make([]store.Lookup, 8192)
				batch := func(i int) {
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
				batch(-1) // opens the shards' connections
				b.ResetTimer()
				meter.start()
				for i := range b.N {
					batch(i)
				}
				b.StopTimer()
				meter.report(b, b.N*len(lookups))
				b.ReportMetric(float64(b.Elapsed().Microseconds())/float64(b.N*len(lookups)), "µs/key")
			})
		}
	}
}

// openMeasured opens a store in a fresh schema whose sessions carry an
// application name of their own, fills pz_subject_keys with prefill
// random rows (then VACUUM ANALYZE), and returns it with a pgMeter of its
// backends.
func openMeasured(b *testing.B, prefill int64) (*postgres.Store, *pgMeter) {
	b.Helper()
	dsn := pgtest.MustTempSchemaDSN(b)
	u, err := url.Parse(dsn)
	if err != nil {
		b.Fatalf("dsn: %v", err)
	}
	app := fmt.Sprintf("pz-bench-%d", time.Now().UnixNano())
	q := u.Query()
	q.Set("application_name", app)
	u.RawQuery = q.Encode()
	ctx := context.Background()
	s, err := postgres.Open(ctx, u.String(), storetest.MustKeyring(b, storetest.MustKEK(b, 1)))
	if err != nil {
		b.Fatalf("open: %v", err)
	}
	b.Cleanup(func() { _ = s.Close() })
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		b.Fatalf("connect: %v", err)
	}
	b.Cleanup(func() { _ = conn.Close(context.Background()) })
	if prefill > 0 {
		src := &randomKeys{left: prefill, at: time.Now()}
		if _, err := conn.CopyFrom(ctx, pgx.Identifier{"pz_subject_keys"}, []string{"subject_hash", "wrapped_key", "created_at"}, src); err != nil {
			b.Fatalf("fill: %v", err)
		}
		if _, err := conn.Exec(ctx, "VACUUM ANALYZE pz_subject_keys"); err != nil {
			b.Fatalf("vacuum: %v", err)
		}
	}
	return s, newPGMeter(b, conn, app)
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

// BenchmarkCreateKeysSteps creates keys for batches of 8,192 new subjects
// the way Resolve does, and variants of it, one statement at a time (see
// postgres.CreateKeysStepwise), into a table of 200,000 keys that grows by
// a batch per op, and reports the CPU time per key of the backend in each
// step (pg-<step>-µs/key) and in all (pg-µs/key), and of this process.
func BenchmarkCreateKeysSteps(b *testing.B) {
	for _, variant := range []string{"resolve", "sortafter", "unsorted", "keysonly", "joined", "onconflict", "copy", "plain", "bare", "noinsert"} {
		b.Run("variant="+variant, func(b *testing.B) {
			s, meter := openMeasured(b, 200_000)
			ctx := context.Background()
			now := time.Now()
			ids := make([]string, 8192)
			steps := map[string]time.Duration{}
			var order []string
			var last time.Duration
			mark := func(step string, pid uint32) {
				c, _ := procCPU(int(pid))
				if step != "" {
					if _, ok := steps[step]; !ok {
						order = append(order, step)
					}
					steps[step] += c - last
				}
				last = c
			}
			b.ResetTimer()
			meter.start()
			for i := range b.N {
				for j := range ids {
					ids[j] = fmt.Sprintf("steps-%d-%d", i, j)
				}
				n, err := postgres.CreateKeysStepwise(ctx, s, ids, now, variant, mark)
				if err != nil {
					b.Fatal(err)
				}
				if want := len(ids); variant != "noinsert" && n != want {
					b.Fatalf("created %d keys, want %d", n, want)
				}
			}
			b.StopTimer()
			keys := b.N * len(ids)
			meter.report(b, keys)
			for _, step := range order {
				b.ReportMetric(float64(steps[step].Nanoseconds())/1e3/float64(keys), "pg-"+step+"-µs/key")
			}
		})
	}
}
