package processor

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kerr"
)

// EnsureTopics creates the topics the processor writes (outputs,
// confirmations, dead letters, the PII quarantine) when they are missing, with the partition
// count of the orders topic (or 1) and the broker's default replication.
// The objections topic, an input, is created too when missing, compacted
// (cleanup.policy=compact: one state per subject); the other input topics
// must exist or be auto-created by the broker. The topics created here get
// message.timestamp.type CreateTime, so that the broker keeps the record
// timestamps the processor sets deliberately (RecordTime) instead of
// stamping its own append time, which would be the same to the millisecond
// on every system's topic.
func (p *Processor) EnsureTopics(ctx context.Context, adm *kadm.Client) error {
	partitions := int32(1)
	if td, err := adm.ListTopics(ctx, p.cfg.Topics.Orders); err == nil {
		if t, ok := td[p.cfg.Topics.Orders]; ok && t.Err == nil && len(t.Partitions) > 0 {
			partitions = int32(len(t.Partitions))
		}
	}
	want := append([]string{p.cfg.Topics.Forgotten, p.cfg.Topics.OrdersDeadLetter, p.cfg.Topics.ForgetDeadLetter}, p.topics...)
	if p.cfg.Topics.Objections != "" {
		want = append(want, p.cfg.Topics.ObjectionsApplied, p.cfg.Topics.ObjectionsDeadLetter)
	}
	if p.pii != nil && p.pii.quarantine != "" {
		want = append(want, p.pii.quarantine)
	}
	createTime := "CreateTime"
	resp, err := adm.CreateTopics(ctx, partitions, -1, map[string]*string{"message.timestamp.type": &createTime}, want...)
	if err != nil {
		return fmt.Errorf("create topics: %w", err)
	}
	if p.cfg.Topics.Objections != "" {
		// The objection states' input: compacted (one state per subject).
		compact := "compact"
		more, err := adm.CreateTopics(ctx, partitions, -1, map[string]*string{"cleanup.policy": &compact}, p.cfg.Topics.Objections)
		if err != nil {
			return fmt.Errorf("create topics: %w", err)
		}
		for t, r := range more {
			resp[t] = r
		}
	}
	var created []string
	for _, r := range resp.Sorted() {
		switch {
		case r.Err == nil:
			created = append(created, r.Topic)
		case !errors.Is(r.Err, kerr.TopicAlreadyExists):
			return fmt.Errorf("create topic %s: %w", r.Topic, r.Err)
		}
	}
	return awaitLeaders(ctx, adm, created)
}

// awaitLeaders waits until every partition of topics has a leader. A Kafka
// broker refuses produce requests to a topic created a moment ago until its
// partitions have leaders, and a client that was refused waits for its next
// metadata refresh (5 s by default), so the first batch after start-up
// would stall.
func awaitLeaders(ctx context.Context, adm *kadm.Client, topics []string) error {
	if len(topics) == 0 {
		return nil
	}
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for {
		td, err := adm.ListTopics(ctx, topics...)
		if err == nil && leadersReady(td, topics) {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("create topics: waiting for partition leaders: %w", ctx.Err())
		case <-tick.C:
		}
	}
}

// leadersReady reports whether every partition of topics has a leader.
func leadersReady(td kadm.TopicDetails, topics []string) bool {
	for _, name := range topics {
		t, ok := td[name]
		if !ok || t.Err != nil || len(t.Partitions) == 0 {
			return false
		}
		for _, p := range t.Partitions {
			if p.Err != nil || p.Leader < 0 {
				return false
			}
		}
	}
	return true
}
