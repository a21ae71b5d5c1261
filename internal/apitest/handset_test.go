package apitest_test

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"testing"
	"time"

	"github.com/patchfleet/ota/internal/apitest"
	"github.com/patchfleet/ota/server/api/wire"
	"github.com/patchfleet/ota/server/handsets"
)

type handset struct {
	env   *apitest.Env
	id    string
	token string
	body  wire.CheckInBody
}

func call(tb testing.TB, method, url, token string, in, out any) int {
	tb.Helper()
	var r io.Reader
	if in != nil {
		b, _ := json.Marshal(in)
		r = bytes.NewReader(b)
	}
	req, _ := http.NewRequest(method, url, r)
	req.Header.Set("Content-Type", "application/json")
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		tb.Fatal(err)
	}
	defer resp.Body.Close()
	if out != nil {
		json.NewDecoder(resp.Body).Decode(out)
	}
	return resp.StatusCode
}

func enrollHandset(tb testing.TB, env *apitest.Env, model, build string) *handset {
	tb.Helper()
	var a wire.EnrollAnswer
	if code := call(tb, "POST", env.URL+"/api/v1/devices", "", wire.EnrollBody{Model: model, Build: build, Channel: "stable", Region: "DE"}, &a); code != 201 {
		tb.Fatalf("enroll: %d", code)
	}
	f := false
	return &handset{env: env, id: a.DeviceID, token: a.Token, body: wire.CheckInBody{Build: build, Model: model, Channel: "stable",
		InstalledPatches: []string{}, CloudMessaging: handsets.MessagingAutoEnabled, NumberEncryption: &f}}
}

func (h *handset) checkIn(tb testing.TB) wire.CheckInAnswer {
	tb.Helper()
	var a wire.CheckInAnswer
	if code := call(tb, "POST", h.env.URL+"/api/v1/checkin", h.token, h.body, &a); code != 200 {
		tb.Fatalf("check-in: %d", code)
	}
	return a
}

func (h *handset) report(tb testing.TB, id, patch, state, code string, at time.Time) int {
	tb.Helper()
	return call(tb, "POST", h.env.URL+"/api/v1/reports", h.token,
		wire.ReportBody{ReportID: id, PatchID: patch, State: state, ErrorCode: code, At: &at}, nil)
}

