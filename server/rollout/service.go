package rollout

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"
	"unicode"

	"github.com/patchfleet/ota/clock"
	"github.com/patchfleet/ota/manifests"
	"github.com/patchfleet/ota/server/audit"
	"github.com/patchfleet/ota/server/errs"
	"github.com/patchfleet/ota/server/handsets"
	"github.com/patchfleet/ota/server/textrule"
)

// RolloutSpec is what an operator asks for when creating a rollout.
type RolloutSpec struct {
	// ID is the rollout's id; empty makes one ("ro-" and 12 hex digits).
	ID string
	// Release is the path of a published target: the rollout offers it
	// with the bounds its signed custom metadata states.
	Release  string
	Selector Selector
	Stages   []float64
	// Policy is the whole policy: start from DefaultPolicy.
	Policy Policy
	// Salt, when empty, is the salt of the patch's earlier rollouts,
	// or the id for the patch's first (see PatchSalt). A salt other than
	// the patch's is refused: cohorts of one patch nest.
	Salt string
	// Draft keeps the rollout a draft; otherwise it starts at once.
	Draft bool
	// Reason is the start's reason; default "created by ACTOR".
	Reason string
}

// RolloutService is the operators' side of rollouts: every change is a
// read-modify-write of the stored rollout under its optimistic lock,
// redone on a fresh read when another replica (or the background
// evaluation) saved the rollout in between, and logged with its actor
// and reason.
type RolloutService struct {
	Store RolloutStore
	// Releases resolves a rollout's release from the published targets.
	Releases TargetSource
	// Now is the clock (default time.Now).
	Now func() time.Time
	// OnChange, when set, is called after every successful write, so
	// that this replica's cache of rollouts is refreshed at once.
	OnChange func()
	// Approvals keeps the four-eyes requests: a start, advance or
	// resume that leaves its patch's exposure above FourEyesPercent
	// waits in it for a second person (see Approve). Without it such
	// widenings are refused.
	Approvals ApprovalStore
	// Audit is the audit log, read when an approval is decided: someone
	// whose account the requester vouched for within VouchWindow cannot
	// approve (VouchedError). Without it that is not checked.
	Audit audit.AuditStore
	// MaxOpen caps the rollouts not finished (draft, running, paused):
	// a create past it is ErrTooManyOpenRollouts. 0 is no cap.
	MaxOpen int
}

// DefaultMaxOpenRollouts is the default of RolloutService.MaxOpen in
// otad (--max-open-rollouts): far above the few a fleet runs at once,
// and few enough that their metric series stay a few hundred.
const DefaultMaxOpenRollouts = 50

// rolloutAttempts bounds the retries of a change whose rollout was saved
// by someone else meanwhile: each retry reads it again, so only a
// rollout changed faster than a round trip to the store exhausts them.
const rolloutAttempts = 5

func (s *RolloutService) now() time.Time { return clock.Now(s.Now).UTC() }

func (s *RolloutService) changed() {
	if s.OnChange != nil {
		s.OnChange()
	}
}

// NewRolloutID makes a rollout id: "ro-" and 12 random hex digits that
// also pass the rule of ids an operator chooses (ValidateChosenID: at
// most 9 decimal digits, ...), which about one in nine draws of 12 hex
// digits does not: so that an id the server made can be given back as a
// chosen one (copied to another server, or to name a rollout again) and
// be refused only for being taken.
func NewRolloutID() (string, error) {
	for {
		var b [6]byte
		if _, err := rand.Read(b[:]); err != nil {
			return "", fmt.Errorf("rollout id: %w", err)
		}
		if id := "ro-" + hex.EncodeToString(b[:]); textrule.ValidateChosenID("id", id) == nil {
			return id, nil
		}
	}
}

