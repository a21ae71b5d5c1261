package apitest_test

import (
	"errors"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/patchfleet/ota/client"
	"github.com/patchfleet/ota/server/api/wire"
)

// TestRolloutStartAtAndDeadline: a rollout created with start_at an hour
// ahead and a deadline three hours ahead, new offers only in a window two
// hours long six hours ahead (UTC). Before start_at no handset is offered
// it (no_offer scheduled); from start_at a handset inside its window is,
// and one outside is refused; from the deadline the one outside is
// offered too, urgent. The events say the start and the deadline once
// each, however often the policies run.
func TestRolloutStartAtAndDeadline(t *testing.T) {
	env, clk := failingFleetRelease(t)
	t0 := clk.Now()
	startAt, deadline := t0.Add(time.Hour), t0.Add(3*time.Hour)
	h := t0.Hour()
	window := fmt.Sprintf("%02d:00-%02d:00", (h+6)%24, (h+8)%24)
	r := createRollout(t, env, wire.RolloutRequest{Release: patchPath, Stages: []float64{100}, Window: window,
		StartAt: startAt.Format(time.RFC3339), Deadline: deadline.Format(time.RFC3339), Reason: "privacy patch"})
	if r.Policy.StartAt == nil || !r.Policy.StartAt.Equal(startAt) || r.Policy.Deadline == nil || !r.Policy.Deadline.Equal(deadline) {
		t.Fatalf("policy start_at %v, deadline %v; want %v, %v", r.Policy.StartAt, r.Policy.Deadline, startAt, deadline)
	}
	if r.State != "running" || r.StartedAt == nil || !r.StartedAt.Equal(startAt) {
		t.Errorf("state %s, started at %v; want running, started at start_at", r.State, r.StartedAt)
	}

	hs := enrollFleet(t, env, 2, "PX-7", "7.2.0")
	inWindow, outside := hs[0], hs[1]
	// UTC+6: at t0+1h the handset's local time is h+7:00, in the window;
	// the other sends no offset, so the window is read in UTC.
	east := 6 * 60
	inWindow.body.UTCOffsetMinutes = &east

	for _, hs := range []*handset{inWindow, outside} {
		a := hs.checkIn(t)
		if a.Offer != nil || a.NoOffer != "scheduled" {
			t.Fatalf("before start_at: offer %v, no_offer %q; want none, scheduled", a.Offer, a.NoOffer)
		}
		if a.PollAfterSeconds <= 0 || a.PollAfterSeconds > 3960 {
			t.Errorf("before start_at: poll after %ds, want at most the hour until the start (+10%% jitter)", a.PollAfterSeconds)
		}
	}
	evaluate(t, env)

	clk.Advance(time.Hour)
	evaluate(t, env)
	evaluate(t, env)
	a := inWindow.checkIn(t)
	if a.Offer == nil || a.Offer.Urgent {
		t.Fatalf("at start_at, in the window: offer %+v (%q), want one, not urgent", a.Offer, a.NoOffer)
	}
	if a := outside.checkIn(t); a.Offer != nil || a.NoOffer != "outside_window" {
		t.Fatalf("at start_at, outside the window: offer %+v, no_offer %q; want none, outside_window", a.Offer, a.NoOffer)
	}

	clk.Advance(2 * time.Hour)
	evaluate(t, env)
	a = outside.checkIn(t)
	if a.Offer == nil || !a.Offer.Urgent {
		t.Fatalf("at the deadline, outside the window: offer %+v (%q), want an urgent one", a.Offer, a.NoOffer)
	}
	if a := inWindow.checkIn(t); a.Offer == nil || !a.Offer.Urgent {
		t.Errorf("at the deadline, the offer made before it: %+v, want it urgent now", a.Offer)
	}
	clk.Advance(time.Minute)
	evaluate(t, env)

	var events []wire.RolloutEvent
	if err := env.Do("GET", "/rollouts/"+r.ID+"/events", nil, &events); err != nil {
		t.Fatal(err)
	}
	count := map[string]int{}
	for _, ev := range events {
		count[ev.Action]++
		switch ev.Action {
		case "create":
			if want := "scheduled to start at " + startAt.Format(time.RFC3339) + "; deadline " + deadline.Format(time.RFC3339); !strings.Contains(ev.Detail, want) {
				t.Errorf("create event detail %q, want %q", ev.Detail, want)
			}
		case "start_reached", "deadline_reached":
			if ev.Actor != "system" {
				t.Errorf("%s by %q, want system", ev.Action, ev.Actor)
			}
		}
	}
	if count["start_reached"] != 1 || count["deadline_reached"] != 1 {
		t.Errorf("events %v: want start_reached and deadline_reached once each", count)
	}
	// The hash-chained audit log says the same.
	var entries []wire.AuditEntry
	if err := env.Do("GET", "/audit?object="+r.ID, nil, &entries); err != nil {
		t.Fatal(err)
	}
	count = map[string]int{}
	for _, e := range entries {
		count[e.Action]++
		if e.Action == "rollout.create" && !strings.Contains(e.Detail, "scheduled to start at "+startAt.Format(time.RFC3339)) {
			t.Errorf("audit entry of the create: %q does not say the start", e.Detail)
		}
	}
	if count["rollout.start_reached"] != 1 || count["rollout.deadline_reached"] != 1 {
		t.Errorf("audit entries %v: want rollout.start_reached and rollout.deadline_reached once each", count)
	}
}

// TestRolloutTimingBadValues: a start_at or deadline that is no RFC 3339
// time, or a deadline not after start_at, is a 400 naming the field, and
// creates nothing.
func TestRolloutTimingBadValues(t *testing.T) {
	env, clk := failingFleetRelease(t)
	now := clk.Now()
	for _, tc := range []struct {
		name            string
		start, deadline string
		field           string
	}{
		{name: "start_at not a time", start: "tomorrow 02:00", field: "start_at"},
		{name: "start_at without a zone", start: "2026-12-08T02:00:00", field: "start_at"},
		{name: "deadline a duration", deadline: "+2h", field: "deadline"},
		{name: "deadline before start_at", start: now.Add(2 * time.Hour).Format(time.RFC3339),
			deadline: now.Add(time.Hour).Format(time.RFC3339), field: "deadline"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var r wire.Rollout
			err := env.DoOffContract("POST", "/rollouts", wire.RolloutRequest{ID: "ro-timing", Release: patchPath, Stages: []float64{100},
				StartAt: tc.start, Deadline: tc.deadline, Reason: "privacy patch"}, &r)
			var ce *client.Error
			if !errors.As(err, &ce) || ce.Status != http.StatusBadRequest || ce.Field != tc.field {
				t.Fatalf("got %v, want a 400 naming %s", err, tc.field)
			}
			var list []wire.Rollout
			if err := env.Do("GET", "/rollouts", nil, &list); err != nil || len(list) != 0 {
				t.Errorf("rollouts after the refusal: %d, %v; want none", len(list), err)
			}
		})
	}
}
