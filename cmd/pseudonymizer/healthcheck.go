package main

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"
)

// runHealthcheck is `pseudonymizer healthcheck`: a probe for container
// runtimes without a shell or curl (the image is distroless). It exits 0
// when the URL answers 200, else 1 with the reason.
func runHealthcheck(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlags("healthcheck", "healthcheck [--url URL] [--timeout D]",
		"Exits 0 when the service's readiness endpoint answers 200, else 1 with the\nreason. For container health checks (the image has no shell or curl).")
	url := fs.String("url", "http://127.0.0.1:9464/readyz", "endpoint to probe (/readyz: ready; /healthz: alive)")
	timeout := fs.Duration("timeout", 3*time.Second, "give up after this long")
	if err := fs.parse(args, stdout, stderr); err != nil {
		return err
	}
	hctx, cancel := context.WithTimeout(ctx, *timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(hctx, http.MethodGet, *url, nil)
	if err != nil {
		return fmt.Errorf("healthcheck: %w", err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return fmt.Errorf("healthcheck: %w", err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("healthcheck: %s: %d %s", *url, resp.StatusCode, strings.TrimSpace(string(body)))
	}
	fmt.Fprintln(stdout, strings.TrimSpace(string(body)))
	return nil
}