// Create makes a rollout of spec and stores it with its audit events in
// one transaction: the create, and the start unless spec.Draft. Errors
// are FieldErrors named as the admin API's body (release when the path
// is not a published target, salt when it is not the salt the patch's
// rollouts share), ErrConflict for an id already taken.
//
// The rollout takes the salt of the patch's earlier rollouts (PatchSalt),
// so that their cohorts nest. A start that leaves the patch's exposure
// above FourEyesPercent (NeedsApproval) waits for a second person: the
// rollout is stored as a draft and returned with the pending approval,
// which is nil when nothing waits. A pending approval is no error: the
// create succeeded.
func (s *RolloutService) Create(ctx context.Context, spec RolloutSpec, actor string) (*Rollout, *Approval, error) {
	if strings.TrimSpace(actor) == "" {
		return nil, nil, ErrNoActor
	}
	id := spec.ID
	if id == "" {
		var err error
		if id, err = NewRolloutID(); err != nil {
			return nil, nil, err
		}
	} else if err := textrule.ValidateChosenID("id", id); err != nil {
		// The id names the rollout in metrics, logs and URLs.
		return nil, nil, err
	}
	rel, err := s.release(spec.Release)
	if err != nil {
		return nil, nil, err
	}
	all, err := s.Store.Rollouts(ctx)
	if err != nil {
		return nil, nil, err
	}
	salt := spec.Salt
	if shared, ok := PatchSalt(all, rel); ok {
		if salt != "" && salt != shared {
			return nil, nil, errs.Fieldf("salt", "the rollouts of patch %s share the salt %q, so that their cohorts nest and four eyes can count how far the patch reaches; leave salt out or give that one",
				rel.PatchID, shared)
		}
		salt = shared
	}
	now := s.now()
	r, ev, err := NewRollout(Rollout{ID: id, Release: rel, Selector: spec.Selector, Stages: spec.Stages,
		Policy: spec.Policy, Salt: salt}, actor, now)
	if err != nil {
		return nil, nil, err
	}
	evs := []Event{ev}
	var waits *Event
	var exposure float64
	if !spec.Draft {
		reason := spec.Reason
		if reason == "" {
			reason = "created by " + actor
		}
		started, start, err := wouldWiden(r, func(r *Rollout, now time.Time) (Event, error) { return r.Start(actor, reason, now) }, now)
		if err != nil {
			return nil, nil, err
		}
		if exposure = Exposure(all, started); NeedsApproval(ActionStart, exposure) {
			// Stored as a draft; the start waits for a second person.
			waits = &start
		} else {
			*r = *started
			evs = append(evs, start)
		}
	}
	if spec.Reason != "" {
		// The create event carries the reason, if one was given, not only
		// the start that follows it (a draft has none).
		if err := checkAction(actor, spec.Reason); err != nil {
			return nil, nil, err
		}
		evs[0].Reason = textrule.Scrub(spec.Reason)
	}
	if waits != nil && s.Approvals == nil {
		return nil, nil, errNoApprovals
	}
	if err := s.Store.CreateRollout(ctx, r, s.MaxOpen, evs...); err != nil {
		return nil, nil, err
	}
	s.changed()
	if waits != nil {
		// On a conflict (the draft changed in the instant since) the
		// draft stays and the caller starts it again.
		return s.requestApproval(ctx, r, *waits, exposure, actor, waits.Reason, now)
	}
	return r, nil, nil
}

// release resolves a published target path into the RolloutRelease its
// signed custom metadata states.
func (s *RolloutService) release(path string) (RolloutRelease, error) {
	if path == "" || len(path) > handsets.MaxTargetLen || strings.ContainsFunc(path, unicode.IsControl) {
		return RolloutRelease{}, errs.Fieldf("release", "want the path of a published target, at most %d printable characters", handsets.MaxTargetLen)
	}
	_, targets := s.Releases.PublishedTargets()
	i := slices.IndexFunc(targets, func(t manifests.TargetInfo) bool { return t.Path == path })
	if i < 0 {
		return RolloutRelease{}, errs.Fieldf("release", "%q is not a published target; otactl status lists them", path)
	}
	var c manifests.TargetCustom
	if len(targets[i].Custom) > 0 {
		if err := json.Unmarshal(targets[i].Custom, &c); err != nil {
			return RolloutRelease{}, errs.Fieldf("release", "the custom metadata of %q is not a patch's", path)
		}
	}
	if inc := c.Incremental; inc != nil {
		return RolloutRelease{}, errs.Fieldf("release", "%q is an incremental payload of %s; roll out %s, and handsets on %s get this payload",
			path, inc.Of, inc.Of, inc.FromBuild)
	}
	return RolloutRelease{Target: path, PatchID: c.PatchID, InstallsBuild: c.InstallsBuild,
		Models: c.Models, BuildMin: c.BuildMin, BuildMax: c.BuildMax}, nil
}

// Get returns the rollout id, or ErrNotFound.
func (s *RolloutService) Get(ctx context.Context, id string) (*Rollout, error) {
	return s.Store.Rollout(ctx, id)
}

