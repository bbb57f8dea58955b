package lookup

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/hygiene/pseudonymizer/processor/policy"
	"github.com/hygiene/pseudonymizer/processor/pseudonym"
	"github.com/hygiene/pseudonymizer/store"
)

// Store is what the lookup API needs of a key store: the order lane's
// Resolve and Guard (see store.KeyStore).
type Store interface {
	// Resolve returns the keys of the subjects, creating the missing ones.
	Resolve(ctx context.Context, lookups []store.Lookup) ([]store.Entry, error)
	// Guard excludes Forget until released and lists the subjects
	// forgotten since a position.
	Guard(ctx context.Context, since store.Position) (store.Guard, error)
}

// call is one request waiting for its answer.
type call struct {
	req      *Request
	done     chan answer // buffered: the batcher never waits for the handler
	released atomic.Bool // its answer was released
}

// answer is a call's response. release must be called once the response
// was written (or its writing failed): the batch holds the store guard
// until every answer of it is released.
type answer struct {
	status int
	body   []byte
	c      *call
	wg     *sync.WaitGroup // the batch's answers not yet released (nil: none)
}

// release marks the answer written (once; later calls do nothing).
func (a *answer) release() {
	if a.wg != nil && a.c.released.CompareAndSwap(false, true) {
		a.wg.Done()
	}
}

// subject is a cached subject: its prepared key (if it has one), its
// newest tombstone and its objection state (if it objects to any system).
type subject struct {
	id          idDigest
	hash        store.SubjectHash
	hasKey      bool
	pk          pseudonym.Key
	forgotten   bool
	forgottenMs int64
	objection   *store.Objection
}

// objected reports whether the subject objects to system for an event at
// at, as the stream decides (store.Objection.Objects).
func (s *subject) objected(system string, at time.Time) bool {
	return s.objection.Objects(system, at)
}

// suppresses reports whether an event at ms is at or before the subject's
// newest tombstone (as the stream's cache decides).
func (s *subject) suppresses(ms int64) bool { return s.forgotten && ms <= s.forgottenMs }

// needsKey reports whether an event at ms needs a key the subject does not
// have yet (store.NeedsKey in milliseconds).
func (s *subject) needsKey(ms int64) bool {
	return !s.hasKey && (!s.forgotten || ms > s.forgottenMs)
}

// idDigest is a keyed digest of a customer ID: the cache's key, so that
// it keeps no raw IDs and an entry's size does not depend on the ID's
// length.
type idDigest [16]byte

// digester computes idDigests under a random per-process secret. It is
// used by one goroutine (the batcher's).
type digester struct {
	secret [32]byte
	buf    []byte // secret || ID, wiped after each digest
}

func newDigester() *digester {
	var d digester
	if _, err := rand.Read(d.secret[:]); err != nil {
		panic("lookup: crypto/rand failed: " + err.Error())
	}
	return &d
}

func (d *digester) digest(id string) idDigest {
	d.buf = append(append(d.buf[:0], d.secret[:]...), id...)
	sum := sha256.Sum256(d.buf)
	clear(d.buf)
	var out idDigest
	copy(out[:], sum[:])
	return out
}

// cache holds subjects by a keyed digest of their ID, bounded; it is used
// by the batcher's goroutine only. Replaced and evicted subjects are wiped at the end of
// the batch that may still use them (retire).
type cache struct {
	max     int
	ids     *digester
	byID    map[idDigest]*subject
	byHash  map[store.SubjectHash]*subject
	retired []*subject
}

func newCache(max int) *cache {
	return &cache{max: max, ids: newDigester(), byID: map[idDigest]*subject{}, byHash: map[store.SubjectHash]*subject{}}
}

func (c *cache) get(id string) (*subject, bool) {
	s, ok := c.byID[c.ids.digest(id)]
	return s, ok
}

func (c *cache) put(s *subject) {
	if old, ok := c.byID[s.id]; ok {
		c.remove(old)
	}
	for len(c.byID) >= c.max {
		for _, old := range c.byID {
			c.remove(old)
			break
		}
	}
	c.byID[s.id] = s
	c.byHash[s.hash] = s
}

