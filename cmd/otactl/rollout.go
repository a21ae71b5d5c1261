package main

import (
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"math"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/patchfleet/ota/client"
	"github.com/patchfleet/ota/server/api/wire"
	"github.com/patchfleet/ota/server/rollout"
)

// rolloutCommands are the subcommands of "otactl rollout".
var rolloutCommands = []command{
	{"create", (*cli).rolloutCreate},
	{"list", (*cli).rolloutList},
	{"show", (*cli).rolloutShow},
	{"start", actionCommand("start", "Starts a draft rollout at its first stage.")},
	{"pause", actionCommand("pause", "Pauses a running or completed rollout: no new offers; handsets already\ninstalling finish and report.")},
	{"resume", actionCommand("resume", "Resumes a paused rollout, clearing an auto-halt. Results before now no longer\ncount toward a halt; held models stay held (otactl rollout release-hold).")},
	{"abort", actionCommand("abort", "Aborts a rollout for good: no new offers and no retries. It cannot be undone.")},
	{"complete", actionCommand("complete", "Completes a running rollout at its last stage; it goes on offering the release\nthere, so handsets that were offline catch up.")},
	{"advance", (*cli).rolloutAdvance},
	{"hold", (*cli).rolloutHold},
	{"release-hold", (*cli).rolloutReleaseHold},
	{"events", (*cli).rolloutEvents},
	{"audit", (*cli).rolloutAudit},
	{"approvals", (*cli).rolloutApprovals},
	{"approve", decisionCommand("approve", "Approves a widening another person asked for (four eyes: a start, advance or\nresume that lets the patch reach more than 50% of the handsets its rollouts\nselect); it is applied at once, in your name. You cannot approve your own\nrequest, nor one of someone who created, re-enabled or raised your account in\nthe last 24 hours.")},
	{"reject", decisionCommand("reject", "Rejects a widening waiting for approval; nothing changes. The requester may\nreject (withdraw) their own.")},
	{"watch", (*cli).rolloutWatch},
}

// csvFlag is a list flag given as "a,b" or repeated.
type csvFlag []string

func (l *csvFlag) String() string { return strings.Join(*l, ",") }

func (l *csvFlag) Set(v string) error {
	for _, s := range strings.Split(v, ",") {
		s = strings.TrimSpace(s)
		if s == "" {
			return errors.New("empty value in the list")
		}
		*l = append(*l, s)
	}
	return nil
}

// parsePercent reads "5%" or "5" as 5 (percent).
func parsePercent(s string) (float64, error) {
	p, err := strconv.ParseFloat(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(s), "%")), 64)
	if err != nil || math.IsNaN(p) || math.IsInf(p, 0) {
		return 0, fmt.Errorf("%q: want a percent such as 5 or 5%%", s)
	}
	return p, nil
}

// percentFlag is a percent flag: "5%" and "5" are both 5 percent.
type percentFlag struct {
	value float64
	set   bool
}

func (f *percentFlag) String() string {
	if f == nil || !f.set {
		return ""
	}
	return strconv.FormatFloat(f.value, 'g', -1, 64) + "%"
}

func (f *percentFlag) Set(v string) error {
	p, err := parsePercent(v)
	if err != nil {
		return err
	}
	f.value, f.set = p, true
	return nil
}

// durationListFlag is "1h,4h,24h".
type durationListFlag []string

func (l *durationListFlag) String() string { return strings.Join(*l, ",") }

func (l *durationListFlag) Set(v string) error {
	for _, s := range strings.Split(v, ",") {
		s = strings.TrimSpace(s)
		if _, err := time.ParseDuration(s); err != nil {
			return fmt.Errorf("%q: want durations such as 1h,4h,24h", s)
		}
		*l = append(*l, s)
	}
	return nil
}

