// Command pseudonymizer keeps customer identifiers out of marketing systems:
// it turns raw order events into per-system pseudonymized copies and honours
// GDPR forget requests by crypto-shredding. See README.md.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"
)

// Version is set at build time with -ldflags "-X main.Version=$(git
// describe --tags --always --dirty)"; see version for the fallback.
var Version = "dev"

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	// A second signal exits at once.
	go func() {
		<-ctx.Done()
		stop()
		again := make(chan os.Signal, 1)
		signal.Notify(again, os.Interrupt, syscall.SIGTERM)
		<-again
		fmt.Fprintln(os.Stderr, "pseudonymizer: second signal, exiting now")
		os.Exit(130)
	}()
	if err := run(ctx, os.Args[1:], os.Stdout, os.Stderr); err != nil {
		if !errors.Is(err, flag.ErrHelp) && !errors.Is(err, errSilent) {
			fmt.Fprintln(os.Stderr, "pseudonymizer:", err)
		}
		os.Exit(exitCode(err))
	}
}

// exitError carries a specific exit code.
type exitError struct {
	code int
	err  error
}

func (e *exitError) Error() string { return e.err.Error() }
func (e *exitError) Unwrap() error { return e.err }

func exitCode(err error) int {
	var ee *exitError
	if errors.As(err, &ee) {
		return ee.code
	}
	if errors.Is(err, flag.ErrHelp) {
		return 2
	}
	return 1
}

const usage = `pseudonymizer: per-system pseudonyms for order events, with crypto-shredding.

Usage:
  pseudonymizer run --config FILE [--check-config]   run the service until SIGINT/SIGTERM
  pseudonymizer demo [--orders N] [--keep-running] [--broker-only]
                                                     zero set-up demonstration, or just a local broker
  pseudonymizer schema --config FILE --system NAME   print a system's output Avro schema
  pseudonymizer forget --config FILE SUBJECT_ID      publish a forget request, await its confirmation
  pseudonymizer status --config FILE SUBJECT_ID      what the key store holds about a subject (read-only)
  pseudonymizer forget-log --config FILE [--since T] the forget requests carried out, as JSON lines (read-only)
  pseudonymizer objection-log --config FILE [--since T]
                                                     the objection states recorded, as JSON lines (read-only)
  pseudonymizer tail --config FILE --system NAME     print a system's output topic as JSON lines
  pseudonymizer linkability --config FILE [--sample N] [--file EVENTS.avro | --sample-data]
                                                     how far each pair of systems can join their records
  pseudonymizer produce-sample --config FILE [--orders N]
                                                     publish sample orders to the orders topic
  pseudonymizer rewrap --config FILE                 re-wrap stored keys with the active KEK
  pseudonymizer lookup-token --name NAME --systems a,b [--rate N]
                                                     a fresh lookup API token and its tokens-file entry
  pseudonymizer healthcheck [--url URL]              exit 0 when the service's /readyz answers 200
  pseudonymizer version                              print the version
  pseudonymizer help COMMAND                         a command's flags
`

// oneLine keeps an error on one line (some driver errors span several), so
// start-up failures read as one line that names the problem.
type oneLine struct{ err error }

func (e oneLine) Error() string {
	return strings.Join(strings.Fields(strings.ReplaceAll(e.err.Error(), "\n", " ")), " ")
}
func (e oneLine) Unwrap() error { return e.err }

// run dispatches a subcommand; it is main without the process exit.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	err := dispatch(ctx, args, stdout, stderr)
	switch {
	case err == nil || errors.Is(err, errHelped):
		return nil
	case errors.Is(err, flag.ErrHelp):
		return err
	}
	return oneLine{err}
}

func dispatch(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return flag.ErrHelp
	}
	cmd, rest := args[0], args[1:]
	switch cmd {
	case "run":
		return runService(ctx, rest, stdout, stderr)
	case "demo":
		return runDemo(ctx, rest, stdout, stderr)
	case "schema":
		return runSchema(ctx, rest, stdout, stderr)
	case "forget":
		return runForget(ctx, rest, stdout, stderr)
	case "rewrap":
		return runRewrap(ctx, rest, stdout, stderr)
	case "status":
		return runStatus(ctx, rest, stdout, stderr)
	case "forget-log":
		return runForgetLog(ctx, rest, stdout, stderr)
	case "objection-log":
		return runObjectionLog(ctx, rest, stdout, stderr)
	case "tail":
		return runTail(ctx, rest, stdout, stderr)
	case "linkability":
		return runLinkability(ctx, rest, stdout, stderr)
	case "produce-sample":
		return runProduceSample(ctx, rest, stdout, stderr)
	case "lookup-token":
		return lookupToken(ctx, rest, stdout, stderr)
	case "healthcheck":
		return runHealthcheck(ctx, rest, stdout, stderr)
	case "version", "--version", "-version":
		fmt.Fprintln(stdout, version())
		return nil
	case "help", "-h", "--help", "-help":
		if cmd == "help" && len(rest) > 0 && rest[0] != "help" {
			return dispatch(ctx, []string{rest[0], "--help"}, stdout, stderr)
		}
		fmt.Fprint(stdout, usage)
		return nil
	}
	fmt.Fprint(stderr, usage)
	return &exitError{code: 2, err: fmt.Errorf("unknown command %q", cmd)}
}
