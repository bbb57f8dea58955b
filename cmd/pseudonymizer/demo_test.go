package main

import (
	"bytes"
	"context"
	"net"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/hygiene/pseudonymizer/internal/kafkatest"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/hygiene/pseudonymizer/internal/config"
)

// startDemo runs `pseudonymizer demo args...` until the test ends and
// waits until its output matches ready; it returns the output's first
// submatch of ready (the broker address).
func startDemo(t *testing.T, ready *regexp.Regexp, args ...string) (*lockedBuffer, string) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	out := &lockedBuffer{}
	done := make(chan error, 1)
	go func() { done <- run(ctx, append([]string{"demo"}, args...), out, &lockedBuffer{}) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("demo: %v", err)
		}
	})
	var m []string
	kafkatest.WaitFor(t, 90*time.Second, "the demo to be up", func() bool {
		select {
		case err := <-done:
			done <- err
			t.Fatalf("demo ended early: %v\n%s", err, out.String())
		default:
		}
		m = ready.FindStringSubmatch(out.String())
		return m != nil
	})
	return out, m[1]
}

func mustAdmin(t *testing.T, broker string) *kadm.Client {
	t.Helper()
	cl, err := kgo.NewClient(kgo.SeedBrokers(broker))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(cl.Close)
	return kadm.NewClient(cl)
}

// TestDemoBrokerOnly: --broker-only starts a broker with the input topics
// and nothing consuming them.
func TestDemoBrokerOnly(t *testing.T) {
	_, broker := startDemo(t, regexp.MustCompile(`broker at (\S+) `), "--broker-only", "--port", "0")
	adm := mustAdmin(t, broker)
	ctx := context.Background()
	td, err := adm.ListTopics(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(td.Names(), ","); got != "orders.raw,subjects.forget" {
		t.Errorf("topics %s, want orders.raw,subjects.forget", got)
	}
	groups, err := adm.ListGroups(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(groups) != 0 {
		t.Errorf("groups %v on a broker-only demo", groups.Groups())
	}
}

// TestDemoKeepRunningIsolated: the demo's service uses its own topics and a
// group that a user's `run` (group pseudonymizer, topics orders.raw, ...)
// cannot join, so it never handles the user's orders or forget requests.
func TestDemoKeepRunningIsolated(t *testing.T) {
	out, broker := startDemo(t, regexp.MustCompile(`Still running\. Broker: (\S+) `),
		"--keep-running", "--port", "0", "--metrics-addr", "127.0.0.1:0", "--orders", "4", "--customers", "2")
	adm := mustAdmin(t, broker)
	ctx := context.Background()
	groups, err := adm.ListGroups(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, g := range groups.Groups() {
		if !strings.HasPrefix(g, "pseudonymizer-demo-") {
			t.Errorf("demo group %q could collide with a user's", g)
		}
	}
	td, err := adm.ListTopics(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range td.Names() {
		if !strings.HasPrefix(name, demoTopicPrefix) {
			t.Errorf("demo topic %q is one a user's service uses", name)
		}
	}
	if !regexp.MustCompile(`Metrics: http://127\.0\.0\.1:[1-9]\d*/metrics`).MatchString(out.String()) {
		t.Errorf("the chosen metrics address is not shown:\n%s", out.String())
	}
}

// TestDemoMetricsPortTaken: a taken metrics port fails the demo at once with
// the real error, instead of a wait for outputs.
func TestDemoMetricsPortTaken(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	var out, errb bytes.Buffer
	err = run(ctx, []string{"demo", "--keep-running", "--port", "0", "--metrics-addr", ln.Addr().String()}, &out, &errb)
	if err == nil || !strings.Contains(err.Error(), "http.listen") || !strings.Contains(err.Error(), "address already in use") {
		t.Fatalf("error %v, want the listen error", err)
	}
}

// TestDemoPortLeavesRunsPort: `demo --keep-running` and the user's own `run`
// (examples/config.yaml, or the default http.listen) can run on one host:
// their HTTP addresses differ.
func TestDemoPortLeavesRunsPort(t *testing.T) {
	example, err := config.Read(filepath.Join("..", "..", "examples", "config.yaml"), nil)
	if err != nil {
		t.Fatal(err)
	}
	for name, addr := range map[string]string{"examples/config.yaml": example.HTTP.Listen, "the default": config.Default().HTTP.Listen} {
		if addr == demoMetricsAddr {
			t.Errorf("the demo's --metrics-addr default %s is the http.listen of %s", demoMetricsAddr, name)
		}
	}
	var out, errb bytes.Buffer
	if err := run(context.Background(), []string{"demo", "--help"}, &out, &errb); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out.String(), `default "`+demoMetricsAddr+`"`) {
		t.Errorf("demo --help does not show the default %s:\n%s", demoMetricsAddr, out.String())
	}
}
