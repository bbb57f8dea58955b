package storetest

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/hygiene/pseudonymizer/store"
)

func (s *suite) testWrongKEK(t *testing.T) {
	ks := s.mustOpen(t, MustKeyring(t, MustKEK(t, 1)))
	mustKey(t, ks, "alice", t0)
	if err := ks.Close(); err != nil {
		t.Fatalf("close: %v", err)
	}
	other, err := s.open(t, MustKeyring(t, MustKEK(t, 2)))
	if err == nil {
		other.Close()
		t.Fatalf("open with a foreign KEK: got nil error, want ErrWrongKEK")
	}
	if !errors.Is(err, store.ErrWrongKEK) {
		t.Errorf("open with a foreign KEK: got %v, want an error matching ErrWrongKEK", err)
	}
	if strings.Contains(err.Error(), "\n") {
		t.Errorf("open with a foreign KEK: error is not one line: %q", err)
	}
	// The right KEK still opens it.
	mustKey(t, s.mustOpen(t, MustKeyring(t, MustKEK(t, 1))), "alice", t0)
}

func (s *suite) testRewrapOneAtATime(t *testing.T) {
	oldKEK, newKEK := MustKEK(t, 1), MustKEK(t, 2)
	ks := s.mustOpen(t, MustKeyring(t, oldKEK))
	var lookups []store.Lookup
	for i := range 5 {
		lookups = append(lookups, lookup(fmt.Sprintf("subject-%d", i), t0))
	}
	before := mustResolve(t, ks, lookups...)
	ks = s.mustReopen(t, ks, MustKeyring(t, newKEK, oldKEK))
	total := 0
	for round := 0; ; round++ {
		if round > 20 {
			t.Fatalf("Rewrap(1) did not finish after %d rounds (%d keys)", round, total)
		}
		n, err := ks.Rewrap(context.Background(), 1)
		if err != nil {
			t.Fatalf("Rewrap(1): %v", err)
		}
		if n == 0 {
			break
		}
		total += n
	}
	if got, want := total, len(lookups)+1; got != want {
		t.Errorf("Rewrap(1) changed %d keys, want %d (the subject keys and the index key)", got, want)
	}
	ks = s.mustReopen(t, ks, MustKeyring(t, newKEK))
	for i, e := range mustResolve(t, ks, lookups...) {
		if !bytes.Equal(e.Key, before[i].Key) {
			t.Errorf("subject %d: key changed by Rewrap", i)
		}
	}
}

func (s *suite) testRewrap(t *testing.T) {
	oldKEK, newKEK := MustKEK(t, 1), MustKEK(t, 2)
	ks := s.mustOpen(t, MustKeyring(t, oldKEK))
	var lookups []store.Lookup
	for i := range 25 {
		lookups = append(lookups, lookup(fmt.Sprintf("subject-%d", i), t0))
	}
	before := mustResolve(t, ks, lookups...)
	hash := ks.Hash("subject-0")
	mustForget(t, ks, forget("r1", "subject-24", t0)) // a tombstone, no key
	ctx := context.Background()
	if n, err := ks.Rewrap(ctx, 10); err != nil || n != 0 {
		t.Errorf("Rewrap with the active KEK only: got %d, %v; want 0, nil", n, err)
	}

	rotating := MustKeyring(t, newKEK, oldKEK)
	ks = s.mustReopen(t, ks, rotating)
	n, err := ks.Rewrap(ctx, 10)
	if err != nil || n != 10 {
		t.Fatalf("first Rewrap(10): got %d, %v; want 10, nil", n, err)
	}
	// A lagging instance, still wrapping with the old KEK, adds keys while
	// the rotation runs; they must be rewrapped too.
	var late []store.Lookup
	for i := range 5 {
		late = append(late, lookup(fmt.Sprintf("late-%d", i), t0))
	}
	lagging := MustKeyring(t, oldKEK, newKEK)
	if s.cfg.multi {
		mustResolve(t, s.mustOpen(t, lagging), late...)
	} else {
		lag := s.mustReopen(t, ks, lagging)
		mustResolve(t, lag, late...)
		ks = s.mustReopen(t, lag, rotating)
	}
	lateKeys := mustResolve(t, ks, late...)
	total := n
	for round := 0; ; round++ {
		n, err := ks.Rewrap(ctx, 10)
		if err != nil {
			t.Fatalf("Rewrap: %v", err)
		}
		if n > 10 {
			t.Fatalf("Rewrap(10): changed %d keys", n)
		}
		if n == 0 {
			break
		}
		total += n
		if round > 10 {
			t.Fatalf("Rewrap does not converge")
		}
	}
	if want := 24 + 5 + 1; total != want { // subject keys and the index key
		t.Errorf("Rewrap: changed %d keys in all, want %d", total, want)
	}
	check := func(ks store.KeyStore) {
		t.Helper()
		if ks.Hash("subject-0") != hash {
			t.Errorf("Hash changed across the rewrap")
		}
		after := mustResolve(t, ks, lookups...)
		for i := range after[:24] {
			if !bytes.Equal(after[i].Key, before[i].Key) {
				t.Errorf("subject %d: key changed across the rewrap", i)
			}
		}
		if after[24].Key != nil {
			t.Errorf("forgotten subject got a key back")
		}
		for i, e := range mustResolve(t, ks, late...) {
			if !bytes.Equal(e.Key, lateKeys[i].Key) {
				t.Errorf("late subject %d: key changed across the rewrap", i)
			}
		}
	}
	check(ks)
	ks = s.mustReopen(t, ks, MustKeyring(t, newKEK))
	check(ks)
	if err := ks.Close(); err != nil {
		t.Fatalf("close: %v", err)
	}
	if other, err := s.open(t, MustKeyring(t, oldKEK)); !errors.Is(err, store.ErrWrongKEK) {
		if err == nil {
			other.Close()
		}
		t.Errorf("open with only the retired KEK: got %v, want ErrWrongKEK", err)
	}
}

