package rollout_test

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/patchfleet/ota/server/audit"
	"github.com/patchfleet/ota/server/errs"
	"github.com/patchfleet/ota/server/rollout"
)

// fakeRollouts is an in-memory RolloutStore with the optimistic lock of
// the real one; the methods the evaluator does not call are the nil
// embedded interface's (they panic).
type fakeRollouts struct {
	rollout.RolloutStore

	mu       sync.Mutex
	rollouts map[string]*rollout.Rollout
	events   []rollout.Event
	results  []fakeResult
	// queries are the since of each RolloutResults call.
	queries []time.Time
	// silentBefore is the silentBefore of each RolloutResults call.
	silentBefore []time.Time
	// beforeUpdate, when set, runs at the start of UpdateRollout, as
	// another writer that got in between the evaluator's read and write.
	beforeUpdate func(f *fakeRollouts, r *rollout.Rollout)
	updates      int
	pruneBefore  []time.Time
}

type fakeResult struct {
	rollout, model string
	failed         bool
	at             time.Time
}

var _ rollout.RolloutStore = (*fakeRollouts)(nil)

func newFakeRollouts(rs ...*rollout.Rollout) *fakeRollouts {
	f := &fakeRollouts{rollouts: map[string]*rollout.Rollout{}}
	for _, r := range rs {
		r = r.Clone()
		r.Version = 1
		f.rollouts[r.ID] = r
	}
	return f
}

// add records n installed (or failed) results of model at at.
func (f *fakeRollouts) add(rollout, model string, n int, failed bool, at time.Time) {
	for range n {
		f.results = append(f.results, fakeResult{rollout, model, failed, at})
	}
}

func (f *fakeRollouts) Rollouts(_ context.Context, states ...rollout.RolloutState) ([]*rollout.Rollout, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []*rollout.Rollout
	for _, id := range slices.Sorted(maps.Keys(f.rollouts)) {
		if r := f.rollouts[id]; len(states) == 0 || slices.Contains(states, r.State) {
			out = append(out, r.Clone())
		}
	}
	return out, nil
}

func (f *fakeRollouts) Rollout(_ context.Context, id string) (*rollout.Rollout, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	r, ok := f.rollouts[id]
	if !ok {
		return nil, fmt.Errorf("rollout %s: %w", id, errs.ErrNotFound)
	}
	return r.Clone(), nil
}

