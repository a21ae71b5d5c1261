package apitest_test

import (
	"context"
	"fmt"
	"math"
	"sync"
	"testing"
	"time"

	"github.com/patchfleet/ota/internal/apitest"
	"github.com/patchfleet/ota/server"
	"github.com/patchfleet/ota/server/api/wire"
	"github.com/patchfleet/ota/server/audit"
	"github.com/patchfleet/ota/server/handsets"
	"github.com/patchfleet/ota/server/rollout"
)

// The acceptance tests of staged rollouts (issue 8), through the real
// HTTP API: handsets enroll, check in and report over HTTP, operators
// act through the admin API, and the policies run as the background job
// runs them.

// enrollFleet enrolls n handsets of model on build, 16 at a time.
func enrollFleet(tb testing.TB, env *apitest.Env, n int, model, build string) []*handset {
	tb.Helper()
	out := make([]*handset, n)
	var wg sync.WaitGroup
	sem := make(chan struct{}, 16)
	for i := range out {
		wg.Go(func() {
			sem <- struct{}{}
			defer func() { <-sem }()
			out[i] = enrollHandset(tb, env, model, build)
		})
	}
	wg.Wait()
	// A failed enrollment ended its goroutine, not the test, and left a
	// nil handset.
	if tb.Failed() {
		tb.FailNow()
	}
	return out
}

// checkInAll checks every handset in, 16 at a time, and returns the
// answers by device id.
func checkInAll(tb testing.TB, hs []*handset) map[string]wire.CheckInAnswer {
	tb.Helper()
	answers := make([]wire.CheckInAnswer, len(hs))
	var wg sync.WaitGroup
	sem := make(chan struct{}, 16)
	for i, h := range hs {
		wg.Go(func() {
			sem <- struct{}{}
			defer func() { <-sem }()
			answers[i] = h.checkIn(tb)
		})
	}
	wg.Wait()
	if tb.Failed() {
		tb.FailNow()
	}
	out := make(map[string]wire.CheckInAnswer, len(hs))
	for i, h := range hs {
		out[h.id] = answers[i]
	}
	return out
}

func createRollout(tb testing.TB, env *apitest.Env, req wire.RolloutRequest) wire.Rollout {
	tb.Helper()
	var r wire.Rollout
	env.Widen(tb, "POST", "/rollouts", req, &r)
	return r
}

func getRollout(tb testing.TB, env *apitest.Env, id string) wire.Rollout {
	tb.Helper()
	var r wire.Rollout
	if err := env.Do("GET", "/rollouts/"+id, nil, &r); err != nil {
		tb.Fatalf("get rollout %s: %v", id, err)
	}
	return r
}

