package server

import (
	"cmp"
	"context"
	"fmt"
	"math"
	"slices"
	"strings"
	"time"

	"github.com/patchfleet/ota/server/handsets"
	"github.com/patchfleet/ota/server/rollout"
)

// CohortCounts count a rollout's handsets, for the whole rollout or one
// segment of it.
type CohortCounts struct {
	// Eligible are the handsets the selector and the release's bounds
	// pick that neither run the patch nor are on InstallsBuild or newer:
	// those still to update (failed and rolled-back ones included).
	Eligible int64 `json:"eligible"`
	// Target is the expected size of the current stage's cohort:
	// CohortTarget(Eligible, Installed, percent).
	Target int64 `json:"target"`
	// Offered counts every record (handsets offered the release);
	// Pending those not reported on since the offer, Downloading those
	// between downloading and installing, and the rest their last result.
	Offered     int64 `json:"offered"`
	Pending     int64 `json:"pending"`
	Downloading int64 `json:"downloading"`
	Installed   int64 `json:"installed"`
	// Confirmed are the installed records whose handset checked in since
	// the installed report on the release's build with the patch
	// (rollout.Confirmed), counted by the check-in that confirmed them
	// and taken out by whatever unconfirms them (a check-in off the
	// build or patch, a later report on the record, an erasure).
	Confirmed  int64 `json:"confirmed"`
	Failed     int64 `json:"failed"`
	RolledBack int64 `json:"rolled_back"`
}

func (c *CohortCounts) add(o CohortCounts) {
	c.Eligible += o.Eligible
	c.Target += o.Target
	c.Offered += o.Offered
	c.Pending += o.Pending
	c.Downloading += o.Downloading
	c.Installed += o.Installed
	c.Confirmed += o.Confirmed
	c.Failed += o.Failed
	c.RolledBack += o.RolledBack
}

// count adds n records in state.
func (c *CohortCounts) count(state string, n int64) {
	c.Offered += n
	switch state {
	case handsets.DeviceOffered:
		c.Pending += n
	case handsets.StateDownloading, handsets.StateDownloaded, handsets.StateVerified, handsets.StateInstalling:
		c.Downloading += n
	case handsets.StateInstalled:
		c.Installed += n
	case handsets.StateFailed:
		c.Failed += n
	case handsets.StateRolledBack:
		c.RolledBack += n
	}
}

// CohortTarget is the expected number of handsets in a stage of percent:
// the cohort is percent of the handsets that were eligible when the
// rollout began, and those that installed are no longer eligible.
func CohortTarget(eligible, installed int64, percent float64) int64 {
	return int64(math.Round(float64(eligible+installed) * percent / 100))
}

// RolloutReport is where a rollout stands: the totals, by model and by
// starting build, its failures, results per hour, how long installs
// take, and what holds it.
type RolloutReport struct {
	RolloutID   string               `json:"rollout_id"`
	PatchID     string               `json:"patch_id"`
	State       rollout.RolloutState `json:"state"`
	Stage       int                  `json:"stage"`
	Percent     float64              `json:"percent"`
	GeneratedAt time.Time            `json:"generated_at"`
	CohortCounts
	// ByModel lists the models with eligible handsets or records, most
	// offered first (then most eligible, then by name), capped at
	// MaxReportRows with an OtherModels row last.
	ByModel []ModelCohort `json:"by_model"`
	// ByStartingBuild is the same by build: the starting build of
	// records, the current build of eligible handsets.
	ByStartingBuild []BuildCohort `json:"by_starting_build"`
	// FailureCodes are the most frequent error codes of failed reports,
	// TopFailureCodes at most, with an OtherCodes row for the rest.
	FailureCodes []handsets.FailureCount `json:"failure_codes"`
	// InstallsPerHour covers the last ReportHours hours, oldest first,
	// hours without results included.
	InstallsPerHour []HourResults `json:"installs_per_hour"`
	// StatesPerHour is where the records stood at the end of each of the
	// last ReportHours hours, oldest first: the current counts walked
	// back through each hour's net changes.
	StatesPerHour []HourStates `json:"states_per_hour"`
	// Timeline is the rollout's history on the scale of its lifetime
	// (timeline.go); the dashboard charts it.
	Timeline Timeline `json:"timeline"`
	// OfferToInstall is how long handsets took from the first offer to
	// the installed report.
	OfferToInstall InstallTimes `json:"offer_to_install_seconds"`
	// OfferToConfirmation is how long handsets took from the first offer
	// to the check-in that confirmed the install (rollout.Confirmed).
	OfferToConfirmation InstallTimes `json:"offer_to_confirmation_seconds"`
	// Halt is why the rollout stopped on its own; Holds the held models.
	Halt  *rollout.Hold  `json:"halt,omitempty"`
	Holds []rollout.Hold `json:"holds"`
	// Bytes is what the offers (first offers and retries; a repeat of an
	// offer to a handset still on it is not counted) cost in payloads,
	// against what the full image would have cost them.
	Bytes PayloadBytes `json:"bytes"`
}

