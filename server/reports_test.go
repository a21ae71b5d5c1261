package server_test

import (
	"context"
	"errors"
	"math"
	"slices"
	"sort"
	"testing"
	"time"

	"github.com/patchfleet/ota/server"
	"github.com/patchfleet/ota/server/audit"
	"github.com/patchfleet/ota/server/errs"
	"github.com/patchfleet/ota/server/handsets"
	"github.com/patchfleet/ota/server/rollout"
)

// fakeReportStore is a function-field fake of server.ReportStore.
type fakeReportStore struct {
	RolloutRollupsFn  func(ctx context.Context, id string, since time.Time, fleet server.FleetFilter) (*server.RolloutRollups, error)
	ExposureRollupsFn func(ctx context.Context, day string, days int) (*server.ExposureRollups, error)
	RecordTimesFn     func(ctx context.Context, id string, unit time.Duration) ([]server.RecordTimeCount, error)
	SamplesFn         func(ctx context.Context, since, until time.Time) ([]server.ExposureSample, error)
}

func (f *fakeReportStore) RolloutRecordTimes(ctx context.Context, id string, unit time.Duration) ([]server.RecordTimeCount, error) {
	if f.RecordTimesFn == nil {
		return nil, nil
	}
	return f.RecordTimesFn(ctx, id, unit)
}

func (f *fakeReportStore) ExposureSamples(ctx context.Context, since, until time.Time) ([]server.ExposureSample, error) {
	if f.SamplesFn == nil {
		return nil, nil
	}
	return f.SamplesFn(ctx, since, until)
}

var _ server.ReportStore = (*fakeReportStore)(nil)

func (f *fakeReportStore) RolloutRollups(ctx context.Context, id string, since time.Time, fleet server.FleetFilter) (*server.RolloutRollups, error) {
	return f.RolloutRollupsFn(ctx, id, since, fleet)
}

// fleetRow is a fleet_counts row as the fake store holds it.
type fleetRow struct {
	model, channel, region, build, patches string
	n                                      int64
}

// countFleet is what a store answers for rows under filter f.
func countFleet(rows []fleetRow, f server.FleetFilter) []server.FleetCount {
	in := func(list []string, v string) bool { return len(list) == 0 || slices.Contains(list, v) }
	var out []server.FleetCount
	for _, r := range rows {
		if r.n > 0 && in(f.Models, r.model) && in(f.Channels, r.channel) && in(f.Regions, r.region) {
			out = append(out, server.FleetCount{Model: r.model, Build: r.build, InstalledPatches: r.patches, N: r.n})
		}
	}
	return out
}

func (f *fakeReportStore) ExposureRollups(ctx context.Context, day string, days int) (*server.ExposureRollups, error) {
	return f.ExposureRollupsFn(ctx, day, days)
}

type rolloutLookupFunc func(ctx context.Context, id string) (*rollout.Rollout, error)

func (f rolloutLookupFunc) Rollout(ctx context.Context, id string) (*rollout.Rollout, error) {
	return f(ctx, id)
}

var _ server.RolloutLookup = rolloutLookupFunc(nil)

func TestInstallTimePercentile(t *testing.T) {
	bounds := func(b int) (float64, float64) {
		lo, hi := server.InstallTimeBucketBounds(b)
		return lo.Seconds(), hi.Seconds()
	}
	round := func(s float64) float64 { return math.Round(s*10) / 10 }
	lo100, hi100 := bounds(100)
	_, hi80 := bounds(80)
	tests := []struct {
		name    string
		buckets []server.BucketCount
		q       float64
		want    float64
		ok      bool
	}{
		{name: "no installs", q: 0.5},
		{name: "only empty buckets", buckets: []server.BucketCount{{Bucket: 80, N: 0}}, q: 0.5},
		{name: "one install is the middle of its bucket", buckets: []server.BucketCount{{Bucket: 100, N: 1}},
			q: 0.5, want: round((lo100 + hi100) / 2), ok: true},
		{name: "median at the top of the lower bucket", buckets: []server.BucketCount{{Bucket: 100, N: 50}, {Bucket: 80, N: 50}},
			q: 0.5, want: round(hi80), ok: true},
		{name: "p95 interpolated in the upper bucket", buckets: []server.BucketCount{{Bucket: 100, N: 50}, {Bucket: 80, N: 50}},
			q: 0.95, want: round(lo100 + 0.9*(hi100-lo100)), ok: true},
		{name: "empty buckets in between are skipped", buckets: []server.BucketCount{{Bucket: 80, N: 10}, {Bucket: 90, N: 0}, {Bucket: 100, N: 10}},
			q: 0.75, want: round(lo100 + 0.5*(hi100-lo100)), ok: true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, ok := server.InstallTimePercentile(tc.buckets, tc.q)
			if got != tc.want || ok != tc.ok {
				t.Errorf("got %v, %v, want %v, %v", got, ok, tc.want, tc.ok)
			}
		})
	}
}

