//go:build unix

package processor

import "syscall"

// cpuTime returns the process's user and system CPU time in nanoseconds,
// for benchmarks on a shared machine, where wall time includes waiting for
// a core.
func cpuTime() int64 {
	var ru syscall.Rusage
	if syscall.Getrusage(syscall.RUSAGE_SELF, &ru) != nil {
		return 0
	}
	return ru.Utime.Nano() + ru.Stime.Nano()
}