// PayloadBytes are a rollout's offers in bytes: Offered is the sum of
// the payloads offered, Full what the full image would have come to,
// Saved the difference. ByPayload splits them by payload, the full image
// (from_build "") first, then the incrementals by starting build.
type PayloadBytes struct {
	Offered   int64          `json:"offered"`
	Full      int64          `json:"full"`
	Saved     int64          `json:"saved"`
	ByPayload []PayloadCount `json:"by_payload"`
}

// PayloadCount is one payload's offers: FromBuild is the starting build
// of an incremental one, "" for the full image.
type PayloadCount struct {
	FromBuild string `json:"from_build"`
	Offers    int64  `json:"offers"`
	Bytes     int64  `json:"bytes"`
	FullBytes int64  `json:"full_bytes"`
}

// ModelCohort is CohortCounts for one model.
type ModelCohort struct {
	Model string `json:"model"`
	// Models is how many models the OtherModels row sums.
	Models int64 `json:"models,omitempty"`
	CohortCounts
	// Held says the model is held; HoldReason says why.
	Held       bool   `json:"held"`
	HoldReason string `json:"hold_reason,omitempty"`
}

// BuildCohort is CohortCounts for one starting build.
type BuildCohort struct {
	StartingBuild string `json:"starting_build"`
	// Builds is how many builds the OtherBuilds row sums.
	Builds int64 `json:"builds,omitempty"`
	CohortCounts
}

// InstallTimes are percentiles of offer-to-install times, in seconds,
// interpolated within the InstallTimeBucket buckets (within about 9% of
// the exact value); nil without installs.
type InstallTimes struct {
	Count int64    `json:"count"`
	P50   *float64 `json:"p50"`
	P95   *float64 `json:"p95"`
}

// RolloutReport reports on rollout id at now. An unknown id is
// ErrNotFound.
func (r *Reports) RolloutReport(ctx context.Context, id string, now time.Time) (*RolloutReport, error) {
	ro, err := r.Rollouts.Rollout(ctx, id)
	if err != nil {
		return nil, err
	}
	now = now.UTC()
	since := now.Truncate(time.Hour).Add(-(ReportHours - 1) * time.Hour)
	start, end, started := timelineSpan(ro, now)
	if started {
		if _, first, _ := TimelineScale(start, end, false); first.Before(since) {
			since = first
		}
	}
	rr, err := r.Store.RolloutRollups(ctx, id, since, rolloutFleet(ro))
	if err != nil {
		return nil, fmt.Errorf("rollout report %s: %w", id, err)
	}
	if w, _, _ := TimelineScale(start, end, true); started && w < time.Hour && timelineFine(start, end, offered(rr.Records)) {
		rr.RecordTimes, err = r.Store.RolloutRecordTimes(ctx, id, recordUnit(w))
		if err != nil {
			return nil, fmt.Errorf("rollout report %s: %w", id, err)
		}
		if rr.RecordTimes == nil {
			rr.RecordTimes = []RecordTimeCount{}
		}
	}
	return NewRolloutReport(ro, rr, now), nil
}

