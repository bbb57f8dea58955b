package main

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/hamba/avro/v2"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/sr"

	"github.com/hygiene/pseudonymizer/internal/config"
	"github.com/hygiene/pseudonymizer/schema/avrowalk"
)

// runTail is `pseudonymizer tail`: a system's output topic as JSON lines,
// read_committed, in bare Avro or the schema registry's wire format. As
// Unix tail: the records there are (the last N with -n), then exit; -f
// follows.
func runTail(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlags("tail", "tail --config FILE --system NAME [-n N] [-f] [--from-end]",
		"Prints the records of a system's output topic (<pseudo_prefix><system>) as\n"+
			"JSON lines, decoded with the system's output schema (or, with a schema\n"+
			"registry, the schema each record names), reading committed records only.\n"+
			"As Unix tail: prints what the topic holds (the last N records with -n),\n"+
			"then exits; with -f it then follows new records until Ctrl-C.")
	path := fs.String("config", "", "configuration file (YAML)")
	system := fs.String("system", "", "marketing system name")
	follow := fs.Bool("f", false, "follow: after the records there are, print new ones until Ctrl-C")
	fromEnd := fs.Bool("from-end", false, "print only records published from now on (implies -f)")
	n := fs.Int("n", 0, "print only the last N records (0: all); with several partitions, the last N by timestamp")
	if err := fs.parse(args, stdout, stderr); err != nil {
		return err
	}
	if *system == "" {
		return fs.usageError(stderr, errors.New("--system NAME is required"))
	}
	if *n < 0 {
		return fs.usageError(stderr, errors.New("-n must not be negative"))
	}
	cfg, err := loadSchemaConfig(*path)
	if err != nil {
		return err
	}
	_, plan, err := compilePlan(&cfg)
	if err != nil {
		return err
	}
	i := slices.Index(plan.Systems(), *system)
	if i < 0 {
		return fmt.Errorf("no system %q in the configuration (have: %s)", *system, strings.Join(plan.Systems(), ", "))
	}
	dec, err := newOutputDecoder(cfg, plan.OutputSchema(i))
	if err != nil {
		return err
	}
	kopts, err := kafkaOpts(cfg.Kafka, newLogger(config.Log{Level: "warn", Format: "text"}, stderr))
	if err != nil {
		return err
	}
	topic := cfg.Topics.PseudoPrefix + *system
	if err := requireTopics(ctx, kopts, topic); err != nil {
		return err
	}
	starts, ends, err := committedRange(ctx, kopts, topic)
	if err != nil {
		return err
	}
	enc := json.NewEncoder(stdout)
	print := func(r *kgo.Record) error { return enc.Encode(tailRecord(ctx, dec, r)) }
	if !*fromEnd {
		if err := printRange(ctx, kopts, topic, starts, ends, *n, print); err != nil {
			if ctx.Err() != nil {
				return nil // Ctrl-C
			}
			return err
		}
	}
	if !*follow && !*fromEnd {
		return nil
	}
	return followFrom(ctx, kopts, topic, ends, print)
}

// committedRange lists the topic's partitions' start offsets and committed
// ends (last stable offsets: what read_committed consumers may read).
func committedRange(ctx context.Context, kopts []kgo.Opt, topic string) (starts, ends map[int32]int64, err error) {
	cl, err := kgo.NewClient(kopts...)
	if err != nil {
		return nil, nil, fmt.Errorf("kafka: %w", err)
	}
	defer cl.Close()
	adm := kadm.NewClient(cl)
	lctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	so, err := adm.ListStartOffsets(lctx, topic)
	if err != nil {
		return nil, nil, fmt.Errorf("list offsets of %s: %w", topic, err)
	}
	eo, err := adm.ListCommittedOffsets(lctx, topic)
	if err != nil {
		return nil, nil, fmt.Errorf("list offsets of %s: %w", topic, err)
	}
	starts, ends = map[int32]int64{}, map[int32]int64{}
	for _, lo := range []struct {
		l kadm.ListedOffsets
		m map[int32]int64
	}{{so, starts}, {eo, ends}} {
		var ferr error
		lo.l.Each(func(o kadm.ListedOffset) {
			if o.Err != nil {
				ferr = o.Err
			}
			lo.m[o.Partition] = o.Offset
		})
		if ferr != nil {
			return nil, nil, fmt.Errorf("list offsets of %s: %w", topic, ferr)
		}
	}
	return starts, ends, nil
}