// TestInstallTimePercentileAccuracy buckets known install times and
// checks that the percentiles read back are within the 9% the buckets
// promise.
func TestInstallTimePercentileAccuracy(t *testing.T) {
	var times []time.Duration
	counts := map[int]int64{}
	for i := range 10_000 {
		// From 30 s to about 2 days, skewed short as installs are.
		d := time.Duration(30*math.Exp(float64(i%997)/997*8.5)) * time.Second
		times = append(times, d)
		counts[server.InstallTimeBucket(d)]++
	}
	var buckets []server.BucketCount
	for b, n := range counts {
		buckets = append(buckets, server.BucketCount{Bucket: b, N: n})
	}
	sort.Slice(times, func(i, j int) bool { return times[i] < times[j] })
	for _, q := range []float64{0.5, 0.95} {
		exact := times[int(q*float64(len(times)))-1].Seconds()
		got, ok := server.InstallTimePercentile(buckets, q)
		if !ok || math.Abs(got-exact)/exact > 0.09 {
			t.Errorf("p%.0f: got %.1f s, want within 9%% of %.1f s", q*100, got, exact)
		}
	}
}

func TestCohortTarget(t *testing.T) {
	tests := []struct {
		eligible, installed int64
		percent             float64
		want                int64
	}{
		{1000, 0, 10, 100},
		{900, 100, 50, 500}, // installed handsets left the eligible ones, not the cohort
		{3, 0, 50, 2},       // rounded, not truncated
		{1_000_000, 0, 0.01, 100},
		{0, 0, 100, 0},
		{250, 750, 100, 1000},
	}
	for _, tc := range tests {
		if got := server.CohortTarget(tc.eligible, tc.installed, tc.percent); got != tc.want {
			t.Errorf("CohortTarget(%d, %d, %v) = %d, want %d", tc.eligible, tc.installed, tc.percent, got, tc.want)
		}
	}
}

func TestFoldTop(t *testing.T) {
	sum := func(rest []int) int {
		s := 0
		for _, v := range rest {
			s += v
		}
		return -s
	}
	tests := []struct {
		in   []int
		top  int
		want []int
	}{
		{[]int{5, 4, 3, 2}, 2, []int{5, 4, -5}},
		{[]int{5, 4}, 2, []int{5, 4}},
		{[]int{5, 4, 3}, 3, []int{5, 4, 3}},
		{[]int{}, 1, []int{}},
	}
	for _, tc := range tests {
		in := slices.Clone(tc.in)
		if got := server.FoldTop(in, tc.top, sum); !slices.Equal(got, tc.want) {
			t.Errorf("FoldTop(%v, %d) = %v, want %v", tc.in, tc.top, got, tc.want)
		}
		if !slices.Equal(in, tc.in) {
			t.Errorf("FoldTop(%v, %d) changed its input to %v", tc.in, tc.top, in)
		}
	}
}

func share(s float64) *float64 { return &s }

// series is a daily series from first with one share per day (NaN: no
// active handsets that day).
func series(first string, shares ...float64) []server.DayExposure {
	t0, err := time.Parse(time.DateOnly, first)
	if err != nil {
		panic(err)
	}
	out := make([]server.DayExposure, len(shares))
	for i, s := range shares {
		out[i].Day = t0.AddDate(0, 0, i).Format(time.DateOnly)
		if !math.IsNaN(s) {
			out[i].Active, out[i].ShareCompliant = 1000, share(s)
		}
	}
	return out
}

