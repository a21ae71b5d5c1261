package server_test

import (
	"context"
	"encoding/json"
	"errors"
	"slices"
	"testing"
	"time"

	"github.com/patchfleet/ota/manifests"
	"github.com/patchfleet/ota/server"
	"github.com/patchfleet/ota/server/handsets"
	"github.com/patchfleet/ota/server/rollout"
)

func TestCompareBuilds(t *testing.T) {
	tests := []struct {
		a, b string
		want int
	}{
		{"7.1.0", "7.1.0", 0},
		{"7.10.0", "7.9.1", 1},
		{"7.0", "7.0.1", -1},
		{"7.0.0-rc1", "7.0.0-rc2", -1},
		{"2026.11.01", "2026.2.28", 1},
		{"7.0.0", "7.0.0+build5", -1},
		// Runs of separators count as one, as do separators at the ends.
		{"7..1", "7.1", 0},
		{".7.1-", "7.1", 0},
		{"", "...", 0},
		{"", "0", -1},
		{"7.1_2", "7.1.10", -1},
		{"7.β", "7.a", 1},
	}
	for _, tc := range tests {
		if got := handsets.CompareBuilds(tc.a, tc.b); sign(got) != tc.want {
			t.Errorf("CompareBuilds(%q, %q) = %d, want sign %d", tc.a, tc.b, got, tc.want)
		}
		if got := handsets.CompareBuilds(tc.b, tc.a); sign(got) != -tc.want {
			t.Errorf("CompareBuilds(%q, %q) = %d, want sign %d", tc.b, tc.a, got, -tc.want)
		}
	}
}

func sign(n int) int {
	switch {
	case n < 0:
		return -1
	case n > 0:
		return 1
	}
	return 0
}

// fakeTargets is a function-field fake of rollout.TargetSource.
type fakeTargets struct {
	version int64
	targets []manifests.TargetInfo
	calls   int
}

func (f *fakeTargets) TargetsVersion() int64 { return f.version }
func (f *fakeTargets) PublishedTargets() (int64, []manifests.TargetInfo) {
	f.calls++
	return f.version, f.targets
}

func target(tb testing.TB, path string, c manifests.TargetCustom) manifests.TargetInfo {
	tb.Helper()
	b, err := json.Marshal(c)
	if err != nil {
		tb.Fatal(err)
	}
	return manifests.TargetInfo{Path: path, Length: 10, SHA256: "ab", Custom: b}
}

// rolloutsFake is the part of rollout.RolloutStore RolloutEligibility
// calls, in memory; the rest is the nil embedded interface's and panics.
type rolloutsFake struct {
	rollout.RolloutStore
	rollouts []*rollout.Rollout
	reads    int
	offers   []rollout.Decision
	full     bool // RecordOffer finds the budget full
}

func (f *rolloutsFake) Rollouts(context.Context, ...rollout.RolloutState) ([]*rollout.Rollout, error) {
	f.reads++
	return slices.Clone(f.rollouts), nil
}

func (f *rolloutsFake) RecordOffer(_ context.Context, dec rollout.Decision, _, _ *handsets.DeviceRollout, _ int, _ time.Time) (bool, error) {
	if f.full {
		return false, nil
	}
	f.offers = append(f.offers, dec)
	return true, nil
}

func startedRollout(t testing.TB, id, target string, percent float64, now time.Time) *rollout.Rollout {
	t.Helper()
	r, _, err := rollout.NewRollout(rollout.Rollout{ID: id, Stages: []float64{percent}, Policy: rollout.DefaultPolicy(),
		Release: rollout.RolloutRelease{Target: target, PatchID: "CM-2", InstallsBuild: "7.5.0"}}, "alice", now)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := r.Start("alice", "go", now); err != nil {
		t.Fatal(err)
	}
	return r
}