func (c *cli) rolloutCreate(args []string) error {
	var sf serverFlags
	var release, buildMin, buildMax, failureWindow, soak, silenceAfter, window, reason, id, startAt, deadline string
	var stages, models, channels, regions csvFlag
	var backoff durationListFlag
	var maxRate, maxSilence percentFlag
	var minResults, minConfirmations int64
	var retries, maxOffers int
	var draft bool
	fs := newFlagSet("rollout create --release PATH --stages 1,10,50,100 [flags]",
		"Creates a rollout of a published release and starts it at its first stage (unless\n"+
			"--draft). Only a running rollout offers a release to handsets. The release must\n"+
			"state the build it installs (otactl release create --installs-build); the rollout\n"+
			"takes the release's models and build range from its signed metadata, and the\n"+
			"selector flags narrow them. Policy flags left out take the server's defaults:\n"+
			"halt above 5% failures over 1h once 50 results are in, no auto-advance, 3 retries\n"+
			"after 1h, 4h and 24h, no offers-per-minute cap, any hour.\n\n"+
			"--start-at schedules the start: the rollout offers nothing before it, and its first\n"+
			"stage and soak begin there. --deadline makes offers urgent from then on: handsets are\n"+
			"offered the release outside --window too, and install it without waiting for a\n"+
			"maintenance window of their own.", c.stderr)
	sf.register(fs)
	fs.StringVar(&release, "release", "", "the published target path, e.g. cm-privacy/2026.1/update.zip (required)")
	fs.Var(&stages, "stages", "stage percents, increasing, e.g. 1,10,50,100 (required)")
	fs.Var(&models, "models", "only these models, comma-separated (default: all the release is for)")
	fs.Var(&channels, "channels", "only these channels, comma-separated (default: all)")
	fs.Var(&regions, "regions", "only these regions (ISO codes such as DE,FR), comma-separated (default: all)")
	fs.StringVar(&buildMin, "build-min", "", "only handsets on this build or newer")
	fs.StringVar(&buildMax, "build-max", "", "only handsets on this build or older")
	fs.Var(&maxRate, "max-failure-rate", "halt (or hold a model) above this failure rate; 5% and 5 both mean 5 percent (default 5%)")
	fs.Int64Var(&minResults, "min-results", 0, "results needed before the failure rate counts, and before a stage advances on its own (default 50)")
	fs.StringVar(&failureWindow, "failure-window", "", "how far back results count toward the failure rate, e.g. 1h (default 1h)")
	fs.StringVar(&soak, "soak", "", "advance to the next stage on its own after this long healthy, e.g. 6h (default: never; advance by hand)")
	fs.Int64Var(&minConfirmations, "min-confirmations", 0, "handsets of a stage that must be back on the release's build with the patch\nbefore it advances on its own (default 0: reported installs are enough)")
	fs.IntVar(&retries, "retries", 0, "offer a failed install again this many times (default 3)")
	fs.Var(&backoff, "backoff", "waits before the retries, e.g. 1h,4h,24h; the last repeats (default 1h,4h,24h)")
	fs.StringVar(&silenceAfter, "silence-after", "", "count a handset that began installing and has not checked in for this long as silent,\na failure for its model and the rollout, e.g. 3h: above the poll interval plus the install time (default: off)")
	fs.Var(&maxSilence, "max-silence-rate", "halt (or hold a model) above this share of silent handsets, on its own; needs --silence-after (default: none)")
	fs.IntVar(&maxOffers, "max-offers-per-minute", 0, "cap on new offers per minute across all servers (default: no cap)")
	fs.StringVar(&window, "window", "", "new offers only in these handset-local hours, e.g. 01:00-05:00 (default: any hour)")
	fs.StringVar(&startAt, "start-at", "", "offer nothing before this time: RFC 3339 such as 2026-12-08T02:00:00Z,\nor +DURATION from now such as +2h (default: at once)")
	fs.StringVar(&deadline, "deadline", "", "from this time on, offers are urgent: outside --window too, installed at once;\nRFC 3339 or +DURATION from now, after --start-at (default: never)")
	fs.BoolVar(&draft, "draft", false, "create it as a draft; start it later with otactl rollout start")
	fs.StringVar(&reason, "reason", "", "why, for the audit log (default \"created by NAME\")")
	fs.StringVar(&id, "id", "", "the rollout id (default: the server makes one, ro-...)")
	pos, err := parseArgs(fs, args)
	if err != nil {
		return err
	}
	if err := wantArgs(fs, pos, 0, 0, ""); err != nil {
		return err
	}
	if release == "" || len(stages) == 0 {
		return usageError{errors.New("rollout create needs --release PATH and --stages, e.g. --stages 1,10,50,100")}
	}
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	req := wire.RolloutRequest{ID: id, Release: release, Models: models, Channels: channels, Regions: regions,
		BuildMin: buildMin, BuildMax: buildMax, Backoff: backoff, Window: window, Draft: draft, Reason: reason}
	for _, s := range stages {
		p, err := parsePercent(s)
		if err != nil {
			return usageError{fmt.Errorf("--stages %w", err)}
		}
		req.Stages = append(req.Stages, p)
	}
	if maxRate.set {
		if maxRate.value < 0 || maxRate.value > 100 {
			return usageError{fmt.Errorf("--max-failure-rate %s: want a percent from 0 to 100, such as 5%%", maxRate.String())}
		}
		rate := maxRate.value / 100
		req.MaxFailureRate = &rate
	}
	if maxSilence.set {
		if maxSilence.value < 0 || maxSilence.value > 100 {
			return usageError{fmt.Errorf("--max-silence-rate %s: want a percent from 0 to 100, such as 2%%", maxSilence.String())}
		}
		rate := maxSilence.value / 100
		req.MaxSilenceRate = &rate
	}
	if set["min-results"] {
		req.MinResults = &minResults
	}
	if set["min-confirmations"] {
		req.MinConfirmations = &minConfirmations
	}
	if set["retries"] {
		req.Retries = &retries
	}
	if set["max-offers-per-minute"] {
		req.MaxOffersPerMinute = &maxOffers
	}
	for _, d := range []struct {
		flag string
		v    string
		dst  **string
	}{{"failure-window", failureWindow, &req.FailureWindow}, {"soak", soak, &req.Soak}, {"silence-after", silenceAfter, &req.SilenceAfter}} {
		if !set[d.flag] {
			continue
		}
		if _, err := time.ParseDuration(d.v); err != nil {
			return usageError{fmt.Errorf("--%s %q: want a duration such as 30m or 6h", d.flag, d.v)}
		}
		v := d.v
		*d.dst = &v
	}
	now := time.Now()
	for _, t := range []struct {
		flag, v string
		dst     *string
	}{{"start-at", startAt, &req.StartAt}, {"deadline", deadline, &req.Deadline}} {
		if *t.dst, err = parseAhead(t.flag, t.v, now); err != nil {
			return err
		}
	}
	cl, err := c.client(sf)
	if err != nil {
		return err
	}
	ch, err := cl.CreateRollout(c.ctx, req)
	if err != nil {
		return rolloutCreateError(cl.explain(err))
	}
	if a := ch.Pending; a != nil {
		// Created as a draft; its start waits for four eyes.
		fmt.Fprintf(c.stdout, "created rollout %s as a draft\n", esc(a.RolloutID))
		printPending(c.stdout, a)
		return nil
	}
	r := ch.Rollout
	fmt.Fprintf(c.stdout, "created rollout %s: %s\n", esc(r.ID), stageLine(r))
	printRollout(c.stdout, r, time.Now())
	return nil
}

