package rollout

import (
	"fmt"
	"math"
	"slices"
	"strings"
	"time"
	"unicode"

	"github.com/patchfleet/ota/server/errs"
	"github.com/patchfleet/ota/server/handsets"
	"github.com/patchfleet/ota/server/textrule"
)

// RolloutState is where a rollout is in its life.
type RolloutState string

// Rollout states. Only a running or completed rollout makes new offers.
//
//	draft ──start──▶ running ──complete──▶ completed
//	                 │  ▲ resume            │
//	           pause │  │                   │ pause
//	  (or auto-halt) ▼  │                   │ (or auto-halt)
//	                 paused ◀───────────────┘
//
//	draft, running, paused, completed ──abort──▶ aborted (final)
//
// A completed rollout has soaked its last stage; it goes on offering the
// release at that stage, so handsets that were off or offline catch up,
// until it is aborted.
const (
	RolloutDraft     RolloutState = "draft"
	RolloutRunning   RolloutState = "running"
	RolloutPaused    RolloutState = "paused"
	RolloutCompleted RolloutState = "completed"
	RolloutAborted   RolloutState = "aborted"
)

// RolloutStates lists the states in life order.
var RolloutStates = []RolloutState{RolloutDraft, RolloutRunning, RolloutPaused, RolloutCompleted, RolloutAborted}

// Offering reports whether a rollout in state s makes new offers.
func (s RolloutState) Offering() bool { return s == RolloutRunning || s == RolloutCompleted }

// RolloutRelease is the published release a rollout offers, as its
// signed targets metadata states it. The store resolves it from the
// target path when the rollout is created; the check-in builds the Offer
// (length, sha256, custom metadata) from the published target of that
// path, and offers nothing if it was yanked since.
type RolloutRelease struct {
	// Target is the TUF target path.
	Target  string
	PatchID string
	// InstallsBuild is the build a handset runs once the release is
	// installed: a handset on it or newer is never offered the release.
	InstallsBuild string
	// Models, BuildMin and BuildMax are the release's own bounds (its
	// signed custom metadata); the rollout's Selector narrows them.
	Models   []string
	BuildMin string
	BuildMax string
}

// Selector says which handsets a rollout is for. Each empty field
// matches every handset; a handset must match all of them.
type Selector struct {
	Models   []string
	Channels []string
	Regions  []string
	// BuildMin and BuildMax bound the handset's build, inclusive, by
	// CompareBuilds.
	BuildMin string
	BuildMax string
}

// Matches reports whether d is one of the selected handsets.
func (s *Selector) Matches(d *handsets.Device) bool {
	return (len(s.Models) == 0 || slices.Contains(s.Models, d.Model)) &&
		(len(s.Channels) == 0 || slices.Contains(s.Channels, d.Channel)) &&
		(len(s.Regions) == 0 || slices.Contains(s.Regions, d.Region)) &&
		InBuildRange(d.Build, s.BuildMin, s.BuildMax)
}

// appliesTo reports whether the release's own signed bounds admit d.
func (rel *RolloutRelease) appliesTo(d *handsets.Device) bool {
	return (len(rel.Models) == 0 || slices.Contains(rel.Models, d.Model)) &&
		InBuildRange(d.Build, rel.BuildMin, rel.BuildMax)
}

// InBuildRange reports whether build lies between lo and hi (either
// empty for no bound), by CompareBuilds; reports split by it too.
func InBuildRange(build, lo, hi string) bool {
	return (lo == "" || handsets.CompareBuilds(build, lo) >= 0) && (hi == "" || handsets.CompareBuilds(build, hi) <= 0)
}

