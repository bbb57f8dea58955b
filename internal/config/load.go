package config

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"strconv"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"
)

// Load reads a configuration file, applies environment overrides from
// environ (os.Environ() form) and validates the result.
func Load(path string, environ []string) (Config, error) {
	cfg, err := Read(path, environ)
	if err != nil {
		return cfg, err
	}
	if err := cfg.Validate(); err != nil {
		return cfg, err
	}
	return cfg, nil
}

// Read is Load without Validate, for commands that need only part of the
// configuration (such as `pseudonymizer schema`).
func Read(path string, environ []string) (Config, error) {
	cfg := Default()
	if path != "" {
		b, err := os.ReadFile(path)
		if err != nil {
			return cfg, fmt.Errorf("config: %w", err)
		}
		if err := Parse(b, &cfg); err != nil {
			return cfg, err
		}
		if err := cfg.resolvePaths(filepath.Dir(path)); err != nil {
			return cfg, err
		}
	}
	if err := applyEnv(&cfg, environ); err != nil {
		return cfg, err
	}
	return cfg, nil
}

// Parse decodes YAML into cfg, rejecting unknown keys. Errors name the key
// path (kafka.group_id) and line, never Go types or the offending value.
func Parse(b []byte, cfg *Config) error {
	var root yaml.Node
	if err := yaml.Unmarshal(b, &root); err != nil {
		return fmt.Errorf("config: %s", strings.ReplaceAll(syntaxErrorLine(err.Error()), "\n", "; "))
	}
	if len(root.Content) == 0 {
		return nil // empty file
	}
	if err := checkNode(root.Content[0], reflect.TypeOf(cfg).Elem(), ""); err != nil {
		return err
	}
	dec := yaml.NewDecoder(bytes.NewReader(b))
	dec.KnownFields(true)
	if err := dec.Decode(cfg); err != nil && !errors.Is(err, io.EOF) {
		return fmt.Errorf("config: %s", strings.ReplaceAll(err.Error(), "\n", "; "))
	}
	return nil
}

var durationType = reflect.TypeOf(time.Duration(0))

// checkNode checks n against the configuration type t: every mapping key
// must be a field's YAML name and every scalar must decode into its field.
// path is n's key path, for the error.
func checkNode(n *yaml.Node, t reflect.Type, path string) error {
	if n.Kind == yaml.AliasNode && n.Alias != nil {
		n = n.Alias
	}
	if n.Tag == "!!null" {
		return nil
	}
	switch {
	case t.Kind() == reflect.Struct:
		if n.Kind != yaml.MappingNode {
			return typeError(n, t, path)
		}
		for i := 0; i+1 < len(n.Content); i += 2 {
			k, v := n.Content[i], n.Content[i+1]
			if k.Value == "<<" {
				continue // a merge key: yaml checks the merged keys
			}
			f, ok := fieldByTag(t, k.Value)
			if !ok {
				return fmt.Errorf("config: line %d: unknown key %s%s", k.Line, join(path, k.Value), suggest(t, k.Value))
			}
			if err := checkNode(v, f.Type, join(path, k.Value)); err != nil {
				return err
			}
		}
	case t.Kind() == reflect.Map:
		if n.Kind != yaml.MappingNode {
			return typeError(n, t, path)
		}
		for i := 0; i+1 < len(n.Content); i += 2 {
			if err := checkNode(n.Content[i+1], t.Elem(), join(path, n.Content[i].Value)); err != nil {
				return err
			}
		}
	case t.Kind() == reflect.Slice:
		if n.Kind != yaml.SequenceNode {
			return typeError(n, t, path)
		}
		for _, e := range n.Content {
			if err := checkNode(e, t.Elem(), path); err != nil {
				return err
			}
		}
	default:
		if n.Kind != yaml.ScalarNode || n.Decode(reflect.New(t).Interface()) != nil {
			return typeError(n, t, path)
		}
	}
	return nil
}