// parseAhead reads the time of flag: RFC 3339, or "+" and a duration
// ahead of now ("+2h"), as the RFC 3339 the API takes; "" stays "".
// (parseWhen, for --since, reads a bare duration back from now: a time
// ahead takes the "+" so that neither is mistaken for the other.)
func parseAhead(flag, v string, now time.Time) (string, error) {
	if v == "" {
		return "", nil
	}
	if rest, ok := strings.CutPrefix(v, "+"); ok {
		if d, err := time.ParseDuration(rest); err == nil && d >= 0 {
			return now.Add(d).UTC().Truncate(time.Second).Format(time.RFC3339), nil
		}
	} else if t, err := time.Parse(time.RFC3339, v); err == nil {
		return t.UTC().Format(time.RFC3339), nil
	}
	return "", usageError{fmt.Errorf("--%s %q: want an RFC 3339 time such as 2026-12-08T02:00:00Z, or +DURATION from now such as +2h", flag, v)}
}

// flagOf is the otactl flag of an API body field.
func flagOf(field string) string {
	name, _, _ := strings.Cut(field, "[")
	switch name {
	case "release", "release.installs_build", "release.patch_id":
		return "--release"
	}
	return "--" + strings.ReplaceAll(name, "_", "-")
}

// rolloutCreateError names the flag of a field the server refused, and
// says what to do about a release that states no build.
func rolloutCreateError(err error) error {
	var ae *apiError
	if !errors.As(err, &ae) || ae.Code != "invalid" || ae.Field == "" {
		return rolloutAPIError(err)
	}
	msg := fmt.Sprintf("%s: %s", flagOf(ae.Field), fieldMessage(ae))
	if name, _, _ := strings.Cut(ae.Field, "["); name != ae.Field {
		msg = fmt.Sprintf("%s (%s): %s", flagOf(ae.Field), ae.Field, fieldMessage(ae))
	}
	switch ae.Field {
	case "release.installs_build":
		msg += " (publish it again with otactl release create ... --installs-build BUILD)"
	case "max_failure_rate":
		msg = "--max-failure-rate: want a percent from 0 to 100, such as 5%"
	}
	return errors.New(msg)
}

