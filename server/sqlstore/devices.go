package sqlstore

import (
	"cmp"
	"context"
	"database/sql"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"time"

	"gorm.io/gorm"
	"gorm.io/gorm/clause"

	"github.com/patchfleet/ota/server/errs"
	"github.com/patchfleet/ota/server/handsets"
	"github.com/patchfleet/ota/server/rollout"
)

// DeviceStore keeps handsets, their reports and install states; it
// implements handsets.DeviceStore.
type DeviceStore struct {
	db         *DB
	pruneBatch int // tests make it small
}

var _ handsets.DeviceStore = (*DeviceStore)(nil)

// Devices returns the device store of db.
func (db *DB) Devices() *DeviceStore { return &DeviceStore{db: db, pruneBatch: defaultPruneBatch} }

type deviceRow struct {
	ID             string `gorm:"primaryKey"`
	TokenHash      string
	KeyFingerprint *string
	KeySignedAt    *time.Time
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
	Rev              int64
}

func (deviceRow) TableName() string { return "devices" }

func (r *deviceRow) device() *handsets.Device {
	d := &handsets.Device{ID: r.ID, Model: r.Model, Build: r.Build, Channel: r.Channel, Region: r.Region,
		InstalledPatches: decodePatches(r.InstalledPatches), CloudMessaging: r.CloudMessaging,
		NumberEncryption: r.NumberEncryption, EnrolledAt: r.EnrolledAt.UTC(), LastSeen: r.LastSeen.UTC(), Rev: r.Rev}
	if r.KeyFingerprint != nil {
		d.KeyFingerprint = *r.KeyFingerprint
	}
	if r.KeySignedAt != nil {
		d.KeySignedAt = r.KeySignedAt.UTC()
	}
	return d
}

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
			return "", fmt.Errorf("installed patch %q: %w", id, errs.ErrInvalid)
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

// deviceColumns are the columns that make a handsets.Device, for RETURNING
// and SELECT lists; token_hash is left out on purpose.
const deviceColumns = "id, key_fingerprint, key_signed_at, model, build, channel, region, installed_patches, cloud_messaging, number_encryption, enrolled_at, last_seen, rev"

// maxEnrollAttempts bounds the insert-or-update loop of Enroll; see there.
const maxEnrollAttempts = 3

