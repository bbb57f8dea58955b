package processor_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
)

// TestForgetGroupStartsWhereTheOrderGroupLeft: versions before the lanes
// consumed forget requests in the order group. After the upgrade, the
// forget lane's new group must start where the order group committed, not
// at the start of the topic: requests carried out and confirmed before the
// upgrade are not confirmed again.
func TestForgetGroupStartsWhereTheOrderGroupLeft(t *testing.T) {
	e := newEnv(t, "embedded")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	now := time.Now().Truncate(time.Millisecond)
	defer func() {
		if t.Failed() {
			t.Log(e.logs())
		}
	}()

	// Two requests an older version carried out: the order group
	// committed their offsets.
	e.produce(t, e.forgetRecord(t, "old-1", "alice", now), e.forgetRecord(t, "old-2", "bob", now))
	adm := e.kc.Admin()
	ends, err := adm.ListEndOffsets(ctx, e.topics.Forget)
	if err != nil {
		t.Fatal(err)
	}
	offs := kadm.Offsets{}
	ends.Each(func(o kadm.ListedOffset) {
		offs.Add(kadm.Offset{Topic: o.Topic, Partition: o.Partition, At: o.Offset, LeaderEpoch: -1})
	})
	resp, err := adm.CommitOffsets(ctx, e.group, offs)
	if err == nil {
		err = resp.Error()
	}
	if err != nil {
		t.Fatalf("commit the order group's offsets: %v", err)
	}

	e.start(t, "pz-1")
	e.produce(t, e.forgetRecord(t, "new-1", "carol", now))
	got := e.confirmations(t, 1) // fails if old-1 or old-2 is confirmed again
	if _, ok := got["new-1"]; !ok {
		t.Fatalf("confirmed %v, want new-1", got)
	}
	if !strings.Contains(e.logs(), "starts where the order group left the forget topic") {
		t.Error("the instance did not log that it seeded the forget group")
	}
}
