package config

import (
	"strings"
	"testing"
)

// TestSyntaxErrorLine: a YAML syntax error names the line of the problem,
// whether the YAML parser or its scanner finds it.
func TestSyntaxErrorLine(t *testing.T) {
	for _, tc := range []struct {
		yaml, line string
	}{
		{"kafka: {brokers: [a]}\nstore: {path: x\n", "line 2:"},
		{"kafka: {brokers: [a]}\nsystems: [x: y\n", "line 2:"},
		{"kafka:\n  brokers: a\n bad: x\n", "line 3:"},
		{"kafka:\n\tbrokers: a\n", "line 2:"},
		{"kafka: {brokers: [a]}\nstore: \"x\n", "line 2:"},
		{"a: b\nc: d: e\n", "line 2:"},
	} {
		var c Config
		err := Parse([]byte(tc.yaml), &c)
		if err == nil || !strings.Contains(err.Error(), tc.line) {
			t.Errorf("%q: %v, want %s", tc.yaml, err, tc.line)
		}
	}
}

// FuzzSyntaxErrorLine: correcting a line number never panics and changes
// at most the number.
func FuzzSyntaxErrorLine(f *testing.F) {
	f.Add("yaml: line 1: did not find expected ',' or ']'")
	f.Add("yaml: line 99999999999999999999: did not find expected key")
	f.Add("yaml: line 2: found character that cannot start any token")
	f.Fuzz(func(t *testing.T, msg string) {
		got := syntaxErrorLine(msg)
		if got != msg && !strings.HasPrefix(got, "yaml: line ") {
			t.Errorf("%q -> %q", msg, got)
		}
	})
}
