package sqlstore

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"gorm.io/gorm"

	"github.com/patchfleet/ota/server/audit"
	"github.com/patchfleet/ota/server/errs"
	"github.com/patchfleet/ota/server/handsets"
	"github.com/patchfleet/ota/server/rollout"
)

// RolloutStore keeps staged rollouts; it implements rollout.RolloutStore.
type RolloutStore struct{ db *DB }

var _ rollout.RolloutStore = (*RolloutStore)(nil)

// Rollouts returns the rollout store of db.
func (db *DB) Rollouts() *RolloutStore { return &RolloutStore{db: db} }

type rolloutRow struct {
	ID              string `gorm:"primaryKey"`
	Version         int64
	State           string
	Target          string
	PatchID         string
	InstallsBuild   string
	ReleaseModels   string // JSON array
	ReleaseBuildMin string
	ReleaseBuildMax string
	Selector        string // selectorJSON
	Stages          string // JSON array
	Stage           int
	Salt            string
	Policy          string  // policyJSON
	Halt            *string // holdJSON
	Holds           string  // JSON array of holdJSON
	CreatedBy       string
	CreatedAt       time.Time
	StartedAt       *time.Time
	StageStartedAt  *time.Time
	EndedAt         *time.Time
	HealthSince     *time.Time
	// ModelHealthSince is a JSON object of model to time.
	ModelHealthSince string
}

func (rolloutRow) TableName() string { return "rollouts" }

type rolloutEventRow struct {
	ID          int64 `gorm:"primaryKey"`
	RolloutID   string
	At          time.Time
	Actor       string
	Action      string
	Reason      string
	FromState   string
	ToState     string
	FromPercent float64
	ToPercent   float64
	Model       string
	Hold        *string // holdJSON
	Detail      string
}

func (rolloutEventRow) TableName() string { return "rollout_events" }

type deviceRolloutRow struct {
	RolloutID     string `gorm:"primaryKey"`
	DeviceID      string `gorm:"primaryKey"`
	Model         string
	StartingBuild string
	OfferedAt     time.Time
	LastOfferedAt time.Time
	State         string
	Attempts      int
	LastFailureAt *time.Time
	ResultAt      *time.Time
	FullOnly      bool
}

func (deviceRolloutRow) TableName() string { return "device_rollouts" }

// The JSON columns have their own types with explicit names, so that
// renaming a Go field does not change what is stored, and durations
// stored as text ("1h0m0s") read well in SQL. They are the storage's
// encoding, never an answer's: the API writes a hold through
// rollout.Hold's MarshalJSON and a rollout through server/api's Rollout.
// Kept apart, a change of the wire shape never rewrites stored rows,
// and a stored row never needs what the wire leaves out (a hold's
// empty model).

// duration is a time.Duration stored as its String.
type duration time.Duration

func (d duration) MarshalText() ([]byte, error) { return []byte(time.Duration(d).String()), nil }

func (d *duration) UnmarshalText(b []byte) error {
	v, err := time.ParseDuration(string(b))
	if err != nil {
		return err
	}
	*d = duration(v)
	return nil
}

type selectorJSON struct {
	Models   []string `json:"models"`
	Channels []string `json:"channels"`
	Regions  []string `json:"regions"`
	BuildMin string   `json:"build_min"`
	BuildMax string   `json:"build_max"`
}

type policyJSON struct {
	MaxFailureRate     float64        `json:"max_failure_rate"`
	MinResults         int64          `json:"min_results"`
	FailureWindow      duration       `json:"failure_window"`
	Soak               duration       `json:"soak"`
	Retries            int            `json:"retries"`
	Backoff            []duration     `json:"backoff"`
	MaxOffersPerMinute int            `json:"max_offers_per_minute"`
	Window             rollout.Window `json:"window"`
	SilenceAfter       duration       `json:"silence_after,omitempty"`
	MaxSilenceRate     float64        `json:"max_silence_rate,omitempty"`
	MinConfirmations   int64          `json:"min_confirmations,omitempty"`
	StartAt            *time.Time     `json:"start_at,omitempty"`
	Deadline           *time.Time     `json:"deadline,omitempty"`
	// StartNotedAt and DeadlineNotedAt are the rollout's, not its
	// policy's: they say the events about StartAt and Deadline were
	// saved. They live here, beside what they are about, to need no
	// column of their own; rows from before read as zero.
	StartNotedAt    *time.Time `json:"start_noted_at,omitempty"`
	DeadlineNotedAt *time.Time `json:"deadline_noted_at,omitempty"`
}

