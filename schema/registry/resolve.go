package registry

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/hamba/avro/v2"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/twmb/franz-go/pkg/sr"

	"github.com/hygiene/pseudonymizer/schema"
	"github.com/hygiene/pseudonymizer/schema/avrowalk"
)

// headerLen is the length of the Confluent wire format header: magic byte
// 0 and a 4-byte big-endian schema ID.
const headerLen = 5

// notFoundTTL is how long an ID that the registry does not know is
// remembered as unknown before it is asked again. It outlives a batch's
// deadline plus its backoff (the transaction timeout, at most 15s, plus
// processing.max_backoff, 30s by default) many times over, so that a batch
// that is redone finds the answers its first attempt got.
const notFoundTTL = 5 * time.Minute

// maxNotFound bounds the IDs remembered as unknown (the least recently
// asked go first), about 100 bytes each: a flood of made-up IDs costs at
// most about 1.6 MiB.
const maxNotFound = 16_384

// maxLookupsPerBatch is the most schema IDs unknown to the cache that one
// batch looks up (Prefetch); records of the batch with other unknown IDs
// are dead-lettered as schema without asking. A legitimate batch has a
// handful of writer schemas; the bound keeps a flood of made-up IDs from
// making a batch's progress depend on how fast the registry answers.
const maxLookupsPerBatch = 64

// maxParallelLookups is the most registry requests one Prefetch has in
// flight: 64 lookups at 5ms each take 40ms, not 320ms.
const maxParallelLookups = 8

// maxRefDepth bounds the nesting of schema references.
const maxRefDepth = 8

// decodeAPI decodes bodies on the slow path. It bounds the elements of an
// array that one block header may announce (hamba/avro allocates them
// before reading them): records are at most a few MiB, so more is hostile.
var decodeAPI = avro.Config{MaxSliceAllocSize: 1 << 20}.Freeze()

// prefix returns the wire format header for schema ID id.
func prefix(id int) [headerLen]byte {
	var p [headerLen]byte
	binary.BigEndian.PutUint32(p[1:], uint32(id))
	return p
}

// splitHeader checks the wire format header of value and returns the
// schema ID and the Avro body.
func splitHeader(value []byte) (int, []byte, error) {
	switch {
	case len(value) < headerLen:
		return 0, nil, &schema.RecordError{Class: schema.ClassDecode, Reason: "shorter than the 5-byte Confluent wire format header"}
	case value[0] != 0:
		return 0, nil, &schema.RecordError{Class: schema.ClassDecode, Reason: "not the Confluent wire format: magic byte is not 0"}
	}
	return int(binary.BigEndian.Uint32(value[1:headerLen])), value[headerLen:], nil
}

// resolver fetches writer schemas by ID from the registry and caches them.
type resolver struct {
	cl  *sr.Client
	log *slog.Logger

	mu       sync.Mutex
	writers  map[int]*writer
	bad      map[int]*schema.RecordError // IDs whose schema is unusable for good
	notFound *expiringLRU                // IDs the registry did not know, until when
	now      func() time.Time
}

func newResolver(cl *sr.Client, log *slog.Logger) *resolver {
	return &resolver{
		cl:       cl,
		log:      log,
		writers:  map[int]*writer{},
		bad:      map[int]*schema.RecordError{},
		notFound: newExpiringLRU(maxNotFound),
		now:      time.Now,
	}
}

// known reports whether the answer for id is cached: a writer schema, an
// unusable one, or an unexpired "not found". The caller holds r.mu.
func (r *resolver) known(id int) bool {
	if _, ok := r.writers[id]; ok {
		return true
	}
	if _, ok := r.bad[id]; ok {
		return true
	}
	return r.notFound.live(id, r.now())
}

