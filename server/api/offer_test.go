package api

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/patchfleet/ota/manifests"
	"github.com/patchfleet/ota/server"
	"github.com/patchfleet/ota/server/api/wire"
	"github.com/patchfleet/ota/server/handsets"
	"github.com/patchfleet/ota/server/rollout"
)

// offerAlways offers the same release to every device.
type offerAlways server.Offer

func (o *offerAlways) Decide(context.Context, *handsets.Device, []*handsets.DeviceRollout, rollout.DecisionInput) (server.Answer, error) {
	return server.Answer{Decision: rollout.Decision{RolloutID: o.RolloutID, Kind: rollout.OfferFirst}, Offer: (*server.Offer)(o)}, nil
}

// TestOfferURLsIgnoreHost checks that an offer never names a host taken
// from the request: a check-in with a forged or empty Host header gets the
// configured public URL, or root-relative paths when there is none.
func TestOfferURLsIgnoreHost(t *testing.T) {
	tests := []struct {
		name, publicURL, host    string
		wantMetadata, wantTarget string
	}{
		{"forged host, no public URL", "", "evil.example", "/tuf/", "/targets/"},
		{"forged host with port, no public URL", "", "evil.example:8443", "/tuf/", "/targets/"},
		{"empty host, no public URL", "", "", "/tuf/", "/targets/"},
		{"forged host, public URL", "https://ota.example.com/", "evil.example", "https://ota.example.com/tuf/", "https://ota.example.com/targets/"},
		{"empty host, public URL with a path", "https://cdn.example.com/ota", "", "https://cdn.example.com/ota/tuf/", "https://cdn.example.com/ota/targets/"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s, _ := newHandsetServer(t, Config{PublicURL: tc.publicURL})
			s.fleet.Eligibility = &offerAlways{Target: "cloudmsg/CM-2026-001/update.zip", Length: 3, SHA256: strings.Repeat("ab", 32), PatchID: "CM-2026-001", RolloutID: "ro-1",
				Custom: manifests.TargetCustom{PatchID: "CM-2026-001"}} // as signed: the contract requires a patch id
			req := httptest.NewRequest(http.MethodPost, "/api/v1/checkin", strings.NewReader(validCheckIn))
			req.Host = tc.host
			req.Header.Set("Content-Type", "application/json")
			req.Header.Set("Authorization", "Bearer "+goodToken)
			rec := httptest.NewRecorder()
			s.ServeHTTP(rec, req)
			if rec.Code != http.StatusOK {
				t.Fatalf("check-in: got %d %s, want 200", rec.Code, rec.Body)
			}
			var ans wire.CheckInAnswer
			if err := json.Unmarshal(rec.Body.Bytes(), &ans); err != nil || ans.Offer == nil {
				t.Fatalf("check-in answer %s: %v, want an offer", rec.Body, err)
			}
			if ans.Offer.MetadataURL != tc.wantMetadata || ans.Offer.TargetsURL != tc.wantTarget {
				t.Errorf("offer URLs %q, %q; want %q, %q", ans.Offer.MetadataURL, ans.Offer.TargetsURL, tc.wantMetadata, tc.wantTarget)
			}
			if tc.host != "" && strings.Contains(rec.Body.String(), strings.Split(tc.host, ":")[0]) {
				t.Errorf("answer names the request's host %q: %s", tc.host, rec.Body)
			}
		})
	}
}
