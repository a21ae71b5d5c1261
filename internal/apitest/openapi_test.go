package apitest_test

import (
	"encoding/json"
	"io"
	"net/http"
	"reflect"
	"slices"
	"strings"
	"testing"

	"github.com/getkin/kin-openapi/openapi3"

	"github.com/patchfleet/ota/internal/apitest"
	"github.com/patchfleet/ota/server/api"
)

// openAPIPath turns an Echo route path into an OpenAPI path template:
// ":id" becomes "{id}" and the wildcard "*" becomes "{path}".
func openAPIPath(echoPath string) string {
	segs := strings.Split(echoPath, "/")
	for i, s := range segs {
		switch {
		case s == "*":
			segs[i] = "{path}"
		case strings.HasPrefix(s, ":"):
			segs[i] = "{" + s[1:] + "}"
		}
	}
	return strings.Join(segs, "/")
}

// TestOpenAPICoversEveryRoute walks the routes of a server with every part
// enabled (TUF repository, admin API, fleet), as they were declared
// (routes.add; CheckRoutes says Echo serves no other), and fails for
// each route absent from openapi.yaml, and for each operation of the
// document that the server does not register. A route added without its
// contract fails here.
func TestOpenAPICoversEveryRoute(t *testing.T) {
	env := apitest.Start(t, apitest.Options{})
	if err := env.API.CheckRoutes(); err != nil {
		t.Fatal(err)
	}
	var registered []string
	for key := range env.API.RoutePermissions() {
		method, path, _ := strings.Cut(key, " ")
		if !apitest.InContract(path) {
			continue // a dashboard page: HTML, not the API's contract
		}
		registered = append(registered, method+" "+openAPIPath(path))
	}
	slices.Sort(registered)
	registered = slices.Compact(registered)
	documented := apitest.Contract(t).Operations()

	for _, r := range registered {
		if !slices.Contains(documented, r) {
			t.Errorf("route %s is registered in Echo but absent from server/api/openapi.yaml", r)
		}
	}
	for _, d := range documented {
		if !slices.Contains(registered, d) {
			t.Errorf("openapi.yaml documents %s, which the server does not register", d)
		}
	}
	if len(registered) < 20 {
		t.Errorf("only %d routes registered: %v; the walk is not seeing the whole server", len(registered), registered)
	}
}

func TestOpenAPIPath(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"/healthz", "/healthz"},
		{"/tuf/:name", "/tuf/{name}"},
		{"/targets/*", "/targets/{path}"},
		{"/api/v1/admin/drafts/:id/signatures", "/api/v1/admin/drafts/{id}/signatures"},
	} {
		if got := openAPIPath(tc.in); got != tc.want {
			t.Errorf("openAPIPath(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
}

// TestOpenAPIServed fetches /api/v1/openapi.json and checks that it is the
// embedded document, complete and valid.
func TestOpenAPIServed(t *testing.T) {
	env := apitest.Start(t, apitest.Options{})
	resp, err := http.Get(env.URL + api.OpenAPIRoute)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusOK || !strings.HasPrefix(resp.Header.Get("Content-Type"), "application/json") {
		t.Fatalf("got %d %q, want 200 application/json", resp.StatusCode, resp.Header.Get("Content-Type"))
	}
	served, err := api.LoadOpenAPI(t.Context(), body)
	if err != nil {
		t.Fatalf("the served document does not load: %v", err)
	}
	embedded, err := api.LoadOpenAPI(t.Context(), api.OpenAPIYAML())
	if err != nil {
		t.Fatal(err)
	}
	if got, want := pathsOf(served), pathsOf(embedded); !reflect.DeepEqual(got, want) {
		t.Errorf("served paths %v, want the embedded %v", got, want)
	}
	var raw map[string]any
	if err := json.Unmarshal(body, &raw); err != nil {
		t.Fatal(err)
	}
	if raw["openapi"] != "3.0.3" {
		t.Errorf("openapi %v, want 3.0.3", raw["openapi"])
	}
}

func pathsOf(doc *openapi3.T) []string {
	var out []string
	for p, item := range doc.Paths.Map() {
		for m := range item.Operations() {
			out = append(out, m+" "+p)
		}
	}
	slices.Sort(out)
	return out
}
