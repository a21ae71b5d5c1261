package rollout

import (
	"errors"
	"slices"
	"strings"
	"time"

	"github.com/patchfleet/ota/server/handsets"
)

// Why a rollout makes a handset no offer. Each is the Reason of a
// refused Decision; match with errors.Is. RefusalCode names them for the
// check-in answer and metrics.
var (
	ErrNotSelected       = errors.New("not selected by the rollout")
	ErrRunsPatch         = errors.New("runs the patch")
	ErrBuildNotOlder     = errors.New("already on the release's build or newer")
	ErrRolloutNotRunning = errors.New("rollout not running")
	ErrRolloutHalted     = errors.New("rollout halted")
	ErrModelHeld         = errors.New("model held")
	ErrNotInCohort       = errors.New("not in the current stage's cohort")
	ErrOutsideWindow     = errors.New("outside the maintenance window")
	ErrRetryBackoff      = errors.New("waiting to retry a failed install")
	ErrAttemptsExhausted = errors.New("no attempts left")
	ErrOfferCapReached   = errors.New("offers per minute cap reached")
	// ErrScheduled is a rollout whose scheduled start (Policy.StartAt)
	// is still ahead.
	ErrScheduled = errors.New("scheduled to start later")
	// ErrReleaseNotPublished is a rollout whose release was yanked: no
	// handset can fetch it any more.
	ErrReleaseNotPublished = errors.New("release no longer published")
)

var refusalCodes = []struct {
	err  error
	code string
}{
	{ErrNotSelected, "not_selected"},
	{ErrRunsPatch, "runs_patch"},
	{ErrBuildNotOlder, "build_not_older"},
	{ErrRolloutNotRunning, "rollout_not_running"},
	{ErrRolloutHalted, "rollout_halted"},
	{ErrModelHeld, "model_held"},
	{ErrNotInCohort, "not_in_cohort"},
	{ErrOutsideWindow, "outside_window"},
	{ErrRetryBackoff, "retry_backoff"},
	{ErrAttemptsExhausted, "attempts_exhausted"},
	{ErrOfferCapReached, "offer_cap_reached"},
	{ErrReleaseNotPublished, "release_not_published"},
	{ErrScheduled, "scheduled"},
}

// RefusalCode is the snake-case code of a refusal reason ("not_in_cohort"),
// for the check-in answer and metric labels; "" for nil and "no_offer"
// for anything else.
func RefusalCode(err error) string {
	if err == nil {
		return ""
	}
	for _, c := range refusalCodes {
		if errors.Is(err, c.err) {
			return c.code
		}
	}
	return "no_offer"
}

// OfferCapPollAfter is the PollAfter of ErrOfferCapReached: the budget is
// per minute. The caller jitters it, as it jitters every poll interval,
// so refused handsets do not return together.
const OfferCapPollAfter = time.Minute

// DecisionInput is what a decision needs besides the rollout, the
// handset and its record.
type DecisionInput struct {
	Now time.Time
	// UTCOffsetMinutes is the handset's offset from UTC as its check-in
	// sent it. Without one (or with one out of bounds) the maintenance
	// window is read in UTC.
	UTCOffsetMinutes *int
	// BudgetLeft says whether the rollout's shared offers-per-minute
	// budget has room; ignored for a rollout without a cap. It may be a
	// replica's cached view: the store claims the offer atomically after
	// the decision (see Decision.TakesBudget and CapReached).
	BudgetLeft bool
}

// OfferKind says what an offer is to the store.
type OfferKind int

const (
	// OfferNone is a refusal.
	OfferNone OfferKind = iota
	// OfferFirst is the rollout's first offer to the handset: the store
	// inserts its DeviceRollout and takes one from the budget.
	OfferFirst
	// OfferRetry is a new attempt after a failure: the store counts the
	// attempt and takes one from the budget.
	OfferRetry
	// OfferRepeat is the offer the handset already has, answered again
	// so that it can finish: nothing to record, nothing taken.
	OfferRepeat
)

