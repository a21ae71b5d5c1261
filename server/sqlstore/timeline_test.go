package sqlstore

import (
	"fmt"
	"testing"
	"time"

	"github.com/patchfleet/ota/server"
	"github.com/patchfleet/ota/server/handsets"
)

func TestTimelineStore(t *testing.T) {
	runStoreSuite(t, []storeCase{
		{"RolloutTimeline", testRolloutTimeline},
		{"ExposureSamples", testExposureSamples},
	})
}

// testRolloutTimeline offers a rollout to 30 handsets over 87 seconds,
// with results, and reads its report on a fixed clock: 100 seconds in,
// the timeline is read from the records in buckets of 2 seconds, each
// bucket's counts those of the records by then; 7 hours in, it is read
// from the hourly rollups. Both end at the records' totals.
func testRolloutTimeline(t *testing.T, b backend) {
	db, s, rs := mustRollouts(t, b)
	ctx := t.Context()
	r := startedRollout(t, rs, "ro-t")
	type event struct {
		at    time.Time
		state string
	}
	var events []event // offers and results, as the records keep them
	for i := range 30 {
		d := newDevice(fmt.Sprintf("dev_%02d", i), "px-7")
		mustEnroll(t, s, d, "hash-"+d.ID)
		offered := t0.Add(time.Duration(3*i) * time.Second)
		offerTo(t, rs, r, d, offered)
		events = append(events, event{offered, handsets.DeviceOffered})
		report := func(state string, after time.Duration) {
			at := offered.Add(after)
			if _, err := s.AddReport(ctx, handsets.Report{ID: fmt.Sprintf("r-%d-%s", i, state), DeviceID: d.ID, PatchID: "CM-2026-001",
				State: state, ErrorCode: map[bool]string{true: "E_NO_SPACE"}[state == handsets.StateFailed], At: at, ReceivedAt: at}); err != nil {
				t.Fatalf("report %s of %s: %v", state, d.ID, err)
			}
		}
		switch {
		case i < 20:
			report(handsets.StateDownloading, time.Second)
			report(handsets.StateInstalled, 5*time.Second)
			events = append(events, event{offered.Add(5 * time.Second), handsets.StateInstalled})
		case i < 25:
			report(handsets.StateFailed, 4*time.Second)
			events = append(events, event{offered.Add(4 * time.Second), handsets.StateFailed})
		case i < 27:
			report(handsets.StateInstalling, time.Second)
			report(handsets.StateRolledBack, 6*time.Second)
			events = append(events, event{offered.Add(6 * time.Second), handsets.StateRolledBack})
		case i == 27:
			report(handsets.StateDownloading, time.Second)
		}
	}
	reports := &server.Reports{Store: db.Reports(), Rollouts: rs}

	now := t0.Add(100 * time.Second)
	rep, err := reports.RolloutReport(ctx, r.ID, now)
	if err != nil {
		t.Fatal(err)
	}
	tl := rep.Timeline
	first := t0.Truncate(2 * time.Second)
	if tl.Kind != server.TimelineCumulative || tl.BucketSeconds != 2 || len(tl.Buckets) != 51 || !tl.Buckets[0].Start.Equal(first) {
		t.Fatalf("timeline %s of %d s, %d buckets from %v; want cumulative, 2 s, 51 from %v", tl.Kind, tl.BucketSeconds, len(tl.Buckets),
			tl.Buckets[0].Start, first)
	}
	// Each bucket against the records: results in it, and the counts by
	// its end.
	for k, bk := range tl.Buckets {
		end := bk.Start.Add(2 * time.Second)
		var want server.TimelineBucket
		for _, e := range events {
			in, by := !e.at.Before(bk.Start) && e.at.Before(end), e.at.Before(end)
			switch e.state {
			case handsets.DeviceOffered:
				want.Offered += b2i(by)
			case handsets.StateInstalled:
				want.Installs, want.Installed = want.Installs+b2i(in), want.Installed+b2i(by)
			case handsets.StateFailed:
				want.Failures, want.Failed = want.Failures+b2i(in), want.Failed+b2i(by)
			case handsets.StateRolledBack:
				want.Failures, want.RolledBack = want.Failures+b2i(in), want.RolledBack+b2i(by)
			}
		}
		if bk.Installs != want.Installs || bk.Failures != want.Failures || bk.Offered != want.Offered || bk.Installed != want.Installed ||
			bk.Failed != want.Failed || bk.RolledBack != want.RolledBack || bk.Pending != nil || bk.Downloading != nil {
			t.Errorf("bucket %d (%v): %+v, want %+v", k, bk.Start, bk, want)
		}
	}
	last := tl.Buckets[len(tl.Buckets)-1]
	if last.Offered != 30 || last.Offered != rep.Offered || last.Installed != rep.Installed || last.Failed != rep.Failed ||
		last.RolledBack != rep.RolledBack || rep.Installed != 20 || rep.Failed != 5 || rep.RolledBack != 2 {
		t.Errorf("last bucket %+v; report offered %d installed %d failed %d rolled back %d; want 30, 20, 5, 2 in both",
			last, rep.Offered, rep.Installed, rep.Failed, rep.RolledBack)
	}

	// Seven hours in, past server.TimelineRecordsAge: hour buckets from
	// the rollups, states at each bucket's end, the same totals.
	rep, err = reports.RolloutReport(ctx, r.ID, t0.Add(7*time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	tl = rep.Timeline
	if tl.Kind != server.TimelineStates || tl.BucketSeconds != 3600 || len(tl.Buckets) != 8 {
		t.Fatalf("timeline %s of %d s, %d buckets; want states, 3600 s, 8", tl.Kind, tl.BucketSeconds, len(tl.Buckets))
	}
	var installs, failures int64
	for _, bk := range tl.Buckets {
		installs += bk.Installs
		failures += bk.Failures
		if bk.Pending == nil || bk.Downloading == nil || *bk.Pending != 2 || *bk.Downloading != 1 || bk.Installed != 20 ||
			bk.Failed != 5 || bk.RolledBack != 2 || bk.Offered != 30 {
			t.Errorf("bucket %v: %+v, want 2 pending, 1 downloading, 20 installed, 5 failed, 2 rolled back of 30", bk.Start, bk)
		}
	}
	if installs != 20 || failures != 7 {
		t.Errorf("results %d installed, %d failed, want 20 and 7 (rollbacks count as failed)", installs, failures)
	}
}

func b2i(b bool) int64 {
	if b {
		return 1
	}
	return 0
}

// testExposureSamples: two replicas sampling the same minute store
// one sample; samples past the retention are deleted; the exposure
// report returns the last 48 hours of them.
func testExposureSamples(t *testing.T, b backend) {
	db, s := mustReportStore(t, b)
	ctx := t.Context()
	mustExecSQL(t, db, `INSERT INTO fleet_daily_totals (day, cloud_messaging, number_encryption, shard, n) VALUES
	('2026-12-07', 'auto_enabled', false, 3, 30),
	('2026-12-07', 'opted_out', true, 4, 60),
	('2026-12-07', 'opted_in', true, 1, 10),
	('2026-12-06', 'auto_enabled', false, 0, 500)`)
	a, c := &server.ExposureSampler{Reports: s, Samples: s}, &server.ExposureSampler{Reports: db.Reports(), Samples: db.Reports()}
	now := time.Date(2026, 12, 7, 5, 48, 1, 0, time.UTC)
	bucket := time.Date(2026, 12, 7, 5, 48, 0, 0, time.UTC)
	sample := func(who *server.ExposureSampler, at time.Time, want bool) {
		t.Helper()
		stored, err := who.Sample(ctx, at)
		if err != nil || stored != want {
			t.Fatalf("sample at %v: %v, %v; want stored %v", at, stored, err, want)
		}
	}
	sample(a, now, true)
	sample(c, now.Add(20*time.Second), false) // the other replica, same bucket
	sample(a, now.Add(40*time.Second), false)
	got, err := s.ExposureSamples(ctx, bucket.Add(-time.Hour), now)
	if err != nil {
		t.Fatal(err)
	}
	want := server.ExposureSample{At: bucket, Active: 100, Exposed: 30, Compliant: 70}
	if len(got) != 1 || got[0] != want {
		t.Fatalf("samples %+v, want one: %+v (the day's handsets so far)", got, want)
	}
	sample(c, now.Add(5*time.Minute), true)
	// A day and a week later: the first two are past the retention.
	mustExecSQL(t, db, `INSERT INTO fleet_daily_totals (day, cloud_messaging, number_encryption, shard, n) VALUES
	('2026-12-14', 'opted_in', true, 0, 8)`, `INSERT INTO fleet_daily (day, model, region, cloud_messaging, number_encryption, n) VALUES
	('2026-12-14', 'PX-7', 'DE', 'opted_in', true, 8)`)
	later := now.Add(server.ExposureSampleRetention + 10*time.Minute)
	sample(a, later, true)
	got, err = s.ExposureSamples(ctx, bucket.Add(-time.Hour), later)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 1 || !got[0].At.Equal(later.Truncate(server.ExposureSampleEvery)) || got[0].Active != 8 || got[0].Compliant != 8 {
		t.Errorf("after a week: %+v, want only the new sample of 8 compliant", got)
	}
	rep, err := (&server.Reports{Store: s}).ExposureReport(ctx, server.ExposureOptions{}, later)
	if err != nil {
		t.Fatal(err)
	}
	// The stored sample, and the report's own counts at its time: the
	// day is today.
	live := server.ExposureSample{At: later, Active: 8, Compliant: 8}
	if len(rep.Samples) != 2 || rep.Samples[0] != got[0] || rep.Samples[1] != live {
		t.Errorf("exposure report samples %+v, want %+v and %+v", rep.Samples, got[0], live)
	}
}