// fieldMessage is a 400's message without the field name it starts with.
func fieldMessage(ae *apiError) string { return strings.TrimPrefix(ae.Message, ae.Field+": ") }

// rolloutAPIError adds what to do to the API's refusals of rollout
// commands that need no rollout's state to explain.
func rolloutAPIError(err error) error {
	var ae *apiError
	if !errors.As(err, &ae) {
		return err
	}
	switch ae.Code {
	case "forbidden":
		if strings.Contains(ae.Message, "second person") {
			return errors.New(ae.Message)
		}
		return fmt.Errorf("%s (ask for an operator token: otad token create --role operator)", ae.Message)
	case "not_found":
		return fmt.Errorf("%s (otactl rollout list lists the rollouts)", ae.Message)
	}
	return err
}

func (c *cli) rolloutList(args []string) error {
	var sf serverFlags
	var states csvFlag
	fs := newFlagSet("rollout list [--state S]",
		"Lists rollouts, oldest first: id, state, stage, percent, release and creator.", c.stderr)
	sf.register(fs)
	fs.Var(&states, "state", "only rollouts in these states: draft, running, paused, completed, aborted (comma-separated)")
	pos, err := parseArgs(fs, args)
	if err != nil {
		return err
	}
	if err := wantArgs(fs, pos, 0, 0, ""); err != nil {
		return err
	}
	cl, err := c.client(sf)
	if err != nil {
		return err
	}
	var want []rollout.RolloutState
	for _, s := range states {
		want = append(want, rollout.RolloutState(s))
	}
	list, err := cl.Rollouts(c.ctx, want...)
	if err != nil {
		if client.HasCode(err, "invalid") {
			return usageError{fmt.Errorf("--state: want draft, running, paused, completed or aborted")}
		}
		return cl.explain(err)
	}
	if len(list) == 0 {
		fmt.Fprintln(c.stdout, "no rollouts")
		return nil
	}
	for _, r := range list {
		fmt.Fprintf(c.stdout, "%s\t%s\tstage %d of %d\t%s%%\t%s\t%s\n", esc(r.ID), esc(r.State), r.Stage+1, len(r.Stages),
			fmtPercent(r.Percent), esc(r.Release.Target), esc(r.CreatedBy))
	}
	return nil
}

// rolloutArg parses the flags of a command on one rollout ID.
func (c *cli) rolloutArg(fs *flag.FlagSet, sf *serverFlags, args []string) (*conn, string, error) {
	sf.register(fs)
	pos, err := parseArgs(fs, args)
	if err != nil {
		return nil, "", err
	}
	if err := wantArgs(fs, pos, 1, 1, "the rollout ID (otactl rollout list lists them)"); err != nil {
		return nil, "", err
	}
	cl, err := c.client(*sf)
	if err != nil {
		return nil, "", err
	}
	return cl, pos[0], nil
}

