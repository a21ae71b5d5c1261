package sqlstore

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"gorm.io/gorm"
	"gorm.io/gorm/clause"

	"github.com/patchfleet/ota/server"
)

type reportRow struct {
	DeviceID   string `gorm:"primaryKey"`
	ReportID   string `gorm:"primaryKey"`
	PatchID    string
	Target     string
	State      string
	ErrorCode  string
	Message    string
	At         time.Time
	ReceivedAt time.Time
}

func (reportRow) TableName() string { return "device_reports" }

type patchStateRow struct {
	DeviceID  string `gorm:"primaryKey"`
	PatchID   string `gorm:"primaryKey"`
	State     string
	ErrorCode string
	At        time.Time
}

func (patchStateRow) TableName() string { return "device_patch_states" }

// stateRank is SQL numbering the state in col by its place in
// server.ReportStates (1, 2, ...; 0 for anything else), so that of two
// reports made at the same instant the one further along wins.
func stateRank(col string) string {
	var b strings.Builder
	b.WriteString("CASE " + col)
	for i, st := range server.ReportStates {
		fmt.Fprintf(&b, " WHEN '%s' THEN %d", strings.ReplaceAll(st, "'", "''"), i+1)
	}
	b.WriteString(" ELSE 0 END")
	return b.String()
}

// upsertStateSQL moves a device's state for a patch to the incoming
// report only if that report is newer, so reports arriving out of order
// end in the state of the latest one. Under concurrent reports for the
// same device and patch, PostgreSQL re-checks the WHERE against the row
// it locked, and SQLite has one writer at a time.
var upsertStateSQL = `INSERT INTO device_patch_states (device_id, patch_id, state, error_code, at)
VALUES (?, ?, ?, ?, ?)
ON CONFLICT (device_id, patch_id) DO UPDATE SET state = excluded.state, error_code = excluded.error_code, at = excluded.at
WHERE excluded.at > device_patch_states.at
	OR (excluded.at = device_patch_states.at AND ` + stateRank("excluded.state") + ` > ` + stateRank("device_patch_states.state") + `)`

// AddReport implements server.DeviceStore. The report and the state it
// implies commit together. A report whose (device, report id) is stored
// already is compared with the stored one in the same transaction: the
// same content is a retry (duplicate, nothing changes), other content is
// ErrConflict (nothing changes either). On PostgreSQL the INSERT waits
// for a concurrent transaction inserting the same key and the SELECT, a
// new READ COMMITTED snapshot, sees what it committed; on SQLite the
// transaction holds the write lock (BEGIN IMMEDIATE) throughout.
func (s *DeviceStore) AddReport(ctx context.Context, r server.Report) (server.ReportOutcome, error) {
	var out server.ReportOutcome
	if !slices.Contains(server.ReportStates, r.State) {
		return out, fmt.Errorf("report state %q: %w", r.State, server.ErrInvalid)
	}
	row := reportRow{DeviceID: r.DeviceID, ReportID: r.ID, PatchID: r.PatchID, Target: r.Target, State: r.State,
		ErrorCode: r.ErrorCode, Message: r.Message, At: dbTime(r.At), ReceivedAt: dbTime(r.ReceivedAt)}
	err := s.db.gorm.WithContext(ctx).Transaction(func(tx *gorm.DB) error {
		res := tx.Clauses(clause.OnConflict{
			Columns:   []clause.Column{{Name: "device_id"}, {Name: "report_id"}},
			DoNothing: true,
		}).Create(&row)
		if res.Error != nil {
			return res.Error
		}
		if res.RowsAffected == 1 {
			if err := tx.Exec(upsertStateSQL, row.DeviceID, row.PatchID, row.State, row.ErrorCode, row.At).Error; err != nil {
				return err
			}
			moved, err := s.observe(tx, r)
			if moved != nil {
				out.RolloutID, out.RolloutState = moved.RolloutID, moved.State
			}
			return err
		}
		var stored []reportRow
		if err := tx.Where("device_id = ? AND report_id = ?", row.DeviceID, row.ReportID).Find(&stored).Error; err != nil {
			return err
		}
		// None: deleted since the INSERT saw it, by retention or by the
		// device's erasure; it was stored, so this is still a retry.
		if len(stored) == 1 && !sameReport(stored[0], row) {
			return fmt.Errorf("%w: report_id %s already used for a different report", server.ErrConflict, r.ID)
		}
		out.Duplicate = true
		return nil
	})
	if errors.Is(err, gorm.ErrForeignKeyViolated) {
		return server.ReportOutcome{}, fmt.Errorf("device %s: %w", r.DeviceID, server.ErrNotFound)
	}
	if errors.Is(err, server.ErrConflict) {
		return server.ReportOutcome{}, err
	}
	if err != nil {
		return server.ReportOutcome{}, fmt.Errorf("add report: %w", err)
	}
	return out, nil
}

// reportRecordSQL finds the record a report moves: the one of the rollout
// it names, else the device's latest offer of its patch, with the
// device's enrollment and the rollout's start (server.EnrolledLate; the
// device row is the one the report's token found, by its key). FOR
// UPDATE (on PostgreSQL) holds the record until the transaction ends, so
// two reports of one device at once move it one after the other.
const reportRecordSQL = `SELECT dr.rollout_id, dr.device_id, dr.model, dr.starting_build, dr.offered_at, dr.last_offered_at,
	dr.state, dr.attempts, dr.last_failure_at, dr.result_at, d.enrolled_at, ro.started_at
FROM device_rollouts dr JOIN rollouts ro ON ro.id = dr.rollout_id JOIN devices d ON d.id = dr.device_id
WHERE dr.device_id = ? AND ro.patch_id = ?
ORDER BY CASE WHEN dr.rollout_id = ? THEN 0 ELSE 1 END, dr.last_offered_at DESC, dr.rollout_id DESC
LIMIT 1`

