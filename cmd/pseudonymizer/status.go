package main

import (
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/url"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/hygiene/pseudonymizer/internal/config"
	"github.com/hygiene/pseudonymizer/processor"
	"github.com/hygiene/pseudonymizer/processor/pseudonym"
	"github.com/hygiene/pseudonymizer/store"
)

// Exit codes of `pseudonymizer status` besides 0 (active).
const (
	exitForgotten = 4
	exitUnknown   = 5
)

// subjectReport is what `status --json` prints.
type subjectReport struct {
	// State is active, forgotten or unknown.
	State       string `json:"state"`
	SubjectHash string `json:"subject_hash,omitempty"`
	// KeyCreatedAt is absent when unknown (keys older than the record).
	KeyCreatedAt *time.Time `json:"key_created_at,omitempty"`
	// Pseudonyms maps each system to the subject's current customer
	// pseudonym there (the record key and customer_id of its outputs).
	Pseudonyms map[string]string `json:"pseudonyms,omitempty"`
	// Forgotten describes the newest forget request, if any.
	Forgotten *forgottenReport `json:"forgotten,omitempty"`
	// Objection is the subject's objection state, if one is recorded.
	Objection *objectionReport `json:"objection,omitempty"`
}

type forgottenReport struct {
	RequestedAt time.Time  `json:"requested_at"`
	RequestID   string     `json:"request_id,omitempty"`
	CompletedAt *time.Time `json:"completed_at,omitempty"`
}

// runStatus is `pseudonymizer status`: what the store holds about one
// subject. It reads only.
func runStatus(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlags("status", "status --config FILE [--json] SUBJECT_ID", fmt.Sprintf(`Prints what the key store holds about SUBJECT_ID (a customer_id): active
(since when, and its current customer pseudonym in each system), forgotten
(when, and by which request; no key exists) or unknown, and its objection
state (the systems it objects to, from when), if any. Reads only.
Exit status: 0 active, %d forgotten, %d unknown.`, exitForgotten, exitUnknown))
	path := fs.String("config", "", "configuration file (YAML)")
	asJSON := fs.Bool("json", false, "print one JSON object")
	if err := fs.parse(args, stdout, stderr); err != nil {
		return err
	}
	if fs.NArg() != 1 || fs.Arg(0) == "" {
		return fs.usageError(stderr, errors.New("want exactly one SUBJECT_ID"))
	}
	if reason := processor.IDProblem("SUBJECT_ID", fs.Arg(0)); reason != "" {
		// The service dead-letters such a request (and no order with
		// such a customer_id ever got a key).
		return fs.usageError(stderr, errors.New(reason))
	}
	cfg, err := loadConfig(*path)
	if err != nil {
		return err
	}
	_, plan, err := compilePlan(&cfg)
	if err != nil {
		return err
	}
	a, closeStore, err := openAuditor(ctx, cfg)
	if err != nil {
		return err
	}
	defer closeStore()
	st, err := a.Subject(ctx, fs.Arg(0))
	if err != nil {
		return err
	}
	defer clear(st.Key)

	rep := subjectReport{State: "unknown"}
	if st.Hash != (store.SubjectHash{}) {
		rep.SubjectHash = hex.EncodeToString(st.Hash[:])
	}
	code := exitUnknown
	switch {
	case st.Key != nil:
		rep.State, code = "active", 0
		if !st.KeyCreatedAt.IsZero() {
			rep.KeyCreatedAt = &st.KeyCreatedAt
		}
		rep.Pseudonyms = map[string]string{}
		d := pseudonym.NewDeriver()
		defer d.Reset()
		for i, sys := range plan.Systems() {
			rep.Pseudonyms[sys] = string(plan.SubjectPseudonym(nil, i, st.Key, []byte(fs.Arg(0)), d))
		}
	case st.Forgotten != nil:
		rep.State, code = "forgotten", exitForgotten
	}
	if f := st.Forgotten; f != nil {
		rep.Forgotten = &forgottenReport{RequestedAt: f.RequestedAt, RequestID: f.RequestID}
		if !f.CompletedAt.IsZero() {
			rep.Forgotten.CompletedAt = &f.CompletedAt
		}
	}

	rep.Objection = newObjectionReport(st.Objection)
	if *asJSON {
		b, err := json.Marshal(rep)
		if err != nil {
			return err
		}
		fmt.Fprintf(stdout, "%s\n", b)
	} else {
		printSubject(stdout, &rep, plan.Systems())
	}
	if code != 0 {
		return &exitError{code: code, err: errSilent}
	}
	return nil
}

