package main

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"strings"
	"time"

	"github.com/hygiene/pseudonymizer/internal/config"
	"github.com/hygiene/pseudonymizer/store"
	"github.com/hygiene/pseudonymizer/store/embedded"
	"github.com/hygiene/pseudonymizer/store/postgres"
)

// kmsTimeout bounds the KMS and store calls that load the KEKs at start-up.
const kmsTimeout = 30 * time.Second

// keyMode says what loadKeys may do.
type keyMode int

const (
	// keysCreate may create and store the data key of keys.kek_url (run,
	// rewrap).
	keysCreate keyMode = iota
	// keysReadOnly writes nothing anywhere (--check-config, status,
	// forget-log).
	keysReadOnly
)

// loadKeys builds the keyring. With keys.kek_url the active KEK is the data
// key that KMS key wraps, stored in the key store's metadata: the KMS
// decrypts it once here (and creates it on first use, in keysCreate mode);
// afterwards nothing needs the KMS. Retired data keys come from
// keys.old_kek_urls, retired file KEKs from keys.old_kek_files. The summary
// describes the KMS state for --check-config ("" without KMS keys).
// Errors are one line that names the key and carry the KMS's reason, never
// key material.
func loadKeys(ctx context.Context, cfg config.Config, mode keyMode) (*store.Keyring, string, error) {
	k := cfg.Keys
	if k.KEKURL == "" && len(k.OldKEKURLs) == 0 {
		kr, err := loadKeyring(k)
		return kr, "", err
	}
	ctx, cancel := context.WithTimeout(ctx, kmsTimeout)
	defer cancel()
	meta, closeMeta, err := openMeta(ctx, cfg.Store, mode)
	if err != nil {
		return nil, "", err
	}
	defer closeMeta()

	var active *store.KEK
	var summary string
	if k.KEKURL == "" {
		if active, err = activeFileKEK(k); err != nil {
			return nil, "", err
		}
	} else {
		// A new data key is useless to a store already bound to another
		// KEK unless that KEK is listed as retired: refuse before writing.
		mayCreate := func() error {
			if len(k.OldKEKURLs) > 0 || len(k.OldKEKFiles) > 0 {
				return nil
			}
			return mustBeEmpty(ctx, cfg.Store)
		}
		if active, summary, err = kmsDataKey(ctx, meta, k.KEKURL, mode, mayCreate); err != nil {
			return nil, "", fmt.Errorf("config: keys.kek_url: %w", err)
		}
	}
	seen := map[uint32]bool{active.ID(): true}
	var older []*store.KEK
	for i, u := range k.OldKEKURLs {
		kek, err := oldDataKey(ctx, meta, u)
		if err != nil {
			return nil, "", fmt.Errorf("config: keys.old_kek_urls[%d]: %w", i, err)
		}
		if !seen[kek.ID()] {
			seen[kek.ID()] = true
			older = append(older, kek)
		}
	}
	files, err := oldKEKFiles(k, active.ID())
	if err != nil {
		return nil, "", err
	}
	kr, err := store.NewKeyring(active, append(older, files...)...)
	if err != nil {
		return nil, "", fmt.Errorf("config: %w", err)
	}
	return kr, summary, nil
}

// activeFileKEK reads the active KEK from PSEUDONYMIZER_KEK or
// keys.kek_file.
func activeFileKEK(k config.Keys) (*store.KEK, error) {
	if k.KEK != "" {
		kek, err := store.ParseKEK(k.KEK)
		if err != nil {
			return nil, fmt.Errorf("config: PSEUDONYMIZER_KEK: %w", err)
		}
		return kek, nil
	}
	kek, err := store.ReadKEKFile(k.KEKFile, k.AllowReadableKEKFiles)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("config: keys.kek_file: %w; to create a new KEK (for a new key store only: "+
			"a store's keys need the KEK they were wrapped with), run: %s", err, newKEKCommand(k.KEKFile))
	}
	if err != nil {
		return nil, fmt.Errorf("config: keys.kek_file: %w", err)
	}
	return kek, nil
}

// newKEKCommand is the shell one-liner that creates a new KEK file at
// path, mode 0600.
func newKEKCommand(path string) string {
	return "(umask 077; head -c 32 /dev/urandom | base64 > " + shellQuote(path) + ")"
}