func (c *cache) remove(s *subject) {
	delete(c.byID, s.id)
	if c.byHash[s.hash] == s {
		delete(c.byHash, s.hash)
	}
	c.retired = append(c.retired, s)
}

func (c *cache) forget(h store.SubjectHash) {
	if s, ok := c.byHash[h]; ok {
		c.remove(s)
	}
}

func (c *cache) clear() {
	for _, s := range c.byID {
		c.remove(s)
	}
}

// wipeRetired overwrites the keys of the subjects removed so far.
func (c *cache) wipeRetired() {
	for _, s := range c.retired {
		s.pk.Wipe()
	}
	clear(c.retired)
	c.retired = c.retired[:0]
}

// batcher serves calls in batches, one batch at a time, on one goroutine:
// the calls that queued while the previous batch ran, or arrived within
// the window since it started, form the next one.
type batcher struct {
	plan      *policy.Plan
	systems   []string
	sysFields []map[string]bool // per system: the paths it pseudonymizes
	st        Store
	in        chan *call
	stopped   chan struct{}
	maxBatch  int
	window    time.Duration
	timeout   time.Duration
	cache     *cache
	pos       store.Position
	baselined bool
	d         *pseudonym.Deriver
	log       *slog.Logger
	m         *Metrics
	hits      prometheus.Counter
	misses    prometheus.Counter
	answerWG  sync.WaitGroup // the current batch's answers not yet released
}

// maxAttempts bounds how often a batch is redone because a forget
// destroyed a key it used; then its calls get 503.
const maxAttempts = 5

// errUnavailable answers a batch 503.
var errUnavailable = errors.New("lookup: the key store is unavailable")

func (b *batcher) run(ctx context.Context) {
	defer close(b.stopped)
	var last time.Time // when the previous batch started
	timer := time.NewTimer(time.Hour)
	timer.Stop()
	var calls []*call
	for {
		clear(calls)
		calls = calls[:0]
		select {
		case c := <-b.in:
			calls = append(calls, c)
		case <-ctx.Done():
			b.cache.clear()
			b.cache.wipeRetired()
			b.d.Reset()
			return
		}
		// At most one batch per window: under load, the calls of a window
		// share one guard and one Resolve; an idle API answers at once.
		// The batcher sleeps out the window rather than waking for each
		// call that arrives in it (they queue in b.in, which holds 4
		// batches); a full batch already queued is served at once.
		if wait := b.window - time.Since(last); wait > 0 && len(calls)+len(b.in) < b.maxBatch {
			timer.Reset(wait)
			select {
			case <-timer.C:
			case <-ctx.Done():
				timer.Stop()
			}
		}
	more:
		for len(calls) < b.maxBatch {
			select {
			case c := <-b.in:
				calls = append(calls, c)
			default:
				break more
			}
		}
		last = time.Now()
		b.serve(ctx, calls)
	}
}

// serve answers one batch: resolve, guard, derive and answer, wait for the
// answers to be written, release the guard (see doc.go).
func (b *batcher) serve(ctx context.Context, calls []*call) {
	b.m.BatchSize.Observe(float64(len(calls)))
	defer b.cache.wipeRetired()
	for attempt := 1; ; attempt++ {
		subs, g, err := b.prepare(ctx, calls)
		if err != nil {
			b.log.Warn("lookup batch failed; answering 503", "calls", len(calls), "err", err)
			b.fail(calls)
			return
		}
		if g == nil { // stale: a key the batch used was destroyed
			b.m.StaleBatches.Inc()
			if attempt < maxAttempts {
				continue
			}
			b.log.Warn("lookup batch stale too often; answering 503", "calls", len(calls))
			b.fail(calls)
			return
		}
		b.answer(ctx, calls, subs, g)
		return
	}
}

// fail answers every call 503.
func (b *batcher) fail(calls []*call) {
	for _, c := range calls {
		c.done <- answer{status: http.StatusServiceUnavailable, body: errorBody("the key store is unavailable; retry later")}
	}
}

