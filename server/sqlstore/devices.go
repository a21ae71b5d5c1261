package sqlstore

import (
	"cmp"
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

// DeviceStore keeps handsets, their reports and install states; it
// implements server.DeviceStore.
type DeviceStore struct {
	db         *DB
	pruneBatch int // tests make it small
}

var _ server.DeviceStore = (*DeviceStore)(nil)

// Devices returns the device store of db.
func (db *DB) Devices() *DeviceStore { return &DeviceStore{db: db, pruneBatch: defaultPruneBatch} }

type deviceRow struct {
	ID             string `gorm:"primaryKey"`
	TokenHash      string
	KeyFingerprint *string
	Model          string
	Build          string
	Channel        string
	Region         string
	// InstalledPatches is ",A,B," (see encodePatches).
	InstalledPatches string
	CloudMessaging   string
	NumberEncryption bool
	EnrolledAt       time.Time
	LastSeen         time.Time
}

func (deviceRow) TableName() string { return "devices" }

func (r *deviceRow) device() *server.Device {
	d := &server.Device{ID: r.ID, Model: r.Model, Build: r.Build, Channel: r.Channel, Region: r.Region,
		InstalledPatches: decodePatches(r.InstalledPatches), CloudMessaging: r.CloudMessaging,
		NumberEncryption: r.NumberEncryption, EnrolledAt: r.EnrolledAt.UTC(), LastSeen: r.LastSeen.UTC()}
	if r.KeyFingerprint != nil {
		d.KeyFingerprint = *r.KeyFingerprint
	}
	return d
}

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

// dbTime is how every timestamp is stored. PostgreSQL keeps microseconds
// and SQLite whatever it is given, so truncating here makes both keep the
// same instant: two reports are a tie on one dialect exactly when they
// are on the other. UTC, because SQLite compares timestamps as text.
func dbTime(t time.Time) time.Time { return t.UTC().Truncate(time.Microsecond) }

// encodePatches stores sorted patch ids as ",A,B,": with a comma on both
// sides of every id, the substring ",ID," finds a patch and nothing else
// (",A," is not in ",AB,"). No patches is the empty string.
func encodePatches(ids []string) (string, error) {
	if len(ids) == 0 {
		return "", nil
	}
	for _, id := range ids {
		if id == "" || strings.Contains(id, ",") {
			return "", fmt.Errorf("installed patch %q: %w", id, server.ErrInvalid)
		}
	}
	sorted := slices.Compact(slices.Sorted(slices.Values(ids)))
	return "," + strings.Join(sorted, ",") + ",", nil
}

func decodePatches(s string) []string {
	s = strings.Trim(s, ",")
	if s == "" {
		return []string{}
	}
	return strings.Split(s, ",")
}

// deviceColumns are the columns that make a server.Device, for RETURNING
// and SELECT lists; token_hash is left out on purpose.
const deviceColumns = "id, key_fingerprint, model, build, channel, region, installed_patches, cloud_messaging, number_encryption, enrolled_at, last_seen"

// maxEnrollAttempts bounds the insert-or-update loop of Enroll; see there.
const maxEnrollAttempts = 3

// Enroll implements server.DeviceStore.
//
// With a key fingerprint it inserts the device unless any unique key
// (id, token hash, fingerprint) is taken, and otherwise updates the
// device that has the fingerprint. ON CONFLICT DO NOTHING has no conflict
// target on purpose: with only key_fingerprint as the arbiter, two
// PostgreSQL sessions enrolling the same key at once can both pass the
// arbiter check and the loser then fails on the primary key (the id
// derives from the key) with a raw unique violation (ReEnrollConcurrent
// caught it, about one run in forty). With every unique
// index an arbiter, the loser waits for the winner's commit and does
// nothing. Each statement is atomic on its own; the loop covers the
// device being erased between the two.
func (s *DeviceStore) Enroll(ctx context.Context, d *server.Device, tokenHash string) (string, bool, error) {
	patches, err := encodePatches(d.InstalledPatches)
	if err != nil {
		return "", false, err
	}
	row := deviceRow{ID: d.ID, TokenHash: tokenHash, Model: d.Model, Build: d.Build, Channel: d.Channel,
		Region: d.Region, InstalledPatches: patches, CloudMessaging: d.CloudMessaging,
		NumberEncryption: d.NumberEncryption, EnrolledAt: dbTime(d.EnrolledAt), LastSeen: dbTime(d.LastSeen)}
	g := s.db.gorm.WithContext(ctx)
	if d.KeyFingerprint == "" {
		err := g.Create(&row).Error
		if errors.Is(err, gorm.ErrDuplicatedKey) {
			return "", false, fmt.Errorf("enroll device %s: id or token taken: %w", d.ID, server.ErrConflict)
		}
		if err != nil {
			return "", false, fmt.Errorf("enroll device: %w", err)
		}
		return d.ID, true, nil
	}
	row.KeyFingerprint = &d.KeyFingerprint
	for range maxEnrollAttempts {
		var ids []string
		err := g.Raw(`INSERT INTO devices (id, token_hash, key_fingerprint, model, build, channel, region,
	installed_patches, cloud_messaging, number_encryption, enrolled_at, last_seen)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT DO NOTHING
RETURNING id`, row.ID, row.TokenHash, row.KeyFingerprint, row.Model, row.Build, row.Channel, row.Region,
			row.InstalledPatches, row.CloudMessaging, row.NumberEncryption, row.EnrolledAt, row.LastSeen).Scan(&ids).Error
		if err = s.db.rawErr(err); err != nil {
			return "", false, fmt.Errorf("enroll device: %w", err)
		}
		if len(ids) == 1 {
			return ids[0], true, nil
		}
		err = g.Raw(`UPDATE devices SET token_hash = ?, model = ?, build = ?, channel = ?, region = ?, last_seen = ?
WHERE key_fingerprint = ?
RETURNING id`, row.TokenHash, row.Model, row.Build, row.Channel, row.Region, row.LastSeen, d.KeyFingerprint).Scan(&ids).Error
		err = s.db.rawErr(err)
		if errors.Is(err, gorm.ErrDuplicatedKey) {
			return "", false, fmt.Errorf("re-enroll device: token taken: %w", server.ErrConflict)
		}
		if err != nil {
			return "", false, fmt.Errorf("re-enroll device: %w", err)
		}
		if len(ids) == 1 {
			return ids[0], false, nil
		}
		// Neither inserted nor found by key: the device was erased in
		// between (try again), or its id is taken by a device with
		// another key (which trying again will not change).
	}
	return "", false, fmt.Errorf("enroll device %s: id or token taken by another device: %w", d.ID, server.ErrConflict)
}

// rawErr translates the driver's error from Raw(...).Scan into gorm's
// (gorm.ErrDuplicatedKey and so on), as TranslateError does for gorm's
// own statements: gorm v1.31 returns the errors of Raw queries as the
// driver made them.
func (db *DB) rawErr(err error) error {
	if t, ok := db.gorm.Dialector.(gorm.ErrorTranslator); ok && err != nil {
		return t.Translate(err)
	}
	return err
}

// checkInSQL is the whole check-in: one statement, so one round trip on
// PostgreSQL (pgx caches the prepared statement per connection) and one
// write lock on SQLite.
const checkInSQL = `UPDATE devices SET build = ?, model = ?, channel = ?, installed_patches = ?,
	cloud_messaging = ?, number_encryption = ?, last_seen = ?
WHERE token_hash = ?
RETURNING ` + deviceColumns

// CheckIn implements server.DeviceStore.
func (s *DeviceStore) CheckIn(ctx context.Context, tokenHash string, ci server.CheckIn, now time.Time) (*server.Device, error) {
	patches, err := encodePatches(ci.InstalledPatches)
	if err != nil {
		return nil, err
	}
	var row deviceRow
	res := s.db.gorm.WithContext(ctx).Raw(checkInSQL, ci.Build, ci.Model, ci.Channel, patches,
		ci.CloudMessaging, ci.NumberEncryption, dbTime(now), tokenHash).Scan(&row)
	if err := s.db.rawErr(res.Error); err != nil {
		return nil, fmt.Errorf("check in: %w", err)
	}
	if res.RowsAffected == 0 {
		return nil, fmt.Errorf("%w: unknown device token", server.ErrUnauthorized)
	}
	return row.device(), nil
}

// DeviceByToken implements server.DeviceStore.
func (s *DeviceStore) DeviceByToken(ctx context.Context, tokenHash string) (*server.Device, error) {
	var row deviceRow
	err := s.db.gorm.WithContext(ctx).Select(deviceColumns).Where("token_hash = ?", tokenHash).Take(&row).Error
	if errors.Is(err, gorm.ErrRecordNotFound) {
		return nil, fmt.Errorf("%w: unknown device token", server.ErrUnauthorized)
	}
	if err != nil {
		return nil, fmt.Errorf("look up device: %w", err)
	}
	return row.device(), nil
}

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
// implies commit together; a retried report (same device and report id)
// changes nothing, even if its content differs.
func (s *DeviceStore) AddReport(ctx context.Context, r server.Report) (bool, error) {
	if !slices.Contains(server.ReportStates, r.State) {
		return false, fmt.Errorf("report state %q: %w", r.State, server.ErrInvalid)
	}
	row := reportRow{DeviceID: r.DeviceID, ReportID: r.ID, PatchID: r.PatchID, Target: r.Target, State: r.State,
		ErrorCode: r.ErrorCode, Message: r.Message, At: dbTime(r.At), ReceivedAt: dbTime(r.ReceivedAt)}
	duplicate := false
	err := s.db.gorm.WithContext(ctx).Transaction(func(tx *gorm.DB) error {
		res := tx.Clauses(clause.OnConflict{
			Columns:   []clause.Column{{Name: "device_id"}, {Name: "report_id"}},
			DoNothing: true,
		}).Create(&row)
		if res.Error != nil {
			return res.Error
		}
		if res.RowsAffected == 0 {
			duplicate = true
			return nil
		}
		return tx.Exec(upsertStateSQL, row.DeviceID, row.PatchID, row.State, row.ErrorCode, row.At).Error
	})
	if errors.Is(err, gorm.ErrForeignKeyViolated) {
		return false, fmt.Errorf("device %s: %w", r.DeviceID, server.ErrNotFound)
	}
	if err != nil {
		return false, fmt.Errorf("add report: %w", err)
	}
	return duplicate, nil
}

// DeleteDevice implements server.DeviceStore. The foreign keys cascade
// too, but the explicit deletes do not depend on SQLite's per-connection
// foreign_keys pragma.
func (s *DeviceStore) DeleteDevice(ctx context.Context, id string) error {
	return s.db.gorm.WithContext(ctx).Transaction(func(tx *gorm.DB) error {
		if err := tx.Where("device_id = ?", id).Delete(&patchStateRow{}).Error; err != nil {
			return fmt.Errorf("delete device states: %w", err)
		}
		if err := tx.Where("device_id = ?", id).Delete(&reportRow{}).Error; err != nil {
			return fmt.Errorf("delete device reports: %w", err)
		}
		res := tx.Where("id = ?", id).Delete(&deviceRow{})
		if res.Error != nil {
			return fmt.Errorf("delete device: %w", res.Error)
		}
		if res.RowsAffected == 0 {
			return fmt.Errorf("device %s: %w", id, server.ErrNotFound)
		}
		return nil
	})
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

// likeEscaper escapes LIKE's wildcards with '!', which is declared with
// ESCAPE; a backslash would depend on standard_conforming_strings.
var likeEscaper = strings.NewReplacer("!", "!!", "%", "!%", "_", "!_")

// hasPatch returns the SQL condition "the device runs patchID" and its
// argument. PostgreSQL: LIKE, with '_' (valid in patch ids) escaped, so a
// pg_trgm index can serve it one day. SQLite: instr, because SQLite's
// LIKE ignores ASCII case unless a per-connection pragma says otherwise,
// and patch ids are case sensitive.
func (s *DeviceStore) hasPatch(patchID string) (string, any) {
	if s.db.dialect == dialectPostgres {
		return "installed_patches LIKE ? ESCAPE '!'", "%," + likeEscaper.Replace(patchID) + ",%"
	}
	return "instr(installed_patches, ?) > 0", "," + patchID + ","
}

// FleetSummary implements server.DeviceStore in two queries: one pass
// over devices grouped by model, one over the patch's states of active
// devices grouped by state and error code. ByModel lists the models with
// active devices.
func (s *DeviceStore) FleetSummary(ctx context.Context, patchID string, activeSince time.Time) (*server.FleetSummary, error) {
	since := dbTime(activeSince)
	match, arg := s.hasPatch(patchID)
	g := s.db.gorm.WithContext(ctx)

	type modelCount struct {
		Model                                string
		Enrolled, Active, Patched, Compliant int64
	}
	var models []modelCount
	err := g.Raw(`SELECT model,
	COUNT(*) AS enrolled,
	COUNT(*) FILTER (WHERE last_seen >= ?) AS active,
	COUNT(*) FILTER (WHERE last_seen >= ? AND `+match+`) AS patched,
	COUNT(*) FILTER (WHERE last_seen >= ? AND `+match+` AND cloud_messaging <> ? AND number_encryption) AS compliant
FROM devices
GROUP BY model
ORDER BY model`, since, since, arg, since, arg, server.MessagingAutoEnabled).Scan(&models).Error
	if err != nil {
		return nil, fmt.Errorf("fleet summary: count devices: %w", err)
	}
	sum := &server.FleetSummary{PatchID: patchID, ByModel: []server.ModelSummary{},
		States: map[string]int64{}, Failures: []server.FailureCount{}}
	for _, m := range models {
		sum.Enrolled += m.Enrolled
		sum.Active += m.Active
		sum.Patched += m.Patched
		sum.Compliant += m.Compliant
		if m.Active > 0 {
			sum.ByModel = append(sum.ByModel, server.ModelSummary{Model: m.Model, Active: m.Active, Patched: m.Patched, Compliant: m.Compliant})
		}
	}

	type stateCount struct {
		State, ErrorCode string
		Count            int64
	}
	var states []stateCount
	err = g.Raw(`SELECT s.state, s.error_code, COUNT(*) AS count
FROM device_patch_states s JOIN devices d ON d.id = s.device_id
WHERE s.patch_id = ? AND d.last_seen >= ?
GROUP BY s.state, s.error_code`, patchID, since).Scan(&states).Error
	if err != nil {
		return nil, fmt.Errorf("fleet summary: count states: %w", err)
	}
	for _, st := range states {
		sum.States[st.State] += st.Count
		if st.State == server.StateFailed {
			sum.Failures = append(sum.Failures, server.FailureCount{ErrorCode: st.ErrorCode, Count: st.Count})
		}
	}
	slices.SortFunc(sum.Failures, func(a, b server.FailureCount) int {
		return cmp.Or(cmp.Compare(b.Count, a.Count), strings.Compare(a.ErrorCode, b.ErrorCode))
	})
	return sum, nil
}
