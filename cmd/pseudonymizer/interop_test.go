package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/hygiene/pseudonymizer/internal/config"
	"github.com/hygiene/pseudonymizer/internal/kafkatest"
	"github.com/hygiene/pseudonymizer/schema"
	"github.com/hygiene/pseudonymizer/schema/sample"
)

// fastavroVersion is the PyPI release of fastavro the interoperability test
// decodes with.
const fastavroVersion = "1.13.1"

// interopSystems are two systems whose output schemas cover a projected
// nested record, an array of records, a map restricted to one key, an enum
// and a timestamp.
const interopSystems = `
systems:
  meta:
    keep: [event_type, occurred_at, shipping_address.country]
    pseudonymize: [event_id, order_id, customer_id]
  google-analytics:
    keep: [event_type, occurred_at, currency, total_minor, items, attributes.utm_source]
    pseudonymize: [event_id, order_id, customer_id]
`

// uuidV8 matches the pseudonyms: UUIDs of version 8, RFC 9562 variant.
var uuidV8 = regexp.MustCompile(`^[0-9a-f]{8}-[0-9a-f]{4}-8[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$`)

// TestForeignClientsReadOutputs runs the service against a real broker,
// reads each system's output topic with Kafka's own Java console consumer at
// read_committed, and decodes the values with Python's fastavro using the
// schema `pseudonymizer schema` prints: one record per event, IDs are
// pseudonyms, no raw identifier anywhere, exactly the policy's fields with
// the input's values.
//
// Needs PSEUDONYMIZER_TEST_KAFKA, java (scripts/kafka/kafka.sh fetches the
// tools with Maven) and python3 with venv; fastavro is installed from PyPI
// into a virtual environment under the user cache directory once.
func TestForeignClientsReadOutputs(t *testing.T) {
	kafkatest.RequireReal(t)
	python := fastavroPython(t)
	kafkaSh, err := filepath.Abs(filepath.Join("..", "..", "scripts", "kafka", "kafka.sh"))
	if err != nil {
		t.Fatal(err)
	}

	kc := kafkatest.New(t)
	topics := config.Default().Topics
	orders := kc.Topic(topics.Orders)
	kc.CreateTopics(t, 3, nil, orders, kc.Topic(topics.Forget))
	dir := t.TempDir()
	cfg := writeFile(t, dir, "config.yaml", kafkaYAML(kc)+
		"store: {path: "+filepath.Join(dir, "keys.db")+"}\n"+
		"keys: {kek_file: "+writeFile(t, dir, "kek.b64", "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=")+"}\n"+
		"http: {listen: ''}\nlog: {level: warn, format: json}\n"+interopSystems)

	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	var logs bytes.Buffer
	go func() { done <- run(ctx, []string{"run", "--config", cfg}, io.Discard, &syncWriter{buf: &logs}) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("run: %v\n%s", err, logs.String())
			}
		case <-time.After(40 * time.Second):
			t.Error("service did not shut down")
		}
	})

	const customers = 7
	gen := sample.New(42, customers, time.Now().Add(-time.Hour))
	var events []*schema.OrderEvent
	var recs []*kgo.Record
	for range 60 {
		ev := gen.Next()
		b, err := schema.MarshalOrderEvent(ev)
		if err != nil {
			t.Fatal(err)
		}
		events = append(events, ev)
		recs = append(recs, &kgo.Record{Topic: orders, Key: []byte(ev.CustomerID), Value: b})
	}
	kc.Produce(t, recs...)
	kc.AwaitGroup(t, kc.Group("pseudonymizer"), 60*time.Second, orders)

	for _, sys := range []string{"meta", "google-analytics"} {
		t.Run(sys, func(t *testing.T) {
			t.Parallel()
			topic := kc.Topic(topics.PseudoPrefix + sys)
			if got := len(kc.AwaitStable(t, 30*time.Second, topic)); got != len(events) {
				t.Fatalf("%d committed outputs, want %d", got, len(events))
			}
			var schemaJSON, errb bytes.Buffer
			if err := run(context.Background(), []string{"schema", "--config", cfg, "--system", sys}, &schemaJSON, &errb); err != nil {
				t.Fatalf("schema: %v %s", err, errb.String())
			}
			schemaPath := writeFile(t, t.TempDir(), "schema.json", schemaJSON.String())

			raw := consoleConsume(t, kafkaSh, kc, topic, len(events))
			for _, ev := range events {
				for _, v := range sample.RawIdentifiers(ev) {
					if bytes.Contains(raw.data, []byte(v)) {
						t.Fatalf("a raw identifier is in what the console consumer read")
					}
				}
			}
			dataPath := writeFile(t, t.TempDir(), "console.out", string(raw.data))
			cmd := exec.Command(python, filepath.Join("testdata", "decode_avro.py"), schemaPath, dataPath, raw.keySep, raw.lineSep)
			var stderr bytes.Buffer
			cmd.Stderr = &stderr
			out, err := cmd.Output()
			if err != nil {
				t.Fatalf("fastavro: %v\n%s", err, stderr.String())
			}
			checkDecoded(t, sys, schemaJSON.Bytes(), out, events, customers)
		})
	}
}

