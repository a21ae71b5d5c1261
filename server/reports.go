package server

import (
	"cmp"
	"context"
	"fmt"
	"math"
	"slices"
	"strings"
	"time"

	"github.com/patchfleet/ota/internal/clock"
)

// Reports answer the release managers' and security leads' questions
// from the rollups (rollup.go), never from the fleet: a report at
// millions of handsets is a few grouped reads of tables whose size does
// not grow with the fleet.
type Reports struct {
	Store    ReportStore
	Rollouts RolloutLookup
	// Now is the clock the API reads reports at (default time.Now).
	Now func() time.Time
}

// RolloutLookup is the part of RolloutStore that reports need.
type RolloutLookup interface {
	// Rollout returns the rollout id, or ErrNotFound.
	Rollout(ctx context.Context, id string) (*Rollout, error)
}

// ReportStore reads the rollups. Each method reads in one snapshot, so
// the parts of one report agree with each other.
type ReportStore interface {
	// RolloutRollups returns rollout rolloutID's counters, its results
	// per hour from hoursSince on, and the fleet counts of the handsets
	// fleet admits (the caller checks builds and patches).
	RolloutRollups(ctx context.Context, rolloutID string, hoursSince time.Time, fleet FleetFilter) (*RolloutRollups, error)
	// ExposureRollups returns the fleet_daily rows of day ("" is the
	// latest day with data; with none, Day is "") and the daily totals of
	// the days days before it up to it.
	ExposureRollups(ctx context.Context, day string, days int) (*ExposureRollups, error)
	// RolloutRecordTimes counts rollout rolloutID's records by the time
	// of their first offer and of their latest result, truncated to unit
	// (time.Second or time.Minute): see RecordTimeCount. It reads every
	// record of the rollout: the caller bounds it (TimelineMaxRecords).
	RolloutRecordTimes(ctx context.Context, rolloutID string, unit time.Duration) ([]RecordTimeCount, error)
	// ExposureSamples returns the exposure samples of the buckets that
	// start from since to until (both included), oldest first.
	ExposureSamples(ctx context.Context, since, until time.Time) ([]ExposureSample, error)
}

// RolloutRollups are the rows a rollout report is made of.
type RolloutRollups struct {
	// Fleet counts the enrolled handsets by what eligibility depends on.
	Fleet []FleetCount
	// Records counts the rollout's device_rollouts records.
	Records      []RolloutCount
	Failures     []FailureCount
	Hourly       []HourResults
	InstallTimes []BucketCount
	// StateHours are the net changes, per hour after the report's first
	// hour, of how many records are in each state.
	StateHours []StateHourDelta
	// RecordTimes, when not nil, count the records by time for a
	// timeline finer than an hour (RolloutRecordTimes).
	RecordTimes []RecordTimeCount
}

// StateHourDelta is the net change of how many of a rollout's records
// were in State during the hour that starts at Hour.
type StateHourDelta struct {
	Hour  time.Time
	State string
	N     int64
}

// HourStates is where a rollout's records stood at the end of an hour.
type HourStates struct {
	Hour        time.Time `json:"hour"`
	Pending     int64     `json:"pending"`
	Downloading int64     `json:"downloading"`
	Installed   int64     `json:"installed"`
	Failed      int64     `json:"failed"`
	RolledBack  int64     `json:"rolled_back"`
}

// FleetFilter admits the handsets whose model, channel and region are
// in its lists; an empty list admits any.
type FleetFilter struct {
	Models, Channels, Regions []string
}

// FleetCount is how many enrolled handsets (N, above 0) of a
// FleetFilter share a model, build and set of installed patches.
type FleetCount struct {
	Model, Build string
	// InstalledPatches is the patch set as the store encodes it: ",A,B,"
	// (a comma on both sides of every id), "" for none.
	InstalledPatches string
	N                int64
}

// RolloutCount is how many of a rollout's records share a model,
// starting build and state (DeviceOffered or a report state).
type RolloutCount struct {
	Model, StartingBuild, State string
	N                           int64
}

