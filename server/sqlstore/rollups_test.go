package sqlstore

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/url"
	"reflect"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/patchfleet/ota/server"
	"github.com/patchfleet/ota/server/errs"
	"github.com/patchfleet/ota/server/handsets"
	"github.com/patchfleet/ota/server/rollout"
)

// TestRollups checks the write side of the rollups against the tables
// they count, on both dialects.
func TestRollups(t *testing.T) {
	runStoreSuite(t, []storeCase{
		{"FleetCountsUnderConcurrentCheckIns", testFleetCountsConcurrent},
		{"DailyRollups", testDailyRollups},
		{"RolloutCountsFollowRecords", testRolloutCountsFollowRecords},
		{"RecordOfferRaces", testRecordOfferRaces},
		{"ReportAttribution", testReportAttribution},
		{"CheckInReadsAtOnce", testCheckInReadsAtOnce},
		{"VerifyRollupsFindsADisagreement", testVerifyRollups},
		{"PayloadBytesAndFullOnly", testPayloadBytes},
	})
}

// testPayloadBytes: each first offer and retry adds its payload's bytes
// and the full image's to rollout_payloads, which the rollout report
// reads with the unfolded deltas before and after a fold; a failed report
// with E_INCREMENTAL_APPLY marks the record full_only, which the check-in
// read and the record read return, and another failure does not.
func testPayloadBytes(t *testing.T, b backend) {
	db, s, rs := mustRollouts(t, b)
	ctx := t.Context()
	r := startedRollout(t, rs, "ro-a")
	const full, inc = 1000, 120
	offer := func(d *handsets.Device, kind rollout.OfferKind, prev *handsets.DeviceRollout, p rollout.Payload, at time.Time) {
		t.Helper()
		dec := rollout.Decision{RolloutID: r.ID, Kind: kind, Release: r.Release, Payload: p}
		if ok, err := rs.RecordOffer(ctx, dec, prev, dec.Record(prev, d, at), 0, at); err != nil || !ok {
			t.Fatalf("offer to %s: %v, %v", d.ID, ok, err)
		}
	}
	fullP := rollout.Payload{Target: "u.zip", Bytes: full, FullBytes: full}
	incP := rollout.Payload{Target: "u.from-7.4.1.zip", FromBuild: "7.4.1", Bytes: inc, FullBytes: full}
	var devs []*handsets.Device
	for i := range 3 {
		d := newDevice(fmt.Sprintf("dev_%d", i), "px-7")
		mustEnroll(t, s, d, "hash-"+d.ID)
		devs = append(devs, d)
	}
	offer(devs[0], rollout.OfferFirst, nil, fullP, t0.Add(time.Minute))
	offer(devs[1], rollout.OfferFirst, nil, incP, t0.Add(time.Minute))
	offer(devs[2], rollout.OfferFirst, nil, incP, t0.Add(time.Minute))
	report := func(dev, id, code string, at time.Time) {
		t.Helper()
		if _, err := s.AddReport(ctx, handsets.Report{ID: id, DeviceID: dev, PatchID: "CM-2026-001", State: handsets.StateFailed,
			ErrorCode: code, At: at, ReceivedAt: at}); err != nil {
			t.Fatal(err)
		}
	}
	report("dev_1", "r1", handsets.CodeIncrementalApply, t0.Add(5*time.Minute))
	report("dev_2", "r2", "E_DISK_FULL", t0.Add(5*time.Minute))
	fullOnly := map[string]bool{}
	for _, d := range devs {
		recs, err := rs.DeviceRollouts(ctx, d.ID)
		if err != nil || len(recs) != 1 {
			t.Fatalf("records of %s: %v, %v", d.ID, recs, err)
		}
		fullOnly[d.ID] = recs[0].FullOnly
		_, got, err := s.CheckInState(ctx, "hash-"+d.ID)
		if err != nil || len(got) != 1 || got[0].FullOnly != recs[0].FullOnly {
			t.Fatalf("check-in read of %s: %+v, %v; want full_only %v as the record read", d.ID, got, err, recs[0].FullOnly)
		}
		if d.ID == "dev_1" {
			offer(d, rollout.OfferRetry, recs[0], fullP, t0.Add(2*time.Hour))
		}
	}
	if !reflect.DeepEqual(fullOnly, map[string]bool{"dev_0": false, "dev_1": true, "dev_2": false}) {
		t.Errorf("full_only: %v; want only dev_1, whose incremental did not apply", fullOnly)
	}

	read := func() server.PayloadBytes {
		t.Helper()
		rr, err := db.Reports().RolloutRollups(ctx, r.ID, t0, server.FleetFilter{})
		if err != nil {
			t.Fatal(err)
		}
		return server.NewRolloutReport(r, rr, t0.Add(3*time.Hour)).Bytes
	}
	want := server.PayloadBytes{Offered: full + 2*inc + full, Full: 4 * full, Saved: 2 * (full - inc), ByPayload: []server.PayloadCount{
		{FromBuild: "", Offers: 2, Bytes: 2 * full, FullBytes: 2 * full},
		{FromBuild: "7.4.1", Offers: 2, Bytes: 2 * inc, FullBytes: 2 * full}}}
	if got := read(); !reflect.DeepEqual(got, want) {
		t.Errorf("before a fold: %+v\nwant %+v", got, want)
	}
	if _, err := db.FoldRollups(ctx); err != nil {
		t.Fatal(err)
	}
	if got := read(); !reflect.DeepEqual(got, want) {
		t.Errorf("after a fold: %+v\nwant %+v", got, want)
	}
}