type holdJSON struct {
	Model     string    `json:"model"`
	Actor     string    `json:"actor"`
	Reason    string    `json:"reason"`
	Installed int64     `json:"installed"`
	Failed    int64     `json:"failed"`
	Silent    int64     `json:"silent,omitempty"`
	Rate      float64   `json:"rate"`
	MaxRate   float64   `json:"max_rate"`
	Window    duration  `json:"window"`
	At        time.Time `json:"at"`
}

func toHoldJSON(h rollout.Hold) holdJSON {
	return holdJSON{Model: h.Model, Actor: h.Actor, Reason: h.Reason, Installed: h.Installed, Failed: h.Failed, Silent: h.Silent,
		Rate: h.Rate, MaxRate: h.MaxRate, Window: duration(h.Window), At: dbTime(h.At)}
}

func (h holdJSON) hold() rollout.Hold {
	return rollout.Hold{Model: h.Model, Actor: h.Actor, Reason: h.Reason, Installed: h.Installed, Failed: h.Failed, Silent: h.Silent,
		Rate: h.Rate, MaxRate: h.MaxRate, Window: time.Duration(h.Window), At: h.At.UTC()}
}

// mapSlice maps a slice, keeping nil nil, so that a rollout reads back
// as it was written.
func mapSlice[T, U any](in []T, f func(T) U) []U {
	if in == nil {
		return nil
	}
	out := make([]U, len(in))
	for i, v := range in {
		out[i] = f(v)
	}
	return out
}

func jsonText(v any) (string, error) {
	b, err := json.Marshal(v)
	return string(b), err
}

// optionalHold is the JSON of h, or NULL.
func optionalHold(h *rollout.Hold) (*string, error) {
	if h == nil {
		return nil, nil
	}
	s, err := jsonText(toHoldJSON(*h))
	return &s, err
}

func readHold(s *string) (*rollout.Hold, error) {
	if s == nil {
		return nil, nil
	}
	var h holdJSON
	if err := json.Unmarshal([]byte(*s), &h); err != nil {
		return nil, err
	}
	hold := h.hold()
	return &hold, nil
}

// optionalTime is t as stored, or NULL for the zero time.
func optionalTime(t time.Time) *time.Time {
	if t.IsZero() {
		return nil
	}
	u := dbTime(t)
	return &u
}

func readTime(t *time.Time) time.Time {
	if t == nil {
		return time.Time{}
	}
	return t.UTC()
}

func toRolloutRow(r *rollout.Rollout, version int64) (*rolloutRow, error) {
	row := &rolloutRow{ID: r.ID, Version: version, State: string(r.State), Target: r.Release.Target,
		PatchID: r.Release.PatchID, InstallsBuild: r.Release.InstallsBuild,
		ReleaseBuildMin: r.Release.BuildMin, ReleaseBuildMax: r.Release.BuildMax, Stage: r.Stage, Salt: r.Salt,
		CreatedBy: r.CreatedBy, CreatedAt: dbTime(r.CreatedAt), StartedAt: optionalTime(r.StartedAt),
		StageStartedAt: optionalTime(r.StageStartedAt), EndedAt: optionalTime(r.EndedAt),
		HealthSince: optionalTime(r.HealthSince)}
	p := &r.Policy
	var since map[string]time.Time
	if r.ModelHealthSince != nil {
		since = make(map[string]time.Time, len(r.ModelHealthSince))
		for m, t := range r.ModelHealthSince {
			since[m] = dbTime(t)
		}
	}
	var err error
	for _, f := range []struct {
		dst *string
		v   any
	}{
		{&row.ReleaseModels, r.Release.Models},
		{&row.Selector, selectorJSON{Models: r.Selector.Models, Channels: r.Selector.Channels,
			Regions: r.Selector.Regions, BuildMin: r.Selector.BuildMin, BuildMax: r.Selector.BuildMax}},
		{&row.Stages, r.Stages},
		{&row.Policy, policyJSON{MaxFailureRate: p.MaxFailureRate, MinResults: p.MinResults,
			FailureWindow: duration(p.FailureWindow), Soak: duration(p.Soak), Retries: p.Retries,
			Backoff:            mapSlice(p.Backoff, func(d time.Duration) duration { return duration(d) }),
			MaxOffersPerMinute: p.MaxOffersPerMinute, Window: p.Window,
			SilenceAfter: duration(p.SilenceAfter), MaxSilenceRate: p.MaxSilenceRate, MinConfirmations: p.MinConfirmations,
			StartAt: optionalTime(p.StartAt), Deadline: optionalTime(p.Deadline),
			StartNotedAt: optionalTime(r.StartNotedAt), DeadlineNotedAt: optionalTime(r.DeadlineNotedAt)}},
		{&row.Holds, mapSlice(r.Holds, toHoldJSON)},
		{&row.ModelHealthSince, since},
	} {
		if *f.dst, err = jsonText(f.v); err != nil {
			return nil, fmt.Errorf("rollout %s: encode: %w", r.ID, err)
		}
	}
	if row.Halt, err = optionalHold(r.Halt); err != nil {
		return nil, fmt.Errorf("rollout %s: encode halt: %w", r.ID, err)
	}
	return row, nil
}