// Enroll implements handsets.DeviceStore.
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
//
// The update is conditional on the signed timestamp being newer than the
// stored one, in its WHERE: SQLite runs one writer at a time, and
// PostgreSQL re-checks the WHERE against the row it locked (after a
// concurrent update commits, READ COMMITTED), so of two enrollments with
// the same timestamp (a replay racing the original, or two replays) at
// most one updates.
func (s *DeviceStore) Enroll(ctx context.Context, d *handsets.Device, tokenHash string) (string, bool, error) {
	patches, err := encodePatches(d.InstalledPatches)
	if err != nil {
		return "", false, err
	}
	row := deviceRow{ID: d.ID, TokenHash: tokenHash, Model: d.Model, Build: d.Build, Channel: d.Channel,
		Region: d.Region, InstalledPatches: patches, CloudMessaging: d.CloudMessaging,
		NumberEncryption: d.NumberEncryption, EnrolledAt: dbTime(d.EnrolledAt), LastSeen: dbTime(d.LastSeen)}
	g := s.db.gorm.WithContext(ctx)
	if d.KeyFingerprint == "" {
		err := g.Transaction(func(tx *gorm.DB) error {
			if err := tx.Create(&row).Error; err != nil {
				return err
			}
			b := moveDevice(nil, &row)
			return b.insert(gormExec{tx})
		})
		if errors.Is(err, gorm.ErrDuplicatedKey) {
			return "", false, fmt.Errorf("enroll device %s: id or token taken: %w", d.ID, errs.ErrConflict)
		}
		if err != nil {
			return "", false, fmt.Errorf("enroll device: %w", err)
		}
		return d.ID, true, nil
	}
	if d.KeySignedAt.IsZero() {
		return "", false, fmt.Errorf("enroll device %s: a key enrollment needs its signed timestamp: %w", d.ID, errs.ErrInvalid)
	}
	signedAt := dbTime(d.KeySignedAt)
	row.KeyFingerprint, row.KeySignedAt = &d.KeyFingerprint, &signedAt
	for range maxEnrollAttempts {
		var ids []string
		err := g.Transaction(func(tx *gorm.DB) error {
			err := tx.Raw(`INSERT INTO devices (id, token_hash, key_fingerprint, key_signed_at, model, build, channel, region,
	installed_patches, cloud_messaging, number_encryption, enrolled_at, last_seen)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT DO NOTHING
RETURNING id`, row.ID, row.TokenHash, row.KeyFingerprint, row.KeySignedAt, row.Model, row.Build, row.Channel, row.Region,
				row.InstalledPatches, row.CloudMessaging, row.NumberEncryption, row.EnrolledAt, row.LastSeen).Scan(&ids).Error
			if err = s.db.rawErr(err); err != nil || len(ids) == 0 {
				return err
			}
			b := moveDevice(nil, &row)
			return b.insert(gormExec{tx})
		})
		if err != nil {
			return "", false, fmt.Errorf("enroll device: %w", err)
		}
		if len(ids) == 1 {
			return ids[0], true, nil
		}
		id, updated, err := s.reEnroll(ctx, &row)
		if err != nil || updated {
			return id, false, err
		}
		// Neither inserted nor updated: the device was erased in between
		// (try again), or the id is taken by a device with another key
		// (which trying again will not change).
	}
	return "", false, fmt.Errorf("enroll device %s: id or token taken by another device: %w", d.ID, errs.ErrConflict)
}

// reEnroll replaces the token and the enrolled fields of the device with
// row's key fingerprint, if row's signed timestamp is newer than the
// stored one, moving the fleet rollups from what it was. Reading the old
// row locks it (FOR UPDATE on PostgreSQL; SQLite's transaction holds the
// write lock), so of two enrollments with the same timestamp (a replay
// racing the original, or two replays) at most one updates. It returns
// updated false when no device has the fingerprint.
func (s *DeviceStore) reEnroll(ctx context.Context, row *deviceRow) (string, bool, error) {
	var id string
	err := s.db.gorm.WithContext(ctx).Transaction(func(tx *gorm.DB) error {
		var old []deviceRow
		if err := tx.Raw(`SELECT `+deviceColumns+` FROM devices WHERE key_fingerprint = ?`+s.db.forUpdate(),
			*row.KeyFingerprint).Scan(&old).Error; err != nil {
			return err
		}
		if len(old) == 0 {
			return nil
		}
		// Devices enrolled before migration 5 have no signed timestamp:
		// any is newer.
		if old[0].KeySignedAt != nil && !old[0].KeySignedAt.Before(*row.KeySignedAt) {
			return fmt.Errorf("%w: enrollment timestamp not newer than the last accepted for this key; sign a new enrollment", errs.ErrConflict)
		}
		next := old[0]
		next.TokenHash, next.KeySignedAt = row.TokenHash, row.KeySignedAt
		next.Model, next.Build, next.Channel, next.Region, next.LastSeen = row.Model, row.Build, row.Channel, row.Region, row.LastSeen
		err := tx.Exec(`UPDATE devices SET token_hash = ?, key_signed_at = ?, model = ?, build = ?, channel = ?, region = ?, last_seen = ?, rev = rev + 1
WHERE id = ?`, next.TokenHash, next.KeySignedAt, next.Model, next.Build, next.Channel, next.Region, next.LastSeen, next.ID).Error
		if err = s.db.rawErr(err); err != nil {
			return err
		}
		id = next.ID
		b := moveDevice(&old[0], &next)
		return b.insert(gormExec{tx})
	})
	switch {
	case errors.Is(err, errs.ErrConflict):
		return "", false, err
	case errors.Is(err, gorm.ErrDuplicatedKey):
		return "", false, fmt.Errorf("re-enroll device: token taken: %w", errs.ErrConflict)
	case err != nil:
		return "", false, fmt.Errorf("re-enroll device: %w", err)
	}
	return id, id != "", nil
}

