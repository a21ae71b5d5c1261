package api

import (
	"net/http"
	"strings"

	"github.com/labstack/echo/v4"

	"github.com/patchfleet/ota/server/identity"
)

// Pages is the dashboard as the API mounts it beside its routes: a
// handler that checks its own sessions, permissions and CSRF tokens,
// and the routes it serves. The API does not know the dashboard's
// package; the wiring (internal/app) hands it over.
type Pages interface {
	http.Handler
	PageRoutes() []PageRoute
}

// PageRoute is one page route. Pattern is a net/http ServeMux pattern
// path ("/rollouts/{id}"; "/static/{file...}" for a prefix). Public
// routes need no session; the others need Perm.
type PageRoute struct {
	Method, Pattern string
	Perm            identity.Permission
	Public          bool
}

// mountWeb mounts the dashboard's pages on Echo, each handed whole to
// the dashboard, which checks its session, permission and CSRF token
// itself; each is declared through routes.add with what it needs, so
// that CheckRoutes and the endpoint × role test see the pages too.
func (s *Server) mountWeb(h Pages) {
	root := routes{s: s, g: s.echo}
	wrapped := echo.WrapHandler(h)
	for _, r := range h.PageRoutes() {
		a := public
		if !r.Public {
			a = page(r.Perm)
		}
		root.add(r.Method, echoPath(r.Pattern), a, wrapped)
	}
}

// echoPath turns a ServeMux pattern path into Echo's: "{id}" is ":id",
// a trailing "{rest...}" is "*".
func echoPath(pattern string) string {
	parts := strings.Split(pattern, "/")
	for i, p := range parts {
		if !strings.HasPrefix(p, "{") || !strings.HasSuffix(p, "}") {
			continue
		}
		name := strings.TrimSuffix(strings.TrimPrefix(p, "{"), "}")
		if strings.HasSuffix(name, "...") {
			parts[i] = "*"
		} else {
			parts[i] = ":" + name
		}
	}
	return strings.Join(parts, "/")
}
