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
// read_committed, in bare Avro or the schema registry's wire format.
func runTail(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlags("tail", "tail --config FILE --system NAME [--from-end] [-n N]",
		"Prints the records of a system's output topic (<pseudo_prefix><system>) as\n"+
			"JSON lines, decoded with the system's output schema (or, with a schema\n"+
			"registry, the schema each record names), reading committed records only.\n"+
			"Runs until Ctrl-C unless -n is given.")
	path := fs.String("config", "", "configuration file (YAML)")
	system := fs.String("system", "", "marketing system name")
	fromEnd := fs.Bool("from-end", false, "print only records published from now on (default: from the beginning)")
	n := fs.Int("n", 0, "stop after N records (0: follow until Ctrl-C)")
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
	reset := kgo.NewOffset().AtStart()
	if *fromEnd {
		reset = kgo.NewOffset().AtEnd()
	}
	cl, err := kgo.NewClient(append(kopts, kgo.ConsumeTopics(topic),
		kgo.FetchIsolationLevel(kgo.ReadCommitted()), kgo.ConsumeResetOffset(reset))...)
	if err != nil {
		return fmt.Errorf("kafka: %w", err)
	}
	defer cl.Close()
	enc := json.NewEncoder(stdout)
	for count := 0; ; {
		fetches := cl.PollFetches(ctx)
		if ctx.Err() != nil {
			return nil // Ctrl-C ends a follow
		}
		if err := fetches.Err0(); err != nil && !errors.Is(err, context.Canceled) {
			return fmt.Errorf("fetch %s: %w", topic, err)
		}
		for _, r := range fetches.Records() {
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
			if err := enc.Encode(line); err != nil {
				return err
			}
			if count++; *n > 0 && count >= *n {
				return nil
			}
		}
	}
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
