package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"html/template"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"time"
)

// Systems names the pseudonymizer systems of the three vendors.
type Systems struct {
	GoogleAnalytics, Meta, TikTok string
}

// Config configures a Shop.
type Config struct {
	// LookupURL is the lookup API's endpoint (…/v1/pseudonyms).
	LookupURL string
	// Token is the shop's bearer token; it stays on the server.
	Token string
	// Client calls the lookup API (default: a client with a 2s timeout).
	Client *http.Client
	// Systems are the vendors' systems in the pseudonymizer.
	Systems Systems
	// OnOrder is called when an order is placed: the shop publishes the
	// order's event to orders.raw.
	OnOrder func(Order)
	// Log, if nil, discards.
	Log *slog.Logger
}

// Order is a placed order, with its raw IDs: they stay on the server.
type Order struct {
	EventID    string
	OrderID    string
	CustomerID string
	OccurredAt time.Time
	Currency   string
	TotalMinor int64
}

// Call is one recorded call of a vendor's script.
type Call struct {
	Vendor string            `json:"vendor"`
	Args   []json.RawMessage `json:"args"`
}

// Shop is the example shop: an order form, the thank-you page with the
// pixels, the vendors' stand-in scripts and the calls they recorded.
type Shop struct {
	cfg    Config
	mux    *http.ServeMux
	mu     sync.Mutex
	orders map[string]Order // by checkout ID: the thank-you page's opaque name
	calls  []Call
}

// NewShop returns a Shop.
func NewShop(cfg Config) *Shop {
	if cfg.Client == nil {
		cfg.Client = &http.Client{Timeout: 2 * time.Second}
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	s := &Shop{cfg: cfg, mux: http.NewServeMux(), orders: map[string]Order{}}
	s.mux.HandleFunc("GET /{$}", s.home)
	s.mux.HandleFunc("POST /checkout", s.checkout)
	s.mux.HandleFunc("GET /thank-you/{checkout}", s.thankYou)
	s.mux.HandleFunc("GET /vendor/{script}", s.vendorScript)
	s.mux.HandleFunc("POST /collect", s.collect)
	s.mux.HandleFunc("GET /calls", s.listCalls)
	return s
}

func (s *Shop) ServeHTTP(w http.ResponseWriter, r *http.Request) { s.mux.ServeHTTP(w, r) }

// Place records an order and returns its checkout ID, a random name for
// its thank-you page that carries no raw ID.
func (s *Shop) Place(o Order) string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	id := hex.EncodeToString(b[:])
	s.mu.Lock()
	s.orders[id] = o
	s.mu.Unlock()
	if s.cfg.OnOrder != nil {
		s.cfg.OnOrder(o)
	}
	return id
}

// Calls returns the vendor calls recorded so far.
func (s *Shop) Calls() []Call {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]Call(nil), s.calls...)
}

var homePage = template.Must(template.New("home").Parse(`<!doctype html>
<html><head><meta charset="utf-8"><title>Pixel shop</title></head>
<body><h1>Pixel shop</h1>
<form method="post" action="/checkout">
<label>Customer <input name="customer_id" value="customer-42"></label>
<label>Total (cents) <input name="total_minor" value="4999"></label>
<button>Buy</button></form></body></html>`))

func (s *Shop) home(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	_ = homePage.Execute(w, nil)
}

// checkout places an order from the form (in a real shop: the logged-in
// customer and the cart) and redirects to its thank-you page.
func (s *Shop) checkout(w http.ResponseWriter, r *http.Request) {
	customer := r.FormValue("customer_id")
	if customer == "" {
		http.Error(w, "customer_id is required", http.StatusBadRequest)
		return
	}
	var total int64
	_, _ = fmt.Sscan(r.FormValue("total_minor"), &total)
	id := s.Place(Order{
		EventID: newID(), OrderID: "order-" + newID()[:8], CustomerID: customer,
		OccurredAt: time.Now().UTC().Truncate(time.Millisecond), Currency: "EUR", TotalMinor: total,
	})
	http.Redirect(w, r, "/thank-you/"+id, http.StatusSeeOther)
}

func newID() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	h := hex.EncodeToString(b[:])
	return h[0:8] + "-" + h[8:12] + "-" + h[12:16] + "-" + h[16:20] + "-" + h[20:]
}

// pixels is what the thank-you page renders: pseudonyms only.
type pixels struct {
	Value         float64
	Currency      string
	TransactionID string // Google Analytics: the order_id pseudonym
	MetaEventID   string // Meta: the event_id pseudonym
	TikTokEventID string // TikTok: the event_id pseudonym
}

var thankYouPage = template.Must(template.New("thanks").Parse(`<!doctype html>
<html><head><meta charset="utf-8"><title>Thank you</title>
{{if .}}{{if .TransactionID}}<script src="/vendor/gtag.js"></script>{{end}}
{{if .MetaEventID}}<script src="/vendor/fbevents.js"></script>{{end}}
{{if .TikTokEventID}}<script src="/vendor/ttq.js"></script>{{end}}{{end}}
</head><body><h1>Thank you for your order</h1>
{{if .}}<script>
{{if .TransactionID}}gtag('event', 'purchase', {transaction_id: {{.TransactionID}}, value: {{.Value}}, currency: {{.Currency}}});{{end}}
{{if .MetaEventID}}fbq('track', 'Purchase', {value: {{.Value}}, currency: {{.Currency}}}, {eventID: {{.MetaEventID}}});{{end}}
{{if .TikTokEventID}}ttq.track('CompletePayment', {value: {{.Value}}, currency: {{.Currency}}}, {event_id: {{.TikTokEventID}}});{{end}}
</script>{{end}}
</body></html>`))

