// Package kafkatest gives tests a Kafka cluster: a real broker when
// PSEUDONYMIZER_TEST_KAFKA names one, franz-go's kfake over TCP otherwise.
//
// Tests on a shared real broker must not see each other's topics, groups or
// transactional IDs, so every name goes through the Cluster: Topic, Group and
// TxnID prefix it with a string unique to the test (on kfake too, so both
// paths run the same code). When the test ends, a real broker loses the
// topics under the prefix and the test's groups; a kfake cluster is closed.
//
// Reads never wait "until quiet": ReadToEnd reads at read_committed up to
// the last stable offsets listed when it is called, AwaitCount waits for a
// number of committed records, AwaitStable for the end of open
// transactions, AwaitGroup for a consumer group's committed offsets.
//
// The helpers call testing.TB's Fatal methods, so they must be called from
// the test's goroutine. A Cluster is safe for concurrent use otherwise.
package kafkatest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"regexp"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"
)

// Environment variables read by this package.
const (
	// EnvKafka names the seed brokers (host:port[,host:port]) of a real
	// cluster; without it tests run on kfake.
	EnvKafka = "PSEUDONYMIZER_TEST_KAFKA"
	// EnvRequireKafka=1 makes RequireReal fail instead of skip when
	// EnvKafka is unset.
	EnvRequireKafka = "PSEUDONYMIZER_REQUIRE_KAFKA"
)

// opTimeout bounds one admin round trip or one ReadToEnd.
const opTimeout = 60 * time.Second

// Cluster is one test's view of a Kafka cluster: its seed brokers, a
// namespace for names, and an admin client.
type Cluster struct {
	tb     testing.TB
	addrs  []string
	fake   *kfake.Cluster // nil on a real broker
	prefix string
	cl     *kgo.Client
	adm    *kadm.Client

	mu     sync.Mutex
	groups map[string]bool
}

// New returns the real cluster named by PSEUDONYMIZER_TEST_KAFKA, or else
// a new kfake cluster over TCP started with opts (ignored on a real
// broker). Everything is cleaned up when the test ends.
func New(tb testing.TB, opts ...kfake.Opt) *Cluster {
	tb.Helper()
	if seeds := RealBrokers(); len(seeds) > 0 {
		return newCluster(tb, seeds, nil)
	}
	return NewFake(tb, opts...)
}

// NewFake always starts a kfake cluster, for tests that inject faults
// (kfake's Fault and ControlKey) and therefore cannot run on a real broker.
func NewFake(tb testing.TB, opts ...kfake.Opt) *Cluster {
	tb.Helper()
	fc, err := kfake.NewCluster(opts...)
	if err != nil {
		tb.Fatalf("kafkatest: start kfake: %v", err)
	}
	tb.Cleanup(fc.Close)
	return newCluster(tb, fc.ListenAddrs(), fc)
}

// RealBrokers returns the seed brokers of PSEUDONYMIZER_TEST_KAFKA, or nil.
func RealBrokers() []string {
	var out []string
	for _, s := range strings.Split(os.Getenv(EnvKafka), ",") {
		if s = strings.TrimSpace(s); s != "" {
			out = append(out, s)
		}
	}
	return out
}

// RequireReal skips the test unless PSEUDONYMIZER_TEST_KAFKA names a real
// broker; with PSEUDONYMIZER_REQUIRE_KAFKA=1 it fails the test instead.
func RequireReal(tb testing.TB) {
	tb.Helper()
	if len(RealBrokers()) > 0 {
		return
	}
	msg := "needs a real Kafka broker: set " + EnvKafka + "=host:port (scripts/kafka/kafka.sh start)"
	if os.Getenv(EnvRequireKafka) == "1" {
		tb.Fatal(msg + "; " + EnvRequireKafka + "=1 forbids skipping")
	}
	tb.Skip(msg)
}

var unsafeName = regexp.MustCompile(`[^A-Za-z0-9._-]+`)

