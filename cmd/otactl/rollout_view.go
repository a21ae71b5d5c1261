package main

import (
	"cmp"
	"fmt"
	"io"
	"math"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/patchfleet/ota/humanize"
	"github.com/patchfleet/ota/internal/termtext"
	"github.com/patchfleet/ota/server"
	"github.com/patchfleet/ota/server/api"
	"github.com/patchfleet/ota/server/api/wire"
)

// fmtPercent is a stage percent as the operator typed it: 1, 0.5, 75.
func fmtPercent(p float64) string { return strconv.FormatFloat(p, 'f', -1, 64) }

// fmtRate is a fraction as a percent with one decimal: 0.2 is "20.0%".
func fmtRate(f float64) string { return strconv.FormatFloat(f*100, 'f', 1, 64) + "%" }

// stageLine is "running, stage 2 of 4 (10%)".
func stageLine(r *wire.Rollout) string {
	return fmt.Sprintf("%s, stage %d of %d (%s%%)", esc(r.State), r.Stage+1, len(r.Stages), fmtPercent(r.Percent))
}

func fmtTime(t time.Time) string { return t.UTC().Format(time.RFC3339) }

// esc is text from the server made safe to print: termtext.Escape.
func esc(s string) string { return termtext.Escape(s) }

// escAll is esc of each of ss, in a new slice.
func escAll(ss []string) []string {
	out := make([]string, len(ss))
	for i, s := range ss {
		out[i] = esc(s)
	}
	return out
}

func listOrAll(what string, values []string) string {
	if len(values) == 0 {
		return what + " all"
	}
	return what + " " + esc(strings.Join(values, ", "))
}

func buildRange(lo, hi string) string {
	lo, hi = esc(lo), esc(hi)
	switch {
	case lo == "" && hi == "":
		return "builds all"
	case hi == "":
		return "builds " + lo + " and newer"
	case lo == "":
		return "builds up to " + hi
	}
	return "builds " + lo + " to " + hi
}

// holdNumbers is "(12 failed of 60 results = 20.0%, limit 5.0%, over
// 1h)", or "" for a hold an operator set.
func holdNumbers(h *wire.RolloutHold) string {
	n := h.Installed + h.Failed
	if n == 0 && h.Rate == 0 {
		return ""
	}
	s := fmt.Sprintf("(%d failed of %d results = %s, limit %s", h.Failed, n, fmtRate(h.Rate), fmtRate(h.MaxRate))
	if h.Window > 0 {
		s += ", over " + api.FormatDuration(h.Window)
	}
	return s + ")"
}

// holdText is "at TIME by ACTOR: REASON (numbers)".
func holdText(h *wire.RolloutHold) string {
	s := fmt.Sprintf("at %s by %s: %s", fmtTime(h.At), esc(h.Actor), esc(h.Reason))
	if n := holdNumbers(h); n != "" {
		s += " " + n
	}
	return s
}

// policyText says the policy in words.
func policyText(p *wire.RolloutPolicy) []string {
	lines := []string{fmt.Sprintf("halt above %s failures over %s once %d results are in (per model too)",
		fmtRate(p.MaxFailureRate), esc(p.FailureWindow), p.MinResults)}
	if p.Soak == "" || p.Soak == "0s" {
		lines = append(lines, "no auto-advance: advance by hand")
	} else {
		line := "advance on its own after " + esc(p.Soak) + " healthy"
		if p.MinConfirmations > 0 {
			line += fmt.Sprintf(", with %d installs confirmed on the new build", p.MinConfirmations)
		}
		lines = append(lines, line)
	}
	switch {
	case p.Retries == 0:
		lines = append(lines, "no retries")
	default:
		lines = append(lines, fmt.Sprintf("%d retries after %s", p.Retries, esc(strings.Join(p.Backoff, ", "))))
	}
	if p.SilenceAfter != "" {
		line := "a handset silent for " + esc(p.SilenceAfter) + " after it began installing counts as failed"
		if p.MaxSilenceRate > 0 {
			line += fmt.Sprintf("; halt (or hold a model) above %s silent", fmtRate(p.MaxSilenceRate))
		}
		lines = append(lines, line)
	}
	if p.MaxOffersPerMinute > 0 {
		lines = append(lines, fmt.Sprintf("at most %d new offers per minute", p.MaxOffersPerMinute))
	} else {
		lines = append(lines, "no cap on offers per minute")
	}
	if p.Window != "" {
		lines = append(lines, "new offers only "+esc(p.Window)+" handset-local time")
	} else {
		lines = append(lines, "new offers at any hour")
	}
	return lines
}

