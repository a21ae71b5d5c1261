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
	"github.com/patchfleet/ota/server/errs"
	"github.com/patchfleet/ota/server/handsets"
	"github.com/patchfleet/ota/server/textrule"
)

// TestTightFields: every handset field but a report's message either
// matches a pattern that cannot hold an IMEI, IMSI, phone number, email
// or IP address, or is refused with a message naming the field and not
// repeating the value. The versions, ids and codes real handsets send
// pass.
func TestTightFields(t *testing.T) {
	now := time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC)
	fields := map[string]func(v string) error{
		"model":   func(v string) error { return handsets.ValidateDeviceInfo(v, "7.2.0", "stable", "") },
		"build":   func(v string) error { return handsets.ValidateDeviceInfo("PX-7", v, "stable", "") },
		"channel": func(v string) error { return handsets.ValidateDeviceInfo("PX-7", "7.2.0", v, "") },
		"region":  func(v string) error { return handsets.ValidateDeviceInfo("PX-7", "7.2.0", "stable", v) },
		"installed_patches[0]": func(v string) error {
			ci := handsets.CheckIn{Model: "PX-7", Build: "7.2.0", Channel: "stable", InstalledPatches: []string{v},
				CloudMessaging: handsets.MessagingOptedOut}
			return ci.Validate()
		},
		"report_id": func(v string) error { return report(func(r *handsets.Report) { r.ID = v }).Validate(now) },
		"patch_id":  func(v string) error { return report(func(r *handsets.Report) { r.PatchID = v }).Validate(now) },
		"error_code": func(v string) error {
			return report(func(r *handsets.Report) { r.State, r.ErrorCode = handsets.StateFailed, v }).Validate(now)
		},
	}
	accepted := map[string][]string{
		"model": {"PX-7", "pixel-9a", "SM-G998B", "iPhone15.2", "SM-A546B", "XT2343-2", "CPH2581"},
		"build": {"7.2.0", "14.0.0.201", "V14.0.6.0.TNRMIXM", "TQ3A.230805.001", "7.4.10-rc1", "7.0.0+build5", "2026.11.01", "UP1A.231005.007",
			"AP2A.240805.005.F1", "V12.5.12.0.RKHMIXM", "11.0.0.168", "S3RQS32.20-42-10-6", "61.2.A.0.472", "5.15.0-1045-raspi",
			"G998BXXU5CVDD",
			// Four dotted numbers with small middle ones and at most 7
			// digits are an OEM build's shape; an address of that shape
			// passes (the README says so).
			"10.0.0.1"},
		"channel":              {"stable", "beta-2"},
		"region":               {"", "DE"},
		"installed_patches[0]": {"CM-2026-001", "SEC-0", "SEC-2026.03", "CM-2026-0001"},
		"report_id": {"a-1", "r1-2-3", "kfjdbcnapmlkoeihgfedcbaponmlkjih", "r24-3-123", "rep-1234",
			"12345678-1234-4123-8123-123456789012", "f47ac10b-58cc-4372-a567-0e02b2c3d479"},
		"patch_id":   {"CM-2026-001", "CM-1"},
		"error_code": {"E_DISK_FULL", "E_TUF_VERIFY", "E_X", "DISK2_FULL", "E_HTTP_503"},
	}
	// Identifiers, each in a form a field's pattern alone would let in.
	planted := []string{"867530012345670", "262011234567890", "8613812345678", "x8675300", "PX-8675309",
		"867-530-012-345-670", "138.1234.5678", "86_138_1234_5678", "7.0.0+8613812345678",
		"203.0.113.77", "10.0.0.1", "build-203.0.113.77", "v7.203.0.113.77"}
	// The same, disguised (issue 13): split by letters or by runs of
	// separators, an IPv4 address joined by other separators or in hex,
	// a MAC address.
	disguised := []string{"IMEI867530x012345x670", "867530__012345__670", "867530-x-012345", "8675x3001x2345x670",
		"10-0-0-1", "10_0_0_1", "203x0x113x77", "0x7f000001", "0XCB007147", "x-0x7f-0x0-0x0-0x1",
		"0a-1b-2c-3d-4e-5f", "0a1b.2c3d.4e5f"}
	// A build may hold four dotted numbers of an OEM build's shape
	// (14.0.0.201), and digits split by two letters or more.
	plantedInBuild := slices.DeleteFunc(slices.Clone(planted), func(v string) bool { return v == "10.0.0.1" })
	refused := map[string][]string{
		"model": append(append(planted, disguised...), "", "PX 7", "+8613812345678", "a.b@example.com", "2001:db8::1", strings.Repeat("m", 65), "a1b2c3d4e5f6g7"),
		"build": append(plantedInBuild, "", "+86 138-1234-5678", strings.Repeat("7", 65), "203.0.113.77", "192.168.1.10", "100.64.10.200", "v7.203.0.113.77", "31.13.64.35",
			"IMEI867530x012345x670", "867530__012345__670", "415x555x0100", "86x138x1234x5678", "0x7f000001", "R-0x7f.0.0.1", "0a-1b-2c-3d-4e-5f", "a1b2c3d4e5f6g7h8i9j0k1l2m3"),
		"channel":              {"8675300123", "Stable", "a867530012345670", "a.b", "x867530-012345-670", "a10-0-0-1", "a-0x7f000001"},
		"region":               {"Germany", "de", "49"},
		"installed_patches[0]": append(append(planted, disguised...), "CM 1", "../x", "CM-867530-0123"),
		"report_id":            append(append(planted, disguised...), "", "12345678-1234-4123-8123-1234567890123", "867530012345670-1234-4123-8123-123456789012"),
		"patch_id":             append(append(planted, disguised...), "", "a.b@example.com", "CM-10.0.0.1"),
		"error_code": append(planted, "", "E_IMEI_867530012345670", "e_disk_full", "E__X", "E_DISK_", "E-DISK", strings.Repeat("E", 49),
			"E_867530X012345X670", "E_867530_012345_670", "E_10_0_0_1", "E_0X7F000001", "E_0A_1B_2C_3D_4E_5F"),
	}
	for field, check := range fields {
		for _, v := range accepted[field] {
			if err := check(v); err != nil {
				t.Errorf("%s %q refused: %v", field, v, err)
			}
		}
		for _, v := range refused[field] {
			err := check(v)
			fe := new(errs.FieldError)
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

func report(edit func(*handsets.Report)) *handsets.Report {
	r := &handsets.Report{ID: "a-1", PatchID: "CM-2026-001", Target: "px7/update.zip", State: handsets.StateInstalled,
		At: time.Date(2026, 12, 1, 11, 0, 0, 0, time.UTC)}
	edit(r)
	return r
}

// reportStore is a handsets.DeviceStore fake for Fleet.Report: one device,
// reports kept in memory. The methods Report does not call are the nil
// embedded interface's and panic.
type reportStore struct {
	handsets.DeviceStore
	device  handsets.Device
	reports []handsets.Report
}

func (s *reportStore) DeviceByToken(context.Context, string) (*handsets.Device, error) {
	d := s.device
	return &d, nil
}

func (s *reportStore) AddReport(_ context.Context, r handsets.Report) (handsets.ReportOutcome, error) {
	s.reports = append(s.reports, r)
	return handsets.ReportOutcome{}, nil
}

func (s *reportStore) Reports(context.Context, string) ([]handsets.Report, error) {
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
	yanked := handsets.Report{ID: "y-1", DeviceID: "dev_1", PatchID: "CM-2025-009", Target: "old/update.zip",
		State: handsets.StateDownloading, At: now.Add(-time.Hour)}
	tests := []struct {
		name      string
		noCatalog bool
		edit      func(*handsets.Report)
		field     string // "" for accepted
	}{
		{"now", false, func(r *handsets.Report) { r.At = now }, ""},
		{"9 minutes ahead", false, func(r *handsets.Report) { r.At = now.Add(9 * time.Minute) }, ""},
		{"11 minutes ahead", false, func(r *handsets.Report) { r.At = now.Add(11 * time.Minute) }, "at"},
		{"23 hours ahead", false, func(r *handsets.Report) { r.At = now.Add(23 * time.Hour) }, "at"},
		{"year 0001", false, func(r *handsets.Report) { r.At = time.Date(1, 1, 1, 0, 0, 1, 0, time.UTC) }, "at"},
		{"a day and an hour before enrollment", false, func(r *handsets.Report) { r.At = enrolled.Add(-25 * time.Hour) }, "at"},
		{"23 hours before enrollment", false, func(r *handsets.Report) { r.At = enrolled.Add(-23 * time.Hour) }, ""},
		{"the patch's other target", false, func(r *handsets.Report) { r.Target = "px8/update.zip" }, ""},
		{"no target", false, func(r *handsets.Report) { r.Target = "" }, ""},
		{"unknown patch", false, func(r *handsets.Report) { r.PatchID = "CM-2026-999" }, "patch_id"},
		{"another patch's target", false, func(r *handsets.Report) { r.Target = "other/update.zip" }, "target"},
		{"unpublished target", false, func(r *handsets.Report) { r.Target = "imei/867530012345670.zip" }, "target"},
		{"yanked patch the device reported on", false, func(r *handsets.Report) {
			r.PatchID, r.Target, r.State = yanked.PatchID, yanked.Target, handsets.StateInstalled
		}, ""},
		{"yanked patch, another target", false, func(r *handsets.Report) {
			r.PatchID, r.Target = yanked.PatchID, "new/update.zip"
		}, "patch_id"},
		{"no catalog", true, func(*handsets.Report) {}, "patch_id"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			store := &reportStore{device: handsets.Device{ID: "dev_1", EnrolledAt: enrolled},
				reports: []handsets.Report{yanked}}
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
			fe := new(errs.FieldError)
			if !errors.As(err, &fe) || fe.Field != tc.field {
				t.Fatalf("got %v, want a field error naming %s", err, tc.field)
			}
			if stored != 0 {
				t.Fatalf("a refused report was stored")
			}
		})
	}
	t.Run("message scrubbed", func(t *testing.T) {
		store := &reportStore{device: handsets.Device{ID: "dev_1", EnrolledAt: enrolled}}
		f := &server.Fleet{Store: store, Catalog: &server.PublishedPatches{Source: src}, Now: func() time.Time { return now }}
		msg := "modem IMEI 867530012345670 SIM +8613812345678 ip 203.0.113.77"
		if _, err := f.Report(context.Background(), "otadev_x", *report(func(r *handsets.Report) { r.Message = msg })); err != nil {
			t.Fatal(err)
		}
		if got, want := store.reports[0].Message, textrule.Scrub(msg); got != want || got == msg {
			t.Fatalf("stored message %q, want %q", got, want)
		}
	})
}
