package apitest_test

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/patchfleet/ota/server/api/wire"
	"github.com/patchfleet/ota/server/handsets"
	"github.com/patchfleet/ota/server/rollout"
)

// TestRolloutHoldsASilentModel: a quarter of the PX-8 handsets begin
// installing and are never heard from again, as a patch that bricks them
// would leave them; they report no failure. Within silence_after nothing
// happens; once it has passed, PX-8 alone is held for silence, with the
// numbers in the reason, while PX-7 goes on. When the silent handsets
// check in again, with nothing else changed, they stop counting.
func TestRolloutHoldsASilentModel(t *testing.T) {
	env, clk := failingFleetRelease(t)
	minResults, maxSilence, after := int64(20), 0.1, "30m"
	r := createRollout(t, env, wire.RolloutRequest{Release: patchPath, Stages: []float64{100}, MinResults: &minResults,
		SilenceAfter: &after, MaxSilenceRate: &maxSilence, Reason: "privacy patch"})
	if r.Policy.SilenceAfter != "30m" || r.Policy.MaxSilenceRate != 0.1 {
		t.Fatalf("policy %+v, want silence after 30m, at most 10%%", r.Policy)
	}
	px7 := enrollFleet(t, env, 40, "PX-7", "7.2.0")
	px8 := enrollFleet(t, env, 40, "PX-8", "7.2.0")
	clk.Advance(time.Second)
	install(t, clk, px7, checkInAll(t, px7), func(int) bool { return false })
	answers := checkInAll(t, px8)
	var bricked, healthy []*handset
	for i, h := range px8 {
		if i%4 == 0 {
			bricked = append(bricked, h)
		} else {
			healthy = append(healthy, h)
		}
	}
	install(t, clk, healthy, answers, func(int) bool { return false })
	for i, h := range bricked {
		a := answers[h.id]
		if a.Offer == nil {
			t.Fatalf("PX-8 handset %s not offered (%q)", h.id, a.NoOffer)
		}
		at := clk.Now()
		if c := call(t, "POST", env.URL+"/api/v1/reports", h.token, wire.ReportBody{ReportID: fmt.Sprintf("brick-%d", i),
			PatchID: a.Offer.PatchID, RolloutID: a.Offer.RolloutID, Target: a.Offer.Target, State: handsets.StateInstalling, At: &at}, nil); c != 201 {
			t.Fatalf("report installing: %d", c)
		}
	}
	// The handsets that installed reboot and check in on the new build.
	clk.Advance(time.Second)
	checkInAll(t, px7)
	checkInAll(t, healthy)

	clk.Advance(29 * time.Minute)
	evaluate(t, env)
	if got := getRollout(t, env, r.ID); got.State != "running" || len(got.Holds) != 0 {
		t.Fatalf("within silence_after: state %s, holds %+v; want running, nothing held", got.State, got.Holds)
	}

	clk.Advance(2 * time.Minute)
	evaluate(t, env)
	got := getRollout(t, env, r.ID)
	if got.State != "running" || len(got.Holds) != 1 || got.Holds[0].Model != "PX-8" {
		t.Fatalf("after silence_after: state %s, halt %+v, holds %+v; want PX-8 held alone", got.State, got.Halt, got.Holds)
	}
	h := got.Holds[0]
	if h.Silent != 10 || h.Installed != 30 || h.Failed != 0 ||
		!strings.Contains(h.Reason, "model PX-8: 10 of 40 handsets that began installing silent for over 30m (25.0%), above the 10.0% limit") {
		t.Errorf("hold %+v, want 10 of 40 PX-8 silent, with the numbers in the reason", h)
	}
	t.Logf("hold: %s", h.Reason)
	for id, a := range checkInAll(t, enrollFleet(t, env, 3, "PX-7", "7.2.0")) {
		if a.Offer == nil {
			t.Errorf("PX-7 %s is not offered (%q): only PX-8 is held", id, a.NoOffer)
		}
	}

	// The bricked handsets come back (a reboot into the old build): they
	// are no longer silent, though nothing else about them changed.
	clk.Advance(time.Minute)
	checkInAll(t, bricked)
	now := clk.Now()
	res, err := env.App.Evaluator.Store.RolloutResults(context.Background(),
		rollout.ResultsQuery{RolloutID: r.ID, Since: now.Add(-time.Hour), SilentBefore: now.Add(-30 * time.Minute)})
	if err != nil {
		t.Fatal(err)
	}
	if res["PX-8"] != (rollout.Results{Installed: 30}) || res["PX-7"] != (rollout.Results{Installed: 40}) {
		t.Errorf("after the silent handsets checked in: %+v, want no one silent", res)
	}
}
