package processor_test

import (
	"context"
	"fmt"
	"os"
	"sort"
	"sync"
	"testing"
	"time"

	"github.com/hygiene/pseudonymizer/internal/kafkatest"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/hygiene/pseudonymizer/schema"
	"github.com/hygiene/pseudonymizer/schema/sample"
)

// TestForgetLatencyUnderLoad sends forget requests while orders stream in
// steadily, checks that each is confirmed exactly once, and reports the
// request → confirmation latency (p50/p99). It asserts no timing: the
// numbers are for the operator (set PSEUDONYMIZER_TEST_VERBOSE=1 or -v).
func TestForgetLatencyUnderLoad(t *testing.T) {
	if testing.Short() {
		t.Skip("streams for several seconds")
	}
	for _, kind := range storeKinds {
		t.Run(kind, func(t *testing.T) {
			e := newEnv(t, kind)
			e.start(t, "pz-1")
			const customers, requests = 500, 40
			ctx, stop := context.WithCancel(context.Background())
			defer stop()

			// Steady load: about 2,000 orders per second.
			var wg sync.WaitGroup
			wg.Add(1)
			go func() {
				defer wg.Done()
				cl := e.client(t, kgo.ProducerLinger(5*time.Millisecond))
				gen := sample.New(21, customers, time.Now().Add(-time.Hour))
				tick := time.NewTicker(10 * time.Millisecond)
				defer tick.Stop()
				for {
					select {
					case <-ctx.Done():
						return
					case <-tick.C:
					}
					for i := 0; i < 20; i++ {
						ev := gen.Next()
						b, _ := schema.MarshalOrderEvent(ev)
						cl.Produce(ctx, &kgo.Record{Topic: e.topics.Orders, Key: []byte(ev.CustomerID), Value: b}, nil)
					}
				}
			}()

			// Confirmations are consumed as they come.
			sent := map[string]time.Time{}
			var mu sync.Mutex
			lat := make(chan time.Duration, requests)
			wg.Add(1)
			go func() {
				defer wg.Done()
				// A real broker holds a read_committed fetch until data
				// arrives, not until the transaction commits: a short wait
				// keeps that out of the measured latency.
				cl := e.client(t, kgo.ConsumeTopics(e.topics.Forgotten), kgo.FetchIsolationLevel(kgo.ReadCommitted()),
					kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()), kgo.FetchMaxWait(50*time.Millisecond))
				seen := map[string]bool{}
				for len(seen) < requests {
					f := cl.PollFetches(ctx)
					if ctx.Err() != nil {
						return
					}
					now := time.Now()
					for _, r := range f.Records() {
						c, err := schema.UnmarshalForgetConfirmation(r.Value)
						if err != nil {
							t.Errorf("confirmation: %v", err)
							continue
						}
						if seen[c.RequestID] {
							t.Errorf("two confirmations for %s", c.RequestID)
						}
						seen[c.RequestID] = true
						mu.Lock()
						lat <- now.Sub(sent[c.RequestID])
						mu.Unlock()
					}
				}
			}()

			// Measure under load: wait until the service publishes.
			kafkatest.WaitFor(t, 30*time.Second, "the first pseudonymized orders", func() bool {
				return len(e.kc.ReadToEnd(t, e.outputTopics()...)) > 0
			})
			fc := e.client(t)
			for i := 0; i < requests; i++ {
				id := fmt.Sprintf("lat-%d", i)
				r := e.forgetRecord(t, id, sample.CustomerID(i*7%customers), time.Now())
				mu.Lock()
				sent[id] = time.Now()
				mu.Unlock()
				if err := fc.ProduceSync(ctx, r).FirstErr(); err != nil {
					t.Fatal(err)
				}
				time.Sleep(50 * time.Millisecond)
			}
			var got []time.Duration
			timeout := time.After(60 * time.Second)
			for len(got) < requests {
				select {
				case d := <-lat:
					got = append(got, d)
				case <-timeout:
					t.Fatalf("%d of %d requests confirmed within 60s", len(got), requests)
				}
			}
			stop()
			wg.Wait()
			sort.Slice(got, func(i, j int) bool { return got[i] < got[j] })
			p50, p99 := got[len(got)/2], got[len(got)*99/100]
			msg := fmt.Sprintf("forget latency under ~2000 orders/s (%s store, %d requests): p50 %s, p99 %s, max %s",
				kind, requests, p50.Round(time.Millisecond), p99.Round(time.Millisecond), got[len(got)-1].Round(time.Millisecond))
			t.Log(msg)
			if os.Getenv("PSEUDONYMIZER_TEST_VERBOSE") != "" {
				fmt.Println(msg)
			}
		})
	}
}