// rolloutFleet is what the store can narrow the fleet counts of ro to:
// its selector's channels and regions, and the models both the selector
// and the release admit. When those two have no model in common it is
// the selector's, of which the release admits none: eligibility then
// finds nothing.
func rolloutFleet(ro *rollout.Rollout) FleetFilter {
	f := FleetFilter{Channels: ro.Selector.Channels, Regions: ro.Selector.Regions}
	sel, rel := ro.Selector.Models, ro.Release.Models
	switch {
	case len(sel) == 0:
		f.Models = rel
	case len(rel) == 0:
		f.Models = sel
	default:
		for _, m := range sel {
			if slices.Contains(rel, m) {
				f.Models = append(f.Models, m)
			}
		}
		if len(f.Models) == 0 {
			f.Models = sel
		}
	}
	return f
}

// NewRolloutReport assembles the report of ro from its rollups at now.
func NewRolloutReport(ro *rollout.Rollout, rr *RolloutRollups, now time.Time) *RolloutReport {
	pct := ro.Percent()
	rep := &RolloutReport{RolloutID: ro.ID, PatchID: ro.Release.PatchID, State: ro.State, Stage: ro.Stage,
		Percent: pct, GeneratedAt: now.UTC(), Holds: []rollout.Hold{}}

	byModel := map[string]*CohortCounts{}
	byBuild := map[string]*CohortCounts{}
	at := entry[CohortCounts]
	elig := eligibility{ro: ro, builds: map[string]bool{}, patches: map[string]bool{}}
	for _, fc := range rr.Fleet {
		if fc.N > 0 && elig.eligible(&fc) {
			at(byModel, fc.Model).Eligible += fc.N
			at(byBuild, fc.Build).Eligible += fc.N
		}
	}
	for _, rc := range rr.Records {
		if rc.N > 0 {
			at(byModel, rc.Model).count(rc.State, rc.N)
			at(byBuild, rc.StartingBuild).count(rc.State, rc.N)
		}
	}
	for _, rc := range rr.Confirmed {
		if rc.N > 0 {
			at(byModel, rc.Model).Confirmed += rc.N
			at(byBuild, rc.StartingBuild).Confirmed += rc.N
		}
	}
	for _, c := range byModel {
		c.Target = CohortTarget(c.Eligible, c.Installed, pct)
		rep.CohortCounts.add(*c)
	}
	for _, c := range byBuild {
		c.Target = CohortTarget(c.Eligible, c.Installed, pct)
	}
	// The total's target is of the totals, not a sum of rounded parts.
	rep.Target = CohortTarget(rep.Eligible, rep.Installed, pct)

	rankCohort := func(a, b CohortCounts) int {
		return cmp.Or(cmp.Compare(b.Offered, a.Offered), cmp.Compare(b.Eligible, a.Eligible))
	}
	models := make([]ModelCohort, 0, len(byModel))
	for m, c := range byModel {
		models = append(models, ModelCohort{Model: m, CohortCounts: *c})
	}
	slices.SortFunc(models, func(a, b ModelCohort) int {
		return cmp.Or(rankCohort(a.CohortCounts, b.CohortCounts), strings.Compare(a.Model, b.Model))
	})
	rep.ByModel = FoldTop(models, MaxReportRows, func(rest []ModelCohort) ModelCohort {
		o := ModelCohort{Model: handsets.OtherModels, Models: int64(len(rest))}
		for _, m := range rest {
			o.add(m.CohortCounts)
		}
		o.Target = CohortTarget(o.Eligible, o.Installed, pct)
		return o
	})
	for i := range rep.ByModel {
		if h := ro.ModelHold(rep.ByModel[i].Model); h != nil {
			rep.ByModel[i].Held, rep.ByModel[i].HoldReason = true, h.Reason
		}
	}
	builds := make([]BuildCohort, 0, len(byBuild))
	for b, c := range byBuild {
		builds = append(builds, BuildCohort{StartingBuild: b, CohortCounts: *c})
	}
	slices.SortFunc(builds, func(a, b BuildCohort) int {
		return cmp.Or(rankCohort(a.CohortCounts, b.CohortCounts), handsets.CompareBuilds(b.StartingBuild, a.StartingBuild),
			strings.Compare(a.StartingBuild, b.StartingBuild))
	})
	rep.ByStartingBuild = FoldTop(builds, MaxReportRows, func(rest []BuildCohort) BuildCohort {
		o := BuildCohort{StartingBuild: OtherBuilds, Builds: int64(len(rest))}
		for _, b := range rest {
			o.add(b.CohortCounts)
		}
		o.Target = CohortTarget(o.Eligible, o.Installed, pct)
		return o
	})

	codes := make([]handsets.FailureCount, 0, len(rr.Failures))
	for _, f := range rr.Failures {
		if f.Count > 0 {
			codes = append(codes, f)
		}
	}
	slices.SortFunc(codes, func(a, b handsets.FailureCount) int {
		return cmp.Or(cmp.Compare(b.Count, a.Count), strings.Compare(a.ErrorCode, b.ErrorCode))
	})
	rep.FailureCodes = FoldTop(codes, TopFailureCodes, func(rest []handsets.FailureCount) handsets.FailureCount {
		o := handsets.FailureCount{ErrorCode: OtherCodes}
		for _, f := range rest {
			o.Count += f.Count
		}
		return o
	})

	rep.InstallsPerHour = hourSeries(rr.Hourly, now)
	rep.StatesPerHour = stateSeries(rr.Records, rr.StateHours, now)
	rep.Timeline = rolloutTimeline(ro, rr, now)
	rep.OfferToInstall = installTimes(rr.InstallTimes)
	rep.OfferToConfirmation = installTimes(rr.ConfirmTimes)
	if ro.Halt != nil {
		h := *ro.Halt
		rep.Halt = &h
	}
	rep.Holds = append(rep.Holds, ro.Holds...)
	rep.Bytes = payloadBytes(rr.Payloads)
	return rep
}