// TestHandsetJourney follows handsets through the API on the real store:
// enrollment, a check-in with nothing to offer, the release (offered to
// no one until a rollout starts), the offer (verified and installed
// through go-tuf), reports (with a retry and out
// of order), the check-in that proves compliance, the fleet summary and
// erasure.
func TestHandsetJourney(t *testing.T) {
	env := apitest.Start(t, apitest.Options{})
	es := apitest.NewEngineers(t, 2)
	env.Ceremony(t, es, 2)
	a := enrollHandset(t, env, "PX-7", "7.2.0")
	b := enrollHandset(t, env, "PX-7", "7.2.0")
	old := enrollHandset(t, env, "PX-7", "6.0.0")

	if ans := a.checkIn(t); ans.Offer != nil || ans.PollAfterSeconds < 3240 || ans.PollAfterSeconds > 3960 {
		t.Fatalf("before any release: offer %+v poll %d, want none and 1h±10%%", ans.Offer, ans.PollAfterSeconds)
	}
	patch := randomBytes(t, 64<<10)
	env.Publish(t, patchPath, patch, es...)
	// Publishing is not deploying: no rollout, no offer.
	if ans := a.checkIn(t); ans.Offer != nil || ans.NoOffer != "not_selected" {
		t.Fatalf("published, no rollout: offer %+v no_offer %q, want none and not_selected", ans.Offer, ans.NoOffer)
	}
	r := env.StartRollout(t, patchPath)

	ans := a.checkIn(t)
	o := ans.Offer
	if o == nil || o.Target != patchPath || o.PatchID != "CM-2026-001" || o.RolloutID != r.ID || o.Length != int64(len(patch)) ||
		o.SHA256 != apitest.SHA256Hex(patch) || o.MetadataURL != "/tuf/" || o.TargetsURL != "/targets/" ||
		o.Custom.CloudMessagingDefault != "opt-in" || o.Custom.InstallsBuild != "7.5.0" || ans.NoOffer != "" {
		t.Fatalf("offer %+v (no_offer %q), want %s of rollout %s", o, ans.NoOffer, patchPath, r.ID)
	}
	if ans := old.checkIn(t); ans.Offer != nil || ans.NoOffer != "not_selected" {
		t.Fatalf("a build below the patch's range: offer %+v no_offer %q, want none and not_selected", ans.Offer, ans.NoOffer)
	}
	// The handset verifies the offer through TUF before installing.
	got, err := download(t, env, env.RootBytes(t, 1), o.Target)
	if err != nil || !bytes.Equal(got, patch) {
		t.Fatalf("TUF download of the offer: %v", err)
	}

	t0 := time.Now().Add(-time.Minute).UTC()
	steps := []struct {
		id, state string
		at        time.Time
		want      int
	}{
		{"a-1", "downloading", t0, 201},
		{"a-1", "downloading", t0, 200}, // a retry: stored once
		{"a-5", "installed", t0.Add(5 * time.Second), 201},
		{"a-4", "installing", t0.Add(4 * time.Second), 201}, // late: must not undo installed
		{"a-2", "downloaded", t0.Add(2 * time.Second), 201},
	}
	for _, s := range steps {
		if code := a.report(t, s.id, o.PatchID, s.state, "", s.at); code != s.want {
			t.Fatalf("report %s %s: got %d, want %d", s.id, s.state, code, s.want)
		}
	}
	if code := b.report(t, "b-1", o.PatchID, "failed", "E_DISK_FULL", t0); code != 201 {
		t.Fatalf("failed report: %d", code)
	}
	states, err := env.DB.Devices().PatchStates(t.Context(), a.id)
	if err != nil || len(states) != 1 || states[0].State != handsets.StateInstalled {
		t.Fatalf("device state after out-of-order reports: %+v %v, want installed", states, err)
	}
	reports, _ := env.DB.Devices().Reports(t.Context(), a.id)
	if len(reports) != 4 {
		t.Fatalf("stored %d reports, want 4 (the retry stored once)", len(reports))
	}

	// After installing: patch listed, messaging opt-in, numbers encrypted.
	tr := true
	a.body.InstalledPatches, a.body.CloudMessaging, a.body.NumberEncryption = []string{o.PatchID}, handsets.MessagingOptedOut, &tr
	if ans := a.checkIn(t); ans.Offer != nil || ans.NoOffer != "runs_patch" {
		t.Fatalf("a patched handset: offer %+v no_offer %q, want none and runs_patch", ans.Offer, ans.NoOffer)
	}

	var sum handsets.FleetSummary
	if err := env.Do("GET", "/fleet/summary", nil, &sum); err != nil {
		t.Fatal(err)
	}
	want := "patch CM-2026-001 enrolled 3 active 3 patched 1 compliant 1 failures [{E_DISK_FULL 1}]"
	got2 := fmt.Sprintf("patch %s enrolled %d active %d patched %d compliant %d failures %v", sum.PatchID, sum.Enrolled, sum.Active, sum.Patched, sum.Compliant, sum.Failures)
	if got2 != want {
		t.Fatalf("summary:\n got %s\nwant %s", got2, want)
	}

	if code := call(t, "DELETE", env.URL+"/api/v1/devices/self", a.token, nil, nil); code != 204 {
		t.Fatalf("erase: %d", code)
	}
	if code := call(t, "POST", env.URL+"/api/v1/checkin", a.token, a.body, nil); code != 401 {
		t.Fatalf("check-in after erasure: %d, want 401", code)
	}
	if reports, _ := env.DB.Devices().Reports(t.Context(), a.id); len(reports) != 0 {
		t.Fatalf("%d reports left after erasure", len(reports))
	}
}
