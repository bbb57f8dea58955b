package lookup_test

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"strconv"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"

	vegeta "github.com/tsenart/vegeta/v12/lib"

	"github.com/hygiene/pseudonymizer/internal/kafkatest"
	"github.com/hygiene/pseudonymizer/schema"
	"github.com/hygiene/pseudonymizer/schema/sample"
	"github.com/hygiene/pseudonymizer/store"
)

// The load benchmarks drive the API over HTTP with vegeta (as a library),
// at a constant rate, and report what it measured: achieved lookups/s,
// p50 and p99 latency, and the share of 200s. Tune with
// PSEUDONYMIZER_LOOKUP_BENCH_RATE (default 10000) and
// PSEUDONYMIZER_LOOKUP_BENCH_DURATION (default 5s). They assert nothing
// about time; see docs/conversion-pixels.md for figures.
//
//	go test ./lookup -run '^$' -bench 'Lookup' -benchtime 1x

func benchEnv(name string, def int) int {
	if v, err := strconv.Atoi(os.Getenv(name)); err == nil && v > 0 {
		return v
	}
	return def
}

func benchDuration() time.Duration {
	if d, err := time.ParseDuration(os.Getenv("PSEUDONYMIZER_LOOKUP_BENCH_DURATION")); err == nil && d > 0 {
		return d
	}
	return 5 * time.Second
}

// attack sends lookups at rate per second for dur; body(i) is the i-th
// request's body.
func attack(url string, rate int, dur time.Duration, body func(i int64) []byte) *vegeta.Metrics {
	return attackCtx(context.Background(), url, rate, dur, body)
}

// attackCtx is attack, stopped early when ctx is done (dur 0: until then).
func attackCtx(ctx context.Context, url string, rate int, dur time.Duration, body func(i int64) []byte) *vegeta.Metrics {
	var n atomic.Int64
	hdr := http.Header{"Authorization": {"Bearer " + allToken}, "Content-Type": {"application/json"}}
	targeter := func(t *vegeta.Target) error {
		t.Method, t.URL, t.Header = http.MethodPost, url, hdr
		t.Body = body(n.Add(1) - 1)
		return nil
	}
	atk := vegeta.NewAttacker(vegeta.KeepAlive(true), vegeta.Connections(256), vegeta.MaxWorkers(512), vegeta.Timeout(5*time.Second))
	stop := context.AfterFunc(ctx, func() { atk.Stop() })
	defer stop()
	var m vegeta.Metrics
	cpu0 := cpuTime()
	for res := range atk.Attack(targeter, vegeta.Rate{Freq: rate, Per: time.Second}, dur, "lookup") {
		m.Add(res)
	}
	m.Close()
	if m.Requests > 0 {
		lastCPUPerLookup = (cpuTime() - cpu0) / time.Duration(m.Requests)
	}
	return &m
}

// lastCPUPerLookup is the process CPU time (API and vegeta together) per
// request of the last attack: on a machine shared with other work, the
// figure that does not depend on how much CPU the benchmark was given.
var lastCPUPerLookup time.Duration

// cpuTime returns the process's user and system CPU time so far.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

func report(b *testing.B, m *vegeta.Metrics) {
	b.ReportMetric(m.Throughput, "lookups/s")
	b.ReportMetric(float64(m.Latencies.P50.Microseconds())/1000, "p50-ms")
	b.ReportMetric(float64(m.Latencies.P99.Microseconds())/1000, "p99-ms")
	b.ReportMetric(m.Success*100, "%-ok")
	b.ReportMetric(float64(lastCPUPerLookup.Nanoseconds())/1000, "cpu-µs/lookup")
	if m.Success < 0.999 {
		b.Logf("status codes %v, errors %v", m.StatusCodes, m.Errors)
	}
}

func lookupBody(customer string, order int64) []byte {
	return fmt.Appendf(nil, `{"customer_id":%q,"occurred_at":"2026-01-01T00:00:00Z","values":{"order_id":"order-%d","event_id":"ev-%d"},"systems":["google-analytics","meta","tiktok"]}`,
		customer, order, order)
}