// HourResults are the results of one hour: installs that finished and
// installs that failed (a rollback counts as failed).
type HourResults struct {
	Hour      time.Time `json:"hour"`
	Installed int64     `json:"installed"`
	Failed    int64     `json:"failed"`
}

// BucketCount is how many offer-to-install times fell in bucket Bucket
// of InstallTimeBucket.
type BucketCount struct {
	Bucket int
	N      int64
}

// ExposureRollups are the rows an exposure report is made of.
type ExposureRollups struct {
	// Day is the day Segments count.
	Day string
	// Segments count the handsets seen on Day.
	Segments []ExposureCount
	// Daily count the handsets seen on each day of the series.
	Daily []DailyCount
}

// ExposureCount is how many handsets seen on a day share a model,
// region and privacy state.
type ExposureCount struct {
	Model, Region    string
	CloudMessaging   string
	NumberEncryption bool
	N                int64
}

// DailyCount is how many handsets seen on Day share a privacy state.
type DailyCount struct {
	Day              string
	CloudMessaging   string
	NumberEncryption bool
	N                int64
}

// exposed is the incident: cloud messaging that switched itself on, or
// phone numbers sent unencrypted.
func exposed(messaging string, encryption bool) bool {
	return messaging == MessagingAutoEnabled || !encryption
}

// Limits of the reports' lists.
const (
	// MaxReportRows is how many models or builds a rollout report lists
	// one by one; the rest sum up in one OtherModels (OtherBuilds) row.
	MaxReportRows = 200
	// TopFailureCodes is how many error codes a rollout report lists.
	TopFailureCodes = 10
	// ReportHours is how many hours installs_per_hour covers.
	ReportHours = 48
	// DefaultExposureDays and MaxExposureDays bound the exposure series.
	DefaultExposureDays = 30
	MaxExposureDays     = 366
	// ComplianceTarget is the compliant share the projection aims at.
	ComplianceTarget = 0.95
	// projectionDays is how many days of the series the projection's
	// trend is fitted over.
	projectionDays = 7
	// maxProjectionDays is how far ahead a projection may land.
	maxProjectionDays = 3650
)

// OtherBuilds is the starting build of the rollout report row that sums
// the builds past MaxReportRows; OtherRegions is the region of the
// exposure report row that sums the regions past its top. Neither can be
// a handset's build or region.
const (
	OtherBuilds  = "(other)"
	OtherRegions = "(other)"
	// OtherCodes is the error code of the row that sums the failure codes
	// past TopFailureCodes; error codes are upper snake case.
	OtherCodes = "(other)"
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
	Failed      int64 `json:"failed"`
	RolledBack  int64 `json:"rolled_back"`
}

func (c *CohortCounts) add(o CohortCounts) {
	c.Eligible += o.Eligible
	c.Target += o.Target
	c.Offered += o.Offered
	c.Pending += o.Pending
	c.Downloading += o.Downloading
	c.Installed += o.Installed
	c.Failed += o.Failed
	c.RolledBack += o.RolledBack
}