func newCluster(tb testing.TB, addrs []string, fake *kfake.Cluster) *Cluster {
	tb.Helper()
	name := unsafeName.ReplaceAllString(tb.Name(), "-")
	if len(name) > 60 {
		name = name[:60]
	}
	var r [4]byte
	_, _ = rand.Read(r[:])
	c := &Cluster{tb: tb, addrs: addrs, fake: fake, prefix: "kt-" + name + "-" + hex.EncodeToString(r[:]) + ".", groups: map[string]bool{}}
	cl, err := kgo.NewClient(c.opts()...)
	if err != nil {
		tb.Fatalf("kafkatest: client: %v", err)
	}
	c.cl, c.adm = cl, kadm.NewClient(cl)
	tb.Cleanup(func() {
		defer cl.Close()
		if fake == nil {
			c.cleanup()
		}
	})
	return c
}

// opts are the options of every client the Cluster makes, then extra.
func (c *Cluster) opts(extra ...kgo.Opt) []kgo.Opt {
	return append([]kgo.Opt{kgo.SeedBrokers(c.addrs...), FastMetadata()}, extra...)
}

// FastMetadata lets a client refresh metadata after 100 ms instead of the
// default 5 s. A real broker refuses the first produce to a topic created
// a moment ago until the partition's leader serves it, and the client
// retries only after its next metadata refresh. Tests pass it to the clients
// they build themselves, such as the processor's.
func FastMetadata() kgo.Opt { return kgo.MetadataMinAge(100 * time.Millisecond) }

// shortFetchWait bounds how long a broker holds a fetch without data. A
// real broker does not answer a waiting read_committed fetch when the last
// stable offset moves, only when data arrives, so with the default of 5 s a
// reader would see a just committed transaction late.
func shortFetchWait() kgo.Opt { return kgo.FetchMaxWait(100 * time.Millisecond) }

// cleanup deletes the test's topics and groups from a real broker.
func (c *Cluster) cleanup() {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c.mu.Lock()
	var groups []string
	for g := range c.groups {
		groups = append(groups, g)
	}
	c.mu.Unlock()
	if len(groups) > 0 {
		// A group that never formed or still has members answers with an
		// error; its offsets expire with the broker's retention.
		_, _ = c.adm.DeleteGroups(ctx, groups...)
	}
	td, err := c.adm.ListTopics(ctx)
	if err != nil {
		c.tb.Logf("kafkatest: list topics for cleanup: %v", err)
		return
	}
	var mine []string
	for _, t := range td.Names() {
		if strings.HasPrefix(t, c.prefix) {
			mine = append(mine, t)
		}
	}
	if len(mine) == 0 {
		return
	}
	resp, err := c.adm.DeleteTopics(ctx, mine...)
	if err == nil {
		err = resp.Error()
	}
	if err != nil {
		c.tb.Logf("kafkatest: delete topics %v: %v", mine, err)
	}
}

// Real reports whether the cluster is a real broker.
func (c *Cluster) Real() bool { return c.fake == nil }

// Fake returns the kfake cluster, or nil on a real broker.
func (c *Cluster) Fake() *kfake.Cluster { return c.fake }

// Brokers returns the seed brokers.
func (c *Cluster) Brokers() []string { return append([]string(nil), c.addrs...) }

// Prefix returns the test's namespace, with which Topic, Group and TxnID
// begin.
func (c *Cluster) Prefix() string { return c.prefix }

// Topic returns the test's topic called name.
func (c *Cluster) Topic(name string) string { return c.prefix + name }

// Group returns the test's consumer group called name; it is deleted when
// the test ends.
func (c *Cluster) Group(name string) string {
	g := c.prefix + name
	c.mu.Lock()
	c.groups[g] = true
	c.mu.Unlock()
	return g
}

// TxnID returns the test's transactional ID called name.
func (c *Cluster) TxnID(name string) string { return c.prefix + name }

// Admin returns an admin client, closed when the test ends.
func (c *Cluster) Admin() *kadm.Client { return c.adm }