// groupCounts runs a GROUP BY query returning (key..., n) rows and
// returns them as "key|key|...": n, skipping zero counts.
func groupCounts(t testing.TB, db *DB, sql string) map[string]int64 {
	t.Helper()
	rows, err := db.sql.QueryContext(t.Context(), sql)
	if err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
	defer rows.Close()
	cols, _ := rows.Columns()
	out := map[string]int64{}
	for rows.Next() {
		vals := make([]any, len(cols))
		ptrs := make([]any, len(cols))
		for i := range vals {
			ptrs[i] = &vals[i]
		}
		if err := rows.Scan(ptrs...); err != nil {
			t.Fatal(err)
		}
		key := ""
		for _, v := range vals[:len(vals)-1] {
			switch b := v.(type) {
			case []byte:
				v = string(b)
			case bool: // PostgreSQL; SQLite gives 0 and 1
				v = map[bool]int{false: 0, true: 1}[b]
			}
			key += fmt.Sprint(v) + "|"
		}
		var n int64
		switch v := vals[len(vals)-1].(type) {
		case int64:
			n = v
		case int32:
			n = int64(v)
		case string: // PostgreSQL's SUM is numeric
			if _, err := fmt.Sscan(v, &n); err != nil {
				t.Fatalf("count %q: %v", v, err)
			}
		default:
			t.Fatalf("count column is %T", v)
		}
		if n != 0 {
			out[key] += n
		}
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

// checkFleetCounts checks fleet_counts with its unfolded deltas against
// a scan of devices, then folds and checks the folded table alone.
func checkFleetCounts(t testing.TB, db *DB) {
	t.Helper()
	const cols = "model, channel, region, build, installed_patches, cloud_messaging, number_encryption"
	want := groupCounts(t, db, `SELECT `+cols+`, COUNT(*) FROM devices GROUP BY `+cols)
	got := groupCounts(t, db, `SELECT `+cols+`, SUM(n) FROM `+tailed(fleetCountsTable, cols, "n")+` GROUP BY `+cols)
	if !reflect.DeepEqual(got, want) {
		t.Errorf("fleet_counts with its deltas disagree with devices:\n got %v\nwant %v", got, want)
	}
	mustFold(t, db)
	got = groupCounts(t, db, `SELECT `+cols+`, n FROM fleet_counts`)
	if !reflect.DeepEqual(got, want) {
		t.Errorf("fleet_counts after a fold disagree with devices:\n got %v\nwant %v", got, want)
	}
}

// mustFold folds the rollups and checks that the logs are empty after.
func mustFold(t testing.TB, db *DB) {
	t.Helper()
	if _, err := db.FoldRollups(t.Context()); err != nil {
		t.Fatal(err)
	}
	for _, ct := range counterTables {
		if n := countRows(t, db, ct.log(), "1 = 1"); n != 0 {
			t.Errorf("%s holds %d rows after a fold", ct.log(), n)
		}
	}
}

func checkRolloutCounts(t testing.TB, db *DB) {
	t.Helper()
	for _, folded := range []bool{false, true} {
		if folded {
			mustFold(t, db)
		}
		const cols = "rollout_id, model, starting_build, state"
		got := groupCounts(t, db, `SELECT `+cols+`, SUM(n) FROM `+tailed(rolloutCountsTable, cols, "n")+` GROUP BY `+cols)
		want := groupCounts(t, db, `SELECT `+cols+`, COUNT(*) FROM device_rollouts GROUP BY `+cols)
		if !reflect.DeepEqual(got, want) {
			t.Errorf("rollout_counts (folded: %v) disagree with device_rollouts:\n got %v\nwant %v", folded, got, want)
		}
		// The states over time add up to the states now: every move of
		// rollout_counts went into its hour too.
		hours := groupCounts(t, db, `SELECT rollout_id, state, SUM(n) FROM `+tailed(stateHourlyTable, "rollout_id", "state", "n")+` GROUP BY rollout_id, state`)
		now := groupCounts(t, db, `SELECT rollout_id, state, COUNT(*) FROM device_rollouts GROUP BY rollout_id, state`)
		if !reflect.DeepEqual(hours, now) {
			t.Errorf("rollout_state_hourly (folded: %v) does not add up to device_rollouts:\n got %v\nwant %v", folded, hours, now)
		}
	}
}

// testFleetCountsConcurrent runs check-ins that change the state of a
// few devices from many goroutines at once, as Fleet does (read, save
// over the revision read, read again on a conflict), with erasures
// among them: every device stays counted exactly once.
func testFleetCountsConcurrent(t *testing.T, b backend) {
	db, s := mustDevices(t, b)
	ctx := t.Context()
	const devices = 6
	for i := range devices {
		mustEnroll(t, s, newDevice(fmt.Sprintf("dev_%d", i), "m"), fmt.Sprintf("hash-%d", i))
	}
	checkFleetCounts(t, db)
	var wg sync.WaitGroup
	builds := []string{"7.1.0", "7.2.0", "7.3.0"}
	messaging := []string{handsets.MessagingAutoEnabled, handsets.MessagingOptedOut, handsets.MessagingOptedIn}
	for g := range 8 {
		wg.Go(func() {
			rng := rand.New(rand.NewPCG(uint64(g), 1))
			for range 40 {
				ci := handsets.CheckIn{Build: builds[rng.IntN(3)], Model: "m", Channel: "stable",
					CloudMessaging: messaging[rng.IntN(3)], NumberEncryption: rng.IntN(2) == 0}
				hash := fmt.Sprintf("hash-%d", rng.IntN(devices))
				if _, err := checkIn(ctx, s, hash, ci, t0.Add(time.Duration(rng.IntN(48))*time.Hour)); err != nil && !isTokenErr(err) {
					t.Errorf("check in: %v", err)
					return
				}
			}
		})
	}
	wg.Go(func() {
		for _, id := range []string{"dev_1", "dev_4"} {
			time.Sleep(5 * time.Millisecond)
			if err := s.DeleteDevice(ctx, id); err != nil {
				t.Errorf("erase %s: %v", id, err)
			}
		}
	})
	wg.Wait()
	checkFleetCounts(t, db)
}

func isTokenErr(err error) bool { return err != nil && err.Error() == errs.ErrDeviceToken.Error() }

// testDailyRollups follows one device over two days: it counts once a
// day by its latest state that day, and an erasure takes it out of the
// day it was last seen, leaving no row with its model.
func testDailyRollups(t *testing.T, b backend) {
	db, s := mustDevices(t, b)
	ctx := t.Context()
	day1 := time.Date(2026, 11, 30, 9, 0, 0, 0, time.UTC)
	d := newDevice("dev_a", "px-7")
	d.EnrolledAt, d.LastSeen = day1, day1
	mustEnroll(t, s, d, "hash-a")
	mustEnroll(t, s, newDevice("dev_b", "px-8"), "hash-b")
	ci := handsets.CheckIn{Build: "7.1.0", Model: "px-7", Channel: "stable", CloudMessaging: handsets.MessagingAutoEnabled}
	// Both read the rollups after a fold: the tailed reads are
	// checkFleetCounts' and the report tests'.
	daily := func() map[string]int64 {
		mustFold(t, db)
		return groupCounts(t, db, `SELECT day, model, cloud_messaging, number_encryption, n FROM fleet_daily`)
	}
	totals := func() map[string]int64 {
		mustFold(t, db)
		return groupCounts(t, db, `SELECT day, cloud_messaging, number_encryption, SUM(n) FROM fleet_daily_totals GROUP BY day, cloud_messaging, number_encryption`)
	}
	bDay := rollupDay(t0)
	// Patched later the same day: moves within the day.
	ci.CloudMessaging, ci.NumberEncryption = handsets.MessagingOptedOut, true
	if _, err := checkIn(ctx, s, "hash-a", ci, day1.Add(3*time.Hour)); err != nil {
		t.Fatal(err)
	}
	want := map[string]int64{"2026-11-30|px-7|opted_out|1|": 1, bDay + "|px-8|auto_enabled|0|": 1}
	if got := daily(); !reflect.DeepEqual(got, want) {
		t.Errorf("fleet_daily after a same-day change:\n got %v\nwant %v", got, want)
	}
	// Seen the next day: counted on both days.
	if _, err := checkIn(ctx, s, "hash-a", ci, day1.Add(24*time.Hour)); err != nil {
		t.Fatal(err)
	}
	want["2026-12-01|px-7|opted_out|1|"] = 1
	if got := daily(); !reflect.DeepEqual(got, want) {
		t.Errorf("fleet_daily after a check-in the next day:\n got %v\nwant %v", got, want)
	}
	wantTotals := map[string]int64{"2026-11-30|opted_out|1|": 1, "2026-12-01|opted_out|1|": 1, bDay + "|auto_enabled|0|": 1}
	if got := totals(); !reflect.DeepEqual(got, wantTotals) {
		t.Errorf("fleet_daily_totals:\n got %v\nwant %v", got, wantTotals)
	}
	if err := s.DeleteDevice(ctx, "dev_a"); err != nil {
		t.Fatal(err)
	}
	delete(want, "2026-12-01|px-7|opted_out|1|")
	if got := daily(); !reflect.DeepEqual(got, want) {
		t.Errorf("fleet_daily after the erasure:\n got %v\nwant %v", got, want)
	}
	var rows int64
	if err := db.gorm.Raw(`SELECT COUNT(*) FROM fleet_daily WHERE day = '2026-12-01'`).Scan(&rows).Error; err != nil {
		t.Fatal(err)
	}
	if rows != 0 {
		t.Errorf("the erased device's last day keeps %d rows, want none", rows)
	}
	checkFleetCounts(t, db)

	// Retention deletes whole days before the cut, and nothing after.
	n, err := s.DeleteDailyRollupsBefore(ctx, day1)
	if err != nil {
		t.Fatal(err)
	}
	if got := daily(); n != 2 || len(got) != 1 || got["2026-11-30|px-7|opted_out|1|"] != 1 {
		t.Errorf("after pruning before 2026-11-30: %d rows deleted, left %v; want only dev_b's day (a daily and a totals row) gone", n, got)
	}
}

// offerTo records a first offer of rollout r to device d at now.
func offerTo(t testing.TB, rs *RolloutStore, r *rollout.Rollout, d *handsets.Device, now time.Time) *handsets.DeviceRollout {
	t.Helper()
	dec := rollout.Decision{RolloutID: r.ID, Kind: rollout.OfferFirst, Release: r.Release}
	next := dec.Record(nil, d, now)
	ok, err := rs.RecordOffer(t.Context(), dec, nil, next, 0, now)
	if err != nil || !ok {
		t.Fatalf("record offer of %s to %s: %v, %v", r.ID, d.ID, ok, err)
	}
	return next
}

func startedRollout(t testing.TB, rs *RolloutStore, id string) *rollout.Rollout {
	t.Helper()
	r := mustCreateRollout(t, rs, id)
	ev, err := r.Start("alice", "go", t0)
	if err != nil {
		t.Fatal(err)
	}
	if err := rs.UpdateRollout(t.Context(), r, r.Version, []rollout.Event{ev}); err != nil {
		t.Fatal(err)
	}
	return r
}

// testRolloutCountsFollowRecords offers, reports, retries and erases,
// and checks rollout_counts and the result rollups after each step.
func testRolloutCountsFollowRecords(t *testing.T, b backend) {
	db, s, rs := mustRollouts(t, b)
	ctx := t.Context()
	r := startedRollout(t, rs, "ro-a")
	var devs []*handsets.Device
	for i := range 4 {
		d := newDevice(fmt.Sprintf("dev_%d", i), []string{"px-7", "px-8"}[i%2])
		mustEnroll(t, s, d, "hash-"+d.ID)
		devs = append(devs, d)
		offerTo(t, rs, r, d, t0.Add(time.Minute))
	}
	checkRolloutCounts(t, db)
	rep := func(dev, id, state, code string, at time.Time) {
		t.Helper()
		out, err := s.AddReport(ctx, handsets.Report{ID: id, DeviceID: dev, PatchID: "CM-2026-001", State: state,
			ErrorCode: code, At: at, ReceivedAt: at})
		if err != nil {
			t.Fatalf("report %s: %v", id, err)
		}
		if out.RolloutID != "ro-a" || out.RolloutState != state {
			t.Errorf("report %s %s moved %q to %q, want ro-a to %s", id, state, out.RolloutID, out.RolloutState, state)
		}
	}
	at := t0.Add(10 * time.Minute)
	rep("dev_0", "r1", handsets.StateDownloading, "", at)
	rep("dev_0", "r2", handsets.StateInstalled, "", at.Add(time.Minute))
	rep("dev_1", "r3", handsets.StateFailed, "E_DISK_FULL", at)
	rep("dev_2", "r4", handsets.StateFailed, "E_DISK_FULL", at.Add(time.Hour))
	checkRolloutCounts(t, db)

	hourly := groupCounts(t, db, `SELECT hour, installed + failed FROM rollout_hourly WHERE rollout_id = 'ro-a'`)
	var results int64
	for _, n := range hourly {
		results += n
	}
	if results != 3 || len(hourly) != 2 {
		t.Errorf("rollout_hourly: %v, want 3 results over 2 hours", hourly)
	}
	failures := groupCounts(t, db, `SELECT error_code, n FROM rollout_failures WHERE rollout_id = 'ro-a'`)
	if !reflect.DeepEqual(failures, map[string]int64{"E_DISK_FULL|": 2}) {
		t.Errorf("rollout_failures: %v, want E_DISK_FULL: 2", failures)
	}
	// Installed 10 minutes after the offer.
	times := groupCounts(t, db, `SELECT bucket, n FROM rollout_install_times WHERE rollout_id = 'ro-a'`)
	want := map[string]int64{fmt.Sprint(server.InstallTimeBucket(10*time.Minute)) + "|": 1}
	if !reflect.DeepEqual(times, want) {
		t.Errorf("rollout_install_times: %v, want %v", times, want)
	}

	// A retry of dev_1: failed back to offered.
	recs, err := rs.DeviceRollouts(ctx, "dev_1")
	if err != nil || len(recs) != 1 {
		t.Fatalf("records of dev_1: %v, %v", recs, err)
	}
	dec := rollout.Decision{RolloutID: "ro-a", Kind: rollout.OfferRetry}
	if ok, err := rs.RecordOffer(ctx, dec, recs[0], dec.Record(recs[0], devs[1], at.Add(2*time.Hour)), 0, at.Add(2*time.Hour)); err != nil || !ok {
		t.Fatalf("retry: %v, %v", ok, err)
	}
	checkRolloutCounts(t, db)
	if err := s.DeleteDevice(ctx, "dev_1"); err != nil {
		t.Fatal(err)
	}
	checkRolloutCounts(t, db)
}

// testRecordOfferRaces records the first offer of one rollout to one
// device from many goroutines at once, with a cap: one record, counted
// once, one offer taken from the budget (the offers the raced check-ins
// claimed are given back to the replica's allowance). The cap is above
// the number of goroutines: each claims before it writes, so with a
// lower cap some would find it taken by claims not yet given back.
func testRecordOfferRaces(t *testing.T, b backend) {
	db, s, rs := mustRollouts(t, b)
	ctx := t.Context()
	r := startedRollout(t, rs, "ro-a")
	d := newDevice("dev_a", "px-7")
	mustEnroll(t, s, d, "hash-a")
	now := t0.Add(time.Minute)
	dec := rollout.Decision{RolloutID: r.ID, Kind: rollout.OfferFirst, Release: r.Release}
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			if ok, err := rs.RecordOffer(ctx, dec, nil, dec.Record(nil, d, now), 10, now); err != nil || !ok {
				t.Errorf("record offer: %v, %v", ok, err)
			}
		})
	}
	wg.Wait()
	checkRolloutCounts(t, db)
	var claimed int64
	if err := db.gorm.Raw(`SELECT n FROM rollout_offer_budget WHERE rollout_id = 'ro-a'`).Scan(&claimed).Error; err != nil {
		t.Fatal(err)
	}
	if left := allowanceLeft(db, "ro-a"); claimed-int64(left) != 1 {
		t.Errorf("budget claimed %d times, %d of them given back, for one offer: want 1 taken", claimed, left)
	}
	// A full budget records nothing.
	d2 := newDevice("dev_b", "px-7")
	mustEnroll(t, s, d2, "hash-b")
	ok, err := rs.RecordOffer(ctx, dec, nil, dec.Record(nil, d2, now), 1, now)
	if err != nil || ok {
		t.Fatalf("offer over a full budget: %v, %v, want false", ok, err)
	}
	if recs, _ := rs.DeviceRollouts(ctx, "dev_b"); len(recs) != 0 {
		t.Errorf("an offer refused by the budget left a record: %+v", recs)
	}
	checkRolloutCounts(t, db)
}