// printRange prints the committed records below ends, from starts on: all
// of them in partition order when last is 0, else the last `last` ones by
// timestamp. It reads up to the ends, no further, and returns.
func printRange(ctx context.Context, kopts []kgo.Opt, topic string, starts, ends map[int32]int64, last int, print func(*kgo.Record) error) error {
	if last == 0 {
		return readRange(ctx, kopts, topic, starts, ends, print)
	}
	// Transaction markers and aborted records take offsets too: the last
	// `last` offsets may hold fewer records. Widen the window until it
	// holds enough, or reaches the start.
	for window := int64(last); ; window *= 2 {
		from, whole := map[int32]int64{}, true
		for p, end := range ends {
			from[p] = max(starts[p], end-window)
			whole = whole && from[p] == starts[p]
		}
		var recs []*kgo.Record
		if err := readRange(ctx, kopts, topic, from, ends, func(r *kgo.Record) error {
			recs = append(recs, r)
			return nil
		}); err != nil {
			return err
		}
		if len(recs) < last && !whole {
			continue
		}
		slices.SortStableFunc(recs, func(a, b *kgo.Record) int {
			if c := a.Timestamp.Compare(b.Timestamp); c != 0 {
				return c
			}
			if a.Partition != b.Partition {
				return int(a.Partition - b.Partition)
			}
			return int(a.Offset - b.Offset)
		})
		for _, r := range recs[max(0, len(recs)-last):] {
			if err := print(r); err != nil {
				return err
			}
		}
		return nil
	}
}

// readRange calls fn for each committed record of topic with offset in
// [from[p], ends[p]) of its partition p, and returns when every partition
// has been read to its end. Control records (transaction markers) are
// fetched to see the position reach the end, not passed to fn.
func readRange(ctx context.Context, kopts []kgo.Opt, topic string, from, ends map[int32]int64, fn func(*kgo.Record) error) error {
	pending := map[int32]bool{}
	offsets := map[int32]kgo.Offset{}
	for p, end := range ends {
		if from[p] < end {
			pending[p] = true
			offsets[p] = kgo.NewOffset().At(from[p])
		}
	}
	if len(pending) == 0 {
		return nil
	}
	cl, err := kgo.NewClient(append(append([]kgo.Opt{}, kopts...),
		kgo.ConsumePartitions(map[string]map[int32]kgo.Offset{topic: offsets}),
		kgo.FetchIsolationLevel(kgo.ReadCommitted()), kgo.KeepControlRecords())...)
	if err != nil {
		return fmt.Errorf("kafka: %w", err)
	}
	defer cl.Close()
	for len(pending) > 0 {
		fetches := cl.PollFetches(ctx)
		if err := ctx.Err(); err != nil {
			return err
		}
		if err := fetches.Err0(); err != nil {
			return fmt.Errorf("fetch %s: %w", topic, err)
		}
		for _, r := range fetches.Records() {
			if !pending[r.Partition] || r.Offset >= ends[r.Partition] {
				continue
			}
			if r.Offset >= ends[r.Partition]-1 {
				delete(pending, r.Partition)
			}
			if r.Attrs.IsControl() {
				continue
			}
			if err := fn(r); err != nil {
				return err
			}
		}
	}
	return nil
}

