package openapitest_test

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"

	"github.com/getkin/kin-openapi/openapi3"
	"github.com/labstack/echo/v4"

	"github.com/patchfleet/ota/server/api"
	"github.com/patchfleet/ota/server/api/openapitest"
)

const testDoc = `
openapi: 3.0.3
info: {title: test, version: "1"}
paths:
  /items/{id}:
    parameters:
      - {name: id, in: path, required: true, schema: {type: string, pattern: "^[a-z]+$"}}
    get:
      security: [{bearer: []}]
      responses:
        "200":
          description: ok
          content:
            application/json:
              schema: {type: object, additionalProperties: false, required: [id], properties: {id: {type: string}}}
        "404": {$ref: "#/components/responses/Error"}
    head:
      responses:
        "200": {description: ok}
  /items:
    post:
      requestBody:
        required: true
        content:
          application/json:
            schema: {type: object, additionalProperties: false, required: [name], properties: {name: {type: string}}}
      responses:
        "201": {description: created}
        "400": {$ref: "#/components/responses/Error"}
  /files/{path}:
    parameters:
      - {name: path, in: path, required: true, x-multi-segment: true, schema: {type: string, pattern: "^[a-z]+/[a-z]+/[a-z]+[.]bin$"}}
    get:
      responses:
        "200": {description: ok, content: {application/octet-stream: {}}}
    put:
      requestBody:
        required: true
        content:
          "*/*": {schema: {type: string, format: binary}}
      responses:
        "201": {description: stored}
components:
  securitySchemes:
    bearer: {type: http, scheme: bearer}
  responses:
    Error:
      description: an error
      content:
        application/json:
          schema: {$ref: "#/components/schemas/Error"}
  schemas:
    Error:
      type: object
      additionalProperties: false
      required: [error]
      properties:
        error:
          type: object
          required: [code, message]
          properties: {code: {type: string}, message: {type: string}}
`

func newValidator(tb testing.TB) *openapitest.Validator {
	tb.Helper()
	doc, err := openapi3.NewLoader().LoadFromData([]byte(testDoc))
	if err != nil {
		tb.Fatal(err)
	}
	if err := doc.Validate(context.Background()); err != nil {
		tb.Fatal(err)
	}
	v, err := openapitest.New(doc)
	if err != nil {
		tb.Fatal(err)
	}
	return v
}

// recordTB collects the validator's failures instead of failing the test.
type recordTB struct {
	testing.TB
	mu   sync.Mutex
	errs []string
}

func (r *recordTB) Errorf(format string, args ...any) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.errs = append(r.errs, fmt.Sprintf(format, args...))
}

func (r *recordTB) failures() string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return strings.Join(r.errs, "\n")
}

// answer writes a fixed answer.
func answer(status int, contentType, body string) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		if contentType != "" {
			w.Header().Set("Content-Type", contentType)
		}
		w.WriteHeader(status)
		io.WriteString(w, body)
	}
}

const errorJSON = `{"error":{"code":"not_found","message":"no such item"}}`