func TestProjectCompliance(t *testing.T) {
	nan := math.NaN()
	tests := []struct {
		name   string
		series []server.DayExposure
		status string
		date   string
		days   int
		slope  float64
	}{
		{name: "rising a point a day", series: series("2026-12-01", 0.80, 0.81, 0.82, 0.83, 0.84, 0.85, 0.86),
			status: server.ProjectionProjected, date: "2026-12-16", days: 7, slope: 0.01},
		{name: "only the last 7 days count", series: series("2026-11-28", 0.99, 0.90, 0.85, 0.80, 0.81, 0.82, 0.83, 0.84, 0.85, 0.86),
			status: server.ProjectionProjected, date: "2026-12-16", days: 7, slope: 0.01},
		{name: "days without data are skipped", series: series("2026-12-01", 0.80, nan, 0.82, nan, nan, 0.85, 0.86),
			status: server.ProjectionProjected, date: "2026-12-16", days: 4, slope: 0.01},
		{name: "reached", series: series("2026-12-01", 0.90, 0.93, 0.951),
			status: server.ProjectionReached, date: "2026-12-03", days: 3},
		{name: "reached on the only day", series: series("2026-12-01", nan, 0.97),
			status: server.ProjectionReached, date: "2026-12-02", days: 1},
		{name: "flat", series: series("2026-12-01", 0.80, 0.80, 0.80), status: server.ProjectionUnknown, days: 3},
		{name: "falling", series: series("2026-12-01", 0.85, 0.83, 0.80), status: server.ProjectionUnknown, days: 3, slope: -0.025},
		{name: "one day", series: series("2026-12-01", nan, nan, 0.80), status: server.ProjectionUnknown, days: 1},
		{name: "no data", series: series("2026-12-01", nan, nan), status: server.ProjectionUnknown},
		{name: "empty series", status: server.ProjectionUnknown},
		{name: "decades away", series: series("2026-12-01", 0.100000, 0.100001, 0.100002), status: server.ProjectionUnknown, days: 3, slope: 0.000001},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			p := server.ProjectCompliance(tc.series, 0.95)
			var date string
			if p.Date != nil {
				date = *p.Date
			}
			if p.Status != tc.status || date != tc.date || p.Days != tc.days || math.Abs(p.SlopePerDay-tc.slope) > 1e-9 {
				t.Errorf("got %s %q over %d days, slope %v; want %s %q over %d days, slope %v",
					p.Status, date, p.Days, p.SlopePerDay, tc.status, tc.date, tc.days, tc.slope)
			}
			if (p.Status == server.ProjectionUnknown) != (p.Reason != "") {
				t.Errorf("status %s with reason %q: want a reason exactly when there is no date", p.Status, p.Reason)
			}
			if p.TargetShare != 0.95 {
				t.Errorf("target share %v, want 0.95", p.TargetShare)
			}
		})
	}
}

var reportNow = time.Date(2026, 12, 10, 15, 42, 0, 0, time.UTC)

// reportRollout is a rollout of CM-2026-001 (installs 8.0.0) at 10% to
// stable and beta PX-7 and PX-8 handsets of 7.0.0 or later, PX-8 held.
func reportRollout() *rollout.Rollout {
	return &rollout.Rollout{ID: "ro_1", State: rollout.RolloutRunning, Stages: []float64{1, 10, 50, 100}, Stage: 1,
		Release:  rollout.RolloutRelease{PatchID: "CM-2026-001", InstallsBuild: "8.0.0", Models: []string{"PX-7", "PX-8", "PX-9"}},
		Selector: rollout.Selector{Models: []string{"PX-7", "PX-8", "QZ-1"}, Channels: []string{"stable", "beta"}, BuildMin: "7.0.0"},
		Holds: []rollout.Hold{{Model: "PX-8", Actor: audit.SystemActor, Reason: "failure rate 12% over 1h", Installed: 44, Failed: 6,
			Rate: 0.12, MaxRate: 0.05, Window: time.Hour, At: reportNow.Add(-time.Hour)}},
	}
}

