package rollout

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/patchfleet/ota/server/errs"
	"github.com/patchfleet/ota/server/identity"
	"github.com/patchfleet/ota/server/textrule"
)

// errNoApprovals is four eyes without a store to record the request in:
// the widening is refused rather than let through unapproved.
var errNoApprovals = fmt.Errorf("%w: widening past %d%% needs an approval store, and none is configured", errs.ErrUnavailable, identity.FourEyesPercent)

// wouldWiden applies action to a copy of r and returns the copy and the
// event it would make, with the action's own refusals: so that a
// request for approval is refused exactly when the change itself would
// be, and the exposure it makes can be judged before it is saved.
func wouldWiden(r *Rollout, action func(*Rollout, time.Time) (Event, error), now time.Time) (*Rollout, Event, error) {
	c := r.Clone()
	ev, err := action(c, now)
	return c, ev, err
}

// requestApproval records that actor asks for the change ev describes
// (a start, advance or resume that makes the patch's exposure exposure)
// on r, read at its version: an
// approval_requested event saved over that version, then the pending
// approval. Older pending approvals of the rollout are cancelled: the
// newest request is the one that stands. It returns r as saved and the
// pending approval, or ErrConflict when r changed meanwhile (the caller
// reads it again).
func (s *RolloutService) requestApproval(ctx context.Context, r *Rollout, ev Event, exposure float64, actor, reason string, now time.Time) (*Rollout, *Approval, error) {
	if s.Approvals == nil {
		return nil, nil, errNoApprovals
	}
	pending, err := pendingApprovals(ctx, s.Approvals, r.ID)
	if err != nil {
		return nil, nil, err
	}
	a := &Approval{ID: NewApprovalID(), RolloutID: r.ID, Action: ev.Action, ToPercent: ev.ToPercent, Exposure: exposure,
		RequestedBy: actor, RequestedAt: now, Reason: textrule.Scrub(reason), State: ApprovalPending}
	req := r.event(ActionApprovalRequested, actor, reason, now)
	req.ToPercent = ev.ToPercent
	req.Detail = fmt.Sprintf("approval %s: %s to %g%% (patch exposure %g%%) waits for a second person", a.ID, ev.Action, ev.ToPercent, exposure)
	if ids := approvalIDs(pending); ids != "" {
		req.Detail += "; cancelled " + ids
	}
	from := r.Version
	if err := s.Store.UpdateRollout(ctx, r, from, []Event{req}); err != nil {
		return nil, nil, err
	}
	s.changed()
	if err := s.Approvals.CreateApproval(ctx, a); err != nil {
		// The event says it was asked for; without the row nobody can
		// approve it, so the requester must ask again.
		return nil, nil, fmt.Errorf("record approval %s (the request event is saved; ask again): %w", a.ID, err)
	}
	if err := cancelApprovals(ctx, s.Approvals, pending, actor, "superseded by "+a.ID, now); err != nil {
		return nil, nil, err
	}
	return r, a, nil
}

// pendingApprovals returns the pending approvals of a rollout.
func pendingApprovals(ctx context.Context, store ApprovalStore, rolloutID string) ([]*Approval, error) {
	all, err := store.RolloutApprovals(ctx, rolloutID)
	if err != nil {
		return nil, err
	}
	return slices.DeleteFunc(all, func(a *Approval) bool { return !a.Pending() }), nil
}

func approvalIDs(as []*Approval) string {
	ids := make([]string, len(as))
	for i, a := range as {
		ids[i] = a.ID
	}
	return strings.Join(ids, ", ")
}

// cancelApprovals cancels pending approvals; one decided meanwhile by
// someone else (ErrConflict) stays as they decided it.
func cancelApprovals(ctx context.Context, store ApprovalStore, as []*Approval, by, why string, now time.Time) error {
	var failed []error
	for _, a := range as {
		c := *a
		c.State, c.DecidedBy, c.DecidedAt, c.DecisionReason = ApprovalCancelled, by, now, why
		if err := store.DecideApproval(ctx, &c); err != nil && !errors.Is(err, errs.ErrConflict) && !errors.Is(err, errs.ErrNotFound) {
			failed = append(failed, fmt.Errorf("cancel approval %s: %w", a.ID, err))
		}
	}
	return errors.Join(failed...)
}

// Approvals returns a rollout's approvals, newest first, or ErrNotFound
// for an unknown rollout.
func (s *RolloutService) ListApprovals(ctx context.Context, rolloutID string) ([]*Approval, error) {
	if _, err := s.Store.Rollout(ctx, rolloutID); err != nil {
		return nil, err
	}
	if s.Approvals == nil {
		return []*Approval{}, nil
	}
	return s.Approvals.RolloutApprovals(ctx, rolloutID)
}

// decidable returns the pending approval approvalID of rollout rolloutID.
func (s *RolloutService) decidable(ctx context.Context, rolloutID, approvalID string) (*Approval, error) {
	if s.Approvals == nil {
		return nil, errNoApprovals
	}
	a, err := s.Approvals.Approval(ctx, approvalID)
	if err != nil {
		return nil, err
	}
	if a.RolloutID != rolloutID {
		return nil, fmt.Errorf("approval %s of rollout %s: %w", approvalID, rolloutID, errs.ErrNotFound)
	}
	if !a.Pending() {
		return nil, fmt.Errorf("%w: approval %s is %s already (by %s: %s)", errs.ErrConflict, a.ID, a.State, a.DecidedBy, a.DecisionReason)
	}
	return a, nil
}

