package sqlstore

import (
	"context"
	"errors"
	"fmt"
	"time"

	"gorm.io/gorm"

	"github.com/patchfleet/ota/server/errs"
	"github.com/patchfleet/ota/server/rollout"
)

// ApprovalStore keeps the four-eyes approvals of rollout changes; it
// implements rollout.ApprovalStore.
type ApprovalStore struct{ db *DB }

var _ rollout.ApprovalStore = (*ApprovalStore)(nil)

// Approvals returns the approval store of db.
func (db *DB) Approvals() *ApprovalStore { return &ApprovalStore{db: db} }

type approvalRow struct {
	ID             string `gorm:"primaryKey"`
	RolloutID      string
	ToPercent      float64
	Exposure       float64
	Action         string
	RequestedBy    string
	RequestedAt    time.Time
	Reason         string
	State          string
	DecidedBy      string
	DecidedAt      *time.Time
	DecisionReason string
}

func (approvalRow) TableName() string { return "rollout_approvals" }

func (r *approvalRow) approval() *rollout.Approval {
	return &rollout.Approval{ID: r.ID, RolloutID: r.RolloutID, Action: r.Action, ToPercent: r.ToPercent,
		Exposure: r.Exposure, RequestedBy: r.RequestedBy, RequestedAt: r.RequestedAt.UTC(), Reason: r.Reason,
		State: rollout.ApprovalState(r.State), DecidedBy: r.DecidedBy, DecidedAt: readTime(r.DecidedAt),
		DecisionReason: r.DecisionReason}
}

// CreateApproval implements rollout.ApprovalStore. An unknown rollout is
// ErrNotFound.
func (s *ApprovalStore) CreateApproval(ctx context.Context, a *rollout.Approval) error {
	row := approvalRow{ID: a.ID, RolloutID: a.RolloutID, ToPercent: a.ToPercent, Exposure: a.Exposure, Action: a.Action,
		RequestedBy: a.RequestedBy, RequestedAt: dbTime(a.RequestedAt), Reason: a.Reason, State: string(a.State),
		DecidedBy: a.DecidedBy, DecidedAt: optionalTime(a.DecidedAt), DecisionReason: a.DecisionReason}
	err := s.db.gorm.WithContext(ctx).Create(&row).Error
	switch {
	case errors.Is(err, gorm.ErrDuplicatedKey):
		return fmt.Errorf("approval %s exists: %w", a.ID, errs.ErrConflict)
	case errors.Is(err, gorm.ErrForeignKeyViolated):
		return fmt.Errorf("approval %s: rollout %s: %w", a.ID, a.RolloutID, errs.ErrNotFound)
	case err != nil:
		return fmt.Errorf("create approval %s: %w", a.ID, err)
	}
	return nil
}

// Approval implements rollout.ApprovalStore.
func (s *ApprovalStore) Approval(ctx context.Context, id string) (*rollout.Approval, error) {
	var row approvalRow
	err := s.db.gorm.WithContext(ctx).Where("id = ?", id).Take(&row).Error
	if errors.Is(err, gorm.ErrRecordNotFound) {
		return nil, fmt.Errorf("approval %s: %w", id, errs.ErrNotFound)
	}
	if err != nil {
		return nil, fmt.Errorf("look up approval %s: %w", id, err)
	}
	return row.approval(), nil
}

// RolloutApprovals implements rollout.ApprovalStore, newest request
// first (ids break ties of one instant, so the order is stable).
func (s *ApprovalStore) RolloutApprovals(ctx context.Context, rolloutID string) ([]*rollout.Approval, error) {
	var rows []approvalRow
	if err := s.db.gorm.WithContext(ctx).Where("rollout_id = ?", rolloutID).
		Order("requested_at DESC, id DESC").Find(&rows).Error; err != nil {
		return nil, fmt.Errorf("rollout %s: list approvals: %w", rolloutID, err)
	}
	out := make([]*rollout.Approval, len(rows))
	for i := range rows {
		out[i] = rows[i].approval()
	}
	return out, nil
}

// DecideApproval implements rollout.ApprovalStore. The pending check is
// in the UPDATE's WHERE, so of two decisions exactly one matches the
// row (PostgreSQL re-checks it on the locked row under READ COMMITTED;
// SQLite has one writer at a time).
func (s *ApprovalStore) DecideApproval(ctx context.Context, a *rollout.Approval) error {
	if a.State == rollout.ApprovalPending {
		return fmt.Errorf("decide approval %s: a decision cannot be pending: %w", a.ID, errs.ErrInvalid)
	}
	g := s.db.gorm.WithContext(ctx)
	res := g.Exec(`UPDATE rollout_approvals SET state = ?, decided_by = ?, decided_at = ?, decision_reason = ?
WHERE id = ? AND state = ?`, string(a.State), a.DecidedBy, optionalTime(a.DecidedAt), a.DecisionReason,
		a.ID, string(rollout.ApprovalPending))
	if res.Error != nil {
		return fmt.Errorf("decide approval %s: %w", a.ID, res.Error)
	}
	if res.RowsAffected == 1 {
		return nil
	}
	stored, err := s.Approval(ctx, a.ID)
	if err != nil {
		return err
	}
	return fmt.Errorf("%w: approval %s is %s already (by %s)", errs.ErrConflict, a.ID, stored.State, stored.DecidedBy)
}
