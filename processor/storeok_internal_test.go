package processor

import (
	"bytes"
	"log/slog"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
)

// TestStoreRecoveryLogged: after a failed store call, the next successful
// one logs one line that the store answers again; calls that keep
// succeeding (or failing) log nothing more.
func TestStoreRecoveryLogged(t *testing.T) {
	var logs bytes.Buffer
	p := &Processor{log: slog.New(slog.NewTextHandler(&logs, nil)), m: NewMetrics(prometheus.NewRegistry())}
	p.setStoreOK(true)
	if logs.Len() != 0 {
		t.Fatalf("a store that always answered logged %q", logs.String())
	}
	p.setStoreOK(false)
	p.setStoreOK(false)
	p.setStoreOK(true)
	p.setStoreOK(true)
	if n := strings.Count(logs.String(), "key store answers again"); n != 1 {
		t.Errorf("%d recovery lines, want 1:\n%s", n, logs.String())
	}
}