// errSilent is an error whose exit code says everything; main prints nothing.
var errSilent = errors.New("")

// printSubject prints rep for a person.
func printSubject(w io.Writer, rep *subjectReport, systems []string) {
	ts := func(t time.Time) string { return t.UTC().Format(time.RFC3339Nano) }
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	defer tw.Flush()
	switch rep.State {
	case "active":
		since := "unknown (the key predates the recording of creation times)"
		if rep.KeyCreatedAt != nil {
			since = ts(*rep.KeyCreatedAt)
		}
		fmt.Fprintf(tw, "state:\tactive\n")
		fmt.Fprintf(tw, "key created:\t%s\n", since)
	case "forgotten":
		fmt.Fprintf(tw, "state:\tforgotten (no key exists: every pseudonym derived from it is unresolvable)\n")
	default:
		fmt.Fprintf(tw, "state:\tunknown (no key and no forget request for this subject)\n")
	}
	fmt.Fprintf(tw, "subject hash:\t%s\n", rep.SubjectHash)
	if f := rep.Forgotten; f != nil {
		label := "forgotten:"
		if rep.State == "active" {
			label = "forgotten before:"
		}
		fmt.Fprintf(tw, "%s\trequested %s", label, ts(f.RequestedAt))
		if f.RequestID != "" {
			fmt.Fprintf(tw, ", request %s", f.RequestID)
		}
		if f.CompletedAt != nil {
			fmt.Fprintf(tw, ", completed %s", ts(*f.CompletedAt))
		}
		fmt.Fprintln(tw)
	}
	if rep.Objection != nil {
		fmt.Fprintf(tw, "objects to:\t%s\n", describeObjection(rep.Objection))
	}
	if len(rep.Pseudonyms) > 0 {
		fmt.Fprintf(tw, "customer pseudonym per system (record key and customer_id of its outputs):\n")
		for _, sys := range systems {
			fmt.Fprintf(tw, "  %s\t%s\n", sys, rep.Pseudonyms[sys])
		}
	}
}

// forgetLogLine is one line of `pseudonymizer forget-log`.
type forgetLogLine struct {
	RequestID   string     `json:"request_id,omitempty"`
	SubjectHash string     `json:"subject_hash,omitempty"`
	Status      string     `json:"status"`
	RequestedAt *time.Time `json:"requested_at,omitempty"`
	CompletedAt time.Time  `json:"completed_at"`
}

