package main

import (
	"context"
	"fmt"
	"io"
	"strings"

	"go.yaml.in/yaml/v3"

	"github.com/hygiene/pseudonymizer/lookup"
)

// lookupToken is `pseudonymizer lookup-token`: a fresh bearer token for
// the lookup API, printed once, and the tokens-file entry that admits it.
func lookupToken(_ context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlags("lookup-token", "lookup-token --name NAME --systems a,b [--rate N]",
		"Prints a fresh random bearer token for the lookup API, once, and the entry\nto add to lookup.tokens_file (which holds only the token's SHA-256).\nNothing is written anywhere: keep the token in the shop's secret store.")
	name := fs.String("name", "", "the caller's name, shown in metrics (1-64 characters of A-Z a-z 0-9 . _ -)")
	systems := fs.String("systems", "", "comma-separated systems the token may ask for")
	rate := fs.Float64("rate", 100, "the most requests per second the token may make")
	if err := fs.parse(args, stdout, stderr); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fs.usageError(stderr, fmt.Errorf("unexpected argument %q", fs.Arg(0)))
	}
	var sys []string
	for _, s := range strings.Split(*systems, ",") {
		if s = strings.TrimSpace(s); s != "" {
			sys = append(sys, s)
		}
	}
	token, sum, err := lookup.NewToken()
	if err != nil {
		return err
	}
	entry := []lookup.Token{{Name: *name, SHA256: sum, Systems: sys, Rate: *rate}}
	out, err := yaml.Marshal(entry)
	if err != nil {
		return fmt.Errorf("lookup-token: %w", err)
	}
	// The entry must load as the service will load it.
	if _, err := lookup.ParseTokens(out); err != nil {
		return fs.usageError(stderr, err)
	}
	// The token alone on the first line, for scripts; it is shown only now.
	fmt.Fprintf(stdout, "%s\n\n# The token above is shown only now: give it to the shop's server (never to\n# a browser), which sends it as Authorization: Bearer <token>.\n# Add this entry to lookup.tokens_file (chmod 600) and restart the service:\n%s", token, out)
	return nil
}
