package processor

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/hygiene/pseudonymizer/processor/pii"
	"github.com/hygiene/pseudonymizer/processor/policy"
	"github.com/hygiene/pseudonymizer/schema"
	"github.com/hygiene/pseudonymizer/schema/sample"
	"github.com/hygiene/pseudonymizer/store"
	"github.com/hygiene/pseudonymizer/store/embedded"
	"github.com/hygiene/pseudonymizer/store/storetest"
)

// benchPolicies are three systems that each pseudonymize the event, the
// order and the customer, as in the demo.
func benchPolicies() []policy.Policy { return policy.Examples()[:3] }

// benchProcessor returns a processor over an embedded store and n sample
// order records of customers customers.
func benchProcessor(tb testing.TB, n, customers, cacheSubjects int) (*Processor, []*kgo.Record) {
	return benchProcessorPII(tb, n, customers, cacheSubjects, PIIOff)
}

// benchProcessorPII is benchProcessor with every system's PII guard in
// mode piiMode (PIIOff: no guard).
func benchProcessorPII(tb testing.TB, n, customers, cacheSubjects int, piiMode string) (*Processor, []*kgo.Record) {
	tb.Helper()
	pols := benchPolicies()
	var piiCfg PIIConfig
	if piiMode != PIIOff {
		det, err := pii.New(pii.Config{})
		if err != nil {
			tb.Fatal(err)
		}
		piiCfg.Detector = det
		for i := range pols {
			pols[i].PII = piiMode
		}
	}
	plan, err := policy.Compile(schema.OrderEventSchema(), pols)
	if err != nil {
		tb.Fatal(err)
	}
	kr := storetest.MustKeyring(tb, storetest.MustKEK(tb, 1))
	st, err := embedded.Open(filepath.Join(tb.TempDir(), "keys.db"), kr)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { st.Close() })
	p, err := New(Config{
		Topics: DefaultTopics(), Policies: pols, Plan: plan, Store: st,
		GroupID: "bench", TransactionalID: "bench", CacheSubjects: cacheSubjects, PII: piiCfg,
	})
	if err != nil {
		tb.Fatal(err)
	}
	gen := sample.New(7, customers, time.Now().Add(-24*time.Hour))
	recs := make([]*kgo.Record, n)
	for i := range recs {
		ev := gen.Next()
		v, err := schema.MarshalOrderEvent(ev)
		if err != nil {
			tb.Fatal(err)
		}
		recs[i] = &kgo.Record{Topic: p.cfg.Topics.Orders, Key: []byte(ev.CustomerID), Value: v, Partition: int32(i % 3), Offset: int64(i)}
	}
	return p, recs
}

// BenchmarkEventPath measures the per-event path of a warm batch: scan,
// cache lookup, policy projection with pseudonym derivation and record
// building, for three systems, in batches of 10,000 records (no Kafka, no
// store round trip). It reports ns/event and allocs/event. With pii=redact
// the PII guard scans the kept strings (the sample events carry no
// identifying data in kept fields, so this is the cost of the scan); with
// objecting=1%, one customer in a hundred objects to one system (from a
// time before every event).
func BenchmarkEventPath(b *testing.B) {
	for _, piiMode := range []string{PIIOff, PIIRedact} {
		for _, workers := range []int{1, runtime.GOMAXPROCS(0)} {
			for _, objecting := range []int{0, 1} {
				b.Run(fmt.Sprintf("pii=%s/workers=%d/objecting=%d%%", piiMode, workers, objecting), func(b *testing.B) {
					benchEventPath(b, workers, objecting, piiMode)
				})
			}
		}
	}
}

