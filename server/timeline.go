package server

import (
	"cmp"
	"slices"
	"time"

	"github.com/patchfleet/ota/server/handsets"
	"github.com/patchfleet/ota/server/rollout"
)

// A rollout's timeline is its history on the scale of its lifetime, so
// that an 82-second rollout is not one bar of a 48-hour chart: the
// bucket width is chosen from how long the rollout has run (from its
// start to its end, or to now), TimelineBuckets buckets at most.
//
// Buckets of an hour or more come from the hourly rollups
// (rollout_hourly, rollout_state_hourly), as installs_per_hour does:
// results per bucket, and where the records stood at the end of each
// bucket (TimelineStates). Finer buckets come from the rollout's records
// (device_rollouts: offered_at, result_at, state), read only while the
// rollout's lifetime is under TimelineRecordsAge and it has at most
// TimelineMaxRecords records, so that the read stays bounded: the
// records keep only the time of the first offer and of the latest
// result, not when a handset began downloading, so states at the end of
// a fine bucket cannot be derived. Those buckets say instead how many
// records had been offered by the bucket's end, and how many of those
// whose latest result is installed, failed or rolled back had reported
// it by then (TimelineCumulative). Nothing is written on the check-in or
// report path for this.

// Timeline kinds: what a TimelineBucket's counts at its end mean.
const (
	// TimelineStates: Pending, Downloading, Installed, Failed and
	// RolledBack are the records in each state at the bucket's end.
	TimelineStates = "states"
	// TimelineCumulative: Offered counts the records first offered by
	// the bucket's end; Installed, Failed and RolledBack the records
	// whose latest result is that one and arrived by the bucket's end.
	TimelineCumulative = "cumulative"
)

// Timeline limits.
const (
	// TimelineBuckets is the most buckets a timeline has; a rollout
	// older than TimelineBuckets days shows its last TimelineBuckets
	// days.
	TimelineBuckets = 60
	// TimelineRecordsAge is the lifetime under which a rollout's
	// timeline may read its records for buckets under an hour.
	TimelineRecordsAge = 6 * time.Hour
	// TimelineMaxRecords is the most records a timeline reads; a rollout
	// with more gets hour buckets from the rollups at any age. Reading a
	// record costs 3 to 5 µs (BenchmarkRolloutTimeline1M), so the read
	// adds at most about 50 ms to a report: the rollout page stays under
	// 200 ms at a million handsets.
	TimelineMaxRecords = 10_000
)

// timelineWidths are the bucket widths a timeline chooses from, each a
// divisor of a day, so that buckets align on UTC days.
var timelineWidths = []time.Duration{
	time.Second, 2 * time.Second, 5 * time.Second, 10 * time.Second, 15 * time.Second, 30 * time.Second,
	time.Minute, 2 * time.Minute, 5 * time.Minute, 10 * time.Minute, 15 * time.Minute, 30 * time.Minute,
	time.Hour, 2 * time.Hour, 3 * time.Hour, 6 * time.Hour, 12 * time.Hour, 24 * time.Hour,
}

// Timeline is a rollout's history in buckets of BucketSeconds, oldest
// first, from the bucket of its start to the bucket of its end (or of
// now). Kind says what the counts at each bucket's end mean.
type Timeline struct {
	BucketSeconds int64            `json:"bucket_seconds"`
	Kind          string           `json:"kind"`
	Buckets       []TimelineBucket `json:"buckets"`
}

// Bucket is the timeline's bucket width.
func (t Timeline) Bucket() time.Duration { return time.Duration(t.BucketSeconds) * time.Second }

// TimelineBucket is one bucket of a Timeline: the results that arrived
// in it (Installs, and Failures with rollbacks) and counts at its end.
// Pending and Downloading are nil in TimelineCumulative buckets.
type TimelineBucket struct {
	Start       time.Time `json:"start"`
	Installs    int64     `json:"installs"`
	Failures    int64     `json:"failures"`
	Offered     int64     `json:"offered"`
	Pending     *int64    `json:"pending,omitempty"`
	Downloading *int64    `json:"downloading,omitempty"`
	Installed   int64     `json:"installed"`
	Failed      int64     `json:"failed"`
	RolledBack  int64     `json:"rolled_back"`
}

// RecordTimeCount counts a rollout's records by a time truncated to the
// read's unit: with State DeviceOffered, the records first offered then
// (any state now); with a result state (installed, failed, rolled back),
// the records in that state whose latest result arrived then.
type RecordTimeCount struct {
	At    time.Time
	State string
	N     int64
}

// TimelineScale is the bucket width and the first bucket of a rollout
// that ran from start to end: the narrowest width of timelineWidths that
// covers [start, end) in TimelineBuckets buckets aligned on it (one
// day past that, the last TimelineBuckets days), at least an hour unless
// fine (the records may be read). It also returns the number of
// buckets.
func TimelineScale(start, end time.Time, fine bool) (width time.Duration, first time.Time, n int) {
	start, end = start.UTC(), end.UTC()
	if end.Before(start) {
		end = start
	}
	for _, w := range timelineWidths {
		if !fine && w < time.Hour {
			continue
		}
		first = start.Truncate(w)
		n = max(int((end.Sub(first)+w-1)/w), 1)
		if n <= TimelineBuckets {
			return w, first, n
		}
	}
	w := timelineWidths[len(timelineWidths)-1]
	first = end.Truncate(w).Add(-(TimelineBuckets - 1) * w)
	return w, first, TimelineBuckets
}