func TestRolloutReport(t *testing.T) {
	fleet := []fleetRow{
		{"PX-7", "stable", "DE", "7.4.0", ",CM-2025-004,", 600},
		{"PX-7", "beta", "FR", "7.10.0", "", 100},
		{"PX-7", "stable", "DE", "7.4.0", ",CM-2026-0011,", 50}, // not the patch
		{"PX-7", "stable", "DE", "8.0.0", ",CM-2026-001,", 400}, // installed
		{"PX-7", "stable", "DE", "7.4.0", ",CM-2026-001,", 7},   // patched otherwise
		{"PX-7", "stable", "DE", "8.1.0", "", 9},                // newer build
		{"PX-7", "dev", "DE", "7.4.0", "", 30},                  // channel
		{"PX-7", "stable", "DE", "6.9.9", "", 20},               // below build_min
		{"PX-8", "stable", "US", "7.2.0", "", 200},
		{"PX-9", "stable", "US", "7.2.0", "", 70}, // not selected
		{"QZ-1", "stable", "US", "7.2.0", "", 80}, // not in the release
		{"PX-8", "stable", "US", "7.3.0", "", 0},
	}
	records := []server.RolloutCount{
		{Model: "PX-7", StartingBuild: "7.4.0", State: handsets.StateInstalled, N: 400},
		{Model: "PX-7", StartingBuild: "7.4.0", State: handsets.DeviceOffered, N: 30},
		{Model: "PX-7", StartingBuild: "7.10.0", State: handsets.StateDownloading, N: 5},
		{Model: "PX-7", StartingBuild: "7.10.0", State: handsets.StateInstalling, N: 4},
		{Model: "PX-8", StartingBuild: "7.2.0", State: handsets.StateFailed, N: 6},
		{Model: "PX-8", StartingBuild: "7.2.0", State: handsets.StateRolledBack, N: 2},
		{Model: "PX-8", StartingBuild: "7.2.0", State: handsets.StateInstalled, N: 44},
	}
	var gotSince time.Time
	var gotFilter server.FleetFilter
	store := &fakeReportStore{RolloutRollupsFn: func(_ context.Context, id string, since time.Time, f server.FleetFilter) (*server.RolloutRollups, error) {
		gotSince, gotFilter = since, f
		return &server.RolloutRollups{Fleet: countFleet(fleet, f), Records: records,
			Failures: []handsets.FailureCount{{ErrorCode: "E_NO_SPACE", Count: 5}, {ErrorCode: "E_VERIFY", Count: 9}, {ErrorCode: "E_BOOT", Count: 5}},
			Hourly: []server.HourResults{
				{Hour: reportNow.Truncate(time.Hour), Installed: 3, Failed: 1},
				{Hour: reportNow.Truncate(time.Hour).Add(-47 * time.Hour), Installed: 7},
				{Hour: reportNow.Truncate(time.Hour).Add(-48 * time.Hour), Installed: 100}, // before the window
			},
			InstallTimes: []server.BucketCount{{Bucket: 100, N: 444}},
		}, nil
	}}
	ro := reportRollout()
	reports := &server.Reports{Store: store, Rollouts: rolloutLookupFunc(func(_ context.Context, id string) (*rollout.Rollout, error) {
		if id != ro.ID {
			return nil, errs.ErrNotFound
		}
		return ro, nil
	})}
	rep, err := reports.RolloutReport(t.Context(), "ro_1", reportNow)
	if err != nil {
		t.Fatal(err)
	}
	if want := reportNow.Truncate(time.Hour).Add(-47 * time.Hour); !gotSince.Equal(want) {
		t.Errorf("read hours since %v, want %v", gotSince, want)
	}
	if !slices.Equal(gotFilter.Models, []string{"PX-7", "PX-8"}) || !slices.Equal(gotFilter.Channels, []string{"stable", "beta"}) || gotFilter.Regions != nil {
		t.Errorf("read fleet counts of %+v, want models both the selector and the release admit, [PX-7 PX-8], and the channels [stable beta]", gotFilter)
	}
	// Eligible: PX-7 600 + 100 + 50, PX-8 200.
	want := server.CohortCounts{Eligible: 950, Target: 139, Offered: 491, Pending: 30, Downloading: 9, Installed: 444, Failed: 6, RolledBack: 2}
	if rep.CohortCounts != want {
		t.Errorf("totals:\n got %+v\nwant %+v", rep.CohortCounts, want)
	}
	if rep.RolloutID != "ro_1" || rep.PatchID != "CM-2026-001" || rep.State != rollout.RolloutRunning || rep.Percent != 10 || rep.Stage != 1 {
		t.Errorf("got %s %s %s stage %d at %v%%, want ro_1 CM-2026-001 running stage 1 at 10%%", rep.RolloutID, rep.PatchID, rep.State, rep.Stage, rep.Percent)
	}
	wantModels := []server.ModelCohort{
		{Model: "PX-7", CohortCounts: server.CohortCounts{Eligible: 750, Target: 115, Offered: 439, Pending: 30, Downloading: 9, Installed: 400}},
		{Model: "PX-8", CohortCounts: server.CohortCounts{Eligible: 200, Target: 24, Offered: 52, Installed: 44, Failed: 6, RolledBack: 2},
			Held: true, HoldReason: "failure rate 12% over 1h"},
	}
	if !slices.Equal(rep.ByModel, wantModels) {
		t.Errorf("by model:\n got %+v\nwant %+v", rep.ByModel, wantModels)
	}
	var builds []string
	for _, b := range rep.ByStartingBuild {
		builds = append(builds, b.StartingBuild)
	}
	if !slices.Equal(builds, []string{"7.4.0", "7.2.0", "7.10.0"}) {
		t.Errorf("starting builds %v, want most offered first: [7.4.0 7.2.0 7.10.0]", builds)
	}
	if b := rep.ByStartingBuild[0]; b.Eligible != 650 || b.Installed != 400 || b.Pending != 30 {
		t.Errorf("build 7.4.0: %+v, want 650 eligible, 400 installed, 30 pending", b.CohortCounts)
	}
	wantCodes := []handsets.FailureCount{{ErrorCode: "E_VERIFY", Count: 9}, {ErrorCode: "E_BOOT", Count: 5}, {ErrorCode: "E_NO_SPACE", Count: 5}}
	if !slices.Equal(rep.FailureCodes, wantCodes) {
		t.Errorf("failure codes %v, want %v", rep.FailureCodes, wantCodes)
	}
	if len(rep.InstallsPerHour) != 48 {
		t.Fatalf("%d hours, want 48", len(rep.InstallsPerHour))
	}
	first, last := rep.InstallsPerHour[0], rep.InstallsPerHour[47]
	if first.Installed != 7 || !first.Hour.Equal(reportNow.Truncate(time.Hour).Add(-47*time.Hour)) ||
		last.Installed != 3 || last.Failed != 1 || !last.Hour.Equal(reportNow.Truncate(time.Hour)) || rep.InstallsPerHour[20].Installed != 0 {
		t.Errorf("hours: first %+v, last %+v; want 7 installs 47 h ago and 3 installs, 1 failure this hour", first, last)
	}
	if it := rep.OfferToInstall; it.Count != 444 || it.P50 == nil || it.P95 == nil || *it.P50 >= *it.P95 {
		t.Errorf("offer to install %+v, want 444 installs with p50 below p95", it)
	}
	if rep.Halt != nil || len(rep.Holds) != 1 || rep.Holds[0].Model != "PX-8" || rep.Holds[0].Rate != 0.12 || rep.Holds[0].Window != time.Hour {
		t.Errorf("halt %v, holds %+v; want no halt and PX-8 held at 12%% over 1h", rep.Halt, rep.Holds)
	}

	if _, err := reports.RolloutReport(t.Context(), "ro_unknown", reportNow); !errors.Is(err, errs.ErrNotFound) {
		t.Errorf("unknown rollout: got %v, want ErrNotFound", err)
	}
}

