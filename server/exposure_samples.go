package server

import (
	"context"
	"fmt"
	"time"
)

// The exposure report's daily series is one point a day: on the first
// day of a fleet, when a projection is most wanted, it is one dot.
// Exposure samples fill the first days in: every ExposureSampleEvery the
// App takes the day's exposure so far (the handsets seen since
// midnight UTC, by their latest state, as the daily series counts them)
// and stores it keyed by the bucket's start. Every replica samples; the
// key makes the second writer of a bucket a no-op, so no lease is
// needed. Samples are read from the rollups (a few rows), never from the
// fleet, and nothing is written on the check-in path. They are deleted
// after ExposureSampleRetention.

// Exposure sample limits.
const (
	// ExposureSampleEvery is the width of a sample's bucket: a minute,
	// so that a fleet's first minutes (a demo's rollout takes 82 s) are a
	// line; 48 hours are 2,880 rows of four numbers to read.
	ExposureSampleEvery = time.Minute
	// ExposureSampleHours is how many hours of samples the exposure
	// report returns.
	ExposureSampleHours = 48
	// ExposureSampleRetention is how long samples are kept.
	ExposureSampleRetention = 7 * 24 * time.Hour
)

// ExposureSample is the exposure of the handsets seen on At's UTC day
// up to the sample (taken within ExposureSampleEvery after At, the
// start of its bucket).
type ExposureSample struct {
	At        time.Time `json:"at"`
	Active    int64     `json:"active"`
	Exposed   int64     `json:"exposed"`
	Compliant int64     `json:"compliant"`
}

// ShareExposed is Exposed / Active, 0 without active handsets.
func (s ExposureSample) ShareExposed() float64 {
	if s.Active <= 0 {
		return 0
	}
	return roundShare(float64(s.Exposed) / float64(s.Active))
}

// ExposureSampleStore keeps the samples.
type ExposureSampleStore interface {
	// AddExposureSample stores s unless a sample of s.At is stored
	// already (another replica took it); it reports whether it stored.
	AddExposureSample(ctx context.Context, s ExposureSample) (bool, error)
	// DeleteExposureSamplesBefore deletes the samples of buckets before t.
	DeleteExposureSamplesBefore(ctx context.Context, t time.Time) (int64, error)
}

// ExposureSampler takes the exposure samples of one replica.
type ExposureSampler struct {
	Reports ReportStore
	Samples ExposureSampleStore
	// last is the bucket this sampler last stored or found stored.
	last time.Time
}

// Sample takes the sample of now's bucket unless this sampler has
// already, and deletes the samples past retention when it stores one.
// It reports whether it stored the sample (false: taken before, by this
// replica or another).
func (s *ExposureSampler) Sample(ctx context.Context, now time.Time) (bool, error) {
	at := now.UTC().Truncate(ExposureSampleEvery)
	if at.Equal(s.last) {
		return false, nil
	}
	day := at.Format(time.DateOnly)
	er, err := s.Reports.ExposureRollups(ctx, day, 1)
	if err != nil {
		return false, fmt.Errorf("exposure sample: %w", err)
	}
	d := daySeries(er.Daily, day, 1)[0]
	stored, err := s.Samples.AddExposureSample(ctx, ExposureSample{At: at, Active: d.Active, Exposed: d.Exposed, Compliant: d.Active - d.Exposed})
	if err != nil {
		return false, fmt.Errorf("exposure sample: %w", err)
	}
	s.last = at
	if stored {
		if _, err := s.Samples.DeleteExposureSamplesBefore(ctx, at.Add(-ExposureSampleRetention)); err != nil {
			return true, fmt.Errorf("exposure samples past retention: %w", err)
		}
	}
	return stored, nil
}

// exposureSampleSpan is the span of the samples an exposure report of
// day returns at now: the ExposureSampleHours hours up to the end of day
// or now, whichever is earlier.
func exposureSampleSpan(day string, now time.Time) (until, since time.Time) {
	until = now.UTC()
	if d, err := time.Parse(time.DateOnly, day); err == nil && d.AddDate(0, 0, 1).Before(until) {
		until = d.AddDate(0, 0, 1)
	}
	return until, until.Add(-ExposureSampleHours * time.Hour)
}

// withLiveSample is rep's samples with, when rep counts today (at now)
// and has active handsets, its own counts as a last sample at now: the
// stored sample of a bucket is its first pass's, which at a fleet's
// first minutes (a demo) may predate every check-in.
func withLiveSample(rep *ExposureReport, now time.Time) []ExposureSample {
	out := rep.Samples
	if out == nil {
		out = []ExposureSample{}
	}
	now = now.UTC()
	if rep.Day != now.Format(time.DateOnly) || rep.Active <= 0 || (len(out) > 0 && !out[len(out)-1].At.Before(now)) {
		return out
	}
	return append(out, ExposureSample{At: now, Active: rep.Active, Exposed: rep.Exposed, Compliant: rep.Compliant})
}