// TestRolloutStagesKeepCohorts runs 2,000 handsets through stages 10% ->
// 50% -> 100% advanced by an operator: at each stage the handsets offered
// the release are the stage's cohort (within 1% of its size; in fact
// exactly its members), and none offered at a stage loses the offer when
// the stage widens.
func TestRolloutStagesKeepCohorts(t *testing.T) {
	env := apitest.Start(t, apitest.Options{})
	es := apitest.NewEngineers(t, 1)
	env.Ceremony(t, es, 1)
	env.Publish(t, patchPath, randomBytes(t, 256), es...)
	hs := enrollFleet(t, env, 2000, "PX-7", "7.2.0")

	answers := checkInAll(t, hs)
	for id, a := range answers {
		if a.Offer != nil || a.NoOffer != "not_selected" {
			t.Fatalf("published, no rollout: %s got offer %v (%q), want none (not_selected)", id, a.Offer, a.NoOffer)
		}
	}

	r := createRollout(t, env, wire.RolloutRequest{Release: patchPath, Stages: []float64{10, 50, 100}, Reason: "privacy patch"})
	offered := map[string]bool{}
	for stage, percent := range []float64{10, 50, 100} {
		if stage > 0 {
			var adv wire.Rollout
			env.Widen(t, "POST", "/rollouts/"+r.ID+"/advance", wire.RolloutAdvanceRequest{Reason: fmt.Sprintf("stage %d healthy", stage)}, &adv)
			if adv.Percent != percent {
				t.Fatalf("advanced to %g%%, want %g%%", adv.Percent, percent)
			}
		}
		answers := checkInAll(t, hs)
		cohort, got := 0, 0
		for _, h := range hs {
			in := rollout.InStage(r.Salt, h.id, percent)
			a := answers[h.id]
			if in {
				cohort++
			}
			if a.Offer != nil {
				got++
				if a.Offer.RolloutID != r.ID || a.Offer.Target != patchPath {
					t.Fatalf("offer %+v, want %s of rollout %s", a.Offer, patchPath, r.ID)
				}
			}
			switch {
			case offered[h.id] && a.Offer == nil:
				t.Errorf("stage %g%%: %s was offered at the stage before and is not now (%q)", percent, h.id, a.NoOffer)
			case in != (a.Offer != nil):
				t.Errorf("stage %g%%: %s in cohort %v, offered %v (%q)", percent, h.id, in, a.Offer != nil, a.NoOffer)
			case !in && a.NoOffer != "not_in_cohort":
				t.Errorf("stage %g%%: %s refused with %q, want not_in_cohort", percent, h.id, a.NoOffer)
			}
			if a.Offer != nil {
				offered[h.id] = true
			}
		}
		if math.Abs(float64(got-cohort)) > 0.01*float64(cohort) {
			t.Errorf("stage %g%%: %d offered, cohort %d", percent, got, cohort)
		}
		// The rollout report counts the same from its rollups.
		var rep server.RolloutReport
		if err := env.Do("GET", "/rollouts/"+r.ID+"/report", nil, &rep); err != nil {
			t.Fatal(err)
		}
		if rep.Offered != int64(got) || rep.Pending != int64(got) || rep.Percent != percent {
			t.Errorf("stage %g%%: report says %d offered (%d pending) at %g%%, handsets saw %d offers",
				percent, rep.Offered, rep.Pending, rep.Percent, got)
		}
		if wantTarget := int64(math.Round(float64(rep.Eligible) * percent / 100)); rep.Target != wantTarget || rep.Eligible != int64(len(hs)) {
			t.Errorf("stage %g%%: report eligible %d, target %d; want %d and %d", percent, rep.Eligible, rep.Target, len(hs), wantTarget)
		}
		// The cohort's size is binomial (random salt and ids): six standard
		// deviations from its mean fail about one run in 250 million (five
		// points of the fleet, 4.5 deviations at 50%, failed one in 130,000).
		want := percent / 100 * float64(len(hs))
		sd := math.Sqrt(want * (1 - percent/100))
		t.Logf("stage %g%%: %d offered, cohort %d, %.0f expected", percent, got, cohort, want)
		if math.Abs(float64(cohort)-want) > 6*sd {
			t.Errorf("stage %g%%: cohort of %d is far from %.0f%% of the fleet (%.0f ± %.0f)", percent, cohort, percent, want, 6*sd)
		}
	}
}

// failingFleetRelease publishes a release for PX-7 and PX-8 and returns
// the env on a fake clock.
func failingFleetRelease(t *testing.T) (*apitest.Env, *clock) {
	t.Helper()
	clk := &clock{now: time.Now().UTC().Truncate(time.Second)}
	env := apitest.Start(t, apitest.Options{Now: clk.Now})
	es := apitest.NewEngineers(t, 1)
	env.Ceremony(t, es, 1)
	custom := apitest.PatchCustom()
	custom.Models = []string{"PX-7", "PX-8"}
	v := env.DraftRelease(t, patchPath, randomBytes(t, 256), custom)
	env.MustSign(t, v.ID, es...)
	return env, clk
}

// install has every handset that got an offer report installed, or
// failed when fail says so, at the fake clock's now.
func install(t testing.TB, clk *clock, hs []*handset, answers map[string]wire.CheckInAnswer, fail func(i int) bool) (installed, failed int) {
	t.Helper()
	for i, h := range hs {
		a := answers[h.id]
		if a.Offer == nil {
			continue
		}
		state, code := handsets.StateInstalled, ""
		if fail(i) {
			state, code = handsets.StateFailed, "E_VERIFY"
			failed++
		} else {
			installed++
		}
		at := clk.Now()
		if c := call(t, "POST", h.env.URL+"/api/v1/reports", h.token, wire.ReportBody{ReportID: fmt.Sprintf("r-%d-%s", i, state),
			PatchID: a.Offer.PatchID, RolloutID: a.Offer.RolloutID, Target: a.Offer.Target, State: state, ErrorCode: code, At: &at}, nil); c != 201 {
			t.Fatalf("report: %d", c)
		}
		if state == handsets.StateInstalled {
			// The handset runs the patch now and says so at its next check-in.
			h.body.InstalledPatches = []string{a.Offer.PatchID}
			h.body.Build = a.Offer.Custom.InstallsBuild
			tr := true
			h.body.NumberEncryption, h.body.CloudMessaging = &tr, handsets.MessagingOptedOut
		}
	}
	return installed, failed
}