// checkDecoded checks fastavro's view of one system's outputs against the
// input events and the system's policy.
func checkDecoded(t *testing.T, sys string, schemaJSON, decodedJSON []byte, events []*schema.OrderEvent, customers int) {
	t.Helper()
	type record struct {
		Key   string         `json:"key"`
		Value map[string]any `json:"value"`
	}
	var recs []record
	for _, line := range bytes.Split(bytes.TrimSpace(decodedJSON), []byte("\n")) {
		var r record
		if err := json.Unmarshal(line, &r); err != nil {
			t.Fatalf("decoder output %q: %v", line, err)
		}
		recs = append(recs, r)
	}
	if got, want := len(recs), len(events); got != want {
		t.Fatalf("fastavro decoded %d records, want %d", got, want)
	}

	// Exactly the policy's fields, in the schema that was printed.
	var s struct {
		Fields []struct {
			Name string `json:"name"`
		} `json:"fields"`
	}
	if err := json.Unmarshal(schemaJSON, &s); err != nil {
		t.Fatal(err)
	}
	var schemaFields []string
	for _, f := range s.Fields {
		schemaFields = append(schemaFields, f.Name)
	}
	sort.Strings(schemaFields)
	wantFields := map[string]string{
		"meta":             "customer_id,event_id,event_type,occurred_at,order_id,shipping_address",
		"google-analytics": "attributes,currency,customer_id,event_id,event_type,items,occurred_at,order_id,total_minor",
	}[sys]
	if got := strings.Join(schemaFields, ","); got != wantFields {
		t.Fatalf("schema fields %s, want %s", got, wantFields)
	}

	// IDs are pseudonyms: UUIDs, the key is the customer's, one per
	// customer and one per event.
	custs, evIDs := map[string]bool{}, map[string]bool{}
	var got, want []string
	for _, r := range recs {
		var fields []string
		for f := range r.Value {
			fields = append(fields, f)
		}
		sort.Strings(fields)
		if strings.Join(fields, ",") != wantFields {
			t.Fatalf("record fields %v, want %s", fields, wantFields)
		}
		for _, f := range []string{"event_id", "order_id", "customer_id"} {
			if v, _ := r.Value[f].(string); !uuidV8.MatchString(v) {
				t.Fatalf("%s %q is not a pseudonym", f, v)
			}
		}
		if r.Key != r.Value["customer_id"] {
			t.Fatalf("record key %q is not the customer pseudonym %q", r.Key, r.Value["customer_id"])
		}
		custs[r.Key] = true
		evIDs[r.Value["event_id"].(string)] = true
		got = append(got, keptValues(t, sys, r.Value))
	}
	if len(custs) != customers || len(evIDs) != len(events) {
		t.Errorf("%d customer pseudonyms for %d customers, %d event pseudonyms for %d events", len(custs), customers, len(evIDs), len(events))
	}

	// The kept fields carry the input's values.
	for _, ev := range events {
		want = append(want, eventValues(sys, ev))
	}
	sort.Strings(got)
	sort.Strings(want)
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("kept values differ from the input:\ngot\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}

// keptValues renders the kept fields of a decoded output as one line.
func keptValues(t *testing.T, sys string, v map[string]any) string {
	t.Helper()
	ts, ok := v["occurred_at"].(map[string]any)
	if !ok {
		t.Fatalf("occurred_at %v is not a timestamp", v["occurred_at"])
	}
	at, _ := ts["$ms"].(float64)
	switch sys {
	case "meta":
		country := "-"
		if a, ok := v["shipping_address"].(map[string]any); ok {
			if len(a) != 1 {
				t.Fatalf("shipping_address has fields %v, want only country", a)
			}
			country, _ = a["country"].(string)
		}
		return fmt.Sprintf("%s %d %s", v["event_type"], int64(at), country)
	default:
		attrs, _ := v["attributes"].(map[string]any)
		if _, ok := attrs["utm_source"]; len(attrs) > 1 || len(attrs) == 1 && !ok {
			t.Fatalf("attributes %v, want at most utm_source", attrs)
		}
		items, _ := json.Marshal(v["items"])
		return fmt.Sprintf("%s %d %s %v %s %v", v["event_type"], int64(at), v["currency"], v["total_minor"], items, attrs["utm_source"])
	}
}

// eventValues renders what keptValues must find for ev.
func eventValues(sys string, ev *schema.OrderEvent) string {
	switch sys {
	case "meta":
		country := "-"
		if ev.ShippingAddress != nil {
			country = ev.ShippingAddress.Country
		}
		return fmt.Sprintf("%s %d %s", ev.EventType, ev.OccurredAt.UnixMilli(), country)
	default:
		type item struct {
			Quantity       int64  `json:"quantity"`
			SKU            string `json:"sku"`
			UnitPriceMinor int64  `json:"unit_price_minor"`
		}
		items := []item{}
		for _, it := range ev.Items {
			items = append(items, item{int64(it.Quantity), it.SKU, it.UnitPriceMinor})
		}
		b, _ := json.Marshal(items)
		var src any
		if v, ok := ev.Attributes["utm_source"]; ok {
			src = v
		}
		return fmt.Sprintf("%s %d %s %v %s %v", ev.EventType, ev.OccurredAt.UnixMilli(), ev.Currency, float64(ev.TotalMinor), b, src)
	}
}

// consoleOutput is what the console consumer printed and the separators it
// was told to use.
type consoleOutput struct {
	data            []byte
	keySep, lineSep string
}

// consoleConsume reads n records of topic at read_committed with Kafka's
// Java console consumer, printing each key and raw value between random
// separators.
func consoleConsume(t *testing.T, kafkaSh string, kc *kafkatest.Cluster, topic string, n int) consoleOutput {
	t.Helper()
	sep := func() string {
		b := make([]byte, 16)
		_, _ = rand.Read(b)
		return "~" + hex.EncodeToString(b) + "~"
	}
	out := consoleOutput{keySep: sep(), lineSep: sep()}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, kafkaSh, "run", "org.apache.kafka.tools.consumer.ConsoleConsumer",
		"--bootstrap-server", strings.Join(kc.Brokers(), ","), "--topic", topic, "--group", kc.Group("console-"+topic),
		"--from-beginning", "--isolation-level", "read_committed",
		"--max-messages", fmt.Sprint(n), "--timeout-ms", "60000",
		"--property", "print.key=true", "--property", "key.separator="+out.keySep, "--property", "line.separator="+out.lineSep)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("console consumer: %v\n%s", err, stderr.String())
	}
	if !strings.Contains(stderr.String(), fmt.Sprintf("Processed a total of %d messages", n)) {
		t.Fatalf("console consumer did not read %d messages:\n%s", n, stderr.String())
	}
	out.data = stdout.Bytes()
	return out
}