// thankYou renders the thank-you page of a checkout, with the pixel of
// each system the lookup API answered for. Without pseudonyms (the lookup
// API refuses, 410 included, or is down) it renders no pixels: never raw
// IDs.
func (s *Shop) thankYou(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	o, ok := s.orders[r.PathValue("checkout")]
	s.mu.Unlock()
	if !ok {
		http.NotFound(w, r)
		return
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	p, err := s.lookup(r.Context(), o)
	if err != nil {
		s.cfg.Log.Warn("no pseudonyms for the pixels; rendering none", "err", err)
		_ = thankYouPage.Execute(w, nil)
		return
	}
	_ = thankYouPage.Execute(w, p)
}

// lookup asks the lookup API for the order's pseudonyms.
func (s *Shop) lookup(ctx context.Context, o Order) (*pixels, error) {
	sys := s.cfg.Systems
	body, err := json.Marshal(map[string]any{
		"customer_id": o.CustomerID,
		"occurred_at": o.OccurredAt.Format(time.RFC3339Nano),
		"values":      map[string]string{"order_id": o.OrderID, "event_id": o.EventID},
		"systems":     []string{sys.GoogleAnalytics, sys.Meta, sys.TikTok},
	})
	if err != nil {
		return nil, err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, s.cfg.LookupURL, bytes.NewReader(body))
	if err != nil {
		return nil, fmt.Errorf("lookup: %w", err)
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Authorization", "Bearer "+s.cfg.Token)
	resp, err := s.cfg.Client.Do(req)
	if err != nil {
		return nil, fmt.Errorf("lookup: %w", err)
	}
	defer resp.Body.Close()
	rb, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return nil, fmt.Errorf("lookup: %w", err)
	}
	if resp.StatusCode != http.StatusOK {
		// The API's messages never carry raw values.
		return nil, fmt.Errorf("lookup: %s: %s", resp.Status, strings.TrimSpace(string(rb)))
	}
	// A system the customer objects to is left out of "pseudonyms" (and
	// listed under "objected"): its pixel does not fire.
	var out struct {
		Pseudonyms map[string]map[string]string `json:"pseudonyms"`
		Objected   []string                     `json:"objected"`
	}
	if err := json.Unmarshal(rb, &out); err != nil {
		return nil, fmt.Errorf("lookup: %w", err)
	}
	ps := out.Pseudonyms
	p := &pixels{
		Value: float64(o.TotalMinor) / 100, Currency: o.Currency,
		TransactionID: ps[sys.GoogleAnalytics]["order_id"],
		MetaEventID:   ps[sys.Meta]["event_id"],
		TikTokEventID: ps[sys.TikTok]["event_id"],
	}
	for name, id := range map[string]string{sys.GoogleAnalytics: p.TransactionID, sys.Meta: p.MetaEventID, sys.TikTok: p.TikTokEventID} {
		if _, answered := ps[name]; answered && id == "" {
			return nil, fmt.Errorf("lookup: the policy of %s does not pseudonymize the field its pixel needs", name)
		}
	}
	return p, nil
}

// The vendors' scripts, stand-ins that record each call with the shop
// (synchronously, so that a call is recorded before the page's load
// event).
const recorder = `function __record(vendor, args) {
  var x = new XMLHttpRequest();
  x.open('POST', '/collect', false);
  x.setRequestHeader('Content-Type', 'application/json');
  x.send(JSON.stringify({vendor: vendor, args: Array.prototype.slice.call(args)}));
}
`

var vendorScripts = map[string]string{
	"gtag.js":     recorder + "window.dataLayer = window.dataLayer || [];\nwindow.gtag = function() { dataLayer.push(arguments); __record('gtag', arguments); };\n",
	"fbevents.js": recorder + "window.fbq = function() { __record('fbq', arguments); };\n",
	"ttq.js":      recorder + "window.ttq = {track: function() { __record('ttq', arguments); }};\n",
}

func (s *Shop) vendorScript(w http.ResponseWriter, r *http.Request) {
	js, ok := vendorScripts[r.PathValue("script")]
	if !ok {
		http.NotFound(w, r)
		return
	}
	w.Header().Set("Content-Type", "text/javascript; charset=utf-8")
	_, _ = io.WriteString(w, js)
}

// collect records one vendor call.
func (s *Shop) collect(w http.ResponseWriter, r *http.Request) {
	var c Call
	if err := json.NewDecoder(io.LimitReader(r.Body, 64<<10)).Decode(&c); err != nil {
		http.Error(w, "bad call", http.StatusBadRequest)
		return
	}
	s.mu.Lock()
	s.calls = append(s.calls, c)
	s.mu.Unlock()
	w.WriteHeader(http.StatusNoContent)
}

func (s *Shop) listCalls(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(s.Calls())
}
