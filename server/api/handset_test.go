package api

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/patchfleet/ota/server"
	"github.com/patchfleet/ota/server/api/wire"
	"github.com/patchfleet/ota/server/errs"
	"github.com/patchfleet/ota/server/handsets"
	"github.com/patchfleet/ota/server/identity"
)

// mockDevices is a function-field fake of handsets.DeviceStore: handler
// tests need no database.
type mockDevices struct {
	EnrollFn        func(ctx context.Context, d *handsets.Device, tokenHash string) (string, bool, error)
	CheckInStateFn  func(ctx context.Context, tokenHash string) (*handsets.Device, []*handsets.DeviceRollout, error)
	DeviceByTokenFn func(ctx context.Context, tokenHash string) (*handsets.Device, error)
	AddReportFn     func(ctx context.Context, r handsets.Report) (handsets.ReportOutcome, error)
}

var _ handsets.DeviceStore = (*mockDevices)(nil)

func (m *mockDevices) Enroll(ctx context.Context, d *handsets.Device, h string) (string, bool, error) {
	return m.EnrollFn(ctx, d, h)
}
func (m *mockDevices) CheckInState(ctx context.Context, h string) (*handsets.Device, []*handsets.DeviceRollout, error) {
	return m.CheckInStateFn(ctx, h)
}
func (m *mockDevices) SaveCheckIn(context.Context, *handsets.Device, *handsets.Device, []handsets.Confirmation) error {
	return nil
}
func (m *mockDevices) DeviceByToken(ctx context.Context, h string) (*handsets.Device, error) {
	return m.DeviceByTokenFn(ctx, h)
}
func (m *mockDevices) AddReport(ctx context.Context, r handsets.Report) (handsets.ReportOutcome, error) {
	return m.AddReportFn(ctx, r)
}
func (m *mockDevices) DeleteDevice(context.Context, string) error { return nil }
func (m *mockDevices) DeleteReportsBefore(context.Context, time.Time) (int64, error) {
	return 0, nil
}
func (m *mockDevices) DeleteDailyRollupsBefore(context.Context, time.Time) (int64, error) {
	return 0, nil
}
func (m *mockDevices) PatchStates(context.Context, string) ([]handsets.PatchState, error) {
	return nil, nil
}
func (m *mockDevices) Reports(context.Context, string) ([]handsets.Report, error) { return nil, nil }
func (m *mockDevices) FleetSummary(context.Context, string, time.Time, int) (*handsets.FleetSummary, error) {
	return &handsets.FleetSummary{}, nil
}

const goodToken = "otadev_good"

func newHandsetServer(tb testing.TB, cfg Config) (*Server, *mockDevices) {
	tb.Helper()
	store := &mockDevices{
		EnrollFn: func(_ context.Context, d *handsets.Device, _ string) (string, bool, error) { return d.ID, true, nil },
		CheckInStateFn: func(_ context.Context, h string) (*handsets.Device, []*handsets.DeviceRollout, error) {
			if h != identity.HashToken(goodToken) {
				return nil, nil, fmt.Errorf("%w: invalid device token", errs.ErrUnauthorized)
			}
			return &handsets.Device{ID: "dev_1", Model: "PX-7", Build: "7.1.0", InstalledPatches: []string{}}, nil, nil
		},
		DeviceByTokenFn: func(_ context.Context, h string) (*handsets.Device, error) {
			if h != identity.HashToken(goodToken) {
				return nil, fmt.Errorf("%w: invalid device token", errs.ErrUnauthorized)
			}
			return &handsets.Device{ID: "dev_1"}, nil
		},
		AddReportFn: func(context.Context, handsets.Report) (handsets.ReportOutcome, error) {
			return handsets.ReportOutcome{}, nil
		},
	}
	cfg.Fleet = &server.Fleet{Store: store, EnrollmentSecret: "fleet-secret", PollInterval: time.Hour}
	s, _ := newTestServer(tb, cfg)
	return s, store
}

// post sends a JSON body to h; opts adjust the request first (offContract).
func post(tb testing.TB, h http.Handler, path, token, body string, opts ...func(*http.Request)) *httptest.ResponseRecorder {
	tb.Helper()
	req := httptest.NewRequest(http.MethodPost, path, strings.NewReader(body))
	req.Header.Set("Content-Type", "application/json")
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	for _, o := range opts {
		o(req)
	}
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	return rec
}

