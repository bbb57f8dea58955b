package main

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/hygiene/pseudonymizer/processor"
)

// buildPseudonymizer builds the pseudonymizer binary of this module into
// b.dir, unless --pseudonymizer named one.
func (b *bench) buildPseudonymizer(ctx context.Context) error {
	if b.binary != "" {
		return nil
	}
	b.binary = filepath.Join(b.dir, "pseudonymizer")
	cmd := exec.CommandContext(ctx, "go", "build", "-o", b.binary, "github.com/hygiene/pseudonymizer/cmd/pseudonymizer")
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("bench: building the pseudonymizer (or pass --pseudonymizer): %w: %s", err, strings.TrimSpace(string(out)))
	}
	return nil
}

// service returns the command that runs pipeline name (kind pg or
// embedded) as `pseudonymizer run` with a configuration of its own, and
// the URL of its metrics.
func (b *bench) service(kind, name, prefix, group string) (*exec.Cmd, string, error) {
	port, err := freePort()
	if err != nil {
		return nil, "", fmt.Errorf("bench: %w", err)
	}
	topics := b.topics
	topics.PseudoPrefix = prefix
	st := map[string]string{}
	switch kind {
	case "pg":
		st["postgres"] = withSearchPath(b.dsn, b.pgSchema)
	case "embedded":
		st["path"] = filepath.Join(b.dir, "keys.db")
	}
	systems := map[string]any{}
	for _, p := range b.pols {
		systems[p.System] = map[string]any{"keep": p.Keep, "pseudonymize": p.Pseudonymize}
	}
	conf := map[string]any{
		"kafka": map[string]any{
			"brokers": b.brokers, "group_id": group, "transactional_id": group,
			"session_timeout": "6s", "create_topics": false,
		},
		"topics": map[string]string{
			"orders": topics.Orders, "forget": prefix + "forget", "forgotten": prefix + "forgotten",
			"orders_dead_letter": topics.OrdersDeadLetter, "forget_dead_letter": topics.ForgetDeadLetter,
			"pseudo_prefix": topics.PseudoPrefix,
		},
		"store":      st,
		"http":       map[string]string{"listen": "127.0.0.1:" + strconv.Itoa(port)},
		"log":        map[string]string{"level": "warn", "format": "text"},
		"processing": b.processing(),
		"systems":    systems,
	}
	text, err := yaml.Marshal(conf)
	if err != nil {
		return nil, "", fmt.Errorf("bench: %w", err)
	}
	path := filepath.Join(b.dir, name+".yaml")
	if err := os.WriteFile(path, text, 0o600); err != nil {
		return nil, "", fmt.Errorf("bench: %w", err)
	}
	cmd := exec.Command(b.binary, "run", "--config", path)
	// Only the bench's own settings: a PSEUDONYMIZER_* override of the
	// caller's environment would change what is measured.
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "PSEUDONYMIZER_") {
			cmd.Env = append(cmd.Env, kv)
		}
	}
	cmd.Env = append(cmd.Env, "PSEUDONYMIZER_KEK="+b.kek)
	if b.profile != "" {
		if err := os.MkdirAll(b.profile, 0o755); err != nil {
			return nil, "", err
		}
		cmd.Env = append(cmd.Env, "PSEUDONYMIZER_PROFILE="+filepath.Join(b.profile, name))
	}
	return cmd, "http://127.0.0.1:" + strconv.Itoa(port) + "/metrics", nil
}

// processing is the processing section of the pseudonymizer's
// configuration.
func (b *bench) processing() map[string]any {
	p := map[string]any{"max_backoff": "2s"}
	if b.cacheSubjects >= 0 {
		p["cache_subjects"] = b.cacheSubjects
	}
	if b.maxPoll > 0 {
		p["max_poll_records"] = b.maxPoll
	}
	return p
}

// withSearchPath returns dsn with the PostgreSQL search_path set to schema,
// so that the store lives there.
func withSearchPath(dsn, schema string) string {
	u, err := url.Parse(dsn)
	if err != nil || u.Scheme == "" {
		return dsn + " search_path=" + schema
	}
	q := u.Query()
	q.Set("search_path", schema)
	u.RawQuery = q.Encode()
	return u.String()
}

// freePort returns a TCP port that was free a moment ago.
func freePort() (int, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port, nil
}

// scrapeStats reads the totals of a running service from its metrics: the
// batches and store calls the processor made, and the orders committed.
func scrapeStats(ctx context.Context, metricsURL, orders string) (processor.Stats, error) {
	var s processor.Stats
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, metricsURL, nil)
	if err != nil {
		return s, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return s, fmt.Errorf("bench: reading the service's metrics: %w", err)
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
	for sc.Scan() {
		name, labels, value, ok := parseSample(sc.Text())
		if !ok {
			continue
		}
		switch {
		case name == "pseudonymizer_batches_total" && (labels == `outcome="committed"` || labels == `outcome="aborted"`):
			s.Batches += int(value)
		case name == "pseudonymizer_store_calls_total":
			s.StoreCalls += int(value)
		case name == "pseudonymizer_records_in_total" && labels == `topic="`+orders+`"`:
			s.OrdersIn += int(value)
		}
	}
	return s, sc.Err()
}

// parseSample parses one Prometheus text-format sample line.
func parseSample(line string) (name, labels string, value float64, ok bool) {
	if line == "" || line[0] == '#' {
		return "", "", 0, false
	}
	metric, v, found := strings.Cut(line, " ")
	if !found {
		return "", "", 0, false
	}
	name = metric
	if i := strings.IndexByte(metric, '{'); i >= 0 {
		name, labels = metric[:i], strings.TrimSuffix(metric[i+1:], "}")
	}
	value, err := strconv.ParseFloat(strings.TrimSpace(v), 64)
	return name, labels, value, err == nil
}