// payloadBytes sums the payload counts: the full image first, then the
// incrementals by starting build.
func payloadBytes(counts []PayloadCount) PayloadBytes {
	pb := PayloadBytes{ByPayload: []PayloadCount{}}
	for _, c := range counts {
		if c.Offers <= 0 {
			continue
		}
		pb.Offered += c.Bytes
		pb.Full += c.FullBytes
		pb.ByPayload = append(pb.ByPayload, c)
	}
	pb.Saved = pb.Full - pb.Offered
	slices.SortFunc(pb.ByPayload, func(a, b PayloadCount) int {
		return cmp.Or(cmp.Compare(min(len(a.FromBuild), 1), min(len(b.FromBuild), 1)),
			handsets.CompareBuilds(a.FromBuild, b.FromBuild), strings.Compare(a.FromBuild, b.FromBuild))
	})
	return pb
}

// eligibility decides which fleet counts a rollout could still offer
// its release to, as Selector.Matches, the release's bounds and
// Rollout.Pending do for one handset, remembering the verdict on each
// build and patch set (a fleet has few of either). The counts are of the
// selector's channels and regions already (rolloutFleet).
type eligibility struct {
	ro      *rollout.Rollout
	builds  map[string]bool
	patches map[string]bool
}

func (e *eligibility) eligible(fc *FleetCount) bool {
	sel, rel := &e.ro.Selector, &e.ro.Release
	if (len(sel.Models) > 0 && !slices.Contains(sel.Models, fc.Model)) ||
		(len(rel.Models) > 0 && !slices.Contains(rel.Models, fc.Model)) {
		return false
	}
	ok, seen := e.builds[fc.Build]
	if !seen {
		ok = rollout.InBuildRange(fc.Build, sel.BuildMin, sel.BuildMax) && rollout.InBuildRange(fc.Build, rel.BuildMin, rel.BuildMax) &&
			handsets.CompareBuilds(fc.Build, rel.InstallsBuild) < 0
		e.builds[fc.Build] = ok
	}
	if !ok {
		return false
	}
	patched, seen := e.patches[fc.InstalledPatches]
	if !seen {
		patched = strings.Contains(fc.InstalledPatches, ","+rel.PatchID+",")
		e.patches[fc.InstalledPatches] = patched
	}
	return !patched
}