func TestRolloutReportCaps(t *testing.T) {
	ro := reportRollout()
	ro.Selector, ro.Release.Models, ro.Holds = rollout.Selector{}, nil, nil
	ro.Halt = &rollout.Hold{Actor: audit.SystemActor, Reason: "failure rate 20%", Installed: 40, Failed: 10, Rate: 0.2, MaxRate: 0.05, Window: time.Hour, At: reportNow}
	var fleet []server.FleetCount
	for i := range server.MaxReportRows + 5 {
		fleet = append(fleet, server.FleetCount{Model: "M" + string(rune('A'+i/26)) + string(rune('a'+i%26)), Build: "7.0.0", N: int64(1000 - i)})
	}
	var failures []handsets.FailureCount
	for i := range 12 {
		failures = append(failures, handsets.FailureCount{ErrorCode: "E_" + string(rune('A'+i)), Count: int64(100 - i)})
	}
	store := &fakeReportStore{RolloutRollupsFn: func(_ context.Context, _ string, _ time.Time, f server.FleetFilter) (*server.RolloutRollups, error) {
		if f.Models != nil || f.Channels != nil || f.Regions != nil {
			t.Errorf("read fleet counts of %+v, want all of them for a rollout without a selector or model bounds", f)
		}
		return &server.RolloutRollups{Fleet: fleet, Failures: failures}, nil
	}}
	reports := &server.Reports{Store: store, Rollouts: rolloutLookupFunc(func(context.Context, string) (*rollout.Rollout, error) { return ro, nil })}
	rep, err := reports.RolloutReport(t.Context(), ro.ID, reportNow)
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.ByModel) != server.MaxReportRows+1 {
		t.Fatalf("%d model rows, want %d and one (other)", len(rep.ByModel), server.MaxReportRows)
	}
	other := rep.ByModel[server.MaxReportRows]
	if other.Model != handsets.OtherModels || other.Models != 5 || other.Eligible != 800+799+798+797+796 {
		t.Errorf("other row %+v, want the 5 smallest models summed", other)
	}
	if len(rep.FailureCodes) != 11 || rep.FailureCodes[10] != (handsets.FailureCount{ErrorCode: server.OtherCodes, Count: 89 + 90}) {
		t.Errorf("failure codes %v, want the top 10 and (other) with 179", rep.FailureCodes)
	}
	if rep.Halt == nil || rep.Halt.Reason != "failure rate 20%" || rep.Halt.Failed != 10 || rep.Holds == nil {
		t.Errorf("halt %+v, holds %v; want the halt with its numbers and an empty list of holds", rep.Halt, rep.Holds)
	}
	if rep.OfferToInstall.Count != 0 || rep.OfferToInstall.P50 != nil {
		t.Errorf("offer to install %+v, want none", rep.OfferToInstall)
	}
}