// Policy is how a rollout protects the fleet. Start from DefaultPolicy:
// zero is a meaningful value for several fields.
type Policy struct {
	// MaxFailureRate is the largest failed / (installed + failed), a
	// fraction (0.05 is 5%), a rollout or a model may show over
	// FailureWindow before it is halted or held.
	MaxFailureRate float64
	// MinResults is how many results (installed plus failed) the rate
	// needs before it counts: for the whole rollout, for a model, and for
	// a stage to advance on its own.
	MinResults int64
	// FailureWindow is how far back results count toward the rate.
	FailureWindow time.Duration
	// Soak is how long a stage runs healthy before it advances on its own
	// (the last one completes); zero is no auto-advance: the operator
	// advances.
	Soak time.Duration
	// Retries is how many times a handset whose install failed is offered
	// the release again: it gets at most 1 + Retries attempts.
	Retries int
	// Backoff[i] is the wait after the (i+1)th failed attempt before the
	// next offer; past its end the last value repeats.
	Backoff []time.Duration
	// MaxOffersPerMinute caps new offers (first offers and retries) per
	// minute across all replicas; zero is no cap.
	MaxOffersPerMinute int
	// Window is the handsets' local hours for new offers; zero is any hour.
	Window Window
	// SilenceAfter turns on silence: a handset that began installing the
	// release (or reported it installed) and has not checked in for this
	// long since counts as silent, as a failure toward MaxFailureRate,
	// for its model and the whole rollout: a handset the patch bricks, or
	// that boot-loops before its agent runs, reports nothing. Set it
	// above the handsets' poll interval plus the install time. Zero is
	// off.
	SilenceAfter time.Duration
	// MaxSilenceRate is the largest silent / results a rollout or a model
	// may show before it is halted or held, on its own, once MinResults
	// results are in; zero is no limit of its own (silence still counts
	// toward MaxFailureRate). It needs SilenceAfter.
	MaxSilenceRate float64
	// MinConfirmations is how many handsets of a stage must be confirmed,
	// back on the release's build with the patch after reporting it
	// installed, before the stage advances on its own: a reported install
	// is the handset's word, a check-in on the new build is the proof.
	// Zero counts reported installs only.
	MinConfirmations int64
	// StartAt, when set, is the scheduled start: before it the rollout
	// offers nothing (ErrScheduled), even once started, and its first
	// stage (and soak) begins there, not when it was started. Zero, or a
	// time already past when it starts, is at once.
	StartAt time.Time
	// Deadline, when set, is when the rollout's offers become urgent: from
	// then on a handset is offered the release outside the maintenance
	// Window too, and the offer says so (Decision.Urgent), so that the
	// handset installs without waiting for a window of its own. It must be
	// after StartAt. Zero is never.
	Deadline time.Time
}

// Scheduled reports whether p's scheduled start is still ahead at now:
// the rollout offers nothing yet.
func (p *Policy) Scheduled(now time.Time) bool { return now.Before(p.StartAt) }

// Urgent reports whether p's deadline has passed at now: offers are
// urgent and ignore the maintenance window.
func (p *Policy) Urgent(now time.Time) bool { return !p.Deadline.IsZero() && !now.Before(p.Deadline) }

// startOf is when a stage begun at now starts: now, or the scheduled
// start if that is later, so that a soak counts from the first offers.
func (p *Policy) startOf(now time.Time) time.Time { return latest(now, p.StartAt) }

// DefaultPolicy is a rollout's policy unless the operator says otherwise:
// halt above 5% failures over the last hour once 50 results are in, no
// auto-advance, 3 retries after 1 h, 4 h and 24 h, no cap, any hour.
func DefaultPolicy() Policy {
	return Policy{
		MaxFailureRate: 0.05,
		MinResults:     50,
		FailureWindow:  time.Hour,
		Retries:        3,
		Backoff:        []time.Duration{time.Hour, 4 * time.Hour, 24 * time.Hour},
	}
}

// backoff is the wait after attempt number attempts failed.
func (p *Policy) backoff(attempts int) time.Duration {
	if len(p.Backoff) == 0 {
		return 0
	}
	return p.Backoff[min(max(attempts-1, 0), len(p.Backoff)-1)]
}

// Limits of a rollout's settings.
const (
	MaxRolloutStages  = 20
	MaxSelectorValues = 100
	MaxReasonLen      = 500
)

