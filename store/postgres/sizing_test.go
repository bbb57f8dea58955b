package postgres_test

import (
	"context"
	"crypto/rand"
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/hygiene/pseudonymizer/store"
	"github.com/hygiene/pseudonymizer/store/postgres"
	"github.com/hygiene/pseudonymizer/store/storetest"
)

// Environment of TestSizing.
const (
	// envSizingDSN names a database that TestSizing may fill (use a
	// database of its own: it keeps the rows between runs).
	envSizingDSN = "PSEUDONYMIZER_TEST_SIZING_DSN"
	// envSizingRows is the number of rows of pz_subject_keys to measure at.
	envSizingRows = "PSEUDONYMIZER_TEST_SIZING_ROWS"
)

// TestSizing measures the PostgreSQL store at a given size, for the sizing
// page, docs/sizing.md. It runs only with PSEUDONYMIZER_TEST_SIZING_DSN
// and PSEUDONYMIZER_TEST_SIZING_ROWS set; it fills pz_subject_keys up to
// that many rows (random 32-byte hashes, random wrapped keys of
// store.WrappedSize bytes, once; later runs reuse them), then logs table
// and index bytes per row, the buffers and times of Resolve's read and
// create paths, PostgreSQL's and the client's CPU time per batch, and the
// cost of Forget and Guard. It asserts nothing about times.
//
//	PSEUDONYMIZER_TEST_SIZING_DSN=postgres://postgres@127.0.0.1:5432/sizing?sslmode=disable \
//	PSEUDONYMIZER_TEST_SIZING_ROWS=10000000 \
//	go test -run TestSizing -v -timeout 2h ./store/postgres/
func TestSizing(t *testing.T) {
	dsn, rowsText := os.Getenv(envSizingDSN), os.Getenv(envSizingRows)
	if dsn == "" || rowsText == "" {
		t.Skipf("set %s and %s to measure the store's size and speed", envSizingDSN, envSizingRows)
	}
	target, err := strconv.ParseInt(rowsText, 10, 64)
	if err != nil || target < 0 {
		t.Fatalf("%s: want a row count, got %q", envSizingRows, rowsText)
	}
	ctx := context.Background()
	kr := storetest.MustKeyring(t, storetest.MustKEK(t, 1)) // fixed: the index key persists
	s, err := postgres.Open(ctx, dsn, kr)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	defer s.Close()
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatalf("connect: %v", err)
	}
	defer conn.Close(ctx)

	n := mustFill(t, conn, target)
	logSizes(t, conn, n)
	logState(t, conn)

	run := time.Now().UnixNano() // fresh subjects on every run
	batch := func(size, i int) []store.Lookup {
		l := make([]store.Lookup, size)
		for j := range l {
			l[j] = store.Lookup{SubjectID: fmt.Sprintf("sizing-%d-%d-%d-%d", run, size, i, j), Latest: time.Now()}
		}
		return l
	}
	cpu := newCPUMeter(t, conn)

	// The create path: batches of new subjects.
	var created [][]store.Lookup
	for _, size := range []int{1_000, 10_000} {
		var walls, server, client []time.Duration
		for i := range 10 {
			l := batch(size, i)
			cpu.start()
			t0 := time.Now()
			e, err := s.Resolve(ctx, l)
			wall := time.Since(t0)
			srv, cli := cpu.stop()
			if err != nil {
				t.Fatalf("Resolve (create): %v", err)
			}
			if e[0].Key == nil {
				t.Fatalf("Resolve (create): no key")
			}
			walls, server, client = append(walls, wall), append(server, srv), append(client, cli)
			if size == 10_000 {
				created = append(created, l)
			}
		}
		t.Logf("create %5d new subjects: wall %v (median of %d; min %v max %v) = %.0f subjects/s; PostgreSQL CPU %v, client CPU %v (medians) %s",
			size, median(walls), len(walls), slices.Min(walls), slices.Max(walls), float64(size)/median(walls).Seconds(),
			median(server), median(client), load())
	}

	// The read path: batches of existing subjects. The first batches were
	// created longest ago; with an index larger than shared_buffers their
	// pages have mostly been evicted since (see the buffers logged).
	hashes := func(l []store.Lookup) [][]byte {
		out := make([][]byte, len(l))
		for i := range l {
			h := s.Hash(l[i].SubjectID)
			out[i] = h[:]
		}
		return out
	}
	logExplain(t, conn, "read 10000 existing, first time (shared_buffers cold)", hashes(created[1]))
	logExplain(t, conn, "read 10000 existing, again (shared_buffers warm)", hashes(created[1]))
	for _, warm := range []bool{false, true} {
		var walls, server, client []time.Duration
		for i := range 3 {
			l := created[2+i]
			if warm {
				l = created[1]
			}
			cpu.start()
			t0 := time.Now()
			e, err := s.Resolve(ctx, l)
			wall := time.Since(t0)
			srv, cli := cpu.stop()
			if err != nil || e[len(e)-1].Key == nil {
				t.Fatalf("Resolve (read): %v", err)
			}
			walls, server, client = append(walls, wall), append(server, srv), append(client, cli)
		}
		state := "cold shared_buffers"
		if warm {
			state = "warm shared_buffers"
		}
		t.Logf("read 10000 existing subjects, %s: wall %v (median of 3; min %v max %v); PostgreSQL CPU %v, client CPU %v (medians) %s",
			state, median(walls), slices.Min(walls), slices.Max(walls), median(server), median(client), load())
	}
	randomHashes := mustSampleHashes(t, conn, 10_000)
	logExplain(t, conn, "read 10000 random rows of the table (shared_buffers cold)", randomHashes)
	logExplain(t, conn, "read 10000 random rows of the table, again", randomHashes)

	// The guard and Forget.
	var gw []time.Duration
	var pos store.Position
	for range 3 {
		t0 := time.Now()
		g, err := s.Guard(ctx, pos)
		if err != nil {
			t.Fatalf("Guard: %v", err)
		}
		if err := g.Release(ctx); err != nil {
			t.Fatalf("Release: %v", err)
		}
		gw = append(gw, time.Since(t0))
		pos = g.Position()
	}
	t.Logf("Guard+Release (nothing forgotten since): %v (median of 3) %s", median(gw), load())
	forget := created[len(created)-1]
	next := 0
	for _, size := range []int{1, 100} {
		var walls []time.Duration
		for range 3 {
			reqs := make([]store.ForgetRequest, size)
			for j := range reqs {
				reqs[j] = store.ForgetRequest{RequestID: fmt.Sprintf("r-%d-%d", run, next), SubjectID: forget[next].SubjectID, RequestedAt: time.Now()}
				next++
			}
			t0 := time.Now()
			res, err := s.Forget(ctx, reqs)
			walls = append(walls, time.Since(t0))
			if err != nil || res[0].Status != store.Forgotten {
				t.Fatalf("Forget: %v %v", res, err)
			}
		}
		t.Logf("Forget %3d subjects (with keys): %v (median of 3; min %v max %v) %s", size, median(walls), slices.Min(walls), slices.Max(walls), load())
	}
	// Enough forgets to measure their rows' bytes.
	t0 := time.Now()
	for next+100 <= len(forget) {
		reqs := make([]store.ForgetRequest, 100)
		for j := range reqs {
			reqs[j] = store.ForgetRequest{RequestID: fmt.Sprintf("r-%d-%d", run, next), SubjectID: forget[next].SubjectID, RequestedAt: time.Now()}
			next++
		}
		if _, err := s.Forget(ctx, reqs); err != nil {
			t.Fatalf("Forget: %v", err)
		}
	}
	t.Logf("forgot %d subjects in calls of 100: %.0f subjects/s %s", next-303, float64(next-303)/time.Since(t0).Seconds(), load())
	if _, err := conn.Exec(ctx, "VACUUM ANALYZE pz_tombstones, pz_forget_results, pz_forget_log"); err != nil {
		t.Fatalf("vacuum: %v", err)
	}
	for _, table := range []string{"pz_tombstones", "pz_forget_results", "pz_forget_log"} {
		var rows, heap, total, idx int64
		if err := conn.QueryRow(ctx, fmt.Sprintf(`SELECT count(*), pg_relation_size('%[1]s'), pg_total_relation_size('%[1]s'), pg_indexes_size('%[1]s') FROM %[1]s`, table)).Scan(&rows, &heap, &total, &idx); err != nil {
			t.Fatalf("size of %s: %v", table, err)
		}
		t.Logf("%-17s %8d rows: heap %6.1f B/row, indexes %6.1f B/row, total %6.1f B/row", table, rows, float64(heap)/float64(rows), float64(idx)/float64(rows), float64(total)/float64(rows))
	}
}

