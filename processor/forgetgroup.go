package processor

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"
)

// seedTimeout bounds seeding the forget lane's group.
const seedTimeout = 30 * time.Second

// prepareForgetLane runs before each session of the forget lane: it
// seeds the lane's group (seedForgetGroup) and sweeps the keys retained
// for erasure notices of requests the group has committed, which an
// instance that stopped between its commit and Settle left behind
// (notices.go).
func (p *Processor) prepareForgetLane(ctx context.Context) error {
	cl, err := kgo.NewClient(p.cfg.Kafka...)
	if err != nil {
		return fmt.Errorf("forget lane: kafka client: %w", err)
	}
	defer cl.Close()
	adm := kadm.NewClient(cl)
	ctx, cancel := context.WithTimeout(ctx, seedTimeout)
	defer cancel()
	if err := p.seedForgetGroup(ctx, adm); err != nil {
		return err
	}
	p.sweep.last = p.cfg.Now()
	p.sweepRetained(ctx, adm)
	return nil
}

// seedForgetGroup carries an upgrade from versions that consumed forget
// requests in the order group: if the forget lane's group has committed
// no offset of the forget topic yet, it starts where the order group
// committed, instead of at the start of the topic (which would confirm
// every request again). Instances that seed at once commit the same
// offsets; once a member has joined, the broker refuses such a commit and
// the group's own offsets win. It runs until it has found or written
// offsets.
func (p *Processor) seedForgetGroup(ctx context.Context, adm *kadm.Client) error {
	if p.forgetsSeeded {
		return nil
	}
	topic := p.cfg.Topics.Forget
	has, err := committedOn(ctx, adm, p.cfg.ForgetGroupID, topic)
	if err != nil || len(has) > 0 {
		p.forgetsSeeded = err == nil
		return err
	}
	old, err := committedOn(ctx, adm, p.cfg.GroupID, topic)
	if err != nil || len(old) == 0 {
		p.forgetsSeeded = err == nil
		return err
	}
	resp, err := adm.CommitOffsets(ctx, p.cfg.ForgetGroupID, old)
	if err == nil {
		err = resp.Error()
	}
	if err != nil {
		// Refused once another instance's member joined: fine if that
		// instance seeded (or committed) already.
		has, ferr := committedOn(ctx, adm, p.cfg.ForgetGroupID, topic)
		if ferr != nil || len(has) == 0 {
			return fmt.Errorf("forget lane: seeding group %q from group %q: %w", p.cfg.ForgetGroupID, p.cfg.GroupID, err)
		}
	} else {
		p.log.Info("forget lane: its new consumer group starts where the order group left the forget topic (upgrade)",
			"group", p.cfg.ForgetGroupID, "from_group", p.cfg.GroupID, "partitions", len(old[topic]))
	}
	p.forgetsSeeded = true
	return nil
}

// committedOn returns the offsets that group committed on topic.
func committedOn(ctx context.Context, adm *kadm.Client, group, topic string) (kadm.Offsets, error) {
	resps, err := adm.FetchOffsets(ctx, group)
	if err == nil {
		err = resps.Error()
	}
	if errors.Is(err, kerr.GroupIDNotFound) {
		return kadm.Offsets{}, nil // a group that never committed
	}
	if err != nil {
		return nil, fmt.Errorf("forget lane: offsets of group %q: %w", group, err)
	}
	offs := kadm.Offsets{}
	resps.Each(func(o kadm.OffsetResponse) {
		if o.Topic == topic && o.At >= 0 {
			offs.Add(kadm.Offset{Topic: o.Topic, Partition: o.Partition, At: o.At, LeaderEpoch: -1})
		}
	})
	return offs, nil
}