// Approve lets a pending widening through: approver, who must not be its
// requester (ErrSelfApproval) nor someone whose account the requester
// vouched for within VouchWindow (*VouchedError), approves it with a
// reason and the change is applied at once, acted by the approver, its
// event naming both.
//
// The decision is recorded first, as a compare-and-swap on pending, so
// that of two approvers (or an approver and a rejecter) only one wins;
// the change is checked against the rollout just before, and again on
// every read as it is saved: if it would now make the patch's exposure
// larger than the request said (another rollout of the patch widened
// meanwhile), it is refused with ErrConflict. If the rollout changes in
// between so that the change is refused after all, the approval stays
// approved without effect and the error says so: the requester asks
// again.
func (s *RolloutService) Approve(ctx context.Context, rolloutID, approvalID, approver, reason string) (*Rollout, *Approval, error) {
	if err := checkAction(approver, reason); err != nil {
		return nil, nil, err
	}
	a, err := s.decidable(ctx, rolloutID, approvalID)
	if err != nil {
		return nil, nil, err
	}
	if a.RequestedBy == approver {
		return nil, nil, ErrSelfApproval
	}
	if err := identity.CheckVouched(ctx, s.Audit, a.RequestedBy, approver, s.now()); err != nil {
		return nil, nil, err
	}
	detail := fmt.Sprintf("approval %s: requested by %s (%s), approved by %s", a.ID, a.RequestedBy, a.Reason, approver)
	apply := func(r *Rollout, now time.Time) (Event, error) {
		var ev Event
		var err error
		switch a.Action {
		case ActionStart:
			if len(r.Stages) > 0 && r.Stages[0] != a.ToPercent {
				return Event{}, fmt.Errorf("%w: the rollout's first stage is now %g%%, not the %g%% approved", errs.ErrConflict, r.Stages[0], a.ToPercent)
			}
			ev, err = r.Start(approver, reason, now)
		case ActionAdvance:
			ev, err = r.Advance(approver, reason, a.ToPercent, now)
		case ActionResume:
			if r.Percent() != a.ToPercent {
				return Event{}, fmt.Errorf("%w: the rollout is now at %g%%, not the %g%% approved", errs.ErrConflict, r.Percent(), a.ToPercent)
			}
			ev, err = r.Resume(approver, reason, now)
		default:
			return Event{}, fmt.Errorf("approval %s: unknown action %q", a.ID, a.Action)
		}
		if err != nil {
			return ev, err
		}
		exposure, err := exposureAfter(ctx, s.Store, r)
		if err != nil {
			return Event{}, err
		}
		if stageCohorts(exposure) > stageCohorts(a.approvedExposure()) {
			return Event{}, fmt.Errorf("%w: approval %s was asked for a patch exposure of %g%%, and the change would now make it %g%% (other rollouts of patch %s widened meanwhile); ask again",
				errs.ErrConflict, a.ID, a.approvedExposure(), exposure, r.Release.PatchID)
		}
		ev.Detail = detail
		return ev, nil
	}
	r, err := s.Store.Rollout(ctx, rolloutID)
	if err != nil {
		return nil, nil, err
	}
	if _, _, err := wouldWiden(r, apply, s.now()); err != nil {
		return nil, nil, err
	}
	d := *a
	d.State, d.DecidedBy, d.DecidedAt, d.DecisionReason = ApprovalApproved, approver, s.now(), textrule.Scrub(reason)
	if err := s.Approvals.DecideApproval(ctx, &d); err != nil {
		return nil, nil, err
	}
	r, err = s.changeAs(ctx, rolloutID, approver, apply)
	if err != nil {
		return nil, &d, fmt.Errorf("approval %s is recorded as approved, but the change failed (ask again): %w", a.ID, err)
	}
	return r, &d, nil
}

// Reject closes a pending widening without applying it. Anyone who may
// approve may reject, the requester too (withdrawing it). The rejection
// is logged as an approval_rejected event of the rollout.
func (s *RolloutService) Reject(ctx context.Context, rolloutID, approvalID, actor, reason string) (*Approval, error) {
	if err := checkAction(actor, reason); err != nil {
		return nil, err
	}
	a, err := s.decidable(ctx, rolloutID, approvalID)
	if err != nil {
		return nil, err
	}
	d := *a
	d.State, d.DecidedBy, d.DecidedAt, d.DecisionReason = ApprovalRejected, actor, s.now(), textrule.Scrub(reason)
	if err := s.Approvals.DecideApproval(ctx, &d); err != nil {
		return nil, err
	}
	_, err = s.changeAs(ctx, rolloutID, actor, func(r *Rollout, now time.Time) (Event, error) {
		ev := r.event(ActionApprovalRejected, actor, reason, now)
		ev.ToPercent = a.ToPercent
		ev.Detail = fmt.Sprintf("approval %s: %s to %g%% requested by %s, rejected by %s", a.ID, a.Action, a.ToPercent, a.RequestedBy, actor)
		return ev, nil
	})
	if err != nil {
		return &d, fmt.Errorf("approval %s is rejected, but logging it failed: %w", a.ID, err)
	}
	return &d, nil
}

// changesState reports whether an event moved the rollout's state or
// percent: such a change cancels the pending approvals, which were asked
// for against the rollout as it was.
func changesState(ev Event) bool {
	return ev.FromState != ev.ToState || ev.FromPercent != ev.ToPercent
}