// timelineSpan is the lifetime of ro for its timeline: from its start to
// its end, or to now while it has not ended. ok is false for a rollout
// that never started.
func timelineSpan(ro *rollout.Rollout, now time.Time) (start, end time.Time, ok bool) {
	if ro.StartedAt.IsZero() {
		return time.Time{}, time.Time{}, false
	}
	end = now
	if !ro.EndedAt.IsZero() && ro.EndedAt.Before(now) {
		end = ro.EndedAt
	}
	return ro.StartedAt, end, true
}

// timelineFine reports whether ro's timeline may read its records: its
// lifetime is under TimelineRecordsAge and it has at most
// TimelineMaxRecords records.
func timelineFine(start, end time.Time, records int64) bool {
	return end.Sub(start) < TimelineRecordsAge && records <= TimelineMaxRecords
}

// hourTimeline is a TimelineStates timeline of n buckets of width (an
// hour or more) from first: the hourly results summed per bucket, and
// the current record counts walked back through each hour's net changes
// to each bucket's end, as stateSeries does.
func hourTimeline(width time.Duration, first time.Time, n int, hourly []HourResults, records []RolloutCount, deltas []StateHourDelta) Timeline {
	tl := Timeline{BucketSeconds: int64(width / time.Second), Kind: TimelineStates, Buckets: make([]TimelineBucket, n)}
	for i := range tl.Buckets {
		tl.Buckets[i].Start = first.Add(time.Duration(i) * width)
	}
	for _, h := range hourly {
		if h.Hour.Before(first) {
			continue
		}
		i := int(h.Hour.Sub(first) / width)
		if i >= n {
			continue
		}
		tl.Buckets[i].Installs += h.Installed
		tl.Buckets[i].Failures += h.Failed
	}
	byState := map[string]int64{}
	for _, rc := range records {
		byState[rc.State] += rc.N
	}
	sorted := slices.Clone(deltas)
	slices.SortFunc(sorted, func(a, b StateHourDelta) int { return b.Hour.Compare(a.Hour) }) // latest first
	k := 0
	for i := n - 1; i >= 0; i-- {
		end := tl.Buckets[i].Start.Add(width)
		// The states at end are the current ones less every change made
		// in an hour that starts at or after it.
		for ; k < len(sorted) && !sorted[k].Hour.UTC().Truncate(time.Hour).Before(end); k++ {
			byState[sorted[k].State] -= sorted[k].N
		}
		var c CohortCounts
		for state, v := range byState {
			c.count(state, max(v, 0))
		}
		b := &tl.Buckets[i]
		pending, downloading := c.Pending, c.Downloading
		b.Offered, b.Pending, b.Downloading, b.Installed, b.Failed, b.RolledBack =
			c.Offered, &pending, &downloading, c.Installed, c.Failed, c.RolledBack
	}
	return tl
}

// recordTimeline is a TimelineCumulative timeline of n buckets of width
// from first, from the rollout's record counts by time. Times before the
// first bucket count in it, times past the last (a clock ahead) in the
// last, so that the last bucket's counts are every record's.
func recordTimeline(width time.Duration, first time.Time, n int, rows []RecordTimeCount) Timeline {
	tl := Timeline{BucketSeconds: int64(width / time.Second), Kind: TimelineCumulative, Buckets: make([]TimelineBucket, n)}
	type counts struct{ offered, installed, failed, rolledBack int64 }
	in := make([]counts, n)
	for _, r := range rows {
		i := 0
		if r.At.After(first) {
			i = min(int(r.At.UTC().Sub(first)/width), n-1)
		}
		switch r.State {
		case handsets.DeviceOffered:
			in[i].offered += r.N
		case handsets.StateInstalled:
			in[i].installed += r.N
		case handsets.StateFailed:
			in[i].failed += r.N
		case handsets.StateRolledBack:
			in[i].rolledBack += r.N
		}
	}
	var sum counts
	for i := range tl.Buckets {
		sum.offered += in[i].offered
		sum.installed += in[i].installed
		sum.failed += in[i].failed
		sum.rolledBack += in[i].rolledBack
		tl.Buckets[i] = TimelineBucket{Start: first.Add(time.Duration(i) * width),
			Installs: in[i].installed, Failures: in[i].failed + in[i].rolledBack,
			Offered: sum.offered, Installed: sum.installed, Failed: sum.failed, RolledBack: sum.rolledBack}
	}
	return tl
}

// emptyTimeline is the timeline of a rollout that never started.
func emptyTimeline() Timeline {
	return Timeline{BucketSeconds: int64(time.Hour / time.Second), Kind: TimelineStates, Buckets: []TimelineBucket{}}
}

// recordUnit is the unit the records are read at for a bucket width:
// seconds under a minute, else minutes (widths are whole multiples).
func recordUnit(width time.Duration) time.Duration {
	return cmp.Or(min(width.Truncate(time.Minute), time.Minute), time.Second)
}

// offered counts the records among record counts.
func offered(records []RolloutCount) int64 {
	var n int64
	for _, rc := range records {
		n += max(rc.N, 0)
	}
	return n
}

// rolloutTimeline is ro's timeline at now from its rollups: from the
// record times when they were read and the rollout is young and small
// enough (timelineFine), else in hour buckets.
func rolloutTimeline(ro *rollout.Rollout, rr *RolloutRollups, now time.Time) Timeline {
	start, end, ok := timelineSpan(ro, now)
	if !ok {
		return emptyTimeline()
	}
	if rr.RecordTimes != nil && timelineFine(start, end, offered(rr.Records)) {
		if w, first, n := TimelineScale(start, end, true); w < time.Hour {
			return recordTimeline(w, first, n, rr.RecordTimes)
		}
	}
	w, first, n := TimelineScale(start, end, false)
	return hourTimeline(w, first, n, rr.Hourly, rr.Records, rr.StateHours)
}