const validCheckIn = `{"build":"7.1.0","model":"PX-7","channel":"stable","installed_patches":[],"cloud_messaging":"auto_enabled","number_encryption":false}`

// TestHandsetValidation covers every validation error of the handset API:
// each is a 400 naming the field, and nothing reaches the store.
func TestHandsetValidation(t *testing.T) {
	s, store := newHandsetServer(t, Config{})
	var reached int
	store.AddReportFn = func(context.Context, handsets.Report) (handsets.ReportOutcome, error) {
		reached++
		return handsets.ReportOutcome{}, nil
	}
	enroll := func(fields string) string {
		return `{"model":"PX-7","build":"7.1.0","channel":"stable","enrollment_secret":"fleet-secret"` + fields + `}`
	}
	checkin := func(replace, with string) string { return strings.Replace(validCheckIn, replace, with, 1) }
	report := func(fields string) string {
		return `{"report_id":"r-1","patch_id":"CM-2026-001","state":"installed","at":"2026-11-23T10:00:00Z"` + fields + `}`
	}
	tests := []struct {
		name, path, body, field string
	}{
		{"enroll: IMEI refused", "/api/v1/devices", enroll(`,"imei":"490154203237518"`), "imei"},
		{"enroll: phone number refused", "/api/v1/devices", enroll(`,"phone_number":"+4915112345678"`), "phone_number"},
		{"enroll: model", "/api/v1/devices", strings.Replace(enroll(""), `"PX-7"`, `"PX 7!"`, 1), "model"},
		{"enroll: build", "/api/v1/devices", strings.Replace(enroll(""), `"7.1.0"`, `""`, 1), "build"},
		{"enroll: channel", "/api/v1/devices", strings.Replace(enroll(""), `"stable"`, `"Stable Channel"`, 1), "channel"},
		{"enroll: region", "/api/v1/devices", enroll(`,"region":"Germany"`), "region"},
		{"enroll: device key", "/api/v1/devices", enroll(`,"device_key":"abcd"`), "device_key"},
		{"enroll: wrong type", "/api/v1/devices", enroll(`,"region":42`), "region"},
		{"checkin: IMSI refused", "/api/v1/checkin", checkin(`"build"`, `"imsi":"262011234567890","build"`), "imsi"},
		{"checkin: contacts refused", "/api/v1/checkin", checkin(`"build"`, `"contacts":[],"build"`), "contacts"},
		{"checkin: messaging state", "/api/v1/checkin", checkin(`"auto_enabled"`, `"on"`), "cloud_messaging"},
		{"checkin: encryption missing", "/api/v1/checkin", checkin(`,"number_encryption":false`, ``), "number_encryption"},
		{"checkin: encryption type", "/api/v1/checkin", checkin(`"number_encryption":false`, `"number_encryption":"yes"`), "number_encryption"},
		{"checkin: build", "/api/v1/checkin", checkin(`"7.1.0"`, `"7.1.0; rm -rf"`), "build"},
		{"checkin: patch id", "/api/v1/checkin", checkin(`[]`, `["CM 1"]`), "installed_patches[0]"},
		{"checkin: too many patches", "/api/v1/checkin", checkin(`[]`, `[`+strings.Repeat(`"p",`, 64)+`"p"]`), "installed_patches"},
		{"report: message body refused", "/api/v1/reports", report(`,"sms":"hello"`), "sms"},
		{"report: state", "/api/v1/reports", strings.Replace(report(""), "installed", "done", 1), "state"},
		{"report: failed without code", "/api/v1/reports", strings.Replace(report(""), "installed", "failed", 1), "error_code"},
		{"report: code on success", "/api/v1/reports", report(`,"error_code":"E_X"`), "error_code"},
		{"report: id", "/api/v1/reports", strings.Replace(report(""), `"r-1"`, `""`, 1), "report_id"},
		{"report: patch", "/api/v1/reports", strings.Replace(report(""), `"CM-2026-001"`, `"../x"`, 1), "patch_id"},
		{"report: time missing", "/api/v1/reports", strings.Replace(report(""), `,"at":"2026-11-23T10:00:00Z"`, "", 1), "at"},
		{"report: time far ahead", "/api/v1/reports", strings.Replace(report(""), "2026-11-23", "2099-01-01", 1), "at"},
		{"report: multi-line message", "/api/v1/reports", report(`,"message":"a\nb"`), "message"},
		{"report: long message", "/api/v1/reports", report(`,"message":"` + strings.Repeat("x", 257) + `"`), "message"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			rec := post(t, s, tc.path, goodToken, tc.body, offContract)
			if rec.Code != http.StatusBadRequest {
				t.Fatalf("got %d %s, want 400", rec.Code, rec.Body)
			}
			var body wire.ErrorBody
			if err := json.Unmarshal(rec.Body.Bytes(), &body); err != nil {
				t.Fatal(err)
			}
			if body.Error.Field != tc.field || body.Error.Code != "invalid" {
				t.Fatalf("got code %q field %q (%s), want invalid naming %q", body.Error.Code, body.Error.Field, body.Error.Message, tc.field)
			}
		})
	}
	if reached != 0 {
		t.Errorf("%d invalid reports reached the store", reached)
	}
}

