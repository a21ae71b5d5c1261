package rollout_test

import (
	"strings"
	"testing"
	"time"

	"github.com/patchfleet/ota/server/handsets"
	"github.com/patchfleet/ota/server/rollout"
)

// scheduledRollout is the privacy patch at 100%, created and started at
// t0 with start_at t0+2h and a deadline at t0+5h (17:00 UTC), new offers
// only 01:00-05:00.
func scheduledRollout(tb testing.TB, mutate ...func(*rollout.Rollout)) *rollout.Rollout {
	tb.Helper()
	window, err := rollout.ParseWindow("01:00-05:00")
	if err != nil {
		tb.Fatal(err)
	}
	return runningRollout(tb, append([]func(*rollout.Rollout){func(r *rollout.Rollout) {
		r.Stages = []float64{100}
		r.Policy.StartAt, r.Policy.Deadline, r.Policy.Window = t0.Add(2*time.Hour), t0.Add(5*time.Hour), window
	}}, mutate...)...)
}

// TestScheduledStart: a rollout started before its start_at offers
// nothing until then (refusal scheduled, asking again when it starts),
// its stage starts there, and from start_at on it offers.
func TestScheduledStart(t *testing.T) {
	r := scheduledRollout(t, func(r *rollout.Rollout) { r.Policy.Window = rollout.Window{} })
	if !r.StartedAt.Equal(t0.Add(2*time.Hour)) || !r.StageStartedAt.Equal(t0.Add(2*time.Hour)) {
		t.Errorf("started %v, stage started %v: want both at start_at %v", r.StartedAt, r.StageStartedAt, t0.Add(2*time.Hour))
	}
	d := &handsets.Device{ID: "dev_1", Model: "PX-7", Build: "7.4.0", Channel: "stable"}
	for _, tc := range []struct {
		at     time.Duration
		kind   rollout.OfferKind
		reason error
		poll   time.Duration
	}{
		{at: 0, reason: rollout.ErrScheduled, poll: 2 * time.Hour},
		{at: 2*time.Hour - time.Second, reason: rollout.ErrScheduled, poll: time.Second},
		{at: 2 * time.Hour, kind: rollout.OfferFirst},
	} {
		dec := rollout.ChooseRollout([]*rollout.Rollout{r}, d, nil, rollout.DecisionInput{Now: t0.Add(tc.at)}, nil)
		if dec.Kind != tc.kind || dec.Reason != tc.reason || dec.PollAfter != tc.poll {
			t.Errorf("at t0+%v: kind %d, reason %v, poll %v; want kind %d, reason %v, poll %v",
				tc.at, dec.Kind, dec.Reason, dec.PollAfter, tc.kind, tc.reason, tc.poll)
		}
		if tc.reason != nil && rollout.RefusalCode(dec.Reason) != "scheduled" {
			t.Errorf("at t0+%v: code %q, want scheduled", tc.at, rollout.RefusalCode(dec.Reason))
		}
		if dec.Urgent {
			t.Errorf("at t0+%v: urgent before the deadline", tc.at)
		}
	}
	// An advance before start_at starts its stage at start_at too: the
	// soak counts from the first offers.
	r2 := runningRollout(t, func(r *rollout.Rollout) { r.Policy.StartAt = t0.Add(2 * time.Hour) })
	if _, err := r2.Advance("bob", "wider", 0, t0.Add(time.Hour)); err != nil {
		t.Fatal(err)
	}
	if !r2.StageStartedAt.Equal(t0.Add(2 * time.Hour)) {
		t.Errorf("stage advanced before start_at started %v, want at start_at", r2.StageStartedAt)
	}
}

