package embedded_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/hygiene/pseudonymizer/store"
	"github.com/hygiene/pseudonymizer/store/embedded"
	"github.com/hygiene/pseudonymizer/store/storetest"
)

// TestCheckIsReadOnly: Check creates no file or directory, reports an
// uninitialized store, then an initialized one after Open, and a wrong KEK.
func TestCheckIsReadOnly(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "data")
	path := filepath.Join(dir, "keys.db")
	kr := storetest.MustKeyring(t, storetest.MustKEK(t, 1))
	initialized, err := embedded.Check(path, kr)
	if err != nil || initialized {
		t.Fatalf("Check of a missing file = %v, %v; want false, nil", initialized, err)
	}
	if _, err := os.Stat(dir); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("Check created %s (stat: %v)", dir, err)
	}
	s, err := embedded.Open(path, kr)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	before, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if initialized, err := embedded.Check(path, kr); err != nil || !initialized {
		t.Errorf("Check after Open = %v, %v; want true, nil", initialized, err)
	}
	if _, err := embedded.Check(path, storetest.MustKeyring(t, storetest.MustKEK(t, 2))); !errors.Is(err, store.ErrWrongKEK) {
		t.Errorf("Check with another KEK: %v, want ErrWrongKEK", err)
	}
	after, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if string(before) != string(after) {
		t.Error("Check changed the store file")
	}
	if initialized, err := embedded.Check(dir, kr); err != nil || initialized {
		t.Errorf("Check of a directory without %s = %v, %v; want false, nil", embedded.FileName, initialized, err)
	}
}

// TestCheckAfterMetaOnly: a file where only store.Meta was written (a KMS
// data key stored, then the first start stopped before Open) is reported
// as not initialized, and Open then initializes it.
func TestCheckAfterMetaOnly(t *testing.T) {
	path := filepath.Join(t.TempDir(), "data", "keys.db")
	m := embedded.OpenMeta(path)
	if ok, err := m.SwapMeta(context.Background(), "data-key", nil, []byte("wrapped")); err != nil || !ok {
		t.Fatalf("SwapMeta = %v, %v", ok, err)
	}
	kr := storetest.MustKeyring(t, storetest.MustKEK(t, 1))
	if initialized, err := embedded.Check(path, kr); err != nil || initialized {
		t.Fatalf("Check = %v, %v; want false, nil", initialized, err)
	}
	s, err := embedded.Open(path, kr)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if v, err := s.GetMeta(context.Background(), "data-key"); err != nil || string(v) != "wrapped" {
		t.Errorf("GetMeta after Open = %q, %v", v, err)
	}
}

// TestCheckHalfRotated (issue 24, item 4): after a rotation killed
// half-way (the index key and some subject keys re-wrapped, others not),
// Check with the new KEK alone refuses, naming the old KEK: the old Check
// unwrapped only the index key and said all was well.
func TestCheckHalfRotated(t *testing.T) {
	path := filepath.Join(t.TempDir(), "keys.db")
	oldKEK, newKEK := storetest.MustKEK(t, 1), storetest.MustKEK(t, 2)
	s, err := embedded.Open(path, storetest.MustKeyring(t, oldKEK))
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	var lookups []store.Lookup
	for _, id := range []string{"a", "b", "c", "d"} {
		lookups = append(lookups, store.Lookup{SubjectID: id, Latest: time.Now()})
	}
	if _, err := s.Resolve(ctx, lookups); err != nil {
		t.Fatal(err)
	}
	s.Close()
	if s, err = embedded.Open(path, storetest.MustKeyring(t, newKEK, oldKEK)); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Rewrap(ctx, 2); err != nil {
		t.Fatal(err)
	}
	s.Close()
	_, err = embedded.Check(path, storetest.MustKeyring(t, newKEK))
	if !errors.Is(err, store.ErrWrongKEK) || !strings.Contains(err.Error(), fmt.Sprintf("KEK %08x (3 keys)", oldKEK.ID())) {
		t.Fatalf("Check of a half-rotated store with the new KEK alone: %v; want ErrWrongKEK naming KEK %08x and its 3 keys (2 subject keys, the index key)", err, oldKEK.ID())
	}
	if _, err := embedded.Check(path, storetest.MustKeyring(t, newKEK, oldKEK)); err != nil {
		t.Fatalf("Check with both KEKs: %v", err)
	}
}