// testReportAttribution: a report naming its rollout moves that
// record; one without moves the latest offer of its patch; one of a
// patch no rollout offered moves none.
func testReportAttribution(t *testing.T, b backend) {
	_, s, rs := mustRollouts(t, b)
	ctx := t.Context()
	a := startedRollout(t, rs, "ro-a")
	bb := startedRollout(t, rs, "ro-b")
	d := newDevice("dev_a", "px-7")
	mustEnroll(t, s, d, "hash-a")
	offerTo(t, rs, a, d, t0.Add(time.Minute))
	offerTo(t, rs, bb, d, t0.Add(2*time.Minute))
	add := func(id, rollout string) handsets.ReportOutcome {
		t.Helper()
		out, err := s.AddReport(context.Background(), handsets.Report{ID: id, DeviceID: "dev_a", PatchID: "CM-2026-001",
			RolloutID: rollout, State: handsets.StateDownloading, At: t0.Add(3 * time.Minute), ReceivedAt: t0.Add(3 * time.Minute)})
		if err != nil {
			t.Fatal(err)
		}
		return out
	}
	if out := add("r1", "ro-a"); out.RolloutID != "ro-a" {
		t.Errorf("report naming ro-a moved %q", out.RolloutID)
	}
	if out := add("r2", ""); out.RolloutID != "ro-b" {
		t.Errorf("report naming no rollout moved %q, want ro-b (the latest offer)", out.RolloutID)
	}
	if out := add("r3", "ro-unknown"); out.RolloutID != "" {
		// ro-b is already downloading: a second downloading report moves nothing.
		t.Errorf("repeated downloading report moved %q, want nothing", out.RolloutID)
	}
	_, err := s.AddReport(ctx, handsets.Report{ID: "r4", DeviceID: "dev_a", PatchID: "OTHER-1", State: handsets.StateInstalled,
		At: t0.Add(4 * time.Minute), ReceivedAt: t0.Add(4 * time.Minute)})
	if err != nil {
		t.Fatal(err)
	}
	recs, _ := rs.DeviceRollouts(ctx, "dev_a")
	for _, r := range recs {
		if r.State != handsets.StateDownloading {
			t.Errorf("record of %s: state %s, want downloading", r.RolloutID, r.State)
		}
	}
}

