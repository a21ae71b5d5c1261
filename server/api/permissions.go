package api

import (
	"errors"
	"fmt"
	"maps"
	"net/http"
	"slices"
	"sort"
	"strings"

	"github.com/labstack/echo/v4"

	"github.com/patchfleet/ota/server/api/wire"
	"github.com/patchfleet/ota/server/errs"
	"github.com/patchfleet/ota/server/identity"
)

// AccessKind says how a route is authenticated.
type AccessKind string

// Access kinds.
const (
	// AccessPublic routes take no credential: health, metrics, the
	// OpenAPI document, TUF metadata and targets (signed, so anyone may
	// fetch them), the login page.
	AccessPublic AccessKind = "public"
	// AccessDevice routes are the handset API, authenticated by a device
	// token (or, for enrollment, the enrollment secret) in the handler.
	AccessDevice AccessKind = "device"
	// AccessPermission routes need a principal with Permission: an API
	// token ("Authorization: Bearer"), or for Session routes a dashboard
	// session cookie.
	AccessPermission AccessKind = "permission"
)

// RouteAccess is what a route needs. Every route is mounted through
// Server.add, which takes one, so a route cannot be added without
// saying who may call it.
type RouteAccess struct {
	Kind       AccessKind
	Permission identity.Permission
	// Session marks a dashboard page: its credential is a session cookie,
	// not a bearer token.
	Session bool
}

func (a RouteAccess) String() string {
	if a.Kind != AccessPermission {
		return string(a.Kind)
	}
	s := string(a.Permission)
	if a.Session {
		s += " (session)"
	}
	return s
}

// check says what is wrong with a: no kind (a zero RouteAccess, the
// declaration a forgetful caller would write), an unknown kind, or a
// permission no role table knows.
func (a RouteAccess) check() error {
	switch a.Kind {
	case AccessPublic, AccessDevice:
		if a.Permission != "" {
			return fmt.Errorf("a %s route takes no permission, got %q", a.Kind, a.Permission)
		}
		return nil
	case AccessPermission:
		for _, perms := range identity.RolePermissions {
			if slices.Contains(perms, a.Permission) {
				return nil
			}
		}
		return fmt.Errorf("permission %q is no role's (identity.RolePermissions)", a.Permission)
	case "":
		return errors.New("no access declared: say public, device or the permission it needs")
	}
	return fmt.Errorf("unknown access kind %q", a.Kind)
}

var (
	public = RouteAccess{Kind: AccessPublic}
	device = RouteAccess{Kind: AccessDevice}
)

// needs is an API route that needs p.
func needs(p identity.Permission) RouteAccess {
	return RouteAccess{Kind: AccessPermission, Permission: p}
}

// page is a dashboard page that needs p, through a session.
func page(p identity.Permission) RouteAccess {
	return RouteAccess{Kind: AccessPermission, Permission: p, Session: true}
}

// routeKey is a route's key in Server.access: "METHOD /echo/path".
func routeKey(method, path string) string { return method + " " + path }

// mounter is where add puts a route: the Echo root or a group.
type mounter interface {
	Add(method, path string, h echo.HandlerFunc, m ...echo.MiddlewareFunc) *echo.Route
}

// routes mounts routes on g, whose path prefix is prefix ("" for the
// root), each through Server.add.
type routes struct {
	s      *Server
	g      mounter
	prefix string
}

// add mounts h at prefix+path behind what a says the route needs (for
// AccessPermission, require(a.Permission) runs before m and h) and
// records a: this call is the one place a route and its permission are
// written, and RoutePermissions, CheckRoutes and the endpoint × role
// test read what it recorded. A route declared without a valid access,
// or twice, panics: a programming error, found by any test that builds
// the server.
func (r routes) add(method, path string, a RouteAccess, h echo.HandlerFunc, m ...echo.MiddlewareFunc) {
	key := routeKey(method, r.prefix+path)
	if err := a.check(); err != nil {
		panic(fmt.Sprintf("api: route %s: %v", key, err))
	}
	if _, dup := r.s.access[key]; dup {
		panic(fmt.Sprintf("api: route %s declared twice", key))
	}
	if r.s.access == nil {
		r.s.access = map[string]RouteAccess{}
	}
	r.s.access[key] = a
	if a.Kind == AccessPermission && !a.Session {
		m = append([]echo.MiddlewareFunc{require(a.Permission)}, m...)
	}
	r.g.Add(method, path, h, m...)
}

