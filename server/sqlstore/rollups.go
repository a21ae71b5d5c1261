package sqlstore

import (
	"context"
	"fmt"
	"time"

	"gorm.io/gorm"

	"github.com/patchfleet/ota/server"
	"github.com/patchfleet/ota/server/handsets"
	"github.com/patchfleet/ota/server/rollout"
)

// The deltas of the rollups of migration 7 (see rollupsSchema): each
// change to what they count appends them to the rollups' logs in the
// same statement or transaction (see counters.go), so a report never
// disagrees with the rows it sums. A move is a -1 on the old key and a
// +1 on the new one.

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

func (k fleetKey) values() []any {
	return []any{k.Model, k.Channel, k.Region, k.Build, k.Patches, k.Messaging, k.Encryption}
}

func (k dailyKey) values() []any { return []any{k.Day, k.Model, k.Region, k.Messaging, k.Encryption} }

// addDeltas adds deltas of keys with values to b's table t.
func addDeltas[K interface{ values() []any }](b *deltaBatch, t *counterTable, deltas []delta[K]) {
	for _, d := range deltas {
		b.add(t, append(d.key.values(), d.n)...)
	}
}

// eraseDevice is the deltas that take an erased device out of the fleet
// rollups: its current row and the day it was last seen (the fold then
// deletes rows it leaves empty). The days before keep their counts: they
// are sums that say nothing of one device unless it was alone in its
// row, and that a handset was seen on a day is not what an erasure asks
// to forget less than what it was. (Reports hide small cells.)
func eraseDevice(old *deviceRow) deltaBatch {
	var b deltaBatch
	fk, dk := fleetKeyOf(old), dailyKeyOf(old)
	addDeltas(&b, fleetCountsTable, []delta[fleetKey]{{fk, -1}})
	addDeltas(&b, fleetDailyTable, []delta[dailyKey]{{dk, -1}})
	b.add(fleetTotalsTable, dk.Day, dk.Messaging, dk.Encryption, server.RollupShard(old.ID), int64(-1))
	return b
}

// eraseRecords is the deltas that take an erased device's rollout
// records out of rollout_counts, and out of the states over time from
// the hour of at on (before it, the handset is a count among others, as
// in the daily rollups).
func eraseRecords(records []*handsets.DeviceRollout, at time.Time) deltaBatch {
	gone := make([]delta[recordKey], len(records))
	for i, dr := range records {
		gone[i] = delta[recordKey]{recordKeyOf(dr), -1}
	}
	return moveRecords(gone, at)
}

// moveDevice is the deltas of the fleet rollups for a device going from
// old (nil when it enrolls) to next. The daily rollups count a device on
// the day of its last_seen: a device seen on a new day is added there
// and stays counted on the old day; one whose state changes on the same
// day moves within it. Erasures take eraseDevice.
func moveDevice(old, next *deviceRow) deltaBatch {
	var b deltaBatch
	var oldKey, nextKey *fleetKey
	if old != nil {
		k := fleetKeyOf(old)
		oldKey = &k
	}
	if next != nil {
		k := fleetKeyOf(next)
		nextKey = &k
	}
	addDeltas(&b, fleetCountsTable, move(oldKey, nextKey))
	var oldDay *dailyKey
	nextDay := dailyKeyOf(next)
	if old != nil && rollupDay(old.LastSeen) == nextDay.Day {
		k := dailyKeyOf(old)
		oldDay = &k
	}
	dailies := move(oldDay, &nextDay)
	addDeltas(&b, fleetDailyTable, dailies)
	shard := server.RollupShard(next.ID)
	for _, d := range dailies {
		b.add(fleetTotalsTable, d.key.Day, d.key.Messaging, d.key.Encryption, shard, d.n)
	}
	return b
}

// recordKey is a rollout_counts row.
type recordKey struct {
	Rollout, Model, Build, State string
	Shard                        int
}

func (k recordKey) values() []any { return []any{k.Rollout, k.Model, k.Build, k.State, k.Shard} }

