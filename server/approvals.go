package server

import (
	"context"
	"fmt"
	"time"
)

// ApprovalState is where a four-eyes request stands.
type ApprovalState string

// Approval states. Only a pending approval can be decided; the others are
// final.
const (
	ApprovalPending   ApprovalState = "pending"
	ApprovalApproved  ApprovalState = "approved"
	ApprovalRejected  ApprovalState = "rejected"
	ApprovalCancelled ApprovalState = "cancelled"
)

// ApprovalStates lists the approval states, for validation.
var ApprovalStates = []ApprovalState{ApprovalPending, ApprovalApproved, ApprovalRejected, ApprovalCancelled}

// Rollout events of four eyes. ActionApprovalRequested is a widening
// that waits for a second person; an approval shows in the event of the
// change it lets through (acted by the approver, its Detail naming the
// requester), a rejection as ActionApprovalRejected, a cancellation in
// the Detail of the change that cancelled it.
const (
	ActionApprovalRequested = "approval_requested"
	ActionApprovalRejected  = "approval_rejected"
)

// Approval is a widening of a rollout that one person asked for and a
// second must approve before it happens (four eyes): an advance past
// FourEyesPercent, or a start whose first stage is 100%. Its
// requester cannot approve it; who counts as the same person is the
// principal's user name.
type Approval struct {
	ID        string
	RolloutID string
	// Action is ActionAdvance or ActionStart.
	Action string
	// ToPercent is the percent the rollout will be at once approved: the
	// advance's target, or the start's first stage.
	ToPercent   float64
	RequestedBy string
	RequestedAt time.Time
	Reason      string
	State       ApprovalState
	// DecidedBy, DecidedAt and DecisionReason are set when the state
	// leaves pending: by the approver, the rejecter, or whoever's change
	// cancelled it (a newer request, a pause, an abort).
	DecidedBy      string
	DecidedAt      time.Time
	DecisionReason string
}

// Pending reports whether the approval still waits for a decision.
func (a *Approval) Pending() bool { return a.State == ApprovalPending }

// ApprovalStore keeps four-eyes approvals. Several replicas share it.
type ApprovalStore interface {
	// CreateApproval stores a new pending approval. An id already taken
	// is ErrConflict.
	CreateApproval(ctx context.Context, a *Approval) error
	// Approval returns the approval id, or ErrNotFound.
	Approval(ctx context.Context, id string) (*Approval, error)
	// RolloutApprovals returns a rollout's approvals, newest first (an
	// unknown rollout has none).
	RolloutApprovals(ctx context.Context, rolloutID string) ([]*Approval, error)
	// DecideApproval moves the stored approval a.ID from pending to
	// a.State, with a.DecidedBy, a.DecidedAt and a.DecisionReason, as a
	// compare-and-swap: if the stored one is no longer pending (another
	// replica decided it first) nothing is written and the answer is
	// ErrConflict. An unknown id is ErrNotFound.
	DecideApproval(ctx context.Context, a *Approval) error
}

// ErrSelfApproval is a requester approving their own request. It is an
// ErrForbidden.
var ErrSelfApproval = fmt.Errorf("%w: a second person must approve a widening past %d%% or a start at 100%%; ask another operator", ErrForbidden, FourEyesPercent)

// NewApprovalID makes an approval id: "ap-" and 12 random hex digits.
func NewApprovalID() string { return "ap-" + randomHex(6) }

// NeedsApproval reports whether a change needs a second person: an
// advance to above FourEyesPercent, or a start whose first stage is 100%.
func NeedsApproval(action string, toPercent float64) bool {
	switch action {
	case ActionAdvance:
		return toPercent > FourEyesPercent
	case ActionStart:
		return toPercent >= 100
	}
	return false
}
