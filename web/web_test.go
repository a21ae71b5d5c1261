package web

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"reflect"
	"regexp"
	"slices"
	"strings"
	"testing"
	"testing/fstest"
	"time"

	"github.com/patchfleet/ota/manifests"
	"github.com/patchfleet/ota/server"
	"github.com/patchfleet/ota/server/audit"
	"github.com/patchfleet/ota/server/handsets"
	"github.com/patchfleet/ota/server/identity"
	"github.com/patchfleet/ota/server/rollout"
)

const testPassword = "correct horse battery"

// env is a dashboard over fakes with one user of each role.
type env struct {
	h       *Handler
	id      *fakeIdentity
	audit   *fakeAudit
	anchor  *fakeAnchor
	backend *fakeBackend
	users   identity.Users
	// cookies and csrf are the sessions of each role's user, by role.
	cookies map[string]*http.Cookie
	csrf    map[string]string
}

func sampleBackend(tb testing.TB) *fakeBackend {
	tb.Helper()
	now := time.Date(2026, 12, 15, 12, 0, 0, 0, time.UTC)
	ro, _, err := rollout.NewRollout(rollout.Rollout{ID: "ro-1",
		Release:  rollout.RolloutRelease{Target: "cm/CM-1/update.zip", PatchID: "CM-1", InstallsBuild: "7.5.0"},
		Selector: rollout.Selector{Models: []string{"PX-8", "QZ-2"}}, Stages: []float64{1, 10, 50, 100},
		Policy: rollout.DefaultPolicy()}, "alice", now.Add(-48*time.Hour))
	if err != nil {
		tb.Fatal(err)
	}
	ro.State, ro.Stage, ro.StartedAt, ro.StageStartedAt = rollout.RolloutRunning, 1, now.Add(-47*time.Hour), now.Add(-3*time.Hour)
	s := func(v float64) *float64 { return &v }
	hours := make([]server.HourResults, server.ReportHours)
	for i := range hours {
		hours[i].Hour = now.Truncate(time.Hour).Add(time.Duration(i-server.ReportHours+1) * time.Hour)
	}
	hours[46].Installed, hours[46].Failed = 120, 7
	rep := &server.RolloutReport{RolloutID: "ro-1", PatchID: "CM-1", State: ro.State, Stage: 1, Percent: 10, GeneratedAt: now,
		CohortCounts: server.CohortCounts{Eligible: 123456, Target: 12346, Offered: 9876, Pending: 1111, Downloading: 222,
			Installed: 8001, Confirmed: 7802, Failed: 333, RolledBack: 3},
		ByModel: []server.ModelCohort{
			{Model: "PX-8", CohortCounts: server.CohortCounts{Eligible: 100000, Offered: 9000, Installed: 7500, Confirmed: 7404, Failed: 300, RolledBack: 3}},
			{Model: "QZ-2", CohortCounts: server.CohortCounts{Eligible: 23456, Offered: 876, Installed: 501, Failed: 2}, Held: true, HoldReason: "too many failures"},
		},
		ByStartingBuild: []server.BuildCohort{{StartingBuild: "7.4.1", CohortCounts: server.CohortCounts{Eligible: 4, Offered: 4444}}},
		FailureCodes:    []handsets.FailureCount{{ErrorCode: "E_NO_SPACE", Count: 330}, {ErrorCode: "E_RARE", Count: 3}},
		InstallsPerHour: hours, OfferToInstall: server.InstallTimes{Count: 8001, P50: s(5400), P95: s(20000)},
		OfferToConfirmation: server.InstallTimes{Count: 7802, P50: s(9000), P95: s(30000)},
		Holds:               []rollout.Hold{{Model: "QZ-2", Actor: "system", Reason: "too many failures", At: now}}}
	daily := []server.DayExposure{{Day: "2026-12-13", Active: 1000, Exposed: 400, ShareCompliant: s(0.6)},
		{Day: "2026-12-14", Active: 1000, Exposed: 300, ShareCompliant: s(0.7)}, {Day: "2026-12-15", Active: 1000, Exposed: 200, ShareCompliant: s(0.8)}}
	proj := server.ProjectCompliance(daily, server.ComplianceTarget)
	exp := &server.ExposureReport{Day: "2026-12-15", GeneratedAt: now,
		ExposureCounts: server.ExposureCounts{Active: 654321, Exposed: 120000, AutoEnabled: 90000, Unencrypted: 70000, Compliant: 534321, ShareExposed: 0.183399},
		ByModel: []server.ModelExposure{{Model: "PX-8", ExposureCounts: server.ExposureCounts{Active: 500000, Exposed: 100000, Compliant: 400000}},
			{Model: "RARE-1", ExposureCounts: server.ExposureCounts{Active: 4, Exposed: 2, Compliant: 2}}},
		ByRegion: []server.RegionExposure{{Region: "DE", ExposureCounts: server.ExposureCounts{Active: 300000, Exposed: 50000, Compliant: 250000}}},
		Daily:    daily, Projection: proj}
	custom, _ := json.Marshal(manifests.TargetCustom{PatchID: "CM-1", Models: []string{"PX-8"}, InstallsBuild: "7.5.0",
		CloudMessagingDefault: "opt-in", NumberEncryption: "on", Released: now.Add(-72 * time.Hour)})
	return &fakeBackend{
		exposure: exp,
		rollouts: []*rollout.Rollout{ro},
		reports:  map[string]*server.RolloutReport{"ro-1": rep},
		events: []rollout.Event{{RolloutID: "ro-1", At: now.Add(-3 * time.Hour), Actor: "alice", Action: rollout.ActionAdvance,
			Reason: "looks healthy", FromState: rollout.RolloutRunning, ToState: rollout.RolloutRunning, FromPercent: 1, ToPercent: 10}},
		status: &manifests.Status{Initialized: true, Roles: []manifests.RoleStatus{
			{Role: "root", Version: 1, Expires: now.Add(300 * 24 * time.Hour), ExpiresIn: 300 * 86400},
			{Role: "targets", Version: 4, Expires: now.Add(10 * 24 * time.Hour), ExpiresIn: 10 * 86400, Warning: "targets expires in 10 days"}},
			Targets: []manifests.TargetInfo{{Path: "cm/CM-1/update.zip", Length: 1234567, SHA256: "ab", Custom: custom}}},
		drafts: []*manifests.DraftView{
			{ID: "d-7", State: manifests.DraftPending, Kind: manifests.DraftKindRelease, CreatedBy: "rel-eng", CreatedAt: now,
				Changes: []string{"add cm/CM-2/update.zip"}, Thresholds: []manifests.PartStatus{{Part: "targets", What: "targets v5", Threshold: 2,
					KeyIDs: []string{"k1", "k2", "k3"}, Signed: []string{"4f1e2d3c4b5a69788796a5b4c3d2e1f0"}}}},
			{ID: "d-6", State: manifests.DraftPublished, Kind: manifests.DraftKindYank, CreatedBy: "rel-eng", CreatedAt: now.Add(-time.Hour),
				Changes: []string{"remove cm/CM-0/update.zip"}}},
		devices: map[string]*DeviceView{"dev-42": {
			Device: &handsets.Device{ID: "dev-42", Model: "PX-8", Build: "7.4.1", Channel: "stable", Region: "DE",
				InstalledPatches: []string{"CM-2025-004"}, CloudMessaging: handsets.MessagingAutoEnabled, LastSeen: now},
			Patches: []handsets.PatchState{{PatchID: "CM-1", State: handsets.StateFailed, ErrorCode: "E_NO_SPACE", At: now}},
			Reports: []handsets.Report{{ID: "r1", DeviceID: "dev-42", PatchID: "CM-1", Target: "cm/CM-1/update.zip",
				State: handsets.StateFailed, ErrorCode: "E_NO_SPACE", At: now, ReceivedAt: now}}}},
	}
}

