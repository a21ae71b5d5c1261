package rollout

import (
	"strings"
	"time"

	"github.com/patchfleet/ota/server/audit"
)

// formatTime writes t as the events and answers write times: RFC 3339
// in UTC, to the second.
func formatTime(t time.Time) string { return t.UTC().Format(time.RFC3339) }

// scheduleText says p's scheduled start and deadline, for the create
// event's detail; "" when it has neither.
func (p *Policy) scheduleText() string {
	var parts []string
	if !p.StartAt.IsZero() {
		parts = append(parts, "scheduled to start at "+formatTime(p.StartAt))
	}
	if !p.Deadline.IsZero() {
		parts = append(parts, "deadline "+formatTime(p.Deadline)+": offers urgent from then, outside the maintenance window too")
	}
	return strings.Join(parts, "; ")
}

// NoteSchedule returns the system's events that r's scheduled start was
// reached (ActionStartReached) and that its deadline passed
// (ActionDeadlineReached), each the first time it is called at or after
// that time on a running or completed r, and marks r (StartNotedAt,
// DeadlineNotedAt) so that it is not said again. The evaluator saves r
// with the events under r's Version: of two replicas that note the same
// start, the second's save conflicts, and it reads r again, marked, and
// notes nothing. A rollout started at or after its StartAt is marked by
// Start, whose event says it.
func (r *Rollout) NoteSchedule(now time.Time) []Event {
	if !r.State.Offering() {
		return nil
	}
	var evs []Event
	p := &r.Policy
	if !p.StartAt.IsZero() && !p.Scheduled(now) && r.StartNotedAt.IsZero() {
		ev := r.event(ActionStartReached, audit.SystemActor, "scheduled start reached", now)
		ev.Detail = "offers began at " + formatTime(p.StartAt)
		r.StartNotedAt = now
		evs = append(evs, r.finish(ev))
	}
	if p.Urgent(now) && r.DeadlineNotedAt.IsZero() {
		ev := r.event(ActionDeadlineReached, audit.SystemActor, "deadline passed", now)
		ev.Detail = "deadline " + formatTime(p.Deadline) + " passed: offers are urgent from now, outside the maintenance window too"
		r.DeadlineNotedAt = now
		evs = append(evs, r.finish(ev))
	}
	return evs
}
