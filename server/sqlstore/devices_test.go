package sqlstore

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/patchfleet/ota/server"
	"github.com/patchfleet/ota/server/errs"
	"github.com/patchfleet/ota/server/handsets"
	"github.com/patchfleet/ota/server/identity"
)

// TestDeviceStore runs the device store suite against SQLite and, when
// OTA_TEST_POSTGRES_DSN is set, PostgreSQL, each test on a fresh,
// migrated database.
func TestDeviceStore(t *testing.T) {
	runStoreSuite(t, []storeCase{
		{"EnrollCheckIn", testEnrollCheckIn},
		{"UnknownToken", testUnknownToken},
		{"ReEnrollSameKey", testReEnrollSameKey},
		{"ReEnrollConcurrent", testReEnrollConcurrent},
		{"EnrollReplay", testEnrollReplay},
		{"EnrollReplayConcurrent", testEnrollReplayConcurrent},
		{"EnrollConflict", testEnrollConflict},
		{"DuplicateReport", testDuplicateReport},
		{"DuplicateReportConcurrent", testDuplicateReportConcurrent},
		{"ReportsOutOfOrder", testReportsOutOfOrder},
		{"ReportsSameInstant", testReportsSameInstant},
		{"FailedThenInstalled", testFailedThenInstalled},
		{"ReportUnknownDevice", testReportUnknownDevice},
		{"DeleteDevice", testDeleteDevice},
		{"EraseLeavesNoBytes", testEraseLeavesNoBytes},
		{"DeleteReportsBefore", testDeleteReportsBefore},
		{"FleetSummary", testFleetSummary},
		{"FleetSummaryEmpty", testFleetSummaryEmpty},
		{"FleetSummaryModelCap", testFleetSummaryModelCap},
		{"FleetSummaryPatchIDIsNotAPattern", testFleetSummaryPatchIDIsNotAPattern},
		{"CheckInOneRoundTrip", testCheckInOneRoundTrip},
	})

}

// t0 is the suite's "now"; its nanoseconds check that timestamps are
// kept to the microsecond on both dialects.
var t0 = time.Date(2026, 3, 1, 12, 0, 0, 123456789, time.UTC)

// mustDevices opens a fresh, migrated database and returns it with its
// device store.
func mustDevices(t testing.TB, b backend) (*DB, *DeviceStore) {
	t.Helper()
	db := mustOpen(t, b.newDSN(t))
	if _, err := db.Migrate(t.Context()); err != nil {
		t.Fatalf("migrate: %v", err)
	}
	return db, db.Devices()
}

func newDevice(id, model string) *handsets.Device {
	return &handsets.Device{ID: id, Model: model, Build: "7.1.0", Channel: "stable", Region: "DE",
		InstalledPatches: []string{}, CloudMessaging: handsets.MessagingAutoEnabled,
		EnrolledAt: t0, LastSeen: t0}
}

func mustEnroll(t testing.TB, s *DeviceStore, d *handsets.Device, tokenHash string) (string, bool) {
	t.Helper()
	id, created, err := s.Enroll(t.Context(), d, tokenHash)
	if err != nil {
		t.Fatalf("enroll %s: %v", d.ID, err)
	}
	return id, created
}

func mustAddReport(t testing.TB, s *DeviceStore, r handsets.Report) bool {
	t.Helper()
	if r.ReceivedAt.IsZero() {
		r.ReceivedAt = t0
	}
	out, err := s.AddReport(t.Context(), r)
	if err != nil {
		t.Fatalf("add report %s: %v", r.ID, err)
	}
	return out.Duplicate
}

// checkIn is a handset's check-in as server.Fleet makes it, but always
// written: the device's state read, changed by ci at now, and saved over
// the revision read.
func checkIn(ctx context.Context, s *DeviceStore, tokenHash string, ci handsets.CheckIn, now time.Time) (*handsets.Device, error) {
	for {
		d, _, err := s.CheckInState(ctx, tokenHash)
		if err != nil {
			return nil, err
		}
		next := d.AfterCheckIn(ci, now)
		err = s.SaveCheckIn(ctx, d, next, nil)
		if errors.Is(err, errs.ErrConflict) {
			continue
		}
		if err != nil {
			return nil, err
		}
		return next, nil
	}
}

func mustPatchStates(t testing.TB, s *DeviceStore, deviceID string) []handsets.PatchState {
	t.Helper()
	states, err := s.PatchStates(t.Context(), deviceID)
	if err != nil {
		t.Fatalf("patch states: %v", err)
	}
	return states
}

func mustReports(t testing.TB, s *DeviceStore, deviceID string) []handsets.Report {
	t.Helper()
	rs, err := s.Reports(t.Context(), deviceID)
	if err != nil {
		t.Fatalf("reports: %v", err)
	}
	return rs
}

// countRows counts the rows of table matching where.
func countRows(t testing.TB, db *DB, table, where string, args ...any) int64 {
	t.Helper()
	var n int64
	if err := db.gorm.WithContext(t.Context()).Table(table).Where(where, args...).Count(&n).Error; err != nil {
		t.Fatalf("count %s: %v", table, err)
	}
	return n
}

// checkDevice compares devices but for Rev, the store's business.
func checkDevice(t testing.TB, what string, got, want *handsets.Device) {
	t.Helper()
	if got != nil && want != nil {
		g, w := *got, *want
		g.Rev, w.Rev = 0, 0
		got, want = &g, &w
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("%s:\n got %+v\nwant %+v", what, got, want)
	}
}

func checkStates(t testing.TB, got, want []handsets.PatchState) {
	t.Helper()
	if !slices.EqualFunc(got, want, func(a, b handsets.PatchState) bool {
		return a.PatchID == b.PatchID && a.State == b.State && a.ErrorCode == b.ErrorCode && a.At.Equal(b.At)
	}) {
		t.Errorf("patch states:\n got %+v\nwant %+v", got, want)
	}
}

func testEnrollCheckIn(t *testing.T, b backend) {
	_, s := mustDevices(t, b)
	ctx := t.Context()
	d := newDevice("dev_a", "pixel-9")
	id, created := mustEnroll(t, s, d, "hash-a")
	if id != "dev_a" || !created {
		t.Fatalf("enroll: got %q, %v, want dev_a, true", id, created)
	}
	enrolled := t0.Truncate(time.Microsecond)
	want := &handsets.Device{ID: "dev_a", Model: "pixel-9", Build: "7.1.0", Channel: "stable", Region: "DE",
		InstalledPatches: []string{}, CloudMessaging: handsets.MessagingAutoEnabled, EnrolledAt: enrolled, LastSeen: enrolled}
	got, err := s.DeviceByToken(ctx, "hash-a")
	if err != nil {
		t.Fatalf("device by token: %v", err)
	}
	checkDevice(t, "after enroll", got, want)

	now := t0.Add(time.Hour)
	ci := handsets.CheckIn{Build: "7.2.0", Model: "pixel-9a", Channel: "beta",
		InstalledPatches: []string{"SEC-2", "SEC-1"}, CloudMessaging: handsets.MessagingOptedOut, NumberEncryption: true}
	got, err = checkIn(ctx, s, "hash-a", ci, now)
	if err != nil {
		t.Fatalf("check in: %v", err)
	}
	want.Build, want.Model, want.Channel = "7.2.0", "pixel-9a", "beta"
	want.InstalledPatches = []string{"SEC-1", "SEC-2"}
	want.CloudMessaging, want.NumberEncryption = handsets.MessagingOptedOut, true
	want.LastSeen = now.Truncate(time.Microsecond)
	checkDevice(t, "check-in answer", got, want)
	got, err = s.DeviceByToken(ctx, "hash-a")
	if err != nil {
		t.Fatalf("device by token: %v", err)
	}
	checkDevice(t, "after check-in", got, want)

	// Patches removed again (an uninstall) store as none.
	ci.InstalledPatches = nil
	got, err = checkIn(ctx, s, "hash-a", ci, now)
	if err != nil {
		t.Fatalf("check in: %v", err)
	}
	if got.InstalledPatches == nil || len(got.InstalledPatches) != 0 {
		t.Errorf("installed patches: got %#v, want an empty slice", got.InstalledPatches)
	}

	// A patch id that would break the encoding is refused.
	ci.InstalledPatches = []string{"A,B"}
	if _, err := checkIn(ctx, s, "hash-a", ci, now); !errors.Is(err, errs.ErrInvalid) {
		t.Errorf("check in with patch \"A,B\": got %v, want ErrInvalid", err)
	}
}

