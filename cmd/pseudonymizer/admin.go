package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/hygiene/pseudonymizer/internal/config"
	"github.com/hygiene/pseudonymizer/store"
)

// The embedded store is one bbolt file that one process at a time may open:
// while `pseudonymizer run` holds it, `status`, `forget-log` and `objection-log` ask the
// running instance instead, over its admin socket: a unix socket next to
// the store file (store.path + ".sock"), mode 0600, so that only the
// service's user (and root) may connect, as only they may read the store
// file itself. It answers the read-only questions of store.Auditor and
// nothing else; nothing it is asked is logged.

// adminSocketPath returns the admin socket of the embedded store at
// storePath.
func adminSocketPath(storePath string) string { return storePath + ".sock" }

// maxSubjectIDBytes bounds a subject ID sent to the admin socket.
const maxSubjectIDBytes = 4 << 10

// maxAdminAnswerBytes bounds the admin socket's answer about one subject.
const maxAdminAnswerBytes = 64 << 10

// adminSocket is the running service's admin endpoint.
type adminSocket struct {
	srv  *http.Server
	ln   net.Listener
	path string
}

// listenAdmin binds the admin socket of the embedded store at storePath.
// The caller holds the store file's lock, so a socket file left there is
// stale (a process that died) and is replaced. The socket is bound under a
// temporary name, made 0600, then renamed into place: it is never
// reachable with looser permissions.
func listenAdmin(storePath string, a store.Auditor, log *slog.Logger) (*adminSocket, error) {
	path := adminSocketPath(storePath)
	tmp := filepath.Join(filepath.Dir(path), fmt.Sprintf(".%s.%d.tmp", filepath.Base(path), os.Getpid()))
	_ = os.Remove(tmp)
	ln, err := net.Listen("unix", tmp)
	if err != nil {
		return nil, fmt.Errorf("admin socket: %w", err)
	}
	ln.(*net.UnixListener).SetUnlinkOnClose(false)
	if err := os.Chmod(tmp, 0o600); err != nil {
		ln.Close()
		_ = os.Remove(tmp)
		return nil, fmt.Errorf("admin socket: %w", err)
	}
	if err := os.Rename(tmp, path); err != nil {
		ln.Close()
		_ = os.Remove(tmp)
		return nil, fmt.Errorf("admin socket: %w", err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("POST /v1/subject", func(w http.ResponseWriter, r *http.Request) {
		var q struct {
			SubjectID string `json:"subject_id"`
		}
		if err := json.NewDecoder(http.MaxBytesReader(w, r.Body, maxSubjectIDBytes)).Decode(&q); err != nil || q.SubjectID == "" {
			http.Error(w, "want {\"subject_id\": ...}", http.StatusBadRequest)
			return
		}
		st, err := a.Subject(r.Context(), q.SubjectID)
		if err != nil {
			log.Warn("admin socket: status question failed", "err", err)
			http.Error(w, "key store: "+err.Error(), http.StatusServiceUnavailable)
			return
		}
		defer clear(st.Key)
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(st)
	})
	mux.HandleFunc("GET /v1/forget-log", func(w http.ResponseWriter, r *http.Request) {
		serveLog(w, r, log, "forget-log", a.ForgetLog)
	})
	mux.HandleFunc("GET /v1/objection-log", func(w http.ResponseWriter, r *http.Request) {
		serveLog(w, r, log, "objection-log", a.ObjectionLog)
	})
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go func() { _ = srv.Serve(ln) }()
	return &adminSocket{srv: srv, ln: ln, path: path}, nil
}

// serveLog answers a log request with the records at or after its since
// parameter, as JSON lines.
func serveLog[R any](w http.ResponseWriter, r *http.Request, log *slog.Logger, name string, read func(context.Context, time.Time, func(R) error) error) {
	var since time.Time
	if s := r.URL.Query().Get("since"); s != "" {
		var err error
		if since, err = time.Parse(time.RFC3339Nano, s); err != nil {
			http.Error(w, "since: want RFC 3339", http.StatusBadRequest)
			return
		}
	}
	w.Header().Set("Content-Type", "application/jsonl")
	enc := json.NewEncoder(w)
	if err := read(r.Context(), since, func(rec R) error { return enc.Encode(rec) }); err != nil {
		log.Warn("admin socket: "+name+" failed", "err", err)
		// The status line is sent; a last line that is no record tells
		// the client the log is incomplete.
		_ = enc.Encode(map[string]string{"error": err.Error()})
	}
}

// close stops serving and removes the socket file.
func (s *adminSocket) close() {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_ = s.srv.Shutdown(ctx)
	_ = os.Remove(s.path)
}

// adminClient is a store.Auditor that asks a running instance over its
// admin socket.
type adminClient struct {
	hc *http.Client
}

// dialAdmin returns a client of the admin socket of the embedded store at
// storePath, or ok false when no instance answers there.
func dialAdmin(ctx context.Context, storePath string) (c *adminClient, ok bool) {
	path := adminSocketPath(storePath)
	if _, err := os.Stat(path); err != nil {
		return nil, false
	}
	d := net.Dialer{Timeout: 2 * time.Second}
	conn, err := d.DialContext(ctx, "unix", path)
	if err != nil {
		return nil, false // a stale socket of a process that died
	}
	conn.Close()
	tr := &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return d.DialContext(ctx, "unix", path)
	}}
	return &adminClient{hc: &http.Client{Transport: tr, Timeout: time.Minute}}, true
}