// shellQuote quotes s for a POSIX shell unless it needs no quoting.
func shellQuote(s string) string {
	if s != "" && strings.Trim(s, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-/+=:@") == "" {
		return s
	}
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}

// kmsDataKey returns the data key of the active KMS key. When the store
// holds none, in keysCreate mode it creates one if mayCreate allows; in
// read-only mode it returns a placeholder KEK that wraps nothing (it is
// never stored), after a harmless encrypt-and-decrypt proved that the KMS
// answers.
func kmsDataKey(ctx context.Context, meta store.Meta, kmsURL string, mode keyMode, mayCreate func() error) (*store.KEK, string, error) {
	kms, err := store.OpenKMSKey(ctx, kmsURL)
	if err != nil {
		return nil, "", err
	}
	defer kms.Close()
	name := store.DataKeyName(kmsURL)
	kek, err := store.DataKey(ctx, meta, kms, name, false)
	if errors.Is(err, store.ErrNoDataKey) && mode == keysCreate {
		if err := mayCreate(); err != nil {
			return nil, "", err
		}
		kek, err = store.DataKey(ctx, meta, kms, name, true)
	}
	switch {
	case err == nil:
		return kek, fmt.Sprintf("the KMS unwraps data key %08x", kek.ID()), nil
	case !errors.Is(err, store.ErrNoDataKey):
		return nil, "", err
	}
	if err := store.CheckKMS(ctx, kms); err != nil {
		return nil, "", err
	}
	placeholder, err := placeholderKEK()
	if err != nil {
		return nil, "", err
	}
	return placeholder, "the KMS answers; no data key yet (`run` or `rewrap` will create one)", nil
}

// placeholderKEK is a random KEK that is never stored: it stands in for an
// active KEK where nothing is wrapped.
func placeholderKEK() (*store.KEK, error) {
	key, err := store.NewKey()
	if err != nil {
		return nil, err
	}
	defer clear(key)
	return store.NewKEK(key)
}

// mustBeEmpty returns an error unless the store is empty (read-only check).
func mustBeEmpty(ctx context.Context, c config.Store) error {
	kek, err := placeholderKEK()
	if err != nil {
		return err
	}
	kr, err := store.NewKeyring(kek)
	if err != nil {
		return err
	}
	initialized, err := checkStore(ctx, c, kr)
	switch {
	case errors.Is(err, store.ErrWrongKEK):
		return errors.New("the key store holds no data key for this KMS key URL but is bound to another KEK: list that KEK in keys.old_kek_urls or keys.old_kek_files and run `pseudonymizer rewrap` (every instance must name a KMS key with the same URL)")
	case err != nil:
		return err
	case initialized:
		return errors.New("the key store's index key unwrapped with a random KEK")
	}
	return nil
}

// oldDataKey returns the data key of a retired KMS key; it must exist.
func oldDataKey(ctx context.Context, meta store.Meta, kmsURL string) (*store.KEK, error) {
	kms, err := store.OpenKMSKey(ctx, kmsURL)
	if err != nil {
		return nil, err
	}
	defer kms.Close()
	kek, err := store.DataKey(ctx, meta, kms, store.DataKeyName(kmsURL), false)
	if errors.Is(err, store.ErrNoDataKey) {
		return nil, errors.New("the key store holds no data key for this KMS key URL (every instance must name a KMS key with the same URL)")
	}
	return kek, err
}

// openMeta opens the key store's metadata without a keyring (see
// store.Meta). In read-only mode PostgreSQL sessions are read-only.
func openMeta(ctx context.Context, c config.Store, mode keyMode) (store.Meta, func(), error) {
	if c.Postgres == "" {
		return embedded.OpenMeta(c.Path), func() {}, nil
	}
	dsn := c.Postgres
	if mode == keysReadOnly {
		var err error
		if dsn, err = readOnlyDSN(dsn); err != nil {
			return nil, nil, fmt.Errorf("store.postgres: %w", err)
		}
	}
	m, err := postgres.OpenMeta(ctx, dsn)
	if err != nil {
		return nil, nil, fmt.Errorf("store.postgres: %w", err)
	}
	return m, func() { m.Close() }, nil
}