// scheduleText says a rollout's scheduled start and deadline at now, in
// words: "starts at T (in 3h)" or "started at T, as scheduled";
// "deadline T: offers urgent after it, outside the window too (in 2d)"
// or "deadline T passed: offers are urgent, outside the window too".
// Empty when it has neither.
func scheduleText(r *wire.Rollout, now time.Time) []string {
	var lines []string
	p := &r.Policy
	if t := p.StartAt; t != nil {
		switch {
		case r.State == "draft":
			lines = append(lines, "starts at "+fmtTime(*t)+" at the earliest, once started")
		case now.Before(*t):
			lines = append(lines, fmt.Sprintf("starts at %s (in %s): no offers before", fmtTime(*t), roughDuration(t.Sub(now))))
		default:
			lines = append(lines, "scheduled start "+fmtTime(*t)+" reached: offers began")
		}
	}
	if t := p.Deadline; t != nil {
		if now.Before(*t) {
			lines = append(lines, fmt.Sprintf("deadline %s (in %s): offers urgent after it, outside the window too", fmtTime(*t), roughDuration(t.Sub(now))))
		} else {
			lines = append(lines, "deadline "+fmtTime(*t)+" passed: offers are urgent, outside the window too")
		}
	}
	return lines
}

// printRollout is what "rollout show" prints.
func printRollout(w io.Writer, r *wire.Rollout, now time.Time) {
	fmt.Fprintf(w, "rollout %s: %s\n", esc(r.ID), stageLine(r))
	rel := r.Release
	fmt.Fprintf(w, "  release:  %s (patch %s, installs build %s; %s, %s)\n", esc(rel.Target), esc(rel.PatchID), esc(rel.InstallsBuild),
		listOrAll("models", rel.Models), buildRange(rel.BuildMin, rel.BuildMax))
	sel := r.Selector
	fmt.Fprintf(w, "  selector: %s; %s; %s; %s\n", listOrAll("models", sel.Models), listOrAll("channels", sel.Channels),
		listOrAll("regions", sel.Regions), buildRange(sel.BuildMin, sel.BuildMax))
	var stages []string
	for i, p := range r.Stages {
		s := fmtPercent(p) + "%"
		if i == r.Stage {
			s = "[" + s + "]"
		}
		stages = append(stages, s)
	}
	fmt.Fprintf(w, "  stages:   %s\n", strings.Join(stages, " "))
	fmt.Fprintf(w, "  policy:   %s\n", strings.Join(policyText(&r.Policy), ";\n            "))
	if lines := scheduleText(r, now); len(lines) > 0 {
		fmt.Fprintf(w, "  schedule: %s\n", strings.Join(lines, ";\n            "))
	}
	if h := r.Halt; h != nil {
		fmt.Fprintf(w, "  HALTED %s\n", holdText(h))
	}
	if len(r.Holds) > 0 {
		fmt.Fprintln(w, "  held models:")
		for i := range r.Holds {
			fmt.Fprintf(w, "    %s held %s\n", esc(r.Holds[i].Model), holdText(&r.Holds[i]))
		}
	}
	times := []string{fmt.Sprintf("created by %s at %s", esc(r.CreatedBy), fmtTime(r.CreatedAt))}
	if r.StartedAt != nil && r.StartedAt.After(now) {
		times = append(times, "starts "+fmtTime(*r.StartedAt))
	} else if r.StartedAt != nil {
		times = append(times, "started "+fmtTime(*r.StartedAt))
	}
	if r.StageStartedAt != nil && r.State != "completed" && r.State != "aborted" {
		s := "stage started " + fmtTime(*r.StageStartedAt)
		if soak, err := time.ParseDuration(r.Policy.Soak); err == nil && soak > 0 && r.State == "running" {
			start := *r.StageStartedAt
			if r.HealthSince != nil && r.HealthSince.After(start) {
				start = *r.HealthSince
			}
			s += fmt.Sprintf(" (soaked %s of %s)", roughDuration(max(now.Sub(start), 0)), esc(r.Policy.Soak))
		}
		times = append(times, s)
	}
	if r.EndedAt != nil {
		times = append(times, "ended "+fmtTime(*r.EndedAt))
	}
	fmt.Fprintf(w, "  %s; version %d\n", strings.Join(times, "; "), r.Version)
	id := esc(r.ID)
	switch {
	case r.State == "draft":
		fmt.Fprintf(w, "  next: otactl rollout start %s --reason TEXT\n", id)
	case r.State == "paused" && r.Halt != nil:
		fmt.Fprintf(w, "  next: once the cause is fixed, otactl rollout resume %s --reason TEXT\n", id)
	case r.State == "paused":
		fmt.Fprintf(w, "  paused by an operator (otactl rollout events %s says why); otactl rollout resume %s --reason TEXT\n", id, id)
	}
}

