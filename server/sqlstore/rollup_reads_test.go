package sqlstore

import (
	"cmp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/patchfleet/ota/server"
	"github.com/patchfleet/ota/server/handsets"
)

func TestReportStore(t *testing.T) {
	runStoreSuite(t, []storeCase{
		{"RolloutRollups", testRolloutRollups},
		{"RolloutRollupsEmpty", testRolloutRollupsEmpty},
		{"ExposureRollups", testExposureRollups},
		{"ExposureRollupsEmpty", testExposureRollupsEmpty},
	})
}

func mustReportStore(t testing.TB, b backend) (*DB, *ReportStore) {
	t.Helper()
	db := mustOpen(t, b.newDSN(t))
	if _, err := db.Migrate(t.Context()); err != nil {
		t.Fatalf("migrate: %v", err)
	}
	return db, db.Reports()
}

// mustExec runs statements, failing t on the first error.
func mustExecSQL(t testing.TB, db *DB, stmts ...string) {
	t.Helper()
	for _, q := range stmts {
		if err := db.gorm.WithContext(t.Context()).Exec(q).Error; err != nil {
			t.Fatalf("%s: %v", q, err)
		}
	}
}

func testRolloutRollups(t *testing.T, b backend) {
	db, s := mustReportStore(t, b)
	mustExecSQL(t, db,
		`INSERT INTO fleet_counts (model, channel, region, build, installed_patches, cloud_messaging, number_encryption, n) VALUES
	('PX-7', 'stable', 'DE', '7.4.0', '', 'auto_enabled', false, 30),
	('PX-7', 'stable', 'DE', '7.4.0', '', 'opted_out', true, 12),
	('PX-7', 'stable', 'DE', '8.0.0', ',CM-2026-001,', 'opted_out', true, 5),
	('PX-7', 'beta', 'FR', '7.4.0', '', 'auto_enabled', false, 0),
	('PX-8', 'stable', '', '7.2.0', '', 'opted_in', false, 8),
	('QZ-1', 'stable', 'US', '7.2.0', '', 'opted_in', false, 100),
	('QZ-1', 'beta', 'US', '7.2.0', '', 'opted_in', false, 3),
	('QZ-1', 'stable', 'FR', '7.2.0', '', 'opted_in', false, 5)`,
		`INSERT INTO rollout_counts (rollout_id, model, starting_build, state, shard, n) VALUES
	('ro_1', 'PX-7', '7.4.0', 'offered', 0, 3),
	('ro_1', 'PX-7', '7.4.0', 'offered', 5, 4),
	('ro_1', 'PX-7', '7.4.0', 'installed', 1, 5),
	('ro_1', 'PX-7', '7.4.0', 'downloading', 2, 0),
	('ro_1', 'PX-8', '7.2.0', 'failed', 7, 2),
	('ro_2', 'PX-7', '7.4.0', 'offered', 0, 99)`,
		`INSERT INTO rollout_failures (rollout_id, error_code, n) VALUES
	('ro_1', 'E_NO_SPACE', 2), ('ro_1', 'E_VERIFY', 0), ('ro_2', 'E_NO_SPACE', 50)`,
		`INSERT INTO rollout_install_times (rollout_id, bucket, n) VALUES
	('ro_1', 90, 4), ('ro_1', 60, 1), ('ro_1', 70, 0), ('ro_2', 60, 9)`,
	)
	// Hours go in as the write side binds them: time parameters.
	h := time.Date(2026, 12, 10, 14, 0, 0, 0, time.UTC)
	for _, row := range []struct {
		id                string
		hour              time.Time
		installed, failed int64
	}{
		{"ro_1", h, 4, 1},
		{"ro_1", h.Add(-47 * time.Hour), 1, 0},
		{"ro_1", h.Add(-48 * time.Hour), 7, 7},
		{"ro_2", h, 9, 9},
	} {
		if err := db.gorm.WithContext(t.Context()).Exec(`INSERT INTO rollout_hourly (rollout_id, hour, installed, failed) VALUES (?, ?, ?, ?)`,
			row.id, row.hour, row.installed, row.failed).Error; err != nil {
			t.Fatal(err)
		}
	}

	rr, err := s.RolloutRollups(t.Context(), "ro_1", h.Add(-47*time.Hour), server.FleetFilter{})
	if err != nil {
		t.Fatal(err)
	}
	byModelBuild := func(a, b server.FleetCount) int {
		return cmp.Or(strings.Compare(a.Model, b.Model), strings.Compare(a.Build, b.Build))
	}
	slices.SortFunc(rr.Fleet, byModelBuild)
	wantFleet := []server.FleetCount{
		{Model: "PX-7", Build: "7.4.0", InstalledPatches: "", N: 42},
		{Model: "PX-7", Build: "8.0.0", InstalledPatches: ",CM-2026-001,", N: 5},
		{Model: "PX-8", Build: "7.2.0", InstalledPatches: "", N: 8},
		{Model: "QZ-1", Build: "7.2.0", InstalledPatches: "", N: 108},
	}
	if !slices.Equal(rr.Fleet, wantFleet) {
		t.Errorf("fleet:\n got %+v\nwant %+v (summed over channels, regions and privacy states, rows of 0 left out)", rr.Fleet, wantFleet)
	}
	slices.SortFunc(rr.Records, func(a, b server.RolloutCount) int {
		return cmp.Or(strings.Compare(a.Model, b.Model), strings.Compare(a.State, b.State))
	})
	wantRecords := []server.RolloutCount{
		{Model: "PX-7", StartingBuild: "7.4.0", State: "installed", N: 5},
		{Model: "PX-7", StartingBuild: "7.4.0", State: "offered", N: 7},
		{Model: "PX-8", StartingBuild: "7.2.0", State: "failed", N: 2},
	}
	if !slices.Equal(rr.Records, wantRecords) {
		t.Errorf("records:\n got %+v\nwant %+v (summed over shards, of ro_1 only)", rr.Records, wantRecords)
	}
	if want := []handsets.FailureCount{{ErrorCode: "E_NO_SPACE", Count: 2}}; !slices.Equal(rr.Failures, want) {
		t.Errorf("failures %+v, want %+v", rr.Failures, want)
	}
	wantHours := []server.HourResults{{Hour: h.Add(-47 * time.Hour), Installed: 1}, {Hour: h, Installed: 4, Failed: 1}}
	if !slices.EqualFunc(rr.Hourly, wantHours, func(a, b server.HourResults) bool {
		return a.Hour.Equal(b.Hour) && a.Installed == b.Installed && a.Failed == b.Failed
	}) {
		t.Errorf("hours %+v, want %+v (from the first hour asked for on)", rr.Hourly, wantHours)
	}
	if want := []server.BucketCount{{Bucket: 60, N: 1}, {Bucket: 90, N: 4}}; !slices.Equal(rr.InstallTimes, want) {
		t.Errorf("install times %+v, want %+v", rr.InstallTimes, want)
	}

	for _, tc := range []struct {
		filter server.FleetFilter
		want   []server.FleetCount
	}{
		{server.FleetFilter{Models: []string{"PX-8", "QZ-1"}}, []server.FleetCount{
			{Model: "PX-8", Build: "7.2.0", N: 8}, {Model: "QZ-1", Build: "7.2.0", N: 108}}},
		{server.FleetFilter{Channels: []string{"beta"}}, []server.FleetCount{{Model: "QZ-1", Build: "7.2.0", N: 3}}},
		{server.FleetFilter{Regions: []string{"US", "FR"}, Channels: []string{"stable"}}, []server.FleetCount{{Model: "QZ-1", Build: "7.2.0", N: 105}}},
		{server.FleetFilter{Regions: []string{""}}, []server.FleetCount{{Model: "PX-8", Build: "7.2.0", N: 8}}},
		{server.FleetFilter{Models: []string{"PX-7"}, Regions: []string{"US"}}, nil},
	} {
		rr, err = s.RolloutRollups(t.Context(), "ro_1", h, tc.filter)
		if err != nil {
			t.Fatal(err)
		}
		slices.SortFunc(rr.Fleet, byModelBuild)
		if !slices.Equal(rr.Fleet, tc.want) || len(rr.Hourly) != 1 {
			t.Errorf("%+v since %v: fleet %+v, %d hours; want %+v, 1 hour", tc.filter, h, rr.Fleet, len(rr.Hourly), tc.want)
		}
	}
}