func testUnknownToken(t *testing.T, b backend) {
	_, s := mustDevices(t, b)
	ctx := t.Context()
	mustEnroll(t, s, newDevice("dev_a", "m"), "hash-a")
	ci := handsets.CheckIn{Build: "1", Model: "m", Channel: "stable", CloudMessaging: handsets.MessagingOptedOut}
	// The very error the handler's format check gives: clients cannot
	// tell a malformed token from an unknown one.
	want := errs.ErrDeviceToken.Error()
	if _, err := checkIn(ctx, s, "hash-unknown", ci, t0); !errors.Is(err, errs.ErrUnauthorized) || err.Error() != want {
		t.Errorf("check in: got %v, want ErrUnauthorized %q", err, want)
	}
	if _, err := s.DeviceByToken(ctx, "hash-unknown"); !errors.Is(err, errs.ErrUnauthorized) || err.Error() != want {
		t.Errorf("device by token: got %v, want ErrUnauthorized %q", err, want)
	}
}

func testReEnrollSameKey(t *testing.T, b backend) {
	db, s := mustDevices(t, b)
	ctx := t.Context()
	d := newDevice("dev_k", "pixel-9")
	d.KeyFingerprint, d.KeySignedAt = "fp-1", t0
	if id, created := mustEnroll(t, s, d, "hash-1"); id != "dev_k" || !created {
		t.Fatalf("first enroll: got %q, %v, want dev_k, true", id, created)
	}
	ci := handsets.CheckIn{Build: "7.2.0", Model: "pixel-9", Channel: "stable",
		InstalledPatches: []string{"SEC-1"}, CloudMessaging: handsets.MessagingOptedOut, NumberEncryption: true}
	if _, err := checkIn(ctx, s, "hash-1", ci, t0.Add(time.Hour)); err != nil {
		t.Fatalf("check in: %v", err)
	}

	// A factory reset: same key, new token and build, later. The id the
	// handset asks for does not matter; the key finds the device.
	again := newDevice("dev_other", "pixel-9")
	again.KeyFingerprint, again.KeySignedAt = "fp-1", t0.Add(2*time.Hour)
	again.Build, again.Region = "7.0.0", "FR"
	again.EnrolledAt, again.LastSeen = t0.Add(2*time.Hour), t0.Add(2*time.Hour)
	if id, created := mustEnroll(t, s, again, "hash-2"); id != "dev_k" || created {
		t.Fatalf("re-enroll: got %q, %v, want dev_k, false", id, created)
	}
	if _, err := s.DeviceByToken(ctx, "hash-1"); !errors.Is(err, errs.ErrUnauthorized) {
		t.Errorf("old token: got %v, want ErrUnauthorized", err)
	}
	got, err := s.DeviceByToken(ctx, "hash-2")
	if err != nil {
		t.Fatalf("new token: %v", err)
	}
	want := &handsets.Device{ID: "dev_k", KeyFingerprint: "fp-1", KeySignedAt: t0.Add(2 * time.Hour).Truncate(time.Microsecond),
		Model: "pixel-9", Build: "7.0.0", Channel: "stable",
		Region: "FR", InstalledPatches: []string{"SEC-1"}, CloudMessaging: handsets.MessagingOptedOut, NumberEncryption: true,
		EnrolledAt: t0.Truncate(time.Microsecond), LastSeen: t0.Add(2 * time.Hour).Truncate(time.Microsecond)}
	checkDevice(t, "after re-enroll", got, want)
	if n := countRows(t, db, "devices", "1 = 1"); n != 1 {
		t.Errorf("devices: got %d, want 1", n)
	}
}

// replayRefused reports whether err is the store's refusal of an
// enrollment whose signed timestamp is not newer than the stored one.
func replayRefused(err error) bool {
	return errors.Is(err, errs.ErrConflict) && strings.Contains(err.Error(), "not newer than the last accepted")
}

// testReEnrollConcurrent enrolls one key 8 times at once, each with its
// own signed timestamp: one creates the device, the newest always wins,
// and the others either update it first or are refused as older.
func testReEnrollConcurrent(t *testing.T, b backend) {
	const n = 8
	db, s := mustDevices(t, b)
	var (
		wg      sync.WaitGroup
		start   = make(chan struct{})
		ids     = make([]string, n)
		created = make([]bool, n)
		errs    = make([]error, n)
	)
	for i := range n {
		wg.Go(func() {
			d := newDevice("dev_race", "m")
			d.KeyFingerprint, d.KeySignedAt = "fp-race", t0.Add(time.Duration(i)*time.Millisecond)
			<-start
			ids[i], created[i], errs[i] = s.Enroll(t.Context(), d, fmt.Sprintf("hash-%d", i))
		})
	}
	close(start)
	wg.Wait()
	creations := 0
	for i := range n {
		if errs[i] != nil {
			if !replayRefused(errs[i]) {
				t.Errorf("enrollment %d: got error %v, want nil or the refusal of an older timestamp", i, errs[i])
			}
			continue
		}
		if ids[i] != "dev_race" {
			t.Errorf("enrollment %d: got id %q, want dev_race", i, ids[i])
		}
		if created[i] {
			creations++
		}
	}
	if creations != 1 {
		t.Errorf("enrollments that created the device: got %d, want 1", creations)
	}
	if errs[n-1] != nil {
		t.Errorf("the newest enrollment: got %v, want nil", errs[n-1])
	}
	for i := range n {
		_, err := s.DeviceByToken(t.Context(), fmt.Sprintf("hash-%d", i))
		if valid := err == nil; valid != (i == n-1) {
			t.Errorf("token of enrollment %d: valid %v, want %v (only the newest enrollment's)", i, valid, i == n-1)
		}
	}
	if got := countRows(t, db, "devices", "1 = 1"); got != 1 {
		t.Errorf("devices: got %d, want 1", got)
	}
}

