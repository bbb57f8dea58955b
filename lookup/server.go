package lookup

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/hygiene/pseudonymizer/processor/policy"
	"github.com/hygiene/pseudonymizer/processor/pseudonym"
)

// Path is the lookup endpoint.
const Path = "/v1/pseudonyms"

// Config configures a Server.
type Config struct {
	// Plan is the service's compiled policies: the same Plan the processor
	// projects with.
	Plan *policy.Plan
	// Store is the key store the processor uses.
	Store Store
	// Tokens are the callers (lookup.tokens_file); every system a token
	// names must be configured.
	Tokens []Token
	// Metrics, if nil, are created unregistered.
	Metrics *Metrics
	// Logger, if nil, discards.
	Logger *slog.Logger
	// CacheSubjects bounds the subjects whose keys the API caches
	// (default 100,000).
	CacheSubjects int
	// MaxBatch bounds the lookups served under one guard (default 1024).
	MaxBatch int
	// Window is the least time between the starts of two batches
	// (default 2ms): under load, the lookups of a window share one store
	// guard and at most one Resolve; a lookup that finds the API idle is
	// served at once. Negative: no window (every batch is what queued
	// while the previous one ran).
	Window time.Duration
	// StoreTimeout bounds each store call (default 5s).
	StoreTimeout time.Duration
	// WriteTimeout bounds the writing of a response, and so how long a
	// batch holds the store guard for a slow client (default 5s; at most
	// 20s, see doc.go).
	WriteTimeout time.Duration
	// Now is the clock for the default occurred_at and rate limits
	// (default time.Now).
	Now func() time.Time
}

// MaxWriteTimeout bounds Config.WriteTimeout: a batch must finish writing
// well within the 30s a Forget waits after it saw a guard's connection
// lost (store/postgres/lostguard.go).
const MaxWriteTimeout = 20 * time.Second

// Server is the lookup API. Its handler is safe for concurrent use; Run (or
// Serve) must be running for lookups to be answered.
type Server struct {
	cfg     Config
	si      *schemaInfo
	callers []*caller
	b       *batcher
	m       *Metrics
	log     *slog.Logger
	now     func() time.Time
	runOnce sync.Once
	bodies  sync.Pool // *[]byte: request body buffers, wiped before they are put back
	calls   sync.Pool // *call: answered calls (a call not answered is not reused)
	okTime  atomic.Pointer[prometheus.Observer]
	// Header values every response has, set without allocating (net/http
	// only reads them).
	hdrNoStore, hdrJSON []string
}

// lazyCounter is a counter series created on first use (so that only
// series that counted something are exposed), then taken without the
// label lookup.
type lazyCounter struct {
	p atomic.Pointer[prometheus.Counter]
}

func (l *lazyCounter) inc(vec *prometheus.CounterVec, labels ...string) {
	p := l.p.Load()
	if p == nil {
		c := vec.WithLabelValues(labels...)
		p = &c
		l.p.Store(p)
	}
	(*p).Inc()
}

