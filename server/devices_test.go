package server_test

import (
	"context"
	"encoding/json"
	"testing"
	"time"

	"github.com/patchfleet/ota/manifests"
	"github.com/patchfleet/ota/server"
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
	}
	for _, tc := range tests {
		if got := server.CompareBuilds(tc.a, tc.b); sign(got) != tc.want {
			t.Errorf("CompareBuilds(%q, %q) = %d, want sign %d", tc.a, tc.b, got, tc.want)
		}
		if got := server.CompareBuilds(tc.b, tc.a); sign(got) != -tc.want {
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

// fakeTargets is a function-field fake of server.TargetSource.
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

func TestNewestReleaseEligibility(t *testing.T) {
	t0 := time.Date(2026, 11, 1, 0, 0, 0, 0, time.UTC)
	src := &fakeTargets{version: 3, targets: []manifests.TargetInfo{
		target(t, "old.zip", manifests.TargetCustom{PatchID: "CM-1", Models: []string{"PX-7"}, BuildMin: "7.0", BuildMax: "7.4.9", Released: t0}),
		target(t, "new.zip", manifests.TargetCustom{PatchID: "CM-2", Models: []string{"PX-7"}, BuildMin: "7.0", BuildMax: "7.4.9", Released: t0.Add(time.Hour)}),
		target(t, "px8.zip", manifests.TargetCustom{PatchID: "CM-8", Models: []string{"PX-8"}, Released: t0.Add(2 * time.Hour)}),
		{Path: "foreign.bin", Length: 1, SHA256: "cd"}, // no custom metadata: never offered
	}}
	el := &server.NewestRelease{Source: src}
	tests := []struct {
		name   string
		device server.Device
		want   string // target offered, "" for none
	}{
		{"newest matching release", server.Device{Model: "PX-7", Build: "7.2.0"}, "new.zip"},
		{"runs the newest patch: offered the other one", server.Device{Model: "PX-7", Build: "7.2.0", InstalledPatches: []string{"CM-2"}}, "old.zip"},
		{"runs both", server.Device{Model: "PX-7", Build: "7.2.0", InstalledPatches: []string{"CM-1", "CM-2"}}, ""},
		{"build below the range", server.Device{Model: "PX-7", Build: "6.9.9"}, ""},
		{"build above the range", server.Device{Model: "PX-7", Build: "7.10.0"}, ""},
		{"other model", server.Device{Model: "PX-8", Build: "1.0"}, "px8.zip"},
		{"unknown model", server.Device{Model: "ZZ-1", Build: "7.2.0"}, ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			o, err := el.Offer(context.Background(), &tc.device)
			if err != nil {
				t.Fatal(err)
			}
			got := ""
			if o != nil {
				got = o.Target
			}
			if got != tc.want {
				t.Fatalf("offered %q, want %q", got, tc.want)
			}
		})
	}
	if src.calls != 1 {
		t.Errorf("targets decoded %d times for one targets version, want once", src.calls)
	}
}

func TestCompliance(t *testing.T) {
	d := server.Device{InstalledPatches: []string{"CM-1"}, CloudMessaging: server.MessagingOptedOut, NumberEncryption: true}
	if !d.Patched("CM-1") || !d.Compliant("CM-1") {
		t.Error("patched device with messaging off and encryption on is not compliant")
	}
	d.CloudMessaging = server.MessagingAutoEnabled
	if d.Compliant("CM-1") {
		t.Error("a device whose messaging switched itself on counts as compliant")
	}
	d.CloudMessaging, d.NumberEncryption = server.MessagingOptedIn, false
	if d.Compliant("CM-1") {
		t.Error("a device sending numbers unencrypted counts as compliant")
	}
	if (&server.Device{}).Patched("CM-1") {
		t.Error("an unpatched device counts as patched")
	}
}