func (row *rolloutRow) rollout() (*rollout.Rollout, error) {
	r := &rollout.Rollout{ID: row.ID, Version: row.Version, State: rollout.RolloutState(row.State),
		Release: rollout.RolloutRelease{Target: row.Target, PatchID: row.PatchID, InstallsBuild: row.InstallsBuild,
			BuildMin: row.ReleaseBuildMin, BuildMax: row.ReleaseBuildMax},
		Stage: row.Stage, Salt: row.Salt, CreatedBy: row.CreatedBy, CreatedAt: row.CreatedAt.UTC(),
		StartedAt: readTime(row.StartedAt), StageStartedAt: readTime(row.StageStartedAt),
		EndedAt: readTime(row.EndedAt), HealthSince: readTime(row.HealthSince)}
	var sel selectorJSON
	var pol policyJSON
	var holds []holdJSON
	for _, f := range []struct {
		name string
		src  string
		dst  any
	}{
		{"release_models", row.ReleaseModels, &r.Release.Models},
		{"selector", row.Selector, &sel},
		{"stages", row.Stages, &r.Stages},
		{"policy", row.Policy, &pol},
		{"holds", row.Holds, &holds},
		{"model_health_since", row.ModelHealthSince, &r.ModelHealthSince},
	} {
		if err := json.Unmarshal([]byte(f.src), f.dst); err != nil {
			return nil, fmt.Errorf("rollout %s: stored %s: %w", row.ID, f.name, err)
		}
	}
	r.Selector = rollout.Selector{Models: sel.Models, Channels: sel.Channels, Regions: sel.Regions,
		BuildMin: sel.BuildMin, BuildMax: sel.BuildMax}
	r.Policy = rollout.Policy{MaxFailureRate: pol.MaxFailureRate, MinResults: pol.MinResults,
		FailureWindow: time.Duration(pol.FailureWindow), Soak: time.Duration(pol.Soak), Retries: pol.Retries,
		Backoff:            mapSlice(pol.Backoff, func(d duration) time.Duration { return time.Duration(d) }),
		MaxOffersPerMinute: pol.MaxOffersPerMinute, Window: pol.Window,
		SilenceAfter: time.Duration(pol.SilenceAfter), MaxSilenceRate: pol.MaxSilenceRate, MinConfirmations: pol.MinConfirmations,
		StartAt: readTime(pol.StartAt), Deadline: readTime(pol.Deadline)}
	r.StartNotedAt, r.DeadlineNotedAt = readTime(pol.StartNotedAt), readTime(pol.DeadlineNotedAt)
	r.Holds = mapSlice(holds, holdJSON.hold)
	for m, t := range r.ModelHealthSince {
		r.ModelHealthSince[m] = t.UTC()
	}
	var err error
	if r.Halt, err = readHold(row.Halt); err != nil {
		return nil, fmt.Errorf("rollout %s: stored halt: %w", row.ID, err)
	}
	return r, nil
}

// eventRows makes the rows of evs, all of which must be rollout id's.
func eventRows(id string, evs []rollout.Event) ([]rolloutEventRow, error) {
	rows := make([]rolloutEventRow, len(evs))
	for i, ev := range evs {
		if ev.RolloutID != id {
			return nil, fmt.Errorf("rollout %s: event %d (%s) is of rollout %q: %w", id, i, ev.Action, ev.RolloutID, errs.ErrInvalid)
		}
		hold, err := optionalHold(ev.Hold)
		if err != nil {
			return nil, fmt.Errorf("rollout %s: encode event hold: %w", id, err)
		}
		rows[i] = rolloutEventRow{RolloutID: id, At: dbTime(ev.At), Actor: ev.Actor, Action: ev.Action,
			Reason: ev.Reason, FromState: string(ev.FromState), ToState: string(ev.ToState),
			FromPercent: ev.FromPercent, ToPercent: ev.ToPercent, Model: ev.Model, Hold: hold, Detail: ev.Detail}
	}
	return rows, nil
}

