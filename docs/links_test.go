// Package docs_test checks the documentation: every relative link in
// README.md, CHANGELOG.md and docs/**/*.md points at a file or directory
// inside the repository, and every #anchor at a heading of its target; every
// page under docs/ is linked from docs/README.md; the README's test command
// is the one CI runs; the README stays a front door.
package docs_test

import (
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"slices"
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
	files = append(files, docPages(t, root)...)
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

// docPages returns every markdown file under docs/, in subdirectories too.
func docPages(t *testing.T, root string) []string {
	t.Helper()
	var pages []string
	err := filepath.WalkDir(filepath.Join(root, "docs"), func(path string, d fs.DirEntry, err error) error {
		if err == nil && !d.IsDir() && strings.HasSuffix(path, ".md") {
			pages = append(pages, path)
		}
		return err
	})
	if err != nil || len(pages) == 0 {
		t.Fatalf("no docs/**/*.md (%v)", err)
	}
	return pages
}

// TestEveryPageIndexed checks that docs/README.md links every other page
// under docs/, so that none is reachable only by browsing the directory.
func TestEveryPageIndexed(t *testing.T) {
	root, err := filepath.Abs("..")
	if err != nil {
		t.Fatal(err)
	}
	index := filepath.Join(root, "docs", "README.md")
	b, err := os.ReadFile(index)
	if err != nil {
		t.Fatal(err)
	}
	linked := map[string]bool{}
	for _, m := range link.FindAllStringSubmatch(fence.ReplaceAllString(string(b), ""), -1) {
		path, _, _ := strings.Cut(m[1], "#")
		linked[filepath.Clean(filepath.Join(filepath.Dir(index), path))] = true
	}
	for _, page := range docPages(t, root) {
		if page != index && !linked[page] {
			rel, _ := filepath.Rel(root, page)
			t.Errorf("%s is not linked from docs/README.md", rel)
		}
	}
}

// TestReadmeTestCommandIsCIs checks that the command under the README's
// "Running the tests" is, verbatim, a line of .ci/run, so that what the
// README promises is what CI runs.
func TestReadmeTestCommandIsCIs(t *testing.T) {
	readme, err := os.ReadFile("../README.md")
	if err != nil {
		t.Fatal(err)
	}
	_, section, ok := strings.Cut(string(readme), "\n## Running the tests\n")
	if !ok {
		t.Fatal(`README.md has no section "Running the tests"`)
	}
	_, block, ok := strings.Cut(section, "```sh\n")
	if !ok {
		t.Fatal(`README.md: no sh block under "Running the tests"`)
	}
	command, _, _ := strings.Cut(block, "\n")
	if !strings.HasPrefix(command, "go test ") {
		t.Fatalf("README.md: the test command is %q, not a go test command", command)
	}
	ci, err := os.ReadFile("../.ci/run")
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Contains(strings.Split(string(ci), "\n"), command) {
		t.Errorf(".ci/run does not run the README's test command %q", command)
	}
	guide, err := os.ReadFile("testing.md")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(guide), "\n"+command+"\n") {
		t.Errorf("docs/testing.md does not show the README's test command %q", command)
	}
}

// TestReadmeIsAFrontDoor keeps the README short: what it is, the demo,
// running the service, how it works, pointers. Details belong in docs/.
func TestReadmeIsAFrontDoor(t *testing.T) {
	const maxLines = 300
	b, err := os.ReadFile("../README.md")
	if err != nil {
		t.Fatal(err)
	}
	if n := strings.Count(string(b), "\n"); n > maxLines {
		t.Errorf("README.md has %d lines, more than %d: move details to a page under docs/ and link it", n, maxLines)
	}
	if i := strings.Index(string(b), "go run ./cmd/pseudonymizer demo"); i < 0 || strings.Count(string(b[:i]), "\n") > 40 {
		t.Error("README.md: the demo command is not in the first 40 lines")
	}
}