// TestValidator checks that each kind of mismatch fails the test, that a
// conforming exchange does not, and that an off-contract request skips
// request validation only.
func TestValidator(t *testing.T) {
	v := newValidator(t)
	tests := []struct {
		name, method, target, body string
		header                     map[string]string
		off                        bool
		handler                    http.HandlerFunc
		want                       string // "" for no failure, else a substring of it
	}{
		{name: "conforming", method: "GET", target: "/items/abc", header: map[string]string{"Authorization": "Bearer t"},
			handler: answer(200, "application/json", `{"id":"abc"}`)},
		{name: "missing bearer token", method: "GET", target: "/items/abc",
			handler: answer(200, "application/json", `{"id":"abc"}`), want: "security requirements failed"},
		{name: "bad path parameter", method: "GET", target: "/items/ABC", header: map[string]string{"Authorization": "Bearer t"},
			handler: answer(404, "application/json", errorJSON), want: `parameter "id" in path has an error`},
		{name: "unknown field in the answer", method: "GET", target: "/items/abc", header: map[string]string{"Authorization": "Bearer t"},
			handler: answer(200, "application/json", `{"id":"abc","imei":"1"}`), want: `property "imei" is unsupported`},
		{name: "undocumented status", method: "GET", target: "/items/abc", header: map[string]string{"Authorization": "Bearer t"},
			handler: answer(500, "application/json", errorJSON), want: "status 500 is not documented"},
		{name: "wrong content type", method: "GET", target: "/items/abc", header: map[string]string{"Authorization": "Bearer t"},
			handler: answer(404, "text/plain", "not found"), want: `Content-Type has unexpected value`},
		{name: "unknown field in the request", method: "POST", target: "/items", body: `{"name":"a","imsi":"2"}`,
			header: map[string]string{"Content-Type": "application/json"}, handler: answer(201, "", ""), want: `property "imsi" is unsupported`},
		{name: "unknown field, off the contract", method: "POST", target: "/items", body: `{"name":"a","imsi":"2"}`, off: true,
			header: map[string]string{"Content-Type": "application/json"}, handler: answer(400, "application/json", errorJSON)},
		{name: "off the contract, answer still checked", method: "POST", target: "/items", body: `{"imsi":"2"}`, off: true,
			header: map[string]string{"Content-Type": "application/json"}, handler: answer(418, "application/json", errorJSON), want: "status 418 is not documented"},
		{name: "body of another type", method: "POST", target: "/items", body: `name=a`,
			header: map[string]string{"Content-Type": "application/x-www-form-urlencoded"}, handler: answer(201, "", ""), want: "Content-Type has unexpected value"},
		{name: "undocumented route", method: "GET", target: "/nothing",
			handler: answer(404, "application/json", errorJSON), want: "no operation in the document"},
		{name: "undocumented method", method: "DELETE", target: "/items/abc",
			handler: answer(405, "application/json", errorJSON), want: "method not allowed"},
		{name: "undocumented route, off the contract", method: "GET", target: "/nothing", off: true,
			handler: answer(404, "application/json", errorJSON)},
		{name: "undocumented route answered without the error body", method: "GET", target: "/nothing", off: true,
			handler: answer(404, "text/plain", "404 page not found"), want: "error answer of type"},
		{name: "multi-segment parameter", method: "GET", target: "/files/a/b/c.bin",
			handler: answer(200, "application/octet-stream", "bytes")},
		{name: "multi-segment parameter checked whole", method: "GET", target: "/files/a/b/c.txt",
			handler: answer(200, "application/octet-stream", "bytes"), want: `parameter "path" in path has an error`},
		{name: "HEAD status checked", method: "HEAD", target: "/items/abc",
			handler: answer(404, "", ""), want: "status 404 is not documented"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			rtb := &recordTB{TB: t}
			h := v.Wrap(rtb, tc.handler)
			req := httptest.NewRequest(tc.method, tc.target, strings.NewReader(tc.body))
			for k, val := range tc.header {
				req.Header.Set(k, val)
			}
			if tc.off {
				openapitest.OffContract(req, "test")
			}
			h.ServeHTTP(httptest.NewRecorder(), req)
			got := rtb.failures()
			switch {
			case tc.want == "" && got != "":
				t.Errorf("unexpected failure:\n%s", got)
			case tc.want != "" && !strings.Contains(got, tc.want):
				t.Errorf("failures %q, want one mentioning %q", got, tc.want)
			}
		})
	}
}