// mustFill adds rows of random hashes and wrapped keys to pz_subject_keys
// until it holds target rows, with COPY in chunks of a million (each its
// own transaction), in random order like real keys arrive; it returns the
// row count.
func mustFill(t *testing.T, conn *pgx.Conn, target int64) int64 {
	t.Helper()
	ctx := context.Background()
	var n int64
	if err := conn.QueryRow(ctx, "SELECT count(*) FROM pz_subject_keys").Scan(&n); err != nil {
		t.Fatalf("count: %v", err)
	}
	if n >= target {
		return n
	}
	t0 := time.Now()
	for n < target {
		chunk := min(target-n, 1_000_000)
		src := &randomKeys{left: chunk, at: time.Now()}
		c, err := conn.CopyFrom(ctx, pgx.Identifier{"pz_subject_keys"}, []string{"subject_hash", "wrapped_key", "created_at"}, src)
		if err != nil {
			t.Fatalf("copy: %v", err)
		}
		n += c
		t.Logf("filled %d rows (%.0f rows/s) %s", n, float64(n)/time.Since(t0).Seconds(), load())
	}
	if _, err := conn.Exec(ctx, "VACUUM ANALYZE pz_subject_keys"); err != nil {
		t.Fatalf("vacuum: %v", err)
	}
	return n
}