// List returns the rollouts in any of states (all without states),
// oldest first.
func (s *RolloutService) List(ctx context.Context, states ...RolloutState) ([]*Rollout, error) {
	for _, st := range states {
		if !slices.Contains(RolloutStates, st) {
			return nil, errs.Fieldf("state", "want one of draft, running, paused, completed, aborted")
		}
	}
	return s.Store.Rollouts(ctx, states...)
}

// Events returns the last limit events of a rollout, oldest first:
// DefaultAuditLimit for 0, at most MaxAuditLimit.
func (s *RolloutService) Events(ctx context.Context, id string, limit int) ([]Event, error) {
	limit, err := auditLimit(limit)
	if err != nil {
		return nil, err
	}
	return s.Store.RolloutEvents(ctx, id, limit)
}

// AuditEvents returns the audit log across rollouts, newest first,
// filtered by f; a zero Limit is DefaultAuditLimit.
func (s *RolloutService) AuditEvents(ctx context.Context, f AuditFilter) ([]Event, error) {
	var err error
	if f.Limit, err = auditLimit(f.Limit); err != nil {
		return nil, err
	}
	if f.Action != "" && !slices.Contains(RolloutActions, f.Action) {
		return nil, errs.Fieldf("action", "want one of %s", strings.Join(RolloutActions, ", "))
	}
	if !f.Since.IsZero() && !f.Until.IsZero() && !f.Until.After(f.Since) {
		return nil, errs.Fieldf("until", "want a time after since")
	}
	return s.Store.AuditEvents(ctx, f)
}

func auditLimit(limit int) (int, error) {
	switch {
	case limit == 0:
		return audit.DefaultAuditLimit, nil
	case limit < 0 || limit > audit.MaxAuditLimit:
		return 0, errs.Fieldf("limit", "want 1 to %d", audit.MaxAuditLimit)
	}
	return limit, nil
}

// RolloutActions lists the audit actions, for filters.
var RolloutActions = []string{ActionCreate, ActionStart, ActionPause, ActionResume, ActionAbort, ActionAdvance,
	ActionComplete, ActionHalt, ActionHold, ActionReleaseHold, ActionApprovalRequested, ActionApprovalRejected,
	ActionStartReached, ActionDeadlineReached}

// Start makes a draft run at its first stage. A start that leaves the
// patch's exposure above FourEyesPercent needs a second person: it is
// then recorded as a pending approval, returned with the draft.
func (s *RolloutService) Start(ctx context.Context, id, actor, reason string) (*Rollout, *Approval, error) {
	return s.widen(ctx, id, actor, reason, func(r *Rollout, now time.Time) (Event, error) { return r.Start(actor, reason, now) })
}

// Pause stops new offers of a running or completed rollout.
func (s *RolloutService) Pause(ctx context.Context, id, actor, reason string) (*Rollout, error) {
	return s.changeAs(ctx, id, actor, func(r *Rollout, now time.Time) (Event, error) { return r.Pause(actor, reason, now) })
}

// Resume runs a paused rollout again, clearing a halt. A paused
// rollout counts toward its patch's exposure, yet resuming it makes it
// offer again: when the exposure is above FourEyesPercent the resume
// needs a second person, as Advance.
func (s *RolloutService) Resume(ctx context.Context, id, actor, reason string) (*Rollout, *Approval, error) {
	return s.widen(ctx, id, actor, reason, func(r *Rollout, now time.Time) (Event, error) { return r.Resume(actor, reason, now) })
}

// Abort ends a rollout for good.
func (s *RolloutService) Abort(ctx context.Context, id, actor, reason string) (*Rollout, error) {
	return s.changeAs(ctx, id, actor, func(r *Rollout, now time.Time) (Event, error) { return r.Abort(actor, reason, now) })
}

// Advance widens a rollout to its next stage (percent 0) or to percent.
// An advance that leaves the patch's exposure above FourEyesPercent
// needs a second person: it is then recorded as a pending approval,
// returned with the rollout as it stands.
func (s *RolloutService) Advance(ctx context.Context, id, actor, reason string, percent float64) (*Rollout, *Approval, error) {
	return s.widen(ctx, id, actor, reason, func(r *Rollout, now time.Time) (Event, error) {
		return r.Advance(actor, reason, percent, now)
	})
}