func newEnv(tb testing.TB) *env {
	tb.Helper()
	id := newFakeIdentity()
	e := &env{id: id, audit: &fakeAudit{}, anchor: &fakeAnchor{}, backend: sampleBackend(tb), cookies: map[string]*http.Cookie{}, csrf: map[string]string{}}
	e.users = identity.Users{Store: id, Limiter: identity.NewLoginLimiter(3, 15*time.Minute),
		Devices: &identity.DeviceCookies{Key: []byte("device cookie key of the web tests")}}
	h, err := New(Options{Backend: e.backend, Users: e.users, Sessions: identity.Sessions{Store: id},
		Tokens: identity.Tokens{Store: id, Users: id}, Audit: e.audit, AuditAnchor: e.anchor, Banner: "DEMO — development-only keys"})
	if err != nil {
		tb.Fatal(err)
	}
	e.h = h
	for _, role := range identity.Roles {
		u, err := e.users.Create(context.Background(), role+"-user", role, testPassword, false)
		if err != nil {
			tb.Fatal(err)
		}
		secret, s, err := identity.Sessions{Store: id}.Start(context.Background(), u)
		if err != nil {
			tb.Fatal(err)
		}
		e.cookies[role] = &http.Cookie{Name: CookieName, Value: secret}
		e.csrf[role] = s.CSRFToken
	}
	return e
}

// do sends a request as role ("" for none); form, when set, is the POST
// body.
func (e *env) do(tb testing.TB, role, method, target string, form url.Values, hdr ...string) *httptest.ResponseRecorder {
	tb.Helper()
	var body io.Reader
	if form != nil {
		body = strings.NewReader(form.Encode())
	}
	req := httptest.NewRequest(method, target, body)
	if form != nil {
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	}
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	if c := e.cookies[role]; c != nil {
		req.AddCookie(c)
	}
	rec := httptest.NewRecorder()
	e.h.ServeHTTP(rec, req)
	return rec
}

// post sends a form as role with its CSRF token.
func (e *env) post(tb testing.TB, role, target string, form url.Values) *httptest.ResponseRecorder {
	tb.Helper()
	if form == nil {
		form = url.Values{}
	}
	form.Set("csrf", e.csrf[role])
	return e.do(tb, role, "POST", target, form)
}

func TestPagesRender(t *testing.T) {
	e := newEnv(t)
	tests := []struct {
		name, path string
		want       []string
	}{
		{"overview", "/", []string{"654,321", "120,000", "18.3%", "<svg", "ro-1", "12,346", "targets expires in 10 days", "d-7", "1 of 2 signatures", "DEMO — development-only keys", "compliant on <strong>", "PX-8", "DE"}},
		{"overview live", "/?part=live", []string{"654,321", "ro-1"}},
		{"rollouts", "/rollouts", []string{"ro-1", "cm/CM-1/update.zip", "running"}},
		{"rollout", "/rollouts/ro-1", []string{"123,456", "12,346", "9,876", "1,111", "222", "8,001", "333", "E_NO_SPACE", "too many failures", "looks healthy", "<svg", "1h30m"}},
		{"rollout live", "/rollouts/ro-1?part=live", []string{"123,456", "8,001"}},
		{"rollout confirmed", "/rollouts/ro-1", []string{`data-count="confirmed">7,802<`, `<td class="n">7,404</td>`,
			"Offer to confirmation: median 2h30m, 95th percentile 8h20m (7,802 confirmed)"}},
		{"releases", "/releases", []string{"cm/CM-1/update.zip", "opt-in", "d-7", "1 of 2", "4f1e2d3c4b5a", "remove cm/CM-0/update.zip"}},
		{"devices", "/devices", []string{`name="id"`, `href="/devices/dev-42"`}},
		{"device", "/devices/dev-42", []string{"dev-42", "PX-8", "auto_enabled", "E_NO_SPACE", "CM-2025-004"}},
		{"audit", "/audit", []string{"but NOT anchored: no checkpoints yet."}},
		{"tokens", "/tokens", []string{"Mint token"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			rec := e.do(t, identity.RoleViewer, "GET", tc.path, nil)
			if rec.Code != http.StatusOK {
				t.Fatalf("GET %s: status %d, want 200\n%s", tc.path, rec.Code, rec.Body)
			}
			body := rec.Body.String()
			for _, w := range tc.want {
				if !strings.Contains(body, w) && !strings.Contains(body, htmlEscaped(w)) {
					t.Errorf("GET %s: page lacks %q", tc.path, w)
				}
			}
			if strings.Contains(tc.path, "part=live") && strings.Contains(body, "<html") {
				t.Errorf("GET %s: the live part came with the layout", tc.path)
			}
		})
	}
	t.Run("users as admin", func(t *testing.T) {
		rec := e.do(t, identity.RoleAdmin, "GET", "/users", nil)
		if rec.Code != http.StatusOK || !strings.Contains(rec.Body.String(), "viewer-user") {
			t.Fatalf("status %d, want 200 listing viewer-user", rec.Code)
		}
	})
}

func htmlEscaped(s string) string {
	return strings.NewReplacer("<", "&lt;", ">", "&gt;", "&", "&amp;", `"`, "&#34;").Replace(s)
}

// TestMasking: a breakdown cell of 1 to 4 handsets shows <5, never the
// number; 0 shows as 0.
func TestMasking(t *testing.T) {
	for _, tc := range []struct {
		n    int64
		want string
	}{{0, "0"}, {1, "<5"}, {3, "<5"}, {4, "<5"}, {5, "5"}, {1234, "1,234"}, {1234567, "1,234,567"}} {
		if got := Cell(tc.n); got != tc.want {
			t.Errorf("Cell(%d) = %q, want %q", tc.n, got, tc.want)
		}
	}
	e := newEnv(t)
	// RARE-1 has 4 active handsets, E_RARE 3 failures, build 7.4.1 4
	// eligible, QZ-2 2 failed: each cell shows <5, never the number.
	// QZ-2's target, confirmations and rollbacks are 0, which shows as 0.
	for _, tc := range []struct {
		path string
		re   string
	}{
		{"/", `RARE-1</td><td class="n">&lt;5</td><td class="n">&lt;5</td><td class="n">&lt;5</td>`},
		{"/rollouts/ro-1", `<code>E_RARE</code></td><td class="n">&lt;5</td>`},
		{"/rollouts/ro-1", `7\.4\.1</td><td class="n">&lt;5</td><td class="n">4,444</td>`},
		{"/rollouts/ro-1", `QZ-2</td><td class="n">23,456</td><td class="n">0</td><td class="n">876</td><td class="n">501</td><td class="n">0</td><td class="n">&lt;5</td><td class="n">0</td>`},
	} {
		body := e.do(t, identity.RoleViewer, "GET", tc.path, nil).Body.String()
		if !regexp.MustCompile(tc.re).MatchString(body) {
			t.Errorf("GET %s: no match for %s", tc.path, tc.re)
		}
	}
}

func TestPermissions(t *testing.T) {
	e := newEnv(t)
	tests := []struct {
		name, role, method, path string
		form                     url.Values
		want                     int
	}{
		{"viewer users page", identity.RoleViewer, "GET", "/users", nil, 403},
		{"operator users page", identity.RoleOperator, "GET", "/users", nil, 403},
		{"release engineer users page", identity.RoleReleaseEngineer, "GET", "/users", nil, 403},
		{"admin users page", identity.RoleAdmin, "GET", "/users", nil, 200},
		{"viewer forged pause", identity.RoleViewer, "POST", "/rollouts/ro-1/pause", url.Values{"reason": {"x"}, "confirm": {"yes"}}, 403},
		{"operator pause", identity.RoleOperator, "POST", "/rollouts/ro-1/pause", url.Values{"reason": {"x"}, "confirm": {"yes"}}, 303},
		{"viewer create user", identity.RoleViewer, "POST", "/users", url.Values{"name": {"eve"}, "role": {"admin"}, "password": {testPassword}}, 403},
		{"operator set role", identity.RoleOperator, "POST", "/users/viewer-user/role", url.Values{"role": {"admin"}}, 403},
		{"viewer mints own token", identity.RoleViewer, "POST", "/tokens", url.Values{"name": {"laptop"}}, 200},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var rec *httptest.ResponseRecorder
			if tc.method == "POST" {
				rec = e.post(t, tc.role, tc.path, tc.form)
			} else {
				rec = e.do(t, tc.role, tc.method, tc.path, nil)
			}
			if rec.Code != tc.want {
				t.Fatalf("%s %s as %s: status %d, want %d\n%s", tc.method, tc.path, tc.role, rec.Code, tc.want, rec.Body)
			}
			if tc.want == 403 && !strings.Contains(rec.Body.String(), "does not allow") {
				t.Errorf("the 403 page does not say why:\n%s", rec.Body)
			}
		})
	}
	if len(e.backend.changes) != 1 || e.backend.changes[0].Actor != "operator-user" {
		t.Errorf("changes %+v, want one pause by operator-user", e.backend.changes)
	}
	if u, _, _ := e.id.UserByName(context.Background(), "viewer-user"); u.Role != identity.RoleViewer {
		t.Errorf("viewer-user's role is %s after a forbidden change", u.Role)
	}
}

