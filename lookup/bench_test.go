package lookup_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"strconv"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"

	vegeta "github.com/tsenart/vegeta/v12/lib"

	"github.com/hygiene/pseudonymizer/internal/kafkatest"
	"github.com/hygiene/pseudonymizer/lookup"
	"github.com/hygiene/pseudonymizer/schema"
	"github.com/hygiene/pseudonymizer/schema/sample"
	"github.com/hygiene/pseudonymizer/store"
)

// The load benchmarks drive the API over HTTP with vegeta, run as a
// library in a child process (this test binary, started again as the load
// generator), at a constant rate, and report what it measured: achieved
// lookups/s, p50 and p99 latency, the share of 200s, and the CPU time per
// lookup of the API (this process) and of vegeta (the child) apart. Tune
// with PSEUDONYMIZER_LOOKUP_BENCH_RATE (default 10000) and
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

// benchWindow sets the batch window to PSEUDONYMIZER_LOOKUP_BENCH_WINDOW
// (a duration; negative: none), if set.
func benchWindow(cfg *lookup.Config) {
	if d, err := time.ParseDuration(os.Getenv("PSEUDONYMIZER_LOOKUP_BENCH_WINDOW")); err == nil {
		cfg.Window = d
	}
}

// loadGenEnv, set in a child's environment, makes the test binary a load
// generator (TestMain): it reads an attackSpec from stdin, attacks, and
// writes the vegeta.Metrics as JSON to stdout.
const loadGenEnv = "PSEUDONYMIZER_LOOKUP_LOADGEN"

// attackSpec is what a load generator child is to do. Request i asks for
// customer Customers[i % len] (or Prefix + i % Modulo without Customers).
type attackSpec struct {
	URL       string
	Rate      int
	Duration  time.Duration // 0: until stdin is closed
	Prefix    string
	Modulo    int64
	Customers []string
}

func (sp *attackSpec) body(i int64) []byte {
	if len(sp.Customers) > 0 {
		return lookupBody(sp.Customers[i%int64(len(sp.Customers))], i)
	}
	return lookupBody(sp.Prefix+strconv.FormatInt(i%sp.Modulo, 10), i)
}

// attackResult is one attack's vegeta metrics and the CPU time spent per
// request by the API (this process) and by vegeta (the child).
type attackResult struct {
	m         vegeta.Metrics
	apiCPU    time.Duration
	vegetaCPU time.Duration
}

// attack runs sp in a load generator child until sp.Duration has passed or
// ctx is done.
func attack(ctx context.Context, sp attackSpec) (*attackResult, error) {
	exe, err := os.Executable()
	if err != nil {
		return nil, err
	}
	spec, err := json.Marshal(sp)
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(exe, "-test.run=^$")
	cmd.Env = append(os.Environ(), loadGenEnv+"=1")
	if n := os.Getenv("PSEUDONYMIZER_LOOKUP_BENCH_VEGETA_PROCS"); n != "" {
		cmd.Env = append(cmd.Env, "GOMAXPROCS="+n)
	}
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, os.Stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return nil, err
	}
	cpu0 := cpuTime()
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	if _, err := stdin.Write(append(spec, '\n')); err != nil {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		return nil, err
	}
	stop := context.AfterFunc(ctx, func() { stdin.Close() })
	err = cmd.Wait()
	stop()
	cpu := cpuTime() - cpu0
	if err != nil {
		return nil, fmt.Errorf("load generator: %w", err)
	}
	var r attackResult
	if err := json.Unmarshal(out.Bytes(), &r.m); err != nil {
		return nil, fmt.Errorf("load generator output: %w", err)
	}
	if r.m.Requests > 0 {
		ru := cmd.ProcessState.SysUsage().(*syscall.Rusage)
		r.apiCPU = cpu / time.Duration(r.m.Requests)
		r.vegetaCPU = time.Duration(ru.Utime.Nano()+ru.Stime.Nano()) / time.Duration(r.m.Requests)
	}
	return &r, nil
}

// mustAttack is attack for the benchmark's goroutine.
func mustAttack(b *testing.B, sp attackSpec) *attackResult {
	b.Helper()
	r, err := attack(context.Background(), sp)
	if err != nil {
		b.Fatal(err)
	}
	return r
}

// loadGen is the load generator child's main.
func loadGen() int {
	var sp attackSpec
	in := bufio.NewReader(os.Stdin)
	line, err := in.ReadBytes('\n')
	if err == nil {
		err = json.Unmarshal(line, &sp)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "load generator: reading the attack:", err)
		return 2
	}
	hdr := http.Header{"Authorization": {"Bearer " + allToken}, "Content-Type": {"application/json"}}
	var n atomic.Int64
	targeter := func(t *vegeta.Target) error {
		t.Method, t.URL, t.Header = http.MethodPost, sp.URL, hdr
		t.Body = sp.body(n.Add(1) - 1)
		return nil
	}
	// Keep-alive connections, as a shop's servers keep them to the API;
	// vegeta adds workers (each with its connection) when all are busy,
	// and keeps as many connections idle as it may have workers, so that
	// none is closed and dialed again.
	atk := vegeta.NewAttacker(vegeta.KeepAlive(true), vegeta.Connections(512), vegeta.MaxWorkers(512), vegeta.Timeout(5*time.Second))
	go func() {
		_, _ = io.Copy(io.Discard, in) // until the parent closes stdin
		atk.Stop()
	}()
	var m vegeta.Metrics
	for res := range atk.Attack(targeter, vegeta.Rate{Freq: sp.Rate, Per: time.Second}, sp.Duration, "lookup") {
		m.Add(res)
	}
	m.Close()
	if err := json.NewEncoder(os.Stdout).Encode(&m); err != nil {
		fmt.Fprintln(os.Stderr, "load generator:", err)
		return 2
	}
	return 0
}

