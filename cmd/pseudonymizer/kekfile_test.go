package main

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestKEKFileMode: a KEK file that group or others may read stops start-up
// with one line naming the file, its mode and the fix, unless
// keys.allow_readable_kek_files says otherwise (issue 12, case 6).
func TestKEKFileMode(t *testing.T) {
	for _, tc := range []struct {
		name  string
		mode  os.FileMode
		allow bool
		want  string // "" means start-up succeeds
	}{
		{"world-writable", 0o666, false, "has mode 0666"},
		{"umask 022 default", 0o644, false, "has mode 0644"},
		{"group-readable", 0o640, false, "has mode 0640"},
		{"owner only", 0o600, false, ""},
		{"owner read-only", 0o400, false, ""},
		{"readable but explicitly allowed", 0o644, true, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			kek := writeFile(t, dir, "kek.b64", "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=\n")
			if err := os.Chmod(kek, tc.mode); err != nil {
				t.Fatal(err)
			}
			conf := "keys: {kek_file: " + kek
			if tc.allow {
				conf += ", allow_readable_kek_files: true"
			}
			conf += "}\nstore: {path: " + filepath.Join(dir, "keys.db") + "}\n" + validSystems
			var out, errb bytes.Buffer
			err := run(context.Background(), []string{"run", "--config", writeFile(t, dir, "config.yaml", conf), "--check-config"}, &out, &errb)
			if tc.want == "" {
				if err != nil {
					t.Fatalf("check-config: %v", err)
				}
				return
			}
			if err == nil {
				t.Fatalf("start-up accepted a KEK file of mode %04o", tc.mode)
			}
			msg := err.Error()
			for _, w := range []string{tc.want, kek, "chmod 600", "keys.allow_readable_kek_files"} {
				if !strings.Contains(msg, w) {
					t.Errorf("error %q does not name %q", msg, w)
				}
			}
			if strings.Contains(msg, "\n") || strings.Contains(msg, "MDEyMzQ1") {
				t.Errorf("error spans lines or shows the key: %q", msg)
			}
		})
	}
}