// testEnrollReplay replays a key enrollment (same signed timestamp) and
// an older one: both are refused and change nothing; a newer one passes.
func testEnrollReplay(t *testing.T, b backend) {
	db, s := mustDevices(t, b)
	ctx := t.Context()
	d := newDevice("dev_k", "pixel-9")
	d.KeyFingerprint, d.KeySignedAt = "fp-k", t0
	mustEnroll(t, s, d, "hash-1")
	before, err := s.DeviceByToken(ctx, "hash-1")
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name   string
		signed time.Time
	}{
		{"same timestamp", t0},
		// Nanoseconds are kept to the microsecond: still the same one.
		{"same microsecond", t0.Add(time.Nanosecond)},
		{"older", t0.Add(-time.Minute)},
	}
	for i, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			replay := newDevice("dev_k", "attacker-model")
			replay.KeyFingerprint, replay.KeySignedAt = "fp-k", tc.signed
			_, _, err := s.Enroll(ctx, replay, fmt.Sprintf("hash-replay-%d", i))
			if !replayRefused(err) {
				t.Fatalf("enroll: got %v, want the refusal of a timestamp not newer", err)
			}
			if _, err := s.DeviceByToken(ctx, fmt.Sprintf("hash-replay-%d", i)); !errors.Is(err, errs.ErrUnauthorized) {
				t.Errorf("replay's token: got %v, want ErrUnauthorized", err)
			}
			got, err := s.DeviceByToken(ctx, "hash-1")
			if err != nil {
				t.Fatalf("genuine token after the replay: %v", err)
			}
			checkDevice(t, "after the replay", got, before)
		})
	}

	// A genuine re-enrollment, later: new token, new signed timestamp.
	later := newDevice("dev_k", "pixel-9")
	later.KeyFingerprint, later.KeySignedAt = "fp-k", t0.Add(time.Microsecond)
	if id, created := mustEnroll(t, s, later, "hash-2"); id != "dev_k" || created {
		t.Fatalf("re-enroll: got %q, %v, want dev_k, false", id, created)
	}
	got, err := s.DeviceByToken(ctx, "hash-2")
	if err != nil {
		t.Fatalf("new token: %v", err)
	}
	if want := later.KeySignedAt.Truncate(time.Microsecond); !got.KeySignedAt.Equal(want) {
		t.Errorf("signed timestamp: got %v, want %v", got.KeySignedAt, want)
	}

	// Devices enrolled before the column existed have none: any
	// timestamp is newer.
	if err := db.gorm.WithContext(ctx).Exec("UPDATE devices SET key_signed_at = NULL").Error; err != nil {
		t.Fatal(err)
	}
	old := newDevice("dev_k", "pixel-9")
	old.KeyFingerprint, old.KeySignedAt = "fp-k", t0.Add(-time.Hour)
	if id, created := mustEnroll(t, s, old, "hash-3"); id != "dev_k" || created {
		t.Fatalf("re-enroll a device without a signed timestamp: got %q, %v, want dev_k, false", id, created)
	}

	// A key enrollment without a signed timestamp cannot be stored.
	unsigned := newDevice("dev_u", "m")
	unsigned.KeyFingerprint = "fp-u"
	if _, _, err := s.Enroll(ctx, unsigned, "hash-u"); !errors.Is(err, errs.ErrInvalid) {
		t.Errorf("key enrollment without a timestamp: got %v, want ErrInvalid", err)
	}
}

// testEnrollReplayConcurrent sends 8 copies of one key enrollment at
// once: of a captured enrollment and its replays, one passes.
func testEnrollReplayConcurrent(t *testing.T, b backend) {
	const n = 8
	db, s := mustDevices(t, b)
	race := func(what string, signed time.Time, wantPassed int) {
		t.Helper()
		var (
			wg    sync.WaitGroup
			start = make(chan struct{})
			errs  = make([]error, n)
		)
		for i := range n {
			wg.Go(func() {
				d := newDevice("dev_r", "m")
				d.KeyFingerprint, d.KeySignedAt = "fp-r", signed
				<-start
				_, _, errs[i] = s.Enroll(t.Context(), d, fmt.Sprintf("hash-%s-%d", what, i))
			})
		}
		close(start)
		wg.Wait()
		passed := 0
		for i, err := range errs {
			switch {
			case err == nil:
				passed++
			case !replayRefused(err):
				t.Errorf("%s: enrollment %d: got %v, want nil or the refusal of a replay", what, i, err)
			}
		}
		if passed != wantPassed {
			t.Errorf("%s: enrollments that passed: got %d, want %d", what, passed, wantPassed)
		}
	}
	race("new key", t0, 1)
	race("existing key", t0.Add(time.Second), 1)
	race("replayed again", t0.Add(time.Second), 0)
	if got := countRows(t, db, "devices", "1 = 1"); got != 1 {
		t.Errorf("devices: got %d, want 1", got)
	}
}

func testEnrollConflict(t *testing.T, b backend) {
	_, s := mustDevices(t, b)
	ctx := t.Context()
	mustEnroll(t, s, newDevice("dev_a", "m"), "hash-a")
	tests := []struct {
		name string
		fp   string
		id   string
		hash string
	}{
		{name: "random id taken", id: "dev_a", hash: "hash-b"},
		{name: "token taken", id: "dev_b", hash: "hash-a"},
		{name: "keyed id taken by a device without key", fp: "fp-x", id: "dev_a", hash: "hash-c"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			d := newDevice(tc.id, "m")
			d.KeyFingerprint = tc.fp
			if tc.fp != "" {
				d.KeySignedAt = t0
			}
			if _, _, err := s.Enroll(ctx, d, tc.hash); !errors.Is(err, errs.ErrConflict) {
				t.Errorf("enroll: got %v, want ErrConflict", err)
			}
		})
	}
	// Re-enrolling a keyed device with a token that another device holds.
	keyed := newDevice("dev_k", "m")
	keyed.KeyFingerprint, keyed.KeySignedAt = "fp-k", t0
	mustEnroll(t, s, keyed, "hash-k")
	keyed.KeySignedAt = t0.Add(time.Second)
	if _, _, err := s.Enroll(ctx, keyed, "hash-a"); !errors.Is(err, errs.ErrConflict) {
		t.Errorf("re-enroll with a taken token: got %v, want ErrConflict", err)
	}
	if got, err := s.DeviceByToken(ctx, "hash-a"); err != nil || got.ID != "dev_a" {
		t.Errorf("first device after conflicts: got %+v, %v, want dev_a", got, err)
	}
}

func report(id, patch, state, code string, at time.Time) handsets.Report {
	return handsets.Report{ID: id, DeviceID: "dev_a", PatchID: patch, Target: "patches/" + patch + ".zip",
		State: state, ErrorCode: code, At: at}
}

func testDuplicateReport(t *testing.T, b backend) {
	db, s := mustDevices(t, b)
	mustEnroll(t, s, newDevice("dev_a", "m"), "hash-a")
	r := report("r1", "SEC-1", handsets.StateInstalling, "", t0)
	r.Message = "installing 1/2"
	if mustAddReport(t, s, r) {
		t.Error("first report: got duplicate true, want false")
	}
	if !mustAddReport(t, s, r) {
		t.Error("retried report: got duplicate false, want true")
	}
	// A retry arrives later: when it was received does not count, and
	// the time the handset saw is kept to the microsecond.
	retry := r
	retry.ReceivedAt, retry.At = t0.Add(time.Hour), t0.Add(time.Nanosecond)
	if !mustAddReport(t, s, retry) {
		t.Error("retry received later: got duplicate false, want true")
	}
	// A report id reused with other content is refused and changes
	// nothing: not the stored report, not the state.
	for _, tc := range []struct {
		name   string
		change func(*handsets.Report)
	}{
		{"patch", func(r *handsets.Report) { r.PatchID = "SEC-2" }},
		{"target", func(r *handsets.Report) { r.Target = "patches/other.zip" }},
		{"state", func(r *handsets.Report) { r.State = handsets.StateInstalled }},
		{"error code", func(r *handsets.Report) { r.State, r.ErrorCode = handsets.StateFailed, "E_X" }},
		{"message", func(r *handsets.Report) { r.Message = "installing 2/2" }},
		{"at", func(r *handsets.Report) { r.At = r.At.Add(time.Microsecond) }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			other := r
			tc.change(&other)
			dup, err := s.AddReport(t.Context(), other)
			if !errors.Is(err, errs.ErrConflict) || !strings.Contains(err.Error(), "report_id r1 already used for a different report") {
				t.Errorf("reused report id: got %v, %v, want ErrConflict naming the report id", dup, err)
			}
		})
	}
	if n := countRows(t, db, "device_reports", "device_id = ?", "dev_a"); n != 1 {
		t.Errorf("stored reports: got %d, want 1", n)
	}
	rs := mustReports(t, s, "dev_a")
	if len(rs) != 1 || rs[0].ID != "r1" || rs[0].State != handsets.StateInstalling || rs[0].Message != "installing 1/2" ||
		rs[0].Target != "patches/SEC-1.zip" || !rs[0].ReceivedAt.Equal(t0.Truncate(time.Microsecond)) {
		t.Errorf("reports: got %+v, want the first report only", rs)
	}
	checkStates(t, mustPatchStates(t, s, "dev_a"), []handsets.PatchState{{PatchID: "SEC-1", State: handsets.StateInstalling, At: t0.Truncate(time.Microsecond)}})
}