// TestDeadlineUrgent: before the deadline a handset outside the window is
// refused; from the deadline on it is offered, urgently, and so is an
// offer it already had.
func TestDeadlineUrgent(t *testing.T) {
	r := scheduledRollout(t)
	d := &handsets.Device{ID: "dev_1", Model: "PX-7", Build: "7.4.0", Channel: "stable"}
	offered := &handsets.DeviceRollout{RolloutID: "ro_1", DeviceID: "dev_1", State: handsets.DeviceOffered, Attempts: 1,
		OfferedAt: t0.Add(3 * time.Hour), LastOfferedAt: t0.Add(3 * time.Hour)}
	for _, tc := range []struct {
		name   string
		at     time.Duration // after t0, 12:00 UTC
		offset *int
		record *handsets.DeviceRollout
		kind   rollout.OfferKind
		reason error
		urgent bool
	}{
		{name: "before the deadline, outside the window", at: 4 * time.Hour, reason: rollout.ErrOutsideWindow},
		{name: "before the deadline, in the window (UTC+10, 02:00)", at: 4 * time.Hour, offset: intp(600), kind: rollout.OfferFirst},
		{name: "at the deadline, outside the window", at: 5 * time.Hour, kind: rollout.OfferFirst, urgent: true},
		{name: "after the deadline, in the window", at: 6 * time.Hour, offset: intp(600), kind: rollout.OfferFirst, urgent: true},
		{name: "offered before the deadline, again after it", at: 5 * time.Hour, record: offered, kind: rollout.OfferRepeat, urgent: true},
		{name: "offered, again before the deadline", at: 4 * time.Hour, record: offered, kind: rollout.OfferRepeat},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var records []*handsets.DeviceRollout
			if tc.record != nil {
				records = append(records, tc.record)
			}
			dec := rollout.ChooseRollout([]*rollout.Rollout{r}, d, records,
				rollout.DecisionInput{Now: t0.Add(tc.at), UTCOffsetMinutes: tc.offset}, nil)
			if dec.Kind != tc.kind || dec.Reason != tc.reason || dec.Urgent != tc.urgent {
				t.Errorf("kind %d, reason %v, urgent %v; want kind %d, reason %v, urgent %v",
					dec.Kind, dec.Reason, dec.Urgent, tc.kind, tc.reason, tc.urgent)
			}
		})
	}
}

// TestScheduleValidate: a deadline must come after start_at, and neither
// may be a zero-ish time such as the Unix epoch.
func TestScheduleValidate(t *testing.T) {
	for _, tc := range []struct {
		name            string
		start, deadline time.Time
		field           string
	}{
		{name: "deadline at the start", start: t0, deadline: t0, field: "deadline"},
		{name: "deadline before the start", start: t0, deadline: t0.Add(-time.Second), field: "deadline"},
		{name: "start at the epoch", start: time.Unix(0, 0), field: "start_at"},
		{name: "deadline at the epoch", deadline: time.Unix(0, 0), field: "deadline"},
		{name: "deadline alone", deadline: t0},
		{name: "start alone, past", start: t0.Add(-time.Hour)},
		{name: "both", start: t0, deadline: t0.Add(time.Second)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			spec := rolloutSpec()
			spec.Policy.StartAt, spec.Policy.Deadline = tc.start, tc.deadline
			_, _, err := rollout.NewRollout(spec, "alice", t0)
			if tc.field == "" {
				if err != nil {
					t.Fatalf("NewRollout: %v", err)
				}
				return
			}
			wantField(t, err, tc.field)
		})
	}
}