// testCheckInReadsAtOnce reads the check-in state of many handsets at
// once, as a busy replica does: each read gets its own device and its own
// rollout records, an unknown token among them is refused, and on
// PostgreSQL the reads share statements (counted through a proxy).
func testCheckInReadsAtOnce(t *testing.T, b backend) {
	dsn := b.newDSN(t)
	var proxy *pgProxy
	if b.name == "postgres" {
		u, err := url.Parse(dsn)
		if err != nil {
			t.Fatal(err)
		}
		proxy = startPGProxy(t, u.Host)
		u.Host = proxy.addr
		dsn = u.String()
	}
	db := mustOpen(t, dsn)
	if _, err := db.Migrate(t.Context()); err != nil {
		t.Fatalf("migrate: %v", err)
	}
	s, rs := db.Devices(), db.Rollouts()
	ra, rb := startedRollout(t, rs, "ro-a"), startedRollout(t, rs, "ro-b")

	const devices = 48
	for i := range devices {
		d := newDevice(fmt.Sprintf("dev_%02d", i), fmt.Sprintf("m-%02d", i))
		mustEnroll(t, s, d, fmt.Sprintf("hash-%02d", i))
		// Devices have none, one or two rollout records, so that a read
		// given another device's rows would show.
		if i%3 >= 1 {
			offerTo(t, rs, ra, d, t0.Add(time.Duration(i)*time.Second))
		}
		if i%3 == 2 {
			offerTo(t, rs, rb, d, t0.Add(time.Duration(i)*time.Second))
		}
	}

	const rounds = 20
	var before int64
	if proxy != nil {
		before = proxy.roundTrips.Load()
	}
	start := make(chan struct{})
	var wg sync.WaitGroup
	for i := range devices + 1 {
		wg.Go(func() {
			<-start
			for range rounds {
				if i == devices {
					if _, _, err := s.CheckInState(t.Context(), "hash-unknown"); !errors.Is(err, errs.ErrDeviceToken) {
						t.Errorf("unknown token: got %v, want ErrDeviceToken", err)
					}
					continue
				}
				d, recs, err := s.CheckInState(t.Context(), fmt.Sprintf("hash-%02d", i))
				if err != nil {
					t.Errorf("device %d: %v", i, err)
					return
				}
				if want := fmt.Sprintf("dev_%02d", i); d.ID != want || d.Model != fmt.Sprintf("m-%02d", i) {
					t.Errorf("hash-%02d: got device %s (%s), want %s", i, d.ID, d.Model, want)
				}
				var got []string
				for _, r := range recs {
					if r.DeviceID != d.ID {
						t.Errorf("%s: got a record of %s", d.ID, r.DeviceID)
					}
					got = append(got, r.RolloutID)
				}
				slices.Sort(got)
				want := map[int][]string{0: nil, 1: {"ro-a"}, 2: {"ro-a", "ro-b"}}[i%3]
				if !slices.Equal(got, want) {
					t.Errorf("%s: got records %v, want %v", d.ID, got, want)
				}
			}
		})
	}
	close(start)
	wg.Wait()

	if proxy != nil {
		reads := int64((devices + 1) * rounds)
		trips := proxy.roundTrips.Load() - before
		t.Logf("%d check-in reads took %d round trips", reads, trips)
		// 49 readers at once: most wait while a statement runs and go out
		// together in the next. One statement each would be 980.
		if trips > reads/4 {
			t.Errorf("%d check-in reads at once took %d round trips, want at most %d (reads share statements)", reads, trips, reads/4)
		}
	}
}