// BenchmarkLookupKnown: lookups of 10,000 customers whose keys exist, at
// PSEUDONYMIZER_LOOKUP_BENCH_RATE per second.
func BenchmarkLookupKnown(b *testing.B) {
	rate, dur := benchEnv("PSEUDONYMIZER_LOOKUP_BENCH_RATE", 10000), benchDuration()
	for _, kind := range storeKinds {
		b.Run(kind, func(b *testing.B) {
			w := newWorld(b, kind, false, false)
			const customers = 10000
			lookups := make([]store.Lookup, customers)
			for i := range lookups {
				lookups[i] = store.Lookup{SubjectID: fmt.Sprintf("known-%d", i), Latest: time.Now()}
			}
			if _, err := w.st.Resolve(context.Background(), lookups); err != nil {
				b.Fatal(err)
			}
			body := func(i int64) []byte { return lookupBody(fmt.Sprintf("known-%d", i%customers), i) }
			attack(w.url, rate, time.Second, body) // warm up: connections, the API's cache
			for b.Loop() {
				report(b, attack(w.url, rate, dur, body))
			}
		})
	}
}

// BenchmarkLookupNewCustomer: every lookup is a customer's first, so each
// batch creates keys (one Resolve with a write transaction), at 1,000 per
// second.
func BenchmarkLookupNewCustomer(b *testing.B) {
	dur := benchDuration()
	for _, kind := range storeKinds {
		b.Run(kind, func(b *testing.B) {
			w := newWorld(b, kind, false, false)
			var round atomic.Int64
			for b.Loop() {
				r := round.Add(1)
				report(b, attack(w.url, 1000, dur, func(i int64) []byte { return lookupBody(fmt.Sprintf("new-%d-%d", r, i), i) }))
			}
		})
	}
}

// BenchmarkLookupNewCustomerAlone: one new customer's first lookup with
// nothing else running: the latency a shop sees for a first-time buyer.
func BenchmarkLookupNewCustomerAlone(b *testing.B) {
	for _, kind := range storeKinds {
		b.Run(kind, func(b *testing.B) {
			w := newWorld(b, kind, false, false)
			i := 0
			for b.Loop() {
				i++
				if code, _, _ := post(b, w.url, allToken, lookupReq{CustomerID: fmt.Sprintf("alone-%d", i), Systems: []string{"meta"}}); code != 200 {
					b.Fatalf("lookup: %d", code)
				}
			}
		})
	}
}

// BenchmarkOrdersUnderLookups: the time the processor takes for 200,000
// orders (PSEUDONYMIZER_LOOKUP_BENCH_ORDERS) (20,000 customers, PostgreSQL, kfake over TCP), idle and while
// the API serves 1,000 lookups/s of the same customers.
func BenchmarkOrdersUnderLookups(b *testing.B) {
	n, customers := benchEnv("PSEUDONYMIZER_LOOKUP_BENCH_ORDERS", 200_000), 20_000
	for _, load := range []int{0, 1000} {
		b.Run(fmt.Sprintf("lookups=%d", load), func(b *testing.B) {
			for range b.N {
				b.StopTimer()
				w := newWorld(b, "postgres", false, false)
				w.setupKafka(b, kafkatest.NewFake(b))
				gen := sample.New(11, customers, time.Now().Add(-time.Hour))
				recs := make([]*kgo.Record, n)
				for i := range recs {
					ev := gen.Next()
					v, err := schema.MarshalOrderEvent(ev)
					if err != nil {
						b.Fatal(err)
					}
					recs[i] = &kgo.Record{Topic: w.topics.Orders, Key: []byte(ev.CustomerID), Value: v}
				}
				w.kc.Produce(b, recs...)
				ctx, cancel := context.WithCancel(context.Background())
				var m *vegeta.Metrics
				done := make(chan struct{})
				if load > 0 {
					ids := make([]string, 0, customers)
					g2 := sample.New(11, customers, time.Now())
					for range customers {
						ids = append(ids, g2.Next().CustomerID)
					}
					go func() {
						defer close(done)
						m = attackCtx(ctx, w.url, load, 0, func(i int64) []byte { return lookupBody(ids[i%int64(len(ids))], i) })
					}()
				} else {
					close(done)
				}
				b.StartTimer()
				start := time.Now()
				w.startProcessor(b)
				w.kc.AwaitGroup(b, w.group, 10*time.Minute, w.topics.Orders)
				el := time.Since(start)
				b.StopTimer()
				b.ReportMetric(float64(n)/el.Seconds(), "orders/s")
				cancel()
				<-done
				if m != nil {
					b.ReportMetric(m.Throughput, "lookups/s")
					b.ReportMetric(float64(m.Latencies.P99.Microseconds())/1000, "lookup-p99-ms")
				}
			}
		})
	}
}
