package api

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/labstack/echo/v4"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/patchfleet/ota/manifests"
)

// unmatchedRoute labels requests that matched no route, so that scanners
// probing random paths cannot blow up metric cardinality. Echo's router
// answers those with echo.ErrNotFound or echo.ErrMethodNotAllowed; handlers
// signal their own "not found" with errs.ErrNotFound instead.
const unmatchedRoute = "unmatched"

// otherMethod labels requests whose method is not one of the standard
// ones: net/http passes any token as a method, and each made-up one would
// otherwise be a new series that lives until the process exits.
const otherMethod = "other"

// metricMethod is method as a metric label, from a fixed set.
func metricMethod(method string) string {
	switch method {
	case http.MethodGet, http.MethodHead, http.MethodPost, http.MethodPut, http.MethodPatch,
		http.MethodDelete, http.MethodOptions, http.MethodConnect, http.MethodTrace:
		return method
	}
	return otherMethod
}

type httpMetrics struct {
	requests *prometheus.CounterVec
	duration *prometheus.HistogramVec
}

func newHTTPMetrics(reg *prometheus.Registry) *httpMetrics {
	m := &httpMetrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "otad_http_requests_total",
			Help: "HTTP requests served, by method, route template and status code.",
		}, []string{"method", "route", "code"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "otad_http_request_duration_seconds",
			Help:    "HTTP request latency, by method and route template.",
			Buckets: []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10},
		}, []string{"method", "route"}),
	}
	reg.MustRegister(m.requests, m.duration,
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

func metricsHandler(reg *prometheus.Registry) http.Handler {
	return promhttp.HandlerFor(reg, promhttp.HandlerOpts{Registry: reg})
}

// quietRoutes are logged at debug level when they succeed: probes and
// check-ins arrive thousands of times a minute and say nothing new; their
// failures, and every other request, are logged at info or above. Metrics
// count them all.
var quietRoutes = map[string]bool{"/healthz": true, "/readyz": true, "/metrics": true, "/api/v1/checkin": true}

// observe logs and counts every request once it has been answered. Every
// label and log attribute comes from a fixed set or from the server: the
// method (standard ones, else "other"), the route template (or
// "unmatched"), the status and the request id the server generated. It
// logs no client address, no path and no query string: the server keeps no
// client IPs, query strings may carry tokens, and paths are client-chosen
// text (/tuf/867530012345670.root.json would log an IMEI). A request that
// failed because its connection did gets the cause (ConnCause), never the
// network error's text, which names the client's address.
func observe(log *slog.Logger, m *httpMetrics) echo.MiddlewareFunc {
	return func(next echo.HandlerFunc) echo.HandlerFunc {
		return func(c echo.Context) error {
			start := time.Now()
			err := next(c)
			if err != nil {
				// Let the error handler write the response now, so the
				// status below is the one the client gets.
				c.Error(err)
			}
			elapsed := time.Since(start)
			route := c.Path()
			if route == "" || errors.Is(err, echo.ErrNotFound) || errors.Is(err, echo.ErrMethodNotAllowed) {
				route = unmatchedRoute
			}
			status := c.Response().Status
			req := c.Request()
			method := metricMethod(req.Method)
			m.requests.WithLabelValues(method, route, strconv.Itoa(status)).Inc()
			m.duration.WithLabelValues(method, route).Observe(elapsed.Seconds())

			level := slog.LevelInfo
			switch {
			case status >= 500:
				level = slog.LevelError
			case status < 400 && quietRoutes[route]:
				level = slog.LevelDebug
			}
			attrs := []slog.Attr{
				slog.String("request_id", requestID(c)),
				slog.String("method", method),
				slog.String("route", route),
				slog.Int("status", status),
				slog.Int64("bytes", c.Response().Size),
				slog.Duration("duration", elapsed),
			}
			if cause := connCause(err); cause != "" {
				attrs = append(attrs, slog.String("cause", cause))
			}
			log.LogAttrs(req.Context(), level, "request", attrs...)
			return nil
		}
	}
}

// bodyLimit rejects bodies over limit: at once when Content-Length says so,
// otherwise when a handler reads past it (http.MaxBytesError, mapped to 413).
// Any other read error of the body is the connection's, and becomes a
// clientConnError (connBody) that names its cause and not the client.
func bodyLimit(limitFor func(echo.Context) int64) echo.MiddlewareFunc {
	return func(next echo.HandlerFunc) echo.HandlerFunc {
		return func(c echo.Context) error {
			limit := limitFor(c)
			req := c.Request()
			if req.ContentLength > limit {
				return &http.MaxBytesError{Limit: limit}
			}
			// Replace the body on a copy: net/http sends "100 Continue" only
			// when the handler reads the body it gave out, so a handler that
			// answers without reading (an artifact already stored) spares
			// the client the upload.
			r := *req
			r.Body = http.MaxBytesReader(c.Response(), connBody{req.Body}, limit)
			c.SetRequest(&r)
			return next(c)
		}
	}
}

// requestIDs gives every request an id the server generates, in the
// X-Request-Id response header and every log line of the request. A
// client's X-Request-Id is ignored, not echoed: it is free text (it can
// carry an IMEI) of up to the header limit (a 60 KB log line).
func requestIDs(next echo.HandlerFunc) echo.HandlerFunc {
	return func(c echo.Context) error {
		c.Response().Header().Set(echo.HeaderXRequestID, newRequestID())
		return next(c)
	}
}

func newRequestID() string {
	var b [12]byte
	if _, err := rand.Read(b[:]); err != nil {
		panic(fmt.Sprintf("crypto/rand: %v", err)) // never fails on Linux
	}
	return hex.EncodeToString(b[:])
}

func requestID(c echo.Context) string {
	return c.Response().Header().Get(echo.HeaderXRequestID)
}

// bearerToken is the token of an "Authorization: Bearer TOKEN" header; ok
// is false for any other header, a bare token included. The scheme is
// case-insensitive (RFC 9110, section 11.1).
func bearerToken(header string) (token string, ok bool) {
	scheme, token, ok := strings.Cut(header, " ")
	if !ok || !strings.EqualFold(scheme, "Bearer") {
		return "", false
	}
	token = strings.TrimLeft(token, " ")
	return token, token != ""
}

// repoCollector exports seconds to expiry per published TUF role, read at
// scrape time so the value is never stale.
type repoCollector struct {
	repo *manifests.Repository
	desc *prometheus.Desc
}

func newRepoCollector(repo *manifests.Repository) *repoCollector {
	return &repoCollector{repo: repo, desc: prometheus.NewDesc("otad_tuf_expiry_seconds",
		"Seconds until the published metadata of each TUF role expires (negative once expired).",
		[]string{"role"}, nil)}
}

func (rc *repoCollector) Describe(ch chan<- *prometheus.Desc) { ch <- rc.desc }

func (rc *repoCollector) Collect(ch chan<- prometheus.Metric) {
	for role, secs := range rc.repo.RoleExpiries() {
		ch <- prometheus.MustNewConstMetric(rc.desc, prometheus.GaugeValue, secs, role)
	}
}
