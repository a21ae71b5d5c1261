package rollout

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"time"

	"github.com/patchfleet/ota/clock"
	"github.com/patchfleet/ota/server/audit"
	"github.com/patchfleet/ota/server/errs"
)

// OfferBudgetRetention is how long the evaluator keeps the offer budget
// of a past minute: no replica claims a minute that long gone, and a few
// minutes' rows stay readable when a cap is being looked into.
const OfferBudgetRetention = 10 * time.Minute

// maxEvaluateAttempts bounds the re-reads of one rollout that keeps
// changing under the evaluator; the next pass tries again.
const maxEvaluateAttempts = 5

// RolloutEvaluator runs the policies that act on their own: auto-halt
// (EvaluateHealth) and auto-advance (EvaluateAdvance) of every running
// or completed rollout, and the pruning of the offer budget. Run one
// Evaluate at a time across all replicas (the App holds a Lease for it):
// two would not corrupt anything, as saves are optimistically locked,
// but they would do the reads twice.
type RolloutEvaluator struct {
	Store RolloutStore
	// Now is the clock (default time.Now).
	Now func() time.Time
	// OnEvent, when set, is called with each event saved, after the save
	// (for metrics).
	OnEvent func(Event)
	// OnChange, when set, is called once at the end of an Evaluate that
	// saved any change, so that a replica's cache of rollouts is read
	// again.
	OnChange func()
	// Logger receives a line per saved event (default: discard).
	Logger *slog.Logger
	// Approvals receives the four-eyes requests of auto-advances that
	// would take their patch's exposure (Exposure, every rollout of the
	// patch counted) past FourEyesPercent: the evaluator never widens
	// that far on its own,
	// it asks on behalf of the rollout's creator, who then cannot
	// approve it alone. Without it such auto-advances do not happen.
	// Pending approvals of a rollout it halts are cancelled.
	Approvals ApprovalStore
}

