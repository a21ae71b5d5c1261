package client_test

import (
	"bytes"
	"crypto/ed25519"
	"net/http"
	"testing"
	"time"

	"github.com/patchfleet/ota/client"
	"github.com/patchfleet/ota/internal/apitest"
	"github.com/patchfleet/ota/server/api/wire"
)

// TestHandsetCalls runs the handset half of the client against the real
// API (which validates every request and answer against the OpenAPI
// document): enrollment signed with the device key, re-enrollment finding
// the same device, a check-in, a report and its retry counted once, and
// erasing the device, after which its token is refused.
func TestHandsetCalls(t *testing.T) {
	env := apitest.Start(t, apitest.Options{})
	es := apitest.NewEngineers(t, 1)
	env.Ceremony(t, es, 1)
	content := []byte("the privacy patch")
	env.Publish(t, "px7/patch.bin", content, es[0])

	ctx := t.Context()
	c, err := client.New(env.URL)
	if err != nil {
		t.Fatal(err)
	}
	key := ed25519.NewKeyFromSeed(make([]byte, ed25519.SeedSize))
	body := wire.EnrollBody{Model: "PX-7", Build: "7.4.0", Channel: "stable", Region: "DE"}
	a, created, err := c.Enroll(ctx, key, body)
	if err != nil || !created {
		t.Fatalf("first enrollment: created %v, %v; want a new device", created, err)
	}
	again, created, err := c.Enroll(ctx, key, body)
	if err != nil || created || again.DeviceID != a.DeviceID {
		t.Fatalf("second enrollment: %+v created %v, %v; want device %s again", again, created, err, a.DeviceID)
	}
	// Another key is another device.
	other := ed25519.NewKeyFromSeed(append(make([]byte, ed25519.SeedSize-1), 1))
	if b, _, err := c.Enroll(ctx, other, body); err != nil || b.DeviceID == a.DeviceID {
		t.Fatalf("another key: %+v, %v; want another device", b, err)
	}

	dev := c.WithToken(again.Token)
	off := false
	ans, err := dev.CheckIn(ctx, wire.CheckInBody{Build: "7.4.0", Model: "PX-7", Channel: "stable",
		CloudMessaging: "auto_enabled", NumberEncryption: &off})
	if err != nil || ans.Offer != nil || ans.PollAfterSeconds <= 0 {
		t.Fatalf("check-in: %+v, %v; want no offer (no rollout) and a poll interval", ans, err)
	}

	at := time.Now().UTC()
	rep := wire.ReportBody{ReportID: "6f1c2a4e-0b7d-4c3e-9a51-2d8e7f6b5c4a", PatchID: apitest.PatchCustom().PatchID,
		Target: "px7/patch.bin", State: "downloading", At: &at}
	if dup, err := dev.Report(ctx, rep); err != nil || dup {
		t.Fatalf("report: duplicate %v, %v; want stored", dup, err)
	}
	if dup, err := dev.Report(ctx, rep); err != nil || !dup {
		t.Fatalf("report retried: duplicate %v, %v; want a duplicate", dup, err)
	}

	if err := dev.EraseSelf(ctx); err != nil {
		t.Fatalf("erase self: %v", err)
	}
	_, err = dev.CheckIn(ctx, wire.CheckInBody{Build: "7.4.0", Model: "PX-7", Channel: "stable",
		CloudMessaging: "auto_enabled", NumberEncryption: &off})
	if e := client.AsError(err); e == nil || e.Status != http.StatusUnauthorized {
		t.Fatalf("check-in after erasing: %v; want a 401 *client.Error", err)
	}
}

// TestEnrollRefusesWrongKey: a key of the wrong size is refused before
// anything is sent.
func TestEnrollRefusesWrongKey(t *testing.T) {
	c, err := client.New("http://127.0.0.1:1")
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := c.Enroll(t.Context(), ed25519.PrivateKey{1, 2, 3}, wire.EnrollBody{}); err == nil {
		t.Fatal("a 3-byte key was accepted")
	}
}

// TestResolveURL: offers' root-relative URLs resolve under the server's
// URL, path included (otad behind a gateway does not know its prefix);
// another host only when allowed; never a query, fragment or other scheme.
func TestResolveURL(t *testing.T) {
	c, err := client.New("http://127.0.0.1:8080/ota")
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		ref, want string
		allowed   []string
	}{
		{"/tuf/", "http://127.0.0.1:8080/ota/tuf/", nil},
		{"/tuf/?x=1#f", "http://127.0.0.1:8080/ota/tuf/", nil},
		{"http://127.0.0.1:8080/ota/targets", "http://127.0.0.1:8080/ota/targets/", nil},
		{"http://127.0.0.1:8080/mirror/", "http://127.0.0.1:8080/mirror/", nil},
		{"//evil.example/tuf/", "", nil},
		{"http:///tuf/", "", nil},
		{"http://evil.example/tuf/", "", nil},
		{"http://127.0.0.2:9000/targets/", "", nil},
		{"http://127.0.0.2:9000/targets/", "http://127.0.0.2:9000/targets/", []string{"127.0.0.2:9000"}},
		{"file:///etc/passwd", "", nil},
	} {
		got, err := c.ResolveURL(tc.ref, tc.allowed...)
		if got != tc.want || (err == nil) != (tc.want != "") {
			t.Errorf("ResolveURL(%q, %v) = %q, %v; want %q", tc.ref, tc.allowed, got, err, tc.want)
		}
	}
}

// TestFirstRoot: the root a handset or simulator trusts on first use is
// root v1 exactly as the repository holds it; before the root ceremony
// there is none, and the error says so with the server's 404.
func TestFirstRoot(t *testing.T) {
	env := apitest.Start(t, apitest.Options{})
	c, err := client.New(env.URL)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.FirstRoot(t.Context()); client.AsError(err) == nil || client.AsError(err).Status != http.StatusNotFound {
		t.Fatalf("first root before the ceremony: %v; want a 404 *client.Error", err)
	}
	env.Ceremony(t, apitest.NewEngineers(t, 1), 1)
	got, err := c.FirstRoot(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if want := env.RootBytes(t, 1); !bytes.Equal(got, want) {
		t.Fatalf("first root: %d bytes, want root v1's %d bytes unchanged", len(got), len(want))
	}
}