// Decision is a rollout's answer to a handset at a time: an offer of the
// rollout's release (Kind not OfferNone), or a refusal with a Reason.
type Decision struct {
	RolloutID string
	Kind      OfferKind
	// Release is what is offered; zero on a refusal.
	Release RolloutRelease
	// Reason is one of the ErrX refusals; nil on an offer.
	Reason error
	// Urgent says an offer came at or after the rollout's deadline
	// (Policy.Deadline): it ignored the maintenance window, and the
	// handset should install without waiting for a window of its own.
	Urgent bool
	// PollAfter is when asking again could first change a refusal: until
	// the scheduled start comes, the window opens, the backoff ends, or
	// the budget renews. Zero when nothing in particular will change:
	// the caller's poll interval applies. The caller answers the smaller
	// of the two, so a handset still checks in at its interval.
	PollAfter time.Duration
	// Payload is which payload of the release an offer carries; the
	// caller that knows the published targets sets it (ChoosePayload).
	Payload Payload
}

// Payload is the payload an offer carries, against the full image: what
// the rollout report's bytes offered and bytes saved add up.
type Payload struct {
	// Target is the payload's target path; FromBuild the starting build
	// of an incremental payload, "" for the full image.
	Target    string
	FromBuild string
	// Bytes is the payload's size, FullBytes the full image's.
	Bytes, FullBytes int64
}

// Incremental reports whether p is an incremental payload.
func (p Payload) Incremental() bool { return p.FromBuild != "" }

// ChoosePayload picks the payload of a release for a handset on build
// whose record of the rollout is prev (nil before the first offer): the
// incremental payload from exactly that build when the release has one
// (incremental, ok) and no incremental failed to apply on the handset
// (prev.FullOnly), else the full image.
func ChoosePayload(full Payload, build string, prev *handsets.DeviceRollout, incremental func(build string) (Payload, bool)) Payload {
	if prev != nil && prev.FullOnly {
		return full
	}
	if p, ok := incremental(build); ok {
		p.FromBuild, p.FullBytes = build, full.Bytes
		return p
	}
	return full
}

// Offered reports whether the decision is an offer.
func (dec Decision) Offered() bool { return dec.Kind != OfferNone }

// TakesBudget reports whether the offer counts toward the offers-per-
// minute cap: first offers and retries do, repeats do not.
func (dec Decision) TakesBudget() bool { return dec.Kind == OfferFirst || dec.Kind == OfferRetry }

// CapReached is the refusal to answer instead of dec when the store
// could not take dec's offer from the shared budget.
func (dec Decision) CapReached() Decision {
	return Decision{RolloutID: dec.RolloutID, Reason: ErrOfferCapReached, PollAfter: OfferCapPollAfter}
}

// Record is the DeviceRollout to store after the offer dec to d: a new
// one for a first offer, prev with one more attempt for a retry, prev for
// anything else.
func (dec Decision) Record(prev *handsets.DeviceRollout, d *handsets.Device, now time.Time) *handsets.DeviceRollout {
	switch dec.Kind {
	case OfferFirst:
		return &handsets.DeviceRollout{RolloutID: dec.RolloutID, DeviceID: d.ID, Model: d.Model, StartingBuild: d.Build,
			OfferedAt: now, LastOfferedAt: now, State: handsets.DeviceOffered, Attempts: 1}
	case OfferRetry:
		next := *prev
		next.State, next.LastOfferedAt, next.Attempts = handsets.DeviceOffered, now, prev.Attempts+1
		return &next
	}
	return prev
}

// Refuse is the refusal of r with reason, to ask again after pollAfter.
func Refuse(r *Rollout, reason error, pollAfter time.Duration) Decision {
	return Decision{RolloutID: r.ID, Reason: reason, PollAfter: pollAfter}
}