// printEvents prints audit events one a line, tab-separated: time,
// rollout (withRollout), actor, action, transition, reason and detail.
func printEvents(w io.Writer, evs []wire.RolloutEvent, withRollout bool) {
	if len(evs) == 0 {
		fmt.Fprintln(w, "no events")
		return
	}
	for _, ev := range evs {
		cols := []string{fmtTime(ev.At)}
		if withRollout {
			cols = append(cols, ev.RolloutID)
		}
		action := ev.Action
		if ev.Model != "" {
			action += " " + ev.Model
		}
		to := ev.ToState + " " + fmtPercent(ev.ToPercent) + "%"
		transition := to
		if from := ev.FromState + " " + fmtPercent(ev.FromPercent) + "%"; ev.FromState != "" && from != to {
			transition = from + " -> " + to
		}
		why := ev.Reason
		if ev.Hold != nil && ev.Action != "release_hold" && ev.Action != "resume" {
			if n := holdNumbers(ev.Hold); n != "" {
				why += " " + n
			}
		}
		if ev.Detail != "" {
			why += "; " + ev.Detail
		}
		cols = append(cols, ev.Actor, action, transition, why)
		fmt.Fprintln(w, strings.Join(escAll(cols), "\t"))
	}
}

// conflictHint explains a 409 to action on rollout r (read after the
// refusal) and says what to do next; "" when it has nothing to add.
func conflictHint(action string, r *wire.Rollout, msg string) string {
	id := r.ID
	resume := fmt.Sprintf("resume it with otactl rollout resume %s --reason TEXT", id)
	switch {
	case strings.Contains(msg, "changed meanwhile"):
		return fmt.Sprintf("rollout %s kept changing while otactl tried to %s it; look at it with otactl rollout show %s and try again", id, action, id)
	case strings.Contains(msg, "already held"):
		return fmt.Sprintf("%s; otactl rollout show %s lists the held models", msg, id)
	case r.State == "aborted" && action == "abort":
		return fmt.Sprintf("rollout %s is aborted already", id)
	case r.State == "aborted":
		return fmt.Sprintf("rollout %s is aborted, which is final; create a new one with otactl rollout create --release %s --stages ...", id, r.Release.Target)
	case r.State == "draft":
		return fmt.Sprintf("rollout %s is a draft; start it with otactl rollout start %s --reason TEXT", id, id)
	case action == "start" && r.State == "paused":
		return fmt.Sprintf("rollout %s was started and is paused; %s", id, resume)
	case action == "start" || action == "resume":
		return fmt.Sprintf("rollout %s is %s already; otactl rollout show %s shows it", id, r.State, id)
	case r.State == "paused" && action != "advance":
		return fmt.Sprintf("rollout %s is paused; %s", id, resume)
	case action == "advance" && r.State == "completed" && r.Percent >= 100:
		return fmt.Sprintf("rollout %s is completed at 100%%: it offers the release to every selected handset already", id)
	case action == "advance" && r.State == "completed":
		return fmt.Sprintf("rollout %s is completed at %s%%; widen it with otactl rollout advance %s --percent P --reason TEXT, P above %s",
			id, fmtPercent(r.Percent), id, fmtPercent(r.Percent))
	case action == "advance" && r.State == "paused":
		return fmt.Sprintf("rollout %s is paused at its last stage (%s%%); %s, then complete it with otactl rollout complete %s --reason TEXT",
			id, fmtPercent(r.Percent), resume, id)
	case action == "advance":
		return fmt.Sprintf("rollout %s is at its last stage (%s%%); complete it with otactl rollout complete %s --reason TEXT", id, fmtPercent(r.Percent), id)
	case action == "complete" && r.State == "completed":
		return fmt.Sprintf("rollout %s is completed already", id)
	case action == "complete":
		return fmt.Sprintf("rollout %s is at stage %d of %d (%s%%); advance it first with otactl rollout advance %s --reason TEXT",
			id, r.Stage+1, len(r.Stages), fmtPercent(r.Percent), id)
	}
	return ""
}

