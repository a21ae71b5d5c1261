// Package openapitest holds tests to the API's OpenAPI contract: it wraps an
// http.Handler so that every request a test sends and every answer it gets
// is validated against the document (kin-openapi's openapi3filter), and
// fails the test on any mismatch.
//
// Tests that send a non-conforming request on purpose (bad JSON, unknown
// fields, a missing token, a made-up method) mark it with OffContract: its
// request is then not validated, and its answer still is.
package openapitest

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"mime"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"testing"

	"github.com/getkin/kin-openapi/openapi3"
	"github.com/getkin/kin-openapi/openapi3filter"
	"github.com/getkin/kin-openapi/routers"
	"github.com/getkin/kin-openapi/routers/gorillamux"
	"github.com/labstack/echo/v4"
)

// OffContractHeader marks a request that does not conform to the document
// on purpose; its value says why. The validator removes it before the
// request reaches the server.
const OffContractHeader = "X-Openapitest-Off-Contract"

// OffContract marks req as deliberately off the contract (see
// OffContractHeader) and returns it.
func OffContract(req *http.Request, why string) *http.Request {
	if why == "" {
		why = "negative test"
	}
	req.Header.Set(OffContractHeader, why)
	return req
}

// ExtMultiSegment marks a path parameter whose value spans several path
// segments ("/targets/{path}"). OpenAPI 3 path parameters cannot hold a
// "/"; the validator escapes the slashes of such a value before routing.
const ExtMultiSegment = "x-multi-segment"

// Validator checks requests and answers against one OpenAPI document. It is
// safe for concurrent use.
type Validator struct {
	doc    *openapi3.T
	router routers.Router
	// multi are the prefixes of paths that end in a multi-segment
	// parameter ("/targets/").
	multi []string
}

// New builds a validator for the document doc, which must already be
// loaded and validated (api.LoadOpenAPI).
func New(doc *openapi3.T) (*Validator, error) {
	router, err := gorillamux.NewRouter(doc)
	if err != nil {
		return nil, fmt.Errorf("openapi router: %w", err)
	}
	v := &Validator{doc: doc, router: router}
	for _, path := range doc.Paths.InMatchingOrder() {
		item := doc.Paths.Value(path)
		params := slices.Clone(item.Parameters)
		for _, op := range item.Operations() {
			params = append(params, op.Parameters...)
		}
		for _, p := range params {
			if p.Value == nil || p.Value.In != openapi3.ParameterInPath || p.Value.Extensions[ExtMultiSegment] != true {
				continue
			}
			last := "{" + p.Value.Name + "}"
			prefix, ok := strings.CutSuffix(path, last)
			if !ok || !strings.HasSuffix(prefix, "/") {
				return nil, fmt.Errorf("openapi path %s: a %s parameter must be the last segment", path, ExtMultiSegment)
			}
			if !slices.Contains(v.multi, prefix) {
				v.multi = append(v.multi, prefix)
			}
		}
	}
	return v, nil
}

// Operations lists the document's operations as "METHOD /path/{param}",
// sorted.
func (v *Validator) Operations() []string {
	var out []string
	for path, item := range v.doc.Paths.Map() {
		for method := range item.Operations() {
			out = append(out, method+" "+path)
		}
	}
	slices.Sort(out)
	return out
}

// Wrap returns next with every request and answer validated; each mismatch
// is a tb.Errorf naming the method, path, status and the validation error.
// tb must outlive the handler's requests (httptest.Server.Close in a
// cleanup of tb waits for them).
func (v *Validator) Wrap(tb testing.TB, next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		v.exchange(tb, w, r, next.ServeHTTP)
	})
}

// Middleware validates like Wrap, as an Echo pre-routing middleware
// (e.Pre): it sees every request the Echo instance serves, through an
// httptest.Server or a direct ServeHTTP call alike.
func (v *Validator) Middleware(tb testing.TB) echo.MiddlewareFunc {
	return func(next echo.HandlerFunc) echo.HandlerFunc {
		return func(c echo.Context) error {
			v.exchange(tb, c.Response().Writer, c.Request(), func(w http.ResponseWriter, r *http.Request) {
				orig := c.Response().Writer
				c.SetRequest(r)
				c.Response().Writer = w
				// Let the error handler answer now, so that the
				// answer is complete when it is validated.
				if err := next(c); err != nil {
					c.Error(err)
				}
				c.Response().Writer = orig
			})
			return nil
		}
	}
}

