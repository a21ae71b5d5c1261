package sqlstore

import (
	"cmp"
	"context"
	"fmt"
	"slices"
	"strings"
	"time"

	"gorm.io/gorm"

	"github.com/patchfleet/ota/server"
)

// The write side of the rollups of migration 7 (see rollupsSchema): each
// change to what they count moves them in the same transaction, so a
// report never disagrees with the rows it sums. A move is a -1 on the
// old row and a +1 on the new one; rows left at 0 stay (readers skip
// them), so that a later +1 finds its row.
//
// Every statement that moves counters takes its rows in key order, and
// the tables in one order (fleet_counts, fleet_daily, fleet_daily_totals,
// rollout_counts, ...), so two transactions moving the same counters
// lock them in the same order and cannot deadlock on PostgreSQL.

// fleetKey is a fleet_counts row: a device's stored state.
type fleetKey struct {
	Model, Channel, Region, Build, Patches, Messaging string
	Encryption                                        bool
}

func fleetKeyOf(r *deviceRow) fleetKey {
	return fleetKey{r.Model, r.Channel, r.Region, r.Build, r.InstalledPatches, r.CloudMessaging, r.NumberEncryption}
}

// dailyKey is a fleet_daily row; its totals row is (Day, Messaging,
// Encryption, shard).
type dailyKey struct {
	Day, Model, Region, Messaging string
	Encryption                    bool
}

// rollupDay is the UTC day of t as fleet_daily keeps it, as migration 7
// computed it from last_seen.
func rollupDay(t time.Time) string { return t.UTC().Format(time.DateOnly) }

func dailyKeyOf(r *deviceRow) dailyKey {
	return dailyKey{rollupDay(r.LastSeen), r.Model, r.Region, r.CloudMessaging, r.NumberEncryption}
}

// delta is one counter change.
type delta[K any] struct {
	key K
	n   int64
}

// move is the deltas of a counted thing going from old to next: nil
// when both are the same row; old or next nil for a thing that appears
// or goes.
func move[K comparable](old, next *K) []delta[K] {
	var out []delta[K]
	if old != nil && next != nil && *old == *next {
		return nil
	}
	if old != nil {
		out = append(out, delta[K]{*old, -1})
	}
	if next != nil {
		out = append(out, delta[K]{*next, +1})
	}
	return out
}

// upsertCounters adds each delta's n to its row of table, inserting rows
// that do not exist, in one statement with the rows sorted by key.
func upsertCounters[K any](tx *gorm.DB, table string, keyCols []string, deltas []delta[K], values func(K) []any, compare func(a, b K) int) error {
	if len(deltas) == 0 {
		return nil
	}
	deltas = slices.Clone(deltas)
	slices.SortFunc(deltas, func(a, b delta[K]) int { return compare(a.key, b.key) })
	// Merge deltas of one key: PostgreSQL refuses a statement that
	// affects a row twice.
	merged := deltas[:1]
	for _, d := range deltas[1:] {
		if last := &merged[len(merged)-1]; compare(last.key, d.key) == 0 {
			last.n += d.n
		} else {
			merged = append(merged, d)
		}
	}
	row := "(" + strings.Repeat("?, ", len(keyCols)) + "?)"
	rows := make([]string, 0, len(merged))
	var args []any
	for _, d := range merged {
		if d.n == 0 {
			continue
		}
		rows = append(rows, row)
		args = append(args, values(d.key)...)
		args = append(args, d.n)
	}
	if len(rows) == 0 {
		return nil
	}
	sql := fmt.Sprintf("INSERT INTO %s (%s, n) VALUES %s ON CONFLICT (%s) DO UPDATE SET n = %s.n + excluded.n",
		table, strings.Join(keyCols, ", "), strings.Join(rows, ", "), strings.Join(keyCols, ", "), table)
	if err := tx.Exec(sql, args...).Error; err != nil {
		return fmt.Errorf("update %s: %w", table, err)
	}
	return nil
}

