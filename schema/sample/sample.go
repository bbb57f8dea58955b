// Package sample generates realistic, deterministic order events for the
// demo, tests and benchmarks. Every identifier it makes is recognisable
// (customer IDs "cust-…", order IDs "ord-…", e-mail addresses at
// example.com), so tests can scan outputs for leaks.
package sample

import (
	"fmt"
	"math/rand/v2"
	"time"

	"github.com/hygiene/pseudonymizer/schema"
)

// Generator makes order events for a fixed population of customers. It is
// not safe for concurrent use.
type Generator struct {
	rng       *rand.Rand
	customers int
	start     time.Time
	seq       int
	orders    map[string][]string // customer -> order IDs, to reuse for updates and refunds
}

// New returns a generator of events for customers customers, seeded for
// reproducibility, with timestamps from start on.
func New(seed uint64, customers int, start time.Time) *Generator {
	if customers < 1 {
		customers = 1
	}
	return &Generator{
		rng:       rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15)),
		customers: customers,
		start:     start.Truncate(time.Millisecond),
		orders:    map[string][]string{},
	}
}

// CustomerID returns the ID of customer i (0-based).
func CustomerID(i int) string { return fmt.Sprintf("cust-%06d", 100000+i) }

// Email returns the e-mail address of customer id.
func Email(id string) string { return "shopper." + id + "@example.com" }

var (
	firstLines = []string{"Hauptstraße 5", "12 Rue de Rivoli", "221B Baker Street", "Kalverstraat 92", "Via Roma 1", "Calle Mayor 7"}
	cities     = []string{"Berlin", "Paris", "London", "Amsterdam", "Rome", "Madrid"}
	countries  = []string{"DE", "FR", "GB", "NL", "IT", "ES"}
	currencies = []string{"EUR", "EUR", "GBP", "EUR", "EUR", "EUR"}
	sources    = []string{"google", "newsletter", "tiktok", "instagram", "direct"}
	campaigns  = []string{"black-friday", "spring-sale", "retargeting", "brand"}
	userAgents = []string{
		"Mozilla/5.0 (iPhone; CPU iPhone OS 18_1 like Mac OS X) AppleWebKit/605.1.15 Mobile/15E148",
		"Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 Chrome/131.0 Safari/537.36",
		"Mozilla/5.0 (Linux; Android 15; Pixel 9) AppleWebKit/537.36 Chrome/131.0 Mobile Safari/537.36",
	}
	skus = []string{"SKU-TSHIRT-M", "SKU-JEANS-32", "SKU-SNEAKER-42", "SKU-MUG", "SKU-POSTER-A2", "SKU-SOCKS-3P"}
)

// Next returns the next event: mostly new orders (PLACED), sometimes an
// update, cancellation or refund of an earlier order of the same customer.
func (g *Generator) Next() *schema.OrderEvent {
	c := g.rng.IntN(g.customers)
	return g.ForCustomer(c)
}

// ForCustomer returns the next event of customer c.
func (g *Generator) ForCustomer(c int) *schema.OrderEvent {
	g.seq++
	id := CustomerID(c)
	at := g.start.Add(time.Duration(g.seq) * time.Second)
	typ := schema.Placed
	var orderID string
	if prev := g.orders[id]; len(prev) > 0 && g.rng.IntN(4) == 0 {
		orderID = prev[g.rng.IntN(len(prev))]
		typ = []string{schema.Updated, schema.Cancelled, schema.Refunded}[g.rng.IntN(3)]
	} else {
		orderID = fmt.Sprintf("ord-%08d", 10000000+g.seq)
		g.orders[id] = append(g.orders[id], orderID)
	}
	loc := c % len(cities)
	e := &schema.OrderEvent{
		EventID:    g.uuid(),
		EventType:  typ,
		OccurredAt: at,
		OrderID:    orderID,
		CustomerID: id,
		Currency:   currencies[loc],
		Attributes: map[string]string{
			"utm_source":   sources[g.rng.IntN(len(sources))],
			"utm_campaign": campaigns[g.rng.IntN(len(campaigns))],
			"gclid":        fmt.Sprintf("Cj0KCQiA%016x", g.rng.Uint64()),
			"landing_page": "https://shop.example.com/" + campaigns[g.rng.IntN(len(campaigns))] + "?ref=" + sources[g.rng.IntN(len(sources))],
			"user_agent":   userAgents[g.rng.IntN(len(userAgents))],
		},
	}
	email := Email(id)
	e.Email = &email
	if c%3 != 0 {
		phone := fmt.Sprintf("+49 151 %08d", 10000000+c)
		e.Phone = &phone
	}
	if c%5 != 4 {
		e.ShippingAddress = &schema.Address{Line1: firstLines[loc], PostalCode: fmt.Sprintf("%s-%05d", countries[loc], 10000+c%89999), City: cities[loc], Country: countries[loc]}
	}
	n := 1 + g.rng.IntN(4)
	for i := 0; i < n; i++ {
		it := schema.LineItem{SKU: skus[g.rng.IntN(len(skus))], Quantity: int32(1 + g.rng.IntN(3)), UnitPriceMinor: int64(499 + g.rng.IntN(9500))}
		e.Items = append(e.Items, it)
		e.TotalMinor += int64(it.Quantity) * it.UnitPriceMinor
	}
	return e
}

// uuid returns a version 4 UUID from the generator's random source.
func (g *Generator) uuid() string {
	var b [16]byte
	for i := 0; i < 16; i += 8 {
		v := g.rng.Uint64()
		for j := 0; j < 8; j++ {
			b[i+j] = byte(v >> (8 * j))
		}
	}
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:16])
}

// RawIdentifiers returns the values of e that must never reach a marketing
// system unless its policy keeps them: IDs and personal data.
func RawIdentifiers(e *schema.OrderEvent) []string {
	out := []string{e.EventID, e.OrderID, e.CustomerID}
	if e.Email != nil {
		out = append(out, *e.Email)
	}
	if e.Phone != nil {
		out = append(out, *e.Phone)
	}
	if a := e.ShippingAddress; a != nil {
		out = append(out, a.Line1, a.PostalCode)
	}
	if v, ok := e.Attributes["gclid"]; ok {
		out = append(out, v)
	}
	return out
}
