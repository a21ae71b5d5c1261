package rollout_test

import (
	"errors"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/patchfleet/ota/server/errs"
	"github.com/patchfleet/ota/server/rollout"
)

// t0 is the fixed clock of the rollout tests.
var t0 = time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)

func rolloutSpec() rollout.Rollout {
	return rollout.Rollout{
		ID: "ro_1",
		Release: rollout.RolloutRelease{Target: "patches/cm-2026-001.zip", PatchID: "CM-2026-001",
			InstallsBuild: "7.5.0"},
		Stages: []float64{1, 10, 50, 100},
		Policy: rollout.DefaultPolicy(),
	}
}

// draftRollout makes a draft of the privacy patch, changed by mutate.
func draftRollout(tb testing.TB, mutate ...func(*rollout.Rollout)) *rollout.Rollout {
	tb.Helper()
	spec := rolloutSpec()
	for _, m := range mutate {
		m(&spec)
	}
	r, _, err := rollout.NewRollout(spec, "alice", t0)
	if err != nil {
		tb.Fatalf("NewRollout: %v", err)
	}
	return r
}

// runningRollout is draftRollout started at t0.
func runningRollout(tb testing.TB, mutate ...func(*rollout.Rollout)) *rollout.Rollout {
	tb.Helper()
	r := draftRollout(tb, mutate...)
	if _, err := r.Start("alice", "go", t0); err != nil {
		tb.Fatalf("Start: %v", err)
	}
	return r
}

func wantField(tb testing.TB, err error, field string) {
	tb.Helper()
	var fe *errs.FieldError
	if !errors.As(err, &fe) || !errors.Is(err, errs.ErrInvalid) {
		tb.Fatalf("got %v, want a FieldError on %s", err, field)
	}
	if fe.Field != field {
		tb.Fatalf("got a FieldError on %s (%v), want one on %s", fe.Field, err, field)
	}
}

// TestNewRollout: a created rollout is a draft with its id as salt, and
// the create event says who made it.
func TestNewRollout(t *testing.T) {
	r, ev, err := rollout.NewRollout(rolloutSpec(), "alice", t0)
	if err != nil {
		t.Fatal(err)
	}
	if r.State != rollout.RolloutDraft || r.Salt != "ro_1" || r.Stage != 0 || r.CreatedBy != "alice" || !r.CreatedAt.Equal(t0) {
		t.Errorf("got state %s salt %q stage %d by %q at %v", r.State, r.Salt, r.Stage, r.CreatedBy, r.CreatedAt)
	}
	if ev.Action != rollout.ActionCreate || ev.Actor != "alice" || ev.ToState != rollout.RolloutDraft || ev.RolloutID != "ro_1" {
		t.Errorf("event %+v", ev)
	}
	if _, _, err := rollout.NewRollout(rolloutSpec(), " ", t0); !errors.Is(err, errs.ErrInvalid) {
		t.Errorf("no actor: %v, want ErrInvalid", err)
	}
}