// RoutePermissions returns what each route the server declared needs,
// by "METHOD /echo/path", for the endpoint × role test and for docs.
func (s *Server) RoutePermissions() map[string]RouteAccess {
	return maps.Clone(s.access)
}

// CheckRoutes returns an error naming every route Echo serves that was
// not declared through add (mounted on Echo directly, so with no access
// said). New panics on it; wiring that mounts more routes after New
// calls it again.
func (s *Server) CheckRoutes() error {
	var missing []string
	for _, r := range s.echo.Routes() {
		if r.Method == echo.RouteNotFound {
			// A group's catch-all, so that its middleware (authentication)
			// runs on unknown paths too.
			continue
		}
		if _, ok := s.access[routeKey(r.Method, r.Path)]; !ok {
			missing = append(missing, routeKey(r.Method, r.Path))
		}
	}
	if len(missing) == 0 {
		return nil
	}
	sort.Strings(missing)
	missing = slices.Compact(missing)
	return fmt.Errorf("api: routes mounted without a declared access (mount them with Server.add, saying what each needs): %s",
		strings.Join(missing, ", "))
}

// require lets through a principal with permission p: 401 without one,
// 403 with one that lacks p, saying which roles have it.
func require(p identity.Permission) echo.MiddlewareFunc {
	var roles []string
	for _, r := range identity.Roles {
		if identity.RoleCan(r, p) {
			roles = append(roles, r)
		}
	}
	want := strings.Join(roles, ", ")
	return func(next echo.HandlerFunc) echo.HandlerFunc {
		return func(c echo.Context) error {
			pr := identity.PrincipalFromContext(c.Request().Context())
			if pr == nil || pr.User == nil {
				return fmt.Errorf("%w: this needs credentials", errs.ErrUnauthorized)
			}
			if !pr.Can(p) {
				return fmt.Errorf("%w: %s has role %s, which lacks permission %s (roles with it: %s)",
					errs.ErrForbidden, pr.Actor(), pr.User.Role, p, want)
			}
			return next(c)
		}
	}
}

// forbidden is p lacking perm for what.
func forbidden(p *identity.Principal, perm identity.Permission, what string) error {
	return fmt.Errorf("%w: %s has role %s; to %s needs permission %s", errs.ErrForbidden, p.Actor(), p.User.Role, what, perm)
}

// authenticate requires a live API token ("Authorization: Bearer ...";
// a bare token is refused) and puts its principal in the request
// context. It also refuses a malformed X-Reason before any handler acts.
func (s *Server) authenticate(next echo.HandlerFunc) echo.HandlerFunc {
	return func(c echo.Context) error {
		plain, ok := bearerToken(c.Request().Header.Get("Authorization"))
		if !ok {
			c.Response().Header().Set("WWW-Authenticate", `Bearer realm="otad admin"`)
			return fmt.Errorf("%w: missing bearer token; create one with otad token create", errs.ErrUnauthorized)
		}
		p, err := s.tokens.Authenticate(c.Request().Context(), plain)
		if err != nil {
			return err
		}
		c.SetRequest(c.Request().WithContext(identity.WithPrincipal(c.Request().Context(), p)))
		if m := c.Request().Method; m != http.MethodGet && m != http.MethodHead {
			if _, err := auditReason(c); err != nil {
				return err
			}
		}
		return next(c)
	}
}

// principal is the request's principal; routes behind require always
// have one.
func principal(c echo.Context) *identity.Principal {
	return identity.PrincipalFromContext(c.Request().Context())
}

// actor names the request's principal in the audit log and in rollout
// events.
func actor(c echo.Context) string { return principal(c).Actor() }

func (s *Server) whoami(c echo.Context) error {
	p := principal(c)
	perms := slices.Clone(identity.RolePermissions[p.User.Role])
	if perms == nil {
		perms = []identity.Permission{}
	}
	return c.JSON(http.StatusOK, wire.WhoAmI{Name: p.User.Name, Role: p.User.Role, Kind: p.User.Kind(), Permissions: perms})
}