// testDuplicateReportConcurrent sends one report id 8 times at once,
// first with the same content (one stored, the rest duplicates), then
// with 8 different contents (one stored, the rest refused).
func testDuplicateReportConcurrent(t *testing.T, b backend) {
	const n = 8
	db, s := mustDevices(t, b)
	mustEnroll(t, s, newDevice("dev_a", "m"), "hash-a")
	race := func(id string, same bool) (stored, dups, conflicts int) {
		t.Helper()
		var (
			wg     sync.WaitGroup
			start  = make(chan struct{})
			dup    = make([]bool, n)
			failed = make([]error, n)
		)
		for i := range n {
			wg.Go(func() {
				r := report(id, "SEC-1", handsets.StateDownloading, "", t0)
				r.ReceivedAt = t0
				if !same {
					r.Message = fmt.Sprintf("attempt %d", i)
				}
				<-start
				var out handsets.ReportOutcome
				out, failed[i] = s.AddReport(t.Context(), r)
				dup[i] = out.Duplicate
			})
		}
		close(start)
		wg.Wait()
		for i := range n {
			switch {
			case failed[i] == nil && dup[i]:
				dups++
			case failed[i] == nil:
				stored++
			case errors.Is(failed[i], errs.ErrConflict):
				conflicts++
			default:
				t.Errorf("report %s, attempt %d: got %v, want nil or ErrConflict", id, i, failed[i])
			}
		}
		return stored, dups, conflicts
	}
	if stored, dups, conflicts := race("same", true); stored != 1 || dups != n-1 || conflicts != 0 {
		t.Errorf("same content: got %d stored, %d duplicates, %d conflicts, want 1, %d, 0", stored, dups, conflicts, n-1)
	}
	if stored, dups, conflicts := race("different", false); stored != 1 || dups != 0 || conflicts != n-1 {
		t.Errorf("different content: got %d stored, %d duplicates, %d conflicts, want 1, 0, %d", stored, dups, conflicts, n-1)
	}
	if got := countRows(t, db, "device_reports", "device_id = ?", "dev_a"); got != 2 {
		t.Errorf("stored reports: got %d, want 2", got)
	}
}

func testReportsOutOfOrder(t *testing.T, b backend) {
	_, s := mustDevices(t, b)
	mustEnroll(t, s, newDevice("dev_a", "m"), "hash-a")
	t1, t2, t3 := t0, t0.Add(time.Second), t0.Add(2*time.Second)
	// Arrival order: newest first.
	mustAddReport(t, s, report("r3", "SEC-1", handsets.StateInstalled, "", t3))
	mustAddReport(t, s, report("r2", "SEC-1", handsets.StateInstalling, "", t2))
	mustAddReport(t, s, report("r1", "SEC-1", handsets.StateDownloading, "", t1))
	// Another patch moves on its own.
	mustAddReport(t, s, report("q1", "SEC-0", handsets.StateDownloading, "", t1))
	checkStates(t, mustPatchStates(t, s, "dev_a"), []handsets.PatchState{
		{PatchID: "SEC-0", State: handsets.StateDownloading, At: t1.Truncate(time.Microsecond)},
		{PatchID: "SEC-1", State: handsets.StateInstalled, At: t3.Truncate(time.Microsecond)},
	})
	var got []string
	for _, r := range mustReports(t, s, "dev_a") {
		got = append(got, r.ID)
	}
	// Oldest first by the handset's time; q1 and r1 tie and go by id.
	if want := []string{"q1", "r1", "r2", "r3"}; !slices.Equal(got, want) {
		t.Errorf("reports: got %v, want %v", got, want)
	}
}

func testReportsSameInstant(t *testing.T, b backend) {
	// Nanoseconds apart: the same microsecond, a tie on both dialects.
	at := t0
	tests := []struct {
		name   string
		states []string // in arrival order
		want   string
	}{
		{"installed first", []string{handsets.StateInstalled, handsets.StateInstalling}, handsets.StateInstalled},
		{"installed last", []string{handsets.StateInstalling, handsets.StateInstalled}, handsets.StateInstalled},
		{"failed beats installed", []string{handsets.StateFailed, handsets.StateInstalled}, handsets.StateFailed},
		{"all in reverse", []string{handsets.StateInstalled, handsets.StateInstalling, handsets.StateVerified, handsets.StateDownloaded, handsets.StateDownloading}, handsets.StateInstalled},
	}
	_, s := mustDevices(t, b)
	for i, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			d := newDevice(fmt.Sprintf("dev_%d", i), "m")
			mustEnroll(t, s, d, "hash-"+d.ID)
			for j, st := range tc.states {
				r := report(fmt.Sprintf("r%d", j), "SEC-1", st, "", at.Add(time.Duration(j)))
				r.DeviceID = d.ID
				if st == handsets.StateFailed {
					r.ErrorCode = "E_X"
				}
				mustAddReport(t, s, r)
			}
			states := mustPatchStates(t, s, d.ID)
			if len(states) != 1 || states[0].State != tc.want {
				t.Errorf("states: got %+v, want %s", states, tc.want)
			}
		})
	}
}

func testFailedThenInstalled(t *testing.T, b backend) {
	_, s := mustDevices(t, b)
	mustEnroll(t, s, newDevice("dev_a", "m"), "hash-a")
	mustAddReport(t, s, report("r1", "SEC-1", handsets.StateFailed, "E_SPACE", t0))
	checkStates(t, mustPatchStates(t, s, "dev_a"), []handsets.PatchState{{PatchID: "SEC-1", State: handsets.StateFailed, ErrorCode: "E_SPACE", At: t0.Truncate(time.Microsecond)}})
	// The retry worked; the error code goes with the failure.
	mustAddReport(t, s, report("r2", "SEC-1", handsets.StateInstalled, "", t0.Add(time.Minute)))
	want := []handsets.PatchState{{PatchID: "SEC-1", State: handsets.StateInstalled, At: t0.Add(time.Minute).Truncate(time.Microsecond)}}
	checkStates(t, mustPatchStates(t, s, "dev_a"), want)
	// An older failure arriving late changes nothing.
	mustAddReport(t, s, report("r0", "SEC-1", handsets.StateFailed, "E_NET", t0.Add(-time.Minute)))
	checkStates(t, mustPatchStates(t, s, "dev_a"), want)
}

func testReportUnknownDevice(t *testing.T, b backend) {
	db, s := mustDevices(t, b)
	r := report("r1", "SEC-1", handsets.StateInstalled, "", t0)
	r.DeviceID = "dev_gone"
	if _, err := s.AddReport(t.Context(), r); !errors.Is(err, errs.ErrNotFound) {
		t.Errorf("add report: got %v, want ErrNotFound", err)
	}
	r.DeviceID, r.State = "dev_a", "exploded"
	mustEnroll(t, s, newDevice("dev_a", "m"), "hash-a")
	if _, err := s.AddReport(t.Context(), r); !errors.Is(err, errs.ErrInvalid) {
		t.Errorf("add report with state %q: got %v, want ErrInvalid", r.State, err)
	}
	if n := countRows(t, db, "device_reports", "1 = 1"); n != 0 {
		t.Errorf("stored reports: got %d, want 0", n)
	}
}