// count adds n records in state.
func (c *CohortCounts) count(state string, n int64) {
	c.Offered += n
	switch state {
	case DeviceOffered:
		c.Pending += n
	case StateDownloading, StateDownloaded, StateVerified, StateInstalling:
		c.Downloading += n
	case StateInstalled:
		c.Installed += n
	case StateFailed:
		c.Failed += n
	case StateRolledBack:
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
	RolloutID   string       `json:"rollout_id"`
	PatchID     string       `json:"patch_id"`
	State       RolloutState `json:"state"`
	Stage       int          `json:"stage"`
	Percent     float64      `json:"percent"`
	GeneratedAt time.Time    `json:"generated_at"`
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
	FailureCodes []FailureCount `json:"failure_codes"`
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
	// Halt is why the rollout stopped on its own; Holds the held models.
	Halt  *Hold  `json:"halt,omitempty"`
	Holds []Hold `json:"holds"`
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

func (r *Reports) now() time.Time { return clock.Now(r.Now) }

// Clock is the time the API reads reports at: Now, or the wall clock.
func (r *Reports) Clock() time.Time { return r.now() }

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
func rolloutFleet(ro *Rollout) FleetFilter {
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
func NewRolloutReport(ro *Rollout, rr *RolloutRollups, now time.Time) *RolloutReport {
	pct := ro.Percent()
	rep := &RolloutReport{RolloutID: ro.ID, PatchID: ro.Release.PatchID, State: ro.State, Stage: ro.Stage,
		Percent: pct, GeneratedAt: now.UTC(), Holds: []Hold{}}

	byModel := map[string]*CohortCounts{}
	byBuild := map[string]*CohortCounts{}
	at := func(m map[string]*CohortCounts, k string) *CohortCounts {
		c := m[k]
		if c == nil {
			c = &CohortCounts{}
			m[k] = c
		}
		return c
	}
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
		o := ModelCohort{Model: OtherModels, Models: int64(len(rest))}
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
		return cmp.Or(rankCohort(a.CohortCounts, b.CohortCounts), CompareBuilds(b.StartingBuild, a.StartingBuild),
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

	codes := make([]FailureCount, 0, len(rr.Failures))
	for _, f := range rr.Failures {
		if f.Count > 0 {
			codes = append(codes, f)
		}
	}
	slices.SortFunc(codes, func(a, b FailureCount) int {
		return cmp.Or(cmp.Compare(b.Count, a.Count), strings.Compare(a.ErrorCode, b.ErrorCode))
	})
	rep.FailureCodes = FoldTop(codes, TopFailureCodes, func(rest []FailureCount) FailureCount {
		o := FailureCount{ErrorCode: OtherCodes}
		for _, f := range rest {
			o.Count += f.Count
		}
		return o
	})

	rep.InstallsPerHour = hourSeries(rr.Hourly, now)
	rep.StatesPerHour = stateSeries(rr.Records, rr.StateHours, now)
	rep.Timeline = rolloutTimeline(ro, rr, now)
	rep.OfferToInstall = installTimes(rr.InstallTimes)
	if ro.Halt != nil {
		h := *ro.Halt
		rep.Halt = &h
	}
	rep.Holds = append(rep.Holds, ro.Holds...)
	return rep
}

// eligibility decides which fleet counts a rollout could still offer
// its release to, as Selector.Matches, the release's bounds and
// Rollout.Pending do for one handset, remembering the verdict on each
// build and patch set (a fleet has few of either). The counts are of the
// selector's channels and regions already (rolloutFleet).
type eligibility struct {
	ro      *Rollout
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
		ok = inBuildRange(fc.Build, sel.BuildMin, sel.BuildMax) && inBuildRange(fc.Build, rel.BuildMin, rel.BuildMax) &&
			CompareBuilds(fc.Build, rel.InstallsBuild) < 0
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

// ExposureOptions choose what an exposure report covers.
type ExposureOptions struct {
	// Day is the day ("2026-12-01", UTC) the totals and the breakdowns
	// count; empty is the latest day with data.
	Day string
	// Days is how many days the daily series covers, ending at Day
	// (default DefaultExposureDays, at most MaxExposureDays).
	Days int
	// Top is how many models and regions are listed one by one (default
	// DefaultSummaryModels, at most MaxSummaryModels).
	Top int
}

// ExposureCounts count handsets by the incident's two leaks.
type ExposureCounts struct {
	// Active are the handsets seen on the day.
	Active int64 `json:"active"`
	// Exposed have cloud messaging auto-enabled or number encryption off
	// (or both); AutoEnabled and Unencrypted count each leak alone.
	Exposed     int64 `json:"exposed"`
	AutoEnabled int64 `json:"auto_enabled"`
	Unencrypted int64 `json:"unencrypted"`
	// Compliant are Active minus Exposed.
	Compliant int64 `json:"compliant"`
	// ShareExposed is Exposed / Active, 0 without active handsets.
	ShareExposed float64 `json:"share_exposed"`
}

func (c *ExposureCounts) count(messaging string, encryption bool, n int64) {
	c.Active += n
	if messaging == MessagingAutoEnabled {
		c.AutoEnabled += n
	}
	if !encryption {
		c.Unencrypted += n
	}
	if exposed(messaging, encryption) {
		c.Exposed += n
	} else {
		c.Compliant += n
	}
}

func (c *ExposureCounts) add(o ExposureCounts) {
	c.Active += o.Active
	c.Exposed += o.Exposed
	c.AutoEnabled += o.AutoEnabled
	c.Unencrypted += o.Unencrypted
	c.Compliant += o.Compliant
}

func (c *ExposureCounts) finish() {
	c.ShareExposed = 0
	if c.Active > 0 {
		c.ShareExposed = roundShare(float64(c.Exposed) / float64(c.Active))
	}
}

// roundShare keeps six decimals: a share of a million handsets.
func roundShare(s float64) float64 { return math.Round(s*1e6) / 1e6 }

// ExposureReport is how many active handsets still leak: on one day, by
// model and region, and daily over time, with when the fleet reaches
// ComplianceTarget at the current rate.
type ExposureReport struct {
	// Day is the day counted: the one asked for, or the latest with data.
	Day         string    `json:"day"`
	GeneratedAt time.Time `json:"generated_at"`
	ExposureCounts
	// ByModel and ByRegion are ranked by exposed handsets (then active,
	// then name), Top of them, with an OtherModels (OtherRegions) row.
	ByModel  []ModelExposure  `json:"by_model"`
	ByRegion []RegionExposure `json:"by_region"`
	// Daily is the series of the Days days up to Day, oldest first, days
	// without data included (with a nil ShareCompliant).
	Daily      []DayExposure `json:"daily"`
	Projection Projection    `json:"projection"`
	// Samples are the exposure samples (exposure_samples.go) of the
	// ExposureSampleHours hours up to the end of Day (or now, if
	// earlier), oldest first, and, when Day is today, the report's own
	// counts at GeneratedAt last: the burn-down plots them while the
	// daily series has fewer than three days with data.
	Samples []ExposureSample `json:"samples"`
}

// ModelExposure is ExposureCounts for one model.
type ModelExposure struct {
	Model string `json:"model"`
	// Models is how many models the OtherModels row sums.
	Models int64 `json:"models,omitempty"`
	ExposureCounts
}

// RegionExposure is ExposureCounts for one region ("" for handsets that
// sent none).
type RegionExposure struct {
	Region string `json:"region"`
	// Regions is how many regions the OtherRegions row sums.
	Regions int64 `json:"regions,omitempty"`
	ExposureCounts
}

// DayExposure is one day of the exposure series.
type DayExposure struct {
	Day         string `json:"day"`
	Active      int64  `json:"active"`
	Exposed     int64  `json:"exposed"`
	AutoEnabled int64  `json:"auto_enabled"`
	Unencrypted int64  `json:"unencrypted"`
	// ShareCompliant is (Active - Exposed) / Active; nil on a day without
	// active handsets.
	ShareCompliant *float64 `json:"share_compliant"`
}

// Projection states of the exposure report.
const (
	ProjectionReached   = "reached"   // the latest share is at the target already
	ProjectionProjected = "projected" // Date is when the trend reaches it
	ProjectionUnknown   = "unknown"   // no date: Reason says why
)

// Projection is when the compliant share reaches TargetShare if it
// keeps rising as it did: a least-squares line through the last 7 days
// of the series that have data.
type Projection struct {
	TargetShare float64 `json:"target_share"`
	Status      string  `json:"status"`
	// Date is the first day at or above TargetShare on the trend
	// (ProjectionProjected), or the latest day with data
	// (ProjectionReached); nil otherwise.
	Date *string `json:"date"`
	// SlopePerDay is the trend, in share per day; Days how many days it
	// was fitted over.
	SlopePerDay float64 `json:"slope_per_day"`
	Days        int     `json:"days"`
	// Reason says why there is no date.
	Reason string `json:"reason,omitempty"`
}

// ExposureReport reports on the handsets still exposed, at now.
// Options out of bounds are FieldErrors.
func (r *Reports) ExposureReport(ctx context.Context, opts ExposureOptions, now time.Time) (*ExposureReport, error) {
	if opts.Days == 0 {
		opts.Days = DefaultExposureDays
	}
	if opts.Top == 0 {
		opts.Top = DefaultSummaryModels
	}
	switch {
	case opts.Days < 1 || opts.Days > MaxExposureDays:
		return nil, fieldErr("days", "want 1 to %d", MaxExposureDays)
	case opts.Top < 1 || opts.Top > MaxSummaryModels:
		return nil, fieldErr("top", "want 1 to %d", MaxSummaryModels)
	}
	if opts.Day != "" {
		if _, err := time.Parse(time.DateOnly, opts.Day); err != nil {
			return nil, fieldErr("day", "want a UTC day such as 2026-12-01")
		}
	}
	er, err := r.Store.ExposureRollups(ctx, opts.Day, opts.Days)
	if err != nil {
		return nil, fmt.Errorf("exposure report: %w", err)
	}
	if er.Day == "" {
		// No data at all: an empty report of the day asked for, or today.
		er.Day = cmp.Or(opts.Day, now.UTC().Format(time.DateOnly))
	}
	rep := NewExposureReport(er, opts, now)
	until, since := exposureSampleSpan(er.Day, now)
	if rep.Samples, err = r.Store.ExposureSamples(ctx, since, until); err != nil {
		return nil, fmt.Errorf("exposure report: %w", err)
	}
	rep.Samples = withLiveSample(rep, now)
	return rep, nil
}

// NewExposureReport assembles an exposure report from its rollups.
func NewExposureReport(er *ExposureRollups, opts ExposureOptions, now time.Time) *ExposureReport {
	rep := &ExposureReport{Day: er.Day, GeneratedAt: now.UTC(), Samples: []ExposureSample{}}
	models := map[string]*ExposureCounts{}
	regions := map[string]*ExposureCounts{}
	at := func(m map[string]*ExposureCounts, k string) *ExposureCounts {
		c := m[k]
		if c == nil {
			c = &ExposureCounts{}
			m[k] = c
		}
		return c
	}
	for _, s := range er.Segments {
		if s.N <= 0 {
			continue
		}
		rep.count(s.CloudMessaging, s.NumberEncryption, s.N)
		at(models, s.Model).count(s.CloudMessaging, s.NumberEncryption, s.N)
		at(regions, s.Region).count(s.CloudMessaging, s.NumberEncryption, s.N)
	}
	rep.finish()
	rep.ByModel, rep.ByRegion = []ModelExposure{}, []RegionExposure{}
	for _, r := range rankExposure(models, opts.Top, OtherModels) {
		rep.ByModel = append(rep.ByModel, ModelExposure{Model: r.key, Models: r.folded, ExposureCounts: r.counts})
	}
	for _, r := range rankExposure(regions, opts.Top, OtherRegions) {
		rep.ByRegion = append(rep.ByRegion, RegionExposure{Region: r.key, Regions: r.folded, ExposureCounts: r.counts})
	}
	rep.Daily = daySeries(er.Daily, er.Day, opts.Days)
	rep.Projection = ProjectCompliance(rep.Daily, ComplianceTarget)
	return rep
}

// rankedExposure is one row of an exposure breakdown: a model or a
// region, or (folded > 0) the row that sums folded others.
type rankedExposure struct {
	key    string
	folded int64
	counts ExposureCounts
}

// rankExposure orders counts, most exposed first (then most active, then
// by key), each finished, and folds the rows past the top into one keyed
// other.
func rankExposure(counts map[string]*ExposureCounts, top int, other string) []rankedExposure {
	rows := make([]rankedExposure, 0, len(counts))
	for k, c := range counts {
		c.finish()
		rows = append(rows, rankedExposure{key: k, counts: *c})
	}
	slices.SortFunc(rows, func(a, b rankedExposure) int {
		return cmp.Or(cmp.Compare(b.counts.Exposed, a.counts.Exposed), cmp.Compare(b.counts.Active, a.counts.Active),
			strings.Compare(a.key, b.key))
	})
	return FoldTop(rows, top, func(rest []rankedExposure) rankedExposure {
		o := rankedExposure{key: other, folded: int64(len(rest))}
		for _, r := range rest {
			o.counts.add(r.counts)
		}
		o.counts.finish()
		return o
	})
}

// daySeries is the days days up to last, oldest first, each with its
// counts (zero for days without data).
func daySeries(rows []DailyCount, last string, days int) []DayExposure {
	end, err := time.Parse(time.DateOnly, last)
	if err != nil {
		return []DayExposure{}
	}
	out := make([]DayExposure, days)
	index := make(map[string]int, days)
	for i := range out {
		d := end.AddDate(0, 0, i-days+1).Format(time.DateOnly)
		out[i].Day = d
		index[d] = i
	}
	for _, r := range rows {
		i, ok := index[r.Day]
		if !ok || r.N <= 0 {
			continue
		}
		out[i].Active += r.N
		if r.CloudMessaging == MessagingAutoEnabled {
			out[i].AutoEnabled += r.N
		}
		if !r.NumberEncryption {
			out[i].Unencrypted += r.N
		}
		if exposed(r.CloudMessaging, r.NumberEncryption) {
			out[i].Exposed += r.N
		}
	}
	for i := range out {
		if d := &out[i]; d.Active > 0 {
			s := roundShare(float64(d.Active-d.Exposed) / float64(d.Active))
			d.ShareCompliant = &s
		}
	}
	return out
}

// ProjectCompliance projects when the compliant share of the series
// (oldest first) reaches target: it fits a least-squares line through
// the days with data among the last 7 of the series and extends it from
// the latest one. The latest share at or above target is
// ProjectionReached; fewer than 2 days with data, a trend that is flat
// or falling, or a date more than ten years out is ProjectionUnknown,
// with the reason.
func ProjectCompliance(series []DayExposure, target float64) Projection {
	p := Projection{TargetShare: target, Status: ProjectionUnknown}
	var xs, ys []float64
	var lastDay time.Time
	for _, d := range series[max(len(series)-projectionDays, 0):] {
		if d.ShareCompliant == nil {
			continue
		}
		t, err := time.Parse(time.DateOnly, d.Day)
		if err != nil {
			continue
		}
		xs = append(xs, float64(t.Unix()/86400))
		ys = append(ys, *d.ShareCompliant)
		lastDay = t
	}
	p.Days = len(xs)
	if len(xs) > 0 && ys[len(ys)-1] >= target {
		d := lastDay.Format(time.DateOnly)
		p.Status, p.Date = ProjectionReached, &d
		return p
	}
	if len(xs) < 2 {
		p.Reason = fmt.Sprintf("fewer than 2 days with active handsets in the last %d days of the series", projectionDays)
		return p
	}
	var mx, my float64
	for i := range xs {
		mx += xs[i]
		my += ys[i]
	}
	mx /= float64(len(xs))
	my /= float64(len(ys))
	var sxy, sxx float64
	for i := range xs {
		sxy += (xs[i] - mx) * (ys[i] - my)
		sxx += (xs[i] - mx) * (xs[i] - mx)
	}
	slope := sxy / sxx
	p.SlopePerDay = math.Round(slope*1e6) / 1e6
	if !(slope > 1e-9) {
		p.Reason = fmt.Sprintf("the compliant share is flat or falling over the last %d days with data", len(xs))
		return p
	}
	// The tolerance keeps 9.000000001 days of float noise at 9.
	days := math.Ceil((target-ys[len(ys)-1])/slope - 1e-9)
	if days > maxProjectionDays {
		p.Reason = "more than ten years away at the current rate"
		return p
	}
	d := lastDay.AddDate(0, 0, int(days)).Format(time.DateOnly)
	p.Status, p.Date = ProjectionProjected, &d
	return p
}
