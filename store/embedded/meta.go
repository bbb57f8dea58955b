package embedded

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"

	bolt "go.etcd.io/bbolt"
	bolterrors "go.etcd.io/bbolt/errors"

	"github.com/hygiene/pseudonymizer/store"
)

// metaExtPrefix puts store.Meta names in their own namespace of the meta
// bucket, apart from the store's own entries.
const metaExtPrefix = "ext/"

var _ store.Meta = (*Store)(nil)

// GetMeta returns the value stored under name, or nil.
func (s *Store) GetMeta(ctx context.Context, name string) ([]byte, error) {
	if err := store.CheckMeta(name, nil); err != nil {
		return nil, fmt.Errorf("embedded: %w", err)
	}
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("embedded: get meta: %w", err)
	}
	var v []byte
	err := s.db.View(func(tx *bolt.Tx) error { v = getMeta(tx, name); return nil })
	if err != nil {
		return nil, fmt.Errorf("embedded: get meta: %w", err)
	}
	return v, nil
}

// SwapMeta stores value under name if the stored value equals old (nil: none).
func (s *Store) SwapMeta(ctx context.Context, name string, old, value []byte) (bool, error) {
	if err := checkSwap(name, value); err != nil {
		return false, err
	}
	if err := ctx.Err(); err != nil {
		return false, fmt.Errorf("embedded: swap meta: %w", err)
	}
	var ok bool
	err := s.db.Update(func(tx *bolt.Tx) (err error) { ok, err = swapMeta(tx, name, old, value); return err })
	if err != nil {
		return false, fmt.Errorf("embedded: swap meta: %w", err)
	}
	return ok, nil
}

// MetaFile is the store.Meta of a store file that need not be open: the
// KMS-wrapped data key must be read before the keyring that opens the
// store exists. Each call opens the file for that call only, so it must
// not be used while a Store of the same file is open in this process (use
// the Store's own methods then). Reads never create the file.
type MetaFile struct{ path string }

var _ store.Meta = (*MetaFile)(nil)

// OpenMeta returns the metadata of the store file at path, resolved as
// Open does. It touches nothing until a method is called.
func OpenMeta(path string) *MetaFile { return &MetaFile{path: path} }

// Close does nothing; it lets a MetaFile stand in for a closable handle.
func (m *MetaFile) Close() error { return nil }

// GetMeta returns the value stored under name, or nil (also when the file
// does not exist). The file is opened read-only.
func (m *MetaFile) GetMeta(ctx context.Context, name string) ([]byte, error) {
	if err := store.CheckMeta(name, nil); err != nil {
		return nil, fmt.Errorf("embedded: %w", err)
	}
	path := m.path
	fi, err := os.Stat(path)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return nil, nil
	case err != nil:
		return nil, fmt.Errorf("embedded: get meta: %w", err)
	case fi.IsDir():
		path = filepath.Join(path, FileName)
		if _, err := os.Stat(path); errors.Is(err, fs.ErrNotExist) {
			return nil, nil
		}
	}
	db, err := openBolt(path, true)
	if err != nil {
		return nil, fmt.Errorf("embedded: get meta: %w", err)
	}
	defer db.Close()
	var v []byte
	if err := db.View(func(tx *bolt.Tx) error { v = getMeta(tx, name); return nil }); err != nil {
		return nil, fmt.Errorf("embedded: get meta: %w", err)
	}
	return v, nil
}

// SwapMeta stores value under name if the stored value equals old (nil:
// none), creating the file (mode 0600) and its directories if needed.
func (m *MetaFile) SwapMeta(ctx context.Context, name string, old, value []byte) (bool, error) {
	if err := checkSwap(name, value); err != nil {
		return false, err
	}
	path := m.path
	if fi, err := os.Stat(path); err == nil && fi.IsDir() {
		path = filepath.Join(path, FileName)
	} else if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return false, fmt.Errorf("embedded: swap meta: %w", err)
	}
	db, err := openBolt(path, false)
	if err != nil {
		return false, fmt.Errorf("embedded: swap meta: %w", err)
	}
	var ok bool
	err = db.Update(func(tx *bolt.Tx) (err error) { ok, err = swapMeta(tx, name, old, value); return err })
	if cerr := db.Close(); err == nil && cerr != nil {
		err = cerr
	}
	if err != nil {
		return false, fmt.Errorf("embedded: swap meta: %w", err)
	}
	return ok, nil
}

// openBolt opens a store file, reporting a file held by another process
// as store.ErrUnavailable.
func openBolt(path string, readOnly bool) (*bolt.DB, error) {
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: lockTimeout, ReadOnly: readOnly})
	if errors.Is(err, bolterrors.ErrTimeout) {
		return nil, fmt.Errorf("%s is in use by another process: %w", path, store.ErrUnavailable)
	}
	return db, err
}

func checkSwap(name string, value []byte) error {
	if err := store.CheckMeta(name, value); err != nil {
		return fmt.Errorf("embedded: %w", err)
	}
	if value == nil {
		return errors.New("embedded: swap meta: nil value")
	}
	return nil
}

func getMeta(tx *bolt.Tx, name string) []byte {
	meta := tx.Bucket(bucketMeta)
	if meta == nil {
		return nil
	}
	if v := meta.Get([]byte(metaExtPrefix + name)); v != nil {
		return bytes.Clone(v)
	}
	return nil
}

func swapMeta(tx *bolt.Tx, name string, old, value []byte) (bool, error) {
	meta, err := tx.CreateBucketIfNotExists(bucketMeta)
	if err != nil {
		return false, err
	}
	key := []byte(metaExtPrefix + name)
	cur := meta.Get(key)
	if (cur == nil) != (old == nil) || !bytes.Equal(cur, old) {
		return false, nil
	}
	return true, meta.Put(key, bytes.Clone(value))
}