// rolloutReport is what watch shows of a rollout's report
// (server.RolloutReport, reportView).
type rolloutReport struct {
	// Eligible is the selected handsets not yet on the release;
	// Target those expected in the current stage.
	Eligible    int64
	Target      int64
	Offered     int64
	Pending     int64
	Downloading int64
	Installed   int64
	// Confirmed are the installs seen since on the new build with the
	// patch (rollout.Confirmed).
	Confirmed           int64
	Failed              int64
	RolledBack          int64
	ByModel             []reportModel
	FailureCodes        []failureCount
	OfferToInstall      reportTimes
	OfferToConfirmation reportTimes
	Bytes               server.PayloadBytes
}

// reportTimes are a report's percentiles of a time (server.InstallTimes),
// 0 without times.
type reportTimes struct {
	P50   float64
	P95   float64
	Count int64
}

func reportTimesOf(t server.InstallTimes) reportTimes {
	v := reportTimes{Count: t.Count}
	if t.P50 != nil {
		v.P50 = *t.P50
	}
	if t.P95 != nil {
		v.P95 = *t.P95
	}
	return v
}

type reportModel struct {
	Model     string
	Offered   int64
	Installed int64
	Confirmed int64
	Failed    int64
	Held      bool
}

type failureCount struct {
	ErrorCode string
	Count     int64
}

// reportView is the part of rep that watch shows.
func reportView(rep *server.RolloutReport) *rolloutReport {
	c := rep.CohortCounts
	v := &rolloutReport{Eligible: c.Eligible, Target: c.Target, Offered: c.Offered, Pending: c.Pending,
		Downloading: c.Downloading, Installed: c.Installed, Confirmed: c.Confirmed, Failed: c.Failed, RolledBack: c.RolledBack,
		OfferToInstall: reportTimesOf(rep.OfferToInstall), OfferToConfirmation: reportTimesOf(rep.OfferToConfirmation)}
	for _, m := range rep.ByModel {
		v.ByModel = append(v.ByModel, reportModel{Model: m.Model, Offered: m.Offered, Installed: m.Installed,
			Confirmed: m.Confirmed, Failed: m.Failed, Held: m.Held})
	}
	for _, f := range rep.FailureCodes {
		v.FailureCodes = append(v.FailureCodes, failureCount{ErrorCode: f.ErrorCode, Count: f.Count})
	}
	v.Bytes = rep.Bytes
	return v
}

// timesLines are the report's offer-to-install and
// offer-to-confirmation lines, none for a time without counts.
func (rep *rolloutReport) timesLines() string {
	var b strings.Builder
	if t := rep.OfferToInstall; t.Count > 0 {
		fmt.Fprintf(&b, "offer to install: p50 %s, p95 %s (%d installs)\n", seconds(t.P50), seconds(t.P95), t.Count)
	}
	if t := rep.OfferToConfirmation; t.Count > 0 {
		fmt.Fprintf(&b, "offer to confirmation: p50 %s, p95 %s (%d confirmed)\n", seconds(t.P50), seconds(t.P95), t.Count)
	}
	return b.String()
}

// printReportSummary is what "rollout show" prints of the report: the
// results, confirmed beside installed, and the times.
func printReportSummary(w io.Writer, rep *rolloutReport) {
	fmt.Fprintf(w, "  results:  offered %d  pending %d  downloading %d  installed %d (confirmed %d)  failed %d  rolled back %d\n",
		rep.Offered, rep.Pending, rep.Downloading, rep.Installed, rep.Confirmed, rep.Failed, rep.RolledBack)
	for _, line := range strings.Split(strings.TrimSuffix(rep.timesLines(), "\n"), "\n") {
		if line != "" {
			fmt.Fprintf(w, "  %s\n", line)
		}
	}
}

// bytesLine says what the offers cost in payloads against full images,
// and which incrementals were offered; "" before any offer.
func bytesLine(pb server.PayloadBytes) string {
	if pb.Full <= 0 {
		return ""
	}
	line := fmt.Sprintf("payloads: %s offered, %s as full images", humanize.Bytes(pb.Offered), humanize.Bytes(pb.Full))
	if pb.Saved > 0 {
		line += fmt.Sprintf(": %s saved (%.0f%%)", humanize.Bytes(pb.Saved), 100*float64(pb.Saved)/float64(pb.Full))
	}
	var inc []string
	for _, p := range pb.ByPayload {
		if p.FromBuild != "" {
			inc = append(inc, fmt.Sprintf("%s x%d", esc(p.FromBuild), p.Offers))
		}
	}
	if len(inc) > 0 {
		line += "; incrementals from " + strings.Join(inc, ", ")
	}
	return line
}

// barWidth is the width of a stage's progress bar.
const barWidth = 30

func bar(fraction float64) string {
	n := int(math.Round(min(max(fraction, 0), 1) * barWidth))
	return "[" + strings.Repeat("#", n) + strings.Repeat("-", barWidth-n) + "]"
}

