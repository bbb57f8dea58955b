//go:build linux

package integration

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/hygiene/pseudonymizer/internal/kafkatest"
	"github.com/jackc/pgx/v5"

	"github.com/hygiene/pseudonymizer/store/postgres/pgtest"
)

// TestPostgresBackendsTerminated kills the service's PostgreSQL backends
// again and again while orders stream in: each batch that loses its
// connection aborts and is redone; nothing is dead-lettered, lost or
// duplicated, and the service ends ready.
func TestPostgresBackendsTerminated(t *testing.T) {
	w := MustNewWorld(t)
	a := w.MustStart(t, "pz-a")
	b := w.MustStart(t, "pz-b")
	a.MustAwaitReadyz(t, 200, time.Minute)
	b.MustAwaitReadyz(t, 200, time.Minute)
	done := w.Stream(t, stream{n: 2000, forgetEvery: 40, chunk: 20, pause: 100 * time.Millisecond})

	conn := pgtest.MustConnect(t)
	terminated, rounds := 0, 0
	for stop := false; !stop; {
		select {
		case <-done:
			stop = true
		case <-time.After(400 * time.Millisecond):
		}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		var n int
		err := conn.QueryRow(ctx, `SELECT count(*) FROM (SELECT pg_terminate_backend(pid) AS ok FROM pg_stat_activity
			WHERE application_name = $1 AND pid <> pg_backend_pid()) x WHERE ok`, w.appName).Scan(&n)
		cancel()
		if err != nil {
			t.Fatalf("pg_terminate_backend: %v", err)
		}
		terminated += n
		rounds++
	}
	if terminated == 0 {
		t.Fatalf("no backend of the service was terminated in %d rounds", rounds)
	}
	t.Logf("terminated %d backends in %d rounds", terminated, rounds)
	w.MustAwaitConsumed(t, 2*time.Minute)
	a.MustAwaitReadyz(t, 200, 30*time.Second)
	b.MustAwaitReadyz(t, 200, 30*time.Second)
	w.MustStopAll(t)
	w.MustVerify(t)
}

// TestPostgresRestart stops PostgreSQL during a stream and starts it again:
// /readyz answers 503 while it is down and 200 after, and the service
// resumes by itself without loss, duplicate or dead letter (P7).
//
// It must not run in parallel with other tests of this package.
func TestPostgresRestart(t *testing.T) {
	MustIntegration(t)
	pg := MustRestartablePostgres(t)
	w := MustNewWorld(t, withDSN(pg.dsn))
	a := w.MustStart(t, "pz-a")
	b := w.MustStart(t, "pz-b")
	a.MustAwaitReadyz(t, 200, time.Minute)
	b.MustAwaitReadyz(t, 200, time.Minute)
	done := w.Stream(t, stream{n: 2000, forgetEvery: 40, chunk: 20, pause: 100 * time.Millisecond})

	// Stop PostgreSQL mid-stream: once the service has committed work.
	kafkatest.WaitFor(t, time.Minute, "the first committed orders", func() bool { return w.MustCommitted(t) > 0 })
	pg.MustStop(t)
	t.Log("PostgreSQL stopped")
	a.MustAwaitReadyz(t, 503, 30*time.Second)
	b.MustAwaitReadyz(t, 503, 30*time.Second)
	// Every batch takes the store guard before it commits, so while
	// PostgreSQL is down no input offset may move (after a grace period for
	// a batch whose guard was taken just before the stop).
	time.Sleep(time.Second)
	before := w.MustCommitted(t)
	time.Sleep(5 * time.Second)
	if got := w.MustCommitted(t); got != before {
		t.Errorf("committed input offsets moved from %d to %d while PostgreSQL was down", before, got)
	}
	pg.MustStart(t)
	t.Log("PostgreSQL started")
	a.MustAwaitReadyz(t, 200, time.Minute)
	b.MustAwaitReadyz(t, 200, time.Minute)
	<-done
	w.MustAwaitConsumed(t, 2*time.Minute)
	w.MustStopAll(t)
	w.MustVerify(t)
}