// TestRolloutReportNoCommonModel: a selector and a release with no model
// in common select nobody, whatever the store answers for the
// selector's models.
func TestRolloutReportNoCommonModel(t *testing.T) {
	ro := reportRollout()
	ro.Selector.Models, ro.Release.Models = []string{"QZ-1"}, []string{"PX-7"}
	store := &fakeReportStore{RolloutRollupsFn: func(_ context.Context, _ string, _ time.Time, f server.FleetFilter) (*server.RolloutRollups, error) {
		return &server.RolloutRollups{Fleet: countFleet([]fleetRow{
			{"QZ-1", "stable", "DE", "7.2.0", "", 80},
			{"PX-7", "stable", "DE", "7.2.0", "", 90},
		}, f)}, nil
	}}
	reports := &server.Reports{Store: store, Rollouts: rolloutLookupFunc(func(context.Context, string) (*rollout.Rollout, error) { return ro, nil })}
	rep, err := reports.RolloutReport(t.Context(), ro.ID, reportNow)
	if err != nil {
		t.Fatal(err)
	}
	if rep.Eligible != 0 || rep.Target != 0 || len(rep.ByModel) != 0 {
		t.Errorf("eligible %d, target %d, models %+v; want nobody", rep.Eligible, rep.Target, rep.ByModel)
	}
}