func compareFleetKeys(a, b fleetKey) int {
	return cmp.Or(strings.Compare(a.Model, b.Model), strings.Compare(a.Channel, b.Channel),
		strings.Compare(a.Region, b.Region), strings.Compare(a.Build, b.Build),
		strings.Compare(a.Patches, b.Patches), strings.Compare(a.Messaging, b.Messaging), compareBool(a.Encryption, b.Encryption))
}

func compareDailyKeys(a, b dailyKey) int {
	return cmp.Or(strings.Compare(a.Day, b.Day), strings.Compare(a.Model, b.Model),
		strings.Compare(a.Region, b.Region), strings.Compare(a.Messaging, b.Messaging), compareBool(a.Encryption, b.Encryption))
}

func compareBool(a, b bool) int {
	switch {
	case a == b:
		return 0
	case !a:
		return -1
	}
	return 1
}

type totalsKey struct {
	Day, Messaging string
	Encryption     bool
	Shard          int
}

func compareTotalsKeys(a, b totalsKey) int {
	return cmp.Or(strings.Compare(a.Day, b.Day), strings.Compare(a.Messaging, b.Messaging),
		compareBool(a.Encryption, b.Encryption), cmp.Compare(a.Shard, b.Shard))
}

// deleteEmpty deletes the row of table with the key values if its count
// is down to zero: an erased device's model, build or region must not
// outlive it in a row that counts no one.
func deleteEmpty(tx *gorm.DB, table string, keyCols []string, values []any) error {
	if err := tx.Exec("DELETE FROM "+table+" WHERE n <= 0 AND "+strings.Join(eqConds(keyCols), " AND "), values...).Error; err != nil {
		return fmt.Errorf("delete empty %s row: %w", table, err)
	}
	return nil
}

var (
	fleetCountCols  = []string{"model", "channel", "region", "build", "installed_patches", "cloud_messaging", "number_encryption"}
	fleetDailyCols  = []string{"day", "model", "region", "cloud_messaging", "number_encryption"}
	fleetTotalsCols = []string{"day", "cloud_messaging", "number_encryption", "shard"}
	rolloutCountCol = []string{"rollout_id", "model", "starting_build", "state", "shard"}
)

func (k fleetKey) values() []any {
	return []any{k.Model, k.Channel, k.Region, k.Build, k.Patches, k.Messaging, k.Encryption}
}
func (k dailyKey) values() []any  { return []any{k.Day, k.Model, k.Region, k.Messaging, k.Encryption} }
func (k totalsKey) values() []any { return []any{k.Day, k.Messaging, k.Encryption, k.Shard} }
func (k recordKey) values() []any { return []any{k.Rollout, k.Model, k.Build, k.State, k.Shard} }

// eraseDevice takes an erased device out of the fleet rollups: its
// current row and the day it was last seen, deleting rows it leaves
// empty. The days before keep their counts: they are sums that say
// nothing of one device unless it was alone in its row, and that a
// handset was seen on a day is not what an erasure asks to forget less
// than what it was. (Reports hide small cells.)
func eraseDevice(tx *gorm.DB, old *deviceRow) error {
	fk := fleetKeyOf(old)
	dk := dailyKeyOf(old)
	tk := totalsKey{dk.Day, dk.Messaging, dk.Encryption, server.RollupShard(old.ID)}
	for _, c := range []struct {
		table string
		cols  []string
		key   []any
	}{
		{"fleet_counts", fleetCountCols, fk.values()},
		{"fleet_daily", fleetDailyCols, dk.values()},
		{"fleet_daily_totals", fleetTotalsCols, tk.values()},
	} {
		if err := tx.Exec("UPDATE "+c.table+" SET n = n - 1 WHERE "+strings.Join(eqConds(c.cols), " AND "), c.key...).Error; err != nil {
			return fmt.Errorf("update %s: %w", c.table, err)
		}
		if err := deleteEmpty(tx, c.table, c.cols, c.key); err != nil {
			return err
		}
	}
	return nil
}