// Validate checks p, naming the field as the admin API body does.
func (p *Policy) Validate() error {
	switch {
	case math.IsNaN(p.MaxFailureRate) || p.MaxFailureRate < 0 || p.MaxFailureRate > 1:
		return errs.Fieldf("max_failure_rate", "want a fraction from 0 to 1 (0.05 is 5%%)")
	case p.MinResults < 1 || p.MinResults > 1_000_000:
		return errs.Fieldf("min_results", "want 1 to 1000000")
	case p.FailureWindow < time.Minute || p.FailureWindow > 7*24*time.Hour:
		return errs.Fieldf("failure_window", "want 1m to 168h")
	case p.Soak < 0 || p.Soak > 30*24*time.Hour:
		return errs.Fieldf("soak", "want 0 (no auto-advance) to 720h")
	case p.Retries < 0 || p.Retries > 10:
		return errs.Fieldf("retries", "want 0 to 10")
	case p.Retries > 0 && len(p.Backoff) == 0:
		return errs.Fieldf("backoff", "retries need at least one backoff")
	case len(p.Backoff) > 10:
		return errs.Fieldf("backoff", "at most 10")
	case p.MaxOffersPerMinute < 0 || p.MaxOffersPerMinute > 1_000_000:
		return errs.Fieldf("max_offers_per_minute", "want 0 (no cap) to 1000000")
	case p.SilenceAfter != 0 && (p.SilenceAfter < time.Minute || p.SilenceAfter > 7*24*time.Hour):
		return errs.Fieldf("silence_after", "want 0 (off) or 1m to 168h")
	case math.IsNaN(p.MaxSilenceRate) || p.MaxSilenceRate < 0 || p.MaxSilenceRate > 1:
		return errs.Fieldf("max_silence_rate", "want a fraction from 0 to 1 (0.02 is 2%%)")
	case p.MinConfirmations < 0 || p.MinConfirmations > 1_000_000:
		return errs.Fieldf("min_confirmations", "want 0 (reported installs only) to 1000000")
	case p.MaxSilenceRate > 0 && p.SilenceAfter == 0:
		return errs.Fieldf("max_silence_rate", "needs silence_after: how long a handset may stay silent")
	case !plausibleTime(p.StartAt):
		return errs.Fieldf("start_at", "want a time from the year 2000 to 9999")
	case !plausibleTime(p.Deadline):
		return errs.Fieldf("deadline", "want a time from the year 2000 to 9999")
	case !p.StartAt.IsZero() && !p.Deadline.IsZero() && !p.Deadline.After(p.StartAt):
		return errs.Fieldf("deadline", "want a time after start_at: offers become urgent some time after they begin")
	}
	for i, b := range p.Backoff {
		if b < time.Minute || b > 7*24*time.Hour {
			return errs.Fieldf(fmt.Sprintf("backoff[%d]", i), "want 1m to 168h")
		}
	}
	return nil
}

// plausibleTime reports whether t is zero (none) or a time a rollout can
// be scheduled for: a Unix epoch mistaken for none is no time a fleet ran,
// and a year past 9999 has no RFC 3339 text to store and show.
func plausibleTime(t time.Time) bool {
	return t.IsZero() || (t.Year() >= 2000 && t.Year() <= 9999)
}

// Hold stops new offers of a rollout: to a single model (Model set), or
// to every handset (a halt, Model empty). It keeps what the failure rate
// was when it was set, to be shown and logged.
type Hold struct {
	Model string
	// Actor is who set it: SystemActor for an automatic one.
	Actor  string
	Reason string
	// Installed, Failed and Silent are the results over Window, Rate is
	// (Failed + Silent) / (Installed + Failed + Silent) and MaxRate the
	// limit it passed, or for a hold for silence alone the silence limit;
	// all zero on a hold an operator set.
	Installed int64
	Failed    int64
	Silent    int64
	Rate      float64
	MaxRate   float64
	Window    time.Duration
	At        time.Time
}

// Rollout offers one published release to the handsets a selector picks,
// in stages of widening percent.
type Rollout struct {
	ID       string
	Release  RolloutRelease
	Selector Selector
	// Stages are increasing percents of the selected handsets, such as
	// 1, 10, 50, 100; Stage is the index of the current one.
	Stages []float64
	Stage  int
	State  RolloutState
	// Salt makes the rollout's cohorts its own: a handset in the first 1%
	// of one rollout is not in the first 1% of every rollout.
	Salt   string
	Policy Policy
	// Halt, when set, is why the rollout stopped on its own (it is then
	// paused); Resume clears it.
	Halt *Hold
	// Holds are the held models, sorted by model.
	Holds []Hold

	CreatedBy string
	CreatedAt time.Time
	StartedAt time.Time
	// StageStartedAt is when the current stage began: the soak starts there.
	StageStartedAt time.Time
	// EndedAt is when it completed or was aborted.
	EndedAt time.Time
	// HealthSince is when the operator last resumed it: results before
	// it count neither toward a halt nor toward an advance, or a resumed
	// rollout would halt again on the failures it was halted for.
	HealthSince time.Time
	// ModelHealthSince is the same per model, set when a hold is released.
	ModelHealthSince map[string]time.Time
	// StartNotedAt and DeadlineNotedAt are when the rollout's events said
	// that its scheduled start (Policy.StartAt) was reached and that its
	// Policy.Deadline passed; zero until then. They are saved with the
	// event, under Version, so that each is said once (see NoteSchedule).
	StartNotedAt    time.Time
	DeadlineNotedAt time.Time

	// Version is the store's optimistic lock: 1 once created, one more
	// at every save. RolloutStore.UpdateRollout saves only over the
	// version the change was made from, so of two replicas changing one
	// rollout at once the second gets ErrConflict instead of undoing the
	// first. Zero before the rollout is stored.
	Version int64
}

