package embedded

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"

	bolt "go.etcd.io/bbolt"
	bolterrors "go.etcd.io/bbolt/errors"

	"github.com/hygiene/pseudonymizer/store"
)

// Check inspects the store file at path (resolved as Open does) without
// creating or writing anything: it opens the file read-only, reads the
// layout version and unwraps the index key with kr. It reports initialized
// false (and no error) when the file does not exist yet, and an error
// matching store.ErrWrongKEK when kr cannot unwrap the stored index key, or
// store.ErrUnavailable when another process holds the file.
func Check(path string, kr *store.Keyring) (initialized bool, err error) {
	if kr == nil {
		return false, errors.New("embedded: check: no keyring")
	}
	fi, err := os.Stat(path)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return false, nil
	case err != nil:
		return false, fmt.Errorf("embedded: check: %w", err)
	case fi.IsDir():
		path = filepath.Join(path, FileName)
		if _, err := os.Stat(path); errors.Is(err, fs.ErrNotExist) {
			return false, nil
		}
	}
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: lockTimeout, ReadOnly: true})
	if err != nil {
		if errors.Is(err, bolterrors.ErrTimeout) {
			return false, fmt.Errorf("embedded: check: %s is in use by another process: %w", path, store.ErrUnavailable)
		}
		return false, fmt.Errorf("embedded: check: %w", err)
	}
	defer db.Close()
	var wrapped []byte
	var counted store.KEKCensus
	err = db.View(func(tx *bolt.Tx) error {
		meta := tx.Bucket(bucketMeta)
		if meta == nil {
			return nil
		}
		if got := getUint(meta.Get(metaVersion)); got > schemaVersion {
			return fmt.Errorf("file layout version %d is newer than this binary supports (%d)", got, schemaVersion)
		}
		if w := meta.Get(metaIndexKey); w != nil {
			wrapped = append([]byte(nil), w...)
		}
		counted = census(tx)
		return nil
	})
	if err != nil {
		return false, fmt.Errorf("embedded: check: %w", err)
	}
	if wrapped == nil {
		return false, nil
	}
	// Every key, not only the index key (see Open).
	if err := counted.Check(kr); err != nil {
		return true, fmt.Errorf("embedded: check: %w", err)
	}
	if _, err := kr.Unwrap(wrapped, store.PurposeIndexKey, nil); err != nil {
		return true, wrongKEK("check: index key", err)
	}
	return true, nil
}

// census counts the keys of the store in tx (index key, subject keys,
// retained keys) by the KEK that wraps them.
func census(tx *bolt.Tx) store.KEKCensus {
	var c store.KEKCensus
	if meta := tx.Bucket(bucketMeta); meta != nil {
		if w := meta.Get(metaIndexKey); w != nil {
			c.Add(w)
		}
	}
	if keys := tx.Bucket(bucketKeys); keys != nil {
		_ = keys.ForEach(func(_, v []byte) error { c.Add(v); return nil })
	}
	if ret := tx.Bucket(bucketRetained); ret != nil {
		_ = ret.ForEach(func(_, v []byte) error {
			if len(v) > retainedHead {
				c.Add(v[retainedHead:])
			}
			return nil
		})
	}
	return c
}