// offer is r's offer of kind at now; urgent past the deadline while r
// offers (a handset finishing an install for a paused or aborted
// rollout is not hurried).
func offer(r *Rollout, kind OfferKind, now time.Time) Decision {
	return Decision{RolloutID: r.ID, Kind: kind, Release: r.Release, Urgent: r.State.Offering() && r.Policy.Urgent(now)}
}

// Decide is rollout r's answer to handset d at in.Now; dr is the
// handset's record of r, nil before the first offer. In order:
//
//   - a handset that runs the patch (or reported it installed) is refused
//     (ErrRunsPatch), and one already on the release's build or newer
//     (ErrBuildNotOlder): a rollout never moves a handset back;
//   - a handset that reported it began installing (downloading to
//     installing) keeps its offer in every state but draft, so that it
//     finishes and reports after a pause, a halt, a hold or an abort;
//   - a handset the rollout and the release's own bounds do not select is
//     refused (ErrNotSelected), a record notwithstanding: a retry goes
//     only to handsets still selected;
//   - no offer unless the rollout is running or completed
//     (ErrRolloutHalted after an auto-halt, else ErrRolloutNotRunning),
//     nor to a held model (ErrModelHeld), nor before the scheduled
//     start (ErrScheduled, PollAfter until it);
//   - a handset offered the release that has not reported since gets it
//     again, without a cohort, window or budget check: it was counted;
//   - after a failure, a handset waits out the backoff (ErrRetryBackoff,
//     PollAfter until it ends) and gets at most 1 + Retries attempts
//     (ErrAttemptsExhausted);
//   - a first offer needs the handset in the current stage's cohort
//     (ErrNotInCohort);
//   - first offers and retries need the maintenance window open in the
//     handset's local time (ErrOutsideWindow, PollAfter until it opens),
//     unless the deadline passed, and room in the budget
//     (ErrOfferCapReached, OfferCapPollAfter);
//   - every offer of a running or completed rollout at or after the
//     deadline is Urgent.
func Decide(r *Rollout, d *handsets.Device, dr *handsets.DeviceRollout, in DecisionInput) Decision {
	if d.Patched(r.Release.PatchID) || (dr != nil && dr.State == handsets.StateInstalled) {
		return Refuse(r, ErrRunsPatch, 0)
	}
	if handsets.CompareBuilds(d.Build, r.Release.InstallsBuild) >= 0 {
		return Refuse(r, ErrBuildNotOlder, 0)
	}
	if r.State == RolloutDraft {
		return Refuse(r, ErrRolloutNotRunning, 0)
	}
	if dr != nil && dr.Installing() {
		return offer(r, OfferRepeat, in.Now)
	}
	if !r.Selector.Matches(d) || !r.Release.appliesTo(d) {
		return Refuse(r, ErrNotSelected, 0)
	}
	switch {
	case r.State == RolloutPaused && r.Halt != nil:
		return Refuse(r, ErrRolloutHalted, 0)
	case !r.State.Offering():
		return Refuse(r, ErrRolloutNotRunning, 0)
	case r.ModelHold(d.Model) != nil:
		return Refuse(r, ErrModelHeld, 0)
	case r.Policy.Scheduled(in.Now):
		return Refuse(r, ErrScheduled, r.Policy.StartAt.Sub(in.Now))
	}
	kind := OfferFirst
	if dr != nil {
		if !dr.Failed() {
			return offer(r, OfferRepeat, in.Now)
		}
		if dr.Attempts > r.Policy.Retries {
			return Refuse(r, ErrAttemptsExhausted, 0)
		}
		if wait := dr.LastFailureAt.Add(r.Policy.backoff(dr.Attempts)).Sub(in.Now); wait > 0 {
			return Refuse(r, ErrRetryBackoff, wait)
		}
		kind = OfferRetry
	} else if !InStage(r.Salt, d.ID, r.Percent()) {
		return Refuse(r, ErrNotInCohort, 0)
	}
	if wait := r.Policy.Window.UntilOpen(in.Now, utcOffset(in.UTCOffsetMinutes)); wait > 0 && !r.Policy.Urgent(in.Now) {
		return Refuse(r, ErrOutsideWindow, wait)
	}
	if r.Policy.MaxOffersPerMinute > 0 && !in.BudgetLeft {
		return Refuse(r, ErrOfferCapReached, OfferCapPollAfter)
	}
	return offer(r, kind, in.Now)
}

