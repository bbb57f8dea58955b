package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/hygiene/pseudonymizer/store"
)

// runRewrap is `pseudonymizer rewrap`: after a new KEK became active (and
// the old one was listed in keys.old_kek_files or keys.old_kek_urls),
// re-wrap every stored key with the active KEK, in batches. With
// keys.kek_url it first has the KMS re-encrypt the data key, so that it is
// wrapped by the KMS key's current version. Pseudonyms do not change: the subject
// keys themselves stay the same. With PostgreSQL it is safe to run while the
// service runs; the embedded store can be re-wrapped only while it is
// stopped (one process at a time may open its file).
func runRewrap(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlags("rewrap", "rewrap --config FILE [--batch N]", "Re-wraps every stored subject key with the active KEK, in batches; with\nkeys.kek_url it first has the KMS re-encrypt the data key.\nPseudonyms do not change. With PostgreSQL it runs next to the service;\nthe embedded store (store.path) must be re-wrapped with the service stopped.")
	path := fs.String("config", "", "configuration file (YAML)")
	batch := fs.Int("batch", 1000, "keys re-wrapped per store transaction")
	if err := fs.parse(args, stdout, stderr); err != nil {
		return err
	}
	if *batch <= 0 {
		return fmt.Errorf("--batch must be positive")
	}
	cfg, err := loadConfig(*path)
	if err != nil {
		return err
	}
	if cfg.Store.Postgres == "" {
		if c, ok := dialAdmin(ctx, cfg.Store.Path); ok {
			c.close()
			return errEmbeddedInUse(cfg.Store)
		}
	}
	kr, _, err := loadKeys(ctx, cfg, keysCreate)
	if err != nil {
		return err
	}
	st, err := openStore(ctx, cfg.Store, kr)
	if err != nil {
		return err
	}
	defer st.Close()
	if cfg.Keys.KEKURL != "" {
		id, err := reencryptDataKey(ctx, st, cfg.Keys.KEKURL)
		if err != nil {
			return fmt.Errorf("config: keys.kek_url: %w", err)
		}
		fmt.Fprintf(stdout, "data key %08x re-encrypted by the current version of the KMS key\n", id)
	}
	start, total := time.Now(), 0
	for {
		n, err := st.Rewrap(ctx, *batch)
		if err != nil {
			return fmt.Errorf("rewrap after %d keys: %w", total, err)
		}
		if n == 0 {
			break
		}
		total += n
		fmt.Fprintf(stdout, "re-wrapped %d keys (%s)\n", total, time.Since(start).Round(time.Millisecond))
	}
	fmt.Fprintf(stdout, "done: %d keys re-wrapped with KEK %08x; retired KEKs are no longer needed\n", total, kr.ActiveID())
	return nil
}

// reencryptDataKey has the KMS key at kmsURL re-encrypt its data key in
// st's metadata.
func reencryptDataKey(ctx context.Context, st store.KeyStore, kmsURL string) (uint32, error) {
	meta, ok := st.(store.Meta)
	if !ok {
		return 0, errors.New("the key store cannot hold a KMS data key")
	}
	ctx, cancel := context.WithTimeout(ctx, kmsTimeout)
	defer cancel()
	kms, err := store.OpenKMSKey(ctx, kmsURL)
	if err != nil {
		return 0, err
	}
	defer kms.Close()
	return store.ReencryptDataKey(ctx, meta, kms, store.DataKeyName(kmsURL))
}