func TestActionButtonsByRole(t *testing.T) {
	e := newEnv(t)
	viewer := e.do(t, identity.RoleViewer, "GET", "/rollouts/ro-1", nil).Body.String()
	if strings.Contains(viewer, `action="/rollouts/ro-1/pause"`) {
		t.Error("a viewer sees the pause button")
	}
	if strings.Contains(viewer, `href="/users"`) {
		t.Error("a viewer sees the users link")
	}
	op := e.do(t, identity.RoleOperator, "GET", "/rollouts/ro-1", nil).Body.String()
	for _, a := range []string{"pause", "abort", "advance"} {
		if !strings.Contains(op, `action="/rollouts/ro-1/`+a+`"`) {
			t.Errorf("an operator does not see %s", a)
		}
	}
	if strings.Contains(op, `action="/rollouts/ro-1/resume"`) {
		t.Error("resume offered for a running rollout")
	}
}

func TestRolloutActionConfirm(t *testing.T) {
	e := newEnv(t)
	// No reason: refused, nothing changes.
	rec := e.post(t, identity.RoleOperator, "/rollouts/ro-1/pause", url.Values{"reason": {" "}})
	if rec.Code != http.StatusBadRequest || !strings.Contains(rec.Body.String(), "needs a reason") {
		t.Fatalf("no reason: status %d, want 400 asking for one", rec.Code)
	}
	// First step: the confirmation page, nothing changes yet.
	rec = e.post(t, identity.RoleOperator, "/rollouts/ro-1/pause", url.Values{"reason": {"battery drain reports"}})
	body := rec.Body.String()
	if rec.Code != http.StatusOK || !strings.Contains(body, "pause rollout <strong>ro-1</strong>") ||
		!strings.Contains(body, `name="confirm" value="yes"`) || !strings.Contains(body, `value="battery drain reports"`) {
		t.Fatalf("confirmation page: status %d\n%s", rec.Code, body)
	}
	if len(e.backend.changes) != 0 {
		t.Fatalf("changed before confirmation: %+v", e.backend.changes)
	}
	// Second step.
	rec = e.post(t, identity.RoleOperator, "/rollouts/ro-1/advance", url.Values{"reason": {"healthy"}, "percent": {"25"}, "confirm": {"yes"}})
	if rec.Code != http.StatusSeeOther || rec.Header().Get("Location") != "/rollouts/ro-1" {
		t.Fatalf("confirmed advance: status %d, location %q", rec.Code, rec.Header().Get("Location"))
	}
	want := recordedChange{ID: "ro-1", Actor: "operator-user", Change: RolloutChange{Action: "advance", Reason: "healthy", Percent: 25}}
	if len(e.backend.changes) != 1 || e.backend.changes[0] != want {
		t.Errorf("changes %+v, want %+v", e.backend.changes, want)
	}
	// Past 50% the advance waits for a second person: the page says so.
	rec = e.post(t, identity.RoleOperator, "/rollouts/ro-1/advance", url.Values{"reason": {"go wide"}, "percent": {"100"}, "confirm": {"yes"}})
	if body := rec.Body.String(); rec.Code != http.StatusAccepted || !strings.Contains(body, "needs a second person&#39;s approval (ap-9)") ||
		!strings.Contains(body, "You asked for it") {
		t.Errorf("advance to 100%%: %d\n%s", rec.Code, body)
	}
	if rec := e.post(t, identity.RoleOperator, "/rollouts/ro-1/explode", url.Values{"reason": {"x"}}); rec.Code != http.StatusNotFound {
		t.Errorf("unknown action: status %d, want 404", rec.Code)
	}
}

func TestApprovals(t *testing.T) {
	e := newEnv(t)
	now := time.Now().UTC()
	e.backend.approvals = []*rollout.Approval{{ID: "ap-1", RolloutID: "ro-1", Action: rollout.ActionAdvance, ToPercent: 100,
		RequestedBy: "operator-user", RequestedAt: now, Reason: "all green", State: rollout.ApprovalPending}}
	// The requester sees no approve button; another operator does.
	if body := e.do(t, identity.RoleOperator, "GET", "/rollouts/ro-1", nil).Body.String(); strings.Contains(body, "/approvals/ap-1/approve") ||
		!strings.Contains(body, "You asked for it") {
		t.Error("the requester is offered to approve their own request")
	}
	if body := e.do(t, identity.RoleViewer, "GET", "/rollouts/ro-1", nil).Body.String(); strings.Contains(body, "/approvals/ap-1/approve") {
		t.Error("a viewer is offered to approve")
	}
	body := e.do(t, identity.RoleReleaseEngineer, "GET", "/rollouts/ro-1", nil).Body.String()
	if !strings.Contains(body, `action="/rollouts/ro-1/approvals/ap-1/approve"`) || !strings.Contains(body, "all green") {
		t.Fatalf("another operator is not offered to approve:\n%s", body)
	}
	if rec := e.post(t, identity.RoleViewer, "/rollouts/ro-1/approvals/ap-1/approve", url.Values{"reason": {"ok"}}); rec.Code != http.StatusForbidden {
		t.Errorf("viewer approves: %d, want 403", rec.Code)
	}
	if rec := e.post(t, identity.RoleOperator, "/rollouts/ro-1/approvals/ap-1/approve", url.Values{"reason": {"ok"}}); rec.Code != http.StatusForbidden ||
		!strings.Contains(rec.Body.String(), "second person") {
		t.Errorf("self-approval: %d, want 403 saying a second person must approve", rec.Code)
	}
	if rec := e.post(t, identity.RoleReleaseEngineer, "/rollouts/ro-1/approvals/ap-1/approve", url.Values{"reason": {" "}}); rec.Code != http.StatusBadRequest {
		t.Errorf("approval without a reason: %d, want 400", rec.Code)
	}
	if rec := e.post(t, identity.RoleReleaseEngineer, "/rollouts/ro-1/approvals/ap-1/approve", url.Values{"reason": {"checked the numbers"}}); rec.Code != http.StatusSeeOther {
		t.Fatalf("approval: %d, want 303", rec.Code)
	}
	if a := e.backend.approvals[0]; a.State != rollout.ApprovalApproved || a.DecidedBy != "release-engineer-user" || a.DecisionReason != "checked the numbers" {
		t.Errorf("approval %+v, want approved by release-engineer-user", a)
	}
}

