package lookup_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hygiene/pseudonymizer/lookup"
	"github.com/hygiene/pseudonymizer/store"
)

// hookStore runs afterResolve between a Resolve and its return, as if a
// forget raced the batch right there.
type hookStore struct {
	store.KeyStore
	afterResolve func()
}

func (s *hookStore) Resolve(ctx context.Context, l []store.Lookup) ([]store.Entry, error) {
	e, err := s.KeyStore.Resolve(ctx, l)
	if err == nil && s.afterResolve != nil {
		f := s.afterResolve
		s.afterResolve = nil
		f()
	}
	return e, err
}

func lookupAt(t *testing.T, url, customer string, at time.Time) (int, string) {
	t.Helper()
	code, body, _ := post(t, url, allToken, lookupReq{CustomerID: customer, OccurredAt: at.Format(time.RFC3339Nano), Systems: []string{"meta"}})
	if code != http.StatusOK {
		return code, ""
	}
	var r pseudonymsResp
	if err := json.Unmarshal(body, &r); err != nil {
		t.Fatal(err)
	}
	return code, r.Pseudonyms["meta"]["customer_id"]
}

// TestForgetBetweenResolveAndAnswer: a forget that completes after the
// batch resolved the key and before it answered makes the batch redo; the
// answer is 410, not the destroyed key's pseudonym. (With invalidate never
// reporting a stale batch, this test and TestForgetOfCachedKey fail: the
// API answers 200 with the old key.)
func TestForgetBetweenResolveAndAnswer(t *testing.T) {
	for _, kind := range storeKinds {
		t.Run(kind, func(t *testing.T) {
			st := &hookStore{KeyStore: openStore(t, kind)}
			w := newWorld(t, kind, false, false, func(c *lookup.Config) { c.Store = st })
			at := time.UnixMilli(time.Now().UnixMilli())
			// The key exists (made by an earlier order).
			if _, err := st.KeyStore.Resolve(context.Background(), []store.Lookup{{SubjectID: "s", Latest: at}}); err != nil {
				t.Fatal(err)
			}
			confirmed := false
			st.afterResolve = func() {
				if _, err := st.KeyStore.Forget(context.Background(), []store.ForgetRequest{{RequestID: "r", SubjectID: "s", RequestedAt: at.Add(time.Minute)}}); err != nil {
					t.Error(err)
				}
				confirmed = true
			}
			code, p := lookupAt(t, w.url, "s", at)
			if !confirmed {
				t.Fatal("the forget hook did not run")
			}
			if code != http.StatusGone {
				t.Fatalf("lookup racing a forget: %d %s, want 410", code, p)
			}
		})
	}
}

// TestForgetOfCachedKey: a key the API cached is not used once its forget
// completed.
func TestForgetOfCachedKey(t *testing.T) {
	for _, kind := range storeKinds {
		t.Run(kind, func(t *testing.T) {
			w := newWorld(t, kind, false, false)
			at := time.UnixMilli(time.Now().UnixMilli())
			code, old := lookupAt(t, w.url, "s", at)
			if code != http.StatusOK {
				t.Fatalf("first lookup: %d", code)
			}
			if _, err := w.st.Forget(context.Background(), []store.ForgetRequest{{RequestID: "r", SubjectID: "s", RequestedAt: at}}); err != nil {
				t.Fatal(err)
			}
			if code, _ := lookupAt(t, w.url, "s", at); code != http.StatusGone {
				t.Errorf("lookup after the forget: %d, want 410", code)
			}
			code, fresh := lookupAt(t, w.url, "s", at.Add(time.Millisecond))
			if code != http.StatusOK || fresh == old {
				t.Errorf("lookup of a later event: %d, fresh key %v", code, fresh != old)
			}
		})
	}
}

// TestForgetRace: lookups hammer a subject while it is forgotten. No
// lookup sent after Forget returned (the point after which its
// confirmation may be published) yields the destroyed key's pseudonym;
// events after the forget get the fresh key's.
func TestForgetRace(t *testing.T) {
	for _, kind := range storeKinds {
		t.Run(kind, func(t *testing.T) {
			w := newWorld(t, kind, false, false)
			for round := range 5 {
				subject := fmt.Sprintf("race-%d", round)
				at := time.UnixMilli(time.Now().UnixMilli())
				forgetAt := at.Add(time.Minute)
				code, old := lookupAt(t, w.url, subject, at)
				if code != http.StatusOK {
					t.Fatalf("first lookup: %d", code)
				}
				var confirmed atomic.Bool
				var afterOld, afterGone, before atomic.Int64
				ctx, cancel := context.WithCancel(context.Background())
				var wg sync.WaitGroup
				for g := range 8 {
					wg.Go(func() {
						for i := 0; ctx.Err() == nil; i++ {
							// Half the lookups are for events before the
							// forget, half after.
							ev := at
							if (g+i)%2 == 1 {
								ev = forgetAt.Add(time.Millisecond)
							}
							sentAfter := confirmed.Load()
							code, p := lookupAt(t, w.url, subject, ev)
							if !sentAfter {
								before.Add(1)
								continue
							}
							switch {
							case p == old:
								afterOld.Add(1)
							case ev.Equal(at) && code == http.StatusGone, ev.After(forgetAt) && code == http.StatusOK:
								afterGone.Add(1)
							default:
								t.Errorf("after the forget: event at %v answered %d", ev, code)
							}
						}
					})
				}
				// Let lookups run with the old key first: poll until some
				// were answered.
				deadline := time.Now().Add(30 * time.Second)
				for before.Load() < 20 && time.Now().Before(deadline) {
					time.Sleep(time.Millisecond)
				}
				if _, err := w.st.Forget(context.Background(), []store.ForgetRequest{{RequestID: subject, SubjectID: subject, RequestedAt: forgetAt}}); err != nil {
					t.Fatal(err)
				}
				confirmed.Store(true)
				deadline = time.Now().Add(30 * time.Second)
				for afterGone.Load() < 20 && !t.Failed() && time.Now().Before(deadline) {
					time.Sleep(time.Millisecond)
				}
				cancel()
				wg.Wait()
				if n := afterOld.Load(); n > 0 {
					t.Fatalf("round %d: %d lookups sent after the forget returned got the destroyed key's pseudonym", round, n)
				}
				if before.Load() < 20 || afterGone.Load() < 20 {
					t.Fatalf("round %d: %d lookups before the forget and %d after it were answered, want 20 each", round, before.Load(), afterGone.Load())
				}
			}
		})
	}
}
