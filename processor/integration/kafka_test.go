//go:build linux

package integration

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hygiene/pseudonymizer/internal/kafkatest"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"
)

// envRequireKafka turns a missing Java or Maven (no private broker can be
// started) into a failure instead of a skip.
const envRequireKafka = "PSEUDONYMIZER_REQUIRE_KAFKA"

// kafkaCluster is a private Apache Kafka cluster (scripts/kafka/kafka.sh)
// in a temporary directory on free ports, which a test may kill, pause and
// restart without disturbing anyone else. Node i has node.id i.
type kafkaCluster struct {
	script, dir string
	nodes, port int
	addrs       []string
}

var (
	privateMu       sync.Mutex
	privateClusters = map[int]*kafkaCluster{} // by node count, shared by the tests of the package
)

// stopPrivateKafka stops every private cluster; TestMain calls it.
func stopPrivateKafka() {
	privateMu.Lock()
	defer privateMu.Unlock()
	for n, k := range privateClusters {
		_ = exec.Command("bash", k.script, "stop", "-d", k.dir).Run()
		os.RemoveAll(k.dir)
		delete(privateClusters, n)
	}
}

// MustPrivateKafka returns the package's private cluster of nodes nodes
// (1 or 3), started on first use and stopped when the package's tests are
// done, with every node running. The tests of this package run one at a
// time, so a test owns the cluster while it runs. It skips the test when
// Java or Maven is missing, unless PSEUDONYMIZER_REQUIRE_KAFKA=1.
func MustPrivateKafka(t testing.TB, nodes int) *kafkaCluster {
	t.Helper()
	MustIntegration(t)
	privateMu.Lock()
	defer privateMu.Unlock()
	if k := privateClusters[nodes]; k != nil {
		for i := 1; i <= nodes; i++ {
			k.node(t, "start", i)
		}
		for i := 1; i <= nodes; i++ {
			k.mustAwaitNode(t, i)
		}
		return k
	}
	script, err := filepath.Abs("../../scripts/kafka/kafka.sh")
	if err != nil {
		t.Fatal(err)
	}
	skip := func(format string, args ...any) {
		t.Helper()
		if os.Getenv(envRequireKafka) == "1" {
			t.Fatalf(format, args...)
		}
		t.Skipf(format+" (set "+envRequireKafka+"=1 to fail instead)", args...)
	}
	if _, err := exec.LookPath("java"); err != nil {
		skip("no private Kafka broker: java is not installed")
	}
	if out, err := exec.Command("bash", script, "classpath").CombinedOutput(); err != nil {
		skip("no private Kafka broker: kafka.sh classpath: %v: %s", err, lastLines(out, 5))
	}
	dir, err := os.MkdirTemp("", "pz-it-kafka-")
	if err != nil {
		t.Fatal(err)
	}
	k := &kafkaCluster{script: script, dir: dir, nodes: nodes, port: freePortRange(t, 2*nodes)}
	start := time.Now()
	out, err := exec.Command("bash", script, "start", "-n", strconv.Itoa(nodes), "-p", strconv.Itoa(k.port), "-d", dir).CombinedOutput()
	if err != nil {
		_ = exec.Command("bash", script, "stop", "-d", dir).Run()
		os.RemoveAll(dir)
		t.Fatalf("start a %d-node Kafka cluster: %v: %s", nodes, err, lastLines(out, 10))
	}
	k.addrs = strings.Split(strings.TrimSpace(string(lastLines(out, 1))), ",")
	t.Logf("private Kafka cluster of %d node(s) at %v started in %s", nodes, k.addrs, time.Since(start).Round(time.Second))
	privateClusters[nodes] = k
	return k
}

// freePortRange returns the first of n consecutive free ports in
// 40000-48999 (node i uses two of them: clients and controllers).
func freePortRange(t testing.TB, n int) int {
	t.Helper()
	for range 200 {
		base := 40000 + 2*rand.IntN(4500)
		var lns []net.Listener
		ok := true
		for p := base; p < base+n && ok; p++ {
			ln, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", p))
			if err != nil {
				ok = false
				break
			}
			lns = append(lns, ln)
		}
		for _, ln := range lns {
			ln.Close()
		}
		if ok {
			return base
		}
	}
	t.Fatal("no free port range for Kafka")
	return 0
}