// runForgetLog is `pseudonymizer forget-log`: the forget results as JSON
// lines, for a data-protection officer. It reads only.
func runForgetLog(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlags("forget-log", "forget-log --config FILE [--since T]", `Prints every forget request carried out (at or after T) as a JSON line:
request_id, subject_hash (the store's keyed hash; never the raw subject ID),
status, requested_at, completed_at, oldest first. Reads only.`)
	path := fs.String("config", "", "configuration file (YAML)")
	sinceText := fs.String("since", "", "only requests completed at or after this time: RFC 3339 (2026-01-02T15:04:05Z), a date (2026-01-02) or a duration ago (72h)")
	if err := fs.parse(args, stdout, stderr); err != nil {
		return err
	}
	if fs.NArg() != 0 {
		return fs.usageError(stderr, errors.New("unexpected arguments"))
	}
	since, err := parseSince(*sinceText, time.Now())
	if err != nil {
		return err
	}
	cfg, err := loadConfig(*path)
	if err != nil {
		return err
	}
	a, closeStore, err := openAuditor(ctx, cfg)
	if err != nil {
		return err
	}
	defer closeStore()
	enc := json.NewEncoder(stdout)
	return a.ForgetLog(ctx, since, func(r store.ForgetRecord) error {
		line := forgetLogLine{RequestID: r.RequestID, Status: r.Status.String(), CompletedAt: r.CompletedAt}
		if r.Subject != (store.SubjectHash{}) {
			line.SubjectHash = hex.EncodeToString(r.Subject[:])
		}
		if !r.RequestedAt.IsZero() {
			line.RequestedAt = &r.RequestedAt
		}
		return enc.Encode(line)
	})
}

// parseSince parses --since: empty (everything), RFC 3339, a date, or a
// duration before now.
func parseSince(s string, now time.Time) (time.Time, error) {
	s = strings.TrimSpace(s)
	if s == "" {
		return time.Time{}, nil
	}
	if t, err := time.Parse(time.RFC3339Nano, s); err == nil {
		return t, nil
	}
	if t, err := time.Parse(time.DateOnly, s); err == nil {
		return t, nil
	}
	if d, err := time.ParseDuration(s); err == nil && d >= 0 {
		return now.Add(-d), nil
	}
	return time.Time{}, fmt.Errorf("--since %q: want RFC 3339 (2026-01-02T15:04:05Z), a date (2026-01-02) or a duration ago (72h)", s)
}

// openAuditor opens the configured store for reading. A store that was
// never initialized answers that it holds nothing, without creating tables,
// files or an index key. PostgreSQL sessions are read-only: a schema that
// needs a migration is an error (run the service once first), not a write.
//
// The embedded store's file is held by a running service: then the
// service's admin socket answers (see admin.go).
func openAuditor(ctx context.Context, cfg config.Config) (store.Auditor, func(), error) {
	if cfg.Store.Postgres == "" {
		if c, ok := dialAdmin(ctx, cfg.Store.Path); ok {
			return c, c.close, nil
		}
	}
	kr, _, err := loadKeys(ctx, cfg, keysReadOnly)
	if err != nil {
		return nil, nil, err
	}
	initialized, err := checkStore(ctx, cfg.Store, kr)
	if err != nil {
		return nil, nil, err
	}
	if !initialized {
		return emptyStore{}, func() {}, nil
	}
	sc := cfg.Store
	if sc.Postgres != "" {
		if sc.Postgres, err = readOnlyDSN(sc.Postgres); err != nil {
			return nil, nil, fmt.Errorf("store.postgres: %w", err)
		}
	}
	ks, err := openStore(ctx, sc, kr)
	if err != nil {
		return nil, nil, err
	}
	a, ok := ks.(store.Auditor)
	if !ok {
		ks.Close()
		return nil, nil, fmt.Errorf("store %T cannot answer status questions", ks)
	}
	return a, func() { ks.Close() }, nil
}

// readOnlyDSN makes every session of dsn read-only.
func readOnlyDSN(dsn string) (string, error) {
	if strings.Contains(dsn, "://") {
		u, err := url.Parse(dsn)
		if err != nil {
			return "", errors.New("not a valid URL")
		}
		q := u.Query()
		q.Set("default_transaction_read_only", "on")
		u.RawQuery = q.Encode()
		return u.String(), nil
	}
	return dsn + " default_transaction_read_only=on", nil
}

// emptyStore is a store that was never initialized: it holds nothing.
type emptyStore struct{}

func (emptyStore) Subject(context.Context, string) (store.SubjectState, error) {
	return store.SubjectState{}, nil
}

func (emptyStore) ForgetLog(context.Context, time.Time, func(store.ForgetRecord) error) error {
	return nil
}