func (f *fakeRollouts) UpdateRollout(_ context.Context, r *rollout.Rollout, expect int64, evs []rollout.Event) error {
	if f.beforeUpdate != nil {
		f.beforeUpdate(f, r)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.updates++
	stored, ok := f.rollouts[r.ID]
	if !ok {
		return errs.ErrNotFound
	}
	if stored.Version != expect {
		return fmt.Errorf("%w: rollout %s at version %d, not %d", errs.ErrConflict, r.ID, stored.Version, expect)
	}
	c := r.Clone()
	c.Version = expect + 1
	f.rollouts[r.ID] = c
	f.events = append(f.events, evs...)
	r.Version = expect + 1
	return nil
}

func (f *fakeRollouts) RolloutResults(_ context.Context, q rollout.ResultsQuery) (map[string]rollout.Results, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	id, since := q.RolloutID, q.Since
	f.queries = append(f.queries, since)
	f.silentBefore = append(f.silentBefore, q.SilentBefore)
	out := map[string]rollout.Results{}
	for _, res := range f.results {
		if res.rollout != id || res.at.Before(since) {
			continue
		}
		c := out[res.model]
		if res.failed {
			c.Failed++
		} else {
			c.Installed++
		}
		out[res.model] = c
	}
	return out, nil
}

func (f *fakeRollouts) PruneOfferBudget(_ context.Context, before time.Time) (int64, error) {
	f.pruneBefore = append(f.pruneBefore, before)
	return 0, nil
}

// operator changes the stored rollout id as another writer would, with
// its event.
func (f *fakeRollouts) operator(tb testing.TB, id string, change func(r *rollout.Rollout) (rollout.Event, error)) {
	tb.Helper()
	f.mu.Lock()
	defer f.mu.Unlock()
	r := f.rollouts[id].Clone()
	ev, err := change(r)
	if err != nil {
		tb.Fatalf("operator change: %v", err)
	}
	r.Version++
	f.rollouts[id] = r
	f.events = append(f.events, ev)
}

// evaluation is an evaluator on a fake store and what it reported.
type evaluation struct {
	store   *fakeRollouts
	eval    *rollout.RolloutEvaluator
	events  []rollout.Event
	changes int
}

func newEvaluation(store *fakeRollouts, now time.Time) *evaluation {
	ev := &evaluation{store: store}
	ev.eval = &rollout.RolloutEvaluator{Store: store, Now: func() time.Time { return now },
		OnEvent: func(e rollout.Event) { ev.events = append(ev.events, e) }, OnChange: func() { ev.changes++ }}
	return ev
}

func actions(evs []rollout.Event) string {
	var s []string
	for _, ev := range evs {
		a := ev.Actor + ":" + ev.Action
		if ev.Model != "" {
			a += "(" + ev.Model + ")"
		}
		s = append(s, a)
	}
	return strings.Join(s, ",")
}

func heldModels(r *rollout.Rollout) string {
	var s []string
	for _, h := range r.Holds {
		s = append(s, h.Model)
	}
	return strings.Join(s, ",")
}

// TestRolloutEvaluator runs one Evaluate per case at now on a fake
// store: which results count, and what is halted, held, advanced and
// saved. Defaults: above 5% over 1h with at least 50 results; soak 6h
// where a case sets it.
func TestRolloutEvaluator(t *testing.T) {
	const id = "ro_1"
	soak := func(r *rollout.Rollout) { r.Policy.Soak = 6 * time.Hour }
	for _, tc := range []struct {
		name    string
		rollout func(*rollout.Rollout)
		now     time.Duration // after t0, the start
		results func(f *fakeRollouts, now time.Time)
		state   rollout.RolloutState
		percent float64
		held    string
		// actions are the saved events, as actor:action(model).
		actions string
		halt    string // in the halt's reason
		queries int    // RolloutResults calls; 0 is not checked
	}{
		{name: "49 results at 18%: too few to halt", now: time.Hour,
			results: func(f *fakeRollouts, now time.Time) {
				f.add(id, "PX-7", 40, false, now.Add(-time.Minute))
				f.add(id, "PX-7", 9, true, now.Add(-time.Minute))
			},
			state: rollout.RolloutRunning, percent: 1, queries: 1},
		{name: "50 results at 20%: halts", now: time.Hour,
			results: func(f *fakeRollouts, now time.Time) {
				f.add(id, "PX-7", 40, false, now.Add(-time.Minute))
				f.add(id, "PX-7", 10, true, now.Add(-time.Minute))
			},
			state: rollout.RolloutPaused, percent: 1, actions: "system:halt",
			halt: "the rollout failed 10 of 50 installs (20.0%) in the last 1h, above the 5.0% limit"},
		{name: "failures older than the window do not count", now: 3 * time.Hour,
			results: func(f *fakeRollouts, now time.Time) {
				f.add(id, "PX-7", 100, true, now.Add(-time.Hour-time.Second))
				f.add(id, "PX-7", 60, false, now.Add(-time.Hour))
			},
			state: rollout.RolloutRunning, percent: 1},
		{name: "failures before the last resume do not count", now: time.Hour,
			rollout: func(r *rollout.Rollout) { r.HealthSince = t0.Add(50 * time.Minute) },
			results: func(f *fakeRollouts, now time.Time) {
				f.add(id, "PX-7", 100, true, now.Add(-20*time.Minute))
				f.add(id, "PX-7", 60, false, now.Add(-5*time.Minute))
			},
			state: rollout.RolloutRunning, percent: 1},
		{name: "completed rollouts halt too", now: time.Hour,
			rollout: func(r *rollout.Rollout) { r.Stage, r.State = 3, rollout.RolloutCompleted },
			results: func(f *fakeRollouts, now time.Time) {
				f.add(id, "PX-7", 40, false, now.Add(-time.Minute))
				f.add(id, "PX-7", 10, true, now.Add(-time.Minute))
			},
			state: rollout.RolloutPaused, percent: 100, actions: "system:halt", halt: "failed 10 of 50"},
		{name: "one failing model is held alone while the others advance", rollout: soak, now: 7 * time.Hour,
			results: func(f *fakeRollouts, now time.Time) {
				f.add(id, "PX-7", 30, false, now.Add(-10*time.Minute))
				f.add(id, "PX-7", 30, true, now.Add(-10*time.Minute))
				f.add(id, "PX-8", 200, false, now.Add(-10*time.Minute))
				f.add(id, "PX-8", 2, true, now.Add(-10*time.Minute))
			},
			state: rollout.RolloutRunning, percent: 10, held: "PX-7", actions: "system:hold(PX-7),system:advance",
			queries: 2},
		{name: "advances once the soak is over", rollout: soak, now: 6 * time.Hour,
			results: func(f *fakeRollouts, now time.Time) {
				// Healthy now, and enough results over the whole stage
				// though not in the last hour.
				f.add(id, "PX-7", 45, false, t0.Add(time.Hour))
				f.add(id, "PX-7", 1, true, t0.Add(time.Hour))
				f.add(id, "PX-8", 10, false, now.Add(-time.Minute))
			},
			state: rollout.RolloutRunning, percent: 10, actions: "system:advance"},
		{name: "not before the soak is over, nor reading the stage", rollout: soak, now: 6*time.Hour - time.Second,
			results: func(f *fakeRollouts, now time.Time) { f.add(id, "PX-7", 100, false, t0.Add(time.Hour)) },
			state:   rollout.RolloutRunning, percent: 1, queries: 1},
		{name: "too few results in the stage to advance", rollout: soak, now: 7 * time.Hour,
			results: func(f *fakeRollouts, now time.Time) { f.add(id, "PX-7", 49, false, t0.Add(time.Hour)) },
			state:   rollout.RolloutRunning, percent: 1, queries: 2},
		{name: "the last stage completes", now: 7 * time.Hour,
			rollout: func(r *rollout.Rollout) { soak(r); r.Stage = 3 },
			results: func(f *fakeRollouts, now time.Time) { f.add(id, "PX-7", 50, false, t0.Add(time.Hour)) },
			state:   rollout.RolloutCompleted, percent: 100, actions: "system:complete"},
		{name: "a released model counts from its release, not from the window", now: time.Hour,
			rollout: func(r *rollout.Rollout) { r.ModelHealthSince = map[string]time.Time{"PX-7": t0.Add(50 * time.Minute)} },
			results: func(f *fakeRollouts, now time.Time) {
				f.add(id, "PX-7", 60, true, t0.Add(40*time.Minute)) // before its release
				f.add(id, "PX-7", 5, false, t0.Add(55*time.Minute))
				f.add(id, "PX-8", 100, false, t0.Add(40*time.Minute))
			},
			state: rollout.RolloutRunning, percent: 1, queries: 2},
		{name: "a released model failing again is held again", now: time.Hour,
			rollout: func(r *rollout.Rollout) { r.ModelHealthSince = map[string]time.Time{"PX-7": t0.Add(50 * time.Minute)} },
			results: func(f *fakeRollouts, now time.Time) {
				f.add(id, "PX-7", 50, true, t0.Add(55*time.Minute))
				f.add(id, "PX-8", 100, false, t0.Add(40*time.Minute))
			},
			state: rollout.RolloutRunning, percent: 1, held: "PX-7", actions: "system:hold(PX-7)"},
		{name: "a release older than the window costs no query of its own", now: 3 * time.Hour,
			rollout: func(r *rollout.Rollout) { r.ModelHealthSince = map[string]time.Time{"PX-7": t0.Add(time.Hour)} },
			results: func(f *fakeRollouts, now time.Time) { f.add(id, "PX-7", 10, false, now.Add(-time.Minute)) },
			state:   rollout.RolloutRunning, percent: 1, queries: 1},
		{name: "paused rollouts are not read", now: time.Hour,
			rollout: func(r *rollout.Rollout) { r.State = rollout.RolloutPaused },
			results: func(f *fakeRollouts, now time.Time) { f.add(id, "PX-7", 50, true, now.Add(-time.Minute)) },
			state:   rollout.RolloutPaused, percent: 1, queries: -1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := runningRollout(t)
			if tc.rollout != nil {
				tc.rollout(r)
			}
			now := t0.Add(tc.now)
			store := newFakeRollouts(r)
			tc.results(store, now)
			ev := newEvaluation(store, now)
			if err := ev.eval.Evaluate(t.Context()); err != nil {
				t.Fatalf("Evaluate: %v", err)
			}
			got := store.rollouts[id]
			if got.State != tc.state || got.Percent() != tc.percent || heldModels(got) != tc.held {
				t.Errorf("got %s at %g%% holding [%s], want %s at %g%% holding [%s]",
					got.State, got.Percent(), heldModels(got), tc.state, tc.percent, tc.held)
			}
			if a := actions(store.events); a != tc.actions {
				t.Errorf("saved events [%s], want [%s]", a, tc.actions)
			}
			if a := actions(ev.events); a != tc.actions {
				t.Errorf("OnEvent heard [%s], want [%s]", a, tc.actions)
			}
			wantChanges, wantVersion := 0, int64(1)
			if tc.actions != "" {
				wantChanges, wantVersion = 1, 2
			}
			if ev.changes != wantChanges || got.Version != wantVersion || store.updates != wantChanges {
				t.Errorf("OnChange called %d times, %d saves, version %d; want %d, %d, %d",
					ev.changes, store.updates, got.Version, wantChanges, wantChanges, wantVersion)
			}
			if tc.halt != "" && (got.Halt == nil || !strings.Contains(got.Halt.Reason, tc.halt)) {
				t.Errorf("halt %+v, want one saying %q", got.Halt, tc.halt)
			}
			if tc.halt == "" && got.Halt != nil {
				t.Errorf("halted: %s", got.Halt.Reason)
			}
			switch {
			case tc.queries > 0 && len(store.queries) != tc.queries:
				t.Errorf("%d result queries (%v), want %d", len(store.queries), store.queries, tc.queries)
			case tc.queries < 0 && len(store.queries) != 0:
				t.Errorf("%d result queries, want none", len(store.queries))
			}
			if want := now.Add(-rollout.OfferBudgetRetention); !slices.Equal(store.pruneBefore, []time.Time{want}) {
				t.Errorf("pruned offer budgets before %v, want before %v", store.pruneBefore, want)
			}
		})
	}
}