// eraseRecords takes an erased device's rollout records out of
// rollout_counts, deleting rows they leave empty, and out of the states
// over time from the hour of at on (before it, the handset is a count
// among others, as in the daily rollups).
func eraseRecords(tx *gorm.DB, records []*server.DeviceRollout, at time.Time) error {
	gone := make([]delta[recordKey], len(records))
	for i, dr := range records {
		gone[i] = delta[recordKey]{recordKeyOf(dr), -1}
	}
	if err := moveStateHours(tx, gone, at); err != nil {
		return err
	}
	for _, dr := range records {
		k := recordKeyOf(dr)
		if err := tx.Exec("UPDATE rollout_counts SET n = n - 1 WHERE "+strings.Join(eqConds(rolloutCountCol), " AND "), k.values()...).Error; err != nil {
			return fmt.Errorf("update rollout_counts: %w", err)
		}
		if err := deleteEmpty(tx, "rollout_counts", rolloutCountCol, k.values()); err != nil {
			return err
		}
	}
	return nil
}

func eqConds(cols []string) []string {
	out := make([]string, len(cols))
	for i, c := range cols {
		out[i] = c + " = ?"
	}
	return out
}

// moveDevice moves the fleet rollups for a device going from old (nil
// when it enrolls) to next. The daily rollups count a device on the day
// of its last_seen: a device seen on a new day is added there and stays
// counted on the old day; one whose state changes on the same day moves
// within it. Erasures take eraseDevice.
func moveDevice(tx *gorm.DB, old, next *deviceRow) error {
	var oldKey, nextKey *fleetKey
	if old != nil {
		k := fleetKeyOf(old)
		oldKey = &k
	}
	if next != nil {
		k := fleetKeyOf(next)
		nextKey = &k
	}
	err := upsertCounters(tx, "fleet_counts", fleetCountCols, move(oldKey, nextKey), fleetKey.values, compareFleetKeys)
	if err != nil {
		return err
	}
	var oldDay *dailyKey
	nextDay := dailyKeyOf(next)
	if old != nil && rollupDay(old.LastSeen) == nextDay.Day {
		k := dailyKeyOf(old)
		oldDay = &k
	}
	dailies := move(oldDay, &nextDay)
	if err := upsertCounters(tx, "fleet_daily", fleetDailyCols, dailies, dailyKey.values, compareDailyKeys); err != nil {
		return err
	}
	shard := server.RollupShard(next.ID)
	totals := make([]delta[totalsKey], 0, len(dailies))
	for _, d := range dailies {
		totals = append(totals, delta[totalsKey]{totalsKey{d.key.Day, d.key.Messaging, d.key.Encryption, shard}, d.n})
	}
	return upsertCounters(tx, "fleet_daily_totals", fleetTotalsCols, totals, totalsKey.values, compareTotalsKeys)
}

// recordKey is a rollout_counts row.
type recordKey struct {
	Rollout, Model, Build, State string
	Shard                        int
}

func recordKeyOf(dr *server.DeviceRollout) recordKey {
	return recordKey{dr.RolloutID, dr.Model, dr.StartingBuild, dr.State, server.RollupShard(dr.DeviceID)}
}

func compareRecordKeys(a, b recordKey) int {
	return cmp.Or(strings.Compare(a.Rollout, b.Rollout), strings.Compare(a.Model, b.Model),
		strings.Compare(a.Build, b.Build), strings.Compare(a.State, b.State), cmp.Compare(a.Shard, b.Shard))
}

// moveRecords applies rollout_counts deltas (recordMove's) made at at,
// and adds them to the hour of at in rollout_state_hourly.
func moveRecords(tx *gorm.DB, deltas []delta[recordKey], at time.Time) error {
	if err := upsertCounters(tx, "rollout_counts", rolloutCountCol, deltas, recordKey.values, compareRecordKeys); err != nil {
		return err
	}
	return moveStateHours(tx, deltas, at)
}

// stateHourKey is a rollout_state_hourly row: the net change, within
// one hour, of how many of a rollout's records are in a state.
type stateHourKey struct {
	Rollout string
	Hour    time.Time
	State   string
	Shard   int
}

var stateHourlyCols = []string{"rollout_id", "hour", "state", "shard"}