func evaluate(t testing.TB, env *apitest.Env) {
	t.Helper()
	if err := env.App.Evaluator.Evaluate(context.Background()); err != nil {
		t.Fatalf("evaluate policies: %v", err)
	}
}

// TestRolloutAutoHalt: with 20% of installs failing the rollout halts by
// itself once the minimum of results is in, offers stop, the rollout
// shows the reason and the numbers; resume restarts offers.
func TestRolloutAutoHalt(t *testing.T) {
	env, clk := failingFleetRelease(t)
	minResults := int64(50)
	r := createRollout(t, env, wire.RolloutRequest{Release: patchPath, Stages: []float64{100}, MinResults: &minResults, Reason: "privacy patch"})

	first := enrollFleet(t, env, 40, "PX-7", "7.2.0")
	fail := func(i int) bool { return i%5 == 0 } // 20%
	install(t, clk, first, checkInAll(t, first), fail)
	evaluate(t, env)
	if got := getRollout(t, env, r.ID); got.State != "running" {
		t.Fatalf("after 40 results (below the minimum of 50): state %s, want running", got.State)
	}

	second := enrollFleet(t, env, 20, "PX-7", "7.2.0")
	install(t, clk, second, checkInAll(t, second), fail)
	evaluate(t, env)
	got := getRollout(t, env, r.ID)
	if got.State != "paused" || got.Halt == nil {
		t.Fatalf("after 60 results at 20%% failures: state %s, halt %+v, want paused with a halt", got.State, got.Halt)
	}
	h := got.Halt
	if h.Installed != 48 || h.Failed != 12 || math.Abs(h.Rate-0.2) > 1e-9 || h.MaxRate != 0.05 || h.Actor != audit.SystemActor || h.Reason == "" {
		t.Errorf("halt %+v, want 48 installed, 12 failed, rate 0.2 over 0.05, by the system, with a reason", h)
	}
	t.Logf("halt reason: %s", h.Reason)

	late := enrollFleet(t, env, 10, "PX-7", "7.2.0")
	for id, a := range checkInAll(t, late) {
		if a.Offer != nil || a.NoOffer != "rollout_halted" {
			t.Fatalf("halted rollout: %s got offer %v (%q), want rollout_halted", id, a.Offer != nil, a.NoOffer)
		}
	}
	clk.Advance(time.Minute) // the operator looks into it
	// At 100%, the resume waits for a second person's approval.
	var resumed wire.Rollout
	env.Widen(t, "POST", "/rollouts/"+r.ID+"/resume", wire.RolloutActionRequest{Reason: "bad batch of E_VERIFY units replaced"}, &resumed)
	if resumed.State != "running" || resumed.Halt != nil {
		t.Fatalf("resumed: state %s, halt %+v", resumed.State, resumed.Halt)
	}
	for id, a := range checkInAll(t, late) {
		if a.Offer == nil {
			t.Fatalf("after resume: %s not offered (%q)", id, a.NoOffer)
		}
	}
	// The results that halted it count no more: evaluating again keeps it
	// running.
	evaluate(t, env)
	if got := getRollout(t, env, r.ID); got.State != "running" {
		t.Errorf("after resume and evaluation: state %s, want running", got.State)
	}
}