// TestRolloutEvaluatorHaltNumbers checks what a halt records: the
// counts, the rate, the limit and the time, and that it is the system's.
func TestRolloutEvaluatorHaltNumbers(t *testing.T) {
	now := t0.Add(time.Hour)
	store := newFakeRollouts(runningRollout(t))
	store.add("ro_1", "PX-7", 40, false, now.Add(-time.Minute))
	store.add("ro_1", "PX-8", 10, true, now.Add(-time.Minute))
	if err := newEvaluation(store, now).eval.Evaluate(t.Context()); err != nil {
		t.Fatal(err)
	}
	h := store.rollouts["ro_1"].Halt
	want := rollout.Hold{Actor: audit.SystemActor, Installed: 40, Failed: 10, Rate: 0.2, MaxRate: 0.05, Window: time.Hour, At: now}
	if h == nil {
		t.Fatal("not halted")
	}
	got := *h
	got.Reason = ""
	if got != want {
		t.Errorf("halt %+v, want %+v", got, want)
	}
}

// TestRolloutEvaluatorConflict has another writer change the rollout
// between the evaluator's read and its save. The evaluator reads it
// again and evaluates what is stored now: an operator's pause is kept
// and no halt overwrites it; an operator's advance is kept and the halt
// applies to the advanced rollout.
func TestRolloutEvaluatorConflict(t *testing.T) {
	now := t0.Add(time.Hour)
	for _, tc := range []struct {
		name    string
		change  func(r *rollout.Rollout) (rollout.Event, error)
		state   rollout.RolloutState
		percent float64
		actions string // stored
		heard   string // OnEvent: only the evaluator's saved events
		changes int
	}{
		{name: "paused meanwhile: the pause stays",
			change: func(r *rollout.Rollout) (rollout.Event, error) { return r.Pause("alice", "looking into reports", now) },
			state:  rollout.RolloutPaused, percent: 1, actions: "alice:pause"},
		{name: "advanced meanwhile: halted at the new stage",
			change: func(r *rollout.Rollout) (rollout.Event, error) { return r.Advance("alice", "widen", 0, now) },
			state:  rollout.RolloutPaused, percent: 10, actions: "alice:advance,system:halt", heard: "system:halt", changes: 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			store := newFakeRollouts(runningRollout(t))
			store.add("ro_1", "PX-7", 40, false, now.Add(-time.Minute))
			store.add("ro_1", "PX-7", 10, true, now.Add(-time.Minute))
			store.beforeUpdate = func(f *fakeRollouts, _ *rollout.Rollout) {
				f.beforeUpdate = nil // once
				f.operator(t, "ro_1", tc.change)
			}
			ev := newEvaluation(store, now)
			if err := ev.eval.Evaluate(t.Context()); err != nil {
				t.Fatalf("Evaluate: %v", err)
			}
			got := store.rollouts["ro_1"]
			if got.State != tc.state || got.Percent() != tc.percent {
				t.Errorf("got %s at %g%%, want %s at %g%%", got.State, got.Percent(), tc.state, tc.percent)
			}
			if a := actions(store.events); a != tc.actions {
				t.Errorf("stored events [%s], want [%s]", a, tc.actions)
			}
			if a := actions(ev.events); a != tc.heard {
				t.Errorf("OnEvent heard [%s], want [%s]", a, tc.heard)
			}
			if ev.changes != tc.changes {
				t.Errorf("OnChange called %d times, want %d", ev.changes, tc.changes)
			}
		})
	}
}