// TestRolloutValidate: each bad setting is refused naming the field of
// the API body, so otactl can point at the flag.
func TestRolloutValidate(t *testing.T) {
	for _, tc := range []struct {
		name   string
		mutate func(*rollout.Rollout)
		field  string
	}{
		{"no target", func(r *rollout.Rollout) { r.Release.Target = "" }, "release"},
		{"no patch id", func(r *rollout.Rollout) { r.Release.PatchID = "" }, "release.patch_id"},
		{"no installs build", func(r *rollout.Rollout) { r.Release.InstallsBuild = "" }, "release.installs_build"},
		{"no stages", func(r *rollout.Rollout) { r.Stages = nil }, "stages"},
		{"zero stage", func(r *rollout.Rollout) { r.Stages = []float64{0, 10} }, "stages[0]"},
		{"above 100", func(r *rollout.Rollout) { r.Stages = []float64{10, 101} }, "stages[1]"},
		{"not increasing", func(r *rollout.Rollout) { r.Stages = []float64{1, 10, 10, 100} }, "stages[2]"},
		{"decreasing", func(r *rollout.Rollout) { r.Stages = []float64{50, 10} }, "stages[1]"},
		{"finer than 0.01", func(r *rollout.Rollout) { r.Stages = []float64{0.001, 100} }, "stages[0]"},
		{"bad model", func(r *rollout.Rollout) { r.Selector.Models = []string{"PX-7", "a b"} }, "models[1]"},
		{"bad channel", func(r *rollout.Rollout) { r.Selector.Channels = []string{"Stable"} }, "channels[0]"},
		{"bad region", func(r *rollout.Rollout) { r.Selector.Regions = []string{"de"} }, "regions[0]"},
		{"bad build_min", func(r *rollout.Rollout) { r.Selector.BuildMin = "7 4" }, "build_min"},
		{"build range upside down", func(r *rollout.Rollout) { r.Selector.BuildMin, r.Selector.BuildMax = "7.4", "7.2" }, "build_max"},
		{"build_min at installs build", func(r *rollout.Rollout) { r.Selector.BuildMin = "7.5.0" }, "build_min"},
		{"failure rate above 1", func(r *rollout.Rollout) { r.Policy.MaxFailureRate = 5 }, "max_failure_rate"},
		{"negative failure rate", func(r *rollout.Rollout) { r.Policy.MaxFailureRate = -0.1 }, "max_failure_rate"},
		{"no min results", func(r *rollout.Rollout) { r.Policy.MinResults = 0 }, "min_results"},
		{"no failure window", func(r *rollout.Rollout) { r.Policy.FailureWindow = 0 }, "failure_window"},
		{"negative soak", func(r *rollout.Rollout) { r.Policy.Soak = -time.Hour }, "soak"},
		{"too many retries", func(r *rollout.Rollout) { r.Policy.Retries = 11 }, "retries"},
		{"retries without backoff", func(r *rollout.Rollout) { r.Policy.Backoff = nil }, "backoff"},
		{"zero backoff", func(r *rollout.Rollout) { r.Policy.Backoff = []time.Duration{time.Hour, 0} }, "backoff[1]"},
		{"negative cap", func(r *rollout.Rollout) { r.Policy.MaxOffersPerMinute = -1 }, "max_offers_per_minute"},
		{"silence after seconds", func(r *rollout.Rollout) { r.Policy.SilenceAfter = 30 * time.Second }, "silence_after"},
		{"silence rate above 1", func(r *rollout.Rollout) { r.Policy.SilenceAfter, r.Policy.MaxSilenceRate = time.Hour, 2 }, "max_silence_rate"},
		{"silence rate without silence", func(r *rollout.Rollout) { r.Policy.MaxSilenceRate = 0.05 }, "max_silence_rate"},
		{"negative confirmations", func(r *rollout.Rollout) { r.Policy.MinConfirmations = -1 }, "min_confirmations"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			spec := rolloutSpec()
			tc.mutate(&spec)
			_, _, err := rollout.NewRollout(spec, "alice", t0)
			wantField(t, err, tc.field)
		})
	}
	// What a release manager types passes.
	spec := rolloutSpec()
	spec.Selector = rollout.Selector{Models: []string{"PX-7"}, Channels: []string{"stable"}, Regions: []string{"DE"},
		BuildMin: "7.2.0", BuildMax: "7.4.9"}
	spec.Stages = []float64{0.5, 1, 10, 50, 100}
	spec.Policy.Window, _ = rollout.ParseWindow("01:00-05:00")
	spec.Policy.MaxOffersPerMinute, spec.Policy.Soak, spec.Policy.Retries = 500, 6*time.Hour, 0
	if _, _, err := rollout.NewRollout(spec, "alice", t0); err != nil {
		t.Errorf("valid rollout refused: %v", err)
	}
}

// rolloutIn makes a rollout in state s by the operator's actions.
func rolloutIn(tb testing.TB, s rollout.RolloutState) *rollout.Rollout {
	tb.Helper()
	r := draftRollout(tb)
	must := func(_ rollout.Event, err error) {
		tb.Helper()
		if err != nil {
			tb.Fatal(err)
		}
	}
	switch s {
	case rollout.RolloutRunning:
		must(r.Start("alice", "go", t0))
	case rollout.RolloutPaused:
		must(r.Start("alice", "go", t0))
		must(r.Pause("alice", "look", t0))
	case rollout.RolloutCompleted:
		must(r.Start("alice", "go", t0))
		must(r.Advance("alice", "all", 100, t0))
		must(r.Complete("alice", "done", t0))
	case rollout.RolloutAborted:
		must(r.Abort("alice", "no", t0))
	}
	return r
}