// ChooseRollout decides for handset d among the rollouts, so that it is
// offered at most one release at a time; records are d's DeviceRollouts
// (of any rollout), budgetLeft says whether a rollout's budget has room
// (nil: all have). Rollouts are asked in this order, and the first offer
// wins:
//
//  1. those d has a record of: one it reported installing first, then one
//     offered and not reported on, then failed ones; within each, the
//     latest offer first. So a handset installing one release is never
//     offered another, and it retries where it started;
//  2. running and completed ones it has no record of, the most recently
//     started first (then the greatest id): the newest decision of the
//     release managers wins.
//
// Drafts are never asked. When none offers, the refusal is the first
// that can change (not ErrNotSelected, ErrRunsPatch, ErrBuildNotOlder or
// ErrAttemptsExhausted), else the first; its PollAfter is the smallest
// non-zero PollAfter of all refusals. With no rollout at all the reason
// is ErrNotSelected.
func ChooseRollout(rollouts []*Rollout, d *handsets.Device, records []*handsets.DeviceRollout, in DecisionInput, budgetLeft func(rolloutID string) bool) Decision {
	byID := make(map[string]*handsets.DeviceRollout, len(records))
	for _, dr := range records {
		byID[dr.RolloutID] = dr
	}
	type candidate struct {
		r  *Rollout
		dr *handsets.DeviceRollout
	}
	cands := make([]candidate, 0, len(rollouts))
	for _, r := range rollouts {
		if r.State == RolloutDraft {
			continue
		}
		if dr := byID[r.ID]; dr != nil {
			cands = append(cands, candidate{r, dr})
		} else if r.State.Offering() || r.State == RolloutPaused {
			cands = append(cands, candidate{r, nil})
		}
	}
	rank := func(c candidate) int {
		switch {
		case c.dr == nil:
			return 3
		case c.dr.Installing():
			return 0
		case c.dr.Failed():
			return 2
		}
		return 1
	}
	slices.SortStableFunc(cands, func(a, b candidate) int {
		if ra, rb := rank(a), rank(b); ra != rb {
			return ra - rb
		}
		if a.dr != nil {
			if c := b.dr.LastOfferedAt.Compare(a.dr.LastOfferedAt); c != 0 {
				return c
			}
		} else if c := b.r.StartedAt.Compare(a.r.StartedAt); c != 0 {
			return c
		}
		return strings.Compare(b.r.ID, a.r.ID)
	})
	var first, changeable *Decision
	var poll time.Duration
	for _, c := range cands {
		in := in
		in.BudgetLeft = budgetLeft == nil || budgetLeft(c.r.ID)
		dec := Decide(c.r, d, c.dr, in)
		if dec.Offered() {
			return dec
		}
		if dec.PollAfter > 0 && (poll == 0 || dec.PollAfter < poll) {
			poll = dec.PollAfter
		}
		if first == nil {
			first = &dec
		}
		if changeable == nil && !final(dec.Reason) {
			changeable = &dec
		}
	}
	var dec Decision
	switch {
	case changeable != nil:
		dec = *changeable
	case first != nil:
		dec = *first
	default:
		return Decision{Reason: ErrNotSelected}
	}
	dec.PollAfter = poll
	return dec
}

// final reports whether a refusal stays so for the handset whatever
// happens to the rollout.
func final(reason error) bool {
	for _, err := range [...]error{ErrNotSelected, ErrRunsPatch, ErrBuildNotOlder, ErrAttemptsExhausted} {
		if errors.Is(reason, err) {
			return true
		}
	}
	return false
}