// prefetch looks up ids, which the caller found missing from the cache,
// with at most maxParallelLookups requests in flight, and caches the
// answers as writer does. It returns the first error that is not the
// record's fault (an outage).
func (r *resolver) prefetch(ctx context.Context, ids []int) error {
	if len(ids) == 0 {
		return nil
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	sem := make(chan struct{}, maxParallelLookups)
	var (
		wg    sync.WaitGroup
		errMu sync.Mutex
		first error
	)
	for _, id := range ids {
		select {
		case sem <- struct{}{}:
		case <-ctx.Done():
		}
		if ctx.Err() != nil {
			break
		}
		wg.Add(1)
		go func() {
			defer func() { <-sem; wg.Done() }()
			if _, err := r.writer(ctx, id); err != nil {
				if _, ok := schema.AsRecordError(err); !ok {
					errMu.Lock()
					if first == nil {
						first = err
					}
					errMu.Unlock()
					cancel()
				}
			}
		}()
	}
	wg.Wait()
	if first == nil && ctx.Err() != nil {
		first = fmt.Errorf("registry: look up schema ids: %w", context.Cause(ctx))
	}
	return first
}

// writer is a parsed writer schema and its compiled validator.
type writer struct {
	schema avro.Schema
	walk   *avrowalk.Schema
}

// writer returns the writer schema of id. A *schema.RecordError means
// the ID is unknown to the registry or its schema is unusable; any other
// error is a registry outage.
func (r *resolver) writer(ctx context.Context, id int) (*writer, error) {
	r.mu.Lock()
	if s, ok := r.writers[id]; ok {
		r.mu.Unlock()
		return s, nil
	}
	if re, ok := r.bad[id]; ok {
		r.mu.Unlock()
		return nil, re
	}
	if r.notFound.live(id, r.now()) {
		r.mu.Unlock()
		return nil, errNotFound(id)
	}
	r.mu.Unlock()

	s, err := r.fetch(ctx, id)
	r.mu.Lock()
	defer r.mu.Unlock()
	if err != nil {
		if re, ok := schema.AsRecordError(err); ok {
			if isNotFound(err) {
				r.notFound.put(id, r.now().Add(notFoundTTL))
			} else {
				r.bad[id] = re
			}
		}
		return nil, err
	}
	r.writers[id] = s
	return s, nil
}

// fetch asks the registry for schema id, parses it with its references and
// compiles its validator. A schema the validator refuses (recursive, too
// deep, too large) is refused before any hamba decoder is built for it.
func (r *resolver) fetch(ctx context.Context, id int) (*writer, error) {
	s, err := r.cl.SchemaByID(ctx, id)
	if err != nil {
		if notFound(err) {
			return nil, errNotFound(id)
		}
		return nil, fmt.Errorf("registry: fetch schema id %d: %w", id, describe(err))
	}
	if s.Type != sr.TypeAvro {
		return nil, schemaErr("schema id %d is a %s schema, not Avro", id, s.Type)
	}
	cache := &avro.SchemaCache{}
	if err := r.parseRefs(ctx, id, s.References, cache, 0); err != nil {
		return nil, err
	}
	parsed, err := avro.ParseWithCache(s.Schema, "", cache)
	if err != nil {
		return nil, schemaErr("schema id %d does not parse as Avro: %s", id, oneLine(err.Error()))
	}
	walk, err := avrowalk.Compile(parsed)
	if err != nil {
		return nil, schemaErr("schema id %d is refused: %s", id, oneLine(err.Error()))
	}
	return &writer{schema: parsed, walk: walk}, nil
}

// parseRefs parses the schemas that refs name into cache, depth first.
func (r *resolver) parseRefs(ctx context.Context, id int, refs []sr.SchemaReference, cache *avro.SchemaCache, depth int) error {
	if len(refs) == 0 {
		return nil
	}
	if depth >= maxRefDepth {
		return schemaErr("schema id %d: references nested deeper than %d", id, maxRefDepth)
	}
	for _, ref := range refs {
		ss, err := r.cl.SchemaByVersion(ctx, ref.Subject, ref.Version)
		if err != nil {
			if notFound(err) {
				return schemaErr("schema id %d: a referenced schema is not in the registry", id)
			}
			return fmt.Errorf("registry: fetch a reference of schema id %d: %w", id, describe(err))
		}
		if err := r.parseRefs(ctx, id, ss.References, cache, depth+1); err != nil {
			return err
		}
		if _, err := avro.ParseWithCache(ss.Schema.Schema, "", cache); err != nil {
			return schemaErr("schema id %d: a referenced schema does not parse as Avro: %s", id, oneLine(err.Error()))
		}
	}
	return nil
}

// notFound reports whether err is the registry saying that a schema,
// subject or version does not exist (HTTP 404 with a registry error code).
// A bare 404 without one (a wrong URL, a proxy) is not: it is an outage.
func notFound(err error) bool {
	var re *sr.ResponseError
	return errors.As(err, &re) && re.StatusCode == http.StatusNotFound && sr.IsNotFoundError(re.ErrorCode)
}

type notFoundError struct{ schema.RecordError }

func errNotFound(id int) error {
	return &notFoundError{schema.RecordError{Class: schema.ClassSchema, Reason: fmt.Sprintf("schema id %d is not in the registry", id)}}
}

func (e *notFoundError) Unwrap() error { return &e.RecordError }

func isNotFound(err error) bool {
	var nf *notFoundError
	return errors.As(err, &nf)
}

func schemaErr(format string, args ...any) *schema.RecordError {
	return &schema.RecordError{Class: schema.ClassSchema, Reason: fmt.Sprintf(format, args...)}
}

// describe renders a registry error on one short line; the result wraps
// err.
func describe(err error) error {
	var re *sr.ResponseError
	if errors.As(err, &re) {
		msg := re.Message
		if msg == "" {
			msg = string(re.Raw)
		}
		return &describedError{fmt.Sprintf("HTTP %d (error code %d): %s", re.StatusCode, re.ErrorCode, oneLine(msg)), err}
	}
	return &describedError{oneLine(err.Error()), err}
}

// describedError is an error shown as one short line that still unwraps
// to the original, for errors.Is and errors.As.
type describedError struct {
	msg string
	err error
}

func (e *describedError) Error() string { return e.msg }
func (e *describedError) Unwrap() error { return e.err }

// oneLine flattens s to one line of at most 300 bytes.
func oneLine(s string) string {
	s = strings.Join(strings.Fields(s), " ")
	if len(s) > 300 {
		s = s[:300] + "..."
	}
	return s
}

// reader reads values written with any registered writer schema as the
// bundled reader schema.
type reader struct {
	name   string // full name of the reader schema, for messages
	schema avro.Schema
	fp     [32]byte
	res    *resolver
	// unmapped, if set, counts writer fields the reader lacks.
	unmapped *prometheus.CounterVec

	mu  sync.Mutex
	ids map[int]*plan
	// skipped holds the IDs of the current batch that Prefetch did not
	// look up (beyond maxLookupsPerBatch): their records are
	// dead-lettered. Each Prefetch replaces it.
	skipped map[int]struct{}
}

// prefetch looks up, in parallel, the schema IDs of values that neither
// rd nor the resolver has an answer for, each once, at most
// maxLookupsPerBatch of them: those of the most records, then in order of
// appearance. The others are skipped until the next prefetch (their
// records get a schema error).
func (rd *reader) prefetch(ctx context.Context, values [][]byte) error {
	rd.mu.Lock()
	clear(rd.skipped)
	var ids []int
	count := map[int]int{}
	rd.res.mu.Lock()
	for _, v := range values {
		id, _, err := splitHeader(v)
		if err != nil {
			continue
		}
		if n, ok := count[id]; ok {
			count[id] = n + 1
			continue
		}
		if _, ok := rd.ids[id]; ok || rd.res.known(id) {
			count[id] = -1 // answered: not counted
			continue
		}
		count[id] = 1
		ids = append(ids, id)
	}
	rd.res.mu.Unlock()
	if len(ids) > maxLookupsPerBatch {
		// The IDs of the most records first (a writer schema in use has
		// many; made-up IDs mostly one each), then in order of appearance.
		slices.SortStableFunc(ids, func(a, b int) int { return count[b] - count[a] })
		for _, id := range ids[maxLookupsPerBatch:] {
			rd.skipped[id] = struct{}{}
		}
		ids = ids[:maxLookupsPerBatch]
	}
	skipped := len(rd.skipped)
	rd.mu.Unlock()
	if skipped > 0 {
		rd.res.log.Warn("more unknown schema IDs in one batch than are looked up; the records of the others are dead-lettered",
			"schema", rd.name, "looked_up", len(ids), "skipped", skipped)
	}
	return rd.res.prefetch(ctx, ids)
}

// plan is how to read values of one writer schema ID.
type plan struct {
	id       int
	walk     *avrowalk.Schema    // validates bodies of the writer schema
	fast     bool                // writer is canonically the reader schema
	resolved avro.Schema         // else: the resolved schema
	err      *schema.RecordError // or why the writer cannot be read
}

func newReader(res *resolver, s avro.Schema, unmapped *prometheus.CounterVec) *reader {
	name := s.Type()
	full := string(name)
	if n, ok := s.(avro.NamedSchema); ok {
		full = n.FullName()
	}
	return &reader{name: full, schema: s, fp: s.Fingerprint(), res: res, unmapped: unmapped, ids: map[int]*plan{}, skipped: map[int]struct{}{}}
}

// plan checks value's header and returns how to read its body.
func (rd *reader) plan(ctx context.Context, value []byte) (*plan, []byte, error) {
	id, body, err := splitHeader(value)
	if err != nil {
		return nil, nil, err
	}
	rd.mu.Lock()
	p, ok := rd.ids[id]
	_, skipped := rd.skipped[id]
	rd.mu.Unlock()
	if ok {
		if p.err != nil {
			return nil, nil, p.err
		}
		return p, body, nil
	}
	if skipped {
		return nil, nil, schemaErr("schema id %d was not looked up: the batch has more than %d unknown schema IDs", id, maxLookupsPerBatch)
	}
	w, err := rd.res.writer(ctx, id)
	if err != nil {
		return nil, nil, err
	}
	p = &plan{id: id, walk: w.walk}
	if w.schema.Fingerprint() == rd.fp {
		p.fast = true
	} else {
		res, err := avro.NewSchemaCompatibility().Resolve(rd.schema, w.schema)
		if err != nil {
			p.err = schemaErr("writer schema id %d cannot be read as %s: %s", id, rd.name, oneLine(err.Error()))
			rd.res.log.Warn("incompatible writer schema: its records are dead-lettered", "schema", rd.name, "schema_id", id)
			rd.mu.Lock()
			rd.ids[id] = p
			rd.mu.Unlock()
			return nil, nil, p.err
		}
		p.resolved = res
		rd.report(id, w.schema)
	}
	rd.res.log.Info("resolved a writer schema", "schema", rd.name, "schema_id", id, "identical", p.fast)
	rd.mu.Lock()
	rd.ids[id] = p
	rd.mu.Unlock()
	return p, body, nil
}

// report logs and counts, once per schema ID, the writer's fields that the
// reader schema lacks: they are dropped.
func (rd *reader) report(id int, w avro.Schema) {
	var fields []string
	extraFields(w, rd.schema, "", &fields, 0)
	if len(fields) == 0 {
		return
	}
	if rd.unmapped != nil {
		for _, f := range fields {
			rd.unmapped.WithLabelValues(f).Inc()
		}
	}
	rd.res.log.Warn("writer schema has fields that the bundled schema lacks; they are dropped for every system",
		"schema", rd.name, "schema_id", id, "fields", fields)
}

// validate checks that body is one valid value of the writer schema, with
// work bounded by its size (see package avrowalk). It must pass before
// hamba sees body: hamba can crash or loop on hostile input.
func (p *plan) validate(body []byte) error {
	if err := p.walk.Validate(body); err != nil {
		return &schema.RecordError{Class: schema.ClassDecode, Reason: fmt.Sprintf("body is not valid for its writer schema id %d: %s", p.id, err)}
	}
	return nil
}

// decode validates body, then reads it with the resolved schema into v,
// rejecting trailing bytes.
func (p *plan) decode(body []byte, v any) error {
	if err := p.validate(body); err != nil {
		return err
	}
	r := avro.NewReader(nil, 0, avro.WithReaderConfig(decodeAPI)).Reset(body)
	r.ReadVal(p.resolved, v)
	if r.Error != nil {
		return &schema.RecordError{Class: schema.ClassDecode, Reason: fmt.Sprintf("body does not decode with its writer schema id %d", p.id)}
	}
	r.Peek()
	if r.Error == nil {
		return &schema.RecordError{Class: schema.ClassDecode, Reason: fmt.Sprintf("trailing bytes after a record of writer schema id %d", p.id)}
	}
	return nil
}

// extraFields appends the dotted paths of fields of writer w that reader r
// lacks. Paths pass through unions, arrays and map values, as policy paths do.
func extraFields(w, r avro.Schema, path string, out *[]string, depth int) {
	if depth > 32 {
		return
	}
	w, r = deref(w), deref(r)
	switch ws := w.(type) {
	case *avro.UnionSchema:
		for _, b := range ws.Types() {
			extraFields(b, r, path, out, depth+1)
		}
		return
	}
	if ru, ok := r.(*avro.UnionSchema); ok {
		for _, b := range ru.Types() {
			if b = deref(b); b.Type() == w.Type() && sameName(w, b) {
				extraFields(w, b, path, out, depth+1)
				return
			}
		}
		return
	}
	switch ws := w.(type) {
	case *avro.RecordSchema:
		rs, ok := r.(*avro.RecordSchema)
		if !ok {
			return
		}
		for _, wf := range ws.Fields() {
			i := slices.IndexFunc(rs.Fields(), func(rf *avro.Field) bool {
				return rf.Name() == wf.Name() || slices.Contains(rf.Aliases(), wf.Name())
			})
			if i < 0 {
				*out = append(*out, path+wf.Name())
				continue
			}
			extraFields(wf.Type(), rs.Fields()[i].Type(), path+wf.Name()+".", out, depth+1)
		}
	case *avro.ArraySchema:
		if ra, ok := r.(*avro.ArraySchema); ok {
			extraFields(ws.Items(), ra.Items(), path, out, depth+1)
		}
	case *avro.MapSchema:
		if rm, ok := r.(*avro.MapSchema); ok {
			extraFields(ws.Values(), rm.Values(), path, out, depth+1)
		}
	}
}

func deref(s avro.Schema) avro.Schema {
	if ref, ok := s.(*avro.RefSchema); ok {
		return ref.Schema()
	}
	return s
}

// sameName reports whether two schemas of one type would be matched by
// schema resolution: same full name (or an alias) for named types.
func sameName(w, r avro.Schema) bool {
	wn, ok := w.(avro.NamedSchema)
	if !ok {
		return true
	}
	rn := r.(avro.NamedSchema)
	return wn.FullName() == rn.FullName() || slices.Contains(rn.Aliases(), wn.FullName())
}
