package sqlstore

import (
	"context"
	"database/sql"
	"fmt"
	"strings"
	"time"

	"gorm.io/gorm"

	"github.com/patchfleet/ota/server"
	"github.com/patchfleet/ota/server/errs"
	"github.com/patchfleet/ota/server/handsets"
)

// ReportStore reads the rollups of migration 7 for reports, each with
// its delta log's unfolded tail (tailed); it implements
// server.ReportStore. It reads no fleet table: every query but one reads
// a rollup by the first column of its key (the rollout id or the day),
// and the log whole (it holds about a second of changes). The exception is fleet_counts, read whole (or from a
// model prefix of its key): it has a row per combination of model,
// channel, region, build, patch set and privacy state, however many
// handsets share it (31,593 rows for the million handsets of
// BenchmarkRolloutReport1M).
type ReportStore struct{ db *DB }

var _ server.ReportStore = (*ReportStore)(nil)

// Reports returns the report store of db.
func (db *DB) Reports() *ReportStore { return &ReportStore{db: db} }

// snapshot runs fn in one read-only transaction, so that the parts of a
// report are read from one state of the rollups: on PostgreSQL under
// REPEATABLE READ, on SQLite in a WAL read transaction (a plain BEGIN,
// not the BEGIN IMMEDIATE of writes).
func (s *ReportStore) snapshot(ctx context.Context, fn func(tx *gorm.DB) error) error {
	opts := &sql.TxOptions{ReadOnly: true}
	if s.db.dialect == dialectPostgres {
		opts.Isolation = sql.LevelRepeatableRead
	}
	return s.db.gorm.WithContext(ctx).Transaction(fn, opts)
}

// scanRows runs a query and calls scan for each row.
func scanRows(tx *gorm.DB, scan func(*sql.Rows) error, query string, args ...any) error {
	rows, err := tx.Raw(query, args...).Rows()
	if err != nil {
		return err
	}
	defer rows.Close()
	for rows.Next() {
		if err := scan(rows); err != nil {
			return err
		}
	}
	return rows.Err()
}