// TestHandsetAuth checks that a bad token is 401 with the same answer
// whether or not it is well formed, on every handset call, and that the
// enrollment secret is required. The store's refusal is worded unlike
// the handler's on purpose: the answers match only because Fleet makes
// them one (internal/apitest's TestDeviceTokenAnswer does it on SQLite).
func TestHandsetAuth(t *testing.T) {
	s, store := newHandsetServer(t, Config{})
	refuse := func() error { return fmt.Errorf("%w: mock store: no device holds this token", errs.ErrUnauthorized) }
	store.CheckInStateFn = func(context.Context, string) (*handsets.Device, []*handsets.DeviceRollout, error) {
		return nil, nil, refuse()
	}
	store.DeviceByTokenFn = func(context.Context, string) (*handsets.Device, error) { return nil, refuse() }
	report := `{"report_id":"r-1","patch_id":"CM-2026-001","state":"installed","at":"2026-11-23T10:00:00Z"}`
	calls := []struct{ method, path, body string }{
		{http.MethodPost, "/api/v1/checkin", validCheckIn},
		{http.MethodPost, "/api/v1/reports", report},
		{http.MethodDelete, "/api/v1/devices/self", ""},
	}
	tokens := []struct{ name, token string }{
		{"malformed", "nonsense"},
		{"too long", "otadev_" + strings.Repeat("a", 200)},
		{"unknown", "otadev_unknown"},
	}
	first := ""
	for _, c := range calls {
		for _, tok := range tokens {
			req := httptest.NewRequest(c.method, c.path, strings.NewReader(c.body))
			req.Header.Set("Content-Type", "application/json")
			req.Header.Set("Authorization", "Bearer "+tok.token)
			rec := httptest.NewRecorder()
			s.ServeHTTP(rec, req)
			if rec.Code != http.StatusUnauthorized {
				t.Fatalf("%s %s, %s token: got %d %s, want 401", c.method, c.path, tok.name, rec.Code, rec.Body)
			}
			if first == "" {
				first = rec.Body.String()
			} else if rec.Body.String() != first {
				t.Errorf("%s %s, %s token: answer differs:\n got %s\nwant %s", c.method, c.path, tok.name, rec.Body, first)
			}
		}
	}
	if strings.Contains(first, "mock store") {
		t.Errorf("the store's wording reached the client: %s", first)
	}
	if rec := post(t, s, "/api/v1/checkin", "", validCheckIn, offContract); rec.Code != http.StatusUnauthorized {
		t.Errorf("no token: got %d, want 401", rec.Code)
	}
	rec := post(t, s, "/api/v1/devices", "", `{"model":"PX-7","build":"7.1.0","channel":"stable","enrollment_secret":"guess"}`)
	if rec.Code != http.StatusUnauthorized {
		t.Errorf("wrong enrollment secret: got %d, want 401", rec.Code)
	}
	rec = post(t, s, "/api/v1/devices", "", `{"model":"PX-7","build":"7.1.0","channel":"stable","enrollment_secret":"fleet-secret"}`)
	if rec.Code != http.StatusCreated || !strings.Contains(rec.Body.String(), `"token":"otadev_`) {
		t.Errorf("enrollment: got %d %s, want 201 with a device token", rec.Code, rec.Body)
	}
}