func (row *rolloutEventRow) event() (rollout.Event, error) {
	hold, err := readHold(row.Hold)
	if err != nil {
		return rollout.Event{}, fmt.Errorf("rollout %s: event %d: stored hold: %w", row.RolloutID, row.ID, err)
	}
	return rollout.Event{RolloutID: row.RolloutID, At: row.At.UTC(), Actor: row.Actor, Action: row.Action,
		Reason: row.Reason, FromState: rollout.RolloutState(row.FromState), ToState: rollout.RolloutState(row.ToState),
		FromPercent: row.FromPercent, ToPercent: row.ToPercent, Model: row.Model, Hold: hold, Detail: row.Detail}, nil
}

// CreateRollout implements rollout.RolloutStore.
func (s *RolloutStore) CreateRollout(ctx context.Context, r *rollout.Rollout, maxOpen int, evs ...rollout.Event) error {
	if len(evs) == 0 {
		return fmt.Errorf("create rollout %s: no event: %w", r.ID, errs.ErrInvalid)
	}
	row, err := toRolloutRow(r, 1)
	if err != nil {
		return err
	}
	events, err := eventRows(r.ID, evs)
	if err != nil {
		return err
	}
	err = s.db.gorm.WithContext(ctx).Transaction(func(tx *gorm.DB) error {
		if err := tx.Create(row).Error; err != nil {
			return err
		}
		if err := tx.Create(&events).Error; err != nil {
			return err
		}
		if err := s.db.appendAudit(tx, rolloutAudit(evs)); err != nil {
			return err
		}
		// Counted after the audit head is locked (appendAudit), which
		// every create holds until it commits: a create that waited for
		// it counts the rollouts the one before it stored.
		return checkOpenRollouts(tx, maxOpen)
	})
	if errors.Is(err, gorm.ErrDuplicatedKey) {
		return fmt.Errorf("rollout %s exists: %w", r.ID, errs.ErrConflict)
	}
	if err != nil {
		return fmt.Errorf("create rollout %s: %w", r.ID, err)
	}
	r.Version = 1
	return nil
}

// checkOpenRollouts fails with rollout.ErrTooManyOpenRollouts when tx
// sees more than maxOpen rollouts not finished (the one being created
// among them); maxOpen 0 is no cap.
func checkOpenRollouts(tx *gorm.DB, maxOpen int) error {
	if maxOpen <= 0 {
		return nil
	}
	var open int64
	if err := tx.Model(&rolloutRow{}).Where("state IN ?", mapSlice(rollout.OpenRolloutStates, func(st rollout.RolloutState) string { return string(st) })).Count(&open).Error; err != nil {
		return fmt.Errorf("count open rollouts: %w", err)
	}
	if open > int64(maxOpen) {
		return fmt.Errorf("%w: %d are draft, running or paused, the most this server allows (--max-open-rollouts); complete or abort some first",
			rollout.ErrTooManyOpenRollouts, open-1)
	}
	return nil
}

// rolloutAudit is the audit entries of rollout events, which the
// rollout store appends last in the transaction that records them.
func rolloutAudit(evs []rollout.Event) []audit.AuditEntry {
	return mapSlice(evs, rollout.RolloutEventAudit)
}

// errStaleVersion ends UpdateRollout's transaction when the version
// check fails, so that it rolls back.
var errStaleVersion = errors.New("stale version")

// UpdateRollout implements rollout.RolloutStore. The version check is in
// the UPDATE's WHERE: PostgreSQL re-checks it against the row it locked
// once a concurrent update commits (READ COMMITTED), and SQLite has one
// writer at a time, so of two saves over one version exactly one
// matches a row.
func (s *RolloutStore) UpdateRollout(ctx context.Context, r *rollout.Rollout, expectVersion int64, evs []rollout.Event) error {
	row, err := toRolloutRow(r, expectVersion+1)
	if err != nil {
		return err
	}
	events, err := eventRows(r.ID, evs)
	if err != nil {
		return err
	}
	err = s.db.gorm.WithContext(ctx).Transaction(func(tx *gorm.DB) error {
		res := tx.Exec(`UPDATE rollouts SET version = ?, state = ?, target = ?, patch_id = ?, installs_build = ?,
	release_models = ?, release_build_min = ?, release_build_max = ?, selector = ?, stages = ?, stage = ?,
	salt = ?, policy = ?, halt = ?, holds = ?, created_by = ?, created_at = ?, started_at = ?,
	stage_started_at = ?, ended_at = ?, health_since = ?, model_health_since = ?
WHERE id = ? AND version = ?`, row.Version, row.State, row.Target, row.PatchID, row.InstallsBuild,
			row.ReleaseModels, row.ReleaseBuildMin, row.ReleaseBuildMax, row.Selector, row.Stages, row.Stage,
			row.Salt, row.Policy, row.Halt, row.Holds, row.CreatedBy, row.CreatedAt, row.StartedAt,
			row.StageStartedAt, row.EndedAt, row.HealthSince, row.ModelHealthSince,
			row.ID, expectVersion)
		if res.Error != nil {
			return res.Error
		}
		if res.RowsAffected == 0 {
			return errStaleVersion
		}
		if len(events) == 0 {
			return nil
		}
		if err := tx.Create(&events).Error; err != nil {
			return err
		}
		return s.db.appendAudit(tx, rolloutAudit(evs))
	})
	if errors.Is(err, errStaleVersion) {
		var versions []int64
		if err := s.db.gorm.WithContext(ctx).Raw("SELECT version FROM rollouts WHERE id = ?", r.ID).Scan(&versions).Error; err != nil {
			return fmt.Errorf("update rollout %s: %w", r.ID, err)
		}
		if len(versions) == 0 {
			return fmt.Errorf("rollout %s: %w", r.ID, errs.ErrNotFound)
		}
		return fmt.Errorf("%w: rollout %s changed meanwhile (version %d, this change was made from %d); read it again",
			errs.ErrConflict, r.ID, versions[0], expectVersion)
	}
	if err != nil {
		return fmt.Errorf("update rollout %s: %w", r.ID, err)
	}
	r.Version = expectVersion + 1
	return nil
}