func (c *cli) rolloutShow(args []string) error {
	var sf serverFlags
	var asJSON bool
	fs := newFlagSet("rollout show ID [--json]",
		"Shows a rollout: state, stage and percent, release, selector, policy, the halt\n"+
			"reason with its numbers and time, held models and times, and the report's\n"+
			"results: installed and confirmed (seen since on the new build), offer-to-install\n"+
			"and offer-to-confirmation times.", c.stderr)
	fs.BoolVar(&asJSON, "json", false, "print the API's JSON instead")
	cl, id, err := c.rolloutArg(fs, &sf, args)
	if err != nil {
		return err
	}
	r, err := cl.Rollout(c.ctx, id)
	if err != nil {
		return rolloutAPIError(cl.explain(err))
	}
	if asJSON {
		raw, err := json.Marshal(r)
		if err != nil {
			return err
		}
		fmt.Fprintf(c.stdout, "%s\n", raw)
		return nil
	}
	printRollout(c.stdout, r, time.Now())
	if r.State == "draft" {
		return nil
	}
	// The report's numbers, where the server has them: confirmed beside
	// installed.
	if rep, err := cl.RolloutReport(c.ctx, id); err == nil {
		printReportSummary(c.stdout, reportView(rep))
	} else if e := client.AsError(err); e == nil || e.Status != http.StatusNotFound {
		fmt.Fprintf(c.stdout, "  report unavailable: %s\n", esc(oneLine(cl.explain(err).Error())))
	}
	return nil
}

// actionCommand is a rollout action that takes an ID and a reason.
func actionCommand(action, description string) func(*cli, []string) error {
	return func(c *cli, args []string) error {
		var sf serverFlags
		var reason string
		fs := newFlagSet("rollout "+action+" ID --reason TEXT", description+"\nThe reason goes into the audit log.", c.stderr)
		fs.StringVar(&reason, "reason", "", "why (required)")
		cl, id, err := c.rolloutArg(fs, &sf, args)
		if err != nil {
			return err
		}
		if strings.TrimSpace(reason) == "" {
			return usageError{fmt.Errorf("rollout %s needs --reason TEXT: every change to a rollout is logged with its reason", action)}
		}
		return c.rolloutChange(cl, id, action, func() (*client.Change, error) { return cl.RolloutAction(c.ctx, id, action, reason) })
	}
}

func (c *cli) rolloutAdvance(args []string) error {
	var sf serverFlags
	var reason string
	var percent percentFlag
	fs := newFlagSet("rollout advance ID --reason TEXT [--percent P]",
		"Widens a rollout to its next stage, or to --percent (added to the stages unless it is\n"+
			"one). Handsets already in stay in. The new stage's soak starts now.", c.stderr)
	fs.StringVar(&reason, "reason", "", "why (required)")
	fs.Var(&percent, "percent", "widen to this percent instead of the next stage, e.g. 25 or 25%")
	cl, id, err := c.rolloutArg(fs, &sf, args)
	if err != nil {
		return err
	}
	if strings.TrimSpace(reason) == "" {
		return usageError{errors.New("rollout advance needs --reason TEXT: every change to a rollout is logged with its reason")}
	}
	if percent.set && (percent.value <= 0 || percent.value > 100) {
		return usageError{fmt.Errorf("--percent %s: want above 0 and at most 100", percent.String())}
	}
	return c.rolloutChange(cl, id, "advance", func() (*client.Change, error) { return cl.AdvanceRollout(c.ctx, id, reason, percent.value) })
}

func (c *cli) rolloutHold(args []string) error {
	var sf serverFlags
	var model, reason string
	fs := newFlagSet("rollout hold ID --model M --reason TEXT",
		"Holds one model: no new offers to it while the other models go on.", c.stderr)
	fs.StringVar(&model, "model", "", "the model to hold (required)")
	fs.StringVar(&reason, "reason", "", "why (required)")
	cl, id, err := c.rolloutArg(fs, &sf, args)
	if err != nil {
		return err
	}
	if model == "" || strings.TrimSpace(reason) == "" {
		return usageError{errors.New("rollout hold needs --model M and --reason TEXT")}
	}
	return c.rolloutChange(cl, id, "hold", func() (*client.Change, error) { return changed(cl.HoldModel(c.ctx, id, model, reason)) })
}