// prepare finds each call's subject (cache, then one Resolve for the
// misses) and takes the guard. It returns a nil guard when the batch is
// stale: a forget that the guard lists destroyed a key it used.
func (b *batcher) prepare(ctx context.Context, calls []*call) ([]*subject, store.Guard, error) {
	if !b.baselined {
		// The forget-log position is read before any key is cached, so
		// every later forget is listed by some guard.
		g, err := b.guard(ctx, store.Position{})
		if err != nil {
			return nil, nil, err
		}
		b.pos = g.Position()
		if err := g.Release(context.WithoutCancel(ctx)); err != nil {
			b.log.Warn("releasing store guard", "err", err)
		}
		b.baselined = true
	}
	subs := make([]*subject, len(calls))
	var lookups []store.Lookup
	var pending map[string]int // customer ID -> index in lookups
	for i, c := range calls {
		id, at := c.req.CustomerID, c.req.OccurredAt
		if s, ok := b.cache.get(id); ok && !s.needsKey(at.UnixMilli()) {
			subs[i] = s
			b.hits.Inc()
			continue
		}
		b.misses.Inc()
		if pending == nil {
			pending = map[string]int{}
		}
		if j, ok := pending[id]; ok {
			if at.After(lookups[j].Latest) {
				lookups[j].Latest = at
			}
			continue
		}
		pending[id] = len(lookups)
		lookups = append(lookups, store.Lookup{SubjectID: id, Latest: at})
	}
	if len(lookups) > 0 {
		resolved, err := b.resolve(ctx, lookups)
		if err != nil {
			return nil, nil, err
		}
		for i, c := range calls {
			if subs[i] == nil {
				subs[i] = resolved[pending[c.req.CustomerID]]
			}
		}
	}
	g, err := b.guard(ctx, b.pos)
	if err != nil {
		return nil, nil, err
	}
	if b.invalidate(g, subs) {
		if err := g.Release(context.WithoutCancel(ctx)); err != nil {
			b.log.Warn("releasing store guard", "err", err)
		}
		return nil, nil, nil
	}
	return subs, g, nil
}

// resolve resolves lookups in one store call and caches the subjects.
func (b *batcher) resolve(ctx context.Context, lookups []store.Lookup) ([]*subject, error) {
	rctx, cancel := context.WithTimeout(ctx, b.timeout)
	defer cancel()
	t := time.Now()
	entries, err := b.st.Resolve(rctx, lookups)
	b.m.storeCall("resolve", t, err)
	if err != nil {
		return nil, fmt.Errorf("store resolve: %w", err)
	}
	if len(entries) != len(lookups) {
		return nil, fmt.Errorf("store resolve: %d entries for %d lookups", len(entries), len(lookups))
	}
	out := make([]*subject, len(entries))
	for j := range entries {
		e := &entries[j]
		s := &subject{id: b.cache.ids.digest(lookups[j].SubjectID), hash: e.Hash}
		if e.Key != nil {
			s.hasKey = true
			s.pk = b.d.Prepare(e.Key)
			clear(e.Key) // the cache keeps the prepared key only
		}
		if !e.ForgottenAt.IsZero() {
			s.forgotten, s.forgottenMs = true, e.ForgottenAt.UnixMilli()
		}
		if e.Objection.Active() {
			s.objection = e.Objection
		}
		b.cache.put(s)
		out[j] = s
	}
	return out, nil
}

func (b *batcher) guard(ctx context.Context, since store.Position) (store.Guard, error) {
	gctx, cancel := context.WithTimeout(ctx, b.timeout)
	defer cancel()
	t := time.Now()
	g, err := b.st.Guard(gctx, since)
	b.m.storeCall("guard", t, err)
	if err != nil {
		return nil, fmt.Errorf("store guard: %w", err)
	}
	return g, nil
}

// invalidate drops the subjects the guard lists as forgotten from the cache
// and reports whether the batch used one of them.
func (b *batcher) invalidate(g store.Guard, subs []*subject) (stale bool) {
	if g.Diverged() {
		b.log.Error("the key store's forget log was rewound (restored from a backup or recreated): the lookup API drops every cached key",
			"seen_seq", b.pos.Seq, "store_seq", g.Seq())
	}
	if !g.Complete() {
		b.cache.clear()
		stale = len(subs) > 0
	}
	if forgotten := g.Forgotten(); len(forgotten) > 0 {
		used := make(map[store.SubjectHash]bool, len(subs))
		for _, s := range subs {
			used[s.hash] = true
		}
		for _, h := range forgotten {
			b.cache.forget(h)
			if used[h] {
				stale = true
			}
		}
	}
	b.pos = g.Position()
	return stale
}