// Percent is the current stage's percent; 0 for a rollout without stages.
func (r *Rollout) Percent() float64 {
	if r.Stage < 0 || r.Stage >= len(r.Stages) {
		return 0
	}
	return r.Stages[r.Stage]
}

// LastStage reports whether the current stage is the last one.
func (r *Rollout) LastStage() bool { return r.Stage == len(r.Stages)-1 }

// ModelHold returns the hold on model, or nil.
func (r *Rollout) ModelHold(model string) *Hold {
	i, ok := slices.BinarySearchFunc(r.Holds, model, func(h Hold, m string) int { return strings.Compare(h.Model, m) })
	if !ok {
		return nil
	}
	return &r.Holds[i]
}

// ResultsSince is where the results that count toward auto-halt for
// model begin at now: the failure window, but not before the last resume
// or, for the model, the release of its hold. The store counts each
// model's installed and failed results from there; pass "" for a model
// nobody released to get the rollout's own start.
func (r *Rollout) ResultsSince(model string, now time.Time) time.Time {
	return latest(now.Add(-r.Policy.FailureWindow), r.HealthSince, r.ModelHealthSince[model])
}

// SoakStart is when the current stage's soak began: the stage's start, or
// the last resume if later.
func (r *Rollout) SoakStart() time.Time { return latest(r.StageStartedAt, r.HealthSince) }

// StageResultsSince is where the results that count toward auto-advance
// for model begin: SoakStart, or the release of the model's hold if later.
func (r *Rollout) StageResultsSince(model string) time.Time {
	return latest(r.SoakStart(), r.ModelHealthSince[model])
}

func latest(ts ...time.Time) time.Time {
	var t time.Time
	for _, u := range ts {
		if u.After(t) {
			t = u
		}
	}
	return t
}

// Pending reports whether r could still offer d its release: r is not a
// draft, and d neither runs the patch nor is on InstallsBuild or newer.
// A check-in for which no rollout is pending needs no device_rollouts
// read.
func (r *Rollout) Pending(d *handsets.Device) bool {
	return r.State != RolloutDraft && r.State != "" && !d.Patched(r.Release.PatchID) &&
		handsets.CompareBuilds(d.Build, r.Release.InstallsBuild) < 0
}

// Clone returns a deep copy of r, so that a rollout shared by check-ins
// (a replica's cache) is never changed under them: actions change a copy
// that the store then saves.
func (r *Rollout) Clone() *Rollout {
	c := *r
	c.Release.Models = slices.Clone(r.Release.Models)
	c.Selector.Models = slices.Clone(r.Selector.Models)
	c.Selector.Channels = slices.Clone(r.Selector.Channels)
	c.Selector.Regions = slices.Clone(r.Selector.Regions)
	c.Stages = slices.Clone(r.Stages)
	c.Policy.Backoff = slices.Clone(r.Policy.Backoff)
	if r.Halt != nil {
		h := *r.Halt
		c.Halt = &h
	}
	c.Holds = slices.Clone(r.Holds)
	if r.ModelHealthSince != nil {
		c.ModelHealthSince = make(map[string]time.Time, len(r.ModelHealthSince))
		for k, v := range r.ModelHealthSince {
			c.ModelHealthSince[k] = v
		}
	}
	return &c
}

// Validate checks r, naming the field as the admin API's create body
// does: release (the target path), release.patch_id,
// release.installs_build, stages[i], models[i], channels[i], regions[i],
// build_min, build_max, salt, and the Policy's fields.
func (r *Rollout) Validate() error {
	rel := &r.Release
	if rel.Target == "" || len(rel.Target) > handsets.MaxTargetLen || strings.ContainsFunc(rel.Target, unicode.IsControl) {
		return errs.Fieldf("release", "want the path of a published target, at most %d printable characters", handsets.MaxTargetLen)
	}
	if !textrule.IDPattern.MatchString(rel.PatchID) {
		return errs.Fieldf("release.patch_id", "the release's metadata names no patch id; only patches drafted by this server can be rolled out")
	}
	if !handsets.BuildPattern.MatchString(rel.InstallsBuild) {
		return errs.Fieldf("release.installs_build", "the release states no build it installs; draft it with --installs-build")
	}
	if err := validateStages(r.Stages); err != nil {
		return err
	}
	if r.Stage < 0 || r.Stage >= len(r.Stages) {
		return errs.Fieldf("stage", "want an index into stages")
	}
	if err := r.Selector.validate(); err != nil {
		return err
	}
	if s := r.Selector.BuildMin; s != "" && handsets.CompareBuilds(s, rel.InstallsBuild) >= 0 {
		return errs.Fieldf("build_min", "at or above the release's installs_build %s: no handset would be offered it", rel.InstallsBuild)
	}
	// A salt is stored and shown with the rollout: it gets the rule of
	// an id an operator chooses, so that it cannot carry an IMEI, unless
	// it is the rollout's id (NewRollout's default), which may be one
	// NewRolloutID made.
	if r.Salt != r.ID || !textrule.ValidRolloutID(r.ID) {
		if err := textrule.ValidateChosenID("salt", r.Salt); err != nil {
			return err
		}
	}
	if !slices.Contains(RolloutStates, r.State) {
		return errs.Fieldf("state", "want one of draft, running, paused, completed, aborted")
	}
	return r.Policy.Validate()
}