// TestRolloutTransitions walks every operator action from every state:
// the legal ones move the state as the event says, the others are an
// ErrConflict that names the action and the state, and leave the
// rollout as it was.
func TestRolloutTransitions(t *testing.T) {
	type action struct {
		name string
		do   func(r *rollout.Rollout) (rollout.Event, error)
	}
	actions := []action{
		{"start", func(r *rollout.Rollout) (rollout.Event, error) { return r.Start("bob", "why", t0.Add(time.Hour)) }},
		{"pause", func(r *rollout.Rollout) (rollout.Event, error) { return r.Pause("bob", "why", t0.Add(time.Hour)) }},
		{"resume", func(r *rollout.Rollout) (rollout.Event, error) { return r.Resume("bob", "why", t0.Add(time.Hour)) }},
		{"abort", func(r *rollout.Rollout) (rollout.Event, error) { return r.Abort("bob", "why", t0.Add(time.Hour)) }},
		{"advance", func(r *rollout.Rollout) (rollout.Event, error) { return r.Advance("bob", "why", 0, t0.Add(time.Hour)) }},
		{"complete", func(r *rollout.Rollout) (rollout.Event, error) { return r.Complete("bob", "why", t0.Add(time.Hour)) }},
	}
	const x = rollout.RolloutState("") // refused
	want := map[rollout.RolloutState][]rollout.RolloutState{
		//                       start                  pause                 resume                abort                 advance               complete
		rollout.RolloutDraft:     {rollout.RolloutRunning, x, x, rollout.RolloutAborted, x, x},
		rollout.RolloutRunning:   {x, rollout.RolloutPaused, x, rollout.RolloutAborted, rollout.RolloutRunning, x},
		rollout.RolloutPaused:    {x, x, rollout.RolloutRunning, rollout.RolloutAborted, rollout.RolloutPaused, x},
		rollout.RolloutCompleted: {x, rollout.RolloutPaused, x, rollout.RolloutAborted, x, x},
		rollout.RolloutAborted:   {x, x, x, x, x, x},
	}
	for _, from := range rollout.RolloutStates {
		for i, a := range actions {
			t.Run(string(from)+"/"+a.name, func(t *testing.T) {
				r := rolloutIn(t, from)
				before := r.Clone()
				ev, err := a.do(r)
				to := want[from][i]
				if to == x {
					var te *rollout.TransitionError
					if !errors.Is(err, errs.ErrConflict) || !errors.As(err, &te) {
						t.Fatalf("got %v, want a TransitionError (ErrConflict)", err)
					}
					if !strings.Contains(err.Error(), a.name) || !strings.Contains(err.Error(), string(from)) {
						t.Errorf("message %q does not name the action and the state", err)
					}
					if r.State != before.State || r.Stage != before.Stage {
						t.Errorf("a refused %s changed the rollout to %s stage %d", a.name, r.State, r.Stage)
					}
					return
				}
				if err != nil {
					t.Fatalf("got %v, want %s", err, to)
				}
				if r.State != to || ev.FromState != from || ev.ToState != to {
					t.Errorf("state %s, event %s -> %s; want %s -> %s", r.State, ev.FromState, ev.ToState, from, to)
				}
				if ev.Actor != "bob" || ev.Reason != "why" || ev.Action != a.name || !ev.At.Equal(t0.Add(time.Hour)) || ev.RolloutID != "ro_1" {
					t.Errorf("event %+v does not say who, what, when, why", ev)
				}
			})
		}
	}
}

// TestRolloutNeedsReason: no action without an actor and a one-line
// reason; nothing changes.
func TestRolloutNeedsReason(t *testing.T) {
	for _, tc := range []struct {
		name, actor, reason string
		field               string // "" for the missing actor
	}{
		{"empty reason", "bob", "", "reason"},
		{"blank reason", "bob", "  \t", "reason"},
		{"two lines", "bob", "a\nb", "reason"},
		{"too long", "bob", strings.Repeat("x", rollout.MaxReasonLen+1), "reason"},
		{"no actor", "", "why", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := runningRollout(t)
			_, err := r.Pause(tc.actor, tc.reason, t0)
			if tc.field == "" {
				if !errors.Is(err, errs.ErrInvalid) {
					t.Fatalf("got %v, want ErrInvalid", err)
				}
			} else {
				wantField(t, err, tc.field)
			}
			if r.State != rollout.RolloutRunning {
				t.Errorf("state %s after a refused pause", r.State)
			}
		})
	}
}