// TestRolloutEligibility: publishing offers nothing, a running rollout
// offers its release as published, a yanked release is refused, and the
// copy of the rollouts is read once per Refresh unless invalidated.
func TestRolloutEligibility(t *testing.T) {
	t0 := time.Date(2026, 11, 1, 0, 0, 0, 0, time.UTC)
	src := &fakeTargets{version: 3, targets: []manifests.TargetInfo{
		target(t, "new.zip", manifests.TargetCustom{PatchID: "CM-2", Models: []string{"PX-7"}, InstallsBuild: "7.5.0", Released: t0}),
	}}
	store := &rolloutsFake{}
	el := &server.RolloutEligibility{Store: store, Source: src, Refresh: time.Minute}
	d := &handsets.Device{ID: "dev_1", Model: "PX-7", Build: "7.2.0", InstalledPatches: []string{}}
	decide := func(now time.Time, records ...*handsets.DeviceRollout) server.Answer {
		t.Helper()
		ans, err := el.Decide(t.Context(), d, records, rollout.DecisionInput{Now: now})
		if err != nil {
			t.Fatal(err)
		}
		return ans
	}

	if ans := decide(t0); ans.Offer != nil || !errors.Is(ans.Decision.Reason, rollout.ErrNotSelected) {
		t.Fatalf("published, no rollout: got %+v, want no offer (not selected)", ans)
	}
	r := startedRollout(t, "ro-1", "new.zip", 100, t0)
	r.Policy.MaxOffersPerMinute = 10
	store.rollouts = []*rollout.Rollout{r}
	if ans := decide(t0.Add(30 * time.Second)); ans.Offer != nil {
		t.Fatalf("a rollout started within Refresh of the last read reached the check-in: %+v", ans.Offer)
	}
	el.Invalidate()
	ans := decide(t0.Add(40 * time.Second))
	if o := ans.Offer; o == nil || o.Target != "new.zip" || o.Length != 10 || o.SHA256 != "ab" || o.RolloutID != "ro-1" || o.PatchID != "CM-2" {
		t.Fatalf("running rollout: got offer %+v, want new.zip of ro-1 as published", o)
	}
	if len(store.offers) != 1 || store.offers[0].Kind != rollout.OfferFirst {
		t.Fatalf("first offer recorded as %+v, want one OfferFirst", store.offers)
	}
	// Offered and not reported on since: the same offer, nothing recorded.
	rec := &handsets.DeviceRollout{RolloutID: "ro-1", DeviceID: d.ID, State: handsets.DeviceOffered, Attempts: 1}
	if ans := decide(t0.Add(50*time.Second), rec); ans.Offer == nil || len(store.offers) != 1 {
		t.Fatalf("repeat: offer %+v, %d records, want the offer and no new record", ans.Offer, len(store.offers))
	}
	if store.reads != 2 {
		t.Errorf("rollouts read %d times, want 2 (first check-in, after Invalidate)", store.reads)
	}

	// The budget is full: refused with offer_cap_reached, and the next
	// check-in of the same minute does not claim again.
	store.full = true
	d.ID = "dev_2"
	if ans := decide(t0.Add(61 * time.Second)); ans.Offer != nil || rollout.RefusalCode(ans.Decision.Reason) != "offer_cap_reached" {
		t.Fatalf("full budget: got %+v, want offer_cap_reached", ans)
	}
	store.full = false
	if ans := decide(t0.Add(62 * time.Second)); ans.Offer != nil {
		t.Fatalf("second check-in of a full minute got an offer")
	}
	if ans := decide(t0.Add(2 * time.Minute)); ans.Offer == nil {
		t.Fatalf("next minute: no offer, want one")
	}

	// Yanked: no offer, and the reason says so.
	src.version, src.targets = 4, nil
	if ans := decide(t0.Add(3 * time.Minute)); ans.Offer != nil || rollout.RefusalCode(ans.Decision.Reason) != "release_not_published" {
		t.Fatalf("yanked release: got %+v, want release_not_published", ans)
	}
}

func TestCompliance(t *testing.T) {
	d := handsets.Device{InstalledPatches: []string{"CM-1"}, CloudMessaging: handsets.MessagingOptedOut, NumberEncryption: true}
	if !d.Patched("CM-1") || !d.Compliant("CM-1") {
		t.Error("patched device with messaging off and encryption on is not compliant")
	}
	d.CloudMessaging = handsets.MessagingAutoEnabled
	if d.Compliant("CM-1") {
		t.Error("a device whose messaging switched itself on counts as compliant")
	}
	d.CloudMessaging, d.NumberEncryption = handsets.MessagingOptedIn, false
	if d.Compliant("CM-1") {
		t.Error("a device sending numbers unencrypted counts as compliant")
	}
	if (&handsets.Device{}).Patched("CM-1") {
		t.Error("an unpatched device counts as patched")
	}
}