// validateStages wants 1 to MaxRolloutStages increasing percents in
// steps of 0.01, above 0 and at most 100.
func validateStages(stages []float64) error {
	if len(stages) == 0 || len(stages) > MaxRolloutStages {
		return errs.Fieldf("stages", "want 1 to %d percents, such as 1,10,50,100", MaxRolloutStages)
	}
	for i, p := range stages {
		field := fmt.Sprintf("stages[%d]", i)
		switch {
		case math.IsNaN(p) || p <= 0 || p > 100:
			return errs.Fieldf(field, "want a percent above 0 and at most 100")
		case math.Abs(p*100-math.Round(p*100)) > 1e-6:
			return errs.Fieldf(field, "want a percent in steps of 0.01")
		case i > 0 && p <= stages[i-1]:
			return errs.Fieldf(field, "want each stage above the one before")
		}
	}
	return nil
}

func (s *Selector) validate() error {
	// The handsets' own rules (ValidateModel, ...): a selector is stored
	// and audited, and a value no handset may send selects none.
	regionRule := func(field, v string) error {
		if !handsets.RegionPattern.MatchString(v) {
			return errs.Fieldf(field, "want an ISO 3166-1 alpha-2 code such as DE")
		}
		return nil
	}
	for _, f := range [...]struct {
		name   string
		values []string
		check  func(field, v string) error
	}{
		{"models", s.Models, handsets.ValidateModel},
		{"channels", s.Channels, handsets.ValidateChannel},
		{"regions", s.Regions, regionRule},
	} {
		if len(f.values) > MaxSelectorValues {
			return errs.Fieldf(f.name, "at most %d", MaxSelectorValues)
		}
		for i, v := range f.values {
			if err := f.check(fmt.Sprintf("%s[%d]", f.name, i), v); err != nil {
				return err
			}
		}
	}
	for name, b := range map[string]string{"build_min": s.BuildMin, "build_max": s.BuildMax} {
		if b != "" {
			if err := handsets.ValidateBuild(name, b); err != nil {
				return err
			}
		}
	}
	if s.BuildMin != "" && s.BuildMax != "" && handsets.CompareBuilds(s.BuildMin, s.BuildMax) > 0 {
		return errs.Fieldf("build_max", "below build_min")
	}
	return nil
}

// Audit actions on a rollout.
const (
	ActionCreate      = "create"
	ActionStart       = "start"
	ActionPause       = "pause"
	ActionResume      = "resume"
	ActionAbort       = "abort"
	ActionAdvance     = "advance"
	ActionComplete    = "complete"
	ActionHalt        = "halt"         // auto-halt of the whole rollout
	ActionHold        = "hold"         // a model held, by a policy or an operator
	ActionReleaseHold = "release_hold" // a model hold released
	// ActionStartReached and ActionDeadlineReached are the system's
	// notes that a scheduled start was reached (offers begin) and that
	// the deadline passed (offers are urgent); see NoteSchedule.
	ActionStartReached    = "start_reached"
	ActionDeadlineReached = "deadline_reached"
)

// Event is one change to a rollout, for the audit log: who did what,
// when and why, and the state and stage percent before and after. The
// store appends it in the transaction that saves the rollout.
type Event struct {
	RolloutID   string
	At          time.Time
	Actor       string
	Action      string
	Reason      string
	FromState   RolloutState
	ToState     RolloutState
	FromPercent float64
	ToPercent   float64
	// Model is the model a hold or release is about.
	Model string
	// Hold is the hold (or halt) set, or the one cleared by resume or
	// release_hold, with its numbers.
	Hold *Hold
	// Detail says in words what changed besides state and percent, such
	// as the halt a resume cleared.
	Detail string
}

// TransitionError is an action the rollout's state does not allow. It
// is an ErrConflict.
type TransitionError struct {
	Action string
	State  RolloutState
	// Why, when set, says more than the state.
	Why string
}