func TestExposureReport(t *testing.T) {
	var gotDay string
	var gotDays int
	store := &fakeReportStore{ExposureRollupsFn: func(_ context.Context, day string, days int) (*server.ExposureRollups, error) {
		gotDay, gotDays = day, days
		return &server.ExposureRollups{Day: "2026-12-09",
			Segments: []server.ExposureCount{
				{Model: "PX-7", Region: "DE", CloudMessaging: handsets.MessagingAutoEnabled, NumberEncryption: false, N: 100},
				{Model: "PX-7", Region: "DE", CloudMessaging: handsets.MessagingOptedOut, NumberEncryption: true, N: 300},
				{Model: "PX-7", Region: "FR", CloudMessaging: handsets.MessagingOptedIn, NumberEncryption: false, N: 50},
				{Model: "PX-8", Region: "FR", CloudMessaging: handsets.MessagingAutoEnabled, NumberEncryption: true, N: 80},
				{Model: "QZ-1", Region: "", CloudMessaging: handsets.MessagingAutoEnabled, NumberEncryption: true, N: 10},
				{Model: "AB-2", Region: "US", CloudMessaging: handsets.MessagingOptedOut, NumberEncryption: true, N: 0},
			},
			Daily: []server.DailyCount{
				{Day: "2026-12-07", CloudMessaging: handsets.MessagingAutoEnabled, NumberEncryption: false, N: 300},
				{Day: "2026-12-07", CloudMessaging: handsets.MessagingOptedOut, NumberEncryption: true, N: 700},
				{Day: "2026-12-09", CloudMessaging: handsets.MessagingAutoEnabled, NumberEncryption: true, N: 90},
				{Day: "2026-12-09", CloudMessaging: handsets.MessagingAutoEnabled, NumberEncryption: false, N: 100},
				{Day: "2026-12-09", CloudMessaging: handsets.MessagingOptedIn, NumberEncryption: false, N: 50},
				{Day: "2026-12-09", CloudMessaging: handsets.MessagingOptedOut, NumberEncryption: true, N: 300},
				{Day: "2026-12-01", CloudMessaging: handsets.MessagingOptedOut, NumberEncryption: true, N: 999}, // before the series
			},
		}, nil
	}}
	reports := &server.Reports{Store: store}
	rep, err := reports.ExposureReport(t.Context(), server.ExposureOptions{Days: 5, Top: 2}, reportNow)
	if err != nil {
		t.Fatal(err)
	}
	if gotDay != "" || gotDays != 5 {
		t.Errorf("read day %q over %d days, want the latest day over 5", gotDay, gotDays)
	}
	want := server.ExposureCounts{Active: 540, Exposed: 240, AutoEnabled: 190, Unencrypted: 150, Compliant: 300, ShareExposed: 0.444444}
	if rep.Day != "2026-12-09" || rep.ExposureCounts != want {
		t.Errorf("day %s:\n got %+v\nwant %+v", rep.Day, rep.ExposureCounts, want)
	}
	wantModels := []server.ModelExposure{
		{Model: "PX-7", ExposureCounts: server.ExposureCounts{Active: 450, Exposed: 150, AutoEnabled: 100, Unencrypted: 150, Compliant: 300, ShareExposed: 0.333333}},
		{Model: "PX-8", ExposureCounts: server.ExposureCounts{Active: 80, Exposed: 80, AutoEnabled: 80, ShareExposed: 1}},
		{Model: handsets.OtherModels, Models: 1, ExposureCounts: server.ExposureCounts{Active: 10, Exposed: 10, AutoEnabled: 10, ShareExposed: 1}},
	}
	if !slices.Equal(rep.ByModel, wantModels) {
		t.Errorf("by model:\n got %+v\nwant %+v", rep.ByModel, wantModels)
	}
	var regions []string
	for _, r := range rep.ByRegion {
		regions = append(regions, r.Region)
	}
	if !slices.Equal(regions, []string{"FR", "DE", server.OtherRegions}) || rep.ByRegion[2].Regions != 1 {
		t.Errorf("regions %v, want most exposed first: [FR DE (other)] with (other) summing 1", regions)
	}
	var days []string
	for _, d := range rep.Daily {
		days = append(days, d.Day)
	}
	if !slices.Equal(days, []string{"2026-12-05", "2026-12-06", "2026-12-07", "2026-12-08", "2026-12-09"}) {
		t.Fatalf("days %v, want the 5 days up to 2026-12-09", days)
	}
	d7, d8, d9 := rep.Daily[2], rep.Daily[3], rep.Daily[4]
	if d7.Active != 1000 || d7.Exposed != 300 || *d7.ShareCompliant != 0.7 || d8.Active != 0 || d8.ShareCompliant != nil ||
		d9.Active != 540 || d9.Exposed != 240 || d9.AutoEnabled != 190 || d9.Unencrypted != 150 {
		t.Errorf("days: %+v, %+v, %+v", d7, d8, d9)
	}
	// 0.70 on the 7th and 0.555556 on the 9th: falling.
	if p := rep.Projection; p.Status != server.ProjectionUnknown || p.Days != 2 || p.SlopePerDay >= 0 {
		t.Errorf("projection %+v, want unknown over 2 days of a falling share", p)
	}
}

