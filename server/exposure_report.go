package server

import (
	"cmp"
	"context"
	"fmt"
	"math"
	"slices"
	"strings"
	"time"

	"github.com/patchfleet/ota/server/errs"
	"github.com/patchfleet/ota/server/handsets"
)

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
	if messaging == handsets.MessagingAutoEnabled {
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
		opts.Top = handsets.DefaultSummaryModels
	}
	switch {
	case opts.Days < 1 || opts.Days > MaxExposureDays:
		return nil, errs.Fieldf("days", "want 1 to %d", MaxExposureDays)
	case opts.Top < 1 || opts.Top > handsets.MaxSummaryModels:
		return nil, errs.Fieldf("top", "want 1 to %d", handsets.MaxSummaryModels)
	}
	if opts.Day != "" {
		if _, err := time.Parse(time.DateOnly, opts.Day); err != nil {
			return nil, errs.Fieldf("day", "want a UTC day such as 2026-12-01")
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
	at := entry[ExposureCounts]
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
	for _, r := range rankExposure(models, opts.Top, handsets.OtherModels) {
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
		if r.CloudMessaging == handsets.MessagingAutoEnabled {
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