func (e *TransitionError) Error() string {
	s := fmt.Sprintf("cannot %s a %s rollout", strings.ReplaceAll(e.Action, "_", " "), e.State)
	if e.Why != "" {
		s += ": " + e.Why
	}
	return s
}

// Is makes a TransitionError an ErrConflict.
func (e *TransitionError) Is(target error) bool { return target == errs.ErrConflict }

// ErrNoActor is an action without an actor: the API always knows who
// acts, so this is a bug in the caller.
var ErrNoActor = fmt.Errorf("%w: an action needs an actor", errs.ErrInvalid)

// checkAction checks what every operator action needs: an actor and a
// reason of one printable line.
func checkAction(actor, reason string) error {
	if strings.TrimSpace(actor) == "" {
		return ErrNoActor
	}
	if strings.TrimSpace(reason) == "" {
		return errs.Fieldf("reason", "say why: every change to a rollout is logged with its reason")
	}
	if len(reason) > MaxReasonLen || strings.ContainsFunc(reason, unicode.IsControl) {
		return errs.Fieldf("reason", "at most %d bytes on one line", MaxReasonLen)
	}
	return nil
}

// event starts the event of action on r. Its reason is scrubbed (Scrub):
// an operator's reason is free text, kept in the rollout's events and
// the hash-chained audit log, where no identifier may stay.
func (r *Rollout) event(action, actor, reason string, now time.Time) Event {
	return Event{RolloutID: r.ID, At: now, Actor: actor, Action: action, Reason: textrule.Scrub(reason),
		FromState: r.State, ToState: r.State, FromPercent: r.Percent(), ToPercent: r.Percent()}
}

// finish fills the after side of ev from r.
func (r *Rollout) finish(ev Event) Event {
	ev.ToState, ev.ToPercent = r.State, r.Percent()
	return ev
}

// NewRollout makes a draft of spec (ID, Release, Selector, Stages,
// Policy and optionally Salt; the rest is ignored). An empty Salt becomes
// the ID, so cohorts are fixed from the start; a rollout made again for
// the same release with a new id gets other cohorts. Errors are
// FieldErrors.
func NewRollout(spec Rollout, actor string, now time.Time) (*Rollout, Event, error) {
	if strings.TrimSpace(actor) == "" {
		return nil, Event{}, ErrNoActor
	}
	r := &Rollout{ID: spec.ID, Release: spec.Release, Selector: spec.Selector, Policy: spec.Policy,
		Stages: spec.Stages, Salt: spec.Salt, State: RolloutDraft, CreatedBy: actor, CreatedAt: now}
	r = r.Clone()
	if r.Salt == "" {
		r.Salt = r.ID
	}
	if err := r.Validate(); err != nil {
		return nil, Event{}, err
	}
	ev := r.event(ActionCreate, actor, "", now)
	ev.FromState, ev.FromPercent = "", 0
	ev.Detail = r.Policy.scheduleText()
	return r, ev, nil
}

// Start makes a draft run at its first stage.
func (r *Rollout) Start(actor, reason string, now time.Time) (Event, error) {
	if err := checkAction(actor, reason); err != nil {
		return Event{}, err
	}
	if r.State != RolloutDraft {
		return Event{}, &TransitionError{Action: ActionStart, State: r.State}
	}
	ev := r.event(ActionStart, actor, reason, now)
	start := r.Policy.startOf(now)
	r.State, r.Stage, r.StartedAt, r.StageStartedAt = RolloutRunning, 0, start, start
	if r.Policy.Scheduled(now) {
		ev.Detail = "scheduled: offers begin at " + formatTime(start)
	} else if !r.Policy.StartAt.IsZero() {
		// Started at or after its scheduled start: this event says so.
		r.StartNotedAt = now
	}
	return r.finish(ev), nil
}

// Pause stops new offers of a running or completed rollout; handsets
// already installing finish and report.
func (r *Rollout) Pause(actor, reason string, now time.Time) (Event, error) {
	if err := checkAction(actor, reason); err != nil {
		return Event{}, err
	}
	if !r.State.Offering() {
		return Event{}, &TransitionError{Action: ActionPause, State: r.State}
	}
	ev := r.event(ActionPause, actor, reason, now)
	r.State = RolloutPaused
	return r.finish(ev), nil
}