func (k stateHourKey) values() []any { return []any{k.Rollout, k.Hour, k.State, k.Shard} }

func compareStateHourKeys(a, b stateHourKey) int {
	return cmp.Or(strings.Compare(a.Rollout, b.Rollout), a.Hour.Compare(b.Hour), strings.Compare(a.State, b.State),
		cmp.Compare(a.Shard, b.Shard))
}

// moveStateHours adds record deltas to rollout_state_hourly in the hour
// of at.
func moveStateHours(tx *gorm.DB, deltas []delta[recordKey], at time.Time) error {
	hour := dbTime(at).Truncate(time.Hour)
	states := make([]delta[stateHourKey], len(deltas))
	for i, d := range deltas {
		states[i] = delta[stateHourKey]{stateHourKey{d.key.Rollout, hour, d.key.State, d.key.Shard}, d.n}
	}
	return upsertCounters(tx, "rollout_state_hourly", stateHourlyCols, states, stateHourKey.values, compareStateHourKeys)
}

func recordMove(old, next *server.DeviceRollout) []delta[recordKey] {
	var o, n *recordKey
	if old != nil {
		k := recordKeyOf(old)
		o = &k
	}
	if next != nil {
		k := recordKeyOf(next)
		n = &k
	}
	return move(o, n)
}

// countResult moves the rollups of a report that took a record from old
// to next at receivedAt: results per hour, offer-to-install times and
// failure codes. Only a change of state counts, so a second report of
// the same result (another report id) is not counted twice.
func countResult(tx *gorm.DB, old, next *server.DeviceRollout, errorCode string, receivedAt time.Time) error {
	if old.State == next.State {
		return nil
	}
	var installed, failed int64
	switch next.State {
	case server.StateInstalled:
		installed = 1
	case server.StateFailed, server.StateRolledBack:
		failed = 1
	default:
		return nil
	}
	hour := dbTime(receivedAt).Truncate(time.Hour)
	if err := tx.Exec(`INSERT INTO rollout_hourly (rollout_id, hour, installed, failed) VALUES (?, ?, ?, ?)
ON CONFLICT (rollout_id, hour) DO UPDATE SET installed = rollout_hourly.installed + excluded.installed,
	failed = rollout_hourly.failed + excluded.failed`, next.RolloutID, hour, installed, failed).Error; err != nil {
		return fmt.Errorf("update rollout_hourly: %w", err)
	}
	if installed == 1 {
		b := server.InstallTimeBucket(receivedAt.Sub(next.OfferedAt))
		if err := tx.Exec(`INSERT INTO rollout_install_times (rollout_id, bucket, n) VALUES (?, ?, 1)
ON CONFLICT (rollout_id, bucket) DO UPDATE SET n = rollout_install_times.n + 1`, next.RolloutID, b).Error; err != nil {
			return fmt.Errorf("update rollout_install_times: %w", err)
		}
	}
	if next.State == server.StateFailed && errorCode != "" {
		if err := tx.Exec(`INSERT INTO rollout_failures (rollout_id, error_code, n) VALUES (?, ?, 1)
ON CONFLICT (rollout_id, error_code) DO UPDATE SET n = rollout_failures.n + 1`, next.RolloutID, errorCode).Error; err != nil {
			return fmt.Errorf("update rollout_failures: %w", err)
		}
	}
	return nil
}

// DeleteDailyRollupsBefore implements server.DeviceStore: whole days of
// fleet_daily and fleet_daily_totals, through their primary keys (day
// first).
func (s *DeviceStore) DeleteDailyRollupsBefore(ctx context.Context, t time.Time) (int64, error) {
	day := rollupDay(t)
	var total int64
	err := s.db.gorm.WithContext(ctx).Transaction(func(tx *gorm.DB) error {
		for _, table := range []string{"fleet_daily", "fleet_daily_totals"} {
			res := tx.Exec("DELETE FROM "+table+" WHERE day < ?", day)
			if res.Error != nil {
				return fmt.Errorf("delete old %s rows: %w", table, res.Error)
			}
			total += res.RowsAffected
		}
		return nil
	})
	return total, err
}