func testDeleteDevice(t *testing.T, b backend) {
	db, s := mustDevices(t, b)
	ctx := t.Context()
	for _, id := range []string{"dev_a", "dev_b"} {
		mustEnroll(t, s, newDevice(id, "m"), "hash-"+id)
		for i, patch := range []string{"SEC-1", "SEC-2"} {
			r := report(fmt.Sprintf("r%d", i), patch, handsets.StateInstalled, "", t0)
			r.DeviceID = id
			mustAddReport(t, s, r)
		}
	}
	if err := s.DeleteDevice(ctx, "dev_a"); err != nil {
		t.Fatalf("delete device: %v", err)
	}
	for _, table := range []struct{ name, where string }{
		{"devices", "id = ?"}, {"device_reports", "device_id = ?"}, {"device_patch_states", "device_id = ?"},
	} {
		if n := countRows(t, db, table.name, table.where, "dev_a"); n != 0 {
			t.Errorf("%s of the deleted device: got %d rows, want 0", table.name, n)
		}
		if n := countRows(t, db, table.name, table.where, "dev_b"); n == 0 {
			t.Errorf("%s of the other device: got 0 rows, want them kept", table.name)
		}
	}
	if _, err := s.DeviceByToken(ctx, "hash-dev_a"); !errors.Is(err, errs.ErrUnauthorized) {
		t.Errorf("token of the deleted device: got %v, want ErrUnauthorized", err)
	}
	if err := s.DeleteDevice(ctx, "dev_a"); !errors.Is(err, errs.ErrNotFound) {
		t.Errorf("delete again: got %v, want ErrNotFound", err)
	}
	// The id is free again: a handset that erased itself may enroll anew.
	if _, created := mustEnroll(t, s, newDevice("dev_a", "m"), "hash-new"); !created {
		t.Error("enroll after delete: got created false, want true")
	}
}

// testEraseLeavesNoBytes erases a device through server.Fleet, as
// DELETE /api/v1/devices/self does, and reads the SQLite files: nothing
// of what the device sent may remain, in the database file, the WAL or
// the shared-memory index, while another device's rows stay in the same
// pages.
func testEraseLeavesNoBytes(t *testing.T, b backend) {
	if b.name != "sqlite" {
		t.Skip("PostgreSQL keeps dead tuples until VACUUM; see the README")
	}
	dsn := b.newDSN(t)
	path := strings.TrimPrefix(dsn, "sqlite:")
	db := mustOpen(t, dsn)
	if _, err := db.Migrate(t.Context()); err != nil {
		t.Fatalf("migrate: %v", err)
	}
	s := db.Devices()
	ctx := t.Context()
	// Letters only, so that scrubbing of digits, phone numbers and
	// addresses in free text leaves them as they are.
	markers := []string{"PLANTEDMODELXYZ", "PLANTEDBUILDXYZ", "PLANTEDMARKERXYZ", "PLANTEDTARGETXYZ",
		"PLANTEDCODEXYZ", "PLANTEDREPORTXYZ", "PLANTEDPATCHXYZ"}
	fleet := &server.Fleet{Store: s, Now: func() time.Time { return t0 }}
	enrollment, err := fleet.Enroll(ctx, server.EnrollRequest{Model: "PLANTEDMODELXYZ", Build: "PLANTEDBUILDXYZ", Channel: "stable"})
	if err != nil {
		t.Fatalf("enroll: %v", err)
	}
	mustEnroll(t, s, newDevice("dev_keep", "keep-model"), "hash-keep")
	// Its rollout record keeps its model and build too.
	rollouts := db.Rollouts()
	mustCreateRollout(t, rollouts, "ro_keep")
	for _, d := range []struct{ id, model, build string }{
		{enrollment.DeviceID, "PLANTEDMODELXYZ", "PLANTEDBUILDXYZ"}, {"dev_keep", "keep-model", "7.1.0"},
	} {
		mustPutDeviceRollout(t, rollouts, &handsets.DeviceRollout{RolloutID: "ro_keep", DeviceID: d.id, Model: d.model,
			StartingBuild: d.build, OfferedAt: t0, LastOfferedAt: t0, State: handsets.StateFailed, Attempts: 1,
			LastFailureAt: t0, ResultAt: t0})
	}
	for i := range 40 {
		for _, id := range []string{enrollment.DeviceID, "dev_keep"} {
			r := handsets.Report{ID: fmt.Sprintf("r%d", i), DeviceID: id, PatchID: "SEC-KEEP", Target: "patches/keep.zip",
				State: handsets.StateDownloading, Message: "kept message", At: t0.Add(time.Duration(i) * time.Second), ReceivedAt: t0}
			if id == enrollment.DeviceID {
				r.ID = fmt.Sprintf("PLANTEDREPORTXYZ%d", i)
				r.PatchID, r.Target = "PLANTEDPATCHXYZ", "patches/PLANTEDTARGETXYZ.zip"
				r.State, r.ErrorCode = handsets.StateFailed, "E_PLANTEDCODEXYZ"
				r.Message = "install failed PLANTEDMARKERXYZ retry later"
			}
			mustAddReport(t, s, r)
		}
	}
	files := []string{path, path + "-wal", path + "-shm"}
	found := func() map[string][]string {
		t.Helper()
		where := map[string][]string{}
		for _, f := range files {
			data, err := os.ReadFile(f)
			if err != nil && !errors.Is(err, os.ErrNotExist) {
				t.Fatal(err)
			}
			for _, m := range markers {
				if bytes.Contains(data, []byte(m)) {
					where[filepath.Base(f)] = append(where[filepath.Base(f)], m)
				}
			}
		}
		return where
	}
	// The check sees the markers where they are.
	before := map[string]bool{}
	for _, ms := range found() {
		for _, m := range ms {
			before[m] = true
		}
	}
	if len(before) != len(markers) {
		t.Fatalf("before the erasure: found %v of the markers %v in the files, want all", before, markers)
	}

	if err := fleet.Erase(ctx, enrollment.Token); err != nil {
		t.Fatalf("erase: %v", err)
	}
	if where := found(); len(where) != 0 {
		t.Errorf("after the erasure the files still hold %v", where)
	}
	if n := countRows(t, db, "device_reports", "device_id = ?", "dev_keep"); n != 40 {
		t.Errorf("reports of the other device: got %d, want 40", n)
	}
	if n := countRows(t, db, "device_rollouts", "device_id = ?", "dev_keep"); n != 1 {
		t.Errorf("rollout records of the other device: got %d, want 1", n)
	}
}

