package rollout

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"time"

	"github.com/patchfleet/ota/server/errs"
	"github.com/patchfleet/ota/server/identity"
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
// second must approve before it happens (four eyes): a start, advance
// or resume that leaves the patch's exposure above FourEyesPercent (see
// NeedsApproval). Its requester cannot approve it, nor can anyone whose
// account the requester vouched for in the last VouchWindow (see
// VouchedError); who counts as the same person is the principal's user
// name, which a token shares with its owner.
type Approval struct {
	ID        string
	RolloutID string
	// Action is ActionAdvance, ActionStart or ActionResume.
	Action string
	// ToPercent is the percent the rollout will be at once approved: the
	// advance's target, the start's first stage, the resumed stage.
	ToPercent float64
	// Exposure is the exposure of the rollout's patch the change makes,
	// as it was asked for: approving applies it only if the exposure
	// then is no more (0 on requests from before it was kept: ToPercent
	// stands in).
	Exposure    float64
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

// approvedExposure is the patch exposure the approval lets the change
// make: Exposure, or ToPercent on a request from before it was kept.
func (a *Approval) approvedExposure() float64 {
	if a.Exposure > 0 {
		return a.Exposure
	}
	return a.ToPercent
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
var ErrSelfApproval = fmt.Errorf("%w: a second person must approve a widening that lets a patch reach more than %d%% of the handsets its rollouts select; ask another operator", errs.ErrForbidden, identity.FourEyesPercent)

// NewApprovalID makes an approval id: "ap-" and 12 random hex digits.
func NewApprovalID() string {
	b := make([]byte, 6)
	rand.Read(b)
	return "ap-" + hex.EncodeToString(b)
}