// followFrom prints the committed records of the partitions in offsets from
// there on, until ctx ends.
func followFrom(ctx context.Context, kopts []kgo.Opt, topic string, offsets map[int32]int64, print func(*kgo.Record) error) error {
	at := map[int32]kgo.Offset{}
	for p, o := range offsets {
		at[p] = kgo.NewOffset().At(o)
	}
	cl, err := kgo.NewClient(append(append([]kgo.Opt{}, kopts...),
		kgo.ConsumePartitions(map[string]map[int32]kgo.Offset{topic: at}),
		kgo.FetchIsolationLevel(kgo.ReadCommitted()))...)
	if err != nil {
		return fmt.Errorf("kafka: %w", err)
	}
	defer cl.Close()
	for {
		fetches := cl.PollFetches(ctx)
		if ctx.Err() != nil {
			return nil // Ctrl-C ends a follow
		}
		if err := fetches.Err0(); err != nil && !errors.Is(err, context.Canceled) {
			return fmt.Errorf("fetch %s: %w", topic, err)
		}
		for _, r := range fetches.Records() {
			if err := print(r); err != nil {
				return err
			}
		}
	}
}

// tailRecord turns r into its output line.
func tailRecord(ctx context.Context, dec *outputDecoder, r *kgo.Record) tailLine {
	line := tailLine{Topic: r.Topic, Partition: r.Partition, Offset: r.Offset, Timestamp: r.Timestamp.UTC(), Key: string(r.Key)}
	for _, h := range r.Headers {
		if line.Headers == nil {
			line.Headers = map[string]string{}
		}
		line.Headers[h.Key] = string(h.Value)
	}
	if r.Value != nil { // a nil value is an erasure tombstone
		v, err := dec.decode(ctx, r.Value)
		if err != nil {
			line.Error = err.Error()
		} else {
			line.Value = unwrapUnions(v)
			line.Redactions = redactions(nil, line.Value, "")
		}
	}
	return line
}

// tailLine is one output line of `pseudonymizer tail`.
type tailLine struct {
	Topic     string    `json:"topic"`
	Partition int32     `json:"partition"`
	Offset    int64     `json:"offset"`
	Timestamp time.Time `json:"timestamp"`
	Key       string    `json:"key"`
	Value     any       `json:"value"`
	// Headers are the record's headers (those a policy allows, or an
	// erasure notice's requested_at), if any.
	Headers map[string]string `json:"headers,omitempty"`
	// Redactions lists where the PII guard redacted identifying data in
	// the value, as "<path>: <kind>" (items[0].sku: phone).
	Redactions []string `json:"redactions,omitempty"`
	Error      string   `json:"error,omitempty"`
}

// redactions appends the PII guard's redactions ([redacted:<kind>]) in the
// decoded value v at path to dst.
func redactions(dst []string, v any, path string) []string {
	switch t := v.(type) {
	case string:
		for rest := t; ; {
			i := strings.Index(rest, "[redacted:")
			if i < 0 {
				break
			}
			rest = rest[i+len("[redacted:"):]
			j := strings.IndexByte(rest, ']')
			if j < 0 {
				break
			}
			dst = append(dst, path+": "+rest[:j])
			rest = rest[j+1:]
		}
	case map[string]any:
		keys := make([]string, 0, len(t))
		for k := range t {
			keys = append(keys, k)
		}
		slices.Sort(keys)
		for _, k := range keys {
			p := k
			if path != "" {
				p = path + "." + k
			}
			dst = redactions(dst, t[k], p)
		}
	case []any:
		for i, e := range t {
			dst = redactions(dst, e, fmt.Sprintf("%s[%d]", path, i))
		}
	}
	return dst
}

