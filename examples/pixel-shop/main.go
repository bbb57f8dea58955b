// Command pixel-shop is a small example web shop whose thank-you page puts
// pseudonyms, not raw IDs, into the conversion pixels of Google Analytics
// (gtag transaction_id), Meta (fbq eventID) and TikTok (ttq event_id). It
// asks the pseudonymizer's lookup API for them, server-side, while it
// renders the page: the same strings the stream gives that order on each
// system's output topic, so that browser and server events deduplicate.
//
// The vendors' scripts are local stand-ins that record each call (POST
// /collect); the shop keeps the calls in memory and shows them at GET
// /calls. Run:
//
//	PIXEL_SHOP_TOKEN=pzl_... pixel-shop --lookup-url http://127.0.0.1:8490/v1/pseudonyms
//
// then open http://127.0.0.1:8080/ and place an order. See
// docs/conversion-pixels.md.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "pixel-shop:", err)
		os.Exit(1)
	}
}

func run() error {
	listen := flag.String("listen", "127.0.0.1:8080", "the shop's address")
	lookupURL := flag.String("lookup-url", "http://127.0.0.1:8490/v1/pseudonyms", "the pseudonymizer's lookup API")
	ga := flag.String("ga-system", "google-analytics", "the pseudonymizer system of Google Analytics")
	meta := flag.String("meta-system", "meta", "the pseudonymizer system of Meta")
	tiktok := flag.String("tiktok-system", "tiktok", "the pseudonymizer system of TikTok")
	flag.Parse()
	token := os.Getenv("PIXEL_SHOP_TOKEN")
	if token == "" {
		return errors.New("set PIXEL_SHOP_TOKEN to a lookup API token (pseudonymizer lookup-token)")
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, nil))
	shop := NewShop(Config{
		LookupURL: *lookupURL, Token: token,
		Systems: Systems{GoogleAnalytics: *ga, Meta: *meta, TikTok: *tiktok},
		// A real shop publishes the order event to orders.raw here, in
		// the same transaction as it stores the order (an outbox).
		OnOrder: func(o Order) { log.Info("order placed; publish its event to orders.raw") },
		Log:     log,
	})
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	srv := &http.Server{Addr: *listen, Handler: shop, ReadHeaderTimeout: 5 * time.Second}
	go func() {
		<-ctx.Done()
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = srv.Shutdown(sctx)
	}()
	log.Info("pixel-shop listening", "addr", *listen)
	if err := srv.ListenAndServe(); !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}
