// Package docs_test checks the documentation: every relative link in
// README.md, CHANGELOG.md and docs/*.md points at a file or directory inside
// the repository, and every #anchor at a heading of its target.
package docs_test

import (
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

var (
	fence      = regexp.MustCompile("(?s)```.*?```")
	inlineCode = regexp.MustCompile("`[^`\n]*`")
	link       = regexp.MustCompile(`\]\(([^)\s]+)\)`)
	heading    = regexp.MustCompile(`(?m)^#{1,6}\s+(.+?)\s*$`)
	notSlug    = regexp.MustCompile(`[^a-z0-9 _-]`)
)

// anchors returns the GitHub anchors of a markdown file's headings.
func anchors(t *testing.T, path string) map[string]bool {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]bool{}
	for _, m := range heading.FindAllStringSubmatch(fence.ReplaceAllString(string(b), ""), -1) {
		slug := notSlug.ReplaceAllString(strings.ToLower(strings.ReplaceAll(m[1], "`", "")), "")
		out[strings.ReplaceAll(slug, " ", "-")] = true
	}
	return out
}

func TestRelativeLinksResolve(t *testing.T) {
	root, err := filepath.Abs("..")
	if err != nil {
		t.Fatal(err)
	}
	files := []string{filepath.Join(root, "README.md"), filepath.Join(root, "CHANGELOG.md")}
	docs, err := filepath.Glob(filepath.Join(root, "docs", "*.md"))
	if err != nil || len(docs) == 0 {
		t.Fatalf("no docs/*.md (%v)", err)
	}
	files = append(files, docs...)
	checked := 0
	for _, file := range files {
		b, err := os.ReadFile(file)
		if err != nil {
			t.Fatal(err)
		}
		rel, _ := filepath.Rel(root, file)
		text := inlineCode.ReplaceAllString(fence.ReplaceAllString(string(b), ""), "")
		for _, m := range link.FindAllStringSubmatch(text, -1) {
			target := m[1]
			if strings.Contains(target, "://") || strings.HasPrefix(target, "mailto:") {
				continue
			}
			checked++
			path, anchor, _ := strings.Cut(target, "#")
			resolved := file
			if path != "" {
				resolved = filepath.Clean(filepath.Join(filepath.Dir(file), path))
			}
			if resolved != root && !strings.HasPrefix(resolved, root+string(filepath.Separator)) {
				t.Errorf("%s: link %s leaves the repository", rel, target)
				continue
			}
			fi, err := os.Stat(resolved)
			if err != nil {
				t.Errorf("%s: link %s: %v", rel, target, err)
				continue
			}
			if anchor != "" && !fi.IsDir() && strings.HasSuffix(resolved, ".md") && !anchors(t, resolved)[anchor] {
				t.Errorf("%s: link %s: no heading with anchor #%s", rel, target, anchor)
			}
		}
	}
	if checked < 10 {
		t.Errorf("only %d relative links checked; is the link pattern broken?", checked)
	}
}
