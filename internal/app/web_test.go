package app_test

import (
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"

	"github.com/patchfleet/ota/internal/apitest"
	"github.com/patchfleet/ota/internal/app"
	"github.com/patchfleet/ota/server/api"
	"github.com/patchfleet/ota/server/audit"
	"github.com/patchfleet/ota/server/identity"
	"github.com/patchfleet/ota/web"
)

// TestDashboardWiring logs in to the pages an App mounts beside the API
// and reads them through the real stores: the session, the audit entry
// of the login, the route permissions the API reports for pages.
func TestDashboardWiring(t *testing.T) {
	env := apitest.Start(t, apitest.Options{})
	a, _ := replica(t, env, app.Config{Web: app.WebConfig{Banner: "DEMO — development-only keys"}})
	const password = "a long enough password"
	if _, err := a.Users.Create(t.Context(), "olivia", identity.RoleOperator, password, false); err != nil {
		t.Fatal(err)
	}
	do := func(method, target string, form url.Values, cookie *http.Cookie) *httptest.ResponseRecorder {
		t.Helper()
		var req *http.Request
		if form != nil {
			req = httptest.NewRequest(method, target, strings.NewReader(form.Encode()))
			req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		} else {
			req = httptest.NewRequest(method, target, nil)
		}
		if cookie != nil {
			req.AddCookie(cookie)
		}
		rec := httptest.NewRecorder()
		a.API.ServeHTTP(rec, req)
		return rec
	}
	if rec := do("GET", "/", nil, nil); rec.Code != http.StatusSeeOther || rec.Header().Get("Location") != "/login?next=%2F" {
		t.Fatalf("GET / without a session: %d to %q", rec.Code, rec.Header().Get("Location"))
	}
	rec := do("POST", "/login", url.Values{"name": {"olivia"}, "password": {password}}, nil)
	cs := rec.Result().Cookies()
	// The session cookie, and the device cookie signed with the
	// database's key (migration 11).
	if rec.Code != http.StatusSeeOther || len(cs) != 2 || cs[0].Name != web.CookieName || cs[1].Name != web.DeviceCookieName {
		t.Fatalf("login: %d, cookies %v\n%s", rec.Code, cs, rec.Body)
	}
	for _, tc := range []struct {
		path string
		code int
		want string
	}{
		{"/", 200, "Repository health"},
		{"/?part=live", 200, "No rollout is running, paused, waiting to start or unfinished."},
		{"/rollouts", 200, "No rollouts yet."},
		{"/releases", 200, "Nothing published yet."},
		{"/devices/dev-none", 404, "No handset has the id dev-none."},
		{"/devices", 200, "No handset has enrolled yet."},
		{"/devices?model=PX-8&region=de", 200, "No handset has model PX-8, region DE."},
		{"/audit", 200, "but NOT anchored: no checkpoints yet"},
		{"/tokens", 200, "Mint token"},
		{"/users", 403, "does not allow"},
		{"/static/live.js", 200, "data-live"},
	} {
		rec := do("GET", tc.path, nil, cs[0])
		if rec.Code != tc.code || !strings.Contains(rec.Body.String(), tc.want) {
			t.Errorf("GET %s: %d, want %d with %q\n%.600s", tc.path, rec.Code, tc.code, tc.want, rec.Body)
		}
		if rec.Header().Get("Content-Security-Policy") == "" {
			t.Errorf("GET %s: no Content-Security-Policy", tc.path)
		}
	}
	entries, err := a.Audit.ListAudit(t.Context(), audit.AuditQuery{Action: "session.login"})
	if err != nil || len(entries) != 1 || entries[0].Actor != "olivia" {
		t.Errorf("audit of the login: %+v, %v", entries, err)
	}
	perms := a.API.RoutePermissions()
	for key, want := range map[string]api.RouteAccess{
		"GET /rollouts/:id":                  {Kind: api.AccessPermission, Permission: identity.PermRead, Session: true},
		"POST /rollouts/:id/:action":         {Kind: api.AccessPermission, Permission: identity.PermRolloutChange, Session: true},
		"POST /users/:name/:change":          {Kind: api.AccessPermission, Permission: identity.PermUserAdmin, Session: true},
		"GET /static/*":                      {Kind: api.AccessPublic},
		"POST /login":                        {Kind: api.AccessPublic},
		"GET " + api.AdminPrefix + "/whoami": {Kind: api.AccessPermission, Permission: identity.PermRead},
	} {
		if got := perms[key]; got != want {
			t.Errorf("%s needs %v, want %v", key, got, want)
		}
	}
}