// Rollout implements rollout.RolloutStore.
func (s *RolloutStore) Rollout(ctx context.Context, id string) (*rollout.Rollout, error) {
	var row rolloutRow
	err := s.db.gorm.WithContext(ctx).Where("id = ?", id).Take(&row).Error
	if errors.Is(err, gorm.ErrRecordNotFound) {
		return nil, fmt.Errorf("rollout %s: %w", id, errs.ErrNotFound)
	}
	if err != nil {
		return nil, fmt.Errorf("look up rollout %s: %w", id, err)
	}
	return row.rollout()
}

// Rollouts implements rollout.RolloutStore.
func (s *RolloutStore) Rollouts(ctx context.Context, states ...rollout.RolloutState) ([]*rollout.Rollout, error) {
	q := s.db.gorm.WithContext(ctx).Order("created_at, id")
	if len(states) > 0 {
		q = q.Where("state IN ?", mapSlice(states, func(st rollout.RolloutState) string { return string(st) }))
	}
	var rows []rolloutRow
	if err := q.Find(&rows).Error; err != nil {
		return nil, fmt.Errorf("list rollouts: %w", err)
	}
	out := make([]*rollout.Rollout, len(rows))
	for i := range rows {
		r, err := rows[i].rollout()
		if err != nil {
			return nil, err
		}
		out[i] = r
	}
	return out, nil
}

// RolloutEvents implements rollout.RolloutStore. Events are numbered in
// the order their transactions inserted them; the last limit are read
// newest first through the (rollout_id, id) index and turned around.
func (s *RolloutStore) RolloutEvents(ctx context.Context, rolloutID string, limit int) ([]rollout.Event, error) {
	g := s.db.gorm.WithContext(ctx)
	q := g.Where("rollout_id = ?", rolloutID).Order("id DESC")
	if limit > 0 {
		q = q.Limit(limit)
	}
	var rows []rolloutEventRow
	if err := q.Find(&rows).Error; err != nil {
		return nil, fmt.Errorf("rollout %s: read events: %w", rolloutID, err)
	}
	if len(rows) == 0 {
		// Every stored rollout has its create event.
		var n int64
		if err := g.Model(&rolloutRow{}).Where("id = ?", rolloutID).Count(&n).Error; err != nil {
			return nil, fmt.Errorf("rollout %s: read events: %w", rolloutID, err)
		}
		if n == 0 {
			return nil, fmt.Errorf("rollout %s: %w", rolloutID, errs.ErrNotFound)
		}
	}
	slices.Reverse(rows)
	out := make([]rollout.Event, len(rows))
	for i := range rows {
		ev, err := rows[i].event()
		if err != nil {
			return nil, err
		}
		out[i] = ev
	}
	return out, nil
}

// AuditEvents implements rollout.RolloutStore. Newest first is by id,
// the order the transactions inserted the events: with a rollout id the
// (rollout_id, id) index gives them in that order, without one the
// primary key does, and the other filters are checked on the rows it
// walks until the limit is reached.
func (s *RolloutStore) AuditEvents(ctx context.Context, f rollout.AuditFilter) ([]rollout.Event, error) {
	var rows []rolloutEventRow
	if err := auditQuery(s.db.gorm.WithContext(ctx), f).Find(&rows).Error; err != nil {
		return nil, fmt.Errorf("read the audit log: %w", err)
	}
	out := make([]rollout.Event, len(rows))
	for i := range rows {
		ev, err := rows[i].event()
		if err != nil {
			return nil, err
		}
		out[i] = ev
	}
	return out, nil
}

