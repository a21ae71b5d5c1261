package api

import (
	"bytes"
	"context"
	"encoding/json"
	"net/http"
	"strings"
	"testing"
)

// TestLoadOpenAPI checks that the embedded document loads and that a
// broken one is refused, which is what makes otad fail at start instead
// of serving a bad contract.
func TestLoadOpenAPI(t *testing.T) {
	if _, err := LoadOpenAPI(context.Background(), openAPIYAML); err != nil {
		t.Fatalf("embedded openapi.yaml: %v", err)
	}
	tests := []struct{ name, old, new, want string }{
		{"not YAML", "openapi: 3.0.3", "openapi: [3.0.3", "load openapi document"},
		{"dangling reference", `$ref: "#/components/schemas/EnrollAnswer"`, `$ref: "#/components/schemas/NoSuchSchema"`, "NoSuchSchema"},
		{"bad pattern", `pattern: "^[0-9a-f]{64}$"`, `pattern: "^[0-9a-f{64}$"`, "validate openapi document"},
		{"undeclared path parameter", "/api/v1/admin/drafts/{id}:", "/api/v1/admin/drafts/{draft}:", "validate openapi document"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			broken := bytes.Replace(openAPIYAML, []byte(tc.old), []byte(tc.new), 1)
			if bytes.Equal(broken, openAPIYAML) {
				t.Fatalf("%q is not in openapi.yaml", tc.old)
			}
			_, err := LoadOpenAPI(context.Background(), broken)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got %v, want an error mentioning %q", err, tc.want)
			}
		})
	}
}

// TestOpenAPIRoute checks the document is served as JSON on a server with
// nothing else enabled, and that it is the embedded one.
func TestOpenAPIRoute(t *testing.T) {
	s, _ := newTestServer(t, Config{})
	rec := do(t, s, http.MethodGet, OpenAPIRoute, nil)
	if rec.Code != http.StatusOK || !strings.HasPrefix(rec.Header().Get("Content-Type"), "application/json") {
		t.Fatalf("got %d %q, want 200 application/json", rec.Code, rec.Header().Get("Content-Type"))
	}
	var doc struct {
		OpenAPI string         `json:"openapi"`
		Paths   map[string]any `json:"paths"`
	}
	if err := json.Unmarshal(rec.Body.Bytes(), &doc); err != nil {
		t.Fatal(err)
	}
	if doc.OpenAPI != "3.0.3" || doc.Paths["/api/v1/checkin"] == nil || doc.Paths[OpenAPIRoute] == nil {
		t.Errorf("served openapi %q with %d paths, want 3.0.3 naming /api/v1/checkin and itself", doc.OpenAPI, len(doc.Paths))
	}
}