func testRolloutRollupsEmpty(t *testing.T, b backend) {
	_, s := mustReportStore(t, b)
	rr, err := s.RolloutRollups(t.Context(), "ro_none", time.Now(), server.FleetFilter{})
	if err != nil {
		t.Fatal(err)
	}
	if len(rr.Fleet)+len(rr.Records)+len(rr.Failures)+len(rr.Hourly)+len(rr.InstallTimes) != 0 {
		t.Errorf("got %+v, want nothing", rr)
	}
}

func testExposureRollups(t *testing.T, b backend) {
	db, s := mustReportStore(t, b)
	mustExecSQL(t, db,
		`INSERT INTO fleet_daily (day, model, region, cloud_messaging, number_encryption, n) VALUES
	('2026-12-08', 'PX-7', 'DE', 'auto_enabled', false, 70),
	('2026-12-09', 'PX-7', 'DE', 'auto_enabled', false, 10),
	('2026-12-09', 'PX-7', 'DE', 'opted_out', true, 20),
	('2026-12-09', 'PX-8', '', 'opted_in', false, 0)`,
		`INSERT INTO fleet_daily_totals (day, cloud_messaging, number_encryption, shard, n) VALUES
	('2026-12-01', 'opted_out', true, 0, 5),
	('2026-12-07', 'opted_out', true, 0, 1),
	('2026-12-08', 'auto_enabled', false, 3, 30),
	('2026-12-08', 'auto_enabled', false, 4, 40),
	('2026-12-09', 'auto_enabled', false, 0, 10),
	('2026-12-09', 'opted_out', true, 7, 20),
	('2026-12-09', 'opted_in', false, 1, 0),
	('2026-12-10', 'opted_in', false, 2, 0)`,
	)
	er, err := s.ExposureRollups(t.Context(), "", 2)
	if err != nil {
		t.Fatal(err)
	}
	if er.Day != "2026-12-09" {
		t.Errorf("latest day %q, want 2026-12-09 (2026-12-10 has only a row of 0)", er.Day)
	}
	slices.SortFunc(er.Segments, func(a, b server.ExposureCount) int { return cmp.Compare(a.N, b.N) })
	wantSegments := []server.ExposureCount{
		{Model: "PX-7", Region: "DE", CloudMessaging: "auto_enabled", NumberEncryption: false, N: 10},
		{Model: "PX-7", Region: "DE", CloudMessaging: "opted_out", NumberEncryption: true, N: 20},
	}
	if !slices.Equal(er.Segments, wantSegments) {
		t.Errorf("segments:\n got %+v\nwant %+v", er.Segments, wantSegments)
	}
	slices.SortFunc(er.Daily, func(a, b server.DailyCount) int {
		return cmp.Or(strings.Compare(a.Day, b.Day), strings.Compare(a.CloudMessaging, b.CloudMessaging))
	})
	wantDaily := []server.DailyCount{
		{Day: "2026-12-08", CloudMessaging: "auto_enabled", NumberEncryption: false, N: 70},
		{Day: "2026-12-09", CloudMessaging: "auto_enabled", NumberEncryption: false, N: 10},
		{Day: "2026-12-09", CloudMessaging: "opted_out", NumberEncryption: true, N: 20},
	}
	if !slices.Equal(er.Daily, wantDaily) {
		t.Errorf("daily:\n got %+v\nwant %+v (2 days, summed over shards)", er.Daily, wantDaily)
	}

	er, err = s.ExposureRollups(t.Context(), "2026-12-08", 8)
	if err != nil {
		t.Fatal(err)
	}
	var days []string
	for _, d := range er.Daily {
		days = append(days, d.Day)
	}
	slices.Sort(days)
	if er.Day != "2026-12-08" || len(er.Segments) != 1 || er.Segments[0].N != 70 || !slices.Equal(days, []string{"2026-12-01", "2026-12-07", "2026-12-08"}) {
		t.Errorf("day 2026-12-08 over 8 days: day %s, segments %+v, days %v", er.Day, er.Segments, days)
	}
}

func testExposureRollupsEmpty(t *testing.T, b backend) {
	_, s := mustReportStore(t, b)
	er, err := s.ExposureRollups(t.Context(), "", 30)
	if err != nil {
		t.Fatal(err)
	}
	if er.Day != "" || len(er.Segments) != 0 || len(er.Daily) != 0 {
		t.Errorf("got %+v, want no day and nothing", er)
	}
}