// benchEventPath is one case of BenchmarkEventPath.
func benchEventPath(b *testing.B, workers, objectingPercent int, piiMode string) {
	const batchSize, customers = 10000, 20000
	p, recs := benchProcessorPII(b, batchSize, customers, 1_000_000, piiMode)
	p.workers = workers
	ctx := context.Background()
	var reqs []store.ObjectionRequest
	for c := 0; c < customers*objectingPercent/100; c++ {
		reqs = append(reqs, store.ObjectionRequest{RequestID: fmt.Sprint("o-", c), SubjectID: sample.CustomerID(c * 100 / max(objectingPercent, 1)),
			EffectiveAt: time.Now().Add(-48 * time.Hour), Systems: []string{p.systems[1]}})
	}
	if _, err := p.cfg.Store.Object(ctx, reqs); err != nil {
		b.Fatal(err)
	}
	// Warm the cache: every subject resolved once.
	p.b.reset()
	if err := p.orderStep(ctx, &p.b, recs); err != nil {
		b.Fatal(err)
	}
	before := p.Stats().StoreCalls
	var ms0, ms1 runtime.MemStats
	runtime.ReadMemStats(&ms0)
	cpu0 := cpuTime()
	events := 0
	for b.Loop() {
		p.b.reset()
		if err := p.orderStep(ctx, &p.b, recs); err != nil {
			b.Fatal(err)
		}
		events += len(recs)
	}
	cpu1 := cpuTime()
	runtime.ReadMemStats(&ms1)
	if calls := p.Stats().StoreCalls - before; calls != 0 {
		b.Fatalf("warm batches made %d store calls", calls)
	}
	if got, want := len(p.b.recs), 3*batchSize; got != want {
		b.Fatalf("%d output records, want %d", got, want)
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(events), "ns/event")
	b.ReportMetric(float64(cpu1-cpu0)/float64(events), "cpu-ns/event")
	b.ReportMetric(float64(ms1.Mallocs-ms0.Mallocs)/float64(events), "allocs/event")
	b.ReportMetric(float64(ms1.TotalAlloc-ms0.TotalAlloc)/float64(events), "B/event")
	if objectingPercent > 0 && p.b.stats.Objected == 0 {
		b.Fatalf("no event was objected")
	}
}

// fakeEntry is what the store returns for a subject as the pipeline sees
// it: a 32-byte key and its hash.
func fakeEntry(i int) (id []byte, e *store.Entry) {
	e = &store.Entry{Key: make([]byte, store.KeySize)}
	e.Hash[0], e.Hash[1], e.Hash[2], e.Hash[3] = byte(i), byte(i>>8), byte(i>>16), byte(i>>24)
	e.Key[0] = byte(i)
	return []byte(sample.CustomerID(i)), e
}

func TestCacheBound(t *testing.T) {
	for _, max := range []int{1, 2, 3, 10, 1001} {
		c := newSubjectCache(max, 3)
		for i := range 5*max + 7 {
			id, e := fakeEntry(i)
			c.put(id, e)
			if n := c.len(); n > max {
				t.Fatalf("max %d: %d entries after %d puts", max, n, i+1)
			}
			if s, ok := c.get(id); !ok || *s.hash() != e.Hash || s.key()[0] != byte(i) {
				t.Fatalf("max %d: the newest entry is not cached", max)
			}
			if i > 0 && i%3 == 0 {
				c.get([]byte(sample.CustomerID(i - 1))) // promote from cold, if there
				if n := c.len(); n > max {
					t.Fatalf("max %d: %d entries after a promotion", max, n)
				}
			}
			if i%50 == 0 {
				c.wipeEvicted()
			}
		}
		id, e := fakeEntry(5 * max)
		c.put(id, e)
		c.forget(e.Hash)
		if _, ok := c.get(id); ok {
			t.Fatalf("max %d: forget did not drop the entry", max)
		}
	}
	c := newSubjectCache(0, 3)
	c.put(fakeEntry(1))
	if c.len() != 0 {
		t.Fatal("cache_subjects 0 cached an entry")
	}
}

// BenchmarkCacheMemory fills the subject cache with 1,000,000 customers
// (processing.cache_subjects default) with the customer pseudonyms of 3
// systems, and reports the heap and resident memory they take, then checks
// the bound holds when 10% more arrive.
func BenchmarkCacheMemory(b *testing.B) {
	const n = 1_000_000
	for b.Loop() {
		runtime.GC()
		var ms0, ms1 runtime.MemStats
		runtime.ReadMemStats(&ms0)
		rss0 := vmRSS()
		c := newSubjectCache(n, 3)
		for i := range n {
			s := c.put(fakeEntry(i))
			s.setPseudonyms()
		}
		c.wipeEvicted()
		runtime.GC()
		runtime.ReadMemStats(&ms1)
		b.ReportMetric(float64(ms1.HeapAlloc-ms0.HeapAlloc)/n, "heap-B/subject")
		b.ReportMetric(float64(ms1.HeapAlloc-ms0.HeapAlloc)/(1<<20), "heap-MiB")
		b.ReportMetric(float64(vmRSS()-rss0)/(1<<20), "rss-growth-MiB")
		b.ReportMetric(float64(vmRSS())/(1<<20), "rss-MiB")
		for i := n; i < n+n/10; i++ {
			c.put(fakeEntry(i))
		}
		if c.len() > n {
			b.Fatalf("%d cached subjects, bound %d", c.len(), n)
		}
		runtime.KeepAlive(c)
	}
}

