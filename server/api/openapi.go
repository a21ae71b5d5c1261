package api

import (
	"bytes"
	"context"
	_ "embed"
	"encoding/json"
	"fmt"
	"net/http"
	"sync"

	"github.com/getkin/kin-openapi/openapi3"
	"github.com/labstack/echo/v4"
)

// OpenAPIRoute serves the API's OpenAPI 3 document as JSON.
const OpenAPIRoute = "/api/v1/openapi.json"

// openAPIYAML is the contract of every route New registers. The tests
// validate each request and answer against it, and fail when a route is
// missing from it.
//
//go:embed openapi.yaml
var openAPIYAML []byte

// OpenAPIYAML returns the embedded OpenAPI document as written (YAML).
func OpenAPIYAML() []byte { return bytes.Clone(openAPIYAML) }

// LoadOpenAPI parses and validates an OpenAPI 3 document. Each call
// returns a document of its own: kin-openapi documents are mutable.
func LoadOpenAPI(ctx context.Context, data []byte) (*openapi3.T, error) {
	doc, err := openapi3.NewLoader().LoadFromData(data)
	if err != nil {
		return nil, fmt.Errorf("load openapi document: %w", err)
	}
	if err := doc.Validate(ctx); err != nil {
		return nil, fmt.Errorf("validate openapi document: %w", err)
	}
	return doc, nil
}

// openAPIJSON converts the embedded document once per process: the
// document is part of the binary, so every server serves the same bytes.
var openAPIJSON = sync.OnceValues(func() ([]byte, error) {
	doc, err := LoadOpenAPI(context.Background(), openAPIYAML)
	if err != nil {
		return nil, err
	}
	return json.Marshal(doc)
})

// openAPIHandler answers GET /api/v1/openapi.json. It converts the
// document when the routes are mounted and panics if the embedded YAML
// does not load: that is a build defect, and otad must not start with it
// (as template.Must does for templates).
func openAPIHandler() echo.HandlerFunc {
	data, err := openAPIJSON()
	if err != nil {
		panic(fmt.Sprintf("api: embedded openapi.yaml: %v", err))
	}
	return func(c echo.Context) error {
		return c.Blob(http.StatusOK, echo.MIMEApplicationJSON, data)
	}
}