// Resume runs a paused rollout again, clearing a halt (the event says
// which). Results before now no longer count toward a halt or an advance,
// and the stage's soak starts again. Model holds stay: ReleaseHold lifts
// them one by one.
func (r *Rollout) Resume(actor, reason string, now time.Time) (Event, error) {
	if err := checkAction(actor, reason); err != nil {
		return Event{}, err
	}
	if r.State != RolloutPaused {
		return Event{}, &TransitionError{Action: ActionResume, State: r.State}
	}
	ev := r.event(ActionResume, actor, reason, now)
	if h := r.Halt; h != nil {
		ev.Hold = h
		ev.Detail = fmt.Sprintf("cleared the halt of %s: %s", h.At.UTC().Format(time.RFC3339), h.Reason)
	}
	r.State, r.Halt, r.HealthSince = RolloutRunning, nil, now
	return r.finish(ev), nil
}

// Abort ends a rollout for good: no new offers and no retries. Handsets
// that reported they began installing keep their offer, finish and
// report.
func (r *Rollout) Abort(actor, reason string, now time.Time) (Event, error) {
	if err := checkAction(actor, reason); err != nil {
		return Event{}, err
	}
	if r.State == RolloutAborted {
		return Event{}, &TransitionError{Action: ActionAbort, State: r.State}
	}
	ev := r.event(ActionAbort, actor, reason, now)
	r.State, r.EndedAt = RolloutAborted, now
	return r.finish(ev), nil
}

// Advance widens a running or paused rollout: to the next stage when
// percent is 0, else to percent, which must be above the current one and
// is added to the stages unless it is one. A completed rollout can be
// widened to a percent above its last stage, and then runs again. The
// new stage's soak starts now.
func (r *Rollout) Advance(actor, reason string, percent float64, now time.Time) (Event, error) {
	if err := checkAction(actor, reason); err != nil {
		return Event{}, err
	}
	switch {
	case r.State == RolloutCompleted && percent == 0:
		return Event{}, &TransitionError{Action: ActionAdvance, State: r.State, Why: "it is at its last stage; give a higher percent"}
	case r.State != RolloutRunning && r.State != RolloutPaused && r.State != RolloutCompleted:
		return Event{}, &TransitionError{Action: ActionAdvance, State: r.State}
	}
	stage := r.Stage + 1
	stages := r.Stages
	if percent == 0 {
		if stage >= len(r.Stages) {
			return Event{}, &TransitionError{Action: ActionAdvance, State: r.State, Why: "it is at its last stage; complete it"}
		}
	} else {
		switch {
		case math.IsNaN(percent) || percent <= r.Percent() || percent > 100:
			return Event{}, errs.Fieldf("percent", "want a percent above the current %g and at most 100", r.Percent())
		case math.Abs(percent*100-math.Round(percent*100)) > 1e-6:
			return Event{}, errs.Fieldf("percent", "want a percent in steps of 0.01")
		}
		i, found := slices.BinarySearch(r.Stages, percent)
		if !found {
			if len(r.Stages) >= MaxRolloutStages {
				return Event{}, errs.Fieldf("percent", "the rollout has %d stages, the most it can have; pick one of them", MaxRolloutStages)
			}
			// A new slice: r.Stages may be shared with a cached copy.
			stages = slices.Insert(slices.Clone(r.Stages), i, percent)
		}
		stage = i
	}
	ev := r.event(ActionAdvance, actor, reason, now)
	r.Stages, r.Stage, r.StageStartedAt = stages, stage, r.Policy.startOf(now)
	if r.State == RolloutCompleted {
		r.State, r.EndedAt = RolloutRunning, time.Time{}
	}
	return r.finish(ev), nil
}

// Complete ends the staging of a running rollout at its last stage. It
// goes on offering at that stage (see RolloutCompleted).
func (r *Rollout) Complete(actor, reason string, now time.Time) (Event, error) {
	if err := checkAction(actor, reason); err != nil {
		return Event{}, err
	}
	if r.State != RolloutRunning {
		return Event{}, &TransitionError{Action: ActionComplete, State: r.State}
	}
	if !r.LastStage() {
		return Event{}, &TransitionError{Action: ActionComplete, State: r.State,
			Why: fmt.Sprintf("it is at stage %d of %d (%g%%); advance it first", r.Stage+1, len(r.Stages), r.Percent())}
	}
	return r.complete(actor, reason, now), nil
}

func (r *Rollout) complete(actor, reason string, now time.Time) Event {
	ev := r.event(ActionComplete, actor, reason, now)
	r.State, r.EndedAt = RolloutCompleted, now
	return r.finish(ev)
}