func lastLines(b []byte, n int) []byte {
	lines := bytes.Split(bytes.TrimSpace(b), []byte("\n"))
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return bytes.Join(lines, []byte("\n"))
}

// node runs `kafka.sh node ACTION I` (start, kill, pause, resume); start
// is a no-op for a running node.
func (k *kafkaCluster) node(t testing.TB, action string, i int) {
	t.Helper()
	out, err := exec.Command("bash", k.script, "node", action, strconv.Itoa(i), "-d", k.dir).CombinedOutput()
	if err != nil {
		t.Fatalf("kafka.sh node %s %d: %v: %s", action, i, err, out)
	}
}

// addr is node i's client address.
func (k *kafkaCluster) addr(i int) string { return k.addrs[i-1] }

// mustAwaitNode waits until node i answers a metadata request that lists
// it and names a controller, i.e. it has rejoined the cluster.
func (k *kafkaCluster) mustAwaitNode(t testing.TB, i int) {
	t.Helper()
	cl, err := kgo.NewClient(kgo.SeedBrokers(k.addr(i)))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	what := fmt.Sprintf("Kafka node %d to answer (see %s)", i, filepath.Join(k.dir, fmt.Sprintf("node-%d", i), "server.log"))
	kafkatest.WaitForNil(t, 3*time.Minute, what, func() error {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		resp, err := kmsg.NewPtrMetadataRequest().RequestWith(ctx, cl)
		cancel()
		if err != nil {
			return err
		}
		if resp.ControllerID < 0 {
			return errors.New("no controller")
		}
		for _, b := range resp.Brokers {
			if b.NodeID == int32(i) {
				return nil
			}
		}
		return errors.New("not in the metadata")
	})
}

// mustAwaitFullISR waits until every partition of every topic, internal
// ones included, has all nodes in sync: the cluster tolerates the loss of
// another node.
func (k *kafkaCluster) mustAwaitFullISR(t testing.TB, adm *kadm.Client) {
	t.Helper()
	kafkatest.WaitForNil(t, 3*time.Minute, "every partition fully in sync", func() error {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		td, err := adm.ListTopicsWithInternal(ctx)
		cancel()
		if err != nil {
			return err
		}
		lagging := 0
		td.EachPartition(func(p kadm.PartitionDetail) {
			if p.Err != nil || len(p.ISR) < k.nodes {
				lagging++
			}
		})
		if lagging > 0 {
			return fmt.Errorf("%d partitions not fully in sync", lagging)
		}
		return nil
	})
}

// mustAwaitOpenTransaction waits until a transaction of the service is open
// on some output partition (last stable offset below the high watermark)
// and returns that partition and a description. It produces fresh work
// every second, in case the stream is done.
func (w *world) mustAwaitOpenTransaction(t testing.TB) (string, int32, string) {
	t.Helper()
	fresh := time.Now().Add(time.Second)
	var topic, desc string
	var partition int32
	kafkatest.WaitFor(t, time.Minute, "an open transaction on some output partition", func() bool {
		if time.Now().After(fresh) {
			w.MustProduce(t, 20, 10)
			fresh = time.Now().Add(time.Second)
		}
		// An error (a broker electing leaders) means: try again.
		st, _ := w.partitionStates(w.outputTopics()...)
		for tp, ps := range st {
			for _, p := range ps {
				if p.lso < p.hwm {
					topic, partition, desc = tp, p.partition, fmt.Sprintf("%s/%d LSO %d < HWM %d", tp, p.partition, p.lso, p.hwm)
					return true
				}
			}
		}
		return false
	})
	return topic, partition, desc
}

// mustPartitionLeader returns the leader of topic's partition p.
func (w *world) mustPartitionLeader(t testing.TB, topic string, p int32) int32 {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	td, err := w.adm.ListTopics(ctx, topic)
	if err != nil {
		t.Fatalf("metadata of %s: %v", topic, err)
	}
	pd, ok := td[topic].Partitions[p]
	if !ok || pd.Err != nil || pd.Leader < 0 {
		t.Fatalf("%s/%d has no leader: %+v", topic, p, pd)
	}
	return pd.Leader
}