// TestRolloutLateEnrolleesCannotHalt: with open enrollment anyone can
// enroll handsets, check them in and report. Handsets that enrolled after
// the rollout started, were offered it and all report failed neither hold
// their model nor halt the rollout, though the report counts their
// failures; the same failures from handsets enrolled before the start
// halt it.
func TestRolloutLateEnrolleesCannotHalt(t *testing.T) {
	minResults := int64(50)
	req := wire.RolloutRequest{Release: patchPath, Stages: []float64{100}, MinResults: &minResults, Reason: "privacy patch"}
	fail := func(int) bool { return true }
	t.Run("enrolled after the start", func(t *testing.T) {
		env, clk := failingFleetRelease(t)
		real := enrollFleet(t, env, 60, "PX-7", "7.2.0")
		clk.Advance(time.Minute)
		r := createRollout(t, env, req)
		install(t, clk, real, checkInAll(t, real), func(int) bool { return false })
		clk.Advance(time.Minute)

		// Fakes of one model fail while the real fleet is healthy: before,
		// the model was held alone.
		px8 := enrollFleet(t, env, 60, "PX-8", "7.2.0")
		if _, failed := install(t, clk, px8, checkInAll(t, px8), fail); failed != 60 {
			t.Fatalf("%d late PX-8 handsets offered and failed, want 60", failed)
		}
		evaluate(t, env)
		if got := getRollout(t, env, r.ID); got.State != "running" || got.Halt != nil || len(got.Holds) != 0 {
			t.Fatalf("after 60 late PX-8 failures: state %s, halt %+v, holds %+v; want running, no halt, no hold", got.State, got.Halt, got.Holds)
		}
		// Fakes of the real fleet's model: before, the rollout halted.
		px7 := enrollFleet(t, env, 60, "PX-7", "7.2.0")
		if _, failed := install(t, clk, px7, checkInAll(t, px7), fail); failed != 60 {
			t.Fatalf("%d late PX-7 handsets offered and failed, want 60", failed)
		}
		evaluate(t, env)
		if got := getRollout(t, env, r.ID); got.State != "running" || got.Halt != nil || len(got.Holds) != 0 {
			t.Fatalf("after 60 more late PX-7 failures: state %s, halt %+v, holds %+v; want running, no halt, no hold", got.State, got.Halt, got.Holds)
		}
		// The report shows every handset the rollout offered it to.
		var rep server.RolloutReport
		if err := env.Do("GET", "/rollouts/"+r.ID+"/report", nil, &rep); err != nil {
			t.Fatal(err)
		}
		if rep.Offered != 180 || rep.Installed != 60 || rep.Failed != 120 {
			t.Errorf("report: %d offered, %d installed, %d failed; want 180, 60, 120", rep.Offered, rep.Installed, rep.Failed)
		}
	})
	t.Run("enrolled before the start", func(t *testing.T) {
		env, clk := failingFleetRelease(t)
		hs := enrollFleet(t, env, 60, "PX-7", "7.2.0")
		clk.Advance(time.Minute)
		r := createRollout(t, env, req)
		clk.Advance(time.Minute)
		install(t, clk, hs, checkInAll(t, hs), fail)
		evaluate(t, env)
		got := getRollout(t, env, r.ID)
		if got.State != "paused" || got.Halt == nil || got.Halt.Failed != 60 || got.Halt.Installed != 0 {
			t.Fatalf("after 60 failures of handsets enrolled before the start: state %s, halt %+v; want paused with 60 failed", got.State, got.Halt)
		}
	})
}