// fastavroPython returns a Python interpreter with fastavro, creating a
// virtual environment under the user cache directory the first time.
func fastavroPython(t *testing.T) string {
	t.Helper()
	cache, err := os.UserCacheDir()
	if err != nil {
		cache = os.TempDir()
	}
	venv := filepath.Join(cache, "pseudonymizer-test", "fastavro-"+fastavroVersion)
	python := filepath.Join(venv, "bin", "python")
	if exec.Command(python, "-c", "import fastavro").Run() == nil {
		return python
	}
	if err := os.MkdirAll(filepath.Dir(venv), 0o755); err != nil {
		t.Fatal(err)
	}
	tmp, err := os.MkdirTemp(filepath.Dir(venv), "venv-")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(tmp)
	for _, args := range [][]string{
		{"python3", "-m", "venv", tmp},
		{filepath.Join(tmp, "bin", "pip"), "install", "--quiet", "--disable-pip-version-check", "fastavro==" + fastavroVersion},
	} {
		if out, err := exec.Command(args[0], args[1:]...).CombinedOutput(); err != nil {
			t.Fatalf("set up fastavro (%s): %v\n%s", strings.Join(args, " "), err, out)
		}
	}
	// Built aside and renamed into place, so that a concurrent run never
	// sees half an environment (only bin/python is used, which a move
	// keeps working); if another run won the race, its copy is used.
	_ = os.Rename(tmp, venv)
	if out, err := exec.Command(python, "-c", "import fastavro").CombinedOutput(); err != nil {
		t.Fatalf("fastavro in %s: %v\n%s", venv, err, out)
	}
	return python
}
