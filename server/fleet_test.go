package server_test

import (
	"testing"
	"time"

	"github.com/patchfleet/ota/server"
	"github.com/patchfleet/ota/server/handsets"
)

// TestEnrollMessage pins the bytes a handset signs (other handset
// implementations follow them) and checks that no two requests that
// differ in a signed field sign the same bytes, even when the fields'
// concatenation is the same.
func TestEnrollMessage(t *testing.T) {
	key := "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a"
	req := server.EnrollRequest{Model: "PX-7", Build: "7.2.0", Channel: "stable", Region: "DE",
		DeviceKey: key, Timestamp: time.Date(2026, 3, 1, 13, 0, 0, 250000000, time.FixedZone("CET", 3600)),
		Secret: "fleet-secret", Signature: "ignored"}
	want := "otad-enroll-v2\n" +
		"device_key:64:" + key + "\n" +
		"model:4:PX-7\n" +
		"build:5:7.2.0\n" +
		"channel:6:stable\n" +
		"region:2:DE\n" +
		"timestamp:23:2026-03-01T12:00:00.25Z\n"
	if got := string(server.EnrollMessage(req)); got != want {
		t.Errorf("message:\n got %q\nwant %q", got, want)
	}

	base := server.EnrollRequest{Model: "PX", Build: "7", Channel: "stable", DeviceKey: key, Timestamp: req.Timestamp}
	tests := []struct {
		name   string
		change func(*server.EnrollRequest)
	}{
		{"model", func(r *server.EnrollRequest) { r.Model = "PX-9" }},
		{"build", func(r *server.EnrollRequest) { r.Build = "8" }},
		{"channel", func(r *server.EnrollRequest) { r.Channel = "beta" }},
		{"region", func(r *server.EnrollRequest) { r.Region = "FR" }},
		{"key", func(r *server.EnrollRequest) { r.DeviceKey = key[:62] + "00" }},
		{"timestamp", func(r *server.EnrollRequest) { r.Timestamp = r.Timestamp.Add(time.Microsecond) }},
		// The same characters split differently between two fields.
		{"model and build", func(r *server.EnrollRequest) { r.Model, r.Build = "PX7", "" }},
		{"build and channel", func(r *server.EnrollRequest) { r.Build, r.Channel = "7s", "table" }},
		{"separator in a value", func(r *server.EnrollRequest) { r.Model, r.Build = "PX\nbuild:1:7", "" }},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			changed := base
			tc.change(&changed)
			if string(server.EnrollMessage(changed)) == string(server.EnrollMessage(base)) {
				t.Errorf("a changed %s signs the same message", tc.name)
			}
		})
	}
	// Secret and signature are not signed.
	unsigned := req
	unsigned.Secret, unsigned.Signature = "", ""
	if string(server.EnrollMessage(unsigned)) != want {
		t.Error("the secret or the signature changes the message")
	}
}

// TestNeedsWrite: a check-in that changes nothing but last_seen is not
// written until last_seen is resolution old, except the first of a UTC
// day; any change of state is written at once.
func TestNeedsWrite(t *testing.T) {
	seen := time.Date(2026, 12, 1, 10, 0, 0, 0, time.UTC)
	d := &handsets.Device{ID: "dev_1", Model: "PX-7", Build: "7.2.0", Channel: "stable", InstalledPatches: []string{},
		CloudMessaging: handsets.MessagingAutoEnabled, LastSeen: seen}
	ci := handsets.CheckIn{Model: "PX-7", Build: "7.2.0", Channel: "stable", CloudMessaging: handsets.MessagingAutoEnabled}
	tests := []struct {
		name   string
		change func(*handsets.CheckIn)
		at     time.Time
		want   bool
	}{
		{"same state, 10 minutes later", nil, seen.Add(10 * time.Minute), false},
		{"same state, 59 minutes later", nil, seen.Add(59 * time.Minute), false},
		{"same state, an hour later", nil, seen.Add(time.Hour), true},
		{"same state, next UTC day", nil, time.Date(2026, 12, 2, 0, 1, 0, 0, time.UTC), true},
		{"new build", func(c *handsets.CheckIn) { c.Build = "7.5.0" }, seen.Add(time.Minute), true},
		{"patch installed", func(c *handsets.CheckIn) { c.InstalledPatches = []string{"CM-1"} }, seen.Add(time.Minute), true},
		{"messaging opted out", func(c *handsets.CheckIn) { c.CloudMessaging = handsets.MessagingOptedOut }, seen.Add(time.Minute), true},
		{"encryption on", func(c *handsets.CheckIn) { c.NumberEncryption = true }, seen.Add(time.Minute), true},
		{"channel", func(c *handsets.CheckIn) { c.Channel = "beta" }, seen.Add(time.Minute), true},
		{"time zone only (never stored)", func(c *handsets.CheckIn) { o := 60; c.UTCOffsetMinutes = &o }, seen.Add(time.Minute), false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c := ci
			if tc.change != nil {
				tc.change(&c)
			}
			next := d.AfterCheckIn(c, tc.at)
			if got := handsets.NeedsWrite(d, next, time.Hour); got != tc.want {
				t.Errorf("NeedsWrite = %v, want %v", got, tc.want)
			}
			if !next.LastSeen.Equal(tc.at) || next.Build != c.Build {
				t.Errorf("AfterCheckIn: %+v", next)
			}
		})
	}
}
