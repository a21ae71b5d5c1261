package rollout

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	"github.com/patchfleet/ota/server/audit"
	"github.com/patchfleet/ota/server/errs"
	"github.com/patchfleet/ota/server/handsets"
)

// ResultsQuery is what RolloutStore.RolloutResults counts.
type ResultsQuery struct {
	RolloutID string
	Since     time.Time
	// SilentBefore, when set, counts Silent (Policy.SilenceAfter).
	SilentBefore time.Time
	// Confirm, when set, counts Confirmed: handsets back on its
	// InstallsBuild with its PatchID (Policy.MinConfirmations).
	Confirm *RolloutRelease
}

// RolloutStore keeps rollouts, their audit log, the handsets' records of
// them and the shared offers-per-minute budget. Several replicas share
// one store: every method is safe to call from all of them at once.
type RolloutStore interface {
	// CreateRollout stores a new rollout (NewRollout's, possibly started
	// since) with the events that made it (the create, then the start),
	// in one transaction, and sets r.Version to 1. An id already taken
	// is ErrConflict. With maxOpen above 0, a rollout that would make
	// more than maxOpen rollouts not finished (OpenRolloutStates) is not
	// stored: the answer is ErrTooManyOpenRollouts. The count is taken
	// in the transaction, under the lock every create holds, so that
	// creates at once from any replica cannot pass the cap together.
	CreateRollout(ctx context.Context, r *Rollout, maxOpen int, evs ...Event) error
	// UpdateRollout saves r and appends evs to its audit log, in one
	// transaction, if the stored rollout is still at expectVersion (the
	// Version of the copy r was changed from); it then sets r.Version to
	// expectVersion+1. A stored rollout at another version is
	// ErrConflict and nothing is written, events neither: read it again
	// and redo the change. An unknown id is ErrNotFound.
	UpdateRollout(ctx context.Context, r *Rollout, expectVersion int64, evs []Event) error
	// Rollout returns the rollout id, or ErrNotFound.
	Rollout(ctx context.Context, id string) (*Rollout, error)
	// Rollouts returns the rollouts in any of states (all without
	// states), oldest first.
	Rollouts(ctx context.Context, states ...RolloutState) ([]*Rollout, error)
	// RolloutEvents returns the last limit events of a rollout's audit
	// log (all with limit below 1), oldest first. An unknown rollout is
	// ErrNotFound.
	RolloutEvents(ctx context.Context, rolloutID string, limit int) ([]Event, error)
	// AuditEvents returns the audit log across rollouts, newest first:
	// the events that pass every set field of f, at most f.Limit
	// (DefaultAuditLimit below 1, MaxAuditLimit at most).
	AuditEvents(ctx context.Context, f AuditFilter) ([]Event, error)

	// DeviceRollouts returns a handset's records, of every rollout that
	// ever made it an offer.
	DeviceRollouts(ctx context.Context, deviceID string) ([]*handsets.DeviceRollout, error)
	// PutDeviceRollout stores dr, replacing the record of the same
	// rollout and handset: the last write wins, so the caller writes
	// what Decision.Record or DeviceRollout.Observe made of the record
	// it read. An unknown rollout or handset is ErrNotFound.
	PutDeviceRollout(ctx context.Context, dr *handsets.DeviceRollout) error
	// RecordOffer records the offer dec (OfferFirst or OfferRetry) to a
	// handset, in one transaction with the rollups it moves: next is
	// what dec.Record made of prev (prev is nil for a first offer). With
	// limit above 0 it first takes one from the rollout's budget for the
	// minute of now (as ClaimOffer), and when there is no room it
	// records nothing and returns false. A record that another check-in
	// of the handset wrote in the meantime (a first offer already
	// inserted, a retry already counted) is left as it is, and the
	// answer is still true: the handset is offered what the other
	// check-in offered, and the offer taken is given back.
	RecordOffer(ctx context.Context, dec Decision, prev, next *handsets.DeviceRollout, limit int, now time.Time) (bool, error)
	// RolloutResults counts a rollout's results per model: the records
	// whose state is installed, or failed or rolled back (both Failed),
	// with ResultAt at or after q.Since, of handsets that did not enroll
	// after the rollout started (EnrolledLate, decided when a report
	// moves the record). Models without results are absent. It reads an
	// index on (rollout, result time), not the fleet.
	//
	// With q.SilentBefore set (now - Policy.SilenceAfter) it also counts
	// Silent: records offered (an install begun: downloading to
	// installing) at or after q.Since and before q.SilentBefore, or
	// installed in that span, whose handset has not checked in since that
	// time; those installed are not in Installed. A silent handset that
	// checks in again stops counting. With q.Confirm set it counts
	// Confirmed: installed records whose handset has checked in since,
	// running the release's InstallsBuild with its patch. Either reads the
	// rollout's records and their devices, not an index alone: it runs
	// only for rollouts that ask.
	RolloutResults(ctx context.Context, q ResultsQuery) (map[string]Results, error)

	// ClaimOffer takes one offer from a rollout's budget for the minute
	// that holds minute, shared by all replicas, and reports whether
	// there was room: at most limit claims of one minute succeed however
	// many replicas claim at once. A replica may claim several offers at
	// once and hand them out itself, so that offers do not all write one
	// shared row (sqlstore claims up to an eighth of the cap, at most 32):
	// the cap is never exceeded, but offers a replica claimed and did not
	// hand out before the minute ended are lost, up to one chunk less one
	// per replica and minute. A minute older than one a replica was
	// already asked about is past: refused, nothing claimed. A limit
	// below 1 is no cap (as Policy.MaxOffersPerMinute 0): always true,
	// nothing written.
	ClaimOffer(ctx context.Context, rolloutID string, minute time.Time, limit int) (bool, error)
	// PruneOfferBudget deletes the budgets of minutes before before and
	// returns how many; a minute past is never claimed again.
	PruneOfferBudget(ctx context.Context, before time.Time) (int64, error)
}

