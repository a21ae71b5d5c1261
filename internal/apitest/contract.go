package apitest

import (
	"context"
	"net/http"
	"strings"
	"sync"
	"testing"

	"github.com/labstack/echo/v4"

	"github.com/patchfleet/ota/server/api"
	"github.com/patchfleet/ota/server/api/openapitest"
)

// contract is the validator of the API's OpenAPI document, loaded once.
var contract = sync.OnceValues(func() (*openapitest.Validator, error) {
	doc, err := api.LoadOpenAPI(context.Background(), api.OpenAPIYAML())
	if err != nil {
		return nil, err
	}
	return openapitest.New(doc)
})

// Contract returns the validator of the API's OpenAPI document.
func Contract(tb testing.TB) *openapitest.Validator {
	tb.Helper()
	v, err := contract()
	if err != nil {
		tb.Fatal(err)
	}
	return v
}

// checkContract makes a validate every request it serves, over HTTP or
// through a direct ServeHTTP, and every answer it gives against the
// OpenAPI document, failing tb on a mismatch. Benchmarks measure the
// server, not the validator, so they run without it.
func checkContract(tb testing.TB, a *api.Server) {
	tb.Helper()
	if _, bench := tb.(*testing.B); bench {
		return
	}
	validate := Contract(tb).Middleware(tb)
	a.Echo().Pre(func(next echo.HandlerFunc) echo.HandlerFunc {
		checked := validate(next)
		return func(c echo.Context) error {
			if !InContract(c.Request().URL.Path) {
				return next(c)
			}
			return checked(c)
		}
	})
}

// InContract reports whether a path is the API's, which openapi.yaml
// covers; the dashboard's pages (HTML forms, static assets) are not in
// it.
func InContract(p string) bool {
	switch p {
	case "/healthz", "/readyz", "/metrics":
		return true
	}
	for _, prefix := range []string{"/api/", "/tuf/", "/targets/"} {
		if strings.HasPrefix(p, prefix) {
			return true
		}
	}
	return false
}

// OffContract marks a request that breaks the API contract on purpose (a
// negative test): it is not validated, the server's answer still is.
func OffContract(req *http.Request) *http.Request {
	return openapitest.OffContract(req, "negative test")
}

// DoOffContract is Do for a request that breaks the API contract on
// purpose (see OffContract).
func (env *Env) DoOffContract(method, path string, body any, out any) error {
	return env.do(env.Client().WithHeader(openapitest.OffContractHeader, "negative test"), method, path, body, out)
}
