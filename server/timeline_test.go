package server_test

import (
	"context"
	"testing"
	"time"

	"github.com/patchfleet/ota/server"
	"github.com/patchfleet/ota/server/handsets"
	"github.com/patchfleet/ota/server/rollout"
)

// TestRolloutTimelineBounds: the report reads a rollout's records for
// its timeline only while the rollout is young and small, at the unit
// its buckets need; otherwise, and for the hours the timeline covers, it
// reads the rollups. An ended rollout is scaled to its lifetime, not to
// now.
func TestRolloutTimelineBounds(t *testing.T) {
	start := time.Date(2026, 12, 7, 5, 48, 1, 0, time.UTC)
	for _, tc := range []struct {
		name      string
		records   int64
		now       time.Time
		ended     time.Time
		wantUnit  time.Duration // 0: the records are not read
		wantKind  string
		wantWidth time.Duration
		wantSince time.Time // the first hour the rollups are read from
	}{
		{"82 seconds old", 30, start.Add(82 * time.Second), time.Time{}, time.Second, server.TimelineCumulative, 2 * time.Second,
			start.Truncate(time.Hour).Add(-47 * time.Hour)},
		{"5 hours old", server.TimelineMaxRecords, start.Add(5 * time.Hour), time.Time{}, time.Minute, server.TimelineCumulative, 10 * time.Minute,
			start.Add(5 * time.Hour).Truncate(time.Hour).Add(-47 * time.Hour)},
		{"young but too many records", server.TimelineMaxRecords + 1, start.Add(82 * time.Second), time.Time{}, 0, server.TimelineStates, time.Hour,
			start.Truncate(time.Hour).Add(-47 * time.Hour)},
		{"7 hours old", 30, start.Add(7 * time.Hour), time.Time{}, 0, server.TimelineStates, time.Hour,
			start.Add(7 * time.Hour).Truncate(time.Hour).Add(-47 * time.Hour)},
		{"5 days old", 30, start.Add(5 * 24 * time.Hour), time.Time{}, 0, server.TimelineStates, 3 * time.Hour,
			start.Truncate(3 * time.Hour)},
		{"ended after 82 seconds, read a day later", 30, start.Add(24 * time.Hour), start.Add(82 * time.Second), time.Second,
			server.TimelineCumulative, 2 * time.Second, start.Add(24 * time.Hour).Truncate(time.Hour).Add(-47 * time.Hour)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ro := reportRollout()
			ro.StartedAt, ro.EndedAt = start, tc.ended
			var gotUnit time.Duration
			var gotSince time.Time
			store := &fakeReportStore{
				RolloutRollupsFn: func(_ context.Context, _ string, since time.Time, _ server.FleetFilter) (*server.RolloutRollups, error) {
					gotSince = since
					return &server.RolloutRollups{Records: []server.RolloutCount{{Model: "PX-7", State: handsets.DeviceOffered, N: tc.records}}}, nil
				},
				RecordTimesFn: func(_ context.Context, _ string, unit time.Duration) ([]server.RecordTimeCount, error) {
					gotUnit = unit
					return []server.RecordTimeCount{{At: start, State: handsets.DeviceOffered, N: tc.records}}, nil
				},
			}
			r := &server.Reports{Store: store, Rollouts: rolloutLookupFunc(func(context.Context, string) (*rollout.Rollout, error) { return ro, nil })}
			rep, err := r.RolloutReport(t.Context(), ro.ID, tc.now)
			if err != nil {
				t.Fatal(err)
			}
			tl := rep.Timeline
			if gotUnit != tc.wantUnit || tl.Kind != tc.wantKind || tl.Bucket() != tc.wantWidth || !gotSince.Equal(tc.wantSince) {
				t.Errorf("records read at %v, timeline %s of %v, rollups since %v; want %v, %s of %v, since %v",
					gotUnit, tl.Kind, tl.Bucket(), gotSince, tc.wantUnit, tc.wantKind, tc.wantWidth, tc.wantSince)
			}
			if n := len(tl.Buckets); n == 0 || n > server.TimelineBuckets || tl.Buckets[n-1].Offered != tc.records {
				t.Errorf("%d buckets, the last %+v; want 1 to %d ending at %d offered", n, tl.Buckets[n-1], server.TimelineBuckets, tc.records)
			}
		})
	}
}