func testDeleteReportsBefore(t *testing.T, b backend) {
	db, s := mustDevices(t, b)
	s.pruneBatch = 10
	ctx := t.Context()
	mustEnroll(t, s, newDevice("dev_a", "m"), "hash-a")
	for i := range 10 {
		r := report(fmt.Sprintf("r%d", i), "SEC-1", handsets.StateDownloading, "", t0.Add(time.Duration(i)*time.Second))
		r.ReceivedAt = t0.Add(time.Duration(i) * time.Hour)
		mustAddReport(t, s, r)
	}
	// More than one batch of old reports, written directly.
	old := make([]reportRow, 2*s.pruneBatch+7)
	for i := range old {
		old[i] = reportRow{DeviceID: "dev_a", ReportID: fmt.Sprintf("old%d", i), PatchID: "SEC-0", State: handsets.StateInstalled,
			At: dbTime(t0.Add(-48 * time.Hour)), ReceivedAt: dbTime(t0.Add(-48 * time.Hour))}
	}
	if err := db.gorm.WithContext(ctx).Create(old).Error; err != nil {
		t.Fatal(err)
	}

	// Received at t0 .. t0+4h and the old ones go; t0+5h stays.
	n, err := s.DeleteReportsBefore(ctx, t0.Add(5*time.Hour))
	if err != nil {
		t.Fatalf("delete reports: %v", err)
	}
	if want := int64(len(old) + 5); n != want {
		t.Errorf("deleted: got %d, want %d", n, want)
	}
	var got []string
	for _, r := range mustReports(t, s, "dev_a") {
		got = append(got, r.ID)
	}
	if want := []string{"r5", "r6", "r7", "r8", "r9"}; !slices.Equal(got, want) {
		t.Errorf("reports left: got %v, want %v", got, want)
	}
	// The current state is not history: it stays.
	if states := mustPatchStates(t, s, "dev_a"); len(states) != 1 || states[0].State != handsets.StateDownloading {
		t.Errorf("states: got %+v, want SEC-1 downloading", states)
	}
	if n, err := s.DeleteReportsBefore(ctx, t0.Add(5*time.Hour)); err != nil || n != 0 {
		t.Errorf("delete again: got %d, %v, want 0, nil", n, err)
	}
}

// fleetGroup is a number of alike devices in a constructed fleet.
type fleetGroup struct {
	model     string
	n         int
	seen      time.Time
	patches   []string
	messaging string
	enc       bool
	state     string // for the summary's patch; "" for no report
	code      string
}

// enrollFleet enrolls the groups and reports their states; devices are
// numbered across groups.
func enrollFleet(t testing.TB, s *DeviceStore, patchID string, groups []fleetGroup) {
	t.Helper()
	i := 0
	for _, g := range groups {
		for range g.n {
			i++
			d := newDevice(fmt.Sprintf("dev_%03d", i), g.model)
			d.LastSeen, d.InstalledPatches, d.CloudMessaging, d.NumberEncryption = g.seen, g.patches, g.messaging, g.enc
			mustEnroll(t, s, d, "hash-"+d.ID)
			if g.state != "" {
				r := report("r1", patchID, g.state, g.code, t0.Add(-time.Hour))
				r.DeviceID = d.ID
				mustAddReport(t, s, r)
			}
			// A state for another patch, which must not count.
			r := report("r2", "SEC-OTHER", handsets.StateFailed, "E_OTHER", t0.Add(-time.Hour))
			r.DeviceID = d.ID
			mustAddReport(t, s, r)
		}
	}
}

func testFleetSummary(t *testing.T, b backend) {
	_, s := mustDevices(t, b)
	const patch = "SEC-2026.03"
	activeSince := t0.Add(-30 * 24 * time.Hour)
	recent, stale := t0.Add(-time.Hour), t0.Add(-40*24*time.Hour)
	p := []string{patch}
	in, out, auto := handsets.MessagingOptedIn, handsets.MessagingOptedOut, handsets.MessagingAutoEnabled
	ok, failed, dl := handsets.StateInstalled, handsets.StateFailed, handsets.StateDownloading
	enrollFleet(t, s, patch, []fleetGroup{
		// alpha: 18 active, 15 patched, 10 compliant.
		{"alpha", 10, recent, p, out, true, ok, ""},
		{"alpha", 5, recent, p, auto, true, ok, ""}, // messaging switched itself on
		{"alpha", 3, recent, nil, out, true, failed, "E_SPACE"},
		// beta: 20 active, 12 patched, 8 compliant.
		{"beta", 8, recent, []string{"SEC-2025.12", patch}, in, true, ok, ""}, // opted in by the user is fine
		{"beta", 4, recent, p, out, false, ok, ""},                            // number encryption off
		{"beta", 6, recent, nil, auto, false, failed, "E_VERIFY"},
		{"beta", 2, recent, nil, out, true, failed, "E_SPACE"},
		// gamma: 4 active, none patched; near misses of the patch id.
		{"gamma", 3, recent, []string{"SEC-2026.03x"}, out, true, dl, ""},
		{"gamma", 1, activeSince, []string{"sec-2026.03", "XSEC-2026.03"}, out, true, "", ""}, // seen exactly at the bound
		// Inactive: enrolled, nothing else.
		{"delta", 5, stale, p, out, true, failed, "E_OLD"},
		{"alpha", 3, stale, p, out, true, ok, ""},
	})
	got, err := s.FleetSummary(t.Context(), patch, activeSince, handsets.DefaultSummaryModels)
	if err != nil {
		t.Fatalf("fleet summary: %v", err)
	}
	want := &handsets.FleetSummary{
		PatchID:  patch,
		Enrolled: 50, Active: 42, Patched: 27, Compliant: 18,
		// Most active first; delta has no active device.
		ByModel: []handsets.ModelSummary{
			{Model: "beta", Active: 20, Patched: 12, Compliant: 8},
			{Model: "alpha", Active: 18, Patched: 15, Compliant: 10},
			{Model: "gamma", Active: 4, Patched: 0, Compliant: 0},
		},
		States:   map[string]int64{ok: 27, failed: 11, dl: 3},
		Failures: []handsets.FailureCount{{ErrorCode: "E_VERIFY", Count: 6}, {ErrorCode: "E_SPACE", Count: 5}},
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("fleet summary:\n got %+v\nwant %+v", got, want)
	}
}

// testFleetSummaryModelCap floods the fleet with models: the summary
// lists the most active ones and sums the rest in one row, with the
// totals unchanged.
func testFleetSummaryModelCap(t *testing.T, b backend) {
	_, s := mustDevices(t, b)
	const patch = "SEC-1"
	recent, stale := t0.Add(-time.Hour), t0.Add(-40*24*time.Hour)
	out := handsets.MessagingOptedOut
	groups := []fleetGroup{
		{model: "big", n: 5, seen: recent, messaging: out},
		// A tie, broken by byte order on both dialects: 'Z' < 'a'.
		{model: "alpha", n: 3, seen: recent, patches: []string{patch}, messaging: out},
		{model: "Zeta", n: 3, seen: recent, messaging: out},
		// Enrolled, never active: counted, never listed.
		{model: "idle", n: 2, seen: stale, patches: []string{patch}, messaging: out, enc: true},
	}
	for i := range 25 {
		groups = append(groups, fleetGroup{model: fmt.Sprintf("m%02d", i), n: 1, seen: recent,
			patches: []string{patch}, messaging: out, enc: true})
	}
	enrollFleet(t, s, patch, groups)
	models := func(from, to int) []handsets.ModelSummary {
		var ms []handsets.ModelSummary
		for i := from; i < to; i++ {
			ms = append(ms, handsets.ModelSummary{Model: fmt.Sprintf("m%02d", i), Active: 1, Patched: 1, Compliant: 1})
		}
		return ms
	}
	top := []handsets.ModelSummary{{Model: "big", Active: 5}, {Model: "Zeta", Active: 3}, {Model: "alpha", Active: 3, Patched: 3}}
	tests := []struct {
		max  int
		want []handsets.ModelSummary
	}{
		{3, append(slices.Clone(top), handsets.ModelSummary{Model: handsets.OtherModels, Models: 25, Active: 25, Patched: 25, Compliant: 25})},
		{handsets.DefaultSummaryModels, append(append(slices.Clone(top), models(0, 17)...),
			handsets.ModelSummary{Model: handsets.OtherModels, Models: 8, Active: 8, Patched: 8, Compliant: 8})},
		// Room for all: no other row, and idle is not listed.
		{28, append(slices.Clone(top), models(0, 25)...)},
		{1, []handsets.ModelSummary{{Model: "big", Active: 5}, {Model: handsets.OtherModels, Models: 27, Active: 31, Patched: 28, Compliant: 25}}},
	}
	for _, tc := range tests {
		t.Run(fmt.Sprintf("max %d", tc.max), func(t *testing.T) {
			got, err := s.FleetSummary(t.Context(), patch, t0.Add(-24*time.Hour), tc.max)
			if err != nil {
				t.Fatalf("fleet summary: %v", err)
			}
			if !reflect.DeepEqual(got.ByModel, tc.want) {
				t.Errorf("by model:\n got %+v\nwant %+v", got.ByModel, tc.want)
			}
			if got.Enrolled != 38 || got.Active != 36 || got.Patched != 28 || got.Compliant != 25 {
				t.Errorf("totals: got enrolled %d active %d patched %d compliant %d, want 38, 36, 28, 25",
					got.Enrolled, got.Active, got.Patched, got.Compliant)
			}
		})
	}
	if _, err := s.FleetSummary(t.Context(), patch, t0, 0); !errors.Is(err, errs.ErrInvalid) {
		t.Errorf("no models: got %v, want ErrInvalid", err)
	}
}