// Client returns a new client seeded with the cluster's brokers (and
// FastMetadata) and opts, closed when the test ends.
func (c *Cluster) Client(tb testing.TB, opts ...kgo.Opt) *kgo.Client {
	tb.Helper()
	cl, err := kgo.NewClient(c.opts(opts...)...)
	if err != nil {
		tb.Fatalf("kafkatest: client: %v", err)
	}
	tb.Cleanup(cl.Close)
	return cl
}

// CreateTopics creates topics (full names, usually from Topic) with the
// given partitions, the broker's default replication factor and configs
// (nil for the broker's defaults), and waits until every broker knows them.
func (c *Cluster) CreateTopics(tb testing.TB, partitions int32, configs map[string]*string, topics ...string) {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
	defer cancel()
	resp, err := c.adm.CreateTopics(ctx, partitions, -1, configs, topics...)
	if err == nil {
		err = resp.Error()
	}
	if err != nil {
		tb.Fatalf("kafkatest: create topics %v: %v", topics, err)
	}
	// A real broker answers before the partitions' leaders serve them;
	// clients that start right away would see unknown topics. ListOffsets
	// is answered by each leader once it hosts the partition.
	for {
		td, err := c.adm.ListTopics(ctx, topics...)
		if err == nil && td.Error() == nil && allLed(td, topics, int(partitions)) {
			var offs kadm.ListedOffsets
			if offs, err = c.adm.ListEndOffsets(ctx, topics...); err == nil {
				if err = offs.Error(); err == nil {
					return
				}
			}
		}
		if ctx.Err() != nil {
			tb.Fatalf("kafkatest: topics %v not ready: %v", topics, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func allLed(td kadm.TopicDetails, topics []string, partitions int) bool {
	for _, t := range topics {
		d, ok := td[t]
		if !ok || len(d.Partitions) != partitions {
			return false
		}
		for _, p := range d.Partitions {
			if p.Err != nil || p.Leader < 0 {
				return false
			}
		}
	}
	return true
}

// Produce writes records synchronously and fails the test on any error.
func (c *Cluster) Produce(tb testing.TB, recs ...*kgo.Record) {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
	defer cancel()
	if err := c.cl.ProduceSync(ctx, recs...).FirstErr(); err != nil {
		tb.Fatalf("kafkatest: produce: %v", err)
	}
}

type tp struct {
	topic     string
	partition int32
}

// stableEnds lists, per partition of topics, the log start offset, the last
// stable offset and the high watermark. A topic that does not exist (yet)
// is an error.
func (c *Cluster) stableEnds(ctx context.Context, topics []string) (start, lso, hwm map[tp]int64, err error) {
	start, lso, hwm = map[tp]int64{}, map[tp]int64{}, map[tp]int64{}
	for _, l := range []struct {
		into map[tp]int64
		list func(context.Context, ...string) (kadm.ListedOffsets, error)
	}{{start, c.adm.ListStartOffsets}, {lso, c.adm.ListCommittedOffsets}, {hwm, c.adm.ListEndOffsets}} {
		offs, err := l.list(ctx, topics...)
		if err == nil {
			err = offs.Error()
		}
		if err != nil {
			return nil, nil, nil, err
		}
		for _, t := range topics {
			if _, ok := offs[t]; !ok {
				return nil, nil, nil, fmt.Errorf("topic %s: %w", t, kerr.UnknownTopicOrPartition)
			}
		}
		offs.Each(func(o kadm.ListedOffset) { l.into[tp{o.Topic, o.Partition}] = o.Offset })
	}
	return start, lso, hwm, nil
}

// ReadToEnd reads topics from the start at read_committed until every
// partition reaches the last stable offset it had when ReadToEnd was
// called, and returns the records (control records excluded) ordered by
// topic, partition and offset. Duplicates are returned, not hidden.
func (c *Cluster) ReadToEnd(tb testing.TB, topics ...string) []*kgo.Record {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
	defer cancel()
	start, end, _, err := c.stableEnds(ctx, topics)
	if err != nil {
		tb.Fatalf("kafkatest: list offsets of %v: %v", topics, err)
	}
	out, err := c.readRange(ctx, start, end)
	if err != nil {
		tb.Fatalf("kafkatest: read %v to its last stable offsets: %v", topics, err)
	}
	return out
}

// readRange reads each partition from start to end (exclusive).
func (c *Cluster) readRange(ctx context.Context, start, end map[tp]int64) ([]*kgo.Record, error) {
	parts := map[string]map[int32]kgo.Offset{}
	remaining := map[tp]int64{}
	for p, e := range end {
		if e <= start[p] {
			continue
		}
		if parts[p.topic] == nil {
			parts[p.topic] = map[int32]kgo.Offset{}
		}
		parts[p.topic][p.partition] = kgo.NewOffset().At(start[p])
		remaining[p] = e
	}
	if len(remaining) == 0 {
		return nil, nil
	}
	// Control records (commit and abort markers) are kept so that a
	// partition whose last stable offset follows a marker is seen to end.
	cl, err := kgo.NewClient(c.opts(kgo.ConsumePartitions(parts), shortFetchWait(),
		kgo.FetchIsolationLevel(kgo.ReadCommitted()), kgo.KeepControlRecords())...)
	if err != nil {
		return nil, err
	}
	defer cl.Close()
	var out []*kgo.Record
	for len(remaining) > 0 {
		fs := cl.PollFetches(ctx)
		if ctx.Err() != nil {
			return out, fmt.Errorf("%w with %d partitions unfinished (read %d records)", ctx.Err(), len(remaining), len(out))
		}
		var ferr error
		fs.EachError(func(t string, p int32, err error) { ferr = errors.Join(ferr, fmt.Errorf("%s[%d]: %w", t, p, err)) })
		if ferr != nil {
			return out, ferr
		}
		fs.EachRecord(func(r *kgo.Record) {
			p := tp{r.Topic, r.Partition}
			e, ok := remaining[p]
			if !ok || r.Offset >= e {
				return // beyond the snapshot
			}
			if !r.Attrs.IsControl() {
				out = append(out, r)
			}
			if r.Offset+1 >= e {
				delete(remaining, p)
			}
		})
	}
	sort.SliceStable(out, func(i, j int) bool {
		a, b := out[i], out[j]
		if a.Topic != b.Topic {
			return a.Topic < b.Topic
		}
		if a.Partition != b.Partition {
			return a.Partition < b.Partition
		}
		return a.Offset < b.Offset
	})
	return out, nil
}

// awaitTopics waits until every topic exists.
func (c *Cluster) awaitTopics(tb testing.TB, deadline time.Time, topics []string) {
	tb.Helper()
	for {
		ctx, cancel := context.WithDeadline(context.Background(), deadline)
		td, err := c.adm.ListTopics(ctx, topics...)
		cancel()
		if err == nil {
			missing := false
			for _, t := range topics {
				if d, ok := td[t]; !ok || d.Err != nil || len(d.Partitions) == 0 {
					missing = true
				}
			}
			if !missing {
				return
			}
		}
		if time.Now().After(deadline) {
			tb.Fatalf("kafkatest: topics %v do not exist: %v", topics, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// AwaitCount waits until topics hold at least n committed records (failing
// after timeout), then returns ReadToEnd's result, which may hold more than
// n records: callers that expect exactly n compare its length.
func (c *Cluster) AwaitCount(tb testing.TB, n int, timeout time.Duration, topics ...string) []*kgo.Record {
	tb.Helper()
	deadline := time.Now().Add(timeout)
	c.awaitTopics(tb, deadline, topics)
	cl, err := kgo.NewClient(c.opts(kgo.ConsumeTopics(topics...), shortFetchWait(),
		kgo.FetchIsolationLevel(kgo.ReadCommitted()), kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()))...)
	if err != nil {
		tb.Fatalf("kafkatest: client: %v", err)
	}
	defer cl.Close()
	ctx, cancel := context.WithDeadline(context.Background(), deadline)
	defer cancel()
	got := 0
	for got < n {
		fs := cl.PollFetches(ctx)
		if ctx.Err() != nil {
			tb.Fatalf("kafkatest: %d of %d committed records on %v after %s", got, n, topics, timeout)
		}
		var ferr error
		fs.EachError(func(t string, p int32, err error) { ferr = errors.Join(ferr, fmt.Errorf("%s[%d]: %w", t, p, err)) })
		if ferr != nil {
			tb.Fatalf("kafkatest: consume %v: %v", topics, ferr)
		}
		got += fs.NumRecords()
	}
	return c.ReadToEnd(tb, topics...)
}

// AwaitStable waits until no partition of topics has an open transaction
// (its last stable offset equals its high watermark) and returns
// ReadToEnd's result. Call it once the writers are known to be idle, e.g.
// after AwaitGroup: then it returns everything they committed.
func (c *Cluster) AwaitStable(tb testing.TB, timeout time.Duration, topics ...string) []*kgo.Record {
	tb.Helper()
	deadline := time.Now().Add(timeout)
	c.awaitTopics(tb, deadline, topics)
	for {
		ctx, cancel := context.WithDeadline(context.Background(), deadline)
		start, lso, hwm, err := c.stableEnds(ctx, topics)
		if err == nil && equalOffsets(lso, hwm) {
			out, err := c.readRange(ctx, start, lso)
			cancel()
			if err != nil {
				tb.Fatalf("kafkatest: read %v: %v", topics, err)
			}
			return out
		}
		cancel()
		if time.Now().After(deadline) {
			tb.Fatalf("kafkatest: %v not stable after %s (last stable %v, high watermarks %v, err %v)", topics, timeout, lso, hwm, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func equalOffsets(a, b map[tp]int64) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if b[k] != v {
			return false
		}
	}
	return true
}

// AwaitGroup waits until group has committed, for every partition of
// topics, an offset at or past the high watermark the partition had when
// AwaitGroup was called: the group's members have consumed and committed
// everything produced before the call.
func (c *Cluster) AwaitGroup(tb testing.TB, group string, timeout time.Duration, topics ...string) {
	tb.Helper()
	deadline := time.Now().Add(timeout)
	c.awaitTopics(tb, deadline, topics)
	ctx, cancel := context.WithDeadline(context.Background(), deadline)
	defer cancel()
	_, _, hwm, err := c.stableEnds(ctx, topics)
	if err != nil {
		tb.Fatalf("kafkatest: list offsets of %v: %v", topics, err)
	}
	var behind []string // as of the last successful fetch
	var lastErr error
	for {
		committed, err := c.adm.FetchOffsetsForTopics(ctx, group, topics...)
		if err == nil {
			behind = behind[:0]
			for p, end := range hwm {
				if end == 0 {
					continue
				}
				o, ok := committed.Lookup(p.topic, p.partition)
				if !ok || o.Err != nil || o.At < end {
					behind = append(behind, fmt.Sprintf("%s[%d] at %d of %d", p.topic, p.partition, o.At, end))
				}
			}
			if len(behind) == 0 {
				return
			}
		} else if ctx.Err() == nil {
			lastErr = err
		}
		if ctx.Err() != nil {
			sort.Strings(behind)
			tb.Fatalf("kafkatest: group %s did not commit to the end of %v within %s: %v (last error: %v)", group, topics, timeout, behind, lastErr)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// WaitFor polls cond every 20 ms until it holds, failing the test after
// timeout with what.
func WaitFor(tb testing.TB, timeout time.Duration, what string, cond func() bool) {
	tb.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			tb.Fatalf("timed out after %s waiting for %s", timeout, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// WaitForNil is WaitFor for a condition that says why it does not hold
// yet: it polls cond every 20 ms until it returns nil, and fails the test
// after timeout with what and cond's last error.
func WaitForNil(tb testing.TB, timeout time.Duration, what string, cond func() error) {
	tb.Helper()
	deadline := time.Now().Add(timeout)
	for {
		err := cond()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			tb.Fatalf("timed out after %s waiting for %s: %v", timeout, what, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// Header returns the value of r's first header called key, or "".
func Header(r *kgo.Record, key string) string {
	for _, h := range r.Headers {
		if h.Key == key {
			return string(h.Value)
		}
	}
	return ""
}