// requireTopics fails with one line naming the topics that do not exist.
func requireTopics(ctx context.Context, kopts []kgo.Opt, topics ...string) error {
	cl, err := kgo.NewClient(kopts...)
	if err != nil {
		return fmt.Errorf("kafka: %w", err)
	}
	defer cl.Close()
	lctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	td, err := kadm.NewClient(cl).ListTopics(lctx, topics...)
	if err != nil {
		return fmt.Errorf("kafka: list topics: %w", err)
	}
	var missing []string
	for _, t := range topics {
		if d, ok := td[t]; !ok || d.Err != nil {
			missing = append(missing, t)
		}
	}
	if len(missing) > 0 {
		return fmt.Errorf("topic %s does not exist (`pseudonymizer run` creates its output topics at start-up)", strings.Join(missing, ", "))
	}
	return nil
}

// outputDecoder decodes output values: bare Avro of the system's current
// output schema, or the wire format, whose schema ID is resolved through
// the registry (so records written under an older policy decode too).
type outputDecoder struct {
	bare avro.Schema
	cl   *sr.Client // nil: bare Avro

	mu   sync.Mutex
	byID map[uint32]avro.Schema
	// walk holds the bounded validators of the schemas seen: hamba never
	// sees bytes they have not accepted (anyone who may write to a topic
	// could otherwise crash or stall this command).
	walk map[avro.Schema]*avrowalk.Schema
}

func newOutputDecoder(cfg config.Config, bare avro.Schema) (*outputDecoder, error) {
	d := &outputDecoder{bare: bare, byID: map[uint32]avro.Schema{}, walk: map[avro.Schema]*avrowalk.Schema{}}
	if cfg.SchemaRegistry.URL != "" {
		cl, err := newRegistryClient(cfg.SchemaRegistry)
		if err != nil {
			return nil, err
		}
		d.cl = cl
	}
	return d, nil
}

func (d *outputDecoder) decode(ctx context.Context, value []byte) (any, error) {
	s, body := d.bare, value
	if d.cl != nil {
		if len(value) < 5 || value[0] != 0 {
			return nil, errors.New("not in the schema registry wire format")
		}
		id := binary.BigEndian.Uint32(value[1:5])
		var err error
		if s, err = d.schema(ctx, id); err != nil {
			return nil, err
		}
		body = value[5:]
	}
	if err := d.validate(s, body); err != nil {
		return nil, err
	}
	return strictDecode(s, body)
}

// validate checks body against s with a bounded walker.
func (d *outputDecoder) validate(s avro.Schema, body []byte) error {
	d.mu.Lock()
	w, ok := d.walk[s]
	if !ok {
		var err error
		if w, err = avrowalk.Compile(s); err != nil {
			d.mu.Unlock()
			return fmt.Errorf("schema: %w", err)
		}
		d.walk[s] = w
	}
	d.mu.Unlock()
	if err := w.Validate(body); err != nil {
		return fmt.Errorf("decode: %w", err)
	}
	return nil
}

// strictDecode decodes body with s; truncated input and trailing bytes are
// errors (avro.Unmarshal lets both pass).
func strictDecode(s avro.Schema, body []byte) (map[string]any, error) {
	r := avro.NewReader(bytes.NewReader(body), len(body)+1)
	var v map[string]any
	r.ReadVal(s, &v)
	if r.Error != nil {
		return nil, fmt.Errorf("decode: %w", r.Error)
	}
	r.Read(make([]byte, 1))
	if r.Error == nil {
		return nil, errors.New("decode: trailing bytes after the record")
	}
	return v, nil
}

// schema returns the writer schema with the given registry ID.
func (d *outputDecoder) schema(ctx context.Context, id uint32) (avro.Schema, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if s, ok := d.byID[id]; ok {
		return s, nil
	}
	rctx, cancel := context.WithTimeout(ctx, registryTimeout)
	defer cancel()
	ss, err := d.cl.SchemaByID(rctx, int(id))
	if err != nil {
		return nil, fmt.Errorf("schema registry: schema %d: %w", id, err)
	}
	s, err := avro.ParseWithCache(ss.Schema, "", &avro.SchemaCache{})
	if err != nil {
		return nil, fmt.Errorf("schema registry: schema %d: %w", id, err)
	}
	d.byID[id] = s
	return s, nil
}