func (c *cli) rolloutReleaseHold(args []string) error {
	var sf serverFlags
	var model, reason string
	fs := newFlagSet("rollout release-hold ID --model M --reason TEXT",
		"Releases a model's hold, by an operator or the failure-rate policy: it is offered\n"+
			"the release again, and its results before now no longer count toward holding it.", c.stderr)
	fs.StringVar(&model, "model", "", "the held model (required)")
	fs.StringVar(&reason, "reason", "", "why (required)")
	cl, id, err := c.rolloutArg(fs, &sf, args)
	if err != nil {
		return err
	}
	if model == "" || strings.TrimSpace(reason) == "" {
		return usageError{errors.New("rollout release-hold needs --model M and --reason TEXT")}
	}
	return c.rolloutChange(cl, id, "release-hold", func() (*client.Change, error) { return changed(cl.ReleaseHold(c.ctx, id, model, reason)) })
}

// changed is a change that never waits for approval as a client.Change.
func changed(r *wire.Rollout, err error) (*client.Change, error) {
	if err != nil {
		return nil, err
	}
	return &client.Change{Rollout: r}, nil
}

// rolloutChange sends an action and prints the rollout after it; a
// refusal says what to do next, from the rollout's state.
func (c *cli) rolloutChange(cl *conn, id, action string, send func() (*client.Change, error)) error {
	ch, err := send()
	if err == nil {
		if ch.Pending != nil {
			printPending(c.stdout, ch.Pending)
			return nil
		}
		fmt.Fprintf(c.stdout, "rollout %s: %s\n", esc(ch.Rollout.ID), stageLine(ch.Rollout))
		return nil
	}
	err = cl.explain(err)
	var ae *apiError
	if !errors.As(err, &ae) {
		return err
	}
	switch ae.Code {
	case "conflict":
		if cur, err := cl.Rollout(c.ctx, id); err == nil {
			if hint := conflictHint(action, cur, ae.Message); hint != "" {
				return errors.New(hint)
			}
		}
	case "not_found":
		if action == "release-hold" && strings.Contains(ae.Message, "is not held") {
			return fmt.Errorf("%s (otactl rollout show %s lists the held models)", ae.Message, id)
		}
	case "invalid":
		if ae.Field != "" {
			return fmt.Errorf("--%s: %s", ae.Field, fieldMessage(ae))
		}
	}
	return rolloutAPIError(err)
}

func (c *cli) rolloutEvents(args []string) error {
	var sf serverFlags
	var limit int
	fs := newFlagSet("rollout events ID [--limit N]",
		"Prints a rollout's audit log, oldest first: when, who, what, from and to state and\npercent, and why.", c.stderr)
	fs.IntVar(&limit, "limit", 100, "the last this many events, at most 1000")
	cl, id, err := c.rolloutArg(fs, &sf, args)
	if err != nil {
		return err
	}
	if limit < 1 || limit > 1000 {
		return usageError{fmt.Errorf("--limit %d: want 1 to 1000", limit)}
	}
	evs, err := cl.RolloutEvents(c.ctx, id, limit)
	if err != nil {
		return rolloutAPIError(cl.explain(err))
	}
	printEvents(c.stdout, evs, false)
	return nil
}

func (c *cli) rolloutAudit(args []string) error {
	var sf serverFlags
	var rollout, actor, action, since, until string
	var limit int
	fs := newFlagSet("rollout audit [--rollout ID] [--actor NAME] [--action A] [--since T] [--until T] [--limit N]",
		"Prints the audit log across rollouts, newest first. Times are RFC 3339\n(2026-11-23T10:00:00Z) or a duration back from now (24h).", c.stderr)
	sf.register(fs)
	fs.StringVar(&rollout, "rollout", "", "only this rollout")
	fs.StringVar(&actor, "actor", "", "only this token name (system: the automatic policies)")
	fs.StringVar(&action, "action", "", "only this action: create, start, pause, resume, abort, advance, complete, halt, hold, release_hold,\nstart_reached, deadline_reached")
	fs.StringVar(&since, "since", "", "only events at or after this time")
	fs.StringVar(&until, "until", "", "only events before this time")
	fs.IntVar(&limit, "limit", 100, "at most this many, up to 1000")
	pos, err := parseArgs(fs, args)
	if err != nil {
		return err
	}
	if err := wantArgs(fs, pos, 0, 0, ""); err != nil {
		return err
	}
	// The audit log records rollout changes as "rollout.ACTION" on the
	// rollout's id.
	q := client.AuditQuery{Limit: limit, Action: "rollout.", Object: rollout, Actor: actor}
	if action != "" {
		q.Action = "rollout." + strings.ReplaceAll(action, "-", "_")
	}
	now := time.Now()
	for _, w := range []struct {
		flag, v string
		dst     *time.Time
	}{{"since", since, &q.Since}, {"until", until, &q.Until}} {
		if w.v == "" {
			continue
		}
		t, err := parseWhen(w.v, now)
		if err != nil {
			return usageError{fmt.Errorf("--%s %w", w.flag, err)}
		}
		*w.dst = t
	}
	cl, err := c.client(sf)
	if err != nil {
		return err
	}
	es, err := cl.Audit(c.ctx, q)
	if err != nil {
		err = cl.explain(err)
		var ae *apiError
		if errors.As(err, &ae) && ae.Code == "invalid" && ae.Field != "" {
			return usageError{fmt.Errorf("--%s: %s", ae.Field, fieldMessage(ae))}
		}
		return err
	}
	printEvents(c.stdout, rolloutEventsOf(es), true)
	return nil
}

