package sqlstore

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"gorm.io/gorm"

	"github.com/patchfleet/ota/server/errs"
	"github.com/patchfleet/ota/server/handsets"
	"github.com/patchfleet/ota/server/rollout"
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
// handsets.ReportStates (1, 2, ...; 0 for anything else), so that of two
// reports made at the same instant the one further along wins.
func stateRank(col string) string {
	var b strings.Builder
	b.WriteString("CASE " + col)
	for i, st := range handsets.ReportStates {
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
` + upsertStateConflict

// upsertStateConflict is the conflict clause of upsertStateSQL.
var upsertStateConflict = `ON CONFLICT (device_id, patch_id) DO UPDATE SET state = excluded.state, error_code = excluded.error_code, at = excluded.at
WHERE excluded.at > device_patch_states.at
	OR (excluded.at = device_patch_states.at AND ` + stateRank("excluded.state") + ` > ` + stateRank("device_patch_states.state") + `)`

// AddReport implements handsets.DeviceStore. The report, the state it
// implies and the move of the rollout record it is about (with its
// rollup deltas) are one write (DB.write). A report whose (device,
// report id) is stored already is compared with the stored one in the
// same write: the same content is a retry (duplicate, nothing changes),
// other content is ErrConflict (nothing changes either). On PostgreSQL
// the INSERT waits for a concurrent transaction inserting the same key
// and the SELECT, a new READ COMMITTED snapshot, sees what it committed;
// on SQLite the transaction holds the write lock throughout.
//
// On PostgreSQL the write is two statements (storeReportPostgresSQL,
// then the record's move with its deltas), and the only rows it locks
// are the device's own: its report, its state and its record.
func (s *DeviceStore) AddReport(ctx context.Context, r handsets.Report) (handsets.ReportOutcome, error) {
	var out handsets.ReportOutcome
	if !slices.Contains(handsets.ReportStates, r.State) {
		return out, fmt.Errorf("report state %q: %w", r.State, errs.ErrInvalid)
	}
	row := reportRow{DeviceID: r.DeviceID, ReportID: r.ID, PatchID: r.PatchID, Target: r.Target, State: r.State,
		ErrorCode: r.ErrorCode, Message: r.Message, At: dbTime(r.At), ReceivedAt: dbTime(r.ReceivedAt)}
	var conflict bool
	err := s.db.write(ctx, false, func(x sqlExec) error {
		out, conflict = handsets.ReportOutcome{}, false
		store := s.storeReportSQLite
		if s.db.dialect == dialectPostgres {
			store = s.storeReportPostgres
		}
		inserted, rec, err := store(x, row, r.RolloutID)
		if err != nil {
			return err
		}
		if inserted {
			moved, err := s.observe(x, r, rec)
			if moved != nil {
				out.RolloutID, out.RolloutState = moved.RolloutID, moved.State
			}
			return err
		}
		stored, found, err := storedReport(x, row.DeviceID, row.ReportID)
		if err != nil {
			return err
		}
		// Not found: deleted since the INSERT saw it, by retention or by
		// the device's erasure; it was stored, so this is still a retry.
		conflict = found && !sameReport(stored, row)
		out.Duplicate = !conflict
		return nil
	})
	err = s.db.rawErr(err)
	if errors.Is(err, gorm.ErrForeignKeyViolated) {
		return handsets.ReportOutcome{}, fmt.Errorf("device %s: %w", r.DeviceID, errs.ErrNotFound)
	}
	if err != nil {
		return handsets.ReportOutcome{}, fmt.Errorf("add report: %w", err)
	}
	if conflict {
		return handsets.ReportOutcome{}, fmt.Errorf("%w: report_id %s already used for a different report", errs.ErrConflict, r.ID)
	}
	return out, nil
}

// storedReport reads the stored report (device, report id).
func storedReport(x sqlExec, deviceID, reportID string) (reportRow, bool, error) {
	rows, err := x.query(`SELECT patch_id, target, state, error_code, message, at FROM device_reports
WHERE device_id = ? AND report_id = ?`, deviceID, reportID)
	if err != nil {
		return reportRow{}, false, err
	}
	defer rows.Close()
	r := reportRow{DeviceID: deviceID, ReportID: reportID}
	if !rows.Next() {
		return r, false, rows.Err()
	}
	if err := rows.Scan(&r.PatchID, &r.Target, &r.State, &r.ErrorCode, &r.Message, &r.At); err != nil {
		return r, false, err
	}
	return r, true, rows.Close()
}

// reportRecordSQL finds the record a report moves: the one of the rollout
// it names, else the device's latest offer of its patch, with the
// device's enrollment and the rollout's start (rollout.EnrolledLate; the
// device row is the one the report's token found, by its key). FOR
// UPDATE OF dr (on PostgreSQL) holds the record until the transaction
// ends, so two reports of one device at once move it one after the
// other. The device's build, patches and last_seen and the rollout's
// installs_build tell whether the record is confirmed (rollout.Confirmed)
// before the report moves it.
const reportRecordSQL = `SELECT dr.rollout_id, dr.device_id, dr.model, dr.starting_build, dr.offered_at, dr.last_offered_at,
	dr.state, dr.attempts, dr.last_failure_at, dr.result_at, dr.full_only, d.enrolled_at, ro.started_at,
	d.build, d.installed_patches, d.last_seen, ro.installs_build, ro.patch_id
FROM device_rollouts dr JOIN rollouts ro ON ro.id = dr.rollout_id JOIN devices d ON d.id = dr.device_id
WHERE dr.device_id = ? AND ro.patch_id = ?
ORDER BY CASE WHEN dr.rollout_id = ? THEN 0 ELSE 1 END, dr.last_offered_at DESC, dr.rollout_id DESC
LIMIT 1`

// reportRecordRow is what reportRecordSQL reads.
type reportRecordRow struct {
	Record     deviceRolloutRow
	EnrolledAt time.Time
	StartedAt  *time.Time
	// Device is the device's build, patches and last_seen; Release the
	// rollout's installs_build and patch.
	Device  handsets.Device
	Release rollout.RolloutRelease
}

// insertReportSQL stores a report unless its key is taken.
const insertReportSQL = `INSERT INTO device_reports (device_id, report_id, patch_id, target, state, error_code, message, at, received_at)
	VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (device_id, report_id) DO NOTHING`

func (r *reportRow) insertArgs() []any {
	return []any{r.DeviceID, r.ReportID, r.PatchID, r.Target, r.State, r.ErrorCode, r.Message, r.At, r.ReceivedAt}
}

// storeReportSQLite inserts the report unless its key is taken and, if
// it did, moves the device's state for the patch and reads the record
// the report is about (nil when there is none): three statements in the
// write.
func (s *DeviceStore) storeReportSQLite(x sqlExec, row reportRow, rolloutID string) (bool, *reportRecordRow, error) {
	n, err := x.exec(insertReportSQL, row.insertArgs()...)
	if err != nil || n == 0 {
		return false, nil, err
	}
	if _, err := x.exec(upsertStateSQL, row.DeviceID, row.PatchID, row.State, row.ErrorCode, row.At); err != nil {
		return false, nil, err
	}
	rows, err := x.query(reportRecordSQL, row.DeviceID, row.PatchID, rolloutID)
	if err != nil {
		return false, nil, fmt.Errorf("read rollout record: %w", err)
	}
	rec, err := scanReportRecord(rows)
	return true, rec, err
}

// storeReportPostgresSQL is storeReportSQLite in one statement: the
// insert, the state's upsert if the insert wrote a row, and the record
// (locked), LEFT JOINed to the insert's count so that one row comes back
// whether or not a record exists. PostgreSQL runs the main query (the
// record's lock) before the upsert, and the report's foreign key locks
// the device row last (FOR KEY SHARE): record, state, device, the order
// deleteDevice takes them in. The upsert's parameters are cast:
// PostgreSQL infers no types for an INSERT ... SELECT's select list.
var storeReportPostgresSQL = `WITH ins AS (` + insertReportSQL + ` RETURNING 1),
st AS (INSERT INTO device_patch_states (device_id, patch_id, state, error_code, at)
	SELECT CAST(? AS text), CAST(? AS text), CAST(? AS text), CAST(? AS text), CAST(? AS timestamp) FROM ins
` + upsertStateConflict + `)
SELECT (SELECT COUNT(*) FROM ins), rec.* FROM (SELECT 1) one LEFT JOIN (` + reportRecordSQL + ` FOR UPDATE OF dr) rec ON true`

// storeReportPostgres is storeReportSQLite on PostgreSQL, in one
// statement (storeReportPostgresSQL).
func (s *DeviceStore) storeReportPostgres(x sqlExec, row reportRow, rolloutID string) (bool, *reportRecordRow, error) {
	args := append(row.insertArgs(), row.DeviceID, row.PatchID, row.State, row.ErrorCode, row.At,
		row.DeviceID, row.PatchID, rolloutID)
	rows, err := x.query(storeReportPostgresSQL, args...)
	if err != nil {
		return false, nil, err
	}
	var inserted int64
	rec, err := scanReportRecord(rows, &inserted)
	if err != nil {
		return false, nil, err
	}
	return inserted > 0, rec, nil
}

// scanReportRecord reads the one row of a reportRecordSQL query (nil
// when there is none or its record columns are NULL), after leading
// count columns into counts, and closes rows.
func scanReportRecord(rows *sql.Rows, counts ...*int64) (*reportRecordRow, error) {
	defer rows.Close()
	if !rows.Next() {
		return nil, rows.Err()
	}
	var (
		rID, rDev, rModel, rBuild, rState    sql.NullString
		rOffered, rLastOffered, rFail, rDone sql.NullTime
		rAttempts                            sql.NullInt64
		rFullOnly                            sql.NullBool
		enrolled, started, seen              sql.NullTime
		dBuild, dPatches, rInstalls, rPatch  sql.NullString
	)
	dest := []any{&rID, &rDev, &rModel, &rBuild, &rOffered, &rLastOffered, &rState, &rAttempts, &rFail, &rDone, &rFullOnly,
		&enrolled, &started, &dBuild, &dPatches, &seen, &rInstalls, &rPatch}
	for i := len(counts) - 1; i >= 0; i-- {
		dest = append([]any{counts[i]}, dest...)
	}
	if err := rows.Scan(dest...); err != nil {
		return nil, err
	}
	if err := rows.Close(); err != nil || !rID.Valid {
		return nil, err
	}
	return &reportRecordRow{Record: deviceRolloutRow{RolloutID: rID.String, DeviceID: rDev.String, Model: rModel.String,
		StartingBuild: rBuild.String, OfferedAt: rOffered.Time, LastOfferedAt: rLastOffered.Time, State: rState.String,
		Attempts: int(rAttempts.Int64), LastFailureAt: nullTime(rFail), ResultAt: nullTime(rDone), FullOnly: rFullOnly.Bool},
		EnrolledAt: enrolled.Time, StartedAt: nullTime(started),
		Device:  handsets.Device{Build: dBuild.String, InstalledPatches: decodePatches(dPatches.String), LastSeen: seen.Time.UTC()},
		Release: rollout.RolloutRelease{InstallsBuild: rInstalls.String, PatchID: rPatch.String}}, nil
}

// observe moves rec, the device's rollout record that report r is
// about, by handsets.DeviceRollout.Observe, with its rollup deltas, in
// the write x, and marks it enrolled_late when the device enrolled after
// the rollout started (its results then count in the reports but not
// toward health: see RolloutResults). It returns the record as moved, or
// nil when there is none or it did not move.
func (s *DeviceStore) observe(x sqlExec, r handsets.Report, rec *reportRecordRow) (*handsets.DeviceRollout, error) {
	if rec == nil {
		return nil, nil
	}
	old := rec.Record.deviceRollout()
	next := *old
	next.ObserveReport(r.State, r.ErrorCode, r.ReceivedAt)
	if next == *old {
		return nil, nil
	}
	late := rollout.EnrolledLate(rec.EnrolledAt, readTime(rec.StartedAt))
	deltas := moveRecords(recordMove(old, &next), r.ReceivedAt)
	deltas.merge(countResult(old, &next, r.ErrorCode, r.ReceivedAt))
	if rollout.Confirmed(&rec.Device, old, rec.Release) && !rollout.Confirmed(&rec.Device, &next, rec.Release) {
		// A confirmed install reported again (rolled back, or installed
		// anew): confirmed again only by a check-in after this report.
		deltas.add(confirmationsTable, old.RolloutID, old.Model, old.StartingBuild, int64(-1))
	}
	_, err := s.db.changeWithDeltas(x, `UPDATE device_rollouts SET state = ?, last_failure_at = ?, result_at = ?, enrolled_late = ?,
	full_only = ? WHERE rollout_id = ? AND device_id = ?`, []any{next.State, optionalTime(next.LastFailureAt), optionalTime(next.ResultAt), late,
		next.FullOnly, next.RolloutID, next.DeviceID}, deltas)
	if err != nil {
		return nil, fmt.Errorf("move rollout record: %w", err)
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

// DeleteReportsBefore implements handsets.DeviceStore. It deletes in
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

// PatchStates implements handsets.DeviceStore, ordered by patch id. An
// unknown device has no states.
func (s *DeviceStore) PatchStates(ctx context.Context, deviceID string) ([]handsets.PatchState, error) {
	var rows []patchStateRow
	if err := s.db.gorm.WithContext(ctx).Where("device_id = ?", deviceID).Order("patch_id").Find(&rows).Error; err != nil {
		return nil, fmt.Errorf("list patch states: %w", err)
	}
	out := make([]handsets.PatchState, len(rows))
	for i, r := range rows {
		out[i] = handsets.PatchState{PatchID: r.PatchID, State: r.State, ErrorCode: r.ErrorCode, At: r.At.UTC()}
	}
	return out, nil
}

// Reports implements handsets.DeviceStore: by the handset's time, then by
// arrival. An unknown device has no reports.
func (s *DeviceStore) Reports(ctx context.Context, deviceID string) ([]handsets.Report, error) {
	var rows []reportRow
	if err := s.db.gorm.WithContext(ctx).Where("device_id = ?", deviceID).Order("at, received_at, report_id").Find(&rows).Error; err != nil {
		return nil, fmt.Errorf("list reports: %w", err)
	}
	out := make([]handsets.Report, len(rows))
	for i, r := range rows {
		out[i] = handsets.Report{ID: r.ReportID, DeviceID: r.DeviceID, PatchID: r.PatchID, Target: r.Target,
			State: r.State, ErrorCode: r.ErrorCode, Message: r.Message, At: r.At.UTC(), ReceivedAt: r.ReceivedAt.UTC()}
	}
	return out, nil
}