// TestRolloutAdvance: to the next stage, to a listed percent (skipping
// stages), to a new percent (inserted), never down; the stage's soak
// restarts; a completed rollout widened runs again.
func TestRolloutAdvance(t *testing.T) {
	later := t0.Add(3 * time.Hour)
	for _, tc := range []struct {
		name     string
		from     rollout.RolloutState
		percent  float64
		stages   []float64
		stage    int
		state    rollout.RolloutState
		errField string
		conflict bool
	}{
		{"next", rollout.RolloutRunning, 0, []float64{1, 10, 50, 100}, 1, rollout.RolloutRunning, "", false},
		{"to a listed percent", rollout.RolloutRunning, 50, []float64{1, 10, 50, 100}, 2, rollout.RolloutRunning, "", false},
		{"to a new percent", rollout.RolloutRunning, 25, []float64{1, 10, 25, 50, 100}, 2, rollout.RolloutRunning, "", false},
		{"paused", rollout.RolloutPaused, 0, []float64{1, 10, 50, 100}, 1, rollout.RolloutPaused, "", false},
		{"to the current percent", rollout.RolloutRunning, 1, nil, 0, "", "percent", false},
		{"down", rollout.RolloutRunning, 0.5, nil, 0, "", "percent", false},
		{"above 100", rollout.RolloutRunning, 150, nil, 0, "", "percent", false},
		{"finer than 0.01", rollout.RolloutRunning, 12.345, nil, 0, "", "percent", false},
		{"draft", rollout.RolloutDraft, 0, nil, 0, "", "", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := rolloutIn(t, tc.from)
			ev, err := r.Advance("bob", "healthy", tc.percent, later)
			switch {
			case tc.errField != "":
				wantField(t, err, tc.errField)
				return
			case tc.conflict:
				if !errors.Is(err, errs.ErrConflict) {
					t.Fatalf("got %v, want ErrConflict", err)
				}
				return
			case err != nil:
				t.Fatal(err)
			}
			if !slices.Equal(r.Stages, tc.stages) || r.Stage != tc.stage || r.State != tc.state {
				t.Errorf("stages %v stage %d state %s, want %v %d %s", r.Stages, r.Stage, r.State, tc.stages, tc.stage, tc.state)
			}
			if ev.FromPercent != 1 || ev.ToPercent != tc.stages[tc.stage] {
				t.Errorf("event %g%% -> %g%%, want 1%% -> %g%%", ev.FromPercent, ev.ToPercent, tc.stages[tc.stage])
			}
			if !r.StageStartedAt.Equal(later) {
				t.Errorf("stage started %v, want %v", r.StageStartedAt, later)
			}
		})
	}

	// At the last stage: advance refuses, complete completes.
	r := runningRollout(t)
	if _, err := r.Advance("bob", "all", 100, t0); err != nil {
		t.Fatal(err)
	}
	if _, err := r.Advance("bob", "more", 0, t0); !errors.Is(err, errs.ErrConflict) {
		t.Errorf("advance past the last stage: %v, want ErrConflict", err)
	}
	// Widening a completed rollout that ended below 100% runs it again.
	r = runningRollout(t, func(r *rollout.Rollout) { r.Stages = []float64{1, 10} })
	if _, err := r.Advance("bob", "next", 0, t0); err != nil {
		t.Fatal(err)
	}
	if _, err := r.Complete("bob", "enough", t0); err != nil || r.State != rollout.RolloutCompleted {
		t.Fatalf("complete at 10%%: %v, %s", err, r.State)
	}
	if _, err := r.Advance("bob", "after all", 100, later); err != nil || r.State != rollout.RolloutRunning || r.Percent() != 100 {
		t.Errorf("widen a completed rollout: %v, state %s at %g%%", err, r.State, r.Percent())
	}
}

// TestRolloutCompleteNeedsLastStage: an operator cannot complete a
// rollout at 10%.
func TestRolloutCompleteNeedsLastStage(t *testing.T) {
	r := runningRollout(t)
	_, err := r.Complete("bob", "done", t0)
	if !errors.Is(err, errs.ErrConflict) || !strings.Contains(err.Error(), "advance") {
		t.Errorf("got %v, want ErrConflict telling to advance", err)
	}
}