// vmRSS returns the process's resident set size in bytes (Linux), or 0.
func vmRSS() int64 {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			kb, _ := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			return kb << 10
		}
	}
	return 0
}

// BenchmarkCacheSweep measures the sweep that applies the forgets queued
// during a batch to a full cache of 1,000,000 subjects: one pass over
// their hashes, whatever the number of forgets.
func BenchmarkCacheSweep(b *testing.B) {
	const n = 1_000_000
	c := newSubjectCache(n, 3)
	for i := range n {
		c.put(fakeEntry(i))
	}
	c.wipeEvicted()
	for _, forgets := range []int{1, 100} {
		b.Run(fmt.Sprintf("forgets=%d", forgets), func(b *testing.B) {
			i := 0
			for b.Loop() {
				for range forgets {
					_, e := fakeEntry(n + i) // not cached: the cache stays full
					c.forget(e.Hash)
					i++
				}
				c.sweep()
			}
		})
	}
}

// orderStep runs the whole order step on b, as a batch does: orders, then
// the projection that the batch runs under the guard.
func (p *Processor) orderStep(ctx context.Context, b *batch, recs []*kgo.Record) error {
	if err := p.orders(ctx, b, recs); err != nil {
		return err
	}
	if b.emitted == 0 {
		return nil
	}
	return p.project(b)
}

// BenchmarkIDDigest measures the cache's keyed digest of a customer ID
// (one per order looked up, one per subject cached), for an 11-byte ID
// (one SHA-256 compression) and a 4,096-byte one.
func BenchmarkIDDigest(b *testing.B) {
	for _, n := range []int{11, MaxIDBytes} {
		b.Run(fmt.Sprintf("bytes=%d", n), func(b *testing.B) {
			d := newDigester()
			id := bytes.Repeat([]byte{'c'}, n)
			b.SetBytes(int64(n))
			for b.Loop() {
				d.digest(id)
			}
		})
	}
}

// BenchmarkPIICheck measures the PII guard's full look at each event
// (check: the walk over the kept strings, the identifiers it collects and
// the scan), for the three benchmark systems (the example policy), on the
// sample events. The order step takes its first look in the scan pass
// instead (policy.Kept.Scan), so BenchmarkEventPath's difference between
// pii=off and pii=redact is the guard's real cost. It reports ns/event.
func BenchmarkPIICheck(b *testing.B) {
	const batchSize = 10000
	p, recs := benchProcessorPII(b, batchSize, 20000, 1_000_000, PIIRedact)
	p.b.reset()
	if err := p.orders(context.Background(), &p.b, recs); err != nil {
		b.Fatal(err)
	}
	w := &worker{}
	p.pii.reset(w)
	events, found := 0, 0
	cpu0 := cpuTime()
	for b.Loop() {
		for i := range p.b.orders {
			f, err := p.pii.check(w.pii, &p.b.orders[i])
			if err != nil {
				b.Fatal(err)
			}
			if f {
				found++
			}
		}
		events += len(p.b.orders)
	}
	cpu := cpuTime() - cpu0
	if found > 0 {
		b.Fatalf("the guard found something in %d sample events", found)
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(events), "ns/event")
	b.ReportMetric(float64(cpu)/float64(events), "cpu-ns/event")
}

// BenchmarkPIICheckOne is BenchmarkPIICheck for one sample event over and
// over (its data cache-resident): run it under valgrind --tool=cachegrind
// with two -benchtime counts and divide the difference in instructions by
// the difference in counts for a load-independent cost per event.
func BenchmarkPIICheckOne(b *testing.B) {
	p, recs := benchProcessorPII(b, 100, 200, 1_000_000, PIIRedact)
	p.b.reset()
	if err := p.orders(context.Background(), &p.b, recs); err != nil {
		b.Fatal(err)
	}
	w := &worker{}
	p.pii.reset(w)
	o := &p.b.orders[7]
	for b.Loop() {
		if found, err := p.pii.check(w.pii, o); err != nil || found {
			b.Fatalf("check: %v, %v", found, err)
		}
	}
}