// OpenRolloutStates are the states of a rollout not finished: what
// RolloutService.MaxOpen caps.
var OpenRolloutStates = []RolloutState{RolloutDraft, RolloutRunning, RolloutPaused}

// ErrTooManyOpenRollouts is a create refused because as many rollouts
// as RolloutService.MaxOpen are not finished. Each of them has metric
// series and is read at every check-in's decision; 300 created in a
// second made 3,111 series on /metrics.
var ErrTooManyOpenRollouts = fmt.Errorf("%w: too many rollouts not finished", errs.ErrConflict)

// AuditFilter selects audit events; each zero field matches every event.
type AuditFilter struct {
	RolloutID string
	Actor     string
	Action    string
	// Since is inclusive, Until exclusive.
	Since, Until time.Time
	Limit        int
}

// rolloutAuditDetail is the Detail of a rollout event's audit entry: the
// numbers of the event, in a fixed field order, empty ones left out.
type rolloutAuditDetail struct {
	FromState   RolloutState `json:"from_state,omitempty"`
	ToState     RolloutState `json:"to_state,omitempty"`
	FromPercent *float64     `json:"from_percent,omitempty"`
	ToPercent   *float64     `json:"to_percent,omitempty"`
	Model       string       `json:"model,omitempty"`
	Installed   *int64       `json:"installed,omitempty"`
	Failed      *int64       `json:"failed,omitempty"`
	Rate        *float64     `json:"rate,omitempty"`
	MaxRate     *float64     `json:"max_rate,omitempty"`
	Window      string       `json:"window,omitempty"`
	Detail      string       `json:"detail,omitempty"`
}

// RolloutEventAudit is the audit entry of a rollout event, which the
// rollout store appends in the transaction that records the event, so
// that the audit log holds every rollout change (Action "rollout." and
// the event's action, Object the rollout id) beside the admin actions.
func RolloutEventAudit(ev Event) audit.AuditEntry {
	d := rolloutAuditDetail{FromState: ev.FromState, ToState: ev.ToState, Model: ev.Model, Detail: ev.Detail}
	if ev.FromPercent != 0 || ev.ToPercent != 0 {
		from, to := ev.FromPercent, ev.ToPercent
		d.FromPercent, d.ToPercent = &from, &to
	}
	if h := ev.Hold; h != nil {
		if d.Model == "" {
			d.Model = h.Model
		}
		if h.Installed != 0 || h.Failed != 0 || h.MaxRate != 0 {
			installed, failed, rate, maxRate := h.Installed, h.Failed, h.Rate, h.MaxRate
			d.Installed, d.Failed, d.Rate, d.MaxRate = &installed, &failed, &rate, &maxRate
		}
		if h.Window != 0 {
			d.Window = FormatDuration(h.Window)
		}
	}
	b, err := json.Marshal(d)
	if err != nil {
		panic(err) // strings and numbers always marshal
	}
	return audit.AuditEntry{At: ev.At, Actor: ev.Actor, Action: "rollout." + ev.Action, Object: ev.RolloutID,
		Reason: ev.Reason, Detail: string(b)}
}
