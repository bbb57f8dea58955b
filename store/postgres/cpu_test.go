package postgres_test

import (
	"context"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// procCPU returns the CPU time process pid has used so far: the run time
// of /proc/<pid>/schedstat (nanoseconds), or else utime+stime of
// /proc/<pid>/stat (10 ms ticks); ok is false if neither can be read.
func procCPU(pid int) (d time.Duration, ok bool) {
	p := "/proc/" + strconv.Itoa(pid)
	if b, err := os.ReadFile(p + "/schedstat"); err == nil {
		if f := strings.Fields(string(b)); len(f) > 0 {
			if ns, err := strconv.ParseInt(f[0], 10, 64); err == nil {
				return time.Duration(ns), true
			}
		}
	}
	b, err := os.ReadFile(p + "/stat")
	if err != nil {
		return 0, false
	}
	s := string(b)
	end := strings.LastIndexByte(s, ')')
	if end < 0 {
		return 0, false
	}
	f := strings.Fields(s[end+1:])
	if len(f) < 13 {
		return 0, false
	}
	u, _ := strconv.ParseInt(f[11], 10, 64)
	k, _ := strconv.ParseInt(f[12], 10, 64)
	return time.Duration(u+k) * 10 * time.Millisecond, true // USER_HZ is 100 on Linux
}

// postgresCPU returns procCPU of every process named postgres (the
// server, its backends and its background processes), by PID.
func postgresCPU() map[int]time.Duration {
	dirs, err := os.ReadDir("/proc")
	if err != nil {
		return nil
	}
	out := map[int]time.Duration{}
	for _, d := range dirs {
		pid, err := strconv.Atoi(d.Name())
		if err != nil {
			continue
		}
		comm, err := os.ReadFile("/proc/" + d.Name() + "/comm")
		if err != nil || strings.TrimSpace(string(comm)) != "postgres" {
			continue
		}
		if c, ok := procCPU(pid); ok {
			out[pid] = c
		}
	}
	return out
}

// since sums, over the processes of now, the CPU time used since before
// (all of it for a process that before lacks).
func since(before, now map[int]time.Duration) time.Duration {
	var d time.Duration
	for pid, t := range now {
		if b, ok := before[pid]; ok && b <= t {
			t -= b
		}
		d += t
	}
	return d
}

// pgMeter measures, between start and stop, the CPU time of the backends
// of the sessions named app (the store under test: its DSN sets
// application_name), of all PostgreSQL processes on this machine (which
// includes other clients' backends on a shared server, and the WAL
// writer, checkpointer and background writer), and of this process. It
// measures nothing of a server elsewhere (0).
type pgMeter struct {
	tb   testing.TB
	conn *pgx.Conn
	app  string

	ours0, all0 map[int]time.Duration
	self0       time.Duration
}

func newPGMeter(tb testing.TB, conn *pgx.Conn, app string) *pgMeter {
	return &pgMeter{tb: tb, conn: conn, app: app}
}

// backends returns procCPU of the backends of the sessions named m.app.
func (m *pgMeter) backends() map[int]time.Duration {
	r, err := m.conn.Query(context.Background(), "SELECT pid FROM pg_stat_activity WHERE application_name = $1", m.app)
	if err != nil {
		m.tb.Fatalf("backends: %v", err)
	}
	pids, err := pgx.CollectRows(r, pgx.RowTo[int])
	if err != nil {
		m.tb.Fatalf("backends: %v", err)
	}
	out := map[int]time.Duration{}
	for _, pid := range pids {
		if c, ok := procCPU(pid); ok {
			out[pid] = c
		}
	}
	return out
}

func (m *pgMeter) start() {
	m.ours0, m.all0, m.self0 = m.backends(), postgresCPU(), selfCPU()
}

// stop returns the CPU time since start of the store's backends, of all
// PostgreSQL processes, and of this process.
func (m *pgMeter) stop() (ours, all, self time.Duration) {
	self = selfCPU() - m.self0
	return since(m.ours0, m.backends()), since(m.all0, postgresCPU()), self
}

// report adds the measures since start, per key of n, to b's metrics.
func (m *pgMeter) report(b *testing.B, n int) {
	ours, all, self := m.stop()
	perKey := func(d time.Duration) float64 { return float64(d.Nanoseconds()) / 1e3 / float64(n) }
	b.ReportMetric(perKey(ours), "pg-µs/key")
	b.ReportMetric(perKey(all), "pgall-µs/key")
	b.ReportMetric(perKey(self), "cpu-µs/key")
}