func TestNoSession(t *testing.T) {
	e := newEnv(t)
	rec := e.do(t, "", "GET", "/rollouts/ro-1?part=live", nil)
	if rec.Code != http.StatusSeeOther || rec.Header().Get("Location") != "/login?next="+url.QueryEscape("/rollouts/ro-1?part=live") {
		t.Errorf("GET without session: %d to %q, want 303 to the login page", rec.Code, rec.Header().Get("Location"))
	}
	rec = e.do(t, "", "POST", "/rollouts/ro-1/pause", url.Values{"reason": {"x"}, "confirm": {"yes"}})
	if rec.Code != http.StatusForbidden {
		t.Errorf("POST without session: %d, want 403", rec.Code)
	}
	// A cookie of no session is no session.
	e.cookies["ghost"] = &http.Cookie{Name: CookieName, Value: "s_0123"}
	if rec := e.do(t, "ghost", "GET", "/", nil); rec.Code != http.StatusSeeOther {
		t.Errorf("GET with an unknown session: %d, want 303", rec.Code)
	}
	if rec := e.do(t, "", "GET", "/static/style.css", nil); rec.Code != 200 || !strings.HasPrefix(rec.Header().Get("Content-Type"), "text/css") {
		t.Errorf("static without session: %d %s, want 200 text/css", rec.Code, rec.Header().Get("Content-Type"))
	}
	if rec := e.do(t, "", "GET", "/static/", nil); rec.Code != 404 {
		t.Errorf("static directory: %d, want 404", rec.Code)
	}
	if len(e.backend.changes) != 0 {
		t.Errorf("changed without a session: %+v", e.backend.changes)
	}
}

func TestCSRF(t *testing.T) {
	e := newEnv(t)
	for _, tc := range []struct {
		name string
		csrf *string
	}{{"missing", nil}, {"wrong", ptr("0000")}, {"other session's", ptr(e.csrf[identity.RoleAdmin])}} {
		t.Run(tc.name, func(t *testing.T) {
			form := url.Values{"reason": {"x"}, "confirm": {"yes"}}
			if tc.csrf != nil {
				form.Set("csrf", *tc.csrf)
			}
			rec := e.do(t, identity.RoleOperator, "POST", "/rollouts/ro-1/pause", form)
			if rec.Code != http.StatusForbidden || !strings.Contains(rec.Body.String(), "CSRF") {
				t.Errorf("status %d, want 403 naming CSRF", rec.Code)
			}
		})
	}
	if len(e.backend.changes) != 0 {
		t.Errorf("changed without a valid CSRF token: %+v", e.backend.changes)
	}
}

func ptr[T any](v T) *T { return &v }

func TestCrossOrigin(t *testing.T) {
	e := newEnv(t)
	form := func() url.Values {
		return url.Values{"reason": {"x"}, "confirm": {"yes"}, "csrf": {e.csrf[identity.RoleOperator]}}
	}
	for _, tc := range []struct {
		name string
		hdr  []string
		want int
	}{
		{"sec-fetch-site cross-site", []string{"Sec-Fetch-Site", "cross-site"}, 403},
		{"origin elsewhere", []string{"Origin", "https://evil.example"}, 403},
		{"same origin", []string{"Sec-Fetch-Site", "same-origin"}, 303},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rec := e.do(t, identity.RoleOperator, "POST", "/rollouts/ro-1/pause", form(), tc.hdr...)
			if rec.Code != tc.want {
				t.Errorf("status %d, want %d", rec.Code, tc.want)
			}
		})
	}
	// The login form too: a cross-site login would fix a session.
	rec := e.do(t, "", "POST", "/login", url.Values{"name": {"admin-user"}, "password": {testPassword}}, "Sec-Fetch-Site", "cross-site")
	if rec.Code != http.StatusForbidden {
		t.Errorf("cross-site login: status %d, want 403", rec.Code)
	}
	if len(e.backend.changes) != 1 {
		t.Errorf("changes %+v, want only the same-origin one", e.backend.changes)
	}
}

func TestSecurityHeaders(t *testing.T) {
	e := newEnv(t)
	for _, tc := range []struct{ role, path string }{
		{identity.RoleViewer, "/"}, {"", "/login"}, {identity.RoleViewer, "/users"}, {"", "/static/live.js"}, {"", "/rollouts"},
	} {
		rec := e.do(t, tc.role, "GET", tc.path, nil)
		h := rec.Header()
		for k, v := range map[string]string{"Content-Security-Policy": ContentSecurityPolicy, "X-Content-Type-Options": "nosniff",
			"Referrer-Policy": "same-origin", "X-Frame-Options": "DENY"} {
			if h.Get(k) != v {
				t.Errorf("GET %s: %s %q, want %q", tc.path, k, h.Get(k), v)
			}
		}
		if !strings.HasPrefix(tc.path, "/static/") && h.Get("Cache-Control") != "no-store" {
			t.Errorf("GET %s: Cache-Control %q, want no-store", tc.path, h.Get("Cache-Control"))
		}
		if strings.Contains(rec.Body.String(), "<script>") || strings.Contains(rec.Body.String(), " style=") {
			t.Errorf("GET %s: inline script or style", tc.path)
		}
	}
}

func TestLoginLogout(t *testing.T) {
	e := newEnv(t)
	rec := e.do(t, "", "GET", "/login?next=//evil.example/x", nil)
	if !strings.Contains(rec.Body.String(), `name="next" value="/"`) {
		t.Errorf("login page keeps a foreign next:\n%s", rec.Body)
	}
	rec = e.do(t, "", "POST", "/login", url.Values{"name": {"operator-user"}, "password": {testPassword}, "next": {"/rollouts/ro-1"}})
	if rec.Code != http.StatusSeeOther || rec.Header().Get("Location") != "/rollouts/ro-1" {
		t.Fatalf("login: status %d to %q, want 303 to /rollouts/ro-1", rec.Code, rec.Header().Get("Location"))
	}
	cookies := rec.Result().Cookies()
	if len(cookies) != 2 || cookies[1].Name != DeviceCookieName {
		t.Fatalf("cookies %v, want the session's and the device's", cookies)
	}
	c := cookies[0]
	if d := cookies[1]; !d.HttpOnly || d.SameSite != http.SameSiteStrictMode || d.Path != "/login" || d.Secure ||
		d.MaxAge != int(identity.DefaultDeviceCookieAge/time.Second) {
		t.Errorf("device cookie %+v, want HttpOnly SameSite=Strict Path=/login Max-Age=180 days (not Secure over plain HTTP)", d)
	}
	if c.Name != CookieName || !c.HttpOnly || c.SameSite != http.SameSiteStrictMode || c.Path != "/" || c.Secure || !c.Expires.IsZero() || c.MaxAge != 0 {
		t.Errorf("cookie %+v, want otad_session HttpOnly SameSite=Strict Path=/ without expiry (not Secure over plain HTTP)", c)
	}
	e.cookies["fresh"] = &http.Cookie{Name: CookieName, Value: c.Value}
	if rec := e.do(t, "fresh", "GET", "/rollouts", nil); rec.Code != 200 {
		t.Fatalf("with the new session: status %d", rec.Code)
	}
	// Over TLS the cookie is Secure.
	req := httptest.NewRequest("POST", "https://otad.example/login", strings.NewReader(url.Values{"name": {"viewer-user"}, "password": {testPassword}}.Encode()))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	tls := httptest.NewRecorder()
	e.h.ServeHTTP(tls, req)
	if cs := tls.Result().Cookies(); len(cs) != 2 || !cs[0].Secure || !cs[1].Secure {
		t.Errorf("login over TLS: cookies %v, want both Secure", cs)
	}

	// Logout needs the session's CSRF token, ends the session server
	// side and clears the cookie.
	s, _, err := identity.Sessions{Store: e.id}.Lookup(context.Background(), c.Value)
	if err != nil {
		t.Fatal(err)
	}
	rec = e.do(t, "fresh", "POST", "/logout", url.Values{"csrf": {s.CSRFToken}})
	if rec.Code != http.StatusSeeOther || rec.Header().Get("Location") != "/login" {
		t.Fatalf("logout: status %d to %q", rec.Code, rec.Header().Get("Location"))
	}
	if cs := rec.Result().Cookies(); len(cs) != 1 || cs[0].MaxAge >= 0 || cs[0].Value != "" {
		t.Errorf("logout cookies %v, want the session cookie cleared", cs)
	}
	if rec := e.do(t, "fresh", "GET", "/rollouts", nil); rec.Code != http.StatusSeeOther {
		t.Errorf("after logout: status %d, want 303 to login", rec.Code)
	}
	var actions []string
	for _, a := range e.audit.entries {
		actions = append(actions, a.Actor+" "+a.Action)
	}
	if got := strings.Join(actions, ", "); got != "operator-user session.login, viewer-user session.login, operator-user session.logout" {
		t.Errorf("audit %s", got)
	}
}