// TestResumeClearsHalt: resuming a halted rollout clears the halt, the
// event says which halt it cleared, and the failures it was halted for no
// longer count.
func TestResumeClearsHalt(t *testing.T) {
	r := runningRollout(t)
	events := rollout.EvaluateHealth(r, map[string]rollout.Results{"PX-7": {Installed: 40, Failed: 10}, "PX-8": {Installed: 40, Failed: 10}}, t0.Add(time.Hour))
	if len(events) != 1 || r.State != rollout.RolloutPaused || r.Halt == nil {
		t.Fatalf("setup: events %+v, state %s, halt %v", events, r.State, r.Halt)
	}
	at := t0.Add(2 * time.Hour)
	ev, err := r.Resume("carol", "bad batch of PX storage chips replaced", at)
	if err != nil {
		t.Fatal(err)
	}
	if r.State != rollout.RolloutRunning || r.Halt != nil {
		t.Errorf("after resume: state %s, halt %v", r.State, r.Halt)
	}
	if ev.Hold == nil || ev.Hold.Failed != 20 || !strings.Contains(ev.Detail, "cleared the halt") {
		t.Errorf("event %+v does not say which halt it cleared", ev)
	}
	if got := r.ResultsSince("PX-7", at.Add(10*time.Minute)); !got.Equal(at) {
		t.Errorf("results count from %v after the resume, want %v", got, at)
	}
	if got := r.SoakStart(); !got.Equal(at) {
		t.Errorf("soak starts %v after the resume, want %v", got, at)
	}
}

// TestModelHolds: an operator holds and releases a model; a second hold
// conflicts, releasing an unheld model is not found, and after a release
// only the model's later results count.
func TestModelHolds(t *testing.T) {
	r := runningRollout(t)
	ev, err := r.HoldModel("bob", "field reports of boot loops", "PX-7", t0)
	if err != nil || r.ModelHold("PX-7") == nil || ev.Action != rollout.ActionHold || ev.Model != "PX-7" {
		t.Fatalf("hold: %v, %+v", err, ev)
	}
	if _, err := r.HoldModel("bob", "again", "PX-7", t0); !errors.Is(err, errs.ErrConflict) {
		t.Errorf("second hold: %v, want ErrConflict", err)
	}
	if _, err := r.ReleaseHold("bob", "fixed", "PX-9", t0); !errors.Is(err, errs.ErrNotFound) {
		t.Errorf("release of an unheld model: %v, want ErrNotFound", err)
	}
	at := t0.Add(30 * time.Minute)
	ev, err = r.ReleaseHold("bob", "bootloader fixed", "PX-7", at)
	if err != nil || r.ModelHold("PX-7") != nil || ev.Action != rollout.ActionReleaseHold || ev.Hold == nil || ev.Hold.Reason != "field reports of boot loops" {
		t.Fatalf("release: %v, %+v", err, ev)
	}
	if got := r.ResultsSince("PX-7", at.Add(5*time.Minute)); !got.Equal(at) {
		t.Errorf("PX-7 results count from %v, want the release at %v", got, at)
	}
	if got, want := r.ResultsSince("PX-8", at.Add(5*time.Minute)), at.Add(5*time.Minute-time.Hour); !got.Equal(want) {
		t.Errorf("PX-8 results count from %v, want the window start %v", got, want)
	}
}

// TestCloneIsDeep: changing a clone (as an action does on a copy of a
// cached rollout) leaves the original alone.
func TestCloneIsDeep(t *testing.T) {
	r := runningRollout(t, func(r *rollout.Rollout) { r.Selector.Models = []string{"PX-7"} })
	c := r.Clone()
	c.Stages[0], c.Selector.Models[0] = 99, "X"
	if _, err := c.HoldModel("bob", "x", "PX-8", t0); err != nil {
		t.Fatal(err)
	}
	if _, err := c.ReleaseHold("bob", "x", "PX-8", t0); err != nil {
		t.Fatal(err)
	}
	if r.Stages[0] != 1 || r.Selector.Models[0] != "PX-7" || len(r.Holds) != 0 || r.ModelHealthSince != nil {
		t.Errorf("original changed: stages %v models %v holds %v", r.Stages, r.Selector.Models, r.Holds)
	}
}