// auditQuery is AuditEvents' query of rollout_events.
func auditQuery(g *gorm.DB, f rollout.AuditFilter) *gorm.DB {
	limit := f.Limit
	switch {
	case limit < 1:
		limit = audit.DefaultAuditLimit
	case limit > audit.MaxAuditLimit:
		limit = audit.MaxAuditLimit
	}
	q := g.Model(&rolloutEventRow{}).Order("id DESC").Limit(limit)
	if f.RolloutID != "" {
		q = q.Where("rollout_id = ?", f.RolloutID)
	}
	if f.Actor != "" {
		q = q.Where("actor = ?", f.Actor)
	}
	if f.Action != "" {
		q = q.Where("action = ?", f.Action)
	}
	if !f.Since.IsZero() {
		q = q.Where("at >= ?", dbTime(f.Since))
	}
	if !f.Until.IsZero() {
		q = q.Where("at < ?", dbTime(f.Until))
	}
	return q
}

func (row *deviceRolloutRow) deviceRollout() *handsets.DeviceRollout {
	return &handsets.DeviceRollout{RolloutID: row.RolloutID, DeviceID: row.DeviceID, Model: row.Model,
		StartingBuild: row.StartingBuild, OfferedAt: row.OfferedAt.UTC(), LastOfferedAt: row.LastOfferedAt.UTC(),
		State: row.State, Attempts: row.Attempts, LastFailureAt: readTime(row.LastFailureAt),
		ResultAt: readTime(row.ResultAt), FullOnly: row.FullOnly}
}

// DeviceRollouts implements rollout.RolloutStore, through the device_id
// index, first offer first.
func (s *RolloutStore) DeviceRollouts(ctx context.Context, deviceID string) ([]*handsets.DeviceRollout, error) {
	var rows []deviceRolloutRow
	if err := s.db.gorm.WithContext(ctx).Where("device_id = ?", deviceID).Order("offered_at, rollout_id").Find(&rows).Error; err != nil {
		return nil, fmt.Errorf("device %s: read rollout records: %w", deviceID, err)
	}
	out := make([]*handsets.DeviceRollout, len(rows))
	for i := range rows {
		out[i] = rows[i].deviceRollout()
	}
	return out, nil
}

// putDeviceRolloutSQL is an upsert: one statement, atomic on both
// dialects, that replaces every column but the key.
const putDeviceRolloutSQL = `INSERT INTO device_rollouts (rollout_id, device_id, model, starting_build, offered_at,
	last_offered_at, state, attempts, last_failure_at, result_at, full_only)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (rollout_id, device_id) DO UPDATE SET model = excluded.model, starting_build = excluded.starting_build,
	offered_at = excluded.offered_at, last_offered_at = excluded.last_offered_at, state = excluded.state,
	attempts = excluded.attempts, last_failure_at = excluded.last_failure_at, result_at = excluded.result_at,
	full_only = excluded.full_only`

// PutDeviceRollout implements rollout.RolloutStore.
func (s *RolloutStore) PutDeviceRollout(ctx context.Context, dr *handsets.DeviceRollout) error {
	err := s.db.gorm.WithContext(ctx).Exec(putDeviceRolloutSQL, dr.RolloutID, dr.DeviceID, dr.Model, dr.StartingBuild,
		dbTime(dr.OfferedAt), dbTime(dr.LastOfferedAt), dr.State, dr.Attempts, optionalTime(dr.LastFailureAt),
		optionalTime(dr.ResultAt), dr.FullOnly).Error
	err = s.db.rawErr(err)
	if errors.Is(err, gorm.ErrForeignKeyViolated) {
		return fmt.Errorf("rollout %s or device %s: %w", dr.RolloutID, dr.DeviceID, errs.ErrNotFound)
	}
	if err != nil {
		return fmt.Errorf("put rollout record of device %s: %w", dr.DeviceID, err)
	}
	return nil
}

// rolloutResultsSQL counts through device_rollouts_results: a range of
// (rollout_id, result_at), then the rows in it for model and state, but
// not those of handsets that enrolled after the rollout started
// (enrolled_late, set by the report that moved the record).
const rolloutResultsSQL = `SELECT model,
	COUNT(*) FILTER (WHERE state = ?) AS installed,
	COUNT(*) FILTER (WHERE state <> ?) AS failed
FROM device_rollouts
WHERE rollout_id = ? AND result_at >= ? AND state IN (?, ?, ?) AND NOT enrolled_late
GROUP BY model`

