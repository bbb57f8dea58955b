package main

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"runtime"
	"runtime/pprof"
	"sync"
	"time"
)

// profileFromEnv starts profiling for the benchmark
// (cmd/pseudonymizer-bench), set by PSEUDONYMIZER_PROFILE=PREFIX: a CPU
// profile in PREFIX.cpu.pprof, the allocations in PREFIX.alloc.pprof and
// the heap at its peak in PREFIX.alloc.pprof.peak, written when the
// returned stop is called. Unset, it does nothing.
func profileFromEnv(log *slog.Logger) (stop func(), err error) {
	prefix := os.Getenv("PSEUDONYMIZER_PROFILE")
	if prefix == "" {
		return func() {}, nil
	}
	f, err := os.Create(prefix + ".cpu.pprof")
	if err != nil {
		return nil, fmt.Errorf("profile: %w", err)
	}
	if err := pprof.StartCPUProfile(f); err != nil {
		f.Close()
		return nil, fmt.Errorf("profile: %w", err)
	}
	log.Warn("profiling: this process writes CPU and allocation profiles", "prefix", prefix)
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() { peakHeapProfile(ctx, prefix+".alloc.pprof.peak") })
	return func() {
		cancel()
		wg.Wait()
		pprof.StopCPUProfile()
		f.Close()
		if f, err := os.Create(prefix + ".alloc.pprof"); err == nil {
			_ = pprof.Lookup("allocs").WriteTo(f, 0)
			f.Close()
		}
	}, nil
}

// peakHeapProfile writes the heap profile to path whenever the heap in use
// grew by a tenth since the last one, until ctx ends.
func peakHeapProfile(ctx context.Context, path string) {
	var peak uint64
	t := time.NewTicker(50 * time.Millisecond)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		var ms runtime.MemStats
		runtime.ReadMemStats(&ms)
		if ms.HeapInuse > peak+peak/10 {
			peak = ms.HeapInuse
			if f, err := os.Create(path); err == nil {
				_ = pprof.Lookup("heap").WriteTo(f, 0)
				f.Close()
			}
		}
	}
}
