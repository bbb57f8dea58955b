package policy

import "fmt"

// Examples returns the example systems: google-analytics, meta, tiktok
// and crm, in that order. They are the demo's systems, the benchmark takes
// the first N, and tests use them; each call returns fresh slices.
func Examples() []Policy {
	return []Policy{
		{System: "google-analytics", Keep: []string{"event_type", "occurred_at", "currency", "total_minor", "items", "attributes.utm_source"}, Pseudonymize: []string{"event_id", "order_id", "customer_id"}},
		{System: "meta", Keep: []string{"event_type", "occurred_at", "currency", "total_minor", "shipping_address.country"}, Pseudonymize: []string{"event_id", "order_id", "customer_id"}},
		{System: "tiktok", Keep: []string{"event_type", "occurred_at", "currency", "total_minor", "attributes.utm_campaign"}, Pseudonymize: []string{"event_id", "order_id", "customer_id"}},
		{System: "crm", Keep: []string{"event_type", "occurred_at", "currency", "total_minor", "items", "shipping_address.city", "shipping_address.country"}, Pseudonymize: []string{"order_id", "customer_id"}},
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