// testVerifyRollups checks VerifyRollups against a fleet whose rollups
// agree, before and after a fold, and after a counter is corrupted.
func testVerifyRollups(t *testing.T, b backend) {
	db, s := mustDevices(t, b)
	ctx := t.Context()
	for i := range 5 {
		mustEnroll(t, s, newDevice(fmt.Sprintf("dev_%d", i), "m"), fmt.Sprintf("hash-%d", i))
	}
	ci := handsets.CheckIn{Build: "7.2.0", Model: "m", Channel: "stable", CloudMessaging: handsets.MessagingOptedIn, NumberEncryption: true}
	if _, err := checkIn(ctx, s, "hash-1", ci, t0.Add(time.Hour)); err != nil {
		t.Fatal(err)
	}
	for _, fold := range []bool{false, true} {
		if fold {
			mustFold(t, db)
		}
		if bad, err := db.VerifyRollups(ctx); err != nil || len(bad) != 0 {
			t.Fatalf("VerifyRollups (folded: %v) = %q, %v; want no disagreement", fold, bad, err)
		}
	}
	if err := db.gorm.Exec("UPDATE fleet_counts SET n = n + 1 WHERE build = '7.2.0'").Error; err != nil {
		t.Fatal(err)
	}
	bad, err := db.VerifyRollups(ctx)
	if err != nil || len(bad) != 1 || !strings.Contains(bad[0], "fleet_counts against devices") || !strings.Contains(bad[0], "rollup 2, rows 1") {
		t.Errorf("VerifyRollups after fleet_counts was corrupted = %q, %v; want one line naming fleet_counts, rollup 2, rows 1", bad, err)
	}
}