// exchange validates the request, lets serve answer it through a recorder,
// then validates the answer.
func (v *Validator) exchange(tb testing.TB, w http.ResponseWriter, r *http.Request, serve func(http.ResponseWriter, *http.Request)) {
	off := r.Header.Get(OffContractHeader) != ""
	r.Header.Del(OffContractHeader)
	method, path := r.Method, r.URL.Path

	r, in, reqErr := v.checkRequest(r, off)
	rec := &recorder{ResponseWriter: w, head: method == http.MethodHead}
	serve(rec, r)
	status := rec.status
	if status == 0 {
		status = http.StatusOK
	}
	if reqErr != nil {
		tb.Errorf("openapi: %s %s (answered %d): request off the contract: %v", method, path, status, reqErr)
	}
	if r.Context().Err() != nil {
		return // the client went away: nobody reads this answer
	}
	if err := v.checkResponse(in, rec, status); err != nil {
		tb.Errorf("openapi: %s %s answered %d off the contract: %v", method, path, status, err)
	}
}

// checkRequest finds the operation of r and, unless off, validates r. It
// reads the body and puts it back, leaving ContentLength as the client
// sent it (the server treats declared and streamed bodies differently);
// a binary body (an artifact upload) is left unread, since the server may
// answer without reading it.
func (v *Validator) checkRequest(r *http.Request, off bool) (*http.Request, *openapi3filter.RequestValidationInput, error) {
	vr := r.Clone(r.Context())
	v.escapeMultiSegment(vr)
	route, params, routeErr := v.router.FindRoute(vr)

	ct := r.Header.Get("Content-Type")
	skipBody := false
	if routeErr == nil && route.Operation.RequestBody != nil {
		mt := route.Operation.RequestBody.Value.Content.Get(ct)
		skipBody = mt != nil && mt.Schema != nil && mt.Schema.Value.Format == "binary"
	}
	if skipBody {
		// kin-openapi's security check reads the body: give it none.
		vr.Body, vr.GetBody = http.NoBody, nil
	} else if r.Body != nil && r.Body != http.NoBody {
		data, err := io.ReadAll(r.Body)
		r.Body.Close()
		r = r.WithContext(r.Context()) // a copy: the caller's request keeps its body
		r.Body = io.NopCloser(io.MultiReader(bytes.NewReader(data), errReader{err}))
		vr.Body = io.NopCloser(bytes.NewReader(data))
		vr.ContentLength = int64(len(data))
		vr.GetBody = nil
	}

	if routeErr != nil {
		if off {
			return r, nil, nil
		}
		return r, nil, fmt.Errorf("no operation in the document: %w", routeErr)
	}
	for k, p := range params {
		if u, err := url.PathUnescape(p); err == nil {
			params[k] = u
		}
	}
	in := &openapi3filter.RequestValidationInput{Request: vr, PathParams: params, Route: route,
		Options: &openapi3filter.Options{
			ExcludeRequestBody:  skipBody,
			SkipSettingDefaults: true,
			MultiError:          true,
			AuthenticationFunc:  bearerOnly,
		}}
	if off {
		return r, in, nil
	}
	return r, in, openapi3filter.ValidateRequest(r.Context(), in)
}

// escapeMultiSegment escapes the slashes of a multi-segment parameter in
// the raw path, so that the router sees one segment.
func (v *Validator) escapeMultiSegment(r *http.Request) {
	for _, prefix := range v.multi {
		rest, ok := strings.CutPrefix(r.URL.Path, prefix)
		if !ok || rest == "" {
			continue
		}
		u := *r.URL
		u.RawPath = prefix + url.PathEscape(rest)
		r.URL = &u
		return
	}
}

// bearerOnly is the AuthenticationFunc: the document's schemes are HTTP
// bearer tokens, so a conforming request carries "Authorization: Bearer
// TOKEN". Whether the server accepts the token is its business.
func bearerOnly(_ context.Context, in *openapi3filter.AuthenticationInput) error {
	s := in.SecurityScheme
	if s == nil || s.Type != "http" || !strings.EqualFold(s.Scheme, "bearer") {
		return fmt.Errorf("security scheme %s: only http bearer is supported", in.SecuritySchemeName)
	}
	tok, ok := strings.CutPrefix(in.RequestValidationInput.Request.Header.Get("Authorization"), "Bearer ")
	if !ok || strings.TrimSpace(tok) == "" {
		return errors.New(`no "Authorization: Bearer TOKEN" header`)
	}
	return nil
}

