package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/patchfleet/ota/internal/apitest"
	"github.com/patchfleet/ota/internal/envflag"
	"github.com/patchfleet/ota/server/api/wire"
	"github.com/patchfleet/ota/server/handsets"
	"github.com/patchfleet/ota/server/identity"
)

// TestAddrFile starts otad on port 0 with --addr-file: the file holds the
// address the kernel chose (replacing a stale one), and no temporary file
// is left beside it; a clean shutdown removes it.
func TestAddrFile(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "otad.addr")
	if err := os.WriteFile(path, []byte("127.0.0.1:1\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg := defaultConfig()
	cfg.DataDir = t.TempDir()
	cfg.AddrFile = path
	m, _ := startMain(t, cfg)

	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := string(b), m.Addr()+"\n"; got != want {
		t.Fatalf("--addr-file holds %q, want %q", got, want)
	}
	if code, body := get(t, "http://"+strings.TrimSpace(string(b))+"/healthz"); code != 200 {
		t.Errorf("/healthz at the address from the file: %d %s", code, body)
	}
	if entries, _ := os.ReadDir(dir); len(entries) != 1 {
		t.Errorf("folder of --addr-file holds %d entries, want only otad.addr (no temporary file left)", len(entries))
	}
	if err := m.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(path); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("--addr-file after shutdown: %v, want it removed", err)
	}
}

// TestValidatePublicURL checks that otad refuses to start where offers
// would name no URL the operator chose: beyond loopback without
// --public-url, or with a public URL that is not an absolute http(s) URL.
func TestValidatePublicURL(t *testing.T) {
	tests := []struct {
		listen, publicURL string
		want              string // substring of the error; "" = valid
	}{
		{"127.0.0.1:8080", "", ""},
		{"127.0.0.2:0", "", ""},
		{"[::1]:8080", "", ""},
		{"localhost:8080", "", ""},
		{":8080", "", `required when --listen ":8080" accepts connections from other hosts`},
		{"0.0.0.0:8080", "", "required when --listen"},
		{"[::]:8080", "", "required when --listen"},
		{"192.0.2.10:8080", "", "required when --listen"},
		{"ota.internal:8080", "", "required when --listen"},
		{":8080", "https://ota.example.com", ""},
		{":8080", "https://ota.example.com/ota/", ""},
		{"127.0.0.1:8080", "http://127.0.0.1:8080", ""},
		{":8080", "ota.example.com", "want an absolute http(s)://"},
		{":8080", "/ota", "want an absolute http(s)://"},
		{":8080", "http://", "want an absolute http(s)://"},
		{":8080", "ftp://ota.example.com", "want an absolute http(s)://"},
		{":8080", "https:ota.example.com", "want an absolute http(s)://"},
		{":8080", "https://ota.example.com/?x=1", "must not have a query or fragment"},
		{":8080", "https://ota.example.com/?", "must not have a query or fragment"},
		{":8080", "https://ota.example.com/#top", "must not have a query or fragment"},
		{":8080", "https://ota.example.com/#", "must not have a query or fragment"},
		{":8080", "https://user:pass@ota.example.com", "must not carry user:password"},
	}
	for _, tc := range tests {
		cfg := defaultConfig()
		cfg.Listen, cfg.PublicURL = tc.listen, tc.publicURL
		err := cfg.ValidateServe()
		if tc.want == "" {
			if err != nil {
				t.Errorf("--listen %s --public-url %q: %v, want valid", tc.listen, tc.publicURL, err)
			}
			continue
		}
		var se *envflag.Error
		if !errors.As(err, &se) || se.Flag != "public-url" || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("--listen %s --public-url %q: got %v, want a --public-url error containing %q", tc.listen, tc.publicURL, err, tc.want)
		}
	}
}

// TestOfferURLsNameTheBoundAddress publishes and rolls out a release on an
// otad started on 127.0.0.1:0 and checks in with a forged Host header: the offer names
// the configured public URL, or without one the address otad bound.
func TestOfferURLsNameTheBoundAddress(t *testing.T) {
	for _, publicURL := range []string{"", "https://ota.example.com/ota"} {
		t.Run("public URL "+publicURL, func(t *testing.T) {
			cfg := defaultConfig()
			cfg.DataDir = t.TempDir()
			cfg.PublicURL = publicURL
			m, _ := startMain(t, cfg)
			base := "http://" + m.Addr()
			want := publicURL
			if want == "" {
				want = base
			}

			_, secret, err := identity.Tokens{Store: m.DB.Tokens(), Users: m.DB.Users()}.Create(t.Context(), "offer-test", identity.RoleReleaseEngineer)
			if err != nil {
				t.Fatal(err)
			}
			env := &apitest.Env{URL: base, Token: secret}
			es := apitest.NewEngineers(t, 2)
			env.Ceremony(t, es, 2)
			const target = "cloudmsg/CM-2026-001/update.zip"
			env.Publish(t, target, []byte("the patch"), es...)
			_, approver, err := identity.Tokens{Store: m.DB.Tokens(), Users: m.DB.Users()}.Create(t.Context(), "offer-approver", identity.RoleOperator)
			if err != nil {
				t.Fatal(err)
			}
			ro := createRollout(t, env, approver, wire.RolloutRequest{Release: target, Stages: []float64{100},
				Reason: "offer URL test"})

			var enrolled wire.EnrollAnswer
			postJSON(t, base+"/api/v1/devices", "", "", wire.EnrollBody{Model: "PX-7", Build: "7.2.0", Channel: "stable"}, &enrolled)
			f := false
			var ans wire.CheckInAnswer
			postJSON(t, base+"/api/v1/checkin", enrolled.Token, "evil.example", wire.CheckInBody{Model: "PX-7", Build: "7.2.0",
				Channel: "stable", InstalledPatches: []string{}, CloudMessaging: handsets.MessagingAutoEnabled, NumberEncryption: &f}, &ans)
			if ans.Offer == nil || ans.Offer.RolloutID != ro.ID {
				t.Fatalf("offer %+v (no_offer %q) with rollout %s running, want an offer of it", ans.Offer, ans.NoOffer, ro.ID)
			}
			if ans.Offer.MetadataURL != want+"/tuf/" || ans.Offer.TargetsURL != want+"/targets/" {
				t.Errorf("offer URLs %q, %q; want %q, %q", ans.Offer.MetadataURL, ans.Offer.TargetsURL, want+"/tuf/", want+"/targets/")
			}
		})
	}
}

// postJSON posts body and decodes a 2xx answer into out, sending host as
// the Host header when it is not empty.
func postJSON(tb testing.TB, url, token, host string, body, out any) {
	tb.Helper()
	b, err := json.Marshal(body)
	if err != nil {
		tb.Fatal(err)
	}
	req, err := http.NewRequest(http.MethodPost, url, bytes.NewReader(b))
	if err != nil {
		tb.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	if host != "" {
		req.Host = host
	}
	client := &http.Client{Timeout: 10 * time.Second}
	resp, err := client.Do(req)
	if err != nil {
		tb.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode/100 != 2 {
		var e wire.ErrorBody
		json.NewDecoder(resp.Body).Decode(&e)
		tb.Fatalf("POST %s: %d %+v", url, resp.StatusCode, e)
	}
	if err := json.NewDecoder(resp.Body).Decode(out); err != nil {
		tb.Fatal(err)
	}
}