// TestRolloutHoldsOneModel: with only PX-8 failing, PX-8 alone is held
// (the reason and numbers recorded), PX-7 goes on through its stages by
// auto-advance after the soak and completes.
func TestRolloutHoldsOneModel(t *testing.T) {
	env, clk := failingFleetRelease(t)
	minResults := int64(20)
	soak := "1h"
	r := createRollout(t, env, wire.RolloutRequest{Release: patchPath, Stages: []float64{50, 100}, MinResults: &minResults,
		Soak: &soak, Reason: "privacy patch"})
	px7 := enrollFleet(t, env, 120, "PX-7", "7.2.0")
	px8 := enrollFleet(t, env, 120, "PX-8", "7.2.0")

	i7, _ := install(t, clk, px7, checkInAll(t, px7), func(int) bool { return false })
	i8, f8 := install(t, clk, px8, checkInAll(t, px8), func(i int) bool { return i%2 == 0 })
	evaluate(t, env)
	got := getRollout(t, env, r.ID)
	if got.State != "running" || got.Halt != nil || len(got.Holds) != 1 || got.Holds[0].Model != "PX-8" {
		t.Fatalf("after PX-8 failed %d installs: state %s, halt %+v, holds %+v; want running with PX-8 held", f8, got.State, got.Halt, got.Holds)
	}
	// The cohort (random salt and ids) decides how many of the failing
	// half were offered: the rate is what they reported, about 50%.
	if h := got.Holds[0]; h.Failed != int64(f8) || h.Installed != int64(i8) ||
		math.Abs(h.Rate-float64(f8)/float64(f8+i8)) > 1e-9 || h.Reason == "" {
		t.Errorf("hold %+v, want %d failed of %d and a reason", h, f8, f8+i8)
	}
	t.Logf("PX-7: %d installed at 50%%; hold: %s", i7, got.Holds[0].Reason)

	// A PX-8 that was not offered yet is refused; PX-7 goes on.
	for _, h := range px8 {
		if a := h.checkIn(t); a.Offer != nil {
			if a.NoOffer != "" {
				t.Fatalf("PX-8 %s: offer and refusal %q", h.id, a.NoOffer)
			}
		} else if a.NoOffer != "model_held" && a.NoOffer != "runs_patch" {
			t.Fatalf("PX-8 %s refused with %q, want model_held", h.id, a.NoOffer)
		}
	}
	// After the soak the healthy models would advance to 100%: past 50%
	// the policy only asks, on behalf of the rollout's creator, and a
	// second person approves; then it completes on its own.
	clk.Advance(61 * time.Minute)
	evaluate(t, env)
	if got := getRollout(t, env, r.ID); got.Percent != 50 || got.State != "running" {
		t.Fatalf("after the soak: %g%% %s, want 50%% running until approved", got.Percent, got.State)
	}
	var approvals []wire.Approval
	if err := env.Do("GET", "/rollouts/"+r.ID+"/approvals", nil, &approvals); err != nil {
		t.Fatal(err)
	}
	if len(approvals) != 1 || approvals[0].State != "pending" || approvals[0].RequestedBy != r.CreatedBy || approvals[0].ToPercent != 100 {
		t.Fatalf("approvals after the soak: %+v, want one pending to 100%% on behalf of %s", approvals, r.CreatedBy)
	}
	second := &apitest.Env{URL: env.URL, Token: env.ApproverToken(t)}
	var d wire.ApprovalDecision
	if err := second.Do("POST", "/rollouts/"+r.ID+"/approvals/"+approvals[0].ID+"/approve", wire.RolloutActionRequest{Reason: "PX-7 healthy"}, &d); err != nil {
		t.Fatal(err)
	}
	if got := getRollout(t, env, r.ID); got.Percent != 100 || got.State != "running" {
		t.Fatalf("after the approval: %g%% %s, want 100%% running", got.Percent, got.State)
	}
	install(t, clk, px7, checkInAll(t, px7), func(int) bool { return false })
	clk.Advance(61 * time.Minute)
	evaluate(t, env)
	got = getRollout(t, env, r.ID)
	if got.State != "completed" || len(got.Holds) != 1 || got.Holds[0].Model != "PX-8" {
		t.Fatalf("after the last soak: state %s, holds %+v; want completed with PX-8 still held", got.State, got.Holds)
	}
	for _, h := range px7 {
		if a := h.checkIn(t); a.Offer != nil || a.NoOffer != "runs_patch" {
			t.Errorf("PX-7 %s after completion: offer %v (%q), want none: it runs the patch", h.id, a.Offer != nil, a.NoOffer)
		}
	}
}

