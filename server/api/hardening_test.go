package api

import (
	"bytes"
	"crypto/rand"
	"encoding/base32"
	"encoding/hex"
	"fmt"
	"io"
	"log/slog"
	mrand "math/rand/v2"
	"net/http"
	"net/http/httptest"
	"net/url"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/labstack/echo/v4"
	"github.com/patchfleet/ota/server/api/wire"
	"github.com/prometheus/client_golang/prometheus"
)

// httpSeries counts the series of the request metrics in reg.
func httpSeries(tb testing.TB, reg *prometheus.Registry) int {
	tb.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		tb.Fatal(err)
	}
	n := 0
	for _, mf := range mfs {
		switch mf.GetName() {
		case "otad_http_requests_total", "otad_http_request_duration_seconds":
			n += len(mf.GetMetric())
		}
	}
	return n
}

func randomMethod() string {
	const letters = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
	b := make([]byte, 4+mrand.IntN(12))
	for i := range b {
		b[i] = letters[mrand.IntN(len(letters))]
	}
	return string(b)
}

// TestMetricsMethodCardinality: made-up methods, on routes and off them,
// all count as method "other", so that anyone (no token needed) cannot
// grow /metrics and the process's memory without bound.
func TestMetricsMethodCardinality(t *testing.T) {
	reg := prometheus.NewRegistry()
	s := New(Config{Registry: reg})
	targets := []string{"/healthz", "/metrics", "/no/such/path"}
	send := func(n int) {
		for i := range n {
			req := httptest.NewRequest(randomMethod(), targets[i%len(targets)], nil)
			s.ServeHTTP(httptest.NewRecorder(), req)
		}
	}
	send(len(targets))
	after1 := httpSeries(t, reg)
	send(10_000)
	if got := httpSeries(t, reg); got != after1 {
		t.Errorf("10,000 requests with random methods: %d request series, want %d as after one of each", got, after1)
	}
	for _, method := range []string{"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "CONNECT", "TRACE"} {
		if got := metricMethod(method); got != method {
			t.Errorf("metricMethod(%s) = %s, want it kept", method, got)
		}
	}
	if got := metricMethod("get"); got != otherMethod {
		t.Errorf(`metricMethod("get") = %s, want %s: methods are case-sensitive`, got, otherMethod)
	}
}

const plantedIMEI = "867530012345670"

// TestRequestIDIsServerGenerated: a client's X-Request-Id is neither
// echoed nor logged; the server's own id is.
func TestRequestIDIsServerGenerated(t *testing.T) {
	var logs bytes.Buffer
	s := New(Config{Logger: slog.New(slog.NewJSONHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug}))})
	for _, sent := range []string{strings.Repeat("a", 60<<10), "imei-" + plantedIMEI, "0123456789abcdef01234567"} {
		for _, target := range []string{"/healthz", "/no/such/path"} {
			logs.Reset()
			req := httptest.NewRequest(http.MethodGet, target, nil)
			req.Header.Set(echo.HeaderXRequestID, sent)
			rec := httptest.NewRecorder()
			s.ServeHTTP(rec, req)
			id := rec.Header().Get(echo.HeaderXRequestID)
			if _, err := hex.DecodeString(id); err != nil || len(id) != 24 || id == sent {
				t.Errorf("%s with X-Request-Id %.20q: answered X-Request-Id %.40q, want 24 new hex chars", target, sent, id)
			}
			if strings.Contains(logs.String(), sent) {
				t.Errorf("%s: the client's X-Request-Id %.20q was logged", target, sent)
			}
			if !strings.Contains(logs.String(), `"request_id":"`+id+`"`) {
				t.Errorf("%s: the log lacks the server's request id %s: %.300s", target, id, logs.String())
			}
		}
	}
}

