package policy

import "fmt"

// Examples returns the example systems: google-analytics, meta, tiktok
// and crm, in that order. They are the demo's systems, the benchmark takes
// the first N, and tests use them; each call returns fresh slices.
//
// They keep no per-event value in common at a precision that joins two
// systems' customers: times are truncated (1h; 1d for the CRM), only
// google-analytics receives an amount (rounded to 10.00), and no two
// systems receive fields one can derive from the other's (the CRM's city
// would give meta's country, its line items a total). On the demo's data
// (1,000 customers with 3 orders each) no pair joins more than 5% of the
// customers (internal/linkability, processor/linkability_test.go).
func Examples() []Policy {
	hour := Generalization{Truncate: "1h"}
	return []Policy{
		{System: "google-analytics", Keep: []string{"event_type", "occurred_at", "currency", "total_minor", "attributes.utm_source"},
			Pseudonymize: []string{"event_id", "order_id", "customer_id"},
			Generalize:   map[string]Generalization{"occurred_at": hour, "total_minor": {Round: 1000}}},
		{System: "meta", Keep: []string{"event_type", "occurred_at", "currency"},
			Pseudonymize: []string{"event_id", "order_id", "customer_id"},
			Generalize:   map[string]Generalization{"occurred_at": hour}},
		{System: "tiktok", Keep: []string{"event_type", "occurred_at", "attributes.utm_campaign"},
			Pseudonymize: []string{"event_id", "order_id", "customer_id"},
			Generalize:   map[string]Generalization{"occurred_at": hour}},
		{System: "crm", Keep: []string{"event_type", "occurred_at", "items.sku", "items.quantity", "shipping_address.city", "shipping_address.country"},
			Pseudonymize: []string{"order_id", "customer_id"},
			Generalize:   map[string]Generalization{"occurred_at": {Truncate: "1d"}}},
	}
}

// Example returns the example policy of system (see Examples); it panics
// if there is none.
func Example(system string) Policy {
	for _, p := range Examples() {
		if p.System == system {
			return p
		}
	}
	panic(fmt.Sprintf("policy: no example system %q", system))
}