// checkResponse validates what the server answered. A request that matched
// no operation (a negative test) must have been refused with the common
// error body.
func (v *Validator) checkResponse(in *openapi3filter.RequestValidationInput, rec *recorder, status int) error {
	header := rec.finalHeader()
	if in == nil {
		if status < 400 {
			return nil // a route only the test registered
		}
		return v.checkErrorBody(rec, header)
	}
	responses := in.Route.Operation.Responses
	if responses.Status(status) == nil {
		return fmt.Errorf("status %d is not documented (documented: %s)", status,
			strings.Join(slices.Sorted(maps.Keys(responses.Map())), ", "))
	}
	// ValidateResponse skips HEAD and 304/307 answers entirely; the status
	// check above is all they get.
	out := &openapi3filter.ResponseValidationInput{RequestValidationInput: in, Status: status, Header: header,
		Options: &openapi3filter.Options{IncludeResponseStatus: true, MultiError: true}}
	out.SetBodyBytes(rec.body.Bytes())
	if rec.truncated {
		out.Options.ExcludeResponseBody = true
	}
	return openapi3filter.ValidateResponse(in.Request.Context(), out)
}

// checkErrorBody validates an error answer against the Error schema.
func (v *Validator) checkErrorBody(rec *recorder, header http.Header) error {
	if rec.head {
		return nil
	}
	ref := v.doc.Components.Schemas["Error"]
	if ref == nil || ref.Value == nil {
		return errors.New("the document has no Error schema")
	}
	mediaType, _, _ := mime.ParseMediaType(header.Get("Content-Type"))
	if mediaType != "application/json" {
		return fmt.Errorf("error answer of type %q, want application/json", header.Get("Content-Type"))
	}
	var body any
	if err := json.Unmarshal(rec.body.Bytes(), &body); err != nil {
		return fmt.Errorf("error answer is not JSON: %w", err)
	}
	return ref.Value.VisitJSON(body, openapi3.MultiErrors(), openapi3.VisitAsResponse())
}

// maxCapture bounds the JSON body kept for validation; the API's JSON
// answers are far smaller.
const maxCapture = 8 << 20

// recorder passes an answer through and keeps its status, headers and, for
// JSON, body.
type recorder struct {
	http.ResponseWriter
	status    int
	header    http.Header
	capture   bool
	body      bytes.Buffer
	sniff     []byte
	truncated bool
	head      bool
}

func (r *recorder) WriteHeader(code int) {
	if r.status != 0 || (code >= 100 && code < 200) {
		r.ResponseWriter.WriteHeader(code)
		return
	}
	r.status = code
	r.header = r.ResponseWriter.Header().Clone()
	mediaType, _, _ := mime.ParseMediaType(r.header.Get("Content-Type"))
	r.capture = mediaType == "application/json" || strings.HasSuffix(mediaType, "+json") || mediaType == ""
	r.ResponseWriter.WriteHeader(code)
}

func (r *recorder) Write(p []byte) (int, error) {
	if r.status == 0 {
		r.WriteHeader(http.StatusOK)
	}
	n, err := r.ResponseWriter.Write(p)
	if len(r.sniff) < 512 {
		r.sniff = append(r.sniff, p[:min(n, 512-len(r.sniff))]...)
	}
	if r.capture && !r.truncated {
		if r.body.Len()+n > maxCapture {
			r.truncated = true
			r.body.Reset()
		} else {
			r.body.Write(p[:n])
		}
	}
	return n, err
}

// Flush and Unwrap keep http.Flusher and http.ResponseController (read
// and write deadlines) working through the recorder.
func (r *recorder) Flush() {
	if r.status == 0 {
		r.WriteHeader(http.StatusOK)
	}
	_ = http.NewResponseController(r.ResponseWriter).Flush()
}

func (r *recorder) Unwrap() http.ResponseWriter { return r.ResponseWriter }

// finalHeader is the header as sent, with the Content-Type net/http would
// sniff when the handler set none.
func (r *recorder) finalHeader() http.Header {
	h := r.header
	if h == nil {
		h = r.ResponseWriter.Header().Clone()
	}
	if h.Get("Content-Type") == "" && len(r.sniff) > 0 {
		h.Set("Content-Type", http.DetectContentType(r.sniff))
	}
	return h
}

type errReader struct{ err error }

func (e errReader) Read([]byte) (int, error) {
	if e.err == nil {
		return 0, io.EOF
	}
	return 0, e.err
}
