package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"runtime/debug"
)

// errHelped reports that a command printed its help on request; the process
// exits 0.
var errHelped = errors.New("help printed")

// flags is a subcommand's flag set with its usage text.
type flags struct {
	*flag.FlagSet
	synopsis string // after "pseudonymizer "
	about    string
	args     []string // the positional arguments, wherever they stood
}

// Args returns the positional arguments.
func (f *flags) Args() []string { return f.args }

// NArg returns the number of positional arguments.
func (f *flags) NArg() int { return len(f.args) }

// Arg returns the i-th positional argument, or "" if there is none.
func (f *flags) Arg(i int) string {
	if i < 0 || i >= len(f.args) {
		return ""
	}
	return f.args[i]
}

// parseInterspersed parses args, accepting flags after positional
// arguments too (`forget SUBJECT --timeout 5s`), as most Go CLIs do;
// everything after "--" is positional.
func (f *flags) parseInterspersed(args []string) error {
	f.args = nil
	for {
		if err := f.FlagSet.Parse(args); err != nil {
			return err
		}
		rest := f.FlagSet.Args()
		if len(rest) == 0 {
			return nil
		}
		if consumed := len(args) - len(rest); consumed > 0 && args[consumed-1] == "--" {
			f.args = append(f.args, rest...)
			return nil
		}
		f.args = append(f.args, rest[0])
		args = rest[1:]
	}
}

// newFlags returns the flag set of subcommand name; synopsis is its usage
// line without the program name, about a short description.
func newFlags(name, synopsis, about string) *flags {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	fs.Usage = func() {}
	return &flags{FlagSet: fs, synopsis: synopsis, about: about}
}

// usage writes the command's usage to w.
func (f *flags) usage(w io.Writer) {
	fmt.Fprintf(w, "Usage: pseudonymizer %s\n\n%s\n", f.synopsis, f.about)
	n := 0
	f.VisitAll(func(*flag.Flag) { n++ })
	if n > 0 {
		fmt.Fprintf(w, "\nFlags:\n")
		f.SetOutput(w)
		f.PrintDefaults()
		f.SetOutput(io.Discard)
	}
}

// parse parses args. -h or --help prints the usage to stdout and returns
// errHelped; a bad flag prints the usage to stderr and returns an error
// with exit status 2.
func (f *flags) parse(args []string, stdout, stderr io.Writer) error {
	err := f.parseInterspersed(args)
	switch {
	case errors.Is(err, flag.ErrHelp):
		f.usage(stdout)
		return errHelped
	case err != nil:
		return f.usageError(stderr, err)
	}
	return nil
}

// usageError prints the usage to stderr and returns err with exit status 2.
func (f *flags) usageError(stderr io.Writer, err error) error {
	f.usage(stderr)
	return &exitError{code: 2, err: fmt.Errorf("%s: %w", f.Name(), err)}
}

// version returns the stamped Version or, for a plain `go build`, the
// module version or VCS revision the Go toolchain recorded.
func version() string {
	bi, ok := debug.ReadBuildInfo()
	return versionFrom(Version, bi, ok)
}

func versionFrom(stamped string, bi *debug.BuildInfo, ok bool) string {
	if stamped != "" && stamped != "dev" {
		return stamped
	}
	if !ok || bi == nil {
		return "dev"
	}
	if v := bi.Main.Version; v != "" && v != "(devel)" {
		return v
	}
	var rev, modified string
	for _, s := range bi.Settings {
		switch s.Key {
		case "vcs.revision":
			rev = s.Value
		case "vcs.modified":
			modified = s.Value
		}
	}
	if rev == "" {
		return "dev"
	}
	if len(rev) > 12 {
		rev = rev[:12]
	}
	v := "dev-" + rev
	if modified == "true" {
		v += "-dirty"
	}
	return v
}