// RolloutRollups implements server.ReportStore in nine reads of one
// snapshot. The fleet counts are filtered by exact membership (a model
// list is a prefix of fleet_counts' key) and summed over channel,
// region and privacy state, which eligibility does not depend on past
// the filter: a few hundred rows (models x builds x patch sets) however
// many combinations the table holds.
func (s *ReportStore) RolloutRollups(ctx context.Context, rolloutID string, hoursSince time.Time, fleet server.FleetFilter) (*server.RolloutRollups, error) {
	rr := &server.RolloutRollups{}
	err := s.snapshot(ctx, func(tx *gorm.DB) error {
		where := `true`
		var args []any
		for _, f := range []struct {
			col    string
			values []string
		}{{"model", fleet.Models}, {"channel", fleet.Channels}, {"region", fleet.Regions}} {
			if len(f.values) == 0 {
				continue
			}
			where += ` AND ` + f.col + ` IN (?` + strings.Repeat(", ?", len(f.values)-1) + `)`
			for _, v := range f.values {
				args = append(args, v)
			}
		}
		fleetSQL := tailedSum(fleetCountsTable, []string{"model", "build", "installed_patches"}, []string{"n"}, where) + ` HAVING SUM(n) > 0`
		err := scanRows(tx, func(r *sql.Rows) error {
			var fc server.FleetCount
			err := r.Scan(&fc.Model, &fc.Build, &fc.InstalledPatches, &fc.N)
			rr.Fleet = append(rr.Fleet, fc)
			return err
		}, fleetSQL, twice(args...)...)
		if err != nil {
			return fmt.Errorf("read fleet_counts: %w", err)
		}
		err = scanRows(tx, func(r *sql.Rows) error {
			var rc server.RolloutCount
			err := r.Scan(&rc.Model, &rc.StartingBuild, &rc.State, &rc.N)
			rr.Records = append(rr.Records, rc)
			return err
		}, tailedSum(rolloutCountsTable, []string{"model", "starting_build", "state"}, []string{"n"}, "rollout_id = ?")+
			` HAVING SUM(n) > 0`, twice(rolloutID)...)
		if err != nil {
			return fmt.Errorf("read rollout_counts: %w", err)
		}
		err = scanRows(tx, func(r *sql.Rows) error {
			var fc handsets.FailureCount
			err := r.Scan(&fc.ErrorCode, &fc.Count)
			rr.Failures = append(rr.Failures, fc)
			return err
		}, tailedSum(failuresTable, []string{"error_code"}, []string{"n"}, "rollout_id = ?")+` HAVING SUM(n) > 0`, twice(rolloutID)...)
		if err != nil {
			return fmt.Errorf("read rollout_failures: %w", err)
		}
		err = scanRows(tx, func(r *sql.Rows) error {
			var pc server.PayloadCount
			err := r.Scan(&pc.FromBuild, &pc.Offers, &pc.Bytes, &pc.FullBytes)
			rr.Payloads = append(rr.Payloads, pc)
			return err
		}, tailedSum(payloadsTable, []string{"from_build"}, []string{"offers", "bytes", "full_bytes"}, "rollout_id = ?"),
			twice(rolloutID)...)
		if err != nil {
			return fmt.Errorf("read rollout_payloads: %w", err)
		}
		err = scanRows(tx, func(r *sql.Rows) error {
			var h server.HourResults
			err := r.Scan(&h.Hour, &h.Installed, &h.Failed)
			h.Hour = h.Hour.UTC()
			rr.Hourly = append(rr.Hourly, h)
			return err
		}, tailedSum(rolloutHourlyTable, []string{"hour"}, []string{"installed", "failed"}, "rollout_id = ? AND hour >= ?")+
			` ORDER BY hour`, twice(rolloutID, dbTime(hoursSince))...)
		if err != nil {
			return fmt.Errorf("read rollout_hourly: %w", err)
		}
		err = scanRows(tx, func(r *sql.Rows) error {
			var d server.StateHourDelta
			err := r.Scan(&d.Hour, &d.State, &d.N)
			d.Hour = d.Hour.UTC()
			rr.StateHours = append(rr.StateHours, d)
			return err
		}, tailedSum(stateHourlyTable, []string{"hour", "state"}, []string{"n"}, "rollout_id = ? AND hour > ?")+
			` HAVING SUM(n) <> 0`, twice(rolloutID, dbTime(hoursSince))...)
		if err != nil {
			return fmt.Errorf("read rollout_state_hourly: %w", err)
		}
		err = scanRows(tx, func(r *sql.Rows) error {
			var b server.BucketCount
			err := r.Scan(&b.Bucket, &b.N)
			rr.InstallTimes = append(rr.InstallTimes, b)
			return err
		}, tailedSum(installTimesTable, []string{"bucket"}, []string{"n"}, "rollout_id = ?")+
			` HAVING SUM(n) > 0 ORDER BY bucket`, twice(rolloutID)...)
		if err != nil {
			return fmt.Errorf("read rollout_install_times: %w", err)
		}
		err = scanRows(tx, func(r *sql.Rows) error {
			rc := server.RolloutCount{State: handsets.StateInstalled}
			err := r.Scan(&rc.Model, &rc.StartingBuild, &rc.N)
			rr.Confirmed = append(rr.Confirmed, rc)
			return err
		}, tailedSum(confirmationsTable, []string{"model", "starting_build"}, []string{"n"}, "rollout_id = ?")+
			` HAVING SUM(n) > 0`, twice(rolloutID)...)
		if err != nil {
			return fmt.Errorf("read rollout_confirmations: %w", err)
		}
		err = scanRows(tx, func(r *sql.Rows) error {
			var b server.BucketCount
			err := r.Scan(&b.Bucket, &b.N)
			rr.ConfirmTimes = append(rr.ConfirmTimes, b)
			return err
		}, tailedSum(confirmTimesTable, []string{"bucket"}, []string{"n"}, "rollout_id = ?")+
			` HAVING SUM(n) > 0 ORDER BY bucket`, twice(rolloutID)...)
		if err != nil {
			return fmt.Errorf("read rollout_confirm_times: %w", err)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return rr, nil
}

// ExposureRollups implements server.ReportStore in at most three reads
// of one snapshot: the latest day with data (one step down the key of
// fleet_daily_totals) when day is empty, the day's rows of fleet_daily,
// and the series from fleet_daily_totals summed over shards.
func (s *ReportStore) ExposureRollups(ctx context.Context, day string, days int) (*server.ExposureRollups, error) {
	if days < 1 {
		return nil, fmt.Errorf("exposure rollups: want at least 1 day, not %d: %w", days, errs.ErrInvalid)
	}
	er := &server.ExposureRollups{Day: day}
	err := s.snapshot(ctx, func(tx *gorm.DB) error {
		if er.Day == "" {
			var latest []string
			if err := tx.Raw(`SELECT day FROM (` + tailedSum(fleetTotalsTable, []string{"day"}, []string{"n"}, "true") +
				` HAVING SUM(n) > 0) days ORDER BY day DESC LIMIT 1`).Scan(&latest).Error; err != nil {
				return fmt.Errorf("read the latest day of fleet_daily_totals: %w", err)
			}
			if len(latest) == 0 {
				return nil
			}
			er.Day = latest[0]
		}
		last, err := time.Parse(time.DateOnly, er.Day)
		if err != nil {
			return fmt.Errorf("exposure rollups: day %q: %w", er.Day, errs.ErrInvalid)
		}
		first := last.AddDate(0, 0, 1-days).Format(time.DateOnly)
		err = scanRows(tx, func(r *sql.Rows) error {
			var c server.ExposureCount
			err := r.Scan(&c.Model, &c.Region, &c.CloudMessaging, &c.NumberEncryption, &c.N)
			er.Segments = append(er.Segments, c)
			return err
		}, tailedSum(fleetDailyTable, []string{"model", "region", "cloud_messaging", "number_encryption"}, []string{"n"}, "day = ?")+
			` HAVING SUM(n) > 0`, twice(er.Day)...)
		if err != nil {
			return fmt.Errorf("read fleet_daily: %w", err)
		}
		err = scanRows(tx, func(r *sql.Rows) error {
			var c server.DailyCount
			err := r.Scan(&c.Day, &c.CloudMessaging, &c.NumberEncryption, &c.N)
			er.Daily = append(er.Daily, c)
			return err
		}, tailedSum(fleetTotalsTable, []string{"day", "cloud_messaging", "number_encryption"}, []string{"n"}, "day >= ? AND day <= ?")+
			` HAVING SUM(n) > 0`, twice(first, er.Day)...)
		if err != nil {
			return fmt.Errorf("read fleet_daily_totals: %w", err)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return er, nil
}