// reportRecordRow is what reportRecordSQL reads.
type reportRecordRow struct {
	Record     deviceRolloutRow `gorm:"embedded"`
	EnrolledAt time.Time
	StartedAt  *time.Time
}

// observe moves the device's rollout record that report r is about by
// server.DeviceRollout.Observe, with the rollups, in tx, and marks it
// enrolled_late when the device enrolled after the rollout started (its
// results then count in the reports but not toward health: see
// RolloutResults). It returns the record as moved, or nil when there is
// none or it did not move.
func (s *DeviceStore) observe(tx *gorm.DB, r server.Report) (*server.DeviceRollout, error) {
	var rows []reportRecordRow
	lock := ""
	if s.db.dialect == dialectPostgres {
		lock = " FOR UPDATE OF dr"
	}
	if err := tx.Raw(reportRecordSQL+lock, r.DeviceID, r.PatchID, r.RolloutID).Scan(&rows).Error; err != nil {
		return nil, fmt.Errorf("read rollout record: %w", err)
	}
	if len(rows) == 0 {
		return nil, nil
	}
	old := rows[0].Record.deviceRollout()
	next := *old
	next.Observe(r.State, r.ReceivedAt)
	if next == *old {
		return nil, nil
	}
	late := server.EnrolledLate(rows[0].EnrolledAt, readTime(rows[0].StartedAt))
	err := tx.Exec(`UPDATE device_rollouts SET state = ?, last_failure_at = ?, result_at = ?, enrolled_late = ?
WHERE rollout_id = ? AND device_id = ?`, next.State, optionalTime(next.LastFailureAt), optionalTime(next.ResultAt), late,
		next.RolloutID, next.DeviceID).Error
	if err != nil {
		return nil, fmt.Errorf("move rollout record: %w", err)
	}
	if err := moveRecords(tx, recordMove(old, &next), r.ReceivedAt); err != nil {
		return nil, err
	}
	if err := countResult(tx, old, &next, r.ErrorCode, r.ReceivedAt); err != nil {
		return nil, err
	}
	return &next, nil
}

// sameReport reports whether two rows of one report id hold the same
// report; when it arrived does not count.
func sameReport(a, b reportRow) bool {
	return a.PatchID == b.PatchID && a.Target == b.Target && a.State == b.State &&
		a.ErrorCode == b.ErrorCode && a.Message == b.Message && a.At.Equal(b.At)
}

// defaultPruneBatch is how many reports DeleteReportsBefore deletes per
// statement. A single DELETE of months of reports would hold SQLite's
// write lock long enough for check-ins to give up (busy_timeout).
const defaultPruneBatch = 5000

// DeleteReportsBefore implements server.DeviceStore. It deletes in
// batches, each committed on its own; on error it returns the number
// deleted so far.
func (s *DeviceStore) DeleteReportsBefore(ctx context.Context, t time.Time) (int64, error) {
	var total int64
	for {
		res := s.db.gorm.WithContext(ctx).Exec(`DELETE FROM device_reports WHERE (device_id, report_id) IN (
	SELECT device_id, report_id FROM device_reports WHERE received_at < ? LIMIT ?)`, dbTime(t), s.pruneBatch)
		if res.Error != nil {
			return total, fmt.Errorf("delete reports: %w", res.Error)
		}
		total += res.RowsAffected
		if res.RowsAffected < int64(s.pruneBatch) {
			return total, nil
		}
	}
}

// PatchStates implements server.DeviceStore, ordered by patch id. An
// unknown device has no states.
func (s *DeviceStore) PatchStates(ctx context.Context, deviceID string) ([]server.PatchState, error) {
	var rows []patchStateRow
	if err := s.db.gorm.WithContext(ctx).Where("device_id = ?", deviceID).Order("patch_id").Find(&rows).Error; err != nil {
		return nil, fmt.Errorf("list patch states: %w", err)
	}
	out := make([]server.PatchState, len(rows))
	for i, r := range rows {
		out[i] = server.PatchState{PatchID: r.PatchID, State: r.State, ErrorCode: r.ErrorCode, At: r.At.UTC()}
	}
	return out, nil
}

// Reports implements server.DeviceStore: by the handset's time, then by
// arrival. An unknown device has no reports.
func (s *DeviceStore) Reports(ctx context.Context, deviceID string) ([]server.Report, error) {
	var rows []reportRow
	if err := s.db.gorm.WithContext(ctx).Where("device_id = ?", deviceID).Order("at, received_at, report_id").Find(&rows).Error; err != nil {
		return nil, fmt.Errorf("list reports: %w", err)
	}
	out := make([]server.Report, len(rows))
	for i, r := range rows {
		out[i] = server.Report{ID: r.ReportID, DeviceID: r.DeviceID, PatchID: r.PatchID, Target: r.Target,
			State: r.State, ErrorCode: r.ErrorCode, Message: r.Message, At: r.At.UTC(), ReceivedAt: r.ReceivedAt.UTC()}
	}
	return out, nil
}
