package processor

import (
	"github.com/prometheus/client_golang/prometheus"
)

// Metrics are the processor's Prometheus metrics. Labels carry system names,
// error classes and statuses only, never identifiers.
type Metrics struct {
	RecordsIn       *prometheus.CounterVec
	RecordsOut      *prometheus.CounterVec
	DeadLetters     *prometheus.CounterVec
	Suppressed      prometheus.Counter
	Forgets         *prometheus.CounterVec
	ForgetLatency   prometheus.Histogram
	BatchDuration   prometheus.Histogram
	CommitDuration  prometheus.Histogram
	Batches         *prometheus.CounterVec
	StoreRoundTrips *prometheus.CounterVec
	StoreLatency    *prometheus.HistogramVec
	CacheHits       prometheus.Counter
	CacheMisses     prometheus.Counter
	CachedSubjects  prometheus.Gauge
	Ready           prometheus.Gauge
	GuardLost       prometheus.Counter
	StoreRewound    prometheus.Counter
	ConsumerLag     *prometheus.GaugeVec
	ErasureNotices  *prometheus.CounterVec
	RetainedKeys    prometheus.Gauge
	SettleErrors    prometheus.Counter
	// ObjectedEvents counts, per system, the events not sent to it because
	// their subject objects; Objections the objection states confirmed,
	// by status (APPLIED, UNKNOWN_SUBJECT, SUPERSEDED).
	ObjectedEvents *prometheus.CounterVec
	Objections     *prometheus.CounterVec
	PIIDetected    *prometheus.CounterVec
	PIIDropped     *prometheus.CounterVec
	PIIQuarantined prometheus.Counter
}

// NewMetrics creates the metrics and registers them with reg (if not nil).
func NewMetrics(reg prometheus.Registerer) *Metrics {
	const ns = "pseudonymizer"
	buckets := prometheus.ExponentialBuckets(0.0005, 2, 16) // 0.5ms .. ~16s
	m := &Metrics{
		RecordsIn: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Name: "records_in_total",
			Help: "Records consumed and committed, by topic."}, []string{"topic"}),
		RecordsOut: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Name: "records_out_total",
			Help: "Pseudonymized records committed, by system."}, []string{"system"}),
		DeadLetters: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Name: "dead_letters_total",
			Help: "Records committed to a dead-letter topic, by source topic and error class."}, []string{"topic", "class"}),
		Suppressed: prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Name: "suppressed_events_total",
			Help: "Order events of forgotten subjects that occurred at or before the forget request, not emitted."}),
		Forgets: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Name: "forget_requests_total",
			Help: "Forget requests confirmed, by status."}, []string{"status"}),
		ForgetLatency: prometheus.NewHistogram(prometheus.HistogramOpts{Namespace: ns, Name: "forget_latency_seconds",
			Help: "From a forget request's record timestamp to the commit of its confirmation.", Buckets: buckets}),
		BatchDuration: prometheus.NewHistogram(prometheus.HistogramOpts{Namespace: ns, Name: "batch_duration_seconds",
			Help: "Processing time of one poll batch, from poll to the end of its transaction.", Buckets: buckets}),
		CommitDuration: prometheus.NewHistogram(prometheus.HistogramOpts{Namespace: ns, Name: "transaction_commit_seconds",
			Help: "Time to end (commit) one Kafka transaction.", Buckets: buckets}),
		Batches: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Name: "batches_total",
			Help: "Transactions ended, by outcome (committed, aborted, stale)."}, []string{"outcome"}),
		StoreRoundTrips: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Name: "store_calls_total",
			Help: "Key store calls, by operation."}, []string{"op"}),
		StoreLatency: prometheus.NewHistogramVec(prometheus.HistogramOpts{Namespace: ns, Name: "store_call_seconds",
			Help: "Key store call latency, by operation.", Buckets: buckets}, []string{"op"}),
		CacheHits: prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Name: "cache_hits_total",
			Help: "Order events whose subject key came from the in-memory cache."}),
		CacheMisses: prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Name: "cache_misses_total",
			Help: "Order events whose subject key had to be resolved in the store."}),
		CachedSubjects: prometheus.NewGauge(prometheus.GaugeOpts{Namespace: ns, Name: "cached_subjects",
			Help: "Subjects currently in the key cache."}),
		GuardLost: prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Name: "guard_lost_total",
			Help: "Batches committed although the store guard was lost during the commit (see processor/doc.go)."}),
		StoreRewound: prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Name: "store_rewound_total",
			Help: "Guards that found the key store's forget log rewound (restored from a backup, or recreated); each dropped the whole key cache."}),
		Ready: prometheus.NewGauge(prometheus.GaugeOpts{Namespace: ns, Name: "ready",
			Help: "1 when the group is joined and the store reachable."}),
		ConsumerLag: prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: ns, Name: "consumer_lag",
			Help: "Records between the committed position and the high watermark, by topic and partition."}, []string{"topic", "partition"}),
		ObjectedEvents: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Name: "objected_events_total",
			Help: "Order events not sent to a system because the customer objects to it (at or after the objection's effective_at), by system."}, []string{"system"}),
		Objections: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Name: "objection_states_total",
			Help: "Objection states confirmed, by status (APPLIED, UNKNOWN_SUBJECT, SUPERSEDED: a newer state or a forget was already recorded)."}, []string{"status"}),
		ErasureNotices: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Name: "erasure_notices_total",
			Help: "Erasure notices (tombstones) committed, by system."}, []string{"system"}),
		RetainedKeys: prometheus.NewGauge(prometheus.GaugeOpts{Namespace: ns, Name: "retained_forget_keys",
			Help: "Destroyed keys the store still retains for erasure notices, as of this instance's last sweep (see processor/notices.go)."}),
		SettleErrors: prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Name: "settle_errors_total",
			Help: "Failed releases of retained keys after a commit or in a sweep; a later sweep releases them."}),
		PIIDetected: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Name: "pii_detected_total",
			Help: "Identifying data the PII guard found inside kept fields, by system, field (schema path) and kind; one per event, system, field and kind."}, []string{"system", "field", "kind"}),
		PIIDropped: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Name: "pii_dropped_total",
			Help: "Events a system (pii: drop) did not get because the PII guard found identifying data in a field it keeps."}, []string{"system"}),
		PIIQuarantined: prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Name: "pii_quarantined_total",
			Help: "Original records committed to the PII quarantine topic."}),
	}
	if reg != nil {
		reg.MustRegister(m.RecordsIn, m.RecordsOut, m.DeadLetters, m.Suppressed, m.Forgets, m.ForgetLatency,
			m.BatchDuration, m.CommitDuration, m.Batches, m.StoreRoundTrips, m.StoreLatency, m.CacheHits,
			m.CacheMisses, m.CachedSubjects, m.Ready, m.GuardLost, m.StoreRewound, m.ConsumerLag,
			m.ErasureNotices, m.RetainedKeys, m.SettleErrors, m.ObjectedEvents, m.Objections, m.PIIDetected, m.PIIDropped, m.PIIQuarantined)
	}
	return m
}