func rolloutResultsArgs(rolloutID string, since time.Time) []any {
	return []any{handsets.StateInstalled, handsets.StateInstalled, rolloutID, dbTime(since),
		handsets.StateInstalled, handsets.StateFailed, handsets.StateRolledBack}
}

// rolloutJoinSQL is rolloutResultsSQL with what needs the devices:
// silence, records of the window whose handset has not checked in since
// its install began (the last offer, for the installing states) or ended
// (installed), when that was before silent_before; and confirmation,
// installed records whose handset checked in since on build with the
// patch. A check-in after an install began writes last_seen (server.Fleet
// forces it), so a handset back from silence stops counting, and a
// confirmed one is seen. The installing states have no index on their
// time (see rolloutsSchema): this reads the rollout's records through the
// primary key, and each one's device by its key. Rollouts that ask for
// neither never run it; one that asks for one only passes a silent_before
// of year 1 or a build of "" for the other, which match nothing.
const rolloutJoinSQL = `SELECT dr.model,
	COUNT(*) FILTER (WHERE dr.state = @installed AND dr.result_at >= @since
		AND NOT (dr.result_at < @silent_before AND d.last_seen <= dr.result_at)) AS installed,
	COUNT(*) FILTER (WHERE dr.state IN (@failed, @rolled_back) AND dr.result_at >= @since) AS failed,
	COUNT(*) FILTER (WHERE (dr.state = @installed AND dr.result_at >= @since
			AND dr.result_at < @silent_before AND d.last_seen <= dr.result_at)
		OR (dr.state IN (@downloading, @downloaded, @verified, @installing) AND dr.last_offered_at >= @since
			AND dr.last_offered_at < @silent_before AND d.last_seen <= dr.last_offered_at)) AS silent,
	COUNT(*) FILTER (WHERE dr.state = @installed AND dr.result_at >= @since AND d.last_seen > dr.result_at
		AND d.build = @build AND d.installed_patches LIKE @patch ESCAPE '!') AS confirmed
FROM device_rollouts dr JOIN devices d ON d.id = dr.device_id
WHERE dr.rollout_id = @rollout AND NOT dr.enrolled_late
	AND ((dr.state IN (@installed, @failed, @rolled_back) AND dr.result_at >= @since)
		OR (dr.state IN (@downloading, @downloaded, @verified, @installing) AND dr.last_offered_at >= @since))
GROUP BY dr.model`

// likePatch is the LIKE pattern of a patch in devices.installed_patches
// (",A,B,": see encodePatches), with LIKE's wildcards escaped.
func likePatch(id string) string {
	r := strings.NewReplacer("!", "!!", "%", "!%", "_", "!_")
	return "%," + r.Replace(id) + ",%"
}

// RolloutResults implements rollout.RolloutStore. A record retried after
// a failure keeps its result_at but is offered again (state offered),
// so it counts again only once it reports a new result.
func (s *RolloutStore) RolloutResults(ctx context.Context, q rollout.ResultsQuery) (map[string]rollout.Results, error) {
	type count struct {
		Model                                string
		Installed, Failed, Silent, Confirmed int64
	}
	var counts []count
	db := s.db.gorm.WithContext(ctx)
	if q.SilentBefore.IsZero() && q.Confirm == nil {
		db = db.Raw(rolloutResultsSQL, rolloutResultsArgs(q.RolloutID, q.Since)...)
	} else {
		build, patch := "", ""
		if q.Confirm != nil {
			build, patch = q.Confirm.InstallsBuild, likePatch(q.Confirm.PatchID)
		}
		db = db.Raw(rolloutJoinSQL, map[string]any{"rollout": q.RolloutID, "since": dbTime(q.Since),
			"silent_before": dbTime(q.SilentBefore), "build": build, "patch": patch,
			"installed": handsets.StateInstalled, "failed": handsets.StateFailed,
			"rolled_back": handsets.StateRolledBack, "downloading": handsets.StateDownloading,
			"downloaded": handsets.StateDownloaded, "verified": handsets.StateVerified, "installing": handsets.StateInstalling})
	}
	if err := db.Scan(&counts).Error; err != nil {
		return nil, fmt.Errorf("rollout %s: count results: %w", q.RolloutID, err)
	}
	out := make(map[string]rollout.Results, len(counts))
	for _, c := range counts {
		if c.Installed+c.Failed+c.Silent > 0 {
			out[c.Model] = rollout.Results{Installed: c.Installed, Failed: c.Failed, Silent: c.Silent, Confirmed: c.Confirmed}
		}
	}
	return out, nil
}

