//go:build linux

package integration

import (
	"fmt"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"
)

// recorder is a testing.TB that records failures instead of reporting them,
// to test the oracle itself.
type recorder struct {
	testing.TB
	mu   sync.Mutex
	errs []string
}

func (r *recorder) Helper()             {}
func (r *recorder) Logf(string, ...any) {}
func (r *recorder) Log(...any)          {}
func (r *recorder) Errorf(format string, args ...any) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.errs = append(r.errs, fmt.Sprintf(format, args...))
}
func (r *recorder) Error(args ...any) { r.Errorf("%s", fmt.Sprint(args...)) }
func (r *recorder) Fatalf(format string, args ...any) {
	r.Errorf(format, args...)
	runtime.Goexit()
}
func (r *recorder) Fatal(args ...any) { r.Fatalf("%s", fmt.Sprint(args...)) }
func (r *recorder) Failed() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.errs) > 0
}

// run calls f with the recorder on its own goroutine (so Fatal can exit
// it) and returns the recorded failures.
func (r *recorder) run(f func(testing.TB)) []string {
	done := make(chan struct{})
	go func() {
		defer close(done)
		f(r)
	}()
	<-done
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]string(nil), r.errs...)
}

// TestOracleDetectsViolations checks that the oracle is not vacuous: after
// a clean run it passes; a committed duplicate, a lost event, a leaked raw
// identifier and a dead letter each make it fail.
func TestOracleDetectsViolations(t *testing.T) {
	w := MustNewWorld(t)
	w.MustProduce(t, 200, 50)
	w.MustStart(t, "pz-a")
	w.MustAwaitConsumed(t, 2*time.Minute)
	w.MustStopAll(t)
	if errs := (&recorder{TB: t}).run(w.MustVerify); len(errs) > 0 {
		t.Fatalf("the oracle fails a clean run: %v", errs)
	}

	meta := w.topics.PseudoPrefix + "meta"
	crm := w.topics.PseudoPrefix + "crm"
	recs := w.MustReadAll(t, meta)
	if len(recs[meta]) == 0 {
		t.Fatal("no output to tamper with")
	}
	orig := recs[meta][0]
	tampered := []*kgo.Record{
		// A duplicate of a committed output record.
		{Topic: meta, Key: orig.Key, Value: orig.Value},
		// A raw customer ID in a header.
		{Topic: crm, Key: []byte("x"), Value: []byte{0}, Headers: []kgo.RecordHeader{{Key: "who", Value: []byte("cust-100001")}}},
		// A dead letter.
		{Topic: w.topics.OrdersDeadLetter, Key: []byte("k"), Value: []byte("v")},
	}
	for _, r := range tampered {
		if err := w.cl.ProduceSync(t.Context(), r).FirstErr(); err != nil {
			t.Fatal(err)
		}
	}
	// A lost event: produced, never processed (no instance runs).
	w.MustProduce(t, 1, 0)

	errs := (&recorder{TB: t}).run(w.MustVerify)
	all := strings.Join(errs, "\n")
	t.Logf("the oracle reported, as it should:\n%s", all)
	for _, want := range []string{"1 duplicates", "P1:", w.topics.OrdersDeadLetter, "1 missing"} {
		if !strings.Contains(all, want) {
			t.Errorf("the oracle did not report %q; it reported:\n%s", want, all)
		}
	}
}