// TestRolloutEvaluatorErrors: a rollout that keeps changing under the
// evaluator gives up with an ErrConflict after a few tries, and does not
// keep the next rollout from being halted.
func TestRolloutEvaluatorErrors(t *testing.T) {
	now := t0.Add(time.Hour)
	a := runningRollout(t)
	b := runningRollout(t, func(r *rollout.Rollout) { r.ID = "ro_2" })
	store := newFakeRollouts(a, b)
	for _, id := range []string{"ro_1", "ro_2"} {
		store.add(id, "PX-7", 40, false, now.Add(-time.Minute))
		store.add(id, "PX-7", 10, true, now.Add(-time.Minute))
	}
	busy := 0
	store.beforeUpdate = func(f *fakeRollouts, r *rollout.Rollout) {
		if r.ID != "ro_1" {
			return
		}
		f.mu.Lock()
		defer f.mu.Unlock()
		f.rollouts["ro_1"].Version++ // another writer, every time
		busy++
	}
	ev := newEvaluation(store, now)
	err := ev.eval.Evaluate(t.Context())
	if !errors.Is(err, errs.ErrConflict) || !strings.Contains(err.Error(), "ro_1") {
		t.Errorf("Evaluate: %v, want an ErrConflict naming ro_1", err)
	}
	if busy != 5 {
		t.Errorf("tried ro_1 %d times, want 5", busy)
	}
	if st := store.rollouts["ro_2"].State; st != rollout.RolloutPaused || actions(ev.events) != "system:halt" || ev.changes != 1 {
		t.Errorf("ro_2 %s, heard [%s], %d changes; want paused by one halt", st, actions(ev.events), ev.changes)
	}
}
