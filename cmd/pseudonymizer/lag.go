package main

import (
	"context"
	"strconv"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/hygiene/pseudonymizer/processor"
)

// reportLag updates the consumer lag gauge every interval until ctx ends,
// for each group's topic in lanes (group -> the input topic it consumes).
// Lag is measured by the committed offsets of the whole group, so every
// instance reports the same numbers. Offsets a group committed on other
// topics (the order group's on the forget topic, before the lanes split)
// are not reported.
func reportLag(ctx context.Context, kopts []kgo.Opt, lanes map[string]string, m *processor.Metrics, interval time.Duration) {
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
		groups := make([]string, 0, len(lanes))
		for g := range lanes {
			groups = append(groups, g)
		}
		lags, err := adm.Lag(lctx, groups...)
		cancel()
		if err == nil {
			lags.Each(func(l kadm.DescribedGroupLag) {
				for _, ps := range l.Lag {
					for _, p := range ps {
						if p.Err == nil && p.Topic == lanes[l.Group] {
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
