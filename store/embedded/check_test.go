package embedded_test

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"

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