// widen is changeAs for the actions four eyes may stop: when the change
// action would make leaves the patch's exposure above FourEyesPercent
// (NeedsApproval), it is requested instead of applied, and the pending
// approval returned beside the unchanged rollout. The exposure is
// judged on the same read of the rollout that is saved, so a rollout
// changed meanwhile is judged again.
func (s *RolloutService) widen(ctx context.Context, id, actor, reason string, action func(*Rollout, time.Time) (Event, error)) (*Rollout, *Approval, error) {
	var err error
	for range rolloutAttempts {
		var r *Rollout
		if r, err = s.Store.Rollout(ctx, id); err != nil {
			return nil, nil, err
		}
		now := s.now()
		after, ev, aerr := wouldWiden(r, action, now)
		if aerr != nil {
			return nil, nil, aerr
		}
		var exposure float64
		if exposure, err = exposureAfter(ctx, s.Store, after); err != nil {
			return nil, nil, err
		}
		if NeedsApproval(ev.Action, exposure) {
			out, pending, err := s.requestApproval(ctx, r, ev, exposure, actor, reason, now)
			if !errors.Is(err, errs.ErrConflict) {
				return out, pending, err
			}
			continue
		}
		var out *Rollout
		if out, err = s.save(ctx, after, r.Version, ev, actor, now); !errors.Is(err, errs.ErrConflict) {
			return out, nil, err
		}
	}
	return nil, nil, err
}

// Complete ends the staging of a running rollout at its last stage.
func (s *RolloutService) Complete(ctx context.Context, id, actor, reason string) (*Rollout, error) {
	return s.changeAs(ctx, id, actor, func(r *Rollout, now time.Time) (Event, error) { return r.Complete(actor, reason, now) })
}

// HoldModel stops new offers of a rollout to one model.
func (s *RolloutService) HoldModel(ctx context.Context, id, actor, reason, model string) (*Rollout, error) {
	return s.changeAs(ctx, id, actor, func(r *Rollout, now time.Time) (Event, error) {
		return r.HoldModel(actor, reason, model, now)
	})
}

// ReleaseHold lets a held model be offered again.
func (s *RolloutService) ReleaseHold(ctx context.Context, id, actor, reason, model string) (*Rollout, error) {
	return s.changeAs(ctx, id, actor, func(r *Rollout, now time.Time) (Event, error) {
		return r.ReleaseHold(actor, reason, model, now)
	})
}

// changeAs reads rollout id, applies action to it and saves it with the
// action's event over the version it read. When the store says the
// rollout changed meanwhile, it reads it again and applies action to the
// new state, which may now refuse it (pausing a rollout the evaluation
// just halted is a TransitionError). A change of state or percent
// cancels the rollout's pending approvals, in actor's name, and its
// event says which.
func (s *RolloutService) changeAs(ctx context.Context, id, actor string, action func(*Rollout, time.Time) (Event, error)) (*Rollout, error) {
	var err error
	for range rolloutAttempts {
		var r *Rollout
		if r, err = s.Store.Rollout(ctx, id); err != nil {
			return nil, err
		}
		from := r.Version
		now := s.now()
		ev, aerr := action(r, now)
		if aerr != nil {
			return nil, aerr
		}
		// The action's own refusals came back above: an ErrConflict of
		// save is a stale version.
		if r, err = s.save(ctx, r, from, ev, actor, now); !errors.Is(err, errs.ErrConflict) {
			return r, err
		}
	}
	return nil, err
}

// save stores r, changed by ev from version from, and cancels the
// rollout's pending approvals in actor's name when ev changes its state
// or percent (its event says which). A stale version is ErrConflict and
// nothing is written.
func (s *RolloutService) save(ctx context.Context, r *Rollout, from int64, ev Event, actor string, now time.Time) (*Rollout, error) {
	var pending []*Approval
	if s.Approvals != nil && changesState(ev) {
		var err error
		if pending, err = pendingApprovals(ctx, s.Approvals, r.ID); err != nil {
			return nil, err
		}
		if ids := approvalIDs(pending); ids != "" {
			ev.Detail = strings.TrimPrefix(ev.Detail+"; cancelled "+ids, "; ")
		}
	}
	if err := s.Store.UpdateRollout(ctx, r, from, []Event{ev}); err != nil {
		return nil, err
	}
	s.changed()
	if err := cancelApprovals(ctx, s.Approvals, pending, actor, "the rollout changed: "+ev.Action, now); err != nil {
		return nil, err
	}
	return r, nil
}

// TargetSource is where published targets come from: the TUF repository.
type TargetSource interface {
	// TargetsVersion is cheap; PublishedTargets is called only when it
	// changes.
	TargetsVersion() int64
	PublishedTargets() (version int64, targets []manifests.TargetInfo)
}
