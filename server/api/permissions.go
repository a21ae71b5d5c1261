package api

import (
	"fmt"
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

// RouteAccess is what a route needs. Every route Echo serves has one in
// routeTable, so a route cannot be added without saying who may call it.
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

// routeTable maps every route ("METHOD /echo/path") to what it needs. It
// is the one place that says who may call what: admin routes are
// mounted through it (Server.route), and New refuses to build a server
// with a route missing from it. Checks are by permission; which role has
// which is identity.RolePermissions.
var routeTable = map[string]RouteAccess{
	"GET /healthz":                          public,
	"GET /readyz":                           public,
	"GET /metrics":                          public,
	"GET " + OpenAPIRoute:                   public,
	"GET /tuf/:name":                        public,
	"HEAD /tuf/:name":                       public,
	"GET /targets/*":                        public,
	"HEAD /targets/*":                       public,
	"POST /api/v1/devices":                  device,
	"POST /api/v1/checkin":                  device,
	"POST /api/v1/reports":                  device,
	"DELETE /api/v1/devices/self":           device,
	"GET " + AdminPrefix + "/whoami":        needs(identity.PermRead),
	"GET " + AdminPrefix + "/fleet/summary": needs(identity.PermRead),

	"GET " + AdminPrefix + "/repo/status":            needs(identity.PermRead),
	"GET " + AdminPrefix + "/repo/online-key":        needs(identity.PermRead),
	"POST " + AdminPrefix + "/repo/root-drafts":      needs(identity.PermReleaseChange),
	"PUT " + AdminPrefix + "/artifacts/*":            needs(identity.PermReleaseChange),
	"POST " + AdminPrefix + "/releases":              needs(identity.PermReleaseChange),
	"POST " + AdminPrefix + "/yanks":                 needs(identity.PermReleaseChange),
	"GET " + AdminPrefix + "/drafts":                 needs(identity.PermRead),
	"GET " + AdminPrefix + "/drafts/pending":         needs(identity.PermRead),
	"GET " + AdminPrefix + "/drafts/:id":             needs(identity.PermRead),
	"POST " + AdminPrefix + "/drafts/:id/signatures": needs(identity.PermReleaseChange),
	"DELETE " + AdminPrefix + "/drafts/:id":          needs(identity.PermReleaseChange),

	"POST " + AdminPrefix + "/rollouts":                            needs(identity.PermRolloutChange),
	"GET " + AdminPrefix + "/rollouts":                             needs(identity.PermRead),
	"GET " + AdminPrefix + "/rollouts/:id":                         needs(identity.PermRead),
	"GET " + AdminPrefix + "/rollouts/:id/events":                  needs(identity.PermRead),
	"POST " + AdminPrefix + "/rollouts/:id/start":                  needs(identity.PermRolloutChange),
	"POST " + AdminPrefix + "/rollouts/:id/pause":                  needs(identity.PermRolloutChange),
	"POST " + AdminPrefix + "/rollouts/:id/resume":                 needs(identity.PermRolloutChange),
	"POST " + AdminPrefix + "/rollouts/:id/abort":                  needs(identity.PermRolloutChange),
	"POST " + AdminPrefix + "/rollouts/:id/complete":               needs(identity.PermRolloutChange),
	"POST " + AdminPrefix + "/rollouts/:id/advance":                needs(identity.PermRolloutChange),
	"POST " + AdminPrefix + "/rollouts/:id/holds":                  needs(identity.PermRolloutChange),
	"POST " + AdminPrefix + "/rollouts/:id/holds/:model/release":   needs(identity.PermRolloutChange),
	"GET " + AdminPrefix + "/rollouts/:id/approvals":               needs(identity.PermRead),
	"POST " + AdminPrefix + "/rollouts/:id/approvals/:aid/approve": needs(identity.PermRolloutApprove),
	"POST " + AdminPrefix + "/rollouts/:id/approvals/:aid/reject":  needs(identity.PermRolloutApprove),
	"GET " + AdminPrefix + "/rollouts/:id/report":                  needs(identity.PermRead),
	"GET " + AdminPrefix + "/reports/exposure":                     needs(identity.PermRead),
	"GET " + AdminPrefix + "/audit":                                needs(identity.PermRead),
	"GET " + AdminPrefix + "/audit/verify":                         needs(identity.PermRead),

	"GET " + AdminPrefix + "/users":                needs(identity.PermUserAdmin),
	"POST " + AdminPrefix + "/users":               needs(identity.PermUserAdmin),
	"POST " + AdminPrefix + "/users/:name/role":    needs(identity.PermUserAdmin),
	"POST " + AdminPrefix + "/users/:name/disable": needs(identity.PermUserAdmin),
	"POST " + AdminPrefix + "/users/:name/enable":  needs(identity.PermUserAdmin),
	// The token routes act on the caller's own tokens; ?all=true and
	// another user's token also need PermUserAdmin, checked in the
	// handlers.
	"GET " + AdminPrefix + "/tokens":        needs(identity.PermOwnTokens),
	"POST " + AdminPrefix + "/tokens":       needs(identity.PermOwnTokens),
	"DELETE " + AdminPrefix + "/tokens/:id": needs(identity.PermOwnTokens),
}

// routeKey is a route's key in routeTable.
func routeKey(method, path string) string { return method + " " + path }

// RoutePermissions returns what each route the server registered needs,
// by "METHOD /echo/path", for the endpoint × role test and for docs.
func (s *Server) RoutePermissions() map[string]RouteAccess {
	out := make(map[string]RouteAccess)
	for _, r := range s.echo.Routes() {
		if r.Method == echo.RouteNotFound {
			continue
		}
		if a, ok := s.routeAccess(routeKey(r.Method, r.Path)); ok {
			out[routeKey(r.Method, r.Path)] = a
		}
	}
	return out
}

// CheckRoutes returns an error naming every route Echo serves that has
// no entry in routeTable. New panics on it; wiring that mounts more
// routes after New (pages) calls it again.
func (s *Server) CheckRoutes() error {
	var missing []string
	for _, r := range s.echo.Routes() {
		if r.Method == echo.RouteNotFound {
			// A group's catch-all, so that its middleware (authentication)
			// runs on unknown paths too.
			continue
		}
		if _, ok := s.routeAccess(routeKey(r.Method, r.Path)); !ok {
			missing = append(missing, routeKey(r.Method, r.Path))
		}
	}
	if len(missing) == 0 {
		return nil
	}
	sort.Strings(missing)
	missing = slices.Compact(missing)
	return fmt.Errorf("api: routes without an entry in routeTable (server/api/permissions.go), say what each needs: %s",
		strings.Join(missing, ", "))
}

// route mounts h on g, whose prefix is prefix, behind what routeTable
// says the route needs. A route missing from the table panics: it is a
// programming error, found by any test that builds the server.
func (s *Server) route(g *echo.Group, prefix, method, path string, h echo.HandlerFunc, m ...echo.MiddlewareFunc) {
	a, ok := routeTable[routeKey(method, prefix+path)]
	if !ok {
		panic(fmt.Sprintf("api: route %s %s has no entry in routeTable (server/api/permissions.go): declare the permission it needs",
			method, prefix+path))
	}
	if a.Kind == AccessPermission {
		m = append([]echo.MiddlewareFunc{require(a.Permission)}, m...)
	}
	g.Add(method, path, h, m...)
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