// TestRolloutRetriesWindowAndBuild follows the policies through the
// store and the HTTP API on a fake clock: a failed install is offered
// again only after its backoff and not after the last attempt; a handset
// outside the window is told when it opens; one on the release's build
// or newer is never offered it.
func TestRolloutRetriesWindowAndBuild(t *testing.T) {
	env, clk := failingFleetRelease(t)
	retries := 1
	r := createRollout(t, env, wire.RolloutRequest{Release: patchPath, Stages: []float64{100}, Retries: &retries,
		Backoff: []string{"2h"}, Models: []string{"PX-7"}, Reason: "privacy patch"})
	h := enrollHandset(t, env, "PX-7", "7.2.0")
	fail := func(n int) {
		t.Helper()
		a := h.checkIn(t)
		if a.Offer == nil {
			t.Fatalf("attempt %d: no offer (%q)", n, a.NoOffer)
		}
		at := clk.Now()
		if c := call(t, "POST", env.URL+"/api/v1/reports", h.token, wire.ReportBody{ReportID: fmt.Sprintf("fail-%d", n),
			PatchID: a.Offer.PatchID, RolloutID: r.ID, State: handsets.StateFailed, ErrorCode: "E_DISK_FULL", At: &at}, nil); c != 201 {
			t.Fatalf("report: %d", c)
		}
	}
	fail(1)
	clk.Advance(90 * time.Minute)
	a := h.checkIn(t)
	if a.Offer != nil || a.NoOffer != "retry_backoff" || a.PollAfterSeconds > 35*60 || a.PollAfterSeconds < 25*60 {
		t.Fatalf("90 minutes into a 2h backoff: offer %v, %q, poll after %ds; want retry_backoff and about 30 minutes", a.Offer != nil, a.NoOffer, a.PollAfterSeconds)
	}
	clk.Advance(31 * time.Minute)
	fail(2) // the retry: offered again, and fails again
	clk.Advance(3 * time.Hour)
	if a := h.checkIn(t); a.Offer != nil || a.NoOffer != "attempts_exhausted" {
		t.Fatalf("after 1 + 1 attempts: offer %v, %q; want attempts_exhausted", a.Offer != nil, a.NoOffer)
	}
	recs, err := env.DB.Rollouts().DeviceRollouts(context.Background(), h.id)
	if err != nil || len(recs) != 1 || recs[0].Attempts != 2 || recs[0].State != handsets.StateFailed {
		t.Fatalf("record: %+v, %v; want one record, 2 attempts, failed", recs, err)
	}

	// A window of 01:00-05:00 local time, for a handset at UTC+1.
	createRollout(t, env, wire.RolloutRequest{Release: patchPath, Stages: []float64{100}, Window: "01:00-05:00",
		Models: []string{"PX-8"}, Reason: "night only"})
	night := enrollHandset(t, env, "PX-8", "7.2.0")
	offset := 60
	night.body.UTCOffsetMinutes = &offset
	// 23:30 local: outside; told to poll at its interval (1h, sooner
	// than the window's 01:00).
	local := clk.Now().Add(time.Hour)
	at2330 := time.Date(local.Year(), local.Month(), local.Day(), 23, 30, 0, 0, time.UTC)
	if !at2330.After(local) {
		at2330 = at2330.Add(24 * time.Hour)
	}
	clk.Advance(at2330.Sub(local))
	a = night.checkIn(t)
	if a.Offer != nil || a.NoOffer != "outside_window" || a.PollAfterSeconds < 3200 || a.PollAfterSeconds > 4000 {
		t.Fatalf("23:30 local: offer %v, %q, poll after %ds; want outside_window, the hour's poll", a.Offer != nil, a.NoOffer, a.PollAfterSeconds)
	}
	// 00:45 local: still outside, and the window opens before the next
	// poll: told to come back at 01:00.
	clk.Advance(75 * time.Minute)
	a = night.checkIn(t)
	if a.Offer != nil || a.NoOffer != "outside_window" || a.PollAfterSeconds < 13*60 || a.PollAfterSeconds > 17*60 {
		t.Fatalf("00:45 local: offer %v, %q, poll after %ds; want outside_window, about 15 minutes", a.Offer != nil, a.NoOffer, a.PollAfterSeconds)
	}
	clk.Advance(20 * time.Minute) // 01:05 local
	if a := night.checkIn(t); a.Offer == nil {
		t.Fatalf("01:05 local, inside the window: no offer (%q)", a.NoOffer)
	}

	// On the release's build or newer: never offered.
	for _, build := range []string{"7.5.0", "7.10.2"} {
		newer := enrollHandset(t, env, "PX-8", build)
		if a := newer.checkIn(t); a.Offer != nil || a.NoOffer != "build_not_older" {
			t.Errorf("handset on %s: offer %v (%q), want build_not_older", build, a.Offer != nil, a.NoOffer)
		}
	}
}
