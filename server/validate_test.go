package server_test

import (
	"context"
	"errors"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/patchfleet/ota/manifests"
	"github.com/patchfleet/ota/server"
)

// TestTightFields: every handset field but a report's message either
// matches a pattern that cannot hold an IMEI, IMSI, phone number, email
// or IP address, or is refused with a message naming the field and not
// repeating the value. The versions, ids and codes real handsets send
// pass.
func TestTightFields(t *testing.T) {
	now := time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC)
	fields := map[string]func(v string) error{
		"model":   func(v string) error { return server.ValidateDeviceInfo(v, "7.2.0", "stable", "") },
		"build":   func(v string) error { return server.ValidateDeviceInfo("PX-7", v, "stable", "") },
		"channel": func(v string) error { return server.ValidateDeviceInfo("PX-7", "7.2.0", v, "") },
		"region":  func(v string) error { return server.ValidateDeviceInfo("PX-7", "7.2.0", "stable", v) },
		"installed_patches[0]": func(v string) error {
			ci := server.CheckIn{Model: "PX-7", Build: "7.2.0", Channel: "stable", InstalledPatches: []string{v},
				CloudMessaging: server.MessagingOptedOut}
			return ci.Validate()
		},
		"report_id": func(v string) error { return report(func(r *server.Report) { r.ID = v }).Validate(now) },
		"patch_id":  func(v string) error { return report(func(r *server.Report) { r.PatchID = v }).Validate(now) },
		"error_code": func(v string) error {
			return report(func(r *server.Report) { r.State, r.ErrorCode = server.StateFailed, v }).Validate(now)
		},
	}
	accepted := map[string][]string{
		"model":                {"PX-7", "pixel-9a", "SM-G998B", "iPhone15.2"},
		"build":                {"7.2.0", "14.0.0.201", "V14.0.6.0.TNRMIXM", "TQ3A.230805.001", "7.4.10-rc1", "7.0.0+build5", "2026.11.01", "UP1A.231005.007"},
		"channel":              {"stable", "beta-2"},
		"region":               {"", "DE"},
		"installed_patches[0]": {"CM-2026-001", "SEC-0"},
		"report_id": {"a-1", "r1-2-3", "kfjdbcnapmlkoeihgfedcbaponmlkjih",
			"12345678-1234-4123-8123-123456789012", "f47ac10b-58cc-4372-a567-0e02b2c3d479"},
		"patch_id":   {"CM-2026-001", "CM-1"},
		"error_code": {"E_DISK_FULL", "E_TUF_VERIFY", "E_X", "DISK2_FULL"},
	}
	// Identifiers, each in a form a field's pattern alone would let in.
	planted := []string{"867530012345670", "262011234567890", "8613812345678", "x8675300", "PX-8675309",
		"867-530-012-345-670", "138.1234.5678", "86_138_1234_5678", "7.0.0+8613812345678",
		"203.0.113.77", "10.0.0.1", "build-203.0.113.77", "v7.203.0.113.77"}
	// A build may hold four dotted numbers (OEM builds such as 14.0.0.201).
	plantedInBuild := slices.DeleteFunc(slices.Clone(planted), func(v string) bool { return strings.Count(v, ".") == 3 || strings.Count(v, ".") == 4 })
	refused := map[string][]string{
		"model":                append(planted, "", "PX 7", "+8613812345678", "a.b@example.com", "2001:db8::1", strings.Repeat("m", 65)),
		"build":                append(plantedInBuild, "", "+86 138-1234-5678", strings.Repeat("7", 65)),
		"channel":              {"8675300123", "Stable", "a867530012345670", "a.b"},
		"region":               {"Germany", "de", "49"},
		"installed_patches[0]": append(planted, "CM 1", "../x"),
		"report_id":            append(planted, "", "12345678-1234-4123-8123-1234567890123", "867530012345670-1234-4123-8123-123456789012"),
		"patch_id":             append(planted, "", "a.b@example.com"),
		"error_code":           append(planted, "", "E_IMEI_867530012345670", "e_disk_full", "E__X", "E_DISK_", "E-DISK", strings.Repeat("E", 49)),
	}
	for field, check := range fields {
		for _, v := range accepted[field] {
			if err := check(v); err != nil {
				t.Errorf("%s %q refused: %v", field, v, err)
			}
		}
		for _, v := range refused[field] {
			err := check(v)
			fe := new(server.FieldError)
			if !errors.As(err, &fe) || fe.Field != field {
				t.Errorf("%s %q: got %v, want a field error naming %s", field, v, err, field)
				continue
			}
			if len(v) >= 8 && strings.Contains(fe.Message, v) {
				t.Errorf("%s: the message %q repeats the value", field, fe.Message)
			}
		}
	}
}

func report(edit func(*server.Report)) *server.Report {
	r := &server.Report{ID: "a-1", PatchID: "CM-2026-001", Target: "px7/update.zip", State: server.StateInstalled,
		At: time.Date(2026, 12, 1, 11, 0, 0, 0, time.UTC)}
	edit(r)
	return r
}

// reportStore is a server.DeviceStore fake for Fleet.Report: one device,
// reports kept in memory. The methods Report does not call are the nil
// embedded interface's and panic.
type reportStore struct {
	server.DeviceStore
	device  server.Device
	reports []server.Report
}

