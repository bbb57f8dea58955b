package main

import (
	"context"
	"fmt"
	"io"
	"time"
)

// runRewrap is `pseudonymizer rewrap`: after a new KEK became active (and
// the old one was listed in keys.old_kek_files), re-wrap every stored key
// with the active KEK, in batches. Pseudonyms do not change: the subject
// keys themselves stay the same. Safe to run while the service runs.
func runRewrap(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlags("rewrap", "rewrap --config FILE [--batch N]", "Re-wraps every stored subject key with the active KEK, in batches.\nPseudonyms do not change. Safe while the service runs.")
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
	kr, err := loadKeyring(cfg.Keys)
	if err != nil {
		return err
	}
	st, err := openStore(ctx, cfg.Store, kr)
	if err != nil {
		return err
	}
	defer st.Close()
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
