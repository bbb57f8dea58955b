package main

import (
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/hygiene/pseudonymizer/store"
)

// objectionReport is the objection state in `status --json`.
type objectionReport struct {
	// Systems are the systems objected to ("*": all); empty when the
	// objection was withdrawn.
	Systems     []string   `json:"systems"`
	EffectiveAt time.Time  `json:"effective_at"`
	RequestID   string     `json:"request_id,omitempty"`
	RecordedAt  *time.Time `json:"recorded_at,omitempty"`
}

// newObjectionReport returns o as reported, or nil.
func newObjectionReport(o *store.Objection) *objectionReport {
	if o == nil {
		return nil
	}
	r := &objectionReport{Systems: append([]string{}, o.Systems...), EffectiveAt: o.EffectiveAt, RequestID: o.RequestID}
	if !o.RecordedAt.IsZero() {
		r.RecordedAt = &o.RecordedAt
	}
	return r
}

// describeObjection is the objection line of `status` for a person.
func describeObjection(o *objectionReport) string {
	ts := o.EffectiveAt.UTC().Format(time.RFC3339Nano)
	var b strings.Builder
	switch {
	case len(o.Systems) == 0:
		fmt.Fprintf(&b, "withdrawn from %s (every system gets events from then on)", ts)
	case len(o.Systems) == 1 && o.Systems[0] == store.AllSystems:
		fmt.Fprintf(&b, "every system, for events at or after %s", ts)
	default:
		fmt.Fprintf(&b, "%s, for events at or after %s", strings.Join(o.Systems, ", "), ts)
	}
	if o.RequestID != "" {
		fmt.Fprintf(&b, ", request %s", o.RequestID)
	}
	if o.RecordedAt != nil {
		fmt.Fprintf(&b, ", recorded %s", o.RecordedAt.UTC().Format(time.RFC3339Nano))
	}
	return b.String()
}

// objectionLogLine is one line of `pseudonymizer objection-log`.
type objectionLogLine struct {
	RequestID   string    `json:"request_id,omitempty"`
	SubjectHash string    `json:"subject_hash"`
	Status      string    `json:"status"`
	Superseded  bool      `json:"superseded"`
	EffectiveAt time.Time `json:"effective_at"`
	Systems     []string  `json:"systems"`
	AppliedAt   time.Time `json:"applied_at"`
}

// runObjectionLog is `pseudonymizer objection-log`: the objection states
// recorded, as JSON lines, for a data-protection officer. It reads only.
func runObjectionLog(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlags("objection-log", "objection-log --config FILE [--since T]", `Prints every objection state carried out (at or after T) as a JSON line:
request_id, subject_hash (the store's keyed hash; never the raw subject ID),
status (APPLIED, UNKNOWN_SUBJECT), superseded (a newer state or a forget
was already recorded: it changed nothing), effective_at, systems ("*": all;
[]: withdrawn), applied_at, oldest first. Reads only.`)
	path := fs.String("config", "", "configuration file (YAML)")
	sinceText := fs.String("since", "", "only states carried out at or after this time: RFC 3339 (2026-01-02T15:04:05Z), a date (2026-01-02) or a duration ago (72h)")
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
	return a.ObjectionLog(ctx, since, func(r store.ObjectionRecord) error {
		return enc.Encode(objectionLogLine{
			RequestID: r.RequestID, SubjectHash: hex.EncodeToString(r.Subject[:]), Status: r.Status.String(),
			Superseded: r.Superseded, EffectiveAt: r.EffectiveAt, Systems: append([]string{}, r.Systems...), AppliedAt: r.AppliedAt,
		})
	})
}

func (emptyStore) ObjectionLog(context.Context, time.Time, func(store.ObjectionRecord) error) error {
	return nil
}