func (s *reportStore) DeviceByToken(context.Context, string) (*server.Device, error) {
	d := s.device
	return &d, nil
}

func (s *reportStore) AddReport(_ context.Context, r server.Report) (server.ReportOutcome, error) {
	s.reports = append(s.reports, r)
	return server.ReportOutcome{}, nil
}

func (s *reportStore) Reports(context.Context, string) ([]server.Report, error) {
	return s.reports, nil
}

// TestReportTimeAndPatch: a report's time is bounded (at most 10 minutes
// ahead of the server's clock, not before a day ahead of the device's
// enrollment), refused and never clamped; it must name a published patch
// and one of its targets, or a patch and target the device reported on
// before the patch was yanked; and its message is stored scrubbed.
func TestReportTimeAndPatch(t *testing.T) {
	now := time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC)
	enrolled := now.Add(-10 * 24 * time.Hour)
	src := &fakeTargets{version: 1, targets: []manifests.TargetInfo{
		target(t, "px7/update.zip", manifests.TargetCustom{PatchID: "CM-2026-001"}),
		target(t, "px8/update.zip", manifests.TargetCustom{PatchID: "CM-2026-001"}),
		target(t, "other/update.zip", manifests.TargetCustom{PatchID: "CM-2026-002"}),
	}}
	yanked := server.Report{ID: "y-1", DeviceID: "dev_1", PatchID: "CM-2025-009", Target: "old/update.zip",
		State: server.StateDownloading, At: now.Add(-time.Hour)}
	tests := []struct {
		name      string
		noCatalog bool
		edit      func(*server.Report)
		field     string // "" for accepted
	}{
		{"now", false, func(r *server.Report) { r.At = now }, ""},
		{"9 minutes ahead", false, func(r *server.Report) { r.At = now.Add(9 * time.Minute) }, ""},
		{"11 minutes ahead", false, func(r *server.Report) { r.At = now.Add(11 * time.Minute) }, "at"},
		{"23 hours ahead", false, func(r *server.Report) { r.At = now.Add(23 * time.Hour) }, "at"},
		{"year 0001", false, func(r *server.Report) { r.At = time.Date(1, 1, 1, 0, 0, 1, 0, time.UTC) }, "at"},
		{"a day and an hour before enrollment", false, func(r *server.Report) { r.At = enrolled.Add(-25 * time.Hour) }, "at"},
		{"23 hours before enrollment", false, func(r *server.Report) { r.At = enrolled.Add(-23 * time.Hour) }, ""},
		{"the patch's other target", false, func(r *server.Report) { r.Target = "px8/update.zip" }, ""},
		{"no target", false, func(r *server.Report) { r.Target = "" }, ""},
		{"unknown patch", false, func(r *server.Report) { r.PatchID = "CM-2026-999" }, "patch_id"},
		{"another patch's target", false, func(r *server.Report) { r.Target = "other/update.zip" }, "target"},
		{"unpublished target", false, func(r *server.Report) { r.Target = "imei/867530012345670.zip" }, "target"},
		{"yanked patch the device reported on", false, func(r *server.Report) {
			r.PatchID, r.Target, r.State = yanked.PatchID, yanked.Target, server.StateInstalled
		}, ""},
		{"yanked patch, another target", false, func(r *server.Report) {
			r.PatchID, r.Target = yanked.PatchID, "new/update.zip"
		}, "patch_id"},
		{"no catalog", true, func(*server.Report) {}, "patch_id"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			store := &reportStore{device: server.Device{ID: "dev_1", EnrolledAt: enrolled},
				reports: []server.Report{yanked}}
			f := &server.Fleet{Store: store, Catalog: &server.PublishedPatches{Source: src}, Now: func() time.Time { return now }}
			if tc.noCatalog {
				f.Catalog = nil
			}
			_, err := f.Report(context.Background(), "otadev_x", *report(tc.edit))
			stored := len(store.reports) - 1
			if tc.field == "" {
				if err != nil || stored != 1 {
					t.Fatalf("got %v with %d stored, want it stored", err, stored)
				}
				return
			}
			fe := new(server.FieldError)
			if !errors.As(err, &fe) || fe.Field != tc.field {
				t.Fatalf("got %v, want a field error naming %s", err, tc.field)
			}
			if stored != 0 {
				t.Fatalf("a refused report was stored")
			}
		})
	}
	t.Run("message scrubbed", func(t *testing.T) {
		store := &reportStore{device: server.Device{ID: "dev_1", EnrolledAt: enrolled}}
		f := &server.Fleet{Store: store, Catalog: &server.PublishedPatches{Source: src}, Now: func() time.Time { return now }}
		msg := "modem IMEI 867530012345670 SIM +8613812345678 ip 203.0.113.77"
		if _, err := f.Report(context.Background(), "otadev_x", *report(func(r *server.Report) { r.Message = msg })); err != nil {
			t.Fatal(err)
		}
		if got, want := store.reports[0].Message, server.Scrub(msg); got != want || got == msg {
			t.Fatalf("stored message %q, want %q", got, want)
		}
	})
}
