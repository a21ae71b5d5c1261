package apitest_test

import (
	"bytes"
	"testing"

	"github.com/patchfleet/ota/internal/apitest"
	"github.com/patchfleet/ota/manifests"
	"github.com/patchfleet/ota/server/api/wire"
	"github.com/patchfleet/ota/server/rollout"
)

// TestPublishingIsNotDeploying checks, through the handset and admin HTTP
// APIs on the real store, that a published release is offered to no one
// (no_offer "not_selected") until an operator starts a rollout of it;
// that a 50% stage offers it to its cohort alone and advancing to 100%
// to every handset it applies to, the first cohort included; and that a
// second release published meanwhile, without a rollout, still reaches
// no one.
func TestPublishingIsNotDeploying(t *testing.T) {
	env := apitest.Start(t, apitest.Options{})
	es := apitest.NewEngineers(t, 2)
	env.Ceremony(t, es, 2)
	const n = 100
	fleet := make([]*handset, n)
	for i := range fleet {
		fleet[i] = enrollHandset(t, env, "PX-7", "7.2.0")
	}
	other := enrollHandset(t, env, "PX-9", "7.2.0")
	newer := enrollHandset(t, env, "PX-7", "7.5.0")
	patch := randomBytes(t, 4096)
	env.Publish(t, patchPath, patch, es...)
	// A release for PX-9 is published too, and no rollout ever starts for it.
	custom := apitest.PatchCustom()
	custom.PatchID, custom.Models = "CM-2026-002", []string{"PX-9"}
	v := env.DraftRelease(t, "cloudmsg/CM-2026-002/update.zip", randomBytes(t, 4096), custom)
	if v = env.MustSign(t, v.ID, es...); v.State != manifests.DraftPublished {
		t.Fatalf("second release: state %s, want published", v.State)
	}

	refused := func(tb testing.TB, h *handset, what, want string) {
		tb.Helper()
		if ans := h.checkIn(tb); ans.Offer != nil || ans.NoOffer != want {
			tb.Fatalf("%s: offer %+v, no_offer %q, want none and %s", what, ans.Offer, ans.NoOffer, want)
		}
	}
	for i, h := range fleet {
		refused(t, h, "published, no rollout: handset "+h.id, "not_selected")
		if i == 0 {
			refused(t, other, "PX-9, no rollout", "not_selected")
			refused(t, newer, "7.5.0, no rollout", "not_selected")
		}
	}

	var ro wire.Rollout
	if err := env.Do("POST", "/rollouts", wire.RolloutRequest{Release: patchPath, Stages: []float64{50, 100},
		Reason: "first half of the fleet"}, &ro); err != nil {
		t.Fatalf("create rollout: %v", err)
	}
	if ro.State != string(rollout.RolloutRunning) || ro.Percent != 50 || ro.Release.InstallsBuild != "7.5.0" {
		t.Fatalf("rollout %+v, want running at 50%% installing 7.5.0", ro)
	}
	offered := func(tb testing.TB, h *handset, what string) {
		tb.Helper()
		ans := h.checkIn(tb)
		if o := ans.Offer; o == nil || o.Target != patchPath || o.RolloutID != ro.ID || o.SHA256 != apitest.SHA256Hex(patch) {
			tb.Fatalf("%s: offer %+v, no_offer %q, want %s of rollout %s", what, o, ans.NoOffer, patchPath, ro.ID)
		}
	}
	var cohort []*handset
	for _, h := range fleet {
		if rollout.InStage(ro.Salt, h.id, 50) {
			offered(t, h, "in the 50% cohort: handset "+h.id)
			cohort = append(cohort, h)
		} else {
			refused(t, h, "out of the 50% cohort: handset "+h.id, "not_in_cohort")
		}
	}
	if len(cohort) == 0 || len(cohort) == n {
		t.Fatalf("%d of %d handsets in the 50%% cohort: the stage proves nothing", len(cohort), n)
	}
	refused(t, other, "PX-9 during the PX-7 rollout", "not_selected")
	refused(t, newer, "7.5.0 during the rollout", "build_not_older")
	// The handset verifies the offer through TUF, as it would to install.
	if got, err := download(t, env, env.RootBytes(t, 1), patchPath); err != nil || !bytes.Equal(got, patch) {
		t.Fatalf("TUF download of the offer: %v", err)
	}

	env.Widen(t, "POST", "/rollouts/"+ro.ID+"/advance", wire.RolloutAdvanceRequest{Reason: "healthy at 50%"}, &ro)
	if ro.Percent != 100 {
		t.Fatalf("after advance: %v%%, want 100", ro.Percent)
	}
	for _, h := range fleet {
		offered(t, h, "at 100%: handset "+h.id)
	}
	refused(t, other, "PX-9 at 100% of the PX-7 rollout", "not_selected")
	refused(t, newer, "7.5.0 at 100%", "build_not_older")
}