// ClaimOffer implements rollout.RolloutStore: one offer from this
// replica's allowance, claimed from the shared budget in chunks
// (offerBudget).
func (s *RolloutStore) ClaimOffer(ctx context.Context, rolloutID string, minute time.Time, limit int) (bool, error) {
	if limit < 1 {
		return true, nil
	}
	ok, err := s.db.offers.take(ctx, rolloutID, minute, limit)
	if err != nil {
		return false, fmt.Errorf("rollout %s: claim an offer: %w", rolloutID, err)
	}
	return ok, nil
}

// PruneOfferBudget implements rollout.RolloutStore.
func (s *RolloutStore) PruneOfferBudget(ctx context.Context, before time.Time) (int64, error) {
	res := s.db.gorm.WithContext(ctx).Exec("DELETE FROM rollout_offer_budget WHERE minute < ?", dbTime(before))
	if res.Error != nil {
		return 0, fmt.Errorf("prune offer budgets: %w", res.Error)
	}
	return res.RowsAffected, nil
}

// RecordOffer implements rollout.RolloutStore: one offer from this
// replica's allowance (offerBudget, before and outside the transaction:
// a claim of a chunk from the shared budget is a write of its own), then
// the record and its rollup deltas, atomically (one statement on
// PostgreSQL: see changeWithDeltas). A first offer inserts the
// record unless one exists (ON CONFLICT DO NOTHING: a concurrent check-in
// of the same handset inserted it and counted it); a retry moves the
// record from the failed attempt it read (a compare-and-swap on state
// and attempts: a concurrent retry counted it already). Either way the
// offer is given back to the allowance when nothing was written, so the
// next offer of the minute takes it.
func (s *RolloutStore) RecordOffer(ctx context.Context, dec rollout.Decision, prev, next *handsets.DeviceRollout, limit int, now time.Time) (bool, error) {
	if next == nil || (dec.Kind != rollout.OfferFirst && dec.Kind != rollout.OfferRetry) || (dec.Kind == rollout.OfferRetry && prev == nil) {
		return false, fmt.Errorf("record offer of rollout %s: not a first offer or a retry: %w", dec.RolloutID, errs.ErrInvalid)
	}
	// The budget claim (offer_budget.go): from the allowance, not in the
	// transaction.
	if limit > 0 {
		ok, err := s.db.offers.take(ctx, dec.RolloutID, now, limit)
		if err != nil {
			return false, fmt.Errorf("rollout %s: claim an offer: %w", dec.RolloutID, err)
		}
		if !ok {
			return false, nil
		}
	}
	var (
		change string
		args   []any
		old    *handsets.DeviceRollout
	)
	if dec.Kind == rollout.OfferFirst {
		change = `INSERT INTO device_rollouts (rollout_id, device_id, model, starting_build, offered_at,
	last_offered_at, state, attempts) VALUES (?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (rollout_id, device_id) DO NOTHING`
		args = []any{next.RolloutID, next.DeviceID, next.Model, next.StartingBuild,
			dbTime(next.OfferedAt), dbTime(next.LastOfferedAt), next.State, next.Attempts}
	} else {
		change = `UPDATE device_rollouts SET state = ?, attempts = ?, last_offered_at = ?
WHERE rollout_id = ? AND device_id = ? AND state = ? AND attempts = ?`
		args = []any{next.State, next.Attempts, dbTime(next.LastOfferedAt), next.RolloutID, next.DeviceID, prev.State, prev.Attempts}
		old = prev
	}
	// The record and its rollup deltas: one statement on PostgreSQL.
	deltas := moveRecords(recordMove(old, next), now)
	deltas.merge(countPayload(dec))
	var changed bool
	err := s.db.rawErr(s.db.write(ctx, true, func(x sqlExec) error {
		var err error
		changed, err = s.db.changeWithDeltas(x, change, args, deltas)
		return err
	}))
	// The budget claim: an offer that raced was not made and goes back
	// to the allowance. One that failed is not given back: a failed
	// commit may have been made, and the cap must not be passed.
	if limit > 0 && err == nil && !changed {
		s.db.offers.giveBack(dec.RolloutID, now, limit)
	}
	switch {
	case err == nil:
		return true, nil
	case errors.Is(err, gorm.ErrForeignKeyViolated):
		return false, fmt.Errorf("rollout %s or device %s: %w", next.RolloutID, next.DeviceID, errs.ErrNotFound)
	}
	return false, fmt.Errorf("rollout %s: record offer to device %s: %w", dec.RolloutID, next.DeviceID, err)
}
