package api_test

import (
	"context"
	"maps"
	"net/http"
	"net/http/httptest"
	"net/url"
	"slices"
	"strings"
	"testing"

	"github.com/patchfleet/ota/internal/apitest"
	"github.com/patchfleet/ota/server/api"
	"github.com/patchfleet/ota/server/identity"
)

// roleCreds is one person per role, with an API token; pages get a
// fresh session per request (POST /logout ends the one it is sent with).
type roleCreds struct {
	token string // "Bearer ..."
	user  *identity.User
}

func mustRoleCreds(t *testing.T, env *apitest.Env) map[string]roleCreds {
	t.Helper()
	ctx := context.Background()
	out := map[string]roleCreds{}
	for _, role := range identity.Roles {
		u, err := env.App.Users.Create(ctx, "p-"+role, role, "correct horse battery staple", false)
		if err != nil {
			t.Fatal(err)
		}
		_, secret, err := env.App.Tokens.CreateFor(ctx, u, "test")
		if err != nil {
			t.Fatal(err)
		}
		out[role] = roleCreds{token: "Bearer " + secret, user: u}
	}
	return out
}

// concretePath fills an Echo route's parameters with values that name
// nothing: the request reaches the handler (or its permission check)
// and changes nothing.
func concretePath(p string) string {
	segs := strings.Split(p, "/")
	for i, s := range segs {
		switch {
		case s == "*":
			segs[i] = "nosuch/file.zip"
		case strings.HasPrefix(s, ":"):
			segs[i] = "nosuch-" + s[1:]
		}
	}
	return strings.Join(segs, "/")
}

// TestEndpointRoles sends every route the server declared (API and
// pages, each with what it needs, in routes.add) with no credential and
// with a credential of each role, and checks the answer against the
// declaration: 401 (or, for a page, the login redirect) without a
// credential, 403 for a role without the route's permission, neither for
// a role with it (a 400, 404 or 409 of a body that names nothing is
// fine). CheckRoutes first fails on a route Echo serves undeclared.
func TestEndpointRoles(t *testing.T) {
	env := apitest.Start(t, apitest.Options{})
	creds := mustRoleCreds(t, env)
	table := env.API.RoutePermissions()
	if err := env.API.CheckRoutes(); err != nil {
		t.Fatal(err)
	}
	var n int
	for _, key := range slices.Sorted(maps.Keys(table)) {
		a := table[key]
		method, route, _ := strings.Cut(key, " ")
		n++
		path := concretePath(route)
		t.Run(key, func(t *testing.T) {
			send := func(role string) *httptest.ResponseRecorder {
				var sessSecret, csrf string
				if role != "" && a.Session {
					secret, sess, err := env.App.Sessions.Start(context.Background(), creds[role].user)
					if err != nil {
						t.Fatal(err)
					}
					sessSecret, csrf = secret, sess.CSRFToken
				}
				var body *strings.Reader
				var ct string
				switch {
				case method != http.MethodPost && method != http.MethodPut:
					body = strings.NewReader("")
				case a.Session:
					form := url.Values{}
					if role != "" {
						form.Set("csrf", csrf)
					}
					body, ct = strings.NewReader(form.Encode()), "application/x-www-form-urlencoded"
				default:
					body, ct = strings.NewReader("{}"), "application/json"
				}
				// Bodies and parameters that name nothing break the
				// contract on purpose.
				req := apitest.OffContract(httptest.NewRequest(method, path, body))
				if ct != "" {
					req.Header.Set("Content-Type", ct)
				}
				if role != "" {
					if a.Session {
						req.AddCookie(&http.Cookie{Name: apitest.SessionCookie, Value: sessSecret})
					} else {
						req.Header.Set("Authorization", creds[role].token)
					}
				}
				rec := httptest.NewRecorder()
				env.API.ServeHTTP(rec, req)
				return rec
			}
			loginRedirect := func(rec *httptest.ResponseRecorder) bool {
				return rec.Code == http.StatusSeeOther && strings.HasPrefix(rec.Header().Get("Location"), "/login?next=")
			}
			switch a.Kind {
			case api.AccessPublic:
				// A login without a password is a 401 of its own.
				login := method == http.MethodPost && route == "/login"
				if rec := send(""); (rec.Code == http.StatusUnauthorized && !login) || rec.Code == http.StatusForbidden || loginRedirect(rec) {
					t.Errorf("public route without credentials: %d %s", rec.Code, rec.Body)
				}
			case api.AccessDevice:
				if route == "/api/v1/devices" && method == http.MethodPost {
					return // enrollment: its own secret, tested with the handset API
				}
				for _, role := range []string{"", identity.RoleAdmin} {
					// An admin token is no device token. (A check-in's
					// body is checked before its token: 400 is a refusal
					// too.)
					if rec := send(role); rec.Code != http.StatusUnauthorized && rec.Code != http.StatusBadRequest {
						t.Errorf("device route with credential %q: %d %s, want 401", role, rec.Code, rec.Body)
					}
				}
			case api.AccessPermission:
				rec := send("")
				if a.Session {
					if !loginRedirect(rec) && rec.Code != http.StatusUnauthorized && rec.Code != http.StatusForbidden {
						t.Errorf("page without a session: %d, want the login redirect, 401 or 403", rec.Code)
					}
				} else if rec.Code != http.StatusUnauthorized {
					t.Errorf("without credentials: %d %s, want 401", rec.Code, rec.Body)
				}
				for _, role := range identity.Roles {
					rec := send(role)
					denied := rec.Code == http.StatusUnauthorized || rec.Code == http.StatusForbidden || loginRedirect(rec)
					if identity.RoleCan(role, a.Permission) {
						if denied {
							t.Errorf("%s (has %s): %d %s, want it let through", role, a.Permission, rec.Code, rec.Body)
						}
					} else if rec.Code != http.StatusForbidden {
						t.Errorf("%s (lacks %s): %d %s, want 403", role, a.Permission, rec.Code, rec.Body)
					}
				}
			default:
				t.Errorf("unknown access kind %q", a.Kind)
			}
		})
	}
	if n < 40 {
		t.Errorf("only %d routes walked; the walk is not seeing the whole server", n)
	}
}
