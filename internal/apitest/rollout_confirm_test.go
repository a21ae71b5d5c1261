package apitest_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/patchfleet/ota/server/rollout"

	"github.com/patchfleet/ota/server/api/wire"
)

// TestAdvanceWaitsForConfirmations: with min_confirmations, a soaked
// stage whose installs are reported but whose handsets have not checked
// in on the new build does not advance; once they have, it does, and the
// event says how many were confirmed.
func TestAdvanceWaitsForConfirmations(t *testing.T) {
	env, clk := failingFleetRelease(t)
	minResults, confirm, soak := int64(20), int64(20), "1h"
	r := createRollout(t, env, wire.RolloutRequest{Release: patchPath, Stages: []float64{10, 20}, MinResults: &minResults,
		MinConfirmations: &confirm, Soak: &soak, Reason: "privacy patch"})
	if r.Policy.MinConfirmations != 20 {
		t.Fatalf("policy %+v, want 20 confirmations", r.Policy)
	}
	fleet := enrollFleet(t, env, 400, "PX-7", "7.2.0")
	// Enrolled on the fake clock's second of the rollout's start: they
	// count (only handsets enrolled after it do not).
	clk.Advance(time.Second)
	installed, _ := install(t, clk, fleet, checkInAll(t, fleet), func(int) bool { return false })
	if installed < 25 {
		t.Fatalf("only %d installs in the 10%% stage", installed)
	}
	clk.Advance(2 * time.Hour)
	evaluate(t, env)
	if got := getRollout(t, env, r.ID); got.Stage != 0 {
		t.Fatalf("stage %d with %d installs reported and none confirmed; want stage 0", got.Stage, installed)
	}
	// The handsets reboot and check in on the new build.
	checkInAll(t, fleet)
	evaluate(t, env)
	got := getRollout(t, env, r.ID)
	if got.Stage != 1 {
		rel := rollout.RolloutRelease{PatchID: "CM-2026-001", InstallsBuild: "7.5.0"}
		res, err := env.App.Evaluator.Store.RolloutResults(context.Background(), rollout.ResultsQuery{RolloutID: r.ID, Since: time.Time{}.Add(time.Hour), Confirm: &rel})
		t.Fatalf("stage %d after the installs were confirmed; want 1 (%+v %v)", got.Stage, res, err)
	}
	var events []wire.RolloutEvent
	if err := env.Do("GET", "/rollouts/"+r.ID+"/events", nil, &events); err != nil {
		t.Fatal(err)
	}
	found := false
	for _, ev := range events {
		found = found || ev.Action == "advance" && strings.Contains(ev.Reason, "installs confirmed on 7.5.0")
	}
	if !found {
		t.Errorf("no advance event saying the confirmations: %+v", events)
	}
}