func recordKeyOf(dr *handsets.DeviceRollout) recordKey {
	return recordKey{dr.RolloutID, dr.Model, dr.StartingBuild, dr.State, server.RollupShard(dr.DeviceID)}
}

// moveRecords is rollout_counts deltas (recordMove's) made at at, and
// the same deltas in the hour of at in rollout_state_hourly: the net
// change, within one hour, of how many of a rollout's records are in a
// state.
func moveRecords(deltas []delta[recordKey], at time.Time) deltaBatch {
	var b deltaBatch
	addDeltas(&b, rolloutCountsTable, deltas)
	hour := dbTime(at).Truncate(time.Hour)
	for _, d := range deltas {
		b.add(stateHourlyTable, d.key.Rollout, hour, d.key.State, d.key.Shard, d.n)
	}
	return b
}

func recordMove(old, next *handsets.DeviceRollout) []delta[recordKey] {
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

// countPayload is the deltas of an offer's payload (a first offer or a
// retry): one offer of its bytes, against the full image's.
func countPayload(dec rollout.Decision) deltaBatch {
	var b deltaBatch
	if p := dec.Payload; p.Target != "" {
		b.add(payloadsTable, dec.RolloutID, p.FromBuild, int64(1), p.Bytes, p.FullBytes)
	}
	return b
}

// countResult is the deltas of a report that took a record from old to
// next at receivedAt: results per hour, offer-to-install times and
// failure codes. Only a change of state counts, so a second report of
// the same result (another report id) is not counted twice.
func countResult(old, next *handsets.DeviceRollout, errorCode string, receivedAt time.Time) deltaBatch {
	var b deltaBatch
	if old.State == next.State {
		return b
	}
	var installed, failed int64
	switch next.State {
	case handsets.StateInstalled:
		installed = 1
	case handsets.StateFailed, handsets.StateRolledBack:
		failed = 1
	default:
		return b
	}
	b.add(rolloutHourlyTable, next.RolloutID, dbTime(receivedAt).Truncate(time.Hour), installed, failed)
	if installed == 1 {
		b.add(installTimesTable, next.RolloutID, server.InstallTimeBucket(receivedAt.Sub(next.OfferedAt)), int64(1))
	}
	if next.State == handsets.StateFailed && errorCode != "" {
		b.add(failuresTable, next.RolloutID, errorCode, int64(1))
	}
	return b
}

// confirm is the deltas of the check-in at seen that changes records'
// confirmations (rollout.Confirmations): each record's move in or out of
// the confirmed of its rollout, model and starting build, and for one it
// confirms its offer-to-confirmation time (times, as the
// offer-to-install ones, are not taken back).
func confirm(changes []handsets.Confirmation, seen time.Time) deltaBatch {
	var b deltaBatch
	for _, c := range changes {
		r := c.Record
		b.add(confirmationsTable, r.RolloutID, r.Model, r.StartingBuild, c.N)
		if c.N > 0 {
			b.add(confirmTimesTable, r.RolloutID, server.InstallTimeBucket(seen.Sub(r.OfferedAt)), int64(1))
		}
	}
	return b
}

// DeleteDailyRollupsBefore implements handsets.DeviceStore: whole days of
// fleet_daily and fleet_daily_totals, through their primary keys (day
// first), and of their logs.
func (s *DeviceStore) DeleteDailyRollupsBefore(ctx context.Context, t time.Time) (int64, error) {
	day := rollupDay(t)
	var total int64
	err := s.db.gorm.WithContext(ctx).Transaction(func(tx *gorm.DB) error {
		for _, table := range []*counterTable{fleetDailyTable, fleetTotalsTable} {
			for _, name := range []string{table.name, table.log()} {
				res := tx.Exec("DELETE FROM "+name+" WHERE day < ?", day)
				if res.Error != nil {
					return fmt.Errorf("delete old %s rows: %w", name, res.Error)
				}
				if name == table.name {
					total += res.RowsAffected
				}
			}
		}
		return nil
	})
	return total, err
}