func (c *adminClient) close() { c.hc.CloseIdleConnections() }

// adminError turns an answer other than 200 into an error.
func adminError(resp *http.Response) error {
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
	return fmt.Errorf("the running service's admin socket answered %s: %s", resp.Status, strings.TrimSpace(string(b)))
}

// Subject asks the running instance what its store holds about subjectID.
func (c *adminClient) Subject(ctx context.Context, subjectID string) (store.SubjectState, error) {
	body, err := json.Marshal(map[string]string{"subject_id": subjectID})
	if err != nil {
		return store.SubjectState{}, err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, "http://admin/v1/subject", strings.NewReader(string(body)))
	if err != nil {
		return store.SubjectState{}, err
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		return store.SubjectState{}, fmt.Errorf("admin socket: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return store.SubjectState{}, adminError(resp)
	}
	var st store.SubjectState
	if err := json.NewDecoder(io.LimitReader(resp.Body, maxAdminAnswerBytes)).Decode(&st); err != nil {
		return store.SubjectState{}, fmt.Errorf("admin socket: decode answer: %w", err)
	}
	return st, nil
}

// ForgetLog asks the running instance for its forget log.
func (c *adminClient) ForgetLog(ctx context.Context, since time.Time, fn func(store.ForgetRecord) error) error {
	return readLog(ctx, c, "forget-log", since, fn)
}

// ObjectionLog asks the running instance for its objection log.
func (c *adminClient) ObjectionLog(ctx context.Context, since time.Time, fn func(store.ObjectionRecord) error) error {
	return readLog(ctx, c, "objection-log", since, fn)
}

// readLog reads the log called name from the running instance and calls fn
// for each record.
func readLog[R any](ctx context.Context, c *adminClient, name string, since time.Time, fn func(R) error) error {
	u := "http://admin/v1/" + name
	if !since.IsZero() {
		u += "?since=" + since.UTC().Format(time.RFC3339Nano)
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return err
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		return fmt.Errorf("admin socket: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return adminError(resp)
	}
	dec := json.NewDecoder(resp.Body)
	for {
		var raw json.RawMessage
		if err := dec.Decode(&raw); errors.Is(err, io.EOF) {
			return nil
		} else if err != nil {
			return fmt.Errorf("admin socket: decode answer: %w", err)
		}
		var e struct {
			Error string `json:"error"`
		}
		if json.Unmarshal(raw, &e) == nil && e.Error != "" {
			return fmt.Errorf("the running service: %s", e.Error)
		}
		var rec R
		if err := json.Unmarshal(raw, &rec); err != nil {
			return fmt.Errorf("admin socket: decode answer: %w", err)
		}
		if err := fn(rec); err != nil {
			return err
		}
	}
}

// errEmbeddedInUse is rewrap's answer while a service holds the embedded
// store: re-wrapping needs the store file, which one process at a time may
// open.
func errEmbeddedInUse(c config.Store) error {
	return fmt.Errorf("store.path: %s is held by a running `pseudonymizer run`: the embedded store can be re-wrapped only while the service is stopped; stop it, run rewrap, start it again (with PostgreSQL, rewrap runs next to the service)", c.Path)
}
