package web

import (
	"net/http"
	"net/url"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/patchfleet/ota/server"
	"github.com/patchfleet/ota/server/identity"
	"github.com/patchfleet/ota/server/rollout"
)

// The overview answers "what needs me now?" first: a waiting approval
// (with a way to decide it for those who may), a halted rollout, a held
// model with the handsets it leaves unpatched, and a rollout completed
// with a model held, which stays listed as unfinished.
func TestOverviewNeedsYou(t *testing.T) {
	e := newEnv(t)
	now := time.Date(2026, 12, 15, 12, 0, 0, 0, time.UTC)
	ro := e.backend.rollouts[0]
	done := *ro
	done.ID, done.State, done.Stage, done.Stages = "ro-2", rollout.RolloutCompleted, 0, []float64{100}
	done.Holds = []rollout.Hold{{Model: "QZ-2", Actor: "system", Reason: "QZ-2: 4 of 47 failed", At: now}}
	halted := *ro
	halted.ID, halted.State = "ro-3", rollout.RolloutPaused
	halted.Halt = &rollout.Hold{Actor: "system", Reason: "12% of installs failed", At: now}
	e.backend.rollouts = append(e.backend.rollouts, &done, &halted)
	rep2 := *e.backend.reports["ro-1"]
	rep2.RolloutID, rep2.State = "ro-2", rollout.RolloutCompleted
	e.backend.reports["ro-2"] = &rep2
	rep3 := rep2
	rep3.RolloutID, rep3.State, rep3.Holds = "ro-3", rollout.RolloutPaused, nil
	e.backend.reports["ro-3"] = &rep3
	e.backend.approvals = []*rollout.Approval{{ID: "ap-1", RolloutID: "ro-1", Action: rollout.ActionAdvance, ToPercent: 100,
		RequestedBy: "operator-user", RequestedAt: now, Reason: "all green", State: rollout.ApprovalPending}}

	body := e.do(t, identity.RoleReleaseEngineer, "GET", "/", nil).Body.String()
	attention := body[strings.Index(body, "Needs you now"):strings.Index(body, "Rollouts in progress")]
	for _, want := range []string{
		"Approval waiting", "ro-1", "all green", "/rollouts/ro-1/approvals/ap-1/approve", "/rollouts/ro-1/approvals/ap-1/reject",
		"Halted:", "ro-3", "12% of installs failed",
		"QZ-2 held", "23,456 QZ-2 handsets still to update get no offer", "(completed for the other models only)",
		"Draft waiting for signatures", "targets expires in 10 days",
	} {
		if !strings.Contains(attention, want) && !strings.Contains(attention, htmlEscaped(want)) {
			t.Errorf("the overview's first section lacks %q:\n%s", want, attention)
		}
	}
	// One reason box decides both ways.
	if n := strings.Count(attention, `name="reason"`); n != 1 {
		t.Errorf("the approval card has %d reason boxes, want 1", n)
	}
	rest := body[strings.Index(body, "Rollouts in progress"):]
	if !strings.Contains(rest, "completed, <strong>unfinished</strong>") || !strings.Contains(rest, "QZ-2 held: 23,456 handsets get no offer") {
		t.Errorf("the completed rollout with a held model is not listed as unfinished:\n%s", rest)
	}
	// A viewer sees the request but no form to decide it.
	viewer := e.do(t, identity.RoleViewer, "GET", "/", nil).Body.String()
	if !strings.Contains(viewer, "Approval waiting") || strings.Contains(viewer, "/approvals/ap-1/approve") {
		t.Error("a viewer's overview should show the request without a way to decide it")
	}
	// The live part is the same content without the layout.
	live := e.do(t, identity.RoleViewer, "GET", "/?part=live", nil).Body.String()
	if strings.Contains(live, "<html") || !strings.Contains(live, "Approval waiting") || !strings.Contains(live, "Compliance by model") {
		t.Errorf("the overview's live part lacks the page's content:\n%.600s", live)
	}

	// Without a hold but short of its target, it stays unfinished for a
	// while after completing.
	done.Holds, done.EndedAt = nil, now.Add(-time.Hour)
	rep2.Holds, rep2.Installed, rep2.Target = nil, 19000, 20000
	if body := e.do(t, identity.RoleViewer, "GET", "/", nil).Body.String(); !strings.Contains(body, "1,000 of the target not installed yet") {
		t.Error("a completed rollout short of its target is not unfinished on the overview")
	}
	// Long after, the rollouts page lists it, not the overview.
	done.EndedAt = now.Add(-30 * 24 * time.Hour)
	if body := e.do(t, identity.RoleViewer, "GET", "/", nil).Body.String(); strings.Contains(body, `href="/rollouts/ro-2"`) {
		t.Error("a rollout completed a month ago is still on the overview")
	}
	// Once finished, a completed rollout leaves the overview.
	done.EndedAt = now.Add(-time.Hour)
	rep2.Installed = 20000
	if body := e.do(t, identity.RoleViewer, "GET", "/", nil).Body.String(); strings.Contains(body, `href="/rollouts/ro-2"`) {
		t.Error("a finished completed rollout is still in progress on the overview")
	}
}