func TestExposureReportOptions(t *testing.T) {
	var gotDay string
	var gotDays int
	store := &fakeReportStore{ExposureRollupsFn: func(_ context.Context, day string, days int) (*server.ExposureRollups, error) {
		gotDay, gotDays = day, days
		return &server.ExposureRollups{}, nil // no data at all
	}}
	reports := &server.Reports{Store: store}
	rep, err := reports.ExposureReport(t.Context(), server.ExposureOptions{}, reportNow)
	if err != nil {
		t.Fatal(err)
	}
	if gotDay != "" || gotDays != server.DefaultExposureDays {
		t.Errorf("read %q over %d days, want the latest day over %d", gotDay, gotDays, server.DefaultExposureDays)
	}
	if rep.Day != "2026-12-10" || rep.Active != 0 || len(rep.Daily) != 30 || len(rep.ByModel) != 0 || rep.ByModel == nil ||
		rep.Projection.Status != server.ProjectionUnknown {
		t.Errorf("empty fleet: day %s, %d active, %d days, models %v, projection %s; want today, 0, 30 days, [], unknown",
			rep.Day, rep.Active, len(rep.Daily), rep.ByModel, rep.Projection.Status)
	}
	if _, err := reports.ExposureReport(t.Context(), server.ExposureOptions{Day: "2026-11-30", Days: 366}, reportNow); err != nil || gotDay != "2026-11-30" || gotDays != 366 {
		t.Errorf("day 2026-11-30 over 366 days: %v, read %q over %d", err, gotDay, gotDays)
	}
	for _, tc := range []struct {
		opts  server.ExposureOptions
		field string
	}{
		{server.ExposureOptions{Days: 367}, "days"},
		{server.ExposureOptions{Days: -1}, "days"},
		{server.ExposureOptions{Top: 201}, "top"},
		{server.ExposureOptions{Day: "2026-13-01"}, "day"},
		{server.ExposureOptions{Day: "yesterday"}, "day"},
	} {
		_, err := reports.ExposureReport(t.Context(), tc.opts, reportNow)
		var fe *errs.FieldError
		if !errors.As(err, &fe) || fe.Field != tc.field {
			t.Errorf("%+v: got %v, want a FieldError on %s", tc.opts, err, tc.field)
		}
	}
}

// TestRolloutReportStatesPerHour: the states at the end of each hour are
// the current counts less the changes of every later hour; hours before
// the first change show zero.
func TestRolloutReportStatesPerHour(t *testing.T) {
	ro := reportRollout()
	now := reportNow.Truncate(time.Hour)
	h := func(ago int) time.Time { return now.Add(-time.Duration(ago) * time.Hour) }
	// Three hours ago 20 were offered; two hours ago 12 downloaded and 8
	// of them installed; in this hour 1 more installed and 2 failed.
	records := []server.RolloutCount{
		{Model: "PX-7", StartingBuild: "7.4.0", State: handsets.DeviceOffered, N: 8},
		{Model: "PX-7", StartingBuild: "7.4.0", State: handsets.StateDownloading, N: 1},
		{Model: "PX-7", StartingBuild: "7.4.0", State: handsets.StateInstalled, N: 9},
		{Model: "PX-7", StartingBuild: "7.4.0", State: handsets.StateFailed, N: 2},
	}
	deltas := []server.StateHourDelta{
		{Hour: h(3), State: handsets.DeviceOffered, N: 20},
		{Hour: h(2), State: handsets.DeviceOffered, N: -12},
		{Hour: h(2), State: handsets.StateDownloading, N: 4},
		{Hour: h(2), State: handsets.StateInstalled, N: 8},
		{Hour: h(0), State: handsets.StateDownloading, N: -3},
		{Hour: h(0), State: handsets.StateInstalled, N: 1},
		{Hour: h(0), State: handsets.StateFailed, N: 2},
	}
	store := &fakeReportStore{RolloutRollupsFn: func(context.Context, string, time.Time, server.FleetFilter) (*server.RolloutRollups, error) {
		return &server.RolloutRollups{Records: records, StateHours: deltas}, nil
	}}
	reports := &server.Reports{Store: store, Rollouts: rolloutLookupFunc(func(context.Context, string) (*rollout.Rollout, error) { return ro, nil })}
	rep, err := reports.RolloutReport(t.Context(), ro.ID, reportNow)
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.StatesPerHour) != server.ReportHours {
		t.Fatalf("%d hours, want %d", len(rep.StatesPerHour), server.ReportHours)
	}
	at := func(ago int) server.HourStates { return rep.StatesPerHour[server.ReportHours-1-ago] }
	for _, tc := range []struct {
		ago  int
		want server.HourStates
	}{
		{0, server.HourStates{Hour: h(0), Pending: 8, Downloading: 1, Installed: 9, Failed: 2}},
		{1, server.HourStates{Hour: h(1), Pending: 8, Downloading: 4, Installed: 8}},
		{2, server.HourStates{Hour: h(2), Pending: 8, Downloading: 4, Installed: 8}},
		{3, server.HourStates{Hour: h(3), Pending: 20}},
		{4, server.HourStates{Hour: h(4)}},
		{server.ReportHours - 1, server.HourStates{Hour: h(server.ReportHours - 1)}},
	} {
		if got := at(tc.ago); got != tc.want {
			t.Errorf("%d hours ago: %+v, want %+v", tc.ago, got, tc.want)
		}
	}
}
