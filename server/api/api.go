// Package api is the Echo application: routing, middleware, the one error
// handler and the JSON shapes clients see. Handlers decode, call one domain
// method and encode; the domain lives in package server.
package api

import (
	"log/slog"
	"net/http"
	"strings"
	"time"

	"github.com/labstack/echo/v4"
	"github.com/labstack/echo/v4/middleware"
	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/time/rate"

	"github.com/patchfleet/ota/clock"
	"github.com/patchfleet/ota/manifests"
	"github.com/patchfleet/ota/server"
	"github.com/patchfleet/ota/server/audit"
	"github.com/patchfleet/ota/server/identity"
	"github.com/patchfleet/ota/server/rollout"
)

// Check is one dependency that /readyz probes.
type Check struct {
	Name   string // "database", "storage"
	Pinger server.Pinger
}

// Config is what the application needs from its wiring in cmd/otad.
type Config struct {
	Logger *slog.Logger
	// Checks decide readiness; each runs on every /readyz with ReadyTimeout.
	Checks       []Check
	ReadyTimeout time.Duration
	// MaxBody bounds request bodies (413 past it). Routes that take uploads
	// raise it for themselves.
	MaxBody int64
	// Registry receives the HTTP metrics and is what /metrics serves. A
	// registry per server (not the global one) lets tests run many servers.
	Registry *prometheus.Registry
	// RolloutMetrics, when set, is registered on Registry (see
	// NewRolloutMetrics).
	RolloutMetrics *RolloutMetrics

	// Repo, Blobs and Tokens enable the TUF routes (/tuf/, /targets/) and
	// the admin API; without Repo only health and metrics are served.
	Repo   *manifests.Repository
	Blobs  manifests.BlobStore
	Tokens identity.Tokens
	// Users, when its Store is set, enables the users and tokens routes.
	Users identity.Users
	// Audit is where administrative actions are appended and what GET
	// /admin/audit reads; without it they are not logged (otad always
	// sets it).
	Audit audit.AuditStore
	// AuditAnchor holds the audit log's checkpoints, which GET
	// /admin/audit/verify checks the chain against (nil: none, and the
	// answer says the log is not anchored).
	AuditAnchor audit.AuditAnchor
	// Now is the clock (default time.Now): of audit entries, TUF
	// timestamp caching and the rate limits' refill.
	Now func() time.Time
	// TargetsRedirect answers /targets/ with a redirect to a presigned URL
	// valid for PresignTTL when the store can presign (S3).
	TargetsRedirect bool
	PresignTTL      time.Duration
	// DownloadStallTimeout closes an artifact download that has taken no
	// bytes for this long (default 60 s). Downloads are not bound by the
	// http.Server's WriteTimeout, which a large build over a slow link
	// would outlast.
	DownloadStallTimeout time.Duration
	// MaxArtifactSize bounds artifact uploads.
	MaxArtifactSize int64

	// Web, when set, is the dashboard: its pages are mounted beside the
	// API (see mountWeb).
	Web Pages

	// Fleet enables the handset API and the fleet summary.
	Fleet *server.Fleet
	// Rollouts enables the rollout routes of the admin API.
	Rollouts *rollout.RolloutService
	// Reports enables the rollout and exposure reports of the admin API.
	Reports *server.Reports
	// PublicURL is the base URL handsets reach the server at (offers name
	// metadata and targets URLs under it); empty answers root-relative
	// paths ("/tuf/", "/targets/"), never the request's Host header.
	PublicURL string
	// CheckInsPerMinute and ReportsPerMinute limit each device token
	// (with bursts of CheckInBurst and ReportBurst); zero disables.
	CheckInsPerMinute, ReportsPerMinute float64
	CheckInBurst, ReportBurst           int
	// EnrollmentsPerMinute limits successful enrollments across all
	// clients of this replica (one token bucket, bursts of
	// EnrollmentBurst); zero disables.
	EnrollmentsPerMinute float64
	EnrollmentBurst      int
}

// Server is the HTTP application. It is an http.Handler; cmd/otad owns the
// listener, timeouts and shutdown.
type Server struct {
	echo    *echo.Echo
	log     *slog.Logger
	checks  []Check
	timeout time.Duration

	repo            *manifests.Repository
	blobs           manifests.BlobStore
	tokens          identity.Tokens
	targetsRedirect bool
	presignTTL      time.Duration
	downloadStall   time.Duration

	fleet        *server.Fleet
	publicURL    string
	checkInLimit *limiter
	reportLimit  *limiter
	enrollLimit  *rate.Limiter

	rollouts *rollout.RolloutService
	reports  *server.Reports

	users       identity.Users
	auditLog    audit.AuditStore
	auditAnchor audit.AuditAnchor
	clock       func() time.Time

	// access is what each route needs, by routeKey, as routes.add
	// declared it: API routes and the dashboard's pages.
	access map[string]RouteAccess
}

