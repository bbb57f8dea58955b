package main

import (
	"context"
	"crypto/tls"
	"fmt"
	"log/slog"
	"net"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/hygiene/pseudonymizer/internal/config"
	"github.com/hygiene/pseudonymizer/lookup"
	"github.com/hygiene/pseudonymizer/processor/policy"
	"github.com/hygiene/pseudonymizer/store"
)

// lookupService is the lookup API of `pseudonymizer run`, on its own
// listener (lookup.listen), never the metrics port.
type lookupService struct {
	cfg config.Lookup
	srv *lookup.Server
	tls *tls.Config
	log *slog.Logger
	ln  net.Listener
}

// newLookupService checks the lookup section (tokens file, its systems,
// TLS files) and builds the API; nil when lookup.listen is unset.
func newLookupService(cfg config.Config, plan *policy.Plan, st store.KeyStore, reg prometheus.Registerer, log *slog.Logger) (*lookupService, error) {
	lc := cfg.Lookup
	if lc.Listen == "" {
		return nil, nil
	}
	toks, tlsCfg, err := checkLookup(lc, plan)
	if err != nil {
		return nil, err
	}
	log = log.With("component", "lookup")
	srv, err := lookup.New(lookup.Config{
		Plan:    plan,
		Store:   st,
		Tokens:  toks,
		Metrics: lookup.NewMetrics(reg),
		Logger:  log,
	})
	if err != nil {
		return nil, fmt.Errorf("lookup.tokens_file: %w", err)
	}
	return &lookupService{cfg: lc, srv: srv, tls: tlsCfg, log: log}, nil
}

// checkLookup loads the tokens file (checking its mode and its systems)
// and the TLS files; run and run --check-config call it.
func checkLookup(lc config.Lookup, plan *policy.Plan) ([]lookup.Token, *tls.Config, error) {
	toks, err := lookup.LoadTokens(lc.TokensFile)
	if err != nil {
		return nil, nil, err
	}
	if err := lookup.CheckTokens(plan, toks); err != nil {
		return nil, nil, fmt.Errorf("lookup.tokens_file: %w", err)
	}
	var tlsCfg *tls.Config
	if lc.TLS.CertFile != "" {
		if tlsCfg, err = lookup.TLSConfig(lc.TLS.CertFile, lc.TLS.KeyFile, lc.TLS.ClientCAFile); err != nil {
			return nil, nil, err
		}
	}
	return toks, tlsCfg, nil
}

// listen binds lookup.listen (once); a nil l does nothing.
func (l *lookupService) listen() error {
	if l == nil || l.ln != nil {
		return nil
	}
	ln, err := net.Listen("tcp", l.cfg.Listen)
	if err != nil {
		return fmt.Errorf("lookup.listen: %w", err)
	}
	l.ln = ln
	return nil
}

// serve serves the API until ctx is canceled.
func (l *lookupService) serve(ctx context.Context) {
	scheme := "http"
	switch {
	case l.tls != nil && l.tls.ClientCAs != nil:
		scheme = "https (mTLS)"
	case l.tls != nil:
		scheme = "https"
	}
	l.log.Info("serving the lookup API", "addr", l.ln.Addr().String(), "path", lookup.Path, "scheme", scheme)
	if err := l.srv.Serve(ctx, l.ln, l.tls); err != nil {
		l.log.Error("lookup API server", "err", err)
	}
}
