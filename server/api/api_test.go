package api

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"testing/synctest"
	"time"

	"github.com/labstack/echo/v4"

	"github.com/patchfleet/ota/server"
	"github.com/patchfleet/ota/server/api/wire"
	"github.com/patchfleet/ota/server/errs"
)

// pingFunc is a function-field fake for server.Pinger.
type pingFunc func(ctx context.Context) error

func (f pingFunc) Ping(ctx context.Context) error { return f(ctx) }

var _ server.Pinger = pingFunc(nil)

func ok(context.Context) error { return nil }

// newTestServer builds a Server whose logs land in the returned buffer and
// that validates every request and answer against openapi.yaml.
func newTestServer(tb testing.TB, cfg Config) (*Server, *bytes.Buffer) {
	tb.Helper()
	var logs bytes.Buffer
	cfg.Logger = slog.New(slog.NewJSONHandler(&logs, nil))
	s := New(cfg)
	checkContract(tb, s)
	return s, &logs
}

// do sends a request to h; opts adjust it first (offContract).
func do(tb testing.TB, h http.Handler, method, target string, body io.Reader, opts ...func(*http.Request)) *httptest.ResponseRecorder {
	tb.Helper()
	req := httptest.NewRequest(method, target, body)
	req.RemoteAddr = "192.0.2.77:4242" // must never show up in logs
	for _, o := range opts {
		o(req)
	}
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	return rec
}

func decodeError(tb testing.TB, rec *httptest.ResponseRecorder) wire.ErrorDetail {
	tb.Helper()
	if ct := rec.Header().Get("Content-Type"); !strings.HasPrefix(ct, "application/json") {
		tb.Fatalf("Content-Type = %q, want application/json; body %s", ct, rec.Body)
	}
	var body wire.ErrorBody
	if err := json.Unmarshal(rec.Body.Bytes(), &body); err != nil {
		tb.Fatalf("error body %q is not JSON: %v", rec.Body, err)
	}
	if body.Error.Code == "" || body.Error.Message == "" {
		tb.Fatalf("error body %s lacks code or message", rec.Body)
	}
	return body.Error
}

func TestHealthz(t *testing.T) {
	s, _ := newTestServer(t, Config{Checks: []Check{{"database", pingFunc(func(context.Context) error {
		return errors.New("down")
	})}}})
	rec := do(t, s, http.MethodGet, "/healthz", nil)
	if rec.Code != http.StatusOK {
		t.Fatalf("got %d, want 200 even with a failing dependency: liveness checks no dependency", rec.Code)
	}
}

func TestReadyz(t *testing.T) {
	down := pingFunc(func(context.Context) error { return errors.New("dial tcp 127.0.0.1:5432: connection refused") })
	hang := pingFunc(func(ctx context.Context) error { <-ctx.Done(); return ctx.Err() })
	tests := []struct {
		name       string
		checks     []Check
		wantStatus int
		wantChecks map[string]string
		wantReason string
	}{
		{
			name:       "all up",
			checks:     []Check{{"database", pingFunc(ok)}, {"storage", pingFunc(ok)}},
			wantStatus: http.StatusOK,
			wantChecks: map[string]string{"database": "ok", "storage": "ok"},
		},
		{
			name:       "database down",
			checks:     []Check{{"database", down}, {"storage", pingFunc(ok)}},
			wantStatus: http.StatusServiceUnavailable,
			wantChecks: map[string]string{"database": "dial tcp 127.0.0.1:5432: connection refused", "storage": "ok"},
			wantReason: "database: dial tcp 127.0.0.1:5432: connection refused",
		},
		{
			name:       "storage hangs past the deadline",
			checks:     []Check{{"database", pingFunc(ok)}, {"storage", hang}},
			wantStatus: http.StatusServiceUnavailable,
			wantChecks: map[string]string{"database": "ok", "storage": "context deadline exceeded"},
			wantReason: "storage: context deadline exceeded",
		},
	}
	for _, tc := range tests {
		// In a bubble, time moves only when every goroutine waits: the
		// probe's time is its own, not a loaded machine's.
		t.Run(tc.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				s, _ := newTestServer(t, Config{Checks: tc.checks, ReadyTimeout: 50 * time.Millisecond})
				start := time.Now()
				rec := do(t, s, http.MethodGet, "/readyz", nil)
				if elapsed := time.Since(start); elapsed > 50*time.Millisecond {
					t.Errorf("readyz took %v, past its 50ms deadline; a hanging dependency must not hang the probe", elapsed)
				}
				if rec.Code != tc.wantStatus {
					t.Fatalf("got status %d, want %d; body %s", rec.Code, tc.wantStatus, rec.Body)
				}
				var body readyBody
				if err := json.Unmarshal(rec.Body.Bytes(), &body); err != nil {
					t.Fatal(err)
				}
				for name, want := range tc.wantChecks {
					if got := body.Checks[name]; got != want {
						t.Errorf("checks[%s] = %q, want %q", name, got, want)
					}
				}
				if tc.wantReason == "" {
					if body.Error != nil {
						t.Errorf("ready answer carries error %+v", body.Error)
					}
					return
				}
				if got := decodeError(t, rec); got.Code != "not_ready" || got.Message != tc.wantReason {
					t.Errorf("got error %+v, want not_ready %q", got, tc.wantReason)
				}
			})
		})
	}
}