// randomKeys is a pgx.CopyFromSource of random rows of pz_subject_keys.
type randomKeys struct {
	left int64
	at   time.Time
	row  [32 + store.WrappedSize]byte
}

func (r *randomKeys) Next() bool {
	if r.left == 0 {
		return false
	}
	r.left--
	_, _ = rand.Read(r.row[:])
	r.row[32] = 1 // the wrap version
	return true
}

func (r *randomKeys) Values() ([]any, error) {
	return []any{r.row[:32], r.row[32:], r.at}, nil
}

func (r *randomKeys) Err() error { return nil }

// logSizes logs the bytes per row of pz_subject_keys.
func logSizes(t *testing.T, conn *pgx.Conn, n int64) {
	t.Helper()
	ctx := context.Background()
	var heap, total, idx, pages int64
	var leafDensity float64
	if err := conn.QueryRow(ctx, `SELECT pg_relation_size('pz_subject_keys'), pg_total_relation_size('pz_subject_keys'),
		pg_indexes_size('pz_subject_keys'), pg_relation_size('pz_subject_keys_pkey') / 8192`).Scan(&heap, &total, &idx, &pages); err != nil {
		t.Fatalf("sizes: %v", err)
	}
	if err := conn.QueryRow(ctx, "SELECT avg_leaf_density FROM pgstatindex('pz_subject_keys_pkey')").Scan(&leafDensity); err != nil {
		t.Logf("pgstattuple not installed, no leaf density: %v", err)
	}
	t.Logf("pz_subject_keys %d rows: heap %d B (%.1f B/row), indexes %d B (%.1f B/row, %d pages, leaf density %.1f%%), total %d B (%.1f B/row)",
		n, heap, float64(heap)/float64(n), idx, float64(idx)/float64(n), pages, leafDensity, total, float64(total)/float64(n))
}

// logState logs the server settings that the measurements depend on.
func logState(t *testing.T, conn *pgx.Conn) {
	t.Helper()
	var sb, ver string
	if err := conn.QueryRow(context.Background(), "SELECT current_setting('shared_buffers'), current_setting('server_version')").Scan(&sb, &ver); err != nil {
		t.Fatalf("settings: %v", err)
	}
	t.Logf("PostgreSQL %s, shared_buffers %s %s", ver, sb, load())
}