// mustAwaitOngoing waits until instance name's transaction is open at its
// coordinator and returns the coordinator's node ID. It produces fresh work
// every second, in case the stream is done.
func (w *world) mustAwaitOngoing(t testing.TB, name string) int32 {
	t.Helper()
	fresh := time.Now().Add(time.Second)
	coordinator := int32(-1)
	kafkatest.WaitForNil(t, time.Minute, "the transaction of "+name+" to be Ongoing", func() error {
		if time.Now().After(fresh) {
			w.MustProduce(t, 20, 10)
			fresh = time.Now().Add(time.Second)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		txns, err := w.adm.DescribeTransactions(ctx, w.txnID(name))
		cancel()
		d, ok := txns[w.txnID(name)]
		if err != nil || !ok || d.Err != nil {
			return fmt.Errorf("last: %v", err)
		}
		if d.State != "Ongoing" {
			return fmt.Errorf("last: %s", d.State)
		}
		coordinator = d.Coordinator
		return nil
	})
	return coordinator
}

// mustAwaitJoinHeld waits until the group is preparing a rebalance with a
// member of client ID clientID: that member's JoinGroup is being held by
// the coordinator until the others rejoin. It reports false if the group
// became Stable with that member before a look caught the rebalance.
func (w *world) mustAwaitJoinHeld(t testing.TB, clientID string) (held bool) {
	t.Helper()
	kafkatest.WaitForNil(t, 2*time.Minute, clientID+" joining a rebalance", func() error {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		gs, err := w.adm.DescribeGroups(ctx, w.group)
		cancel()
		g, ok := gs[w.group]
		if err != nil || !ok {
			return fmt.Errorf("group not described: %v", err)
		}
		member := false
		for _, m := range g.Members {
			member = member || m.ClientID == clientID
		}
		switch {
		case member && g.State == "PreparingRebalance":
			held = true
			return nil
		case member && g.State == "Stable":
			// The rebalance completed between two looks (a loaded
			// machine): the join was never seen held.
			return nil
		}
		return fmt.Errorf("last group state %s", g.State)
	})
	return held
}

// mustAwaitGroup waits until the group is Stable with exactly the members
// of the given client IDs.
func (w *world) mustAwaitGroup(t testing.TB, timeout time.Duration, clientIDs ...string) {
	t.Helper()
	want := strings.Join(sortedCopy(clientIDs), ",")
	var got string
	kafkatest.WaitForNil(t, timeout, "the group to converge", func() error {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		gs, err := w.adm.DescribeGroups(ctx, w.group)
		cancel()
		if g, ok := gs[w.group]; err == nil && ok {
			var ids []string
			for _, m := range g.Members {
				ids = append(ids, m.ClientID)
			}
			got = g.State + " " + strings.Join(sortedCopy(ids), ",")
			if g.State == "Stable" && strings.Join(sortedCopy(ids), ",") == want {
				return nil
			}
		}
		return fmt.Errorf("%s, want Stable %s", got, want)
	})
}

func sortedCopy(s []string) []string {
	c := append([]string(nil), s...)
	sort.Strings(c)
	return c
}

// clientID is the Kafka client ID of the instance's current process.
func (in *instance) clientID() string {
	in.mu.Lock()
	defer in.mu.Unlock()
	return fmt.Sprintf("%s.%d", in.name, in.starts)
}

// lastLogLine returns the last line of the current process's log that
// contains s, "" if none.
func (in *instance) lastLogLine(s string) string {
	in.mu.Lock()
	path := in.logs[len(in.logs)-1]
	in.mu.Unlock()
	b, _ := os.ReadFile(path)
	lines := bytes.Split(b, []byte("\n"))
	for i := len(lines) - 1; i >= 0; i-- {
		if bytes.Contains(lines[i], []byte(s)) {
			return string(lines[i])
		}
	}
	return ""
}
