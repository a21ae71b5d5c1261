package sqlstore

import (
	"context"
	"database/sql"
	"fmt"
	"maps"
	"slices"
	"strings"
)

// VerifyRollups compares the rollups that can be recounted from the rows
// they count, each read with its unfolded deltas (as reports read them),
// with a count of those rows, all in one snapshot, and returns one line
// per disagreement (none when all agree):
//
//   - fleet_counts with the devices;
//   - rollout_counts with the rollout records (device_rollouts);
//   - rollout_state_hourly, summed over hours, with the records by state;
//   - fleet_daily_totals with fleet_daily summed over model and region.
//
// It reads every device and record: it is for tests and for an operator
// who suspects the rollups (otad rollups verify), not for reports.
func (db *DB) VerifyRollups(ctx context.Context) ([]string, error) {
	opts := &sql.TxOptions{ReadOnly: true}
	if db.dialect == dialectPostgres {
		opts.Isolation = sql.LevelRepeatableRead
	}
	tx, err := db.sql.BeginTx(ctx, opts)
	if err != nil {
		return nil, fmt.Errorf("verify rollups: %w", err)
	}
	defer tx.Rollback()
	const (
		fleetCols  = "model, channel, region, build, installed_patches, cloud_messaging, number_encryption"
		recordCols = "rollout_id, model, starting_build, state"
		totalsCols = "day, cloud_messaging, number_encryption"
	)
	checks := []struct {
		what, rollup, rows string
	}{
		{"fleet_counts against devices",
			`SELECT ` + fleetCols + `, SUM(n) FROM ` + tailed(fleetCountsTable, fleetCols, "n") + ` GROUP BY ` + fleetCols,
			`SELECT ` + fleetCols + `, COUNT(*) FROM devices GROUP BY ` + fleetCols},
		{"rollout_counts against device_rollouts",
			`SELECT ` + recordCols + `, SUM(n) FROM ` + tailed(rolloutCountsTable, recordCols, "n") + ` GROUP BY ` + recordCols,
			`SELECT ` + recordCols + `, COUNT(*) FROM device_rollouts GROUP BY ` + recordCols},
		{"rollout_state_hourly against device_rollouts",
			`SELECT rollout_id, state, SUM(n) FROM ` + tailed(stateHourlyTable, "rollout_id", "state", "n") + ` GROUP BY rollout_id, state`,
			`SELECT rollout_id, state, COUNT(*) FROM device_rollouts GROUP BY rollout_id, state`},
		{"fleet_daily_totals against fleet_daily",
			`SELECT ` + totalsCols + `, SUM(n) FROM ` + tailed(fleetTotalsTable, totalsCols, "n") + ` GROUP BY ` + totalsCols,
			`SELECT ` + totalsCols + `, SUM(n) FROM ` + tailed(fleetDailyTable, totalsCols, "n") + ` GROUP BY ` + totalsCols},
	}
	var out []string
	for _, c := range checks {
		got, err := countsByKey(ctx, tx, c.rollup)
		if err != nil {
			return nil, fmt.Errorf("verify rollups: %s: %w", c.what, err)
		}
		want, err := countsByKey(ctx, tx, c.rows)
		if err != nil {
			return nil, fmt.Errorf("verify rollups: %s: %w", c.what, err)
		}
		keys := slices.Sorted(maps.Keys(got))
		for k := range want {
			if _, ok := got[k]; !ok {
				keys = append(keys, k)
			}
		}
		for _, k := range keys {
			if got[k] != want[k] {
				out = append(out, fmt.Sprintf("%s: %s: rollup %d, rows %d", c.what, k, got[k], want[k]))
			}
		}
	}
	return out, nil
}

// countsByKey runs a query returning key columns and a count, and returns
// the non-zero counts by their key columns joined with "|".
func countsByKey(ctx context.Context, tx *sql.Tx, query string) (map[string]int64, error) {
	rows, err := tx.QueryContext(ctx, query)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	cols, err := rows.Columns()
	if err != nil {
		return nil, err
	}
	out := map[string]int64{}
	keys := make([]sql.NullString, len(cols)-1)
	dest := make([]any, len(cols))
	for i := range keys {
		dest[i] = &keys[i]
	}
	var n int64
	dest[len(cols)-1] = &n
	for rows.Next() {
		if err := rows.Scan(dest...); err != nil {
			return nil, err
		}
		parts := make([]string, len(keys))
		for i, k := range keys {
			parts[i] = normalizeBool(k.String)
		}
		if n != 0 {
			out[strings.Join(parts, "|")] += n
		}
	}
	return out, rows.Err()
}

// normalizeBool makes a boolean key read the same on both dialects:
// PostgreSQL's driver renders it as "true"/"false", SQLite's as "1"/"0".
func normalizeBool(s string) string {
	switch s {
	case "true":
		return "1"
	case "false":
		return "0"
	}
	return s
}
