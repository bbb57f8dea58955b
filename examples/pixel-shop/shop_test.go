package main

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/hamba/avro/v2"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/hygiene/pseudonymizer/internal/kafkatest"
	"github.com/hygiene/pseudonymizer/lookup"
	"github.com/hygiene/pseudonymizer/processor"
	"github.com/hygiene/pseudonymizer/processor/policy"
	"github.com/hygiene/pseudonymizer/schema"
	"github.com/hygiene/pseudonymizer/store/embedded"
	"github.com/hygiene/pseudonymizer/store/storetest"
)

// chromiumPath is Debian's chromium.
const chromiumPath = "/usr/bin/chromium"

// requireChromium is set in CI: a missing browser fails the test there.
const requireChromium = "PSEUDONYMIZER_REQUIRE_CHROMIUM"

func mustChromium(t *testing.T) string {
	t.Helper()
	if _, err := os.Stat(chromiumPath); err != nil {
		if os.Getenv(requireChromium) == "1" {
			t.Fatalf("%s is missing and %s=1: apt-get install -y chromium", chromiumPath, requireChromium)
		}
		t.Skipf("%s is missing (apt-get install -y chromium); set %s=1 to make this a failure", chromiumPath, requireChromium)
	}
	return chromiumPath
}

// TestThankYouPageInChromium: the example shop's thank-you page, opened in
// headless Chromium, calls gtag, fbq and ttq with exactly the pseudonyms
// the stream gives the order on Google Analytics', Meta's and TikTok's
// output topics, and no raw ID appears anywhere in the page.
func TestThankYouPageInChromium(t *testing.T) {
	browser := mustChromium(t)

	// The service: Kafka, a key store, the processor and the lookup API.
	kc := kafkatest.New(t)
	d := processor.DefaultTopics()
	topics := processor.Topics{
		Orders: kc.Topic(d.Orders), Forget: kc.Topic(d.Forget), Forgotten: kc.Topic(d.Forgotten),
		OrdersDeadLetter: kc.Topic(d.OrdersDeadLetter), ForgetDeadLetter: kc.Topic(d.ForgetDeadLetter),
		PseudoPrefix: kc.Topic(d.PseudoPrefix),
	}
	kc.CreateTopics(t, 3, nil, topics.Orders, topics.Forget)
	pols := policy.Examples()
	plan, err := policy.Compile(schema.OrderEventSchema(), pols)
	if err != nil {
		t.Fatal(err)
	}
	st, err := embedded.Open(filepath.Join(t.TempDir(), "keys.db"), storetest.MustKeyring(t, storetest.MustKEK(t, 1)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	proc, err := processor.New(processor.Config{
		Topics: topics, Policies: pols, Plan: plan, Store: st,
		Kafka:   []kgo.Opt{kgo.SeedBrokers(kc.Brokers()...), kafkatest.FastMetadata()},
		GroupID: kc.Group("pseudonymizer"), TransactionalID: kc.TxnID("pixel-shop"),
		TransactionTimeout: 10 * time.Second, SessionTimeout: 6 * time.Second, MaxBackoff: 2 * time.Second,
	})
	if err != nil {
		t.Fatal(err)
	}
	tctx, tcancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer tcancel()
	if err := proc.EnsureTopics(tctx, kc.Admin()); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	procDone := make(chan error, 1)
	go func() { procDone <- proc.Run(ctx) }()
	const token = "pzl_pixel-shop-test"
	sum := sha256.Sum256([]byte(token))
	api, err := lookup.New(lookup.Config{Plan: plan, Store: st, Tokens: []lookup.Token{{
		Name: "pixel-shop", SHA256: hex.EncodeToString(sum[:]), Systems: []string{"google-analytics", "meta", "tiktok"}, Rate: 100,
	}}})
	if err != nil {
		t.Fatal(err)
	}
	apiDone := make(chan struct{})
	go func() { defer close(apiDone); api.Run(ctx) }()
	apiTS := httptest.NewServer(api)
	t.Cleanup(func() {
		apiTS.Close()
		cancel()
		<-apiDone
		if err := <-procDone; err != nil {
			t.Errorf("processor: %v", err)
		}
	})

	// The shop publishes each order's event to orders.raw.
	shop := NewShop(Config{
		LookupURL: apiTS.URL + lookup.Path, Token: token,
		Systems: Systems{GoogleAnalytics: "google-analytics", Meta: "meta", TikTok: "tiktok"},
		OnOrder: func(o Order) {
			b, err := schema.MarshalOrderEvent(&schema.OrderEvent{
				EventID: o.EventID, EventType: "PLACED", OccurredAt: o.OccurredAt, OrderID: o.OrderID,
				CustomerID: o.CustomerID, Currency: o.Currency, TotalMinor: o.TotalMinor, Attributes: map[string]string{},
			})
			if err != nil {
				t.Error(err)
				return
			}
			kc.Produce(t, &kgo.Record{Topic: topics.Orders, Key: []byte(o.CustomerID), Value: b})
		},
	})
	shopTS := httptest.NewServer(shop)
	defer shopTS.Close()

	order := Order{
		EventID: "8c1d2e3f-4a5b-4c6d-8e7f-901234567890", OrderID: "ORDER-RAW-31337", CustomerID: "CUSTOMER-RAW-4242",
		OccurredAt: time.Now().UTC().Truncate(time.Millisecond), Currency: "EUR", TotalMinor: 4999,
	}
	checkout := shop.Place(order)
	pageURL := shopTS.URL + "/thank-you/" + checkout

	// The page as served, and as Chromium ran it.
	resp, err := http.Get(pageURL)
	if err != nil {
		t.Fatal(err)
	}
	served, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	bctx, bcancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer bcancel()
	cmd := exec.CommandContext(bctx, browser, "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
		"--no-first-run", "--user-data-dir="+t.TempDir(), "--dump-dom", pageURL)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	dom, err := cmd.Output()
	if err != nil {
		t.Fatalf("chromium: %v\n%s", err, stderr.String())
	}

	// Wait for the three recorded calls.
	var calls []Call
	deadline := time.Now().Add(30 * time.Second)
	for {
		calls = shop.Calls()
		if len(calls) >= 3 || time.Now().After(deadline) {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	got := map[string]string{}
	for _, c := range calls {
		got[c.Vendor] = pixelID(t, c)
	}
	if len(got) != 3 {
		t.Fatalf("recorded calls %v, want gtag, fbq and ttq (page: %s)", calls, dom)
	}

	// The stream's output for the order, per system.
	out := streamed(t, kc, plan, topics, []string{"google-analytics", "meta", "tiktok"})
	for _, c := range []struct{ vendor, system, field string }{
		{"gtag", "google-analytics", "order_id"},
		{"fbq", "meta", "event_id"},
		{"ttq", "tiktok", "event_id"},
	} {
		want, _ := out[c.system][c.field].(string)
		if want == "" || got[c.vendor] != want {
			t.Errorf("%s: the page sent %q, %s's output topic has %s %q", c.vendor, got[c.vendor], c.system, c.field, want)
		}
	}
	for _, page := range []struct {
		name string
		b    []byte
	}{{"served page", served}, {"page in the browser", dom}, {"recorded calls", mustJSON(t, calls)}} {
		for _, id := range []string{order.EventID, order.OrderID, order.CustomerID} {
			if strings.Contains(string(page.b), id) {
				t.Errorf("the %s contains a raw ID", page.name)
			}
		}
	}
}

// pixelID returns the deduplication ID of a recorded call: gtag's
// transaction_id (3rd argument), fbq's eventID and ttq's event_id (last
// argument).
func pixelID(t *testing.T, c Call) string {
	t.Helper()
	var m map[string]any
	switch c.Vendor {
	case "gtag":
		if len(c.Args) == 3 && json.Unmarshal(c.Args[2], &m) == nil {
			s, _ := m["transaction_id"].(string)
			return s
		}
	case "fbq":
		if len(c.Args) == 4 && json.Unmarshal(c.Args[3], &m) == nil {
			s, _ := m["eventID"].(string)
			return s
		}
	case "ttq":
		if len(c.Args) == 3 && json.Unmarshal(c.Args[2], &m) == nil {
			s, _ := m["event_id"].(string)
			return s
		}
	}
	t.Fatalf("unexpected call %s %s", c.Vendor, c.Args)
	return ""
}

// streamed waits for the order's output on each system's topic and
// returns it decoded.
func streamed(t *testing.T, kc *kafkatest.Cluster, plan *policy.Plan, topics processor.Topics, systems []string) map[string]map[string]any {
	t.Helper()
	var names []string
	for _, s := range systems {
		names = append(names, topics.PseudoPrefix+s)
	}
	recs := kc.AwaitCount(t, len(systems), 60*time.Second, names...)
	out := map[string]map[string]any{}
	for _, r := range recs {
		sys := strings.TrimPrefix(r.Topic, topics.PseudoPrefix)
		i := -1
		for j, s := range plan.Systems() {
			if s == sys {
				i = j
			}
		}
		var m map[string]any
		if err := avro.Unmarshal(plan.OutputSchema(i), r.Value, &m); err != nil {
			t.Fatalf("decode %s: %v", sys, err)
		}
		out[sys] = m
	}
	if len(out) != len(systems) {
		t.Fatalf("outputs of %d systems, want %d", len(out), len(systems))
	}
	return out
}

func mustJSON(t *testing.T, v any) []byte {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return b
}