func TestHandsetLimits(t *testing.T) {
	s, _ := newHandsetServer(t, Config{MaxBody: 512, CheckInsPerMinute: 1, CheckInBurst: 2})
	t.Run("body too large", func(t *testing.T) {
		rec := post(t, s, "/api/v1/reports", goodToken, `{"message":"`+strings.Repeat("x", 600)+`"}`, offContract)
		if rec.Code != http.StatusRequestEntityTooLarge {
			t.Fatalf("got %d, want 413", rec.Code)
		}
	})
	t.Run("check-in rate", func(t *testing.T) {
		for i := range 2 {
			if rec := post(t, s, "/api/v1/checkin", goodToken, validCheckIn); rec.Code != 200 {
				t.Fatalf("check-in %d within the burst: got %d %s", i+1, rec.Code, rec.Body)
			}
		}
		rec := post(t, s, "/api/v1/checkin", goodToken, validCheckIn)
		if rec.Code != http.StatusTooManyRequests {
			t.Fatalf("third check-in: got %d, want 429", rec.Code)
		}
		ra := rec.Header().Get("Retry-After")
		if ra == "" || ra == "0" {
			t.Errorf("Retry-After %q, want seconds to wait", ra)
		}
		// Another device is not affected.
		if rec := post(t, s, "/api/v1/checkin", "otadev_other", validCheckIn); rec.Code != http.StatusUnauthorized {
			t.Errorf("another token: got %d, want its own answer (401), not 429", rec.Code)
		}
	})
}

// TestEnrollmentSecretGuessing is the probe's guessing of the enrollment
// secret (25,036 guesses in 20 s, none refused): past the failure
// budget (20 at once, 10 a minute) every enrollment waits with 429 and
// Retry-After, the right secret too, since answering it differently
// would tell the guesser which guess was right. Handsets that know the
// secret never spend the budget.
func TestEnrollmentSecretGuessing(t *testing.T) {
	now := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	store := &mockDevices{EnrollFn: func(_ context.Context, d *handsets.Device, _ string) (string, bool, error) { return d.ID, true, nil }}
	fleet := &server.Fleet{Store: store, EnrollmentSecret: "fleet-secret", PollInterval: time.Hour,
		SecretFailures: server.NewFailureBucket(10, 20), Now: func() time.Time { return now }}
	s, _ := newTestServer(t, Config{Fleet: fleet})
	enroll := func(secret string) *httptest.ResponseRecorder {
		return post(t, s, "/api/v1/devices", "", `{"model":"PX-7","build":"7.1.0","channel":"stable","enrollment_secret":"`+secret+`"}`)
	}
	for i := range 50 {
		if rec := enroll("fleet-secret"); rec.Code != http.StatusCreated {
			t.Fatalf("handset %d with the secret: %d, want 201", i, rec.Code)
		}
	}
	var refused, limited int
	for i := range 3000 {
		switch rec := enroll(fmt.Sprintf("guess-%d", i)); rec.Code {
		case http.StatusUnauthorized:
			refused++
		case http.StatusTooManyRequests:
			limited++
			if ra := rec.Header().Get("Retry-After"); ra != "6" {
				t.Fatalf("guess %d: Retry-After %q, want 6 (a failure refills every 6 s)", i, ra)
			}
		default:
			t.Fatalf("guess %d: %d", i, rec.Code)
		}
	}
	if refused != 20 || limited != 2980 {
		t.Errorf("3000 wrong guesses: %d checked (401), %d refused unchecked (429); want 20 and 2980", refused, limited)
	}
	if rec := enroll("fleet-secret"); rec.Code != http.StatusTooManyRequests {
		t.Errorf("the right secret while the budget is spent: %d, want 429", rec.Code)
	}
	// A failure's worth refills in 6 s: the next enrollment is checked.
	now = now.Add(6 * time.Second)
	if rec := enroll("fleet-secret"); rec.Code != http.StatusCreated {
		t.Errorf("the right secret 6 s on: %d, want 201", rec.Code)
	}
	if rec := enroll("guess-again"); rec.Code != http.StatusUnauthorized {
		t.Errorf("a guess 6 s on: %d, want 401 (checked: the right secret spent nothing)", rec.Code)
	}
	if rec := enroll("guess-again-2"); rec.Code != http.StatusTooManyRequests {
		t.Errorf("the next guess: %d, want 429", rec.Code)
	}
	now = now.Add(2 * time.Minute)
	for i := range 50 {
		if rec := enroll("fleet-secret"); rec.Code != http.StatusCreated {
			t.Fatalf("handset %d once the guessing stopped: %d, want 201", i, rec.Code)
		}
	}
}