// TestRequestLogHasNoPath: paths are client-chosen text; the request log
// names the route template (or "unmatched"), never the path.
func TestRequestLogHasNoPath(t *testing.T) {
	mock, _ := newHandsetServer(t, Config{})
	s, logs := newTestServer(t, Config{Fleet: mock.fleet})
	for _, target := range []string{
		"/tuf/" + plantedIMEI + ".root.json",
		"/" + plantedIMEI,
		"/api/v1/devices/" + plantedIMEI,
		"/api/v1/checkin/" + plantedIMEI + "?imei=" + plantedIMEI,
	} {
		rec := do(t, s, http.MethodGet, target, nil, offContract)
		if rec.Code != http.StatusNotFound && rec.Code != http.StatusMethodNotAllowed {
			t.Errorf("GET %s: %d, want 404 or 405", target, rec.Code)
		}
	}
	if !strings.Contains(logs.String(), `"route":"unmatched"`) {
		t.Fatalf("no request was logged: %s", logs)
	}
	if strings.Contains(logs.String(), plantedIMEI) {
		t.Errorf("a path reached the log:\n%s", logs)
	}
	if strings.Contains(logs.String(), `"path"`) {
		t.Errorf("request log lines carry a path attribute:\n%s", logs)
	}
}

// TestBearerScheme: the handset API takes only "Authorization: Bearer
// TOKEN" (scheme case-insensitive), never a bare token.
func TestBearerScheme(t *testing.T) {
	s, _ := newHandsetServer(t, Config{})
	tests := []struct {
		header string
		want   int
	}{
		{"Bearer " + goodToken, http.StatusOK},
		{"bearer " + goodToken, http.StatusOK},
		{"BEARER  " + goodToken, http.StatusOK},
		{"Bearer \t" + goodToken, http.StatusUnauthorized},
		{goodToken, http.StatusUnauthorized},
		{"Basic " + goodToken, http.StatusUnauthorized},
		{"Bearer" + goodToken, http.StatusUnauthorized},
		{"Token " + goodToken, http.StatusUnauthorized},
		{"Bearer ", http.StatusUnauthorized},
		{"", http.StatusUnauthorized},
	}
	for _, tc := range tests {
		req := httptest.NewRequest(http.MethodPost, "/api/v1/checkin", strings.NewReader(validCheckIn))
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set("Authorization", tc.header)
		if !strings.HasPrefix(tc.header, "Bearer ") || tc.want != http.StatusOK {
			offContract(req) // the document names the scheme "Bearer" only
		}
		rec := httptest.NewRecorder()
		s.ServeHTTP(rec, req)
		if rec.Code != tc.want {
			t.Errorf("Authorization %q: got %d %s, want %d", tc.header, rec.Code, rec.Body, tc.want)
		}
	}
}