// TestScheduleEvents: the create event says the start and the deadline,
// a start before start_at says when offers begin, and one started after
// its start_at needs no note of it.
func TestScheduleEvents(t *testing.T) {
	spec := rolloutSpec()
	spec.Policy.StartAt, spec.Policy.Deadline = t0.Add(2*time.Hour), t0.Add(5*time.Hour)
	r, ev, err := rollout.NewRollout(spec, "alice", t0)
	if err != nil {
		t.Fatal(err)
	}
	if want := "scheduled to start at 2026-03-01T14:00:00Z; deadline 2026-03-01T17:00:00Z: offers urgent from then"; !strings.Contains(ev.Detail, want) {
		t.Errorf("create event detail %q, want %q", ev.Detail, want)
	}
	if entry := rollout.RolloutEventAudit(ev); !strings.Contains(entry.Detail, "scheduled to start at 2026-03-01T14:00:00Z") {
		t.Errorf("audit entry of the create %q does not say the start", entry.Detail)
	}
	start, err := r.Start("alice", "go", t0)
	if err != nil {
		t.Fatal(err)
	}
	if start.Detail != "scheduled: offers begin at 2026-03-01T14:00:00Z" {
		t.Errorf("start event detail %q", start.Detail)
	}
	if evs := r.NoteSchedule(t0.Add(2 * time.Hour)); actions(evs) != "system:start_reached" {
		t.Errorf("at start_at noted [%s], want [system:start_reached]", actions(evs))
	}

	late, _, err := rollout.NewRollout(spec, "alice", t0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := late.Start("alice", "go", t0.Add(3*time.Hour)); err != nil {
		t.Fatal(err)
	}
	if !late.StartedAt.Equal(t0.Add(3 * time.Hour)) {
		t.Errorf("started late at %v, want when started", late.StartedAt)
	}
	if evs := late.NoteSchedule(t0.Add(3 * time.Hour)); len(evs) != 0 {
		t.Errorf("a rollout started after its start_at noted [%s]", actions(evs))
	}
}

// TestRolloutEvaluatorSchedule: the evaluator reads nothing and saves
// nothing before start_at, notes the start once when it is reached and
// the deadline once when it passes, and soaks from start_at: a rollout
// started two hours early with a 1h soak advances 1h after start_at, not
// 1h after it was started.
func TestRolloutEvaluatorSchedule(t *testing.T) {
	r := runningRollout(t, func(r *rollout.Rollout) {
		r.Policy.StartAt, r.Policy.Deadline, r.Policy.Soak = t0.Add(2*time.Hour), t0.Add(5*time.Hour), time.Hour
	})
	store := newFakeRollouts(r)
	store.add("ro_1", "PX-7", 60, false, t0.Add(2*time.Hour+10*time.Minute))
	for _, step := range []struct {
		at      time.Duration
		stored  string // all events stored so far
		percent float64
	}{
		{at: time.Hour},
		{at: 2*time.Hour - time.Second},
		{at: 2 * time.Hour, stored: "system:start_reached"},
		{at: 2*time.Hour + time.Minute, stored: "system:start_reached"},
		{at: 3*time.Hour - time.Second, stored: "system:start_reached"},
		{at: 3 * time.Hour, stored: "system:start_reached,system:advance", percent: 10},
		{at: 5 * time.Hour, stored: "system:start_reached,system:advance,system:deadline_reached", percent: 10},
		{at: 6 * time.Hour, stored: "system:start_reached,system:advance,system:deadline_reached", percent: 10},
	} {
		queries := len(store.queries)
		ev := newEvaluation(store, t0.Add(step.at))
		if err := ev.eval.Evaluate(t.Context()); err != nil {
			t.Fatalf("at t0+%v: Evaluate: %v", step.at, err)
		}
		if a := actions(store.events); a != step.stored {
			t.Errorf("at t0+%v: stored [%s], want [%s]", step.at, a, step.stored)
		}
		got := store.rollouts["ro_1"]
		if want := max(step.percent, 1); got.Percent() != want {
			t.Errorf("at t0+%v: at %g%%, want %g%%", step.at, got.Percent(), want)
		}
		if step.at < 2*time.Hour && len(store.queries) != queries {
			t.Errorf("at t0+%v: read results before start_at", step.at)
		}
	}
}

// TestRolloutEvaluatorScheduleOnce: two evaluators that both see the
// start reached store one start_reached event: the second save conflicts,
// reads the rollout again, and finds it noted.
func TestRolloutEvaluatorScheduleOnce(t *testing.T) {
	r := runningRollout(t, func(r *rollout.Rollout) { r.Policy.StartAt = t0.Add(2 * time.Hour) })
	store := newFakeRollouts(r)
	now := t0.Add(2 * time.Hour)
	other := newEvaluation(store, now.Add(time.Second))
	store.beforeUpdate = func(f *fakeRollouts, _ *rollout.Rollout) {
		f.beforeUpdate = nil // once: the other replica saves first
		if err := other.eval.Evaluate(t.Context()); err != nil {
			t.Errorf("other Evaluate: %v", err)
		}
	}
	ev := newEvaluation(store, now)
	if err := ev.eval.Evaluate(t.Context()); err != nil {
		t.Fatalf("Evaluate: %v", err)
	}
	if a := actions(store.events); a != "system:start_reached" {
		t.Errorf("stored [%s], want one system:start_reached", a)
	}
	if a := actions(ev.events) + "|" + actions(other.events); a != "|system:start_reached" {
		t.Errorf("heard [%s], want only the other evaluator's", a)
	}
}

// TestUrgentOnlyWhileOffering: past the deadline a handset finishing its
// install for a paused rollout gets its offer again, not hurried.
func TestUrgentOnlyWhileOffering(t *testing.T) {
	r := scheduledRollout(t)
	if _, err := r.Pause("bob", "looking into reports", t0.Add(4*time.Hour)); err != nil {
		t.Fatal(err)
	}
	d := &handsets.Device{ID: "dev_1", Model: "PX-7", Build: "7.4.0", Channel: "stable"}
	dr := &handsets.DeviceRollout{RolloutID: "ro_1", DeviceID: "dev_1", State: handsets.StateDownloading, Attempts: 1,
		OfferedAt: t0.Add(3 * time.Hour), LastOfferedAt: t0.Add(3 * time.Hour)}
	dec := rollout.Decide(r, d, dr, rollout.DecisionInput{Now: t0.Add(6 * time.Hour)})
	if dec.Kind != rollout.OfferRepeat || dec.Urgent {
		t.Errorf("paused, past the deadline, installing: kind %d, urgent %v; want a repeat, not urgent", dec.Kind, dec.Urgent)
	}
}