// HoldModel stops new offers to one model of a rollout that is not
// aborted, as the health policy does on its own; the other models go
// on. Holding a held model is an ErrConflict.
func (r *Rollout) HoldModel(actor, reason, model string, now time.Time) (Event, error) {
	if err := checkAction(actor, reason); err != nil {
		return Event{}, err
	}
	if err := handsets.ValidateModel("model", model); err != nil {
		return Event{}, err
	}
	if r.State == RolloutAborted {
		return Event{}, &TransitionError{Action: ActionHold, State: r.State}
	}
	if r.ModelHold(model) != nil {
		return Event{}, fmt.Errorf("%w: model %s is already held", errs.ErrConflict, model)
	}
	return r.hold(Hold{Model: model, Actor: actor, Reason: textrule.Scrub(reason), At: now}), nil
}

func (r *Rollout) hold(h Hold) Event {
	ev := r.event(ActionHold, h.Actor, h.Reason, h.At)
	i, _ := slices.BinarySearchFunc(r.Holds, h.Model, func(x Hold, m string) int { return strings.Compare(x.Model, m) })
	r.Holds = slices.Insert(slices.Clone(r.Holds), i, h)
	ev.Model, ev.Hold = h.Model, &h
	return r.finish(ev)
}

// ReleaseHold lets a held model be offered again. Its results before now
// no longer count toward holding it again. A model that is not held is
// an ErrNotFound.
func (r *Rollout) ReleaseHold(actor, reason, model string, now time.Time) (Event, error) {
	if err := checkAction(actor, reason); err != nil {
		return Event{}, err
	}
	if r.State == RolloutAborted {
		return Event{}, &TransitionError{Action: ActionReleaseHold, State: r.State}
	}
	h := r.ModelHold(model)
	if h == nil {
		return Event{}, fmt.Errorf("%w: model %s is not held", errs.ErrNotFound, model)
	}
	ev := r.event(ActionReleaseHold, actor, reason, now)
	old := *h
	ev.Model, ev.Hold = model, &old
	ev.Detail = fmt.Sprintf("released the hold of %s: %s", old.At.UTC().Format(time.RFC3339), old.Reason)
	r.Holds = slices.DeleteFunc(slices.Clone(r.Holds), func(x Hold) bool { return x.Model == model })
	since := make(map[string]time.Time, len(r.ModelHealthSince)+1)
	for k, v := range r.ModelHealthSince {
		since[k] = v
	}
	since[model] = now
	r.ModelHealthSince = since
	return r.finish(ev), nil
}

// Confirmed reports whether record r of a rollout of rel is confirmed by
// the handset's state d: r reported installed, and d checked in after
// that report (its last_seen after r.ResultAt) running rel.InstallsBuild
// with rel.PatchID installed. An installed report is the handset's word;
// a check-in on the new build is the server's own sighting of it.
// RolloutStore.RolloutResults counts the same records in SQL.
func Confirmed(d *handsets.Device, r *handsets.DeviceRollout, rel RolloutRelease) bool {
	return r.State == handsets.StateInstalled && !r.ResultAt.IsZero() && rel.InstallsBuild != "" && rel.PatchID != "" &&
		d.LastSeen.After(r.ResultAt) && d.Build == rel.InstallsBuild && slices.Contains(d.InstalledPatches, rel.PatchID)
}

// Confirmations are the changes that a check-in taking the handset from
// old to next makes to its records' confirmations (Confirmed): +1 for
// each record confirmed by next and not by old, -1 for each confirmed by
// old and not by next (the handset left the build or dropped the patch).
// A record is confirmed once: the check-ins after the first confirming
// one find it confirmed already. release returns the release of a
// rollout, false when it is unknown (no change then); it is asked only
// about installed records whose confirmation the check-in could change,
// so a check-in that changes neither build nor patches of a handset seen
// since its installs asks nothing.
func Confirmations(old, next *handsets.Device, records []*handsets.DeviceRollout, release func(rolloutID string) (RolloutRelease, bool)) []handsets.Confirmation {
	var out []handsets.Confirmation
	for _, r := range records {
		if r.State != handsets.StateInstalled || r.ResultAt.IsZero() || !next.LastSeen.After(r.ResultAt) {
			continue
		}
		if old.LastSeen.After(r.ResultAt) && old.Build == next.Build && slices.Equal(old.InstalledPatches, next.InstalledPatches) {
			continue // whatever old was, next is the same
		}
		rel, ok := release(r.RolloutID)
		if !ok {
			continue
		}
		switch was, is := Confirmed(old, r, rel), Confirmed(next, r, rel); {
		case is && !was:
			out = append(out, handsets.Confirmation{Record: r, N: 1})
		case was && !is:
			out = append(out, handsets.Confirmation{Record: r, N: -1})
		}
	}
	return out
}
