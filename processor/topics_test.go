package processor

import (
	"testing"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kerr"
)

// TestLeadersReady: EnsureTopics waits until every partition of every new
// topic has a leader (a real broker refuses produce requests before).
func TestLeadersReady(t *testing.T) {
	ready := kadm.TopicDetail{Topic: "a", Partitions: kadm.PartitionDetails{0: {Partition: 0, Leader: 1}, 1: {Partition: 1, Leader: 2}}}
	for _, tc := range []struct {
		name string
		td   kadm.TopicDetails
		want bool
	}{
		{"all partitions led", kadm.TopicDetails{"a": ready}, true},
		{"topic missing", kadm.TopicDetails{}, false},
		{"topic error", kadm.TopicDetails{"a": {Topic: "a", Err: kerr.UnknownTopicOrPartition}}, false},
		{"no partitions yet", kadm.TopicDetails{"a": {Topic: "a"}}, false},
		{"a partition without leader", kadm.TopicDetails{"a": {Topic: "a", Partitions: kadm.PartitionDetails{0: {Leader: 1}, 1: {Leader: -1}}}}, false},
		{"a partition error", kadm.TopicDetails{"a": {Topic: "a", Partitions: kadm.PartitionDetails{0: {Leader: 1, Err: kerr.LeaderNotAvailable}}}}, false},
	} {
		if got := leadersReady(tc.td, []string{"a"}); got != tc.want {
			t.Errorf("%s: leadersReady = %v, want %v", tc.name, got, tc.want)
		}
	}
}
