package main

import (
	"context"
	"strconv"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/hygiene/pseudonymizer/processor"
)

// reportLag updates the consumer lag gauge of the group every interval
// until ctx ends. Lag is measured by the committed offsets of the whole
// group, so every instance reports the same numbers.
func reportLag(ctx context.Context, kopts []kgo.Opt, group string, m *processor.Metrics, interval time.Duration) {
	cl, err := kgo.NewClient(kopts...)
	if err != nil {
		return
	}
	defer cl.Close()
	adm := kadm.NewClient(cl)
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		lctx, cancel := context.WithTimeout(ctx, interval)
		lags, err := adm.Lag(lctx, group)
		cancel()
		if err == nil {
			lags.Each(func(l kadm.DescribedGroupLag) {
				for _, ps := range l.Lag {
					for _, p := range ps {
						if p.Err == nil {
							m.ConsumerLag.WithLabelValues(p.Topic, strconv.Itoa(int(p.Partition))).Set(float64(p.Lag))
						}
					}
				}
			})
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}