// typeError names the key path and what it wants, without the value (which
// may be a secret).
func typeError(n *yaml.Node, t reflect.Type, path string) error {
	want := "a string"
	switch {
	case t == durationType:
		want = "a duration such as 10s"
	case t.Kind() == reflect.Bool:
		want = "true or false"
	case t.Kind() >= reflect.Int && t.Kind() <= reflect.Uint64:
		want = "an integer"
	case t.Kind() == reflect.Slice:
		want = "a list"
	case t.Kind() == reflect.Struct || t.Kind() == reflect.Map:
		want = "a mapping"
	}
	if path == "" {
		path = "the file"
	}
	return fmt.Errorf("config: line %d: %s must be %s", n.Line, path, want)
}

func join(path, key string) string {
	if path == "" {
		return key
	}
	return path + "." + key
}

// fieldByTag finds the field of struct type t whose YAML name is name.
func fieldByTag(t reflect.Type, name string) (reflect.StructField, bool) {
	for i := 0; i < t.NumField(); i++ {
		f := t.Field(i)
		if tag := strings.Split(f.Tag.Get("yaml"), ",")[0]; tag != "" && tag != "-" && tag == name {
			return f, true
		}
	}
	return reflect.StructField{}, false
}

// suggest returns " (did you mean X?)" for the field of t closest to name.
func suggest(t reflect.Type, name string) string {
	var cands []string
	for i := 0; i < t.NumField(); i++ {
		if tag := strings.Split(t.Field(i).Tag.Get("yaml"), ",")[0]; tag != "" && tag != "-" {
			cands = append(cands, tag)
		}
	}
	if best := closest(name, cands); best != "" {
		return " (did you mean " + best + "?)"
	}
	return ""
}

// closest returns the candidate nearest to s that differs from it in at
// most 3 edits (ignoring case and underscores), or "".
func closest(s string, cands []string) string {
	norm := func(x string) string { return strings.ReplaceAll(strings.ToLower(x), "_", "") }
	best, bestD := "", 4
	for _, c := range cands {
		if d := editDistance(norm(s), norm(c)); d < bestD {
			best, bestD = c, d
		}
	}
	return best
}

func editDistance(a, b string) int {
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}

// resolvePaths makes the file's relative paths relative to dir, the
// directory of the configuration file, rather than the working directory.
//
// Earlier versions resolved them against the working directory. For
// store.path that difference is dangerous: a deployment started from another
// directory would open a new, empty store and hand out new keys (new
// pseudonyms for every customer). So a relative store.path that exists only
// relative to the working directory is an error, not a silent new store.
func (c *Config) resolvePaths(dir string) error {
	if p := c.Store.Path; p != "" && !filepath.IsAbs(p) {
		inDir := filepath.Join(dir, p)
		if _, err := os.Stat(inDir); errors.Is(err, os.ErrNotExist) {
			if _, err := os.Stat(p); err == nil && filepath.Clean(dir) != "." {
				return fmt.Errorf("config: store.path %q is relative to the configuration file's directory, where it does not exist, but exists relative to the working directory (where older versions looked); set an absolute path", p)
			}
		}
	}
	abs := func(p *string) {
		if *p != "" && !filepath.IsAbs(*p) {
			*p = filepath.Join(dir, *p)
		}
	}
	abs(&c.Keys.KEKFile)
	for i := range c.Keys.OldKEKFiles {
		abs(&c.Keys.OldKEKFiles[i])
	}
	abs(&c.Store.Path)
	for _, t := range []*TLS{&c.Kafka.TLS, &c.SchemaRegistry.TLS} {
		abs(&t.CAFile)
		abs(&t.CertFile)
		abs(&t.KeyFile)
	}
	return nil
}

// yamlParserError matches the syntax errors of the YAML parser (not its
// scanner): yaml.v3 reports their line 0-based, one line too early.
var yamlParserError = regexp.MustCompile(`^yaml: line (\d+): (did not find expected (<document start>|node content|key|'-' indicator|',' or '\]'|',' or '\}')|found duplicate %YAML directive|found incompatible YAML document|found undefined tag handle)`)

// syntaxErrorLine corrects the line number of a YAML parser error.
func syntaxErrorLine(msg string) string {
	m := yamlParserError.FindStringSubmatchIndex(msg)
	if m == nil {
		return msg
	}
	n, err := strconv.Atoi(msg[m[2]:m[3]])
	if err != nil {
		return msg
	}
	return msg[:m[2]] + strconv.Itoa(n+1) + msg[m[3]:]
}