func TestErrorResponses(t *testing.T) {
	s, logs := newTestServer(t, Config{MaxBody: 16})
	e := s.Echo()
	for _, sentinel := range []error{errs.ErrInvalid, errs.ErrUnauthorized, errs.ErrForbidden,
		errs.ErrNotFound, errs.ErrConflict, errs.ErrUnavailable} {
		e.GET("/sentinel/"+strings.ReplaceAll(sentinel.Error(), " ", "-"), func(echo.Context) error {
			return fmt.Errorf("device d1: %w", sentinel)
		})
	}
	e.GET("/internal", func(echo.Context) error {
		return errors.New("pq: password authentication failed for db.internal:5432")
	})
	e.GET("/panic", func(echo.Context) error { panic("boom") })
	e.POST("/echo", func(c echo.Context) error {
		b, err := io.ReadAll(c.Request().Body)
		if err != nil {
			return err
		}
		return c.Blob(http.StatusOK, "text/plain", b)
	})

	tests := []struct {
		name, method, target string
		body                 io.Reader
		wantStatus           int
		wantCode             string
		wantMessage          string
	}{
		{"invalid", "GET", "/sentinel/invalid-request", nil, 400, "invalid", "device d1: invalid request"},
		{"unauthorized", "GET", "/sentinel/unauthorized", nil, 401, "unauthorized", "device d1: unauthorized"},
		{"forbidden", "GET", "/sentinel/forbidden", nil, 403, "forbidden", "device d1: forbidden"},
		{"not found sentinel", "GET", "/sentinel/not-found", nil, 404, "not_found", "device d1: not found"},
		{"conflict", "GET", "/sentinel/conflict", nil, 409, "conflict", "device d1: conflict"},
		{"unavailable", "GET", "/sentinel/unavailable", nil, 503, "unavailable", "device d1: unavailable"},
		{"internal hides details", "GET", "/internal", nil, 500, "internal", "internal error"},
		{"panic", "GET", "/panic", nil, 500, "internal", "internal error"},
		{"unknown route", "GET", "/no/such/thing", nil, 404, "not_found", "Not Found"},
		{"wrong method", "DELETE", "/healthz", nil, 405, "method_not_allowed", "Method Not Allowed"},
		{"body over limit, streamed", "POST", "/echo", io.MultiReader(strings.NewReader(strings.Repeat("x", 17))), 413, "body_too_large", "request body larger than the limit of 16 bytes"},
		{"body over limit, declared", "POST", "/echo", strings.NewReader(strings.Repeat("x", 17)), 413, "body_too_large", "request body larger than the limit of 16 bytes"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			rec := do(t, s, tc.method, tc.target, tc.body, offContract) // routes only this test has
			if rec.Code != tc.wantStatus {
				t.Fatalf("got status %d, want %d; body %s", rec.Code, tc.wantStatus, rec.Body)
			}
			got := decodeError(t, rec)
			if got.Code != tc.wantCode || got.Message != tc.wantMessage {
				t.Errorf("got %+v, want code %q message %q", got, tc.wantCode, tc.wantMessage)
			}
		})
	}

	if rec := do(t, s, "POST", "/echo", strings.NewReader("small"), offContract); rec.Code != 200 || rec.Body.String() != "small" {
		t.Errorf("body under the limit: got %d %q, want 200 \"small\"", rec.Code, rec.Body)
	}
	if !strings.Contains(logs.String(), "db.internal:5432") {
		t.Error("internal error details were not logged")
	}
	if !strings.Contains(logs.String(), `"msg":"panic in handler"`) {
		t.Error("panic was not logged")
	}
	if strings.Contains(logs.String(), "192.0.2.77") {
		t.Error("a client IP address reached the logs")
	}
}