func (s *Server) now() time.Time { return clock.Now(s.clock).UTC() }

// New builds the application with its middleware and routes.
func New(cfg Config) *Server {
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.ReadyTimeout <= 0 {
		cfg.ReadyTimeout = 2 * time.Second
	}
	if cfg.MaxBody <= 0 {
		cfg.MaxBody = 1 << 20
	}
	if cfg.Registry == nil {
		cfg.Registry = prometheus.NewRegistry()
	}
	if cfg.PresignTTL <= 0 {
		cfg.PresignTTL = 5 * time.Minute
	}
	if cfg.DownloadStallTimeout <= 0 {
		cfg.DownloadStallTimeout = time.Minute
	}
	if cfg.MaxArtifactSize <= 0 {
		cfg.MaxArtifactSize = 8 << 30
	}

	e := echo.New()
	e.HideBanner = true
	e.HidePort = true
	s := &Server{echo: e, log: cfg.Logger, checks: cfg.Checks, timeout: cfg.ReadyTimeout,
		repo: cfg.Repo, blobs: cfg.Blobs, tokens: cfg.Tokens,
		targetsRedirect: cfg.TargetsRedirect, presignTTL: cfg.PresignTTL, downloadStall: cfg.DownloadStallTimeout,
		fleet: cfg.Fleet, publicURL: strings.TrimSuffix(cfg.PublicURL, "/"),
		checkInLimit: newLimiter(cfg.CheckInsPerMinute, cfg.CheckInBurst),
		reportLimit:  newLimiter(cfg.ReportsPerMinute, cfg.ReportBurst),
		enrollLimit:  newGlobalLimiter(cfg.EnrollmentsPerMinute, cfg.EnrollmentBurst)}
	s.rollouts = cfg.Rollouts
	s.reports = cfg.Reports
	s.users, s.auditLog, s.clock = cfg.Users, cfg.Audit, cfg.Now
	s.auditAnchor = cfg.AuditAnchor
	e.HTTPErrorHandler = s.handleError

	// Order matters: the request id comes first so every later log line
	// carries it; observe sits outside recover so that a recovered panic is
	// still logged and counted as the 500 it became; the body limit applies
	// before any handler reads.
	e.Use(requestIDs)
	e.Use(observe(cfg.Logger, newHTTPMetrics(cfg.Registry)))
	e.Use(middleware.RecoverWithConfig(middleware.RecoverConfig{
		LogErrorFunc: func(c echo.Context, err error, stack []byte) error {
			cfg.Logger.ErrorContext(c.Request().Context(), "panic in handler",
				slog.String("request_id", requestID(c)),
				slog.String("route", c.Path()),
				slog.Any("error", err),
				slog.String("stack", string(stack)))
			return err
		},
	}))
	e.Use(bodyLimit(func(c echo.Context) int64 {
		if c.Path() == artifactRoute {
			return cfg.MaxArtifactSize
		}
		return cfg.MaxBody
	}))

	root := routes{s: s, g: e}
	root.add(http.MethodGet, "/healthz", public, s.healthz)
	root.add(http.MethodGet, "/readyz", public, s.readyz)
	root.add(http.MethodGet, "/metrics", public, echo.WrapHandler(metricsHandler(cfg.Registry)))
	if cfg.RolloutMetrics != nil {
		cfg.Registry.MustRegister(cfg.RolloutMetrics)
	}
	root.add(http.MethodGet, OpenAPIRoute, public, openAPIHandler())
	if s.repo != nil {
		cfg.Registry.MustRegister(newRepoCollector(s.repo))
		// TUF metadata and targets are signed: anyone may fetch them.
		root.add(http.MethodGet, "/tuf/:name", public, s.tufMetadata)
		root.add(http.MethodHead, "/tuf/:name", public, s.tufMetadata)
		root.add(http.MethodGet, "/targets/*", public, s.targetFile)
		root.add(http.MethodHead, "/targets/*", public, s.targetFile)
		s.mountAdmin()
	}
	if s.fleet != nil {
		s.mountHandset()
	}
	if cfg.Web != nil {
		s.mountWeb(cfg.Web)
	}
	// Every route must have been declared with what it needs (routes.add).
	if err := s.CheckRoutes(); err != nil {
		panic(err)
	}
	return s
}

// ServeHTTP makes Server an http.Handler.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	s.echo.ServeHTTP(w, r)
}

// Echo exposes the router so that later wiring (and tests) can mount routes
// with the same middleware and error handling.
func (s *Server) Echo() *echo.Echo { return s.echo }