// FoldTop keeps the first top of ranked rows and replaces the rest, if
// any, by the one row other makes of them: a flood of invented models
// cannot make an answer grow.
func FoldTop[T any](ranked []T, top int, other func(rest []T) T) []T {
	if len(ranked) <= top {
		return ranked
	}
	return append(slices.Clip(ranked[:top]), other(ranked[top:]))
}

// hourSeries is the ReportHours hours up to now's, oldest first, with
// the results of each (zero for hours without).
func hourSeries(rows []HourResults, now time.Time) []HourResults {
	last := now.UTC().Truncate(time.Hour)
	first := last.Add(-(ReportHours - 1) * time.Hour)
	out := make([]HourResults, ReportHours)
	for i := range out {
		out[i].Hour = first.Add(time.Duration(i) * time.Hour)
	}
	for _, h := range rows {
		i := int(h.Hour.UTC().Truncate(time.Hour).Sub(first) / time.Hour)
		if i >= 0 && i < ReportHours {
			out[i].Installed += h.Installed
			out[i].Failed += h.Failed
		}
	}
	return out
}

// stateSeries walks the current record counts back through each hour's
// net changes: the states at the end of an hour are the current ones
// less every change made after it. Counts below zero (history from
// before the rollups began) show as zero.
func stateSeries(records []RolloutCount, deltas []StateHourDelta, now time.Time) []HourStates {
	last := now.UTC().Truncate(time.Hour)
	first := last.Add(-(ReportHours - 1) * time.Hour)
	byState := map[string]int64{}
	for _, rc := range records {
		byState[rc.State] += rc.N
	}
	byHour := map[time.Time]map[string]int64{}
	for _, d := range deltas {
		h := d.Hour.UTC().Truncate(time.Hour)
		if h.After(last) {
			// Changes stamped after now (a clock ahead): not yet.
			byState[d.State] -= d.N
			continue
		}
		if byHour[h] == nil {
			byHour[h] = map[string]int64{}
		}
		byHour[h][d.State] += d.N
	}
	out := make([]HourStates, ReportHours)
	for i := ReportHours - 1; i >= 0; i-- {
		h := first.Add(time.Duration(i) * time.Hour)
		var c CohortCounts
		for state, n := range byState {
			c.count(state, max(n, 0))
		}
		out[i] = HourStates{Hour: h, Pending: c.Pending, Downloading: c.Downloading, Installed: c.Installed,
			Failed: c.Failed, RolledBack: c.RolledBack}
		for state, n := range byHour[h] {
			byState[state] -= n
		}
	}
	return out
}

func installTimes(buckets []BucketCount) InstallTimes {
	var it InstallTimes
	for _, b := range buckets {
		it.Count += max(b.N, 0)
	}
	if p, ok := InstallTimePercentile(buckets, 0.5); ok {
		it.P50 = &p
	}
	if p, ok := InstallTimePercentile(buckets, 0.95); ok {
		it.P95 = &p
	}
	return it
}

// InstallTimePercentile is the q-quantile (0.5 for the median) of the
// offer-to-install times counted in buckets, in seconds rounded to 0.1:
// the time at rank q × count, interpolated linearly within the bounds of
// the bucket that holds that rank (InstallTimeBucketBounds). False
// without times.
func InstallTimePercentile(buckets []BucketCount, q float64) (float64, bool) {
	sorted := slices.Clone(buckets)
	slices.SortFunc(sorted, func(a, b BucketCount) int { return cmp.Compare(a.Bucket, b.Bucket) })
	var total int64
	for _, b := range sorted {
		total += max(b.N, 0)
	}
	if total == 0 {
		return 0, false
	}
	rank := min(max(q, 0), 1) * float64(total)
	var below int64
	for _, b := range sorted {
		if b.N <= 0 {
			continue
		}
		if float64(below+b.N) >= rank {
			lo, hi := InstallTimeBucketBounds(b.Bucket)
			frac := (rank - float64(below)) / float64(b.N)
			s := lo.Seconds() + frac*(hi.Seconds()-lo.Seconds())
			return math.Round(s*10) / 10, true
		}
		below += b.N
	}
	return 0, false // not reached: rank <= total
}
