package processor

import (
	"context"
	"errors"
	"fmt"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kerr"
)

// EnsureTopics creates the topics the processor writes (outputs,
// confirmations, dead letters) when they are missing, with the partition
// count of the orders topic (or 1) and the broker's default replication.
// The input topics must exist or be auto-created by the broker.
func (p *Processor) EnsureTopics(ctx context.Context, adm *kadm.Client) error {
	partitions := int32(1)
	if td, err := adm.ListTopics(ctx, p.cfg.Topics.Orders); err == nil {
		if t, ok := td[p.cfg.Topics.Orders]; ok && t.Err == nil && len(t.Partitions) > 0 {
			partitions = int32(len(t.Partitions))
		}
	}
	want := append([]string{p.cfg.Topics.Forgotten, p.cfg.Topics.OrdersDeadLetter, p.cfg.Topics.ForgetDeadLetter}, p.topics...)
	resp, err := adm.CreateTopics(ctx, partitions, -1, nil, want...)
	if err != nil {
		return fmt.Errorf("create topics: %w", err)
	}
	for _, r := range resp.Sorted() {
		if r.Err != nil && !errors.Is(r.Err, kerr.TopicAlreadyExists) {
			return fmt.Errorf("create topic %s: %w", r.Topic, r.Err)
		}
	}
	return nil
}