// restartablePostgres is a PostgreSQL server the test may stop and start.
type restartablePostgres struct {
	dsn   string
	stop  func(testing.TB)
	start func(testing.TB)
}

func (p *restartablePostgres) MustStop(t testing.TB)  { t.Helper(); p.stop(t) }
func (p *restartablePostgres) MustStart(t testing.TB) { t.Helper(); p.start(t) }

// MustRestartablePostgres returns a private PostgreSQL server (initdb in a
// temporary directory, on a free port, as the postgres user when run as
// root), so that stopping it disturbs no other test. With
// PSEUDONYMIZER_INTEGRATION_PG_RESTART=shared, or when no private server
// can be made, it is the shared cluster of pgtest, stopped and started with
// pg_ctlcluster and always started again at cleanup.
func MustRestartablePostgres(t testing.TB) *restartablePostgres {
	t.Helper()
	if os.Getenv("PSEUDONYMIZER_INTEGRATION_PG_RESTART") != "shared" {
		p, err := privatePostgres(t)
		if err == nil {
			return p
		}
		t.Logf("no private PostgreSQL (%v): using the shared cluster", err)
	}
	return mustSharedPostgres(t)
}

// pgBinDir finds the PostgreSQL server binaries.
func pgBinDir() (string, error) {
	matches, _ := filepath.Glob("/usr/lib/postgresql/*/bin/initdb")
	if len(matches) == 0 {
		if p, err := exec.LookPath("initdb"); err == nil {
			return filepath.Dir(p), nil
		}
		return "", fmt.Errorf("initdb not found")
	}
	return filepath.Dir(matches[len(matches)-1]), nil
}