// mustSampleHashes returns about n hashes of random rows of pz_subject_keys.
func mustSampleHashes(t *testing.T, conn *pgx.Conn, n int) [][]byte {
	t.Helper()
	ctx := context.Background()
	var rows int64
	if err := conn.QueryRow(ctx, "SELECT reltuples::int8 FROM pg_class WHERE oid = 'pz_subject_keys'::regclass").Scan(&rows); err != nil {
		t.Fatalf("reltuples: %v", err)
	}
	pct := min(100, 100*float64(n)/float64(max(rows, 1))*1.2)
	r, err := conn.Query(ctx, fmt.Sprintf("SELECT subject_hash FROM pz_subject_keys TABLESAMPLE BERNOULLI (%f) LIMIT %d", pct, n))
	if err != nil {
		t.Fatalf("sample: %v", err)
	}
	out, err := pgx.CollectRows(r, pgx.RowTo[[]byte])
	if err != nil {
		t.Fatalf("sample: %v", err)
	}
	return out
}

// logExplain logs EXPLAIN (ANALYZE, BUFFERS) of Resolve's read statement.
func logExplain(t *testing.T, conn *pgx.Conn, what string, hashes [][]byte) {
	t.Helper()
	r, err := conn.Query(context.Background(), "EXPLAIN (ANALYZE, BUFFERS, TIMING OFF) "+postgres.SelectState, hashes)
	if err != nil {
		t.Fatalf("explain: %v", err)
	}
	lines, err := pgx.CollectRows(r, pgx.RowTo[string])
	if err != nil {
		t.Fatalf("explain: %v", err)
	}
	for i, l := range lines {
		if len(l) > 120 { // the array of hashes
			lines[i] = l[:120] + "..."
		}
	}
	t.Logf("EXPLAIN %s (%d hashes) %s:\n\t%s", what, len(hashes), load(), strings.Join(lines, "\n\t"))
}

// cpuMeter measures the CPU time of the database's server processes
// (PostgreSQL on the same machine, read from /proc) and of this process.
type cpuMeter struct {
	t         *testing.T
	conn      *pgx.Conn
	pids      []int
	srv0, cl0 time.Duration
}

func newCPUMeter(t *testing.T, conn *pgx.Conn) *cpuMeter { return &cpuMeter{t: t, conn: conn} }

func (m *cpuMeter) start() {
	r, err := m.conn.Query(context.Background(), "SELECT pid FROM pg_stat_activity WHERE datname = current_database()")
	if err != nil {
		m.t.Fatalf("pids: %v", err)
	}
	m.pids, err = pgx.CollectRows(r, pgx.RowTo[int])
	if err != nil {
		m.t.Fatalf("pids: %v", err)
	}
	m.srv0, m.cl0 = m.server(), selfCPU()
}

// stop returns the server's and this process's CPU time since start.
func (m *cpuMeter) stop() (server, client time.Duration) {
	return m.server() - m.srv0, selfCPU() - m.cl0
}

// server sums utime and stime of the server processes (0 if /proc is not
// readable, as when PostgreSQL runs elsewhere).
func (m *cpuMeter) server() time.Duration {
	var ticks int64
	for _, pid := range m.pids {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		if err != nil {
			continue
		}
		s := string(b)
		f := strings.Fields(s[strings.LastIndexByte(s, ')')+2:])
		u, _ := strconv.ParseInt(f[11], 10, 64)
		k, _ := strconv.ParseInt(f[12], 10, 64)
		ticks += u + k
	}
	return time.Duration(ticks) * 10 * time.Millisecond // USER_HZ is 100 on Linux
}

func selfCPU() time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

func median(d []time.Duration) time.Duration {
	s := slices.Clone(d)
	slices.Sort(s)
	return s[len(s)/2]
}

// load returns the load average, for timings taken on shared machines.
func load() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return ""
	}
	f := strings.Fields(string(b))
	return "(load " + strings.Join(f[:3], " ") + ")"
}
