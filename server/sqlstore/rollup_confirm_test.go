package sqlstore

import (
	"fmt"
	"reflect"
	"slices"
	"testing"
	"time"

	"github.com/patchfleet/ota/server"
	"github.com/patchfleet/ota/server/handsets"
	"github.com/patchfleet/ota/server/rollout"
)

// TestConfirmationRollups: a check-in that confirms an install counts it
// in rollout_confirmations and its offer-to-confirmation time in
// rollout_confirm_times with the device write, once; the report read
// returns them before and after a fold; a check-in that leaves the
// build, a rollback report and an erasure take a confirmation out.
func TestConfirmationRollups(t *testing.T) {
	runStoreSuite(t, []storeCase{{"CountAtCheckIn", testConfirmationRollups}, {"MigrationCountsConfirmed", testConfirmationMigration}})
}

func testConfirmationRollups(t *testing.T, b backend) {
	db, s, rs := mustRollouts(t, b)
	ctx := t.Context()
	r := startedRollout(t, rs, "ro-a")
	offeredAt := t0.Add(time.Minute)
	for i, model := range []string{"px-7", "px-8", "px-7", "px-7"} {
		d := newDevice(fmt.Sprintf("dev_%d", i), model)
		mustEnroll(t, s, d, "hash-"+d.ID)
		offerTo(t, rs, r, d, offeredAt)
		mustAddReport(t, s, handsets.Report{ID: "r" + d.ID, DeviceID: d.ID, PatchID: r.Release.PatchID,
			State: handsets.StateInstalled, At: t0.Add(10 * time.Minute), ReceivedAt: t0.Add(10 * time.Minute)})
	}
	// checkIn checks dev in at at on build with patches, as server.Fleet
	// does, and returns the net change of its confirmations.
	checkIn := func(dev, build string, at time.Time, patches ...string) int64 {
		t.Helper()
		d, records, err := s.CheckInState(ctx, "hash-"+dev)
		if err != nil {
			t.Fatal(err)
		}
		next := d.AfterCheckIn(handsets.CheckIn{Model: d.Model, Build: build, Channel: d.Channel, InstalledPatches: patches,
			CloudMessaging: d.CloudMessaging}, at)
		confirmed := rollout.Confirmations(d, next, records, func(id string) (rollout.RolloutRelease, bool) {
			return r.Release, id == r.ID
		})
		if err := s.SaveCheckIn(ctx, d, next, confirmed); err != nil {
			t.Fatal(err)
		}
		var n int64
		for _, c := range confirmed {
			n += c.N
		}
		return n
	}
	patch := r.Release.PatchID
	n := checkIn("dev_0", r.Release.InstallsBuild, t0.Add(20*time.Minute), patch)
	n += checkIn("dev_1", r.Release.InstallsBuild, t0.Add(70*time.Minute), patch)
	n += checkIn("dev_2", "7.1.0", t0.Add(20*time.Minute), patch) // installed, still on the old build
	n += checkIn("dev_0", r.Release.InstallsBuild, t0.Add(3*time.Hour), patch)
	n += checkIn("dev_3", r.Release.InstallsBuild, t0.Add(20*time.Minute), patch)
	if n != 3 {
		t.Fatalf("%d check-ins confirmed, want 3 (dev_0, dev_1 and dev_3, once each)", n)
	}

	read := func() *server.RolloutRollups {
		t.Helper()
		rr, err := db.Reports().RolloutRollups(ctx, r.ID, t0, server.FleetFilter{})
		if err != nil {
			t.Fatal(err)
		}
		return rr
	}
	timeBuckets := []server.BucketCount{{Bucket: server.InstallTimeBucket(19 * time.Minute), N: 2},
		{Bucket: server.InstallTimeBucket(69 * time.Minute), N: 1}}
	for _, folded := range []bool{false, true} {
		if folded {
			mustFold(t, db)
		}
		rr := read()
		want := map[string]int64{"px-7/7.1.0": 2, "px-8/7.1.0": 1}
		if got := confirmedByKey(rr.Confirmed); !reflect.DeepEqual(got, want) {
			t.Errorf("folded %v: confirmed %v, want %v", folded, got, want)
		}
		if !reflect.DeepEqual(rr.ConfirmTimes, timeBuckets) {
			t.Errorf("folded %v: confirmation times %v, want %v", folded, rr.ConfirmTimes, timeBuckets)
		}
	}

	// dev_3 is back on the old build, dev_0 reports a rollback: neither
	// is confirmed any more. The times stay, as install times do.
	if n := checkIn("dev_3", "7.1.0", t0.Add(4*time.Hour)); n != -1 {
		t.Errorf("dev_3 back on the old build: confirmations changed by %d, want -1", n)
	}
	mustAddReport(t, s, handsets.Report{ID: "rb-dev_0", DeviceID: "dev_0", PatchID: patch,
		State: handsets.StateRolledBack, At: t0.Add(5 * time.Hour), ReceivedAt: t0.Add(5 * time.Hour)})
	rr := read()
	if got, want := confirmedByKey(rr.Confirmed), map[string]int64{"px-8/7.1.0": 1}; !reflect.DeepEqual(got, want) {
		t.Errorf("after a rollback and a return to the old build: confirmed %v, want %v", got, want)
	}
	if !reflect.DeepEqual(rr.ConfirmTimes, timeBuckets) {
		t.Errorf("after a rollback: confirmation times %v, want %v", rr.ConfirmTimes, timeBuckets)
	}

	// Erasing dev_1 takes its confirmation out, and no row names its
	// model.
	if err := s.DeleteDevice(ctx, "dev_1"); err != nil {
		t.Fatal(err)
	}
	rr = read()
	if got, want := confirmedByKey(rr.Confirmed), map[string]int64{}; !reflect.DeepEqual(got, want) {
		t.Errorf("after erasing dev_1: confirmed %v, want %v", got, want)
	}
	if !reflect.DeepEqual(rr.ConfirmTimes, timeBuckets) {
		t.Errorf("after erasing dev_1: confirmation times %v, want %v", rr.ConfirmTimes, timeBuckets)
	}
	if n := countRows(t, db, "rollout_confirmations", "model = 'px-8'"); n != 0 {
		t.Errorf("rollout_confirmations keeps %d rows of the erased handset's model", n)
	}
}

