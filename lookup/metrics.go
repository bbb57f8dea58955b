package lookup

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Metrics are the lookup API's Prometheus metrics. Labels carry token
// names, configured system names and status codes only: nothing a caller
// sent.
type Metrics struct {
	Requests     *prometheus.CounterVec
	Latency      *prometheus.HistogramVec
	BatchSize    prometheus.Histogram
	Cache        *prometheus.CounterVec
	StaleBatches prometheus.Counter
	GuardLost    prometheus.Counter
	Objected     prometheus.Counter
	StoreLatency *prometheus.HistogramVec
}

// NewMetrics creates the metrics and registers them with reg (if not nil).
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		Requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "pseudonymizer_lookup_requests_total",
			Help: "Lookup API requests, by token name, requested system (\"-\" when none is known) and HTTP status code; a request for several systems counts once per system.",
		}, []string{"token", "system", "code"}),
		Latency: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "pseudonymizer_lookup_request_duration_seconds",
			Help:    "Lookup API request latency from the request's arrival to its response written, by HTTP status code.",
			Buckets: []float64{.0005, .001, .002, .005, .01, .025, .05, .1, .25, .5, 1, 5},
		}, []string{"code"}),
		BatchSize: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "pseudonymizer_lookup_batch_size",
			Help:    "Lookups served together under one store guard (and at most one Resolve).",
			Buckets: prometheus.ExponentialBuckets(1, 4, 7),
		}),
		Cache: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "pseudonymizer_lookup_cache_total",
			Help: "Lookups answered from the lookup API's key cache (hit) or resolved in the store (miss).",
		}, []string{"result"}),
		StaleBatches: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "pseudonymizer_lookup_stale_batches_total",
			Help: "Lookup batches redone because a forget destroyed a key they used before they answered.",
		}),
		GuardLost: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "pseudonymizer_lookup_guard_lost_total",
			Help: "Lookup batches whose store guard was lost while they answered.",
		}),
		Objected: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "pseudonymizer_lookup_objected_total",
			Help: "Systems left out of lookup answers because the customer objects to them.",
		}),
		StoreLatency: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "pseudonymizer_lookup_store_duration_seconds",
			Help:    "Key store calls of the lookup API, by operation (resolve, guard) and result.",
			Buckets: []float64{.0002, .0005, .001, .002, .005, .01, .025, .05, .1, .5, 1, 5},
		}, []string{"op", "result"}),
	}
	if reg != nil {
		reg.MustRegister(m.Requests, m.Latency, m.BatchSize, m.Cache, m.StaleBatches, m.GuardLost, m.Objected, m.StoreLatency)
	}
	return m
}

func (m *Metrics) storeCall(op string, start time.Time, err error) {
	res := "ok"
	if err != nil {
		res = "error"
	}
	m.StoreLatency.WithLabelValues(op, res).Observe(time.Since(start).Seconds())
}