// A completed rollout offers abort, and advance while its last stage is
// under 100%, but not pause; every action's page counts stages from 1.
func TestRolloutPageActionsAndStages(t *testing.T) {
	e := newEnv(t)
	body := e.do(t, identity.RoleOperator, "GET", "/rollouts/ro-1", nil).Body.String()
	for _, want := range []string{"2 of 4", "<strong>2: 10%</strong>", "1: 1%", "4: 100%", "2026-12-15 09:00:00 UTC", "Failed reports", "<dfn>eligible</dfn>"} {
		if !strings.Contains(body, want) {
			t.Errorf("the rollout page lacks %q", want)
		}
	}
	if strings.Contains(body, "Stage <span class=\"big\" data-stage>1 of") {
		t.Error("the rollout page counts stages from 0")
	}
	ro := e.backend.rollouts[0]
	for _, tc := range []struct {
		stage   int
		actions []string
	}{{2, []string{"abort", "advance"}}, {3, []string{"abort"}}} {
		ro.State, ro.Stage = rollout.RolloutCompleted, tc.stage
		body := e.do(t, identity.RoleOperator, "GET", "/rollouts/ro-1", nil).Body.String()
		var got []string
		for _, a := range RolloutActions {
			if strings.Contains(body, `action="/rollouts/ro-1/`+a+`"`) {
				got = append(got, a)
			}
		}
		if !slices.Equal(got, tc.actions) {
			t.Errorf("completed at stage %d: actions %v, want %v", tc.stage+1, got, tc.actions)
		}
	}
}

// After deciding, the rollout page says what was decided, to the person
// who decided only.
func TestDecisionConfirmed(t *testing.T) {
	e := newEnv(t)
	e.backend.approvals = []*rollout.Approval{{ID: "ap-1", RolloutID: "ro-1", Action: rollout.ActionAdvance, ToPercent: 100,
		RequestedBy: "operator-user", RequestedAt: time.Now(), Reason: "all green", State: rollout.ApprovalPending}}
	rec := e.post(t, identity.RoleReleaseEngineer, "/rollouts/ro-1/approvals/ap-1/reject", url.Values{"reason": {"wait for Monday"}})
	loc := rec.Header().Get("Location")
	if rec.Code != http.StatusSeeOther || loc != "/rollouts/ro-1?decided=ap-1" {
		t.Fatalf("reject: %d to %q", rec.Code, loc)
	}
	if body := e.do(t, identity.RoleReleaseEngineer, "GET", loc, nil).Body.String(); !strings.Contains(body, htmlEscaped(`You rejected ap-1: advance to 100% ("wait for Monday").`)) {
		t.Errorf("the decider's page does not confirm the decision")
	}
	if body := e.do(t, identity.RoleAdmin, "GET", loc, nil).Body.String(); strings.Contains(body, "You rejected") {
		t.Error("another user is told they decided")
	}
}

// The stages field is empty with the default as its placeholder, so
// typing does not append to it; left empty, the default stages apply.
func TestNewRolloutDefaultStages(t *testing.T) {
	e := newEnv(t)
	body := e.do(t, identity.RoleOperator, "GET", "/rollouts/new", nil).Body.String()
	if !strings.Contains(body, `<input name="stages" value="" placeholder="1, 10, 50, 100">`) {
		t.Errorf("the stages field is prefilled or lacks its placeholder:\n%s", body)
	}
	rec := e.post(t, identity.RoleOperator, "/rollouts", url.Values{"release": {"cm/CM-1/update.zip"}, "stages": {""}, "reason": {"defaults"}})
	if rec.Code != http.StatusSeeOther {
		t.Fatalf("create with empty stages: %d\n%s", rec.Code, rec.Body)
	}
	if got := e.backend.created[len(e.backend.created)-1].Spec.Stages; !slices.Equal(got, []float64{1, 10, 50, 100}) {
		t.Errorf("stages %v, want the default 1, 10, 50, 100", got)
	}
}