// cpuTime returns the process's user and system CPU time so far.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

func report(b *testing.B, r *attackResult) {
	m := &r.m
	b.ReportMetric(m.Throughput, "lookups/s")
	b.ReportMetric(float64(m.Latencies.P50.Microseconds())/1000, "p50-ms")
	b.ReportMetric(float64(m.Latencies.P99.Microseconds())/1000, "p99-ms")
	b.ReportMetric(m.Success*100, "%-ok")
	b.ReportMetric(float64(r.apiCPU.Nanoseconds())/1000, "api-cpu-µs/lookup")
	b.ReportMetric(float64(r.vegetaCPU.Nanoseconds())/1000, "vegeta-cpu-µs/lookup")
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
			w := newWorld(b, kind, false, false, benchWindow)
			const customers = 10000
			lookups := make([]store.Lookup, customers)
			for i := range lookups {
				lookups[i] = store.Lookup{SubjectID: fmt.Sprintf("known-%d", i), Latest: time.Now()}
			}
			if _, err := w.st.Resolve(context.Background(), lookups); err != nil {
				b.Fatal(err)
			}
			sp := attackSpec{URL: w.url, Rate: rate, Duration: time.Second, Prefix: "known-", Modulo: customers}
			mustAttack(b, sp) // warm up: the API's cache
			sp.Duration = dur
			for b.Loop() {
				report(b, mustAttack(b, sp))
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
				report(b, mustAttack(b, attackSpec{URL: w.url, Rate: 1000, Duration: dur, Prefix: fmt.Sprintf("new-%d-", r), Modulo: math.MaxInt64}))
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
// orders (PSEUDONYMIZER_LOOKUP_BENCH_ORDERS) (20,000 customers, PostgreSQL,
// kfake over TCP), idle and while the API serves 1,000 lookups/s of the
// same customers (vegeta in a child process), and the CPU time per order
// of this process.
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
				var r *attackResult
				var rerr error
				done := make(chan struct{})
				if load > 0 {
					ids := make([]string, 0, customers)
					g2 := sample.New(11, customers, time.Now())
					for range customers {
						ids = append(ids, g2.Next().CustomerID)
					}
					go func() {
						defer close(done)
						r, rerr = attack(ctx, attackSpec{URL: w.url, Rate: load, Customers: ids})
					}()
				} else {
					close(done)
				}
				b.StartTimer()
				start, cpu0 := time.Now(), cpuTime()
				w.startProcessor(b)
				w.kc.AwaitGroup(b, w.group, 10*time.Minute, w.topics.Orders)
				el, cpu := time.Since(start), cpuTime()-cpu0
				b.StopTimer()
				b.ReportMetric(float64(n)/el.Seconds(), "orders/s")
				// This process's CPU (processor, kfake, and the API if it
				// serves lookups) per order: what the lookups cost the
				// orders on a machine whose cores are not all theirs.
				b.ReportMetric(float64(cpu.Nanoseconds())/1000/float64(n), "cpu-µs/order")
				cancel()
				<-done
				if rerr != nil {
					b.Fatal(rerr)
				}
				if r != nil {
					b.ReportMetric(r.m.Throughput, "lookups/s")
					b.ReportMetric(float64(r.m.Latencies.P99.Microseconds())/1000, "lookup-p99-ms")
					b.ReportMetric(float64(r.vegetaCPU.Nanoseconds())/1000, "vegeta-cpu-µs/lookup")
				}
			}
		})
	}
}

// BenchmarkHandler: the API's handler and batcher without HTTP (an
// httptest recorder for the connection), 64 lookups in flight, known
// customers, embedded store, no batch window: the allocations and CPU
// time the API itself spends per lookup.
func BenchmarkHandler(b *testing.B) {
	w := newWorld(b, "embedded", false, false, func(c *lookup.Config) { c.Window = -1 })
	const customers = 1000
	lookups := make([]store.Lookup, customers)
	for i := range lookups {
		lookups[i] = store.Lookup{SubjectID: fmt.Sprintf("known-%d", i), Latest: time.Now()}
	}
	if _, err := w.st.Resolve(context.Background(), lookups); err != nil {
		b.Fatal(err)
	}
	var n atomic.Int64
	b.SetParallelism(32)
	b.ReportAllocs()
	cpu0 := cpuTime()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			i := n.Add(1)
			req := httptest.NewRequest(http.MethodPost, lookup.Path, bytes.NewReader(lookupBody(fmt.Sprintf("known-%d", i%customers), i)))
			req.Header.Set("Authorization", "Bearer "+allToken)
			rec := httptest.NewRecorder()
			w.api.ServeHTTP(rec, req)
			if rec.Code != http.StatusOK {
				b.Errorf("status %d: %s", rec.Code, rec.Body)
				return
			}
		}
	})
	b.ReportMetric(float64((cpuTime()-cpu0).Nanoseconds())/1000/float64(b.N), "cpu-µs/op")
}