// rolloutEventsOf turns the audit log's rollout entries back into the
// events they record (Detail holds the states, percents and model).
func rolloutEventsOf(es []wire.AuditEntry) []wire.RolloutEvent {
	out := make([]wire.RolloutEvent, 0, len(es))
	for _, e := range es {
		action, ok := strings.CutPrefix(e.Action, "rollout.")
		if !ok {
			continue
		}
		var d struct {
			FromState   string  `json:"from_state"`
			ToState     string  `json:"to_state"`
			FromPercent float64 `json:"from_percent"`
			ToPercent   float64 `json:"to_percent"`
			Model       string  `json:"model"`
			Detail      string  `json:"detail"`
		}
		ev := wire.RolloutEvent{RolloutID: e.Object, At: e.At, Actor: e.Actor, Action: action, Reason: e.Reason}
		if json.Unmarshal([]byte(e.Detail), &d) == nil {
			ev.FromState, ev.ToState, ev.FromPercent, ev.ToPercent, ev.Model, ev.Detail =
				d.FromState, d.ToState, d.FromPercent, d.ToPercent, d.Model, d.Detail
		} else {
			ev.Detail = e.Detail
		}
		out = append(out, ev)
	}
	return out
}

func printPending(w io.Writer, a *wire.Approval) {
	fmt.Fprintf(w, "rollout %s: %s to %s%% waits for a second person's approval (%s): nothing changed yet.\n",
		esc(a.RolloutID), esc(a.Action), fmtPercent(a.ToPercent), esc(a.ID))
	if a.Exposure > 0 {
		fmt.Fprintf(w, "  the patch would reach %s%% of the handsets its rollouts select (every rollout of it counted)\n", fmtPercent(a.Exposure))
	}
	fmt.Fprintf(w, "  another operator approves it with otactl rollout approve %s %s --reason TEXT\n", esc(a.RolloutID), esc(a.ID))
}

func (c *cli) rolloutApprovals(args []string) error {
	var sf serverFlags
	fs := newFlagSet("rollout approvals ID",
		"Lists a rollout's four-eyes approvals, newest first: id, state, what, who asked and\nwhy, who decided and why.", c.stderr)
	cl, id, err := c.rolloutArg(fs, &sf, args)
	if err != nil {
		return err
	}
	as, err := cl.Approvals(c.ctx, id)
	if err != nil {
		return rolloutAPIError(cl.explain(err))
	}
	if len(as) == 0 {
		fmt.Fprintln(c.stdout, "no approvals")
		return nil
	}
	for _, a := range as {
		cols := []string{a.ID, a.State, a.Action + " to " + fmtPercent(a.ToPercent) + "%",
			fmtTime(a.RequestedAt), a.RequestedBy, a.Reason}
		if a.DecidedBy != "" {
			cols = append(cols, a.DecidedBy, a.DecisionReason)
		}
		fmt.Fprintln(c.stdout, strings.Join(escAll(cols), "\t"))
	}
	return nil
}