func privatePostgres(t testing.TB) (*restartablePostgres, error) {
	t.Helper()
	bin, err := pgBinDir()
	if err != nil {
		return nil, err
	}
	var cred *syscall.Credential
	dir, err := os.MkdirTemp("", "pz-it-pg-")
	if err != nil {
		return nil, err
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if os.Getuid() == 0 {
		// PostgreSQL refuses to run as root.
		u, err := user.Lookup("postgres")
		if err != nil {
			return nil, err
		}
		uid, _ := strconv.Atoi(u.Uid)
		gid, _ := strconv.Atoi(u.Gid)
		cred = &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}
		if err := os.Chown(dir, uid, gid); err != nil {
			return nil, err
		}
	}
	data := filepath.Join(dir, "data")
	initdb := exec.Command(filepath.Join(bin, "initdb"), "-D", data, "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync")
	initdb.SysProcAttr = &syscall.SysProcAttr{Credential: cred}
	if out, err := initdb.CombinedOutput(); err != nil {
		return nil, fmt.Errorf("initdb: %v: %s", err, out)
	}
	port := freeAddr(t)[len("127.0.0.1:"):]
	logPath := filepath.Join(dir, "postgres.log")

	var mu sync.Mutex
	var cmd *exec.Cmd
	var exited chan struct{}
	start := func() error {
		mu.Lock()
		defer mu.Unlock()
		f, err := os.OpenFile(logPath, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
		if err != nil {
			return err
		}
		c := exec.Command(filepath.Join(bin, "postgres"), "-D", data, "-p", port, "-k", dir,
			"-c", "listen_addresses=127.0.0.1", "-c", "fsync=off", "-c", "full_page_writes=off",
			"-c", "synchronous_commit=off", "-c", "max_connections=100")
		c.Stdout, c.Stderr = f, f
		c.SysProcAttr = &syscall.SysProcAttr{Credential: cred, Pdeathsig: syscall.SIGKILL}
		if err := c.Start(); err != nil {
			f.Close()
			return err
		}
		ch := make(chan struct{})
		go func() { _ = c.Wait(); f.Close(); close(ch) }()
		cmd, exited = c, ch
		return waitPostgres("127.0.0.1:"+port, 30*time.Second)
	}
	stop := func() error {
		mu.Lock()
		defer mu.Unlock()
		if cmd == nil {
			return nil
		}
		_ = cmd.Process.Signal(syscall.SIGINT) // fast shutdown
		select {
		case <-exited:
		case <-time.After(30 * time.Second):
			_ = cmd.Process.Kill()
			<-exited
		}
		cmd = nil
		return nil
	}
	if err := start(); err != nil {
		_ = stop()
		b, _ := os.ReadFile(logPath)
		return nil, fmt.Errorf("start postgres: %v: %s", err, b)
	}
	t.Cleanup(func() { _ = stop() })
	dsn := fmt.Sprintf("postgres://postgres@127.0.0.1:%s/postgres?sslmode=disable", port)
	return &restartablePostgres{
		dsn: dsn,
		stop: func(t testing.TB) {
			t.Helper()
			if err := stop(); err != nil {
				t.Fatal(err)
			}
		},
		start: func(t testing.TB) {
			t.Helper()
			if err := start(); err != nil {
				b, _ := os.ReadFile(logPath)
				t.Fatalf("restart postgres: %v: %s", err, b)
			}
		},
	}, nil
}

// waitPostgres waits until a TCP connection to addr and a query succeed.
func waitPostgres(addr string, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	var err error
	for time.Now().Before(deadline) {
		var c net.Conn
		if c, err = net.DialTimeout("tcp", addr, time.Second); err == nil {
			c.Close()
			ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
			var conn *pgx.Conn
			conn, err = pgx.Connect(ctx, "postgres://postgres@"+addr+"/postgres?sslmode=disable")
			if err == nil {
				err = conn.Ping(ctx)
				conn.Close(ctx)
			}
			cancel()
			if err == nil {
				return nil
			}
		}
		time.Sleep(100 * time.Millisecond)
	}
	return fmt.Errorf("postgres at %s not ready after %s: %v", addr, timeout, err)
}

// mustSharedPostgres stops and starts the shared cluster (the one pgtest
// uses) with pg_ctlcluster, and always starts it again at cleanup.
func mustSharedPostgres(t testing.TB) *restartablePostgres {
	t.Helper()
	versions, _ := filepath.Glob("/etc/postgresql/*")
	if len(versions) == 0 {
		t.Fatal("no /etc/postgresql/<version>: cannot stop and start the shared cluster")
	}
	version := filepath.Base(versions[0])
	dsn, _ := pgtest.MustTempSchema(t)
	addr := "127.0.0.1:5432"
	if u := pgtest.URL(); strings.Contains(u, "@") {
		if rest := u[strings.Index(u, "@")+1:]; strings.Contains(rest, "/") {
			addr = rest[:strings.Index(rest, "/")]
		}
	}
	ctl := func(action string, args ...string) error {
		out, err := exec.Command("pg_ctlcluster", append([]string{"--skip-systemctl-redirect", version, "main", action}, args...)...).CombinedOutput()
		if err != nil {
			return fmt.Errorf("pg_ctlcluster %s: %v: %s", action, err, out)
		}
		return nil
	}
	start := func() error {
		_ = ctl("start") // fails harmlessly when already running
		return waitPostgres(addr, 60*time.Second)
	}
	// Registered before the schema's cleanup runs (cleanups are LIFO), so
	// the server is up again when the schema is dropped.
	t.Cleanup(func() {
		if err := start(); err != nil {
			t.Errorf("PostgreSQL NOT restarted: %v", err)
		}
	})
	return &restartablePostgres{
		dsn: dsn,
		stop: func(t testing.TB) {
			t.Helper()
			if err := ctl("stop", "-m", "fast"); err != nil {
				t.Fatal(err)
			}
		},
		start: func(t testing.TB) {
			t.Helper()
			if err := start(); err != nil {
				t.Fatal(err)
			}
		},
	}
}