// TestRateLimiterOnlyAuthenticated: 200,000 check-ins with random tokens,
// well formed or junk, with good bodies and bad, leave no limiter entry
// and the heap where it was; a real device still gets 429 with
// Retry-After once past its burst.
func TestRateLimiterOnlyAuthenticated(t *testing.T) {
	mock, _ := newHandsetServer(t, Config{})
	// A server of its own that logs nothing: 200,000 logged 401s would
	// grow the heap by themselves.
	s := New(Config{Fleet: mock.fleet, CheckInsPerMinute: 6, CheckInBurst: 10, ReportsPerMinute: 6, ReportBurst: 10})
	n := 200_000
	if testing.Short() {
		n = 20_000
	}
	enc := base32.StdEncoding.WithPadding(base32.NoPadding)
	token := func(i int) string {
		var b [32]byte
		rand.Read(b[:])
		switch i % 4 {
		case 0, 1:
			return "otadev_" + strings.ToLower(enc.EncodeToString(b[:]))
		case 2:
			return hex.EncodeToString(b[:mrand.IntN(32)])
		}
		return "otadev_" + string(b[:]) // not even UTF-8
	}
	bodies := []string{validCheckIn, `{"build":"x"}`, `[]`}
	paths := []string{"/api/v1/checkin", "/api/v1/checkin", "/api/v1/reports"}

	// Requests are built by hand and answered into a bare writer:
	// httptest's parse every request from text, which would double the
	// test's time under -race. Four clients at once also put the
	// limiter's locking to the race detector.
	urls := make([]*url.URL, len(paths))
	for i, p := range paths {
		urls[i] = &url.URL{Path: p}
	}
	const clients = 4
	var (
		wg     sync.WaitGroup
		failed atomic.Value
	)
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	for c := range clients {
		wg.Go(func() {
			for i := c; i < n && failed.Load() == nil; i += clients {
				body := bodies[i%len(bodies)]
				req := &http.Request{Method: http.MethodPost, URL: urls[i%len(urls)], Proto: "HTTP/1.1", ProtoMajor: 1, ProtoMinor: 1,
					Header: http.Header{"Content-Type": {"application/json"}, "Authorization": {"Bearer " + token(i)}},
					Body:   io.NopCloser(strings.NewReader(body)), ContentLength: int64(len(body)), Host: "otad.test"}
				w := &statusWriter{header: http.Header{}}
				s.ServeHTTP(w, req)
				if w.status == http.StatusOK || w.status == http.StatusCreated || w.status == http.StatusTooManyRequests {
					failed.Store(fmt.Sprintf("random token %d: got %d, want a refusal", i, w.status))
				}
			}
		})
	}
	wg.Wait()
	if msg := failed.Load(); msg != nil {
		t.Fatal(msg)
	}
	runtime.GC()
	runtime.ReadMemStats(&after)
	if got := s.checkInLimit.size() + s.reportLimit.size(); got != 0 {
		t.Errorf("%d random tokens left %d limiter entries, want 0", n, got)
	}
	growth := int64(after.HeapAlloc) - int64(before.HeapAlloc)
	t.Logf("%d random tokens: heap %+d KB", n, growth>>10)
	if growth > 10<<20 {
		t.Errorf("%d random tokens grew the heap by %d MB, want under 10", n, growth>>20)
	}

	for i := range 10 {
		if rec := post(t, s, "/api/v1/checkin", goodToken, validCheckIn); rec.Code != http.StatusOK {
			t.Fatalf("check-in %d of a real device, within its burst: got %d %s", i+1, rec.Code, rec.Body)
		}
	}
	rec := post(t, s, "/api/v1/checkin", goodToken, validCheckIn)
	if rec.Code != http.StatusTooManyRequests {
		t.Fatalf("check-in 11 of a real device: got %d, want 429", rec.Code)
	}
	if ra := rec.Header().Get("Retry-After"); ra == "" || ra == "0" {
		t.Errorf("Retry-After %q, want seconds to wait", ra)
	}
	// Once known, the device is charged for every request, a bad one
	// included, before anything is decoded.
	if rec := post(t, s, "/api/v1/checkin", goodToken, `[]`); rec.Code != http.StatusTooManyRequests {
		t.Errorf("a bad check-in past the burst: got %d, want 429", rec.Code)
	}
	if got := s.checkInLimit.size(); got != 1 {
		t.Errorf("%d limiter entries, want 1 for the real device", got)
	}
}

// TestLimiterSweep: a device's bucket goes once it has been idle for
// idleTTL, and not before.
func TestLimiterSweep(t *testing.T) {
	l := newLimiter(6, 10)
	t0 := time.Date(2026, 11, 23, 10, 0, 0, 0, time.UTC)
	dev, other := [32]byte{1}, [32]byte{2}
	l.admit(dev, t0)
	if known, _ := l.take(other, t0.Add(idleTTL-time.Second)); known || l.size() != 1 {
		t.Fatalf("before idleTTL: %d buckets (other known %v), want the device's only", l.size(), known)
	}
	if known, _ := l.take(other, t0.Add(idleTTL+2*time.Minute)); known || l.size() != 0 {
		t.Fatalf("after idleTTL: %d buckets, want 0", l.size())
	}
}

// statusWriter is the least http.ResponseWriter: it keeps the status.
type statusWriter struct {
	header http.Header
	status int
}

func (w *statusWriter) Header() http.Header         { return w.header }
func (w *statusWriter) Write(p []byte) (int, error) { return len(p), nil }
func (w *statusWriter) WriteHeader(status int)      { w.status = status }