// Evaluate runs the policies once at Now. It skips a rollout whose
// scheduled start is ahead; once it is reached, and once the deadline
// passed, it saves one event each (NoteSchedule). For each running or
// completed rollout it counts the results per model since
// Rollout.ResultsSince and runs EvaluateHealth, then, if the rollout still runs and its soak is
// over, counts them since Rollout.StageResultsSince and runs
// EvaluateAdvance; it saves what changed with its events. A save that
// finds the rollout changed meanwhile (an operator paused it, say) reads
// it again and evaluates the fresh copy from scratch, so a change made
// in between is never overwritten. An error with one rollout does not
// keep the others from being evaluated; Evaluate returns them all.
func (e *RolloutEvaluator) Evaluate(ctx context.Context) error {
	now := clock.Now(e.Now)
	rollouts, err := e.Store.Rollouts(ctx, RolloutRunning, RolloutCompleted)
	if err != nil {
		return fmt.Errorf("evaluate rollouts: %w", err)
	}
	var errs []error
	changed := false
	for _, r := range rollouts {
		if ctx.Err() != nil {
			errs = append(errs, ctx.Err())
			break
		}
		saved, err := e.evaluate(ctx, r, now)
		changed = changed || saved
		if err != nil {
			errs = append(errs, err)
		}
	}
	if changed && e.OnChange != nil {
		e.OnChange()
	}
	if _, err := e.Store.PruneOfferBudget(ctx, now.Add(-OfferBudgetRetention)); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// evaluate runs the policies on r and saves what they changed, reading r
// again on a conflict. It reports whether it saved.
func (e *RolloutEvaluator) evaluate(ctx context.Context, r *Rollout, now time.Time) (bool, error) {
	id := r.ID
	for attempt := 1; ; attempt++ {
		// A copy: the store (or a cache behind it) may share r.
		r = r.Clone()
		version := r.Version
		evs, req, err := e.decide(ctx, r, now)
		if err != nil || len(evs) == 0 {
			return false, err
		}
		var pending []*Approval
		if e.Approvals != nil && slices.ContainsFunc(evs, changesState) {
			if pending, err = pendingApprovals(ctx, e.Approvals, id); err != nil {
				return false, fmt.Errorf("evaluate rollout %s: %w", id, err)
			}
		}
		err = e.Store.UpdateRollout(ctx, r, version, evs)
		if err == nil {
			for _, ev := range evs {
				e.logEvent(ctx, ev)
				if e.OnEvent != nil {
					e.OnEvent(ev)
				}
			}
			var errs []error
			if req != nil {
				if err := e.Approvals.CreateApproval(ctx, req); err != nil {
					errs = append(errs, fmt.Errorf("evaluate rollout %s: record approval %s: %w", id, req.ID, err))
				}
			}
			if err := cancelApprovals(ctx, e.Approvals, pending, audit.SystemActor, "the rollout changed on its own", now); err != nil {
				errs = append(errs, fmt.Errorf("evaluate rollout %s: %w", id, err))
			}
			return true, errors.Join(errs...)
		}
		if !errors.Is(err, errs.ErrConflict) || attempt == maxEvaluateAttempts {
			return false, fmt.Errorf("evaluate rollout %s: save: %w", id, err)
		}
		if r, err = e.Store.Rollout(ctx, id); err != nil {
			return false, fmt.Errorf("evaluate rollout %s: read it again after a conflict: %w", id, err)
		}
	}
}

// decide runs the policies on r at now, changing r, and returns the
// events to save with it, and the approval to record once they are saved
// when the policy would advance past four eyes.
func (e *RolloutEvaluator) decide(ctx context.Context, r *Rollout, now time.Time) ([]Event, *Approval, error) {
	if !r.State.Offering() {
		// Re-read after a conflict: paused or aborted meanwhile.
		return nil, nil, nil
	}
	if r.Policy.Scheduled(now) {
		// Not started: no offers yet, so nothing to halt or advance.
		return nil, nil, nil
	}
	evs := r.NoteSchedule(now)
	health, err := e.results(ctx, r, now, func(model string) time.Time { return r.ResultsSince(model, now) })
	if err != nil {
		return nil, nil, err
	}
	evs = append(evs, EvaluateHealth(r, health, now)...)
	// EvaluateAdvance does nothing before the soak ends: the stage's
	// results are not read until then.
	var req *Approval
	if r.State == RolloutRunning && r.Policy.Soak > 0 && !now.Before(r.SoakStart().Add(r.Policy.Soak)) {
		stage, err := e.results(ctx, r, now, r.StageResultsSince)
		if err != nil {
			return nil, nil, err
		}
		// On a copy first: an advance that takes the patch's exposure
		// past four eyes is asked for, not made.
		next := r.Clone()
		if ev, ok := EvaluateAdvance(next, stage, now); ok {
			exposure, err := exposureAfter(ctx, e.Store, next)
			if err != nil {
				return nil, nil, fmt.Errorf("evaluate rollout %s: %w", r.ID, err)
			}
			if !NeedsApproval(ev.Action, exposure) {
				*r = *next
				evs = append(evs, ev)
			} else if ask, err := e.askApproval(ctx, r, ev, exposure, now); err != nil {
				return nil, nil, err
			} else if ask != nil {
				req = ask
				evs = append(evs, e.requestEvent(r, ask, now))
			}
		}
	}
	return evs, req, nil
}

// askApproval returns the approval to request for the auto-advance ev of
// r, on behalf of the rollout's creator, or nil when one was already
// asked for this stage's soak (pending, or decided: a rejection holds
// until the stage changes or the rollout is resumed) or there is no
// store to ask in.
func (e *RolloutEvaluator) askApproval(ctx context.Context, r *Rollout, ev Event, exposure float64, now time.Time) (*Approval, error) {
	if e.Approvals == nil {
		return nil, nil
	}
	all, err := e.Approvals.RolloutApprovals(ctx, r.ID)
	if err != nil {
		return nil, fmt.Errorf("evaluate rollout %s: %w", r.ID, err)
	}
	since := r.SoakStart()
	for _, a := range all {
		if a.Pending() || !a.RequestedAt.Before(since) {
			return nil, nil
		}
	}
	return &Approval{ID: NewApprovalID(), RolloutID: r.ID, Action: ActionAdvance, ToPercent: ev.ToPercent, Exposure: exposure,
		RequestedBy: r.CreatedBy, RequestedAt: now, Reason: "auto-advance: " + ev.Reason, State: ApprovalPending}, nil
}

// requestEvent is the approval_requested event of an auto-advance that
// waits for a second person.
func (e *RolloutEvaluator) requestEvent(r *Rollout, a *Approval, now time.Time) Event {
	ev := r.event(ActionApprovalRequested, audit.SystemActor, a.Reason, now)
	ev.ToPercent = a.ToPercent
	ev.Detail = fmt.Sprintf("approval %s: advance to %g%% (patch exposure %g%%) waits for a second person; asked on behalf of the rollout's creator %s, who cannot approve it alone",
		a.ID, a.ToPercent, a.Exposure, a.RequestedBy)
	return ev
}

// results counts r's results per model, each model from since(model).
// RolloutResults counts every model from one time, and since differs
// between models only through Rollout.ModelHealthSince (a released
// hold), never to before since(""): so it counts all models from
// since(""), then, for each later time a model in ModelHealthSince
// starts at, once more from that time, and takes that model's count (or
// its absence) from there. One query per distinct time: one in the usual
// case, and a released model's own query ends once its release is out
// of the failure window or before the stage's start.
func (e *RolloutEvaluator) results(ctx context.Context, r *Rollout, now time.Time, since func(model string) time.Time) (map[string]Results, error) {
	base := since("")
	counted := make(map[int64]map[string]Results) // by UnixNano
	count := func(from time.Time) (map[string]Results, error) {
		if c, ok := counted[from.UnixNano()]; ok {
			return c, nil
		}
		q := ResultsQuery{RolloutID: r.ID, Since: from}
		if r.Policy.SilenceAfter > 0 {
			q.SilentBefore = now.Add(-r.Policy.SilenceAfter)
		}
		if r.Policy.MinConfirmations > 0 {
			q.Confirm = &r.Release
		}
		c, err := e.Store.RolloutResults(ctx, q)
		if err != nil {
			return nil, fmt.Errorf("evaluate rollout %s: %w", r.ID, err)
		}
		counted[from.UnixNano()] = c
		return c, nil
	}
	all, err := count(base)
	if err != nil {
		return nil, err
	}
	out := maps.Clone(all)
	for _, m := range slices.Sorted(maps.Keys(r.ModelHealthSince)) {
		from := since(m)
		if !from.After(base) {
			continue
		}
		own, err := count(from)
		if err != nil {
			return nil, err
		}
		if res, ok := own[m]; ok {
			out[m] = res
		} else {
			delete(out, m)
		}
	}
	return out, nil
}

func (e *RolloutEvaluator) logEvent(ctx context.Context, ev Event) {
	if e.Logger == nil {
		return
	}
	level := slog.LevelInfo
	if ev.Action == ActionHalt || ev.Action == ActionHold {
		level = slog.LevelWarn
	}
	attrs := []slog.Attr{slog.String("rollout", ev.RolloutID), slog.String("action", ev.Action),
		slog.String("reason", ev.Reason), slog.String("from_state", string(ev.FromState)),
		slog.String("to_state", string(ev.ToState)), slog.Float64("from_percent", ev.FromPercent),
		slog.Float64("to_percent", ev.ToPercent)}
	if ev.Model != "" {
		attrs = append(attrs, slog.String("model", ev.Model))
	}
	e.Logger.LogAttrs(ctx, level, "rollout policy acted", attrs...)
}