func confirmedByKey(rows []server.RolloutCount) map[string]int64 {
	out := map[string]int64{}
	for _, rc := range rows {
		out[rc.Model+"/"+rc.StartingBuild] += rc.N
	}
	return out
}

// testConfirmationMigration: migration 17 counts the records confirmed
// before it, by the rule the check-ins count them with afterwards, and
// no others.
func testConfirmationMigration(t *testing.T, b backend) {
	db := mustOpen(t, b.newDSN(t))
	ctx := t.Context()
	i := slices.IndexFunc(migrations, func(m Migration) bool { return m.Name == "rollout_confirmations" })
	if i < 0 {
		t.Fatal("no migration rollout_confirmations")
	}
	mustMigrate(t, db, migrations[:i])
	s, rs := db.Devices(), db.Rollouts()
	r := startedRollout(t, rs, "ro-a")
	reported := t0.Add(10 * time.Minute)
	for _, tc := range []struct {
		id, model, build string
		seen             time.Time
		patches          string
	}{
		{"dev_ok", "px-7", r.Release.InstallsBuild, reported.Add(time.Minute), ",CM-0,CM-2026-001,"},
		{"dev_ok2", "px-8", r.Release.InstallsBuild, reported.Add(time.Hour), ",CM-2026-001,"},
		{"dev_old_build", "px-8", "7.1.0", reported.Add(time.Minute), ",CM-2026-001,"},
		{"dev_seen_before", "px-7", r.Release.InstallsBuild, reported.Add(-time.Minute), ",CM-2026-001,"},
		{"dev_no_patch", "px-7", r.Release.InstallsBuild, reported.Add(time.Minute), ",CM-2026-0011,"},
	} {
		d := newDevice(tc.id, tc.model)
		mustEnroll(t, s, d, "hash-"+d.ID)
		offerTo(t, rs, r, d, t0.Add(time.Minute))
		mustAddReport(t, s, handsets.Report{ID: "r" + d.ID, DeviceID: d.ID, PatchID: r.Release.PatchID,
			State: handsets.StateInstalled, At: reported, ReceivedAt: reported})
		if err := db.gorm.Exec(`UPDATE devices SET build = ?, installed_patches = ?, last_seen = ? WHERE id = ?`,
			tc.build, tc.patches, dbTime(tc.seen), tc.id).Error; err != nil {
			t.Fatal(err)
		}
	}
	mustMigrate(t, db, migrations)
	rr, err := db.Reports().RolloutRollups(ctx, r.ID, t0, server.FleetFilter{})
	if err != nil {
		t.Fatal(err)
	}
	if got, want := confirmedByKey(rr.Confirmed), map[string]int64{"px-7/7.1.0": 1, "px-8/7.1.0": 1}; !reflect.DeepEqual(got, want) {
		t.Errorf("confirmed after migrating: %v, want %v", got, want)
	}
	if len(rr.ConfirmTimes) != 0 {
		t.Errorf("confirmation times after migrating: %v, want none (not known)", rr.ConfirmTimes)
	}
}