// answer derives and hands out the batch's answers under g, waits until
// every one was written, and releases g.
func (b *batcher) answer(ctx context.Context, calls []*call, subs []*subject, g store.Guard) {
	wg := &b.answerWG
	defer func() {
		wg.Wait()
		if err := g.Release(context.WithoutCancel(ctx)); err != nil {
			// A lost PostgreSQL guard: Forget waits 30s after it sees the
			// connection gone, far longer than an answer's write may take
			// (see doc.go).
			b.m.GuardLost.Inc()
			b.log.Warn("lookup: store guard lost while answering", "err", err)
		}
	}()
	answers := make([]answer, len(calls))
	for i, c := range calls {
		s, ms := subs[i], c.req.OccurredAt.UnixMilli()
		switch {
		case s.suppresses(ms):
			answers[i] = answer{status: http.StatusGone, body: statusBody("suppressed")}
		case !s.hasKey:
			b.log.Error("lookup: store resolve returned no key for a subject that needs one")
			answers[i] = answer{status: http.StatusServiceUnavailable, body: errorBody("the key store is unavailable; retry later")}
		case b.objectsAll(c.req, s):
			b.m.Objected.Add(float64(len(c.req.Systems)))
			answers[i] = answer{status: http.StatusGone, body: statusBody("objected")}
		}
	}
	for i, c := range calls {
		if answers[i].status == 0 {
			answers[i] = answer{status: http.StatusOK, body: b.render(c.req, subs[i])}
		}
	}
	wg.Add(len(calls))
	for i, c := range calls {
		a := answers[i]
		a.c, a.wg = c, wg
		c.done <- a
	}
}

// objectsAll reports whether the subject objects to every system r asks
// for at r's occurred_at.
func (b *batcher) objectsAll(r *Request, s *subject) bool {
	if s.objection == nil {
		return false
	}
	for _, sys := range r.Systems {
		if !s.objected(b.systems[sys], r.OccurredAt) {
			return false
		}
	}
	return true
}

// render writes the 200 body: each requested system's pseudonyms of the
// customer and of the values its policy pseudonymizes, as the stream
// derives them. Systems the subject objects to at r's occurred_at get no
// pseudonyms (the stream sends them nothing) and are listed in "objected".
func (b *batcher) render(r *Request, s *subject) []byte {
	buf := make([]byte, 0, 32+len(r.Systems)*(64+len(r.Values)*64))
	buf = append(buf, `{"pseudonyms":{`...)
	id := []byte(r.CustomerID)
	var objected []string
	first := true
	for _, sys := range r.Systems {
		if s.objected(b.systems[sys], r.OccurredAt) {
			objected = append(objected, b.systems[sys])
			continue
		}
		if !first {
			buf = append(buf, ',')
		}
		first = false
		buf = appendJSONString(buf, b.systems[sys])
		buf = append(buf, `:{"customer_id":"`...)
		buf = b.plan.SubjectPseudonymKey(buf, sys, &s.pk, id, b.d)
		buf = append(buf, '"')
		for _, v := range r.Values {
			if !b.sysFields[sys][v.Field.Path] {
				continue
			}
			buf = append(buf, ',')
			buf = appendJSONString(buf, v.Field.Path)
			buf = append(buf, `:"`...)
			if v.Field.Kind == policy.KindString {
				buf = b.plan.AppendStringPseudonym(buf, sys, v.Field.Path, &s.pk, v.Str, b.d)
			} else {
				buf = b.plan.AppendIntPseudonym(buf, sys, v.Field.Path, &s.pk, v.Int, b.d)
			}
			buf = append(buf, '"')
		}
		buf = append(buf, '}')
	}
	buf = append(buf, '}')
	if len(objected) > 0 {
		b.m.Objected.Add(float64(len(objected)))
		buf = append(buf, `,"objected":[`...)
		for k, name := range objected {
			if k > 0 {
				buf = append(buf, ',')
			}
			buf = appendJSONString(buf, name)
		}
		buf = append(buf, ']')
	}
	return append(buf, "}\n"...)
}