// TestRolloutPageSaysSilencePolicy: the rollout page says when silent
// handsets count as failed, and the limit of their own, only when the
// policy sets them, and how many confirmations an advance waits for.
func TestRolloutPageSaysSilencePolicy(t *testing.T) {
	e := newEnv(t)
	const says = "a handset silent for"
	if body := e.do(t, identity.RoleViewer, "GET", "/rollouts/ro-1", nil).Body.String(); strings.Contains(body, says) {
		t.Error("the page speaks of silence for a rollout without it")
	}
	e.backend.rollouts[0].Policy.SilenceAfter, e.backend.rollouts[0].Policy.MaxSilenceRate = 3*time.Hour, 0.02
	body := e.do(t, identity.RoleViewer, "GET", "/rollouts/ro-1", nil).Body.String()
	if !strings.Contains(body, "a handset silent for 3h after it began installing counts as failed; past 2.0% silent it halts too") {
		t.Errorf("the page does not say the silence policy:\n%s", body)
	}
	e.backend.rollouts[0].Policy.Soak, e.backend.rollouts[0].Policy.MinConfirmations = time.Hour, 1500
	body = e.do(t, identity.RoleViewer, "GET", "/rollouts/ro-1", nil).Body.String()
	if !strings.Contains(body, "widens on its own after 1h healthy, with 1,500 installs confirmed on the new build") {
		t.Errorf("the page does not say the confirmations an advance waits for")
	}
}

// TestRolloutPageSaysSchedule: the rollout page says when a scheduled
// rollout starts and when its offers become urgent, before and after
// each, and nothing of a schedule for a rollout without one.
func TestRolloutPageSaysSchedule(t *testing.T) {
	e := newEnv(t)
	now := time.Date(2026, 12, 7, 12, 0, 0, 0, time.UTC)
	e.h.opts.Now = func() time.Time { return now }
	page := func() string { return e.do(t, identity.RoleViewer, "GET", "/rollouts/ro-1", nil).Body.String() }
	if body := page(); strings.Contains(body, "data-schedule") {
		t.Error("the page shows a schedule for a rollout without one")
	}
	r := e.backend.rollouts[0]
	r.State = rollout.RolloutRunning
	r.Policy.StartAt, r.Policy.Deadline = now.Add(14*time.Hour), now.Add(38*time.Hour)
	body := page()
	for _, want := range []string{"Starts 2026-12-08 02:00:00 UTC: no offers before.",
		"Deadline 2026-12-09 02:00:00 UTC: offers urgent after it, outside the window too."} {
		if !strings.Contains(body, want) {
			t.Errorf("before the start, the page does not say %q", want)
		}
	}
	now = now.Add(40 * time.Hour)
	body = page()
	for _, want := range []string{"Scheduled start 2026-12-08 02:00:00 UTC reached: offers began.",
		"Deadline 2026-12-09 02:00:00 UTC passed: offers are urgent, outside the window too."} {
		if !strings.Contains(body, want) {
			t.Errorf("after the deadline, the page does not say %q", want)
		}
	}
}

func TestRolloutPageSaysBytesSaved(t *testing.T) {
	e := newEnv(t)
	page := func() string { return e.do(t, identity.RoleViewer, "GET", "/rollouts/ro-1", nil).Body.String() }
	if body := page(); strings.Contains(body, "data-bytes") {
		t.Error("the page shows payloads for a rollout that offered none")
	}
	e.backend.reports["ro-1"].Bytes = server.PayloadBytes{Offered: 30 << 20, Full: 120 << 20, Saved: 90 << 20,
		ByPayload: []server.PayloadCount{{Offers: 10, Bytes: 20 << 20, FullBytes: 20 << 20},
			{FromBuild: "7.4.1", Offers: 1500, Bytes: 10 << 20, FullBytes: 100 << 20}}}
	want := "Payloads: 30.0 MiB offered, 120.0 MiB as full images: 90.0 MiB saved (75%); incremental from 7.4.1 to 1,500 handsets."
	if body := page(); !strings.Contains(body, want) {
		t.Errorf("the page does not say %q", want)
	}
}