// New checks cfg and returns a Server.
func New(cfg Config) (*Server, error) {
	if cfg.Plan == nil || cfg.Store == nil {
		return nil, errors.New("lookup: a Plan and a Store are required")
	}
	if cfg.CacheSubjects <= 0 {
		cfg.CacheSubjects = 100_000
	}
	if cfg.MaxBatch <= 0 {
		cfg.MaxBatch = 1024
	}
	if cfg.Window == 0 {
		cfg.Window = 2 * time.Millisecond
	}
	if cfg.StoreTimeout <= 0 {
		cfg.StoreTimeout = 5 * time.Second
	}
	if cfg.WriteTimeout <= 0 {
		cfg.WriteTimeout = 5 * time.Second
	}
	if cfg.WriteTimeout > MaxWriteTimeout {
		return nil, fmt.Errorf("lookup: write timeout %s is above %s", cfg.WriteTimeout, MaxWriteTimeout)
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Metrics == nil {
		cfg.Metrics = NewMetrics(nil)
	}
	si := newSchemaInfo(cfg.Plan)
	systems := cfg.Plan.Systems()
	s := &Server{cfg: cfg, si: si, m: cfg.Metrics, log: cfg.Logger, now: cfg.Now,
		hdrNoStore: []string{"no-store"}, hdrJSON: []string{"application/json"}}
	if err := CheckTokens(cfg.Plan, cfg.Tokens); err != nil {
		return nil, err
	}
	for _, t := range cfg.Tokens {
		c := &caller{name: t.Name, systems: make([]bool, len(systems)), served: make([]lazyCounter, len(systems)), bucket: newBucket(t.Rate)}
		h, err := decodeHex32(t.SHA256)
		if err != nil {
			return nil, fmt.Errorf("lookup: token %s: %w", t.Name, err)
		}
		c.sum = h
		for _, name := range t.Systems {
			i, ok := si.systems[name]
			if !ok {
				return nil, fmt.Errorf("lookup: token %s: system %q is not configured", t.Name, name)
			}
			c.systems[i] = true
		}
		s.callers = append(s.callers, c)
	}
	sysFields := make([]map[string]bool, len(systems))
	for i := range systems {
		sysFields[i] = map[string]bool{}
		for _, f := range cfg.Plan.Pseudonymized(i) {
			sysFields[i][f.Path] = true
		}
	}
	s.b = &batcher{
		plan: cfg.Plan, systems: systems, sysFields: sysFields, st: cfg.Store,
		in: make(chan *call, 4*cfg.MaxBatch), stopped: make(chan struct{}), maxBatch: cfg.MaxBatch,
		window: cfg.Window, timeout: cfg.StoreTimeout, cache: newCache(cfg.CacheSubjects), d: pseudonym.NewDeriver(),
		log: cfg.Logger, m: cfg.Metrics,
		hits: cfg.Metrics.Cache.WithLabelValues("hit"), misses: cfg.Metrics.Cache.WithLabelValues("miss"),
	}
	s.bodies.New = func() any { b := make([]byte, 0, 2048); return &b }
	s.calls.New = func() any { return &call{done: make(chan answer, 1)} }
	return s, nil
}

// CheckTokens checks that every system a token names is configured.
func CheckTokens(plan *policy.Plan, toks []Token) error {
	configured := map[string]bool{}
	for _, s := range plan.Systems() {
		configured[s] = true
	}
	for _, t := range toks {
		for _, name := range t.Systems {
			if !configured[name] {
				return fmt.Errorf("lookup: token %s: system %q is not configured", t.Name, name)
			}
		}
	}
	return nil
}

// Run serves lookups (the batcher) until ctx is canceled. Handlers of
// requests still waiting then answer 503. Call it once.
func (s *Server) Run(ctx context.Context) {
	ran := false
	s.runOnce.Do(func() { ran = true; s.b.run(ctx) })
	if !ran {
		panic("lookup: Server.Run called twice")
	}
}

// Serve runs the batcher and serves the API on ln (with TLS if tlsCfg is
// not nil) until ctx is canceled; then it stops accepting, lets the
// requests in flight finish (5s at most) and returns.
func (s *Server) Serve(ctx context.Context, ln net.Listener, tlsCfg *tls.Config) error {
	bctx, stop := context.WithCancel(context.WithoutCancel(ctx))
	var wg sync.WaitGroup
	wg.Go(func() { s.Run(bctx) })
	defer func() {
		stop()
		wg.Wait()
	}()
	if tlsCfg != nil {
		ln = tls.NewListener(ln, tlsCfg)
	}
	srv := &http.Server{
		Handler:           s,
		ReadHeaderTimeout: 5 * time.Second,
		ReadTimeout:       10 * time.Second,
		IdleTimeout:       2 * time.Minute,
		MaxHeaderBytes:    16 << 10,
		ErrorLog:          slog.NewLogLogger(s.log.Handler(), slog.LevelDebug),
	}
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	select {
	case err := <-errc:
		return fmt.Errorf("lookup: serve: %w", err)
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_ = srv.Shutdown(sctx) // the batcher still runs: requests in flight are answered
	<-errc
	return nil
}

// TLSConfig returns the listener's TLS configuration: the server's
// certificate and, with clientCAFile, client certificates required and
// verified against that CA (mTLS).
func TLSConfig(certFile, keyFile, clientCAFile string) (*tls.Config, error) {
	cert, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		return nil, fmt.Errorf("lookup.tls: %w", err)
	}
	cfg := &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
	if clientCAFile != "" {
		pem, err := os.ReadFile(clientCAFile)
		if err != nil {
			return nil, fmt.Errorf("lookup.tls.client_ca_file: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("lookup.tls.client_ca_file: %s holds no PEM certificate", clientCAFile)
		}
		cfg.ClientCAs = pool
		cfg.ClientAuth = tls.RequireAndVerifyClientCert
	}
	return cfg, nil
}

// ServeHTTP serves POST /v1/pseudonyms.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	start := time.Now()
	code, c, systems := s.handle(w, r)
	if code == http.StatusOK {
		for _, sys := range systems {
			c.served[sys].inc(s.m.Requests, c.name, s.b.systems[sys], "200")
		}
		ob := s.okTime.Load()
		if ob == nil {
			o := s.m.Latency.WithLabelValues("200")
			ob = &o
			s.okTime.Store(ob)
		}
		(*ob).Observe(time.Since(start).Seconds())
		return
	}
	token := "-"
	if c != nil {
		token = c.name
	}
	cs := strconv.Itoa(code)
	if len(systems) == 0 {
		s.m.Requests.WithLabelValues(token, "-", cs).Inc()
	}
	for _, sys := range systems {
		s.m.Requests.WithLabelValues(token, s.b.systems[sys], cs).Inc()
	}
	s.m.Latency.WithLabelValues(cs).Observe(time.Since(start).Seconds())
}

// handle answers one request and returns its status, caller (if
// authenticated) and requested systems (if known).
func (s *Server) handle(w http.ResponseWriter, r *http.Request) (code int, c *caller, systems []int) {
	h := w.Header()
	h["Cache-Control"] = s.hdrNoStore
	if r.URL.Path != Path {
		return s.fail(w, http.StatusNotFound, "not found; the lookup endpoint is POST "+Path), nil, nil
	}
	if r.Method != http.MethodPost {
		h.Set("Allow", http.MethodPost)
		return s.fail(w, http.StatusMethodNotAllowed, "use POST"), nil, nil
	}
	token, ok := bearer(r.Header.Get("Authorization"))
	if ok {
		c = authenticate(s.callers, token)
	}
	if c == nil {
		h.Set("WWW-Authenticate", `Bearer realm="pseudonymizer lookup"`)
		return s.fail(w, http.StatusUnauthorized, "a valid bearer token is required"), nil, nil
	}
	if ok, wait := c.bucket.take(s.now()); !ok {
		h.Set("Retry-After", strconv.Itoa(int(math.Ceil(wait.Seconds()))))
		return s.fail(w, http.StatusTooManyRequests, "over this token's rate"), c, nil
	}
	bp := s.bodies.Get().(*[]byte)
	body, err := readBody(r.Body, (*bp)[:0])
	var req *Request
	if err == nil {
		req, err = s.si.decodeRequest(body, s.now())
	}
	clear(body) // the raw customer ID and values
	*bp = body[:0]
	s.bodies.Put(bp)
	if err != nil {
		var be *BadRequestError
		if !errors.As(err, &be) {
			be = &BadRequestError{Msg: "the request body could not be read"}
		}
		return s.fail(w, http.StatusBadRequest, be.Msg), c, nil
	}
	for i, sys := range req.Systems {
		if !c.systems[sys] {
			return s.fail(w, http.StatusForbidden, fmt.Sprintf("systems[%d] is not allowed for this token", i)), c, req.Systems
		}
	}
	cl := s.calls.Get().(*call)
	cl.req = req
	cl.released.Store(false)
	select {
	case s.b.in <- cl:
	case <-s.b.stopped:
		h.Set("Retry-After", "1")
		return s.fail(w, http.StatusServiceUnavailable, "the lookup API is shutting down"), c, req.Systems
	}
	var a answer
	select {
	case a = <-cl.done:
	case <-s.b.stopped:
		select {
		case a = <-cl.done: // answered just before the batcher stopped
		default:
			h.Set("Retry-After", "1")
			return s.fail(w, http.StatusServiceUnavailable, "the lookup API is shutting down"), c, req.Systems
		}
	}
	// The batch holds the store guard until every answer is released:
	// release even if writing panics. The batcher is done with an
	// answered call: it can serve another request.
	defer func() {
		a.release()
		cl.req = nil
		s.calls.Put(cl)
	}()
	if a.status == http.StatusServiceUnavailable {
		h.Set("Retry-After", "1")
	}
	s.write(w, a.status, a.body)
	return a.status, c, req.Systems
}

// readBody reads a request body onto buf, at most MaxBodyBytes+1 bytes
// (decodeRequest refuses a longer one).
func readBody(r io.Reader, buf []byte) ([]byte, error) {
	for len(buf) <= MaxBodyBytes {
		if len(buf) == cap(buf) {
			buf = append(buf, 0)[:len(buf)]
		}
		n, err := r.Read(buf[len(buf):min(cap(buf), MaxBodyBytes+1)])
		buf = buf[:len(buf)+n]
		if err == io.EOF {
			return buf, nil
		}
		if err != nil {
			return buf, err
		}
	}
	return buf, nil
}

// write writes a JSON response within the write timeout.
func (s *Server) write(w http.ResponseWriter, status int, body []byte) {
	_ = http.NewResponseController(w).SetWriteDeadline(time.Now().Add(s.cfg.WriteTimeout))
	h := w.Header()
	h["Content-Type"] = s.hdrJSON
	h["Content-Length"] = []string{strconv.Itoa(len(body))}
	w.WriteHeader(status)
	_, _ = w.Write(body)
}

func (s *Server) fail(w http.ResponseWriter, status int, msg string) int {
	s.write(w, status, errorBody(msg))
	return status
}

// bearer returns the token of an Authorization header of the Bearer
// scheme (case-insensitive, RFC 6750).
func bearer(h string) (string, bool) {
	scheme, tok, ok := strings.Cut(h, " ")
	if !ok || !strings.EqualFold(scheme, "Bearer") {
		return "", false
	}
	tok = strings.TrimSpace(tok)
	return tok, tok != ""
}

func errorBody(msg string) []byte {
	b := append([]byte(`{"error":`), appendJSONString(nil, msg)...)
	return append(b, "}\n"...)
}

func statusBody(status string) []byte {
	b := append([]byte(`{"status":`), appendJSONString(nil, status)...)
	return append(b, "}\n"...)
}

// appendJSONString appends s as a JSON string.
func appendJSONString(dst []byte, s string) []byte {
	const hex = "0123456789abcdef"
	dst = append(dst, '"')
	for i := 0; i < len(s); {
		c := s[i]
		if c >= 0x20 && c != '"' && c != '\\' && c < utf8.RuneSelf {
			dst = append(dst, c)
			i++
			continue
		}
		if c < utf8.RuneSelf {
			switch c {
			case '"', '\\':
				dst = append(dst, '\\', c)
			case '\n':
				dst = append(dst, '\\', 'n')
			default:
				dst = append(dst, '\\', 'u', '0', '0', hex[c>>4], hex[c&0xf])
			}
			i++
			continue
		}
		r, n := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError && n == 1 {
			dst = append(dst, `\ufffd`...)
		} else {
			dst = append(dst, s[i:i+n]...)
		}
		i += n
	}
	return append(dst, '"')
}

func decodeHex32(s string) ([32]byte, error) {
	var out [32]byte
	if len(s) != 64 {
		return out, errors.New("sha256 must be 64 hex digits")
	}
	for i := range out {
		hi, ok1 := unhex(s[2*i])
		lo, ok2 := unhex(s[2*i+1])
		if !ok1 || !ok2 {
			return out, errors.New("sha256 must be 64 hex digits")
		}
		out[i] = hi<<4 | lo
	}
	return out, nil
}

func unhex(c byte) (byte, bool) {
	switch {
	case c >= '0' && c <= '9':
		return c - '0', true
	case c >= 'a' && c <= 'f':
		return c - 'a' + 10, true
	case c >= 'A' && c <= 'F':
		return c - 'A' + 10, true
	}
	return 0, false
}