func seconds(s float64) string {
	return api.FormatDuration(time.Duration(s * float64(time.Second)).Round(time.Second))
}

// renderWatch is one frame of "rollout watch": the rollout, a progress
// bar per stage and the report's numbers. rep is nil without a report
// (repErr says why, or nil when the server has none). For stage i at
// percent p, the handsets expected are (eligible + installed) * p / 100
// and the bar is installed of those; stages past the current are empty.
func renderWatch(r *wire.Rollout, rep *rolloutReport, repErr error) string {
	var b strings.Builder
	fmt.Fprintf(&b, "rollout %s: %s\n", esc(r.ID), stageLine(r))
	fmt.Fprintf(&b, "release %s (patch %s, installs build %s)\n", esc(r.Release.Target), esc(r.Release.PatchID), esc(r.Release.InstallsBuild))
	if h := r.Halt; h != nil {
		fmt.Fprintf(&b, "HALTED %s\n", holdText(h))
	}
	for i := range r.Holds {
		fmt.Fprintf(&b, "HELD %s %s\n", esc(r.Holds[i].Model), holdText(&r.Holds[i]))
	}
	b.WriteString("\n")
	var base float64
	if rep != nil {
		base = float64(rep.Eligible + rep.Installed)
	}
	for i, p := range r.Stages {
		mark := "  "
		if i == r.Stage {
			mark = "> "
		}
		line := fmt.Sprintf("%sstage %d %5s%% ", mark, i+1, fmtPercent(p))
		expected := math.Round(base * p / 100)
		switch {
		case rep == nil:
			line += bar(0)
		case i > r.Stage:
			line += fmt.Sprintf("%s        %d expected", bar(0), int64(expected))
		default:
			f := 0.0
			if expected > 0 {
				f = min(float64(rep.Installed), expected) / expected
			}
			line += fmt.Sprintf("%s %5.1f%%  %d of %d installed", bar(f), f*100, int64(min(float64(rep.Installed), expected)), int64(expected))
		}
		b.WriteString(strings.TrimRight(line, " ") + "\n")
	}
	b.WriteString("\n")
	switch {
	case repErr != nil:
		fmt.Fprintf(&b, "report unavailable: %s\n", esc(oneLine(repErr.Error())))
	case rep == nil:
		b.WriteString("no report for this rollout on the server: numbers unavailable\n")
	default:
		fmt.Fprintf(&b, "eligible %d  in this stage %d  offered %d  pending %d  downloading %d  installed %d (confirmed %d)  failed %d  rolled back %d\n",
			rep.Eligible, rep.Target, rep.Offered, rep.Pending, rep.Downloading, rep.Installed, rep.Confirmed, rep.Failed, rep.RolledBack)
		if n := rep.Installed + rep.Failed; n > 0 {
			fmt.Fprintf(&b, "failure rate %s of %d results (halts above %s over %s once %d are in)\n",
				fmtRate(float64(rep.Failed)/float64(n)), n, fmtRate(r.Policy.MaxFailureRate), esc(r.Policy.FailureWindow), r.Policy.MinResults)
		}
		b.WriteString(rep.timesLines())
		if line := bytesLine(rep.Bytes); line != "" {
			b.WriteString(line + "\n")
		}
		if len(rep.ByModel) > 0 {
			b.WriteString("by model:\n")
			width := 0
			for _, m := range rep.ByModel {
				width = max(width, len(esc(m.Model)))
			}
			for _, m := range rep.ByModel {
				line := fmt.Sprintf("  %-*s  offered %d  installed %d (confirmed %d)  failed %d", width, esc(m.Model), m.Offered, m.Installed, m.Confirmed, m.Failed)
				if m.Held {
					line += "  HELD"
				}
				b.WriteString(line + "\n")
			}
		}
		if len(rep.FailureCodes) > 0 {
			codes := slices.Clone(rep.FailureCodes)
			slices.SortStableFunc(codes, func(a, b failureCount) int { return cmp.Compare(b.Count, a.Count) })
			var parts []string
			for _, c := range codes[:min(len(codes), 5)] {
				parts = append(parts, fmt.Sprintf("%s %d", esc(c.ErrorCode), c.Count))
			}
			fmt.Fprintf(&b, "top failures: %s\n", strings.Join(parts, ", "))
		}
	}
	if r.State == "completed" || r.State == "aborted" {
		fmt.Fprintf(&b, "rollout %s is %s: nothing more to watch\n", esc(r.ID), esc(r.State))
	}
	return b.String()
}
