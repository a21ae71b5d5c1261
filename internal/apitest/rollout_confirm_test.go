package apitest_test

import (
	"context"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/patchfleet/ota/server"
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

// TestReportShowsConfirmations: the rollout report counts as confirmed
// the installs whose handsets checked in on the new build with the
// patch, by model, with the offer-to-confirmation times; a handset that
// reported installed but checks in on the old build is installed and not
// confirmed, and checking in again confirms nothing twice.
func TestReportShowsConfirmations(t *testing.T) {
	env, clk := failingFleetRelease(t)
	r := createRollout(t, env, wire.RolloutRequest{Release: patchPath, Stages: []float64{100}, Reason: "privacy patch"})
	px7 := enrollFleet(t, env, 6, "PX-7", "7.2.0")
	px8 := enrollFleet(t, env, 4, "PX-8", "7.2.0")
	fleet := append(px7, px8...)
	answers := checkInAll(t, fleet) // offered at the clock's now
	clk.Advance(10 * time.Minute)
	if installed, _ := install(t, clk, fleet, answers, func(int) bool { return false }); installed != len(fleet) {
		t.Fatalf("%d installs, want %d", installed, len(fleet))
	}
	// Two PX-8 handsets stay on the old build (the install did not take).
	for _, h := range px8[:2] {
		h.body.Build = "7.2.0"
	}
	clk.Advance(20 * time.Minute)
	checkInAll(t, fleet)
	clk.Advance(time.Hour)
	checkInAll(t, fleet)

	var rep server.RolloutReport
	if err := env.Do("GET", "/rollouts/"+r.ID+"/report", nil, &rep); err != nil {
		t.Fatal(err)
	}
	if rep.Installed != 10 || rep.Confirmed != 8 {
		t.Errorf("installed %d, confirmed %d; want 10 installed, 8 confirmed", rep.Installed, rep.Confirmed)
	}
	byModel := map[string][2]int64{}
	for _, m := range rep.ByModel {
		byModel[m.Model] = [2]int64{m.Installed, m.Confirmed}
	}
	if want := map[string][2]int64{"PX-7": {6, 6}, "PX-8": {4, 2}}; !reflect.DeepEqual(byModel, want) {
		t.Errorf("by model (installed, confirmed): %v, want %v", byModel, want)
	}
	ct := rep.OfferToConfirmation
	// Confirmed 30 minutes after the offer; the buckets are within 9%.
	if ct.Count != 8 || ct.P50 == nil || ct.P95 == nil || *ct.P50 < 1600 || *ct.P50 > 2000 || *ct.P95 < 1600 || *ct.P95 > 2000 {
		t.Errorf("offer to confirmation %+v (p50 %v, p95 %v); want 8 times of about 1800 s", ct, deref(ct.P50), deref(ct.P95))
	}
	if it := rep.OfferToInstall; it.Count != 10 || it.P50 == nil || *it.P50 > 660 {
		t.Errorf("offer to install %+v; want 10 times of about 600 s", it)
	}
}

func deref(p *float64) any {
	if p == nil {
		return nil
	}
	return *p
}