// TestValidatorLeavesRequestsAsSent checks what the server sees: the same
// body and Content-Length, no off-contract header, and an upload body that
// the validator did not read (the server may answer without it).
func TestValidatorLeavesRequestsAsSent(t *testing.T) {
	v := newValidator(t)
	t.Run("JSON body", func(t *testing.T) {
		rtb := &recordTB{TB: t}
		var gotBody string
		var gotLen int64
		var gotMark string
		h := v.Wrap(rtb, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			b, _ := io.ReadAll(r.Body)
			gotBody, gotLen, gotMark = string(b), r.ContentLength, r.Header.Get(openapitest.OffContractHeader)
			w.WriteHeader(201)
		}))
		req := httptest.NewRequest("POST", "/items", io.MultiReader(strings.NewReader(`{"name":"a"}`)))
		req.Header.Set("Content-Type", "application/json")
		openapitest.OffContract(req, "test")
		wantLen := req.ContentLength
		h.ServeHTTP(httptest.NewRecorder(), req)
		if gotBody != `{"name":"a"}` || gotLen != wantLen || gotMark != "" {
			t.Errorf("server saw body %q, length %d, mark %q; want the body as sent, length %d, no mark", gotBody, gotLen, gotMark, wantLen)
		}
		if f := rtb.failures(); f != "" {
			t.Errorf("unexpected failure: %s", f)
		}
	})
	t.Run("upload", func(t *testing.T) {
		rtb := &recordTB{TB: t}
		body := &countingReader{r: strings.NewReader("artifact bytes")}
		h := v.Wrap(rtb, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if body.n != 0 {
				t.Errorf("the validator read %d bytes of the upload before the server", body.n)
			}
			io.Copy(io.Discard, r.Body)
			w.WriteHeader(201)
		}))
		req := httptest.NewRequest("PUT", "/files/a/b/c.bin", body)
		req.Header.Set("Content-Type", "application/octet-stream")
		h.ServeHTTP(httptest.NewRecorder(), req)
		if f := rtb.failures(); f != "" {
			t.Errorf("unexpected failure: %s", f)
		}
	})
}

type countingReader struct {
	r io.Reader
	n int
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += n
	return n, err
}

// TestMiddleware checks the Echo form: handler errors are answered by the
// error handler before the answer is validated.
func TestMiddleware(t *testing.T) {
	v := newValidator(t)
	tests := []struct {
		name    string
		handler echo.HandlerFunc
		want    string
	}{
		{"conforming", func(c echo.Context) error { return c.JSON(200, map[string]string{"id": c.Param("id")}) }, ""},
		{"off the contract", func(c echo.Context) error { return c.JSON(200, map[string]any{"id": 1}) }, `Error at "/id"`},
		{"error through the error handler", func(c echo.Context) error { return echo.NewHTTPError(http.StatusTeapot) }, "status 418 is not documented"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			rtb := &recordTB{TB: t}
			e := echo.New()
			e.Pre(v.Middleware(rtb))
			e.GET("/items/:id", tc.handler)
			req := httptest.NewRequest("GET", "/items/abc", nil)
			req.Header.Set("Authorization", "Bearer t")
			rec := httptest.NewRecorder()
			e.ServeHTTP(rec, req)
			got := rtb.failures()
			switch {
			case tc.want == "" && got != "":
				t.Errorf("unexpected failure:\n%s", got)
			case tc.want != "" && !strings.Contains(got, tc.want):
				t.Errorf("failures %q, want one mentioning %q", got, tc.want)
			}
		})
	}
}

// BenchmarkValidateCheckIn measures what the validator adds to a check-in
// exchange against the real document (the handler answers a fixed body).
func BenchmarkValidateCheckIn(b *testing.B) {
	doc, err := api.LoadOpenAPI(context.Background(), api.OpenAPIYAML())
	if err != nil {
		b.Fatal(err)
	}
	v, err := openapitest.New(doc)
	if err != nil {
		b.Fatal(err)
	}
	const body = `{"build":"7.1.0","model":"PX-7","channel":"stable","installed_patches":["CM-2025-009"],"cloud_messaging":"opted_out","number_encryption":true}`
	h := v.Wrap(b, answer(200, "application/json", `{"poll_after_seconds":3600,"offer":null}`))
	for b.Loop() {
		req := httptest.NewRequest("POST", "/api/v1/checkin", strings.NewReader(body))
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set("Authorization", "Bearer otadev_abc")
		h.ServeHTTP(httptest.NewRecorder(), req)
	}
}