// forUpdate is the locking clause of a read whose row the transaction
// then writes: PostgreSQL locks the row; SQLite's write transaction
// (BEGIN IMMEDIATE) already excludes every other writer.
func (db *DB) forUpdate() string {
	if db.dialect == dialectPostgres {
		return " FOR UPDATE"
	}
	return ""
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

// checkInStateSQL is a check-in's one read: the device and its rollout
// records, through the token_hash and device_id indexes. On PostgreSQL
// the WHERE clause takes many tokens (see checkInBatcher).
const checkInStateSQL = `SELECT d.token_hash, d.id, d.key_fingerprint, d.key_signed_at, d.model, d.build, d.channel, d.region,
	d.installed_patches, d.cloud_messaging, d.number_encryption, d.enrolled_at, d.last_seen, d.rev,
	r.rollout_id AS r_rollout_id, r.model AS r_model, r.starting_build AS r_starting_build, r.offered_at AS r_offered_at,
	r.last_offered_at AS r_last_offered_at, r.state AS r_state, r.attempts AS r_attempts,
	r.last_failure_at AS r_last_failure_at, r.result_at AS r_result_at, r.full_only AS r_full_only
FROM devices d LEFT JOIN device_rollouts r ON r.device_id = d.id
WHERE `

const checkInStateSQLite = checkInStateSQL + "d.token_hash = ?"

// checkInStatePostgres is checkInStateSQL for many tokens, with each
// table reached through a LATERAL subquery by its key: a plan that can
// only probe the indexes. As a join (token_hash = ANY($1), device_rollouts
// joined on device_id) PostgreSQL chose, for a 20,000-handset fleet whose
// device_rollouts grew from empty during a rollout wave, hash joins over
// sequential scans of one table or both (auto_explain), a read of every
// record for every batch.
const checkInStatePostgres = `SELECT d.token_hash, d.id, d.key_fingerprint, d.key_signed_at, d.model, d.build, d.channel, d.region,
	d.installed_patches, d.cloud_messaging, d.number_encryption, d.enrolled_at, d.last_seen, d.rev,
	r.rollout_id AS r_rollout_id, r.model AS r_model, r.starting_build AS r_starting_build, r.offered_at AS r_offered_at,
	r.last_offered_at AS r_last_offered_at, r.state AS r_state, r.attempts AS r_attempts,
	r.last_failure_at AS r_last_failure_at, r.result_at AS r_result_at, r.full_only AS r_full_only
FROM unnest(CAST($1 AS text[])) AS t(hash)
JOIN LATERAL (SELECT * FROM devices WHERE token_hash = t.hash) d ON true
LEFT JOIN LATERAL (SELECT * FROM device_rollouts WHERE device_id = d.id) r ON true`

// checkInRows is what checkInStateSQL read of one device.
type checkInRows struct {
	device   deviceRow
	rollouts []deviceRolloutRow
}

// CheckInState implements handsets.DeviceStore in one statement. It is the
// one query of most check-ins, so it skips gorm and scans with
// database/sql: gorm's reflection over the row cost about a fifth of a
// check-in's CPU. On PostgreSQL, check-ins that arrive together share a
// statement (see checkInBatcher).
func (s *DeviceStore) CheckInState(ctx context.Context, tokenHash string) (*handsets.Device, []*handsets.DeviceRollout, error) {
	var (
		st    checkInRows
		found bool
		err   error
	)
	if s.db.checkIns != nil {
		st, found, err = s.db.checkIns.get(ctx, tokenHash)
	} else {
		var all map[string]checkInRows
		all, err = s.db.readCheckInStates(ctx, checkInStateSQLite, tokenHash)
		st, found = all[tokenHash]
	}
	if err != nil {
		return nil, nil, fmt.Errorf("check in: read device: %w", err)
	}
	if !found {
		return nil, nil, errs.ErrDeviceToken
	}
	records := make([]*handsets.DeviceRollout, len(st.rollouts))
	for i := range st.rollouts {
		records[i] = st.rollouts[i].deviceRollout()
	}
	return st.device.device(), records, nil
}

// checkInBatchSize bounds the tokens of one batched check-in read.
// Batched reads run one at a time on a replica, so that reads arriving
// meanwhile make one batch, and up to checkInBatchesInFlight at once
// while a full batch waits (a slow statement must not hold up all
// check-ins). On the 2-core benchmark machine one at a time answered
// 6,500 check-ins/s where four at once answered 5,100: PostgreSQL and
// otad share the cores, and fewer, larger statements cost less of them.
const (
	checkInBatchSize       = 64
	checkInBatchesInFlight = 4
	checkInBatchTimeout    = 10 * time.Second
)

// checkInBatcher merges the check-in reads of a replica on PostgreSQL,
// where every statement is a round trip to another process: under load
// one statement reads the devices of many check-ins.
func (db *DB) checkInBatcher() *readBatcher[string, checkInRows] {
	return &readBatcher[string, checkInRows]{
		lookup: func(ctx context.Context, hashes []string) (map[string]checkInRows, error) {
			return db.readCheckInStates(ctx, checkInStatePostgres, hashes)
		},
		maxInFlight: checkInBatchesInFlight,
		maxBatch:    checkInBatchSize,
		timeout:     checkInBatchTimeout,
	}
}

// readCheckInStates runs query (one of the checkInState statements) with
// arg and returns the rows by token hash.
func (db *DB) readCheckInStates(ctx context.Context, query string, arg any) (map[string]checkInRows, error) {
	rows, err := db.sql.QueryContext(ctx, query, arg)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	out := make(map[string]checkInRows)
	for rows.Next() {
		var (
			hash                                 string
			dev                                  deviceRow
			rID, rModel, rBuild, rState          sql.NullString
			rOffered, rLastOffered, rFail, rDone sql.NullTime
			rAttempts                            sql.NullInt64
			rFullOnly                            sql.NullBool
		)
		if err := rows.Scan(&hash, &dev.ID, &dev.KeyFingerprint, &dev.KeySignedAt, &dev.Model, &dev.Build, &dev.Channel, &dev.Region,
			&dev.InstalledPatches, &dev.CloudMessaging, &dev.NumberEncryption, &dev.EnrolledAt, &dev.LastSeen, &dev.Rev,
			&rID, &rModel, &rBuild, &rOffered, &rLastOffered, &rState, &rAttempts, &rFail, &rDone, &rFullOnly); err != nil {
			return nil, err
		}
		st, seen := out[hash]
		if !seen {
			st.device = dev
		}
		if rID.Valid {
			st.rollouts = append(st.rollouts, deviceRolloutRow{RolloutID: rID.String, DeviceID: dev.ID, Model: rModel.String,
				StartingBuild: rBuild.String, OfferedAt: rOffered.Time, LastOfferedAt: rLastOffered.Time, State: rState.String,
				Attempts: int(rAttempts.Int64), LastFailureAt: nullTime(rFail), ResultAt: nullTime(rDone),
				FullOnly: rFullOnly.Bool})
		}
		out[hash] = st
	}
	return out, rows.Err()
}

func nullTime(t sql.NullTime) *time.Time {
	if !t.Valid {
		return nil
	}
	return &t.Time
}

// saveCheckInSQL writes a check-in over the revision it read.
const saveCheckInSQL = `UPDATE devices SET build = ?, model = ?, channel = ?, installed_patches = ?,
	cloud_messaging = ?, number_encryption = ?, last_seen = ?, rev = rev + 1
WHERE id = ? AND rev = ?`

// SaveCheckIn implements handsets.DeviceStore: the update and the rollup
// deltas it makes, in one write (DB.write); on PostgreSQL in one
// statement, which locks only the device's own row (changeWithDeltas).
// The update is a compare-and-swap on rev, so of two check-ins of one
// device read at the same revision only one moves the rollups. A check-in that changes
// only last_seen on the same day moves none and is the update alone.
func (s *DeviceStore) SaveCheckIn(ctx context.Context, old, next *handsets.Device, confirmations []handsets.Confirmation) error {
	oldRow, err := rowOf(old)
	if err != nil {
		return err
	}
	nextRow, err := rowOf(next)
	if err != nil {
		return err
	}
	nextRow.LastSeen = dbTime(next.LastSeen)
	var deltas deltaBatch
	if fleetKeyOf(oldRow) != fleetKeyOf(nextRow) || rollupDay(oldRow.LastSeen) != rollupDay(nextRow.LastSeen) {
		deltas = moveDevice(oldRow, nextRow)
	}
	deltas.merge(confirm(confirmations, nextRow.LastSeen))
	args := []any{nextRow.Build, nextRow.Model, nextRow.Channel, nextRow.InstalledPatches, nextRow.CloudMessaging,
		nextRow.NumberEncryption, nextRow.LastSeen, old.ID, old.Rev}
	var updated bool
	err = s.db.write(ctx, true, func(x sqlExec) error {
		var err error
		updated, err = s.db.changeWithDeltas(x, saveCheckInSQL, args, deltas)
		return err
	})
	if err != nil {
		return fmt.Errorf("check in: %w", err)
	}
	if !updated {
		return s.staleDevice(ctx, old.ID)
	}
	next.Rev, next.LastSeen = old.Rev+1, nextRow.LastSeen
	return nil
}

// staleDevice is SaveCheckIn's error when its update matched no row:
// ErrDeviceToken when the device is gone, else ErrConflict.
func (s *DeviceStore) staleDevice(ctx context.Context, id string) error {
	var n int64
	if err := s.db.gorm.WithContext(ctx).Raw("SELECT COUNT(*) FROM devices WHERE id = ?", id).Scan(&n).Error; err != nil {
		return fmt.Errorf("check in: %w", err)
	}
	if n == 0 {
		return errs.ErrDeviceToken
	}
	return fmt.Errorf("%w: device %s changed since it was read", errs.ErrConflict, id)
}

// rowOf is the row of d's stored state, for the rollups.
func rowOf(d *handsets.Device) (*deviceRow, error) {
	patches, err := encodePatches(d.InstalledPatches)
	if err != nil {
		return nil, err
	}
	return &deviceRow{ID: d.ID, Model: d.Model, Build: d.Build, Channel: d.Channel, Region: d.Region,
		InstalledPatches: patches, CloudMessaging: d.CloudMessaging, NumberEncryption: d.NumberEncryption,
		EnrolledAt: d.EnrolledAt, LastSeen: d.LastSeen, Rev: d.Rev}, nil
}

// DeviceByToken implements handsets.DeviceStore. On PostgreSQL it shares
// the check-ins' batched read (checkInBatcher): every report of a wave
// starts with it.
func (s *DeviceStore) DeviceByToken(ctx context.Context, tokenHash string) (*handsets.Device, error) {
	if s.db.checkIns != nil {
		st, found, err := s.db.checkIns.get(ctx, tokenHash)
		if err != nil {
			return nil, fmt.Errorf("look up device: %w", err)
		}
		if !found {
			return nil, errs.ErrDeviceToken
		}
		return st.device.device(), nil
	}
	var row deviceRow
	err := s.db.gorm.WithContext(ctx).Select(deviceColumns).Where("token_hash = ?", tokenHash).Take(&row).Error
	if errors.Is(err, gorm.ErrRecordNotFound) {
		return nil, errs.ErrDeviceToken
	}
	if err != nil {
		return nil, fmt.Errorf("look up device: %w", err)
	}
	return row.device(), nil
}

// DeleteDevice implements handsets.DeviceStore: the device goes with its
// reports, states and rollout records, and out of the rollups. The
// foreign keys cascade too, but the explicit deletes do not depend on
// SQLite's per-connection foreign_keys pragma.
//
// On SQLite, secure_delete (see sqlitePragmas) zeroes the deleted rows in
// the pages the commit writes, but the WAL still holds the earlier images
// of those pages, reports and all, until a checkpoint copies the new ones
// into the database file and the log is truncated: so an erasure ends
// with a TRUNCATE checkpoint. Erasures are rare; the checkpoint waits up
// to busy_timeout for readers to move on.
func (s *DeviceStore) DeleteDevice(ctx context.Context, id string) error {
	if err := s.deleteDevice(ctx, id); err != nil {
		return err
	}
	// Fold at once, so that rollup rows the erasure leaves empty (its
	// model, build or region, if it was alone in them) go now rather
	// than at the next fold. The erasure is committed either way.
	if _, err := s.db.FoldRollups(ctx); err != nil {
		s.db.logger.WarnContext(ctx, "erased device: folding the rollups failed; the next fold deletes the rows it left empty",
			slog.Any("error", err))
	}
	if s.db.dialect == dialectSQLite {
		// The erasure is committed; a checkpoint that cannot finish now
		// leaves the old page images in the WAL until a later one. It
		// runs between write batches: it needs the write lock, which a
		// steady stream of batches would otherwise never leave it.
		if err := s.db.betweenBatches(ctx, s.db.truncateWAL); err != nil {
			s.db.logger.WarnContext(ctx, "erased device: checkpoint did not truncate the WAL; the erased rows stay in it until a later checkpoint",
				slog.Any("error", err))
		}
	}
	return nil
}

// truncateWAL checkpoints SQLite's WAL into the database file and
// truncates it to zero bytes.
func (db *DB) truncateWAL(ctx context.Context) error {
	var busy, logFrames, checkpointed int
	if err := db.sql.QueryRowContext(ctx, "PRAGMA wal_checkpoint(TRUNCATE)").Scan(&busy, &logFrames, &checkpointed); err != nil {
		return fmt.Errorf("wal checkpoint: %w", err)
	}
	if busy != 0 {
		return fmt.Errorf("wal checkpoint: busy: %d of %d frames checkpointed", checkpointed, logFrames)
	}
	return nil
}

// deleteDevice erases the device in one transaction. On PostgreSQL it
// locks the handset's rows in the order a report does (its rollout
// records, then its patch states, then the device row, which the
// report's foreign key locks last), so that an erasure and a report of
// the same handset wait for each other instead of deadlocking; only a
// report of a record first offered within the erasure's few
// milliseconds can still deadlock with it (PostgreSQL then rolls one
// back, and the handset retries).
func (s *DeviceStore) deleteDevice(ctx context.Context, id string) error {
	return s.db.gorm.WithContext(ctx).Transaction(func(tx *gorm.DB) error {
		// The records are locked as they are read (on PostgreSQL; SQLite's
		// write transaction excludes every other writer): a retry offer
		// updates a record without touching the device row, so one that
		// committed between this read and the DELETE below would leave
		// the erasure's deltas taking out the state it replaced.
		var records []deviceRolloutRow
		readRecords := func() error {
			records = nil
			q := tx.Where("device_id = ?", id)
			if s.db.dialect == dialectPostgres {
				q = q.Clauses(clause.Locking{Strength: "UPDATE"})
			}
			if err := q.Find(&records).Error; err != nil {
				return fmt.Errorf("read device rollout records: %w", err)
			}
			return nil
		}
		if err := readRecords(); err != nil {
			return err
		}
		if err := tx.Where("device_id = ?", id).Delete(&patchStateRow{}).Error; err != nil {
			return fmt.Errorf("delete device states: %w", err)
		}
		var old []deviceRow
		if err := tx.Raw(`SELECT `+deviceColumns+` FROM devices WHERE id = ?`+s.db.forUpdate(), id).Scan(&old).Error; err != nil {
			return fmt.Errorf("read device: %w", err)
		}
		if len(old) == 0 {
			return fmt.Errorf("device %s: %w", id, errs.ErrNotFound)
		}
		if s.db.dialect == dialectPostgres {
			// Read the records again now that the device row is locked: a
			// first offer committed since the read above (its foreign key
			// now waits for this transaction) would otherwise be deleted
			// below without its deltas.
			if err := readRecords(); err != nil {
				return err
			}
		}
		drs := make([]*handsets.DeviceRollout, len(records))
		for i := range records {
			drs[i] = records[i].deviceRollout()
		}
		b := eraseDevice(&old[0])
		b.merge(eraseRecords(drs, s.db.now()))
		unconfirm, err := s.confirmedRecords(tx, old[0].device(), drs)
		if err != nil {
			return err
		}
		b.merge(unconfirm)
		if err := b.insert(gormExec{tx}); err != nil {
			return err
		}
		if err := tx.Where("device_id = ?", id).Delete(&reportRow{}).Error; err != nil {
			return fmt.Errorf("delete device reports: %w", err)
		}
		if err := tx.Where("device_id = ?", id).Delete(&deviceRolloutRow{}).Error; err != nil {
			return fmt.Errorf("delete device rollout records: %w", err)
		}
		res := tx.Where("id = ?", id).Delete(&deviceRow{})
		if res.Error != nil {
			return fmt.Errorf("delete device: %w", res.Error)
		}
		if res.RowsAffected == 0 {
			return fmt.Errorf("device %s: %w", id, errs.ErrNotFound)
		}
		return nil
	})
}

// confirmedRecords is the deltas that take the confirmed ones among an
// erased device d's records out of rollout_confirmations: those that
// rollout.Confirmed finds confirmed by d, with their rollouts' releases
// read in one query. The offer-to-confirmation times stay, as the
// offer-to-install times do.
func (s *DeviceStore) confirmedRecords(tx *gorm.DB, d *handsets.Device, records []*handsets.DeviceRollout) (deltaBatch, error) {
	var b deltaBatch
	var ids []string
	for _, r := range records {
		if r.State == handsets.StateInstalled && !r.ResultAt.IsZero() && d.LastSeen.After(r.ResultAt) {
			ids = append(ids, r.RolloutID)
		}
	}
	if len(ids) == 0 {
		return b, nil
	}
	var releases []struct{ ID, PatchID, InstallsBuild string }
	if err := tx.Raw(`SELECT id, patch_id, installs_build FROM rollouts WHERE id IN ?`, ids).Scan(&releases).Error; err != nil {
		return b, fmt.Errorf("read the releases of the device's rollouts: %w", err)
	}
	for _, r := range records {
		for _, rel := range releases {
			if rel.ID == r.RolloutID && rollout.Confirmed(d, r, rollout.RolloutRelease{PatchID: rel.PatchID, InstallsBuild: rel.InstallsBuild}) {
				b.add(confirmationsTable, r.RolloutID, r.Model, r.StartingBuild, int64(-1))
			}
		}
	}
	return b, nil
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

// byteOrder is col for ORDER BY in byte order, as SQLite's default
// BINARY collation sorts: PostgreSQL's database collation (en_US.UTF-8
// and the like) would sort "alpha" before "Beta" and rank ties in
// another order than SQLite.
func (s *DeviceStore) byteOrder(col string) string {
	if s.db.dialect == dialectPostgres {
		return col + ` COLLATE "C"`
	}
	return col
}

// FleetSummary implements handsets.DeviceStore in two queries: one pass
// over devices grouped by model, one over the patch's states of active
// devices grouped by state and error code.
//
// The first query ranks the models by active devices (ties by name, in
// byte order on both dialects) and folds every model past maxModels, and
// every model without active devices, into one row with a NULL model, so
// it returns at most maxModels+1 rows however many models handsets
// invent. That row counts towards the totals and, when it has active
// devices, becomes the handsets.OtherModels row.
func (s *DeviceStore) FleetSummary(ctx context.Context, patchID string, activeSince time.Time, maxModels int) (*handsets.FleetSummary, error) {
	if maxModels < 1 {
		return nil, fmt.Errorf("fleet summary: list at least one model, not %d: %w", maxModels, errs.ErrInvalid)
	}
	since := dbTime(activeSince)
	match, arg := s.hasPatch(patchID)
	g := s.db.gorm.WithContext(ctx)

	type modelCount struct {
		Model                                        *string
		Models, Enrolled, Active, Patched, Compliant int64
	}
	var models []modelCount
	err := g.Raw(`WITH per_model AS (
	SELECT model,
		COUNT(*) AS enrolled,
		COUNT(*) FILTER (WHERE last_seen >= ?) AS active,
		COUNT(*) FILTER (WHERE last_seen >= ? AND `+match+`) AS patched,
		COUNT(*) FILTER (WHERE last_seen >= ? AND `+match+` AND cloud_messaging <> ? AND number_encryption) AS compliant
	FROM devices
	GROUP BY model
), ranked AS (
	SELECT model, enrolled, active, patched, compliant,
		ROW_NUMBER() OVER (ORDER BY active DESC, `+s.byteOrder("model")+`) AS place
	FROM per_model
), folded AS (
	SELECT CASE WHEN place <= ? AND active > 0 THEN model END AS bucket, place, enrolled, active, patched, compliant
	FROM ranked
)
SELECT bucket AS model,
	COUNT(*) FILTER (WHERE active > 0) AS models,
	CAST(SUM(enrolled) AS BIGINT) AS enrolled,
	CAST(SUM(active) AS BIGINT) AS active,
	CAST(SUM(patched) AS BIGINT) AS patched,
	CAST(SUM(compliant) AS BIGINT) AS compliant
FROM folded
GROUP BY bucket
ORDER BY MIN(place)`, since, since, arg, since, arg, handsets.MessagingAutoEnabled, maxModels).Scan(&models).Error
	if err != nil {
		return nil, fmt.Errorf("fleet summary: count devices: %w", err)
	}
	sum := &handsets.FleetSummary{PatchID: patchID, ByModel: []handsets.ModelSummary{},
		States: map[string]int64{}, Failures: []handsets.FailureCount{}}
	var other *handsets.ModelSummary
	for _, m := range models {
		sum.Enrolled += m.Enrolled
		sum.Active += m.Active
		sum.Patched += m.Patched
		sum.Compliant += m.Compliant
		row := handsets.ModelSummary{Active: m.Active, Patched: m.Patched, Compliant: m.Compliant}
		switch {
		case m.Model != nil:
			row.Model = *m.Model
			sum.ByModel = append(sum.ByModel, row)
		case m.Active > 0:
			row.Model, row.Models = handsets.OtherModels, m.Models
			other = &row
		}
	}
	if other != nil {
		sum.ByModel = append(sum.ByModel, *other)
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
		if st.State == handsets.StateFailed {
			sum.Failures = append(sum.Failures, handsets.FailureCount{ErrorCode: st.ErrorCode, Count: st.Count})
		}
	}
	slices.SortFunc(sum.Failures, func(a, b handsets.FailureCount) int {
		return cmp.Or(cmp.Compare(b.Count, a.Count), strings.Compare(a.ErrorCode, b.ErrorCode))
	})
	return sum, nil
}