// decisionCommand is approve or reject: ID APPROVAL --reason TEXT.
func decisionCommand(verdict, description string) func(*cli, []string) error {
	return func(c *cli, args []string) error {
		var sf serverFlags
		var reason string
		fs := newFlagSet("rollout "+verdict+" ID APPROVAL --reason TEXT", description+"\nThe reason goes into the audit log.", c.stderr)
		sf.register(fs)
		fs.StringVar(&reason, "reason", "", "why (required)")
		pos, err := parseArgs(fs, args)
		if err != nil {
			return err
		}
		if err := wantArgs(fs, pos, 2, 2, "the rollout ID and the APPROVAL id (otactl rollout approvals ID lists them)"); err != nil {
			return err
		}
		if strings.TrimSpace(reason) == "" {
			return usageError{fmt.Errorf("rollout %s needs --reason TEXT: every decision is logged with its reason", verdict)}
		}
		cl, err := c.client(sf)
		if err != nil {
			return err
		}
		decide := cl.Approve
		if verdict == "reject" {
			decide = cl.Reject
		}
		d, err := decide(c.ctx, pos[0], pos[1], reason)
		if err != nil {
			return rolloutAPIError(cl.explain(err))
		}
		if d.Rollout != nil {
			fmt.Fprintf(c.stdout, "approved %s: rollout %s: %s\n", esc(d.Approval.ID), esc(d.Rollout.ID), stageLine(d.Rollout))
			return nil
		}
		fmt.Fprintf(c.stdout, "%s %s: rollout %s stays as it is\n", esc(d.Approval.State), esc(d.Approval.ID), esc(d.Approval.RolloutID))
		return nil
	}
}

// parseWhen reads an RFC 3339 time or a duration back from now.
func parseWhen(s string, now time.Time) (time.Time, error) {
	if t, err := time.Parse(time.RFC3339, s); err == nil {
		return t, nil
	}
	if d, err := time.ParseDuration(s); err == nil && d >= 0 {
		return now.Add(-d), nil
	}
	return time.Time{}, fmt.Errorf("%q: want an RFC 3339 time (2026-11-23T10:00:00Z) or a duration back from now (24h)", s)
}

func (c *cli) rolloutWatch(args []string) error {
	var sf serverFlags
	var interval time.Duration
	fs := newFlagSet("rollout watch ID [--interval 2s]",
		"Shows a rollout live, redrawn every interval, with one progress bar per stage\n"+
			"(installed of the handsets expected in it), the counts by state and model and the\n"+
			"top failure codes, until Ctrl-C or the rollout is completed or aborted.", c.stderr)
	fs.DurationVar(&interval, "interval", 2*time.Second, "how often to redraw")
	cl, id, err := c.rolloutArg(fs, &sf, args)
	if err != nil {
		return err
	}
	if interval < 100*time.Millisecond {
		return usageError{fmt.Errorf("--interval %s: want at least 100ms", interval)}
	}
	tty := c.isTerminal(c.stdout)
	var last string
	for {
		frame, done, err := c.watchFrame(cl, id)
		if err != nil {
			if c.ctx.Err() != nil {
				return nil
			}
			return err
		}
		switch {
		case tty:
			// Home and clear, then the frame: one screen, redrawn.
			fmt.Fprint(c.stdout, "\x1b[H\x1b[2J"+frame+fmt.Sprintf("\nupdated %s; Ctrl-C to stop\n", time.Now().UTC().Format("15:04:05 MST")))
		case frame != last:
			// A log gets a frame only when something changed.
			fmt.Fprintln(c.stdout, frame)
		}
		last = frame
		if done {
			return nil
		}
		select {
		case <-c.ctx.Done():
			return nil
		case <-time.After(interval):
		}
	}
}

// watchFrame fetches the rollout and its report and renders them; done
// is true once the rollout has ended.
func (c *cli) watchFrame(cl *conn, id string) (string, bool, error) {
	r, err := cl.Rollout(c.ctx, id)
	if err != nil {
		return "", false, rolloutAPIError(cl.explain(err))
	}
	var rep *rolloutReport
	var repErr error
	if got, err := cl.RolloutReport(c.ctx, id); err == nil {
		rep = reportView(got)
	} else if e := client.AsError(err); e == nil || e.Status != http.StatusNotFound {
		repErr = cl.explain(err)
	}
	return renderWatch(r, rep, repErr), r.State == "completed" || r.State == "aborted", nil
}