func TestLoginRateLimit(t *testing.T) {
	e := newEnv(t)
	for i := range 3 {
		rec := e.do(t, "", "POST", "/login", url.Values{"name": {"admin-user"}, "password": {"wrong password!"}})
		if rec.Code != http.StatusUnauthorized || !strings.Contains(rec.Body.String(), "wrong user name or password") {
			t.Fatalf("attempt %d: status %d, want 401", i+1, rec.Code)
		}
	}
	rec := e.do(t, "", "POST", "/login", url.Values{"name": {"admin-user"}, "password": {testPassword}})
	if rec.Code != http.StatusTooManyRequests || !strings.Contains(rec.Body.String(), "Too many attempts, try again in 15 minutes") {
		t.Fatalf("after 3 failures: status %d\n%s", rec.Code, rec.Body)
	}
	if len(rec.Result().Cookies()) != 0 {
		t.Error("a session was started for a locked account")
	}
}

// TestDeviceCookieBeatsLockout is the probe's lockout abuse: anyone can
// lock an account with wrong passwords. The owner's browser, which
// logged in before and holds the account's device cookie, still logs
// in; a browser without one (or with another account's) waits for the
// lockout to end. The failures and the lockout are audited, never the
// password tried.
func TestDeviceCookieBeatsLockout(t *testing.T) {
	e := newEnv(t)
	now := time.Date(2026, 12, 15, 12, 0, 0, 0, time.UTC)
	users := e.users
	users.Now = func() time.Time { return now }
	h, err := New(Options{Backend: e.backend, Users: users, Sessions: identity.Sessions{Store: e.id},
		Tokens: identity.Tokens{Store: e.id, Users: e.id}, Audit: e.audit})
	if err != nil {
		t.Fatal(err)
	}
	e.h = h
	login := func(name, password string, cookies ...*http.Cookie) *httptest.ResponseRecorder {
		t.Helper()
		req := httptest.NewRequest("POST", "/login", strings.NewReader(url.Values{"name": {name}, "password": {password}}.Encode()))
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		for _, c := range cookies {
			req.AddCookie(c)
		}
		rec := httptest.NewRecorder()
		e.h.ServeHTTP(rec, req)
		return rec
	}
	deviceOf := func(rec *httptest.ResponseRecorder) *http.Cookie {
		t.Helper()
		for _, c := range rec.Result().Cookies() {
			if c.Name == DeviceCookieName {
				return &http.Cookie{Name: c.Name, Value: c.Value}
			}
		}
		t.Fatalf("no device cookie in %v", rec.Result().Cookies())
		return nil
	}
	// The admin logged in from this browser last week; the viewer from
	// another.
	rec := login("admin-user", testPassword)
	if rec.Code != http.StatusSeeOther {
		t.Fatalf("first login: %d", rec.Code)
	}
	adminDevice := deviceOf(rec)
	viewerDevice := deviceOf(login("viewer-user", testPassword))
	e.audit.entries = nil

	// An attacker, without the cookie, locks the admin out.
	const attempt = "hunter2 is not it"
	for i := range 3 {
		if rec := login("admin-user", attempt); rec.Code != http.StatusUnauthorized {
			t.Fatalf("attacker's attempt %d: %d, want 401", i+1, rec.Code)
		}
	}
	if rec := login("admin-user", testPassword); rec.Code != http.StatusTooManyRequests {
		t.Fatalf("a browser without the cookie, right password: %d, want 429", rec.Code)
	}
	if rec := login("admin-user", testPassword, viewerDevice); rec.Code != http.StatusTooManyRequests {
		t.Errorf("with the viewer's device cookie: %d, want 429 (the cookie names another account)", rec.Code)
	}
	// The admin's own browser gets in, and gets a new cookie.
	rec = login("admin-user", testPassword, adminDevice)
	if rec.Code != http.StatusSeeOther {
		t.Fatalf("the admin's browser with its device cookie: %d, want 303\n%s", rec.Code, rec.Body)
	}
	if renewed := deviceOf(rec); renewed.Value == adminDevice.Value {
		t.Error("the device cookie was not renewed at login")
	}
	// Still locked for everyone else until the failures age out.
	now = now.Add(14 * time.Minute)
	if rec := login("admin-user", testPassword); rec.Code != http.StatusTooManyRequests {
		t.Errorf("a browser without the cookie 14 minutes on: %d, want 429", rec.Code)
	}
	now = now.Add(time.Minute)
	if rec := login("admin-user", testPassword); rec.Code != http.StatusSeeOther {
		t.Errorf("a browser without the cookie once the lockout ended: %d, want 303", rec.Code)
	}

	// A device cookie has its own count: three wrong passwords with it
	// lock that cookie, not the account.
	for range 3 {
		login("viewer-user", "a typo typo typo", viewerDevice)
	}
	if rec := login("viewer-user", testPassword, viewerDevice); rec.Code != http.StatusTooManyRequests {
		t.Errorf("the viewer's cookie after its 3 failures: %d, want 429", rec.Code)
	}
	if rec := login("viewer-user", testPassword); rec.Code != http.StatusSeeOther {
		t.Errorf("the viewer from a browser without a cookie: %d, want 303 (the account is not locked)", rec.Code)
	}

	var got []string
	for _, a := range e.audit.entries {
		got = append(got, a.Actor+" "+a.Action+" "+a.Object+" "+a.Detail)
		if strings.Contains(a.Detail+a.Object+a.Reason, "hunter2") || strings.Contains(a.Detail+a.Object+a.Reason, "typo") {
			t.Errorf("an entry holds the password tried: %+v", a)
		}
	}
	want := []string{
		`(anonymous) session.login_failed admin-user {"client":"untrusted","failures":"1"}`,
		`(anonymous) session.login_failed admin-user {"client":"untrusted","failures":"2"}`,
		`(anonymous) session.login_failed admin-user {"client":"untrusted","failures":"3"}`,
		`system user.locked admin-user {"client":"untrusted","failures":"3","until":"` + now.Format(time.RFC3339) + `"}`,
		"admin-user session.login admin-user ",
		"admin-user session.login admin-user ",
		`(anonymous) session.login_failed viewer-user {"client":"device","failures":"1"}`,
		`(anonymous) session.login_failed viewer-user {"client":"device","failures":"2"}`,
		`(anonymous) session.login_failed viewer-user {"client":"device","failures":"3"}`,
		`system user.locked viewer-user {"client":"device","failures":"3","until":"` + now.Add(15*time.Minute).Format(time.RFC3339) + `"}`,
		"viewer-user session.login viewer-user ",
	}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("audit:\n got %s\nwant %s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}

func TestUsersAndTokens(t *testing.T) {
	e := newEnv(t)
	admin := identity.RoleAdmin
	if rec := e.post(t, admin, "/users", url.Values{"name": {"carol"}, "role": {"operator"}, "password": {testPassword}}); rec.Code != http.StatusSeeOther {
		t.Fatalf("create user: %d\n%s", rec.Code, rec.Body)
	}
	if rec := e.post(t, admin, "/users", url.Values{"name": {"dave"}, "role": {"operator"}, "password": {"short"}}); rec.Code != http.StatusBadRequest || !strings.Contains(rec.Body.String(), "password") {
		t.Errorf("short password: %d, want 400 naming the password", rec.Code)
	}
	if rec := e.post(t, admin, "/users/carol/role", url.Values{"role": {"release-engineer"}}); rec.Code != http.StatusSeeOther {
		t.Fatalf("set role: %d", rec.Code)
	}
	if rec := e.post(t, admin, "/users/carol/disable", nil); rec.Code != http.StatusSeeOther {
		t.Fatalf("disable: %d", rec.Code)
	}
	if rec := e.post(t, admin, "/users/admin-user/disable", nil); rec.Code != http.StatusConflict {
		t.Errorf("disabling oneself: %d, want 409", rec.Code)
	}
	u, _, _ := e.id.UserByName(context.Background(), "carol")
	if u.Role != identity.RoleReleaseEngineer || !u.Disabled {
		t.Errorf("carol %+v, want a disabled release-engineer", u)
	}

	// A viewer mints a token: the secret shows once.
	rec := e.post(t, identity.RoleViewer, "/tokens", url.Values{"name": {"laptop"}})
	secret := regexp.MustCompile(`otad_[a-z2-7]+`).FindString(rec.Body.String())
	if rec.Code != 200 || secret == "" {
		t.Fatalf("mint: %d, no secret shown", rec.Code)
	}
	p, err := identity.Tokens{Store: e.id, Users: e.id}.Authenticate(context.Background(), secret)
	if err != nil || p.Actor() != "viewer-user" {
		t.Fatalf("the shown secret: %v, %v", p, err)
	}
	if strings.Contains(e.do(t, identity.RoleViewer, "GET", "/tokens", nil).Body.String(), secret) {
		t.Error("the secret shows again on the tokens page")
	}
	// The operator cannot revoke the viewer's token; the viewer can.
	if rec := e.post(t, identity.RoleOperator, "/tokens/"+p.TokenID+"/revoke", nil); rec.Code != http.StatusNotFound {
		t.Errorf("revoking another's token: %d, want 404", rec.Code)
	}
	if rec := e.post(t, identity.RoleViewer, "/tokens/"+p.TokenID+"/revoke", nil); rec.Code != http.StatusSeeOther {
		t.Errorf("revoking one's own token: %d, want 303", rec.Code)
	}
	if _, err := (identity.Tokens{Store: e.id, Users: e.id}).Authenticate(context.Background(), secret); err == nil {
		t.Error("the revoked token still works")
	}
	if body := e.do(t, identity.RoleViewer, "GET", "/tokens", nil).Body.String(); !strings.Contains(body, "revoked 20") {
		t.Errorf("the tokens page does not show the revocation:\n%s", body)
	}
	var got []string
	for _, a := range e.audit.entries {
		got = append(got, a.Actor+" "+a.Action+" "+a.Object)
	}
	want := "admin-user user.create carol, admin-user user.set-role carol, admin-user user.disable carol, viewer-user token.create " +
		p.TokenID + ", viewer-user token.revoke " + p.TokenID
	if strings.Join(got, ", ") != want {
		t.Errorf("audit:\n got %s\nwant %s", strings.Join(got, ", "), want)
	}
}

func TestAuditPage(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	at := time.Date(2026, 12, 1, 10, 0, 0, 0, time.UTC)
	e.audit.AppendAudit(ctx, audit.AuditEntry{At: at, Actor: "alice", Action: "rollout.pause", Object: "ro-1", Reason: "spike"},
		audit.AuditEntry{At: at.Add(time.Hour), Actor: "bob", Action: "user.create", Object: "carol"},
		audit.AuditEntry{At: at.Add(48 * time.Hour), Actor: "alice", Action: "rollout.resume", Object: "ro-1"})
	e.anchor.checkpoint(e.audit, at.Add(49*time.Hour))
	body := e.do(t, identity.RoleViewer, "GET", "/audit?actor=alice&action=rollout.&until=2026-12-02", nil).Body.String()
	if !strings.Contains(body, "Chain verified: 3 entries, checked against the signed checkpoints kept outside the database (1; the newest of entry 3, signed ") ||
		!strings.Contains(body, "rollout.pause") ||
		strings.Contains(body, "<td>rollout.resume</td>") || strings.Contains(body, "<td>user.create</td>") {
		t.Errorf("filtered audit page:\n%s", body)
	}
	e.audit.entries[1].Object = "mallory"
	body = e.do(t, identity.RoleViewer, "GET", "/audit", nil).Body.String()
	if !strings.Contains(body, "BROKEN at entry 2: its fields do not match its hash") {
		t.Errorf("tampered audit page lacks the broken banner:\n%s", body)
	}
	// The same edit with every hash after it recomputed: only the
	// checkpoint shows it.
	for i := 1; i < len(e.audit.entries); i++ {
		e.audit.entries[i].Chain(&e.audit.entries[i-1])
	}
	body = e.do(t, identity.RoleViewer, "GET", "/audit", nil).Body.String()
	if !strings.Contains(body, "BROKEN at entry 2: its hash differs from the one checkpoint 3 (signed 2026-12-03T11:00:00Z by key 01234567)") {
		t.Errorf("rewritten audit page lacks the broken banner:\n%s", body)
	}
	if rec := e.do(t, identity.RoleViewer, "GET", "/audit?since=yesterday", nil); rec.Code != http.StatusBadRequest {
		t.Errorf("bad since: %d, want 400", rec.Code)
	}
}

func TestDeviceNotFound(t *testing.T) {
	e := newEnv(t)
	if rec := e.do(t, identity.RoleViewer, "GET", "/devices/nope", nil); rec.Code != http.StatusNotFound {
		t.Errorf("unknown device: %d, want 404", rec.Code)
	}
	if rec := e.do(t, identity.RoleViewer, "GET", "/rollouts/nope", nil); rec.Code != http.StatusNotFound {
		t.Errorf("unknown rollout: %d, want 404", rec.Code)
	}
}

func TestHumanDuration(t *testing.T) {
	for d, want := range map[time.Duration]string{90 * time.Minute: "1h30m", 300 * 24 * time.Hour: "300 days",
		47 * time.Hour: "47h0m", 42 * time.Second: "42s", -3 * 24 * time.Hour: "expired 3 days ago"} {
		if got := humanDuration(d); got != want {
			t.Errorf("humanDuration(%s) = %q, want %q", d, got, want)
		}
	}
}

func TestLocalPath(t *testing.T) {
	tests := []struct{ in, want string }{
		{"", "/"},
		{"/rollouts/ro-1", "/rollouts/ro-1"},
		{"/audit?actor=a", "/audit?actor=a"},
		{"/ok/path?x=1", "/ok/path?x=1"},
		{"/a/../../b", "/b"},
		{"rollouts", "/"},
		{"//evil.example", "/"},
		{"https://evil.example/", "/"},
		{"/\\evil.example", "/"},
		{"/\\/evil.example", "/"},
		{"/x\r\nSet-Cookie: a", "/"},
		{"/\t/evil.example", "/"},
		// The probe's payloads, as the login form's next holds them
		// after the query string's own decoding, and once more decoded.
		{"/%25255C/evil.example", "/"},
		{"/%255C/evil.example", "/"},
		{"/%5C/evil.example", "/"},
		{"/%252509/evil.example", "/"},
		{"/%2509/evil.example", "/"},
		{"/%09/evil.example", "/"},
		{"/%2F/evil", "/"},
		{"/%252F/evil", "/"},
		{"/%2f%2fevil", "/"},
		{"/%0d%0aSet-Cookie:a", "/"},
		{"/%7F", "/"},
		{"/%zz", "/"},
		{"/%2525252525252525252541", "/"}, // more layers than are peeled
		{"/rollouts/ro%2D1", "/rollouts/ro-1"},
	}
	for _, tc := range tests {
		if got := localPath(tc.in); got != tc.want {
			t.Errorf("localPath(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
}

// TestLoginNextSameSite follows the probe's redirects through the pages:
// the login page's next, posted back with the login, must not leave the
// site, however many times it was percent-encoded.
func TestLoginNextSameSite(t *testing.T) {
	e := newEnv(t)
	nextRE := regexp.MustCompile(`name="next" value="([^"]*)"`)
	for _, q := range []string{"/%25255C/evil.example", "/%252509/evil.example", "/%255C%255Cevil.example", "%2F%2Fevil.example"} {
		rec := e.do(t, "", "GET", "/login?next="+q, nil)
		m := nextRE.FindStringSubmatch(rec.Body.String())
		if m == nil {
			t.Fatalf("GET /login?next=%s: no next field\n%s", q, rec.Body)
		}
		next := strings.ReplaceAll(m[1], "&amp;", "&")
		rec = e.do(t, "", "POST", "/login", url.Values{"name": {"viewer-user"}, "password": {testPassword}, "next": {next}})
		if loc := rec.Header().Get("Location"); rec.Code != http.StatusSeeOther || loc != "/" {
			t.Errorf("login with next from ?next=%s (form %q): status %d to %q, want 303 to /", q, next, rec.Code, loc)
		}
	}
}

func TestNewFailsOnBadTemplate(t *testing.T) {
	e := newEnv(t)
	good, err := parsePages(mustSub(t))
	if err != nil || len(good) == 0 {
		t.Fatalf("embedded templates: %v", err)
	}
	broken := fstest.MapFS{}
	for _, n := range []string{"layout.html", "login.html", "error.html", "overview.html", "rollouts.html", "rollout.html",
		"confirm.html", "releases.html", "device.html", "audit.html", "users.html", "tokens.html"} {
		b, err := templateFS.ReadFile("templates/" + n)
		if err != nil {
			t.Fatal(err)
		}
		broken[n] = &fstest.MapFile{Data: b}
	}
	broken["rollout.html"] = &fstest.MapFile{Data: []byte(`{{define "content"}}{{if .Data}}unclosed{{end}}`)}
	opts := e.h.opts
	opts.Templates = broken
	if _, err := New(opts); err == nil || !strings.Contains(err.Error(), "rollout.html") {
		t.Errorf("New with a broken template: %v, want an error naming rollout.html", err)
	}
	delete(broken, "rollout.html")
	if _, err := New(opts); err == nil || !strings.Contains(err.Error(), "rollout.html is missing") {
		t.Errorf("New without a page: %v, want an error naming it", err)
	}
}

func mustSub(tb testing.TB) fstest.MapFS {
	tb.Helper()
	m := fstest.MapFS{}
	entries, err := templateFS.ReadDir("templates")
	if err != nil {
		tb.Fatal(err)
	}
	for _, en := range entries {
		b, _ := templateFS.ReadFile("templates/" + en.Name())
		m[en.Name()] = &fstest.MapFile{Data: b}
	}
	return m
}

func TestRoutes(t *testing.T) {
	e := newEnv(t)
	seen := map[string]bool{}
	for _, r := range e.h.Routes() {
		key := r.Method + " " + r.Pattern
		if seen[key] {
			t.Errorf("route %s twice", key)
		}
		seen[key] = true
		if !r.Public && r.Perm == "" {
			t.Errorf("route %s needs a session but names no permission", key)
		}
		for _, p := range []string{"/api/", "/tuf", "/targets", "/healthz", "/readyz", "/metrics", "/openapi"} {
			if strings.HasPrefix(r.Pattern, p) {
				t.Errorf("route %s collides with %s", key, p)
			}
		}
	}
	for _, want := range []string{"GET /login", "POST /login", "POST /logout", "GET /", "GET /rollouts", "GET /rollouts/{id}",
		"GET /rollouts/new", "POST /rollouts", "POST /rollouts/{id}/{action}", "POST /rollouts/{id}/models/{model}/{action}", "POST /rollouts/{id}/approvals/{aid}/{verdict}", "GET /releases", "GET /devices", "GET /audit", "GET /users", "POST /users",
		"POST /users/{name}/{change}", "GET /tokens", "POST /tokens", "POST /tokens/{id}/revoke", "GET /static/{file...}"} {
		if !seen[want] {
			t.Errorf("route %s missing", want)
		}
	}
}

// TestRouteRoles sends every session route as every role: a role
// without the route's permission gets the 403 page saying so, and a role
// with it never does.
func TestRouteRoles(t *testing.T) {
	e := newEnv(t)
	fill := strings.NewReplacer("{id}", "ro-1", "{model}", "PX-8", "{action}", "pause", "{aid}", "ap-1", "{verdict}", "reject",
		"{name}", "viewer-user", "{change}", "enable")
	for _, r := range e.h.Routes() {
		if r.Public || r.Pattern == "/logout" { // logout would end the sessions the others use
			continue
		}
		path := fill.Replace(r.Pattern)
		if strings.HasPrefix(r.Pattern, "/tokens/") {
			path = "/tokens/t-none/revoke"
		}
		for _, role := range identity.Roles {
			t.Run(r.Method+" "+r.Pattern+" as "+role, func(t *testing.T) {
				var rec *httptest.ResponseRecorder
				if r.Method == "POST" {
					rec = e.post(t, role, path, url.Values{"reason": {"test"}, "name": {"x-" + role}, "role": {"viewer"}})
				} else {
					rec = e.do(t, role, r.Method, path, nil)
				}
				denied := strings.Contains(rec.Body.String(), "does not allow")
				if can := identity.RoleCan(role, r.Perm); can == denied || (denied && rec.Code != http.StatusForbidden) {
					t.Errorf("%s %s as %s: %d, denied %v; the role has %s: %v\n%s", r.Method, path, role, rec.Code, denied, r.Perm, can, rec.Body)
				}
			})
		}
	}
}

// When the audit log cannot take an action's entry, the page does not
// show the action as a success: it says the change was made and not to
// repeat it; a login the log cannot show does not happen.
func TestNotAuditedIsNoSuccess(t *testing.T) {
	e := newEnv(t)
	e.audit.fail = errors.New("disk full")
	rec := e.post(t, identity.RoleAdmin, "/users", url.Values{"name": {"dave"}, "role": {"viewer"}, "service": {"yes"}})
	if rec.Code != http.StatusInternalServerError || !strings.Contains(rec.Body.String(), "audit entry was not written") ||
		!strings.Contains(rec.Body.String(), "Do not repeat it") {
		t.Errorf("create user with the audit log failing: status %d, want 500 saying it was not audited:\n%s", rec.Code, rec.Body)
	}
	if strings.Contains(rec.Body.String(), "disk full") {
		t.Error("the page shows the store's error")
	}
	if _, _, err := e.id.UserByName(context.Background(), "dave"); err != nil {
		t.Errorf("the user was not created (%v): the change stays made, only its entry is missing", err)
	}

	sessions := func() int {
		e.id.mu.Lock()
		defer e.id.mu.Unlock()
		return len(e.id.sessions)
	}
	before := sessions()
	rec = e.do(t, "", "POST", "/login", url.Values{"name": {"operator-user"}, "password": {testPassword}})
	if rec.Code != http.StatusInternalServerError || len(rec.Result().Cookies()) != 0 {
		t.Errorf("login with the audit log failing: status %d, cookies %v; want 500 and no session cookie", rec.Code, rec.Result().Cookies())
	}
	if n := sessions(); n != before {
		t.Errorf("sessions: %d before the unaudited login, %d after; want it ended", before, n)
	}
}

// An operator creates a rollout from the form: it shows the published
// releases and the policy defaults, refuses what it cannot use with the
// form as typed, turns the fields into the spec RolloutService takes,
// and a start at 100% waits for a second person.
func TestNewRolloutForm(t *testing.T) {
	e := newEnv(t)
	if rec := e.do(t, identity.RoleViewer, "GET", "/rollouts/new", nil); rec.Code != http.StatusForbidden {
		t.Errorf("a viewer opens the form: %d, want 403", rec.Code)
	}
	if body := e.do(t, identity.RoleViewer, "GET", "/rollouts", nil).Body.String(); strings.Contains(body, `href="/rollouts/new"`) {
		t.Error("a viewer sees the new-rollout link")
	}
	if body := e.do(t, identity.RoleOperator, "GET", "/rollouts", nil).Body.String(); !strings.Contains(body, `href="/rollouts/new"`) {
		t.Error("an operator does not see the new-rollout link")
	}
	body := e.do(t, identity.RoleOperator, "GET", "/rollouts/new", nil).Body.String()
	for _, want := range []string{`<option value="cm/CM-1/update.zip"`, `placeholder="5"`, `placeholder="50"`, `name="reason" required`} {
		if !strings.Contains(body, want) {
			t.Errorf("the form lacks %s:\n%s", want, body)
		}
	}

	form := func(kv ...string) url.Values {
		v := url.Values{"release": {"cm/CM-1/update.zip"}, "stages": {"1, 10, 50, 100"}, "reason": {"privacy incident"}}
		for i := 0; i+1 < len(kv); i += 2 {
			v.Set(kv[i], kv[i+1])
		}
		return v
	}
	for _, tc := range []struct {
		name string
		form url.Values
		want string
	}{
		{"no reason", form("reason", " "), "reason: say why"},
		{"no release", form("release", ""), "release: pick a published release"},
		{"a stage that is no number", form("stages", "1, ten"), `&#34;ten&#34; is not a percent`},
		{"a failure rate above 100%", form("max_failure_rate", "120"), "max_failure_rate: a percent above 0"},
		{"a negative retry count", form("retries", "-1"), "retries: a whole number"},
		{"a bad soak", form("soak", "six hours"), "soak: a duration"},
		{"a bad window", form("window", "25:00-26:00"), "window"},
		{"an unknown release", form("release", "cm/nope.zip"), "not a published target"},
	} {
		rec := e.post(t, identity.RoleOperator, "/rollouts", tc.form)
		if rec.Code != http.StatusBadRequest || !strings.Contains(rec.Body.String(), tc.want) {
			t.Errorf("%s: status %d, want 400 saying %q:\n%s", tc.name, rec.Code, tc.want, rec.Body)
		}
		// The form shows again with what was typed.
		if tc.form.Get("stages") != "" && !strings.Contains(rec.Body.String(), `value="`+tc.form.Get("stages")+`"`) {
			t.Errorf("%s: the refused form lost the stages typed", tc.name)
		}
	}
	if n := len(e.backend.created); n != 1 {
		t.Fatalf("creations reaching the backend: %d, want only the unknown release's", n)
	}

	rec := e.post(t, identity.RoleOperator, "/rollouts", form("models", "PX-7, PX-8,", "regions", "DE", "build_min", "7.1.0",
		"max_failure_rate", "2.5", "min_results", "200", "soak", "6h", "retries", "1", "max_offers_per_minute", "500",
		"window", "01:00-05:00"))
	if rec.Code != http.StatusSeeOther || rec.Header().Get("Location") != "/rollouts/ro-new" {
		t.Fatalf("create: status %d to %q, want 303 to /rollouts/ro-new:\n%s", rec.Code, rec.Header().Get("Location"), rec.Body)
	}
	got := e.backend.created[1]
	want := rollout.DefaultPolicy()
	want.MaxFailureRate, want.MinResults, want.Soak, want.Retries, want.MaxOffersPerMinute = 0.025, 200, 6*time.Hour, 1, 500
	want.Window, _ = rollout.ParseWindow("01:00-05:00")
	if got.Actor != "operator-user" || got.Spec.Release != "cm/CM-1/update.zip" || !slices.Equal(got.Spec.Stages, []float64{1, 10, 50, 100}) ||
		!slices.Equal(got.Spec.Selector.Models, []string{"PX-7", "PX-8"}) || !slices.Equal(got.Spec.Selector.Regions, []string{"DE"}) ||
		got.Spec.Selector.Channels != nil || got.Spec.Selector.BuildMin != "7.1.0" || got.Spec.Reason != "privacy incident" ||
		got.Spec.Draft || !reflect.DeepEqual(got.Spec.Policy, want) {
		t.Errorf("spec: got %+v by %s, want the form's fields over DefaultPolicy", got.Spec, got.Actor)
	}

	rec = e.post(t, identity.RoleOperator, "/rollouts", form("stages", "100"))
	if rec.Code != http.StatusAccepted || !strings.Contains(rec.Body.String(), "needs a second person") {
		t.Errorf("a start at 100%%: status %d, want 202 saying it waits for approval:\n%s", rec.Code, rec.Body)
	}
}

// A draft shows start and abort; start goes through ChangeRollout.
func TestStartADraft(t *testing.T) {
	e := newEnv(t)
	if rec := e.post(t, identity.RoleOperator, "/rollouts", url.Values{"release": {"cm/CM-1/update.zip"}, "stages": {"10, 100"},
		"reason": {"staged"}, "draft": {"yes"}}); rec.Code != http.StatusSeeOther {
		t.Fatalf("create a draft: %d\n%s", rec.Code, rec.Body)
	}
	body := e.do(t, identity.RoleOperator, "GET", "/rollouts/ro-new", nil).Body.String()
	if !strings.Contains(body, `action="/rollouts/ro-new/start"`) || strings.Contains(body, `action="/rollouts/ro-new/pause"`) {
		t.Errorf("a draft's actions: want start (and abort), not pause:\n%s", body)
	}
	if rec := e.post(t, identity.RoleOperator, "/rollouts/ro-new/start", url.Values{"reason": {"go"}, "confirm": {"yes"}}); rec.Code != http.StatusSeeOther {
		t.Errorf("start: %d, want 303", rec.Code)
	}
	if n := len(e.backend.changes); n != 1 || e.backend.changes[0].Change.Action != rollout.ActionStart {
		t.Errorf("changes: %+v, want one start", e.backend.changes)
	}
}

// Operators hold a model or release its hold from the by-model table,
// with a reason; viewers see no such form.
func TestModelHoldForms(t *testing.T) {
	e := newEnv(t)
	body := e.do(t, identity.RoleOperator, "GET", "/rollouts/ro-1", nil).Body.String()
	for _, want := range []string{`action="/rollouts/ro-1/models/PX-8/hold"`, `action="/rollouts/ro-1/models/QZ-2/release_hold"`} {
		if !strings.Contains(body, want) {
			t.Errorf("the operator's rollout page lacks %s", want)
		}
	}
	if body := e.do(t, identity.RoleViewer, "GET", "/rollouts/ro-1", nil).Body.String(); strings.Contains(body, "/models/") {
		t.Error("a viewer sees the hold forms")
	}
	if rec := e.post(t, identity.RoleOperator, "/rollouts/ro-1/models/PX-8/hold", url.Values{"reason": {" "}}); rec.Code != http.StatusBadRequest ||
		!strings.Contains(rec.Body.String(), "needs a reason") {
		t.Errorf("a hold without a reason: %d, want 400 asking for one", rec.Code)
	}
	if rec := e.post(t, identity.RoleOperator, "/rollouts/ro-1/models/PX-8/melt", url.Values{"reason": {"x"}}); rec.Code != http.StatusNotFound {
		t.Errorf("an unknown model action: %d, want 404", rec.Code)
	}
	if rec := e.post(t, identity.RoleOperator, "/rollouts/ro-1/models/PX-8/hold", url.Values{"reason": {"battery drain on PX-8"}}); rec.Code != http.StatusSeeOther {
		t.Errorf("hold: %d, want 303", rec.Code)
	}
	if rec := e.post(t, identity.RoleOperator, "/rollouts/ro-1/models/QZ-2/release_hold", url.Values{"reason": {"fixed in 7.5.1"}}); rec.Code != http.StatusSeeOther {
		t.Errorf("release: %d, want 303", rec.Code)
	}
	want := []recordedChange{
		{ID: "ro-1", Actor: "operator-user", Change: RolloutChange{Action: rollout.ActionHold, Reason: "battery drain on PX-8", Model: "PX-8"}},
		{ID: "ro-1", Actor: "operator-user", Change: RolloutChange{Action: rollout.ActionReleaseHold, Reason: "fixed in 7.5.1", Model: "QZ-2"}},
	}
	if !slices.Equal(e.backend.changes, want) {
		t.Errorf("changes:\n got %+v\nwant %+v", e.backend.changes, want)
	}
}
