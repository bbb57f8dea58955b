package main

import (
	"cmp"
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"runtime/pprof"
	"strings"
	"sync"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"
)

// workerEnv marks a process the benchmark started as one of its copy
// pipelines (test binaries dispatch on it in TestMain); workerCommand is
// its first argument.
const (
	workerEnv     = "PSEUDONYMIZER_BENCH_WORKER"
	workerCommand = "worker"
	// workerProfileEnv names the file for a copy pipeline's CPU profile
	// (--profile), so that its profile can be set beside the
	// pseudonymizer's.
	workerProfileEnv = "PSEUDONYMIZER_BENCH_WORKER_PROFILE"
)

// runWorker is one copy pipeline, until SIGTERM.
func runWorker(ctx context.Context, args []string, stderr io.Writer) error {
	fs := flag.NewFlagSet(workerCommand, flag.ContinueOnError)
	fs.SetOutput(stderr)
	mode := fs.String("mode", "", "copy or txcopy")
	brokers := fs.String("brokers", "", "seed brokers")
	prefix := fs.String("prefix", "", "output topic prefix")
	ns := fs.String("ns", "", "prefix of the input topic")
	group := fs.String("group", "", "consumer group")
	nsys := fs.Int("systems", 3, "systems")
	if err := fs.Parse(args); err != nil {
		return err
	}
	pols, err := benchPolicies(*nsys)
	if err != nil {
		return err
	}
	var outputs []string
	for _, p := range pols {
		outputs = append(outputs, *prefix+p.System)
	}
	in := benchTopics(*ns).Orders
	kopts := []kgo.Opt{kgo.SeedBrokers(strings.Split(*brokers, ",")...)}
	if path := os.Getenv(workerProfileEnv); path != "" {
		f, err := os.Create(path)
		if err != nil {
			return fmt.Errorf("worker: profile: %w", err)
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			return fmt.Errorf("worker: profile: %w", err)
		}
		defer pprof.StopCPUProfile()
	}
	switch *mode {
	case "copy":
		return benchCopy(ctx, kopts, in, *group, outputs)
	case "txcopy":
		return benchTxCopy(ctx, kopts, in, *group, outputs)
	}
	return fmt.Errorf("worker: unknown mode %q", *mode)
}

// benchCopy copies every input record to each output topic, at least once:
// per poll, produce, flush, commit the offsets.
func benchCopy(ctx context.Context, kopts []kgo.Opt, in, group string, outputs []string) error {
	cl, err := kgo.NewClient(append(kopts, kgo.ConsumerGroup(group), kgo.ConsumeTopics(in),
		kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()), kgo.FetchIsolationLevel(kgo.ReadCommitted()),
		kgo.DisableAutoCommit())...)
	if err != nil {
		return err
	}
	defer cl.Close()
	var mu sync.Mutex
	var failed error
	promise := func(_ *kgo.Record, err error) {
		if err != nil {
			mu.Lock()
			failed = cmp.Or(failed, err)
			mu.Unlock()
		}
	}
	for {
		fetches := cl.PollRecords(ctx, 10000)
		if ctx.Err() != nil || fetches.IsClientClosed() {
			return nil
		}
		for _, r := range fetches.Records() {
			for _, t := range outputs {
				cl.Produce(ctx, &kgo.Record{Topic: t, Key: r.Key, Value: r.Value}, promise)
			}
		}
		if err := cl.Flush(ctx); err != nil {
			return nil
		}
		mu.Lock()
		err := failed
		mu.Unlock()
		if err != nil {
			return err
		}
		if err := cl.CommitUncommittedOffsets(ctx); err != nil && ctx.Err() == nil {
			return err
		}
	}
}

// benchTxCopy copies like benchCopy, exactly once: transactions of up to
// 5,000 input records or 100 ms, whichever comes first.
func benchTxCopy(ctx context.Context, kopts []kgo.Opt, in, group string, outputs []string) error {
	sess, err := kgo.NewGroupTransactSession(append(kopts, kgo.ConsumerGroup(group), kgo.ConsumeTopics(in),
		kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()), kgo.FetchIsolationLevel(kgo.ReadCommitted()),
		kgo.TransactionalID(group), kgo.SessionTimeout(6*time.Second))...)
	if err != nil {
		return err
	}
	defer sess.Close()
	const maxRecords, maxAge = 5000, 100 * time.Millisecond
	for ctx.Err() == nil {
		if err := sess.Begin(); err != nil {
			return err
		}
		promise := kgo.AbortingFirstErrPromise(sess.Client())
		n := 0
		deadline := time.Now().Add(maxAge)
		for n < maxRecords && ctx.Err() == nil {
			pctx, cancel := context.WithDeadline(ctx, deadline)
			fetches := sess.PollRecords(pctx, maxRecords-n)
			cancel()
			for _, r := range fetches.Records() {
				for _, t := range outputs {
					sess.Produce(ctx, &kgo.Record{Topic: t, Key: r.Key, Value: r.Value}, promise.Promise())
				}
				n++
			}
			if !time.Now().Before(deadline) {
				break
			}
		}
		ectx := context.WithoutCancel(ctx)
		if err := sess.Client().Flush(ectx); err != nil {
			return err
		}
		how := kgo.TryCommit
		if promise.Err() != nil {
			how = kgo.TryAbort
		}
		if _, err := sess.End(ectx, how); err != nil {
			return err
		}
	}
	return nil
}