func testFleetSummaryEmpty(t *testing.T, b backend) {
	_, s := mustDevices(t, b)
	got, err := s.FleetSummary(t.Context(), "SEC-1", t0, handsets.DefaultSummaryModels)
	if err != nil {
		t.Fatalf("fleet summary: %v", err)
	}
	want := &handsets.FleetSummary{PatchID: "SEC-1", ByModel: []handsets.ModelSummary{},
		States: map[string]int64{}, Failures: []handsets.FailureCount{}}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("fleet summary:\n got %+v\nwant %+v", got, want)
	}
}

// testFleetSummaryPatchIDIsNotAPattern checks that '_', valid in patch
// ids and a LIKE wildcard, matches only itself.
func testFleetSummaryPatchIDIsNotAPattern(t *testing.T, b backend) {
	_, s := mustDevices(t, b)
	for i, patches := range [][]string{{"P_1"}, {"PX1"}, {"p_1"}, {"P__1"}, {"AP_1", "P_1B"}} {
		d := newDevice(fmt.Sprintf("dev_%d", i), "m")
		d.InstalledPatches = patches
		mustEnroll(t, s, d, "hash-"+d.ID)
	}
	for _, tc := range []struct {
		patch string
		want  int64
	}{{"P_1", 1}, {"PX1", 1}, {"P%1", 0}, {"P_", 0}, {"_", 0}} {
		got, err := s.FleetSummary(t.Context(), tc.patch, t0.Add(-time.Hour), handsets.DefaultSummaryModels)
		if err != nil {
			t.Fatalf("fleet summary %s: %v", tc.patch, err)
		}
		if got.Patched != tc.want {
			t.Errorf("patched with %q: got %d, want %d", tc.patch, got.Patched, tc.want)
		}
	}
}

// testCheckInOneRoundTrip counts the PostgreSQL protocol round trips of a
// check-in through a proxy: a round trip ends with a Sync (extended
// protocol) or is a Query (simple protocol).
func testCheckInOneRoundTrip(t *testing.T, b backend) {
	if b.name != "postgres" {
		t.Skip("round trips are a PostgreSQL matter")
	}
	u, err := url.Parse(b.newDSN(t))
	if err != nil {
		t.Fatal(err)
	}
	proxy := startPGProxy(t, u.Host)
	u.Host = proxy.addr
	ctx := t.Context()
	db, err := Open(ctx, u.String(), Options{Logger: testLogger(t), MaxOpenConns: 1})
	if err != nil {
		t.Fatalf("open: %v", err)
	}
	t.Cleanup(func() { _ = db.Close() })
	if _, err := db.Migrate(ctx); err != nil {
		t.Fatalf("migrate: %v", err)
	}
	s := db.Devices()
	mustEnroll(t, s, newDevice("dev_a", "m"), "hash-a")
	ci := handsets.CheckIn{Build: "1", Model: "m", Channel: "stable", InstalledPatches: []string{"SEC-1"}, CloudMessaging: handsets.MessagingOptedOut}

	measure := func(name string, fn func() error) int64 {
		t.Helper()
		// The first call prepares the statement on the connection.
		if err := fn(); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		const calls = 10
		before := proxy.roundTrips.Load()
		for range calls {
			if err := fn(); err != nil {
				t.Fatalf("%s: %v", name, err)
			}
		}
		return (proxy.roundTrips.Load() - before) / calls
	}
	// A check-in reads the device with its rollout records in one round
	// trip, and most need no write; one that moves only last_seen within
	// a day writes in one more.
	if got := measure("check-in read", func() error { _, _, err := s.CheckInState(ctx, "hash-a"); return err }); got != 1 {
		t.Errorf("round trips per check-in read: got %d, want 1", got)
	}
	seen := t0
	if got := measure("check-in write of last_seen", func() error {
		d, _, err := s.CheckInState(ctx, "hash-a")
		if err != nil {
			return err
		}
		seen = seen.Add(time.Second)
		next := d.AfterCheckIn(ci, seen)
		return s.SaveCheckIn(ctx, d, next, nil)
	}); got != 2 {
		t.Errorf("round trips per check-in that writes last_seen: got %d, want 2 (read, update)", got)
	}
	if got := measure("device by token", func() error { _, err := s.DeviceByToken(ctx, "hash-a"); return err }); got != 1 {
		t.Errorf("round trips per device by token: got %d, want 1", got)
	}
	i := 0
	perReport := measure("add report", func() error {
		i++
		_, err := s.AddReport(ctx, report(fmt.Sprintf("r%d", i), "SEC-1", handsets.StateInstalled, "", t0))
		return err
	})
	t.Logf("round trips per report: %d", perReport)
}

// pgProxy forwards PostgreSQL connections and counts the round trips the
// clients start.
type pgProxy struct {
	addr       string
	roundTrips atomic.Int64
}

func startPGProxy(t testing.TB, target string) *pgProxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &pgProxy{addr: ln.Addr().String()}
	var (
		wg    sync.WaitGroup
		mu    sync.Mutex
		conns []net.Conn
	)
	wg.Go(func() {
		for {
			client, err := ln.Accept()
			if err != nil {
				return
			}
			upstream, err := net.Dial("tcp", target)
			if err != nil {
				client.Close()
				continue
			}
			mu.Lock()
			conns = append(conns, client, upstream)
			mu.Unlock()
			wg.Go(func() {
				_, _ = io.Copy(client, upstream)
				client.Close()
			})
			wg.Go(func() {
				_ = p.forward(upstream, client)
				upstream.Close()
			})
		}
	})
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		for _, c := range conns {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	return p
}

// forward copies client messages to the server, counting Sync and Query.
func (p *pgProxy) forward(dst io.Writer, src io.Reader) error {
	r := bufio.NewReader(src)
	// Untyped packets come first: SSLRequest or GSSENCRequest, then the
	// StartupMessage, whose protocol major version is 3.
	for {
		var hdr [8]byte
		if _, err := io.ReadFull(r, hdr[:]); err != nil {
			return err
		}
		body := make([]byte, binary.BigEndian.Uint32(hdr[:4])-8)
		if _, err := io.ReadFull(r, body); err != nil {
			return err
		}
		if _, err := dst.Write(append(hdr[:], body...)); err != nil {
			return err
		}
		if binary.BigEndian.Uint32(hdr[4:])>>16 == 3 {
			break
		}
	}
	for {
		var hdr [5]byte
		if _, err := io.ReadFull(r, hdr[:]); err != nil {
			return err
		}
		body := make([]byte, binary.BigEndian.Uint32(hdr[1:])-4)
		if _, err := io.ReadFull(r, body); err != nil {
			return err
		}
		if hdr[0] == 'S' || hdr[0] == 'Q' {
			p.roundTrips.Add(1)
		}
		if _, err := dst.Write(append(hdr[:], body...)); err != nil {
			return err
		}
	}
}

