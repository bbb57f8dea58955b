// Command pseudonymizer-bench is the throughput benchmark: it pushes one
// backlog of sample orders through a plain consume-and-copy, a
// transactional copy and the pseudonymizer (PostgreSQL and embedded key
// store, cold and warm) and prints a table (docs/performance.md).
//
// The pseudonymizer pipelines are `pseudonymizer run` processes with a
// generated configuration, so the benchmark measures the service as `run`
// builds it. The copy pipelines are this binary, started again as a hidden
// worker.
//
//	go run ./cmd/pseudonymizer-bench --quick
package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "pseudonymizer-bench:", err)
		os.Exit(1)
	}
}

// run is the command: the benchmark, or, in a process the benchmark
// started with workerEnv set, one copy pipeline.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if os.Getenv(workerEnv) == "1" && len(args) > 0 && args[0] == workerCommand {
		return runWorker(ctx, args[1:], stderr)
	}
	return runBench(ctx, args, stdout, stderr)
}