func TestRequestID(t *testing.T) {
	var buf bytes.Buffer
	s := New(Config{Logger: slog.New(slog.NewJSONHandler(&buf, &slog.HandlerOptions{Level: slog.LevelDebug}))})
	logs := &buf
	rec := do(t, s, http.MethodGet, "/healthz", nil)
	id := rec.Header().Get(echo.HeaderXRequestID)
	if len(id) != 24 {
		t.Fatalf("X-Request-Id = %q, want 24 hex chars", id)
	}
	if !strings.Contains(logs.String(), `"request_id":"`+id+`"`) {
		t.Errorf("request log lacks request_id %s: %s", id, logs)
	}
}

func TestMetrics(t *testing.T) {
	s, _ := newTestServer(t, Config{})
	for range 3 {
		do(t, s, http.MethodGet, "/healthz", nil)
	}
	do(t, s, http.MethodGet, "/random/scanner/path/1", nil, offContract)
	do(t, s, http.MethodGet, "/random/scanner/path/2", nil, offContract)

	rec := do(t, s, http.MethodGet, "/metrics", nil)
	if rec.Code != http.StatusOK {
		t.Fatalf("got %d, want 200", rec.Code)
	}
	out := rec.Body.String()
	for _, want := range []string{
		`otad_http_requests_total{code="200",method="GET",route="/healthz"} 3`,
		`otad_http_requests_total{code="404",method="GET",route="unmatched"} 2`,
		`otad_http_request_duration_seconds_count{method="GET",route="/healthz"} 3`,
		`go_goroutines`,
	} {
		if !strings.Contains(out, want) {
			t.Errorf("/metrics lacks %q", want)
		}
	}
	if strings.Contains(out, "scanner") {
		t.Error("unmatched paths leaked into metric labels")
	}
}

func TestClientCanceledIsNotAServerError(t *testing.T) {
	s, logs := newTestServer(t, Config{})
	s.Echo().GET("/slow", func(c echo.Context) error {
		<-c.Request().Context().Done()
		return fmt.Errorf("query: %w", c.Request().Context().Err())
	})
	ctx, cancel := context.WithCancel(context.Background())
	req := httptest.NewRequest(http.MethodGet, "/slow", nil).WithContext(ctx)
	offContract(req) // a route only this test has
	cancel()
	rec := httptest.NewRecorder()
	s.ServeHTTP(rec, req)
	if rec.Code != 499 {
		t.Errorf("got %d, want 499", rec.Code)
	}
	if strings.Contains(logs.String(), `"level":"ERROR"`) {
		t.Errorf("a request the client canceled was logged as an error: %s", logs)
	}
}

// TestQuietRoutes: successful probes are not logged at info (they come
// every few seconds); a failing one is.
func TestQuietRoutes(t *testing.T) {
	s, logs := newTestServer(t, Config{Checks: []Check{{"database", pingFunc(func(context.Context) error {
		return errors.New("down")
	})}}})
	do(t, s, http.MethodGet, "/healthz", nil)
	if strings.Contains(logs.String(), `"route":"/healthz"`) {
		t.Errorf("a successful /healthz was logged at info: %s", logs)
	}
	do(t, s, http.MethodGet, "/readyz", nil)
	if !strings.Contains(logs.String(), `"route":"/readyz"`) {
		t.Error("a failing /readyz (503) was not logged")
	}
}
