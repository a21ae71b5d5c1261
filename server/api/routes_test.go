package api

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/labstack/echo/v4"

	"github.com/patchfleet/ota/server/identity"
)

// TestRouteDeclarationNeedsAccess: a route is mounted only through
// routes.add, which takes what the route needs; a declaration that says
// nothing (the zero RouteAccess), an unknown kind, a permission no role
// has, or a second declaration of the same route panics before Echo
// serves it.
func TestRouteDeclarationNeedsAccess(t *testing.T) {
	ok := func(c echo.Context) error { return c.NoContent(http.StatusNoContent) }
	for _, tc := range []struct {
		name string
		a    RouteAccess
		want string
	}{
		{"zero", RouteAccess{}, "no access declared"},
		{"empty permission", needs(""), `permission "" is no role's`},
		{"unknown permission", needs("rollouts:everything"), `permission "rollouts:everything" is no role's`},
		{"unknown kind", RouteAccess{Kind: "anyone"}, `unknown access kind "anyone"`},
		{"public with a permission", RouteAccess{Kind: AccessPublic, Permission: identity.PermRead}, "takes no permission"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := New(Config{})
			r := routes{s: s, g: s.echo.Group("/x"), prefix: "/x"}
			msg := panicMessage(func() { r.add(http.MethodGet, "/new", tc.a, ok) })
			if !strings.Contains(msg, "GET /x/new") || !strings.Contains(msg, tc.want) {
				t.Fatalf("panic %q, want one naming GET /x/new and %q", msg, tc.want)
			}
			for _, er := range s.echo.Routes() {
				if er.Path == "/x/new" {
					t.Fatalf("the route was mounted despite its declaration: %+v", er)
				}
			}
			if _, found := s.RoutePermissions()["GET /x/new"]; found {
				t.Fatal("the route was recorded despite its declaration")
			}
		})
	}
	t.Run("twice", func(t *testing.T) {
		s := New(Config{})
		r := routes{s: s, g: s.echo}
		msg := panicMessage(func() { r.add(http.MethodGet, "/healthz", public, ok) })
		if !strings.Contains(msg, "GET /healthz declared twice") {
			t.Fatalf("panic %q, want a second declaration refused", msg)
		}
	})
}

// TestRouteDeclarationMountsItsCheck: the permission a route declares is
// the permission checked, with no other table in between: a request
// without a principal gets 401, and the declaration is what
// RoutePermissions reports.
func TestRouteDeclarationMountsItsCheck(t *testing.T) {
	s := New(Config{})
	r := routes{s: s, g: s.echo.Group("/x"), prefix: "/x"}
	r.add(http.MethodPost, "/users/:name", needs(identity.PermUserAdmin), func(c echo.Context) error {
		return c.NoContent(http.StatusNoContent)
	})
	rec := httptest.NewRecorder()
	s.ServeHTTP(rec, httptest.NewRequest(http.MethodPost, "/x/users/bob", nil))
	if rec.Code != http.StatusUnauthorized {
		t.Fatalf("without a principal: %d %s, want 401", rec.Code, rec.Body)
	}
	if got := s.RoutePermissions()["POST /x/users/:name"]; got != needs(identity.PermUserAdmin) {
		t.Fatalf("RoutePermissions: %v, want %v", got, needs(identity.PermUserAdmin))
	}
	if err := s.CheckRoutes(); err != nil {
		t.Fatal(err)
	}
}

// TestCheckRoutesFindsUndeclared: a route mounted on Echo directly,
// around routes.add, has said nothing about who may call it; CheckRoutes
// (which New runs, and the wiring after mounting more) names it.
func TestCheckRoutesFindsUndeclared(t *testing.T) {
	s := New(Config{})
	if err := s.CheckRoutes(); err != nil {
		t.Fatalf("a fresh server: %v", err)
	}
	s.Echo().GET("/sneaky", func(c echo.Context) error { return nil })
	err := s.CheckRoutes()
	if err == nil || !strings.Contains(err.Error(), "GET /sneaky") {
		t.Fatalf("CheckRoutes = %v, want an error naming GET /sneaky", err)
	}
}

// panicMessage runs f and returns what it panicked with ("" if nothing).
func panicMessage(f func()) (msg string) {
	defer func() {
		if v := recover(); v != nil {
			msg, _ = v.(string)
			if msg == "" {
				msg = "non-string panic"
			}
		}
	}()
	f()
	return ""
}

// pagesWith is a dashboard with the given routes, for mountWeb.
type pagesWith []PageRoute

func (p pagesWith) ServeHTTP(w http.ResponseWriter, _ *http.Request) {
	w.WriteHeader(http.StatusNoContent)
}
func (p pagesWith) PageRoutes() []PageRoute { return p }

// TestPageDeclarationNeedsAccess: a dashboard page goes through the same
// declaration: one that is neither public nor names a permission is
// refused before it is mounted, and a declared one is recorded as a
// session route.
func TestPageDeclarationNeedsAccess(t *testing.T) {
	msg := panicMessage(func() { New(Config{Web: pagesWith{{Method: "GET", Pattern: "/secrets"}}}) })
	if !strings.Contains(msg, "GET /secrets") || !strings.Contains(msg, `permission "" is no role's`) {
		t.Fatalf("panic %q, want the page refused for declaring no permission", msg)
	}
	s := New(Config{Web: pagesWith{{Method: "GET", Pattern: "/rollouts/{id}", Perm: identity.PermRead}}})
	if got := s.RoutePermissions()["GET /rollouts/:id"]; got != page(identity.PermRead) {
		t.Fatalf("RoutePermissions: %v, want %v", got, page(identity.PermRead))
	}
}