// BenchmarkCheckIn measures the storage cost of a check-in: parallel
// check-ins spread over 1000 devices, with the default pool size.
func BenchmarkCheckIn(b *testing.B) {
	const devices = 1000
	for _, be := range backends {
		b.Run(be.name, func(b *testing.B) {
			ctx := context.Background()
			db, err := Open(ctx, be.newDSN(b), Options{})
			if err != nil {
				b.Fatalf("open: %v", err)
			}
			b.Cleanup(func() { _ = db.Close() })
			if _, err := db.Migrate(ctx); err != nil {
				b.Fatalf("migrate: %v", err)
			}
			rows := make([]deviceRow, devices)
			hashes := make([]string, devices)
			for i := range rows {
				hashes[i] = identity.HashToken(fmt.Sprintf("otadev_bench%d", i))
				rows[i] = deviceRow{ID: fmt.Sprintf("dev_%04d", i), TokenHash: hashes[i], Model: "pixel-9", Build: "7.1.0",
					Channel: "stable", CloudMessaging: handsets.MessagingAutoEnabled, EnrolledAt: dbTime(t0), LastSeen: dbTime(t0)}
			}
			if err := db.gorm.WithContext(ctx).CreateInBatches(rows, 200).Error; err != nil {
				b.Fatal(err)
			}
			s := db.Devices()
			ci := handsets.CheckIn{Build: "7.2.0", Model: "pixel-9", Channel: "stable",
				InstalledPatches: []string{"SEC-2026.01", "SEC-2026.02"}, CloudMessaging: handsets.MessagingOptedOut, NumberEncryption: true}
			var next atomic.Int64
			// A busy otad has more check-ins in flight than CPUs: 8
			// goroutines per CPU keep the pool (8 or 10 connections)
			// busy, so commits can share a flush.
			b.SetParallelism(8)
			b.ResetTimer()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					i := next.Add(1) % devices
					if _, err := checkIn(ctx, s, hashes[i], ci, time.Now()); err != nil {
						b.Error(err)
						return
					}
				}
			})
		})
	}
}

// BenchmarkSecureDelete measures what SQLite's secure_delete and the
// WAL checkpoint after an erasure cost: check-ins (an UPDATE of each
// device row), reports (an INSERT and an upsert) and erasures of a device
// with 20 reports, without secure_delete and without the checkpoint (as
// before), with secure_delete only, and with both (as now).
func BenchmarkSecureDelete(b *testing.B) {
	const devices = 1000
	for _, mode := range []struct {
		name       string
		insecure   bool
		checkpoint bool
	}{
		{"before", true, false},
		{"secure_delete", false, false},
		{"secure_delete+checkpoint", false, true},
	} {
		open := func(b *testing.B) (*DB, *DeviceStore, []string) {
			b.Helper()
			ctx := context.Background()
			db, err := Open(ctx, newSQLiteDSN(b), Options{insecureDelete: mode.insecure})
			if err != nil {
				b.Fatalf("open: %v", err)
			}
			b.Cleanup(func() { _ = db.Close() })
			if _, err := db.Migrate(ctx); err != nil {
				b.Fatalf("migrate: %v", err)
			}
			rows := make([]deviceRow, devices)
			hashes := make([]string, devices)
			for i := range rows {
				hashes[i] = identity.HashToken(fmt.Sprintf("otadev_bench%d", i))
				rows[i] = deviceRow{ID: fmt.Sprintf("dev_%04d", i), TokenHash: hashes[i], Model: "pixel-9", Build: "7.1.0",
					Channel: "stable", CloudMessaging: handsets.MessagingAutoEnabled, EnrolledAt: dbTime(t0), LastSeen: dbTime(t0)}
			}
			if err := db.gorm.WithContext(ctx).CreateInBatches(rows, 200).Error; err != nil {
				b.Fatal(err)
			}
			return db, db.Devices(), hashes
		}
		b.Run(mode.name, func(b *testing.B) {
			b.Run("checkin", func(b *testing.B) {
				if mode.checkpoint {
					b.Skip("the checkpoint is part of erasures only")
				}
				_, s, hashes := open(b)
				ci := handsets.CheckIn{Build: "7.2.0", Model: "pixel-9", Channel: "stable",
					InstalledPatches: []string{"SEC-2026.01", "SEC-2026.02"}, CloudMessaging: handsets.MessagingOptedOut, NumberEncryption: true}
				var next atomic.Int64
				b.SetParallelism(8)
				b.ResetTimer()
				b.RunParallel(func(pb *testing.PB) {
					for pb.Next() {
						i := next.Add(1)
						// The build alternates so that every UPDATE rewrites the row.
						c := ci
						c.Build = fmt.Sprintf("7.%d.0", i%2)
						if _, err := checkIn(context.Background(), s, hashes[i%devices], c, time.Now()); err != nil {
							b.Error(err)
							return
						}
					}
				})
			})
			b.Run("report", func(b *testing.B) {
				if mode.checkpoint {
					b.Skip("the checkpoint is part of erasures only")
				}
				_, s, _ := open(b)
				var next atomic.Int64
				b.SetParallelism(8)
				b.ResetTimer()
				b.RunParallel(func(pb *testing.PB) {
					for pb.Next() {
						i := next.Add(1)
						r := handsets.Report{ID: fmt.Sprintf("r%d", i), DeviceID: fmt.Sprintf("dev_%04d", i%devices), PatchID: "SEC-2026.03",
							Target: "patches/SEC-2026.03.zip", State: handsets.StateDownloading, Message: "downloading 1/3",
							At: t0.Add(time.Duration(i)), ReceivedAt: t0}
						if _, err := s.AddReport(context.Background(), r); err != nil {
							b.Error(err)
							return
						}
					}
				})
			})
			b.Run("erase", func(b *testing.B) {
				db, s, _ := open(b)
				ctx := context.Background()
				// Erasures of devices with 20 reports each, made in batches
				// outside the timer.
				const batch = 50
				for n := 0; n < b.N; {
					b.StopTimer()
					ids := make([]string, 0, batch)
					for j := 0; j < batch && n+len(ids) < b.N; j++ {
						id := fmt.Sprintf("dev_erase_%d", n+j)
						d := newDevice(id, "pixel-9")
						if _, _, err := s.Enroll(ctx, d, "hash-"+id); err != nil {
							b.Fatal(err)
						}
						reports := make([]reportRow, 20)
						for k := range reports {
							reports[k] = reportRow{DeviceID: id, ReportID: fmt.Sprintf("r%d", k), PatchID: "SEC-2026.03",
								Target: "patches/SEC-2026.03.zip", State: handsets.StateDownloading, Message: "downloading 1/3",
								At: dbTime(t0), ReceivedAt: dbTime(t0)}
						}
						if err := db.gorm.WithContext(ctx).Create(reports).Error; err != nil {
							b.Fatal(err)
						}
						ids = append(ids, id)
					}
					b.StartTimer()
					for _, id := range ids {
						var err error
						if mode.checkpoint {
							err = s.DeleteDevice(ctx, id)
						} else {
							err = s.deleteDevice(ctx, id)
						}
						if err != nil {
							b.Fatal(err)
						}
					}
					n += len(ids)
				}
			})
		})
	}
}
