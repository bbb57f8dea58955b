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

// forgetLogLimit is the stores' forget-log limit in the conformance suite:
// small, so that the case that goes past it is quick.
const forgetLogLimit = 1000

func TestConformance(t *testing.T) {
	files := storetest.PerTest[string]{New: func(t *testing.T) string {
		return filepath.Join(t.TempDir(), "keys.db")
	}}
	storetest.Run(t, func(t *testing.T, kr *store.Keyring) (store.KeyStore, error) {
		return embedded.Open(files.Get(t), kr, embedded.WithForgetLogLimit(forgetLogLimit))
	}, storetest.WithForgetLogLimit(forgetLogLimit), storetest.WithMeta(func(t *testing.T) (store.Meta, func() error, error) {
		m := embedded.OpenMeta(files.Get(t))
		return m, m.Close, nil
	}), storetest.WithRaw(func(t *testing.T) []byte {
		b, err := os.ReadFile(files.Get(t))
		if err != nil {
			t.Fatalf("read store file: %v", err)
		}
		return b
	}), storetest.WithSnapshot(func(t *testing.T) func() {
		// A backup of the file; every write is committed and synced.
		b, err := os.ReadFile(files.Get(t))
		if err != nil {
			t.Fatalf("snapshot store file: %v", err)
		}
		return func() {
			if err := os.WriteFile(files.Get(t), b, 0o600); err != nil {
				t.Fatalf("restore store file: %v", err)
			}
		}
	}))
}

func TestOpenCreatesPrivateFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "nested", "dir", "keys.db")
	s, err := embedded.Open(path, storetest.MustKeyring(t, storetest.MustKEK(t, 1)))
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	defer s.Close()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatalf("stat: %v", err)
	}
	if got, want := fi.Mode().Perm(), os.FileMode(0o600); got != want {
		t.Errorf("file mode: got %v, want %v", got, want)
	}
}

func TestOpenDirectoryUsesFileInside(t *testing.T) {
	dir := t.TempDir()
	s, err := embedded.Open(dir, storetest.MustKeyring(t, storetest.MustKEK(t, 1)))
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	defer s.Close()
	if _, err := os.Stat(filepath.Join(dir, embedded.FileName)); err != nil {
		t.Errorf("store file: %v", err)
	}
}

func TestOpenLockedFileIsUnavailable(t *testing.T) {
	path := filepath.Join(t.TempDir(), "keys.db")
	kr := storetest.MustKeyring(t, storetest.MustKEK(t, 1))
	s, err := embedded.Open(path, kr)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	defer s.Close()
	if err := s.Ping(context.Background()); err != nil {
		t.Fatalf("Ping: %v", err)
	}
	if _, err := embedded.Open(path, kr); !errors.Is(err, store.ErrUnavailable) {
		t.Errorf("second Open: got %v, want ErrUnavailable", err)
	}
}