// BenchmarkRandomTokenCheckIn is the cost of a check-in with a token the
// store does not know.
func BenchmarkRandomTokenCheckIn(b *testing.B) {
	mock, _ := newHandsetServer(b, Config{})
	s := New(Config{Fleet: mock.fleet, CheckInsPerMinute: 6, CheckInBurst: 10})
	for i := 0; b.Loop(); i++ {
		req := httptest.NewRequest(http.MethodPost, "/api/v1/checkin", strings.NewReader(validCheckIn))
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set("Authorization", "Bearer otadev_"+hex.EncodeToString([]byte{byte(i), byte(i >> 8), byte(i >> 16)}))
		s.ServeHTTP(httptest.NewRecorder(), req)
	}
}

const validEnroll = `{"model":"PX-7","build":"7.1.0","channel":"stable","enrollment_secret":"fleet-secret"}`

// TestEnrollmentLimit: one token bucket caps successful enrollments over
// all clients; refused enrollments do not use it up, and zero disables it.
func TestEnrollmentLimit(t *testing.T) {
	s, _ := newHandsetServer(t, Config{EnrollmentsPerMinute: 1, EnrollmentBurst: 3})
	refused := []struct {
		name, body, contentType string
		want                    int
	}{
		{"wrong secret", strings.Replace(validEnroll, "fleet-secret", "guess", 1), "application/json", http.StatusUnauthorized},
		{"bad body", strings.Replace(validEnroll, "PX-7", "PX 7", 1), "application/json", http.StatusBadRequest},
		{"not JSON", validEnroll, "text/plain", http.StatusUnsupportedMediaType},
	}
	for range 5 {
		for _, tc := range refused {
			req := httptest.NewRequest(http.MethodPost, "/api/v1/devices", strings.NewReader(tc.body))
			req.Header.Set("Content-Type", tc.contentType)
			offContract(req)
			rec := httptest.NewRecorder()
			s.ServeHTTP(rec, req)
			if rec.Code != tc.want {
				t.Fatalf("%s: got %d %s, want %d", tc.name, rec.Code, rec.Body, tc.want)
			}
		}
	}
	for i := range 3 {
		if rec := post(t, s, "/api/v1/devices", "", validEnroll); rec.Code != http.StatusCreated {
			t.Fatalf("enrollment %d, within the burst (after 15 refused ones): got %d %s, want 201", i+1, rec.Code, rec.Body)
		}
	}
	rec := post(t, s, "/api/v1/devices", "", validEnroll)
	if rec.Code != http.StatusTooManyRequests {
		t.Fatalf("enrollment 4: got %d %s, want 429", rec.Code, rec.Body)
	}
	if got := decodeError(t, rec); got.Code != "rate_limited" {
		t.Errorf("code %q, want rate_limited", got.Code)
	}
	// One a minute: the next token is about a minute away.
	if ra, err := strconv.Atoi(rec.Header().Get("Retry-After")); err != nil || ra < 50 || ra > 60 {
		t.Errorf("Retry-After %q, want about 60 seconds", rec.Header().Get("Retry-After"))
	}
	// Check-ins of enrolled devices are not affected.
	if rec := post(t, s, "/api/v1/checkin", goodToken, validCheckIn); rec.Code != http.StatusOK {
		t.Errorf("check-in while enrollment is limited: got %d", rec.Code)
	}

	open, _ := newHandsetServer(t, Config{})
	for i := range 50 {
		if rec := post(t, open, "/api/v1/devices", "", validEnroll); rec.Code != http.StatusCreated {
			t.Fatalf("no limit configured, enrollment %d: got %d", i+1, rec.Code)
		}
	}
}

// BenchmarkDecodeCheckIn is the cost of the strict decoding of a check-in
// body (Content-Type, the token pass, then encoding/json).
func BenchmarkDecodeCheckIn(b *testing.B) {
	e := echo.New()
	for b.Loop() {
		req := httptest.NewRequest(http.MethodPost, "/api/v1/checkin", strings.NewReader(validCheckIn))
		req.Header.Set("Content-Type", "application/json")
		var body wire.CheckInBody
		if err := decodeJSON(e.NewContext(req, nil), &body); err != nil {
			b.Fatal(err)
		}
	}
}