func (s *suite) testNoRawData(t *testing.T) {
	if s.cfg.raw == nil {
		t.Skip("no WithRaw hook")
	}
	ks := s.mustOpen(t, MustKeyring(t, MustKEK(t, 1)))
	var ids []string
	var lookups []store.Lookup
	for i := range 20 {
		id := fmt.Sprintf("Customer-RAW-%04d-zq", i)
		ids = append(ids, id)
		lookups = append(lookups, lookup(id, t0))
	}
	entries := mustResolve(t, ks, lookups...)
	// The first request retains its key (erasure notices) and is never
	// settled: the retained key must be stored wrapped, like any other.
	reqs := []store.ForgetRequest{
		retaining("Request-RAW-0001-zq", ids[0], t0, 3, 77),
		forget("Request-RAW-0002-zq", "Customer-RAW-never-zq", t0),
	}
	mustForget(t, ks, reqs...)
	mustKey(t, ks, ids[0], t0.Add(time.Second))
	raw := s.cfg.raw(t)
	if len(raw) == 0 {
		t.Fatalf("raw dump is empty")
	}
	lower := bytes.ToLower(raw)
	secrets := map[string][]byte{}
	// Request IDs are kept on purpose, as evidence for the forget log (they
	// identify requests, not people); raw subject IDs never are.
	for _, id := range append(ids, "Customer-RAW-never-zq") {
		secrets["raw ID "+id] = []byte(id)
	}
	secrets["ID fragment"] = []byte("customer-raw-00")
	for i, e := range entries {
		secrets[fmt.Sprintf("key %d", i)] = e.Key
		secrets[fmt.Sprintf("key %d (hex)", i)] = []byte(hex.EncodeToString(e.Key))
		secrets[fmt.Sprintf("key %d (base64)", i)] = []byte(base64.StdEncoding.EncodeToString(e.Key)[:40])
	}
	for what, b := range secrets {
		if bytes.Contains(raw, b) || bytes.Contains(lower, bytes.ToLower(b)) {
			t.Errorf("persisted bytes contain %s", what)
		}
	}
}

func (s *suite) testPingAndClose(t *testing.T) {
	ks := s.mustOpen(t, MustKeyring(t, MustKEK(t, 1)))
	if err := ks.Ping(context.Background()); err != nil {
		t.Fatalf("Ping: %v", err)
	}
	if err := ks.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if err := ks.Ping(context.Background()); err == nil {
		t.Errorf("Ping after Close: got nil error")
	}
}
