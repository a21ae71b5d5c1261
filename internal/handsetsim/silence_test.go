package handsetsim_test

import (
	"context"
	"crypto/rand"
	"strings"
	"testing"
	"time"

	"github.com/patchfleet/ota/client"
	"github.com/patchfleet/ota/internal/apitest"
	"github.com/patchfleet/ota/internal/handsetsim"
	"github.com/patchfleet/ota/server/api/wire"
	"github.com/patchfleet/ota/server/rollout"
)

// TestSilentModelIsHeld is the silence issue's end-to-end run: 2,000
// simulated handsets on the real API, PX-7 and PX-8 half each; the patch
// bricks 30% of the PX-8s silently (they report installing and are never
// heard from again, no failure reported). Every other handset installs
// and checks in on the new build. Within silence_after the rollout runs
// on; once it has passed, PX-8 alone is held for silence, and PX-7 is
// not; every install that was not silent is confirmed.
func TestSilentModelIsHeld(t *testing.T) {
	if testing.Short() {
		t.Skip("2,000 handsets")
	}
	clk := &apitest.AheadClock{}
	env := apitest.Start(t, apitest.Options{Now: clk.Now})
	es := apitest.NewEngineers(t, 1)
	env.Ceremony(t, es, 1)
	content := make([]byte, 16<<10)
	rand.Read(content)
	custom := apitest.PatchCustom()
	custom.Models = []string{"PX-7", "PX-8"}
	const path = "cloudmsg/CM-2026-001/update.zip"
	env.MustSign(t, env.DraftRelease(t, path, content, custom).ID, es...)

	c, err := client.New(env.URL)
	if err != nil {
		t.Fatal(err)
	}
	const n = 2000
	devs := make([]handsetsim.Handset, n)
	for i := range devs {
		model := "PX-7"
		if i%2 == 1 {
			model = "PX-8"
		}
		devs[i] = handsetsim.NewHandset(model, "7.2.1", "stable", "")
	}
	// Enroll the fleet before the rollout starts: handsets enrolled
	// later count in no halt or hold.
	enroll, err := handsetsim.New(handsetsim.Config{Client: c, EnrollOnly: true, Workers: 16}, devs)
	if err != nil {
		t.Fatal(err)
	}
	if !enroll.RunUntilSettled(context.Background(), 5*time.Minute) {
		t.Fatalf("enrollment did not finish: %+v", enroll.Counts())
	}
	clk.Advance(time.Second)
	minResults, after, maxSilence := int64(50), "10m", 0.1
	var r wire.Rollout
	env.Widen(t, "POST", "/rollouts", wire.RolloutRequest{Release: path, Stages: []float64{100}, MinResults: &minResults,
		SilenceAfter: &after, MaxSilenceRate: &maxSilence, Reason: "privacy patch"}, &r)

	fleet, err := handsetsim.New(handsetsim.Config{Client: c, Root: env.RootBytes(t, 1), TUFDir: t.TempDir(), Workers: 16,
		TimeScale: 0.0001,
		Install: func(i int, h *handsetsim.Handset, _ int) handsetsim.Outcome {
			// 30% of the PX-8s: every third odd handset, and a few more.
			return handsetsim.Outcome{Silent: h.Model == "PX-8" && (i/2)%10 < 3}
		}}, enroll.Handsets())
	if err != nil {
		t.Fatal(err)
	}
	// The run takes real time (a minute or two on a loaded machine): the
	// windows below are counted from its start, so that the first
	// handsets to begin installing are not past silence_after sooner.
	runStart := clk.Now()
	if !fleet.RunUntilSettled(context.Background(), 5*time.Minute) {
		t.Fatalf("the fleet did not settle: %+v", fleet.Counts())
	}
	counts := fleet.Counts()
	if counts.Installed != n*7/10+n*3/20 || counts.Silent != n*3/20 || counts.Failed != 0 {
		t.Fatalf("handsets: %+v; want %d installed and %d silent", counts, n*7/10+n*3/20, n*3/20)
	}

	evaluate := func() wire.Rollout {
		t.Helper()
		if err := env.App.Evaluator.Evaluate(context.Background()); err != nil {
			t.Fatal(err)
		}
		var got wire.Rollout
		if err := env.Do("GET", "/rollouts/"+r.ID, nil, &got); err != nil {
			t.Fatal(err)
		}
		return got
	}
	elapsed := clk.Now().Sub(runStart)
	if elapsed > 8*time.Minute {
		t.Fatalf("the fleet took %s: the silence window of 10m cannot be checked from within", elapsed)
	}
	clk.Advance(9*time.Minute - elapsed) // 9 minutes after the first install began

	if got := evaluate(); got.State != string(rollout.RolloutRunning) && got.State != string(rollout.RolloutCompleted) || len(got.Holds) != 0 || got.Halt != nil {
		t.Fatalf("within silence_after: %s, halt %+v, holds %+v; want nothing stopped", got.State, got.Halt, got.Holds)
	}
	clk.Advance(elapsed + 2*time.Minute) // 11 minutes after the last one
	got := evaluate()
	if got.Halt != nil || len(got.Holds) != 1 || got.Holds[0].Model != "PX-8" {
		t.Fatalf("after silence_after: %s, halt %+v, holds %+v; want PX-8 held alone", got.State, got.Halt, got.Holds)
	}
	h := got.Holds[0]
	if h.Silent != n*3/20 || h.Installed != n*7/20 || !strings.Contains(h.Reason, "model PX-8: 300 of 1000 handsets that began installing silent for over 10m") {
		t.Errorf("hold %+v", h)
	}
	// The others completed: every install is confirmed, its handset back
	// on the release's build with the patch.
	rel := rollout.RolloutRelease{PatchID: custom.PatchID, InstallsBuild: custom.InstallsBuild}
	res, err := env.App.Evaluator.Store.RolloutResults(context.Background(),
		rollout.ResultsQuery{RolloutID: r.ID, Since: time.Time{}.Add(time.Hour), Confirm: &rel})
	if err != nil {
		t.Fatal(err)
	}
	if res["PX-7"].Confirmed != n/2 || res["PX-8"].Confirmed != n*7/20 {
		t.Errorf("confirmed: %+v; want all %d PX-7 and %d PX-8 installs", res, n/2, n*7/20)
	}
	t.Logf("%d handsets: %d installed, %d silent, confirmed %d + %d; %s", n, counts.Installed, counts.Silent,
		res["PX-7"].Confirmed, res["PX-8"].Confirmed, h.Reason)
}
