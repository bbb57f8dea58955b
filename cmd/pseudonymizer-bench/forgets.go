package main

import (
	"context"
	"fmt"
	"math/rand/v2"
	"slices"
	"sync"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/hygiene/pseudonymizer/schema"
	"github.com/hygiene/pseudonymizer/schema/sample"
)

// forgetLoad sends forget requests at a steady rate while a pipeline works
// through the backlog, and measures each request's latency: from its
// produce to its confirmation being readable (read_committed). The
// requests' requested_at lies before every backlog event, so no event is
// suppressed and the pipeline's output counts stay whole (the forgotten
// customers' later events get fresh keys).
type forgetLoad struct {
	cons    *kgo.Client
	stopped chan struct{}
	wg      sync.WaitGroup

	mu   sync.Mutex
	sent map[string]time.Time
	lat  []time.Duration
}

// forgetStats summarizes a forget load.
type forgetStats struct {
	n, unconfirmed int
	p50, p99, max  time.Duration
}

// startForgetLoad sends rate requests a second to forgetTopic and reads
// the confirmations from forgottenTopic, until stop.
func (b *bench) startForgetLoad(ctx context.Context, forgetTopic, forgottenTopic string, rate int) (*forgetLoad, error) {
	cons, err := kgo.NewClient(kgo.SeedBrokers(b.brokers...), kgo.ConsumeTopics(forgottenTopic),
		kgo.FetchIsolationLevel(kgo.ReadCommitted()), kgo.FetchMaxWait(50*time.Millisecond))
	if err != nil {
		return nil, err
	}
	l := &forgetLoad{cons: cons, stopped: make(chan struct{}), sent: map[string]time.Time{}}
	l.wg.Go(func() {
		for {
			fs := cons.PollFetches(ctx)
			if fs.IsClientClosed() || ctx.Err() != nil {
				return
			}
			now := time.Now()
			fs.EachRecord(func(r *kgo.Record) {
				c, err := schema.UnmarshalForgetConfirmation(r.Value)
				if err != nil {
					return
				}
				l.mu.Lock()
				if at, ok := l.sent[c.RequestID]; ok {
					l.lat = append(l.lat, now.Sub(at))
					delete(l.sent, c.RequestID)
				}
				l.mu.Unlock()
			})
		}
	})
	l.wg.Go(func() {
		rng := rand.New(rand.NewPCG(7, 7))
		requestedAt := time.Now().Add(-31 * 24 * time.Hour) // before every backlog event
		tick := time.NewTicker(time.Second / time.Duration(rate))
		defer tick.Stop()
		for i := 0; ; i++ {
			select {
			case <-ctx.Done():
				return
			case <-l.stopped:
				return
			case <-tick.C:
			}
			id := fmt.Sprintf("bench-forget-%d", i)
			v, err := schema.MarshalForgetRequest(&schema.ForgetRequest{RequestID: id,
				SubjectID: sample.CustomerID(rng.IntN(b.customers)), RequestedAt: requestedAt})
			if err != nil {
				continue
			}
			l.mu.Lock()
			l.sent[id] = time.Now()
			l.mu.Unlock()
			b.cl.Produce(ctx, &kgo.Record{Topic: forgetTopic, Value: v}, func(*kgo.Record, error) {})
		}
	})
	return l, nil
}

// stop stops sending, waits up to grace for the outstanding
// confirmations, and summarizes the latencies.
func (l *forgetLoad) stop(grace time.Duration) forgetStats {
	close(l.stopped)
	deadline := time.Now().Add(grace)
	for time.Now().Before(deadline) {
		l.mu.Lock()
		n := len(l.sent)
		l.mu.Unlock()
		if n == 0 {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	l.cons.Close()
	l.wg.Wait()
	l.mu.Lock()
	defer l.mu.Unlock()
	st := forgetStats{n: len(l.lat), unconfirmed: len(l.sent)}
	if len(l.lat) > 0 {
		slices.Sort(l.lat)
		q := func(p float64) time.Duration { return l.lat[min(len(l.lat)-1, int(p*float64(len(l.lat))))] }
		st.p50, st.p99, st.max = q(0.50), q(0.99), l.lat[len(l.lat)-1]
	}
	return st
}
