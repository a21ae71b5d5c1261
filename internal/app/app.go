// Package app wires the OTA server together from parts its caller has
// opened (a migrated database, a blob store, the online key): the TUF
// repository, the fleet and the HTTP API on top of them, and the
// background jobs that keep them current. cmd/otad and internal/apitest
// both run it, so tests exercise the wiring the binary runs.
package app

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/patchfleet/ota/clock"
	"github.com/patchfleet/ota/manifests"
	"github.com/patchfleet/ota/server"
	"github.com/patchfleet/ota/server/api"
	"github.com/patchfleet/ota/server/audit"
	"github.com/patchfleet/ota/server/identity"
	"github.com/patchfleet/ota/server/rollout"
	"github.com/patchfleet/ota/server/sqlstore"
	"github.com/patchfleet/ota/signing"
)

// Defaults for the zero values of Config.
const (
	DefaultRefreshInterval = 5 * time.Second
	DefaultReportRetention = 90 * 24 * time.Hour
	// DefaultAuditCheckpointInterval is how often the audit log's head
	// is checkpointed, when it moved.
	DefaultAuditCheckpointInterval = time.Minute
	// DefaultFoldInterval keeps the rollups' delta logs to about a
	// second of changes (5,000 rows at the rate of a rollout wave), which
	// a report reads in a few milliseconds.
	DefaultFoldInterval = time.Second
)

// Config is what an App is built from. DB, Blobs and Online are required;
// the App uses them but does not close them.
type Config struct {
	DB     *sqlstore.DB // migrated
	Blobs  manifests.BlobStore
	Online signing.Signer // the timestamp/snapshot key
	Logger *slog.Logger   // default: discard
	// Now is the one clock of every part the App builds: repository,
	// fleet, identity, rollouts, reports, audit, API and pages (default
	// time.Now). The background jobs' intervals are real time.
	Now    func() time.Time
	Expiry manifests.Expiry // default manifests.DefaultExpiry

	// EnrollmentSecret, PollInterval and LastSeenResolution configure
	// the handset API (server.Fleet).
	EnrollmentSecret   string
	PollInterval       time.Duration
	LastSeenResolution time.Duration
	// SecretFailuresPerMinute and SecretFailureBurst limit wrong
	// enrollment secrets (server.Fleet.SecretFailures); zero is no
	// limit.
	SecretFailuresPerMinute float64
	SecretFailureBurst      int
	// TokenLifetime is how long an API token minted without an expiry
	// works (default identity.DefaultTokenLifetime).
	TokenLifetime time.Duration
	// RolloutRefresh is how long a replica decides check-ins on its copy
	// of the rollouts before reading them again (default
	// server.DefaultRolloutRefresh).
	RolloutRefresh time.Duration
	// MaxOpenRollouts caps the rollouts not finished (draft, running,
	// paused); default rollout.DefaultMaxOpenRollouts.
	MaxOpenRollouts int

	// RefreshInterval is how often the background jobs run (default
	// DefaultRefreshInterval); ReportRetention is how long install
	// reports are kept (default DefaultReportRetention).
	RefreshInterval time.Duration
	ReportRetention time.Duration
	// AuditCheckpointInterval is how often the replica holding the lease
	// checkpoints the audit log, when entries were appended (default
	// DefaultAuditCheckpointInterval; checked at each pass, so at most
	// as often as RefreshInterval).
	AuditCheckpointInterval time.Duration
	// FoldInterval is how often this replica folds the rollups' delta
	// logs into the rollups (sqlstore.DB.FoldRollups; default
	// DefaultFoldInterval). Every replica folds; folds take turns.
	// Reports are exact either way: they add the unfolded deltas, which
	// a longer interval only makes more of.
	FoldInterval time.Duration
	// AfterPass, when set, is called after each pass of the background
	// jobs, so that a test waits for one instead of sleeping.
	AfterPass func()
	// Holder names this replica in the lease of the jobs that one
	// replica runs for all (PoliciesLease); default a random id, new at
	// each start. AfterPolicies, when set, is called after each pass of
	// those jobs, which only the holder of the lease runs.
	Holder        string
	AfterPolicies func()

	// Web configures the dashboard (on by default).
	Web WebConfig

	// API tunes the HTTP application. New sets its Logger, Checks (the
	// database and the storage), Repo, Blobs, Tokens, Fleet and
	// RolloutMetrics.
	API api.Config
}

// App is the server built on one database and one blob store: the TUF
// repository, the fleet and the HTTP API (an http.Handler; the caller owns
// the listener), and the background jobs that Run starts.
type App struct {
	Repo  *manifests.Repository
	Fleet *server.Fleet
	// Eligibility is the check-ins' copy of the rollouts.
	Eligibility *server.RolloutEligibility
	// Rollouts is the operators' side of rollouts, behind the admin API.
	Rollouts *rollout.RolloutService
	API      *api.Server
	// Evaluator runs the rollout policies (auto-halt, auto-advance) in
	// the background jobs, on the replica holding PoliciesLease.
	Evaluator *rollout.RolloutEvaluator
	// RolloutMetrics are the rollout metrics on the API's /metrics; the
	// fleet reports check-in decisions and reports to them, the
	// Evaluator its events.
	RolloutMetrics *api.RolloutMetrics
	// Users, Sessions, Tokens and Audit are the identity services: the
	// dashboard logs in through Users and Sessions, the API
	// authenticates through Tokens, and admin actions go to Audit.
	Users    identity.Users
	Sessions identity.Sessions
	Tokens   identity.Tokens
	Audit    audit.AuditStore
	// Checkpoints anchor the audit log outside the database: signed by
	// Online, stored in Blobs, made by the background jobs under the
	// lease and checked by the API's and the pages' verify.
	Checkpoints *audit.AuditCheckpoints

	cfg      Config
	log      *slog.Logger
	stop     context.CancelFunc
	done     chan struct{}
	folded   chan struct{} // closed when foldLoop ends
	policies policyJobs
	// sampler takes the exposure samples at each pass (every replica;
	// the first writer of a bucket wins).
	sampler server.ExposureSampler
}

// New builds the App: it loads the published TUF repository from the blob
// store and finishes a publish that a crash interrupted (logging, not
// returning, an error in that), then builds the fleet and the API.
func New(ctx context.Context, cfg Config) (*App, error) {
	if cfg.DB == nil || cfg.Blobs == nil || cfg.Online == nil {
		return nil, errors.New("app: DB, Blobs and Online are required")
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.RefreshInterval <= 0 {
		cfg.RefreshInterval = DefaultRefreshInterval
	}
	if cfg.MaxOpenRollouts <= 0 {
		cfg.MaxOpenRollouts = rollout.DefaultMaxOpenRollouts
	}
	if cfg.ReportRetention <= 0 {
		// Zero must not mean "keep nothing": PruneReports would delete
		// every report.
		cfg.ReportRetention = DefaultReportRetention
	}
	if cfg.AuditCheckpointInterval <= 0 {
		cfg.AuditCheckpointInterval = DefaultAuditCheckpointInterval
	}
	if cfg.FoldInterval <= 0 {
		cfg.FoldInterval = DefaultFoldInterval
	}
	// One clock for every part built below (and the pages).
	cfg.Now = clock.Or(cfg.Now)
	a := &App{cfg: cfg, log: cfg.Logger}
	a.sampler = server.ExposureSampler{Reports: cfg.DB.Reports(), Samples: cfg.DB.Reports()}
	repo, err := manifests.New(manifests.Config{
		Blobs: cfg.Blobs, Drafts: cfg.DB.Drafts(), Lock: cfg.DB.RepoLock(), Online: cfg.Online,
		Expiry: cfg.Expiry, Now: cfg.Now, Logger: cfg.Logger,
	})
	if err != nil {
		return nil, err
	}
	if err := repo.Load(ctx); err != nil {
		return nil, fmt.Errorf("load TUF repository from storage: %w", err)
	}
	if err := repo.ResumePending(ctx); err != nil {
		a.log.Error("resuming a pending publish", slog.Any("error", err))
	}
	a.Repo = repo
	a.buildPolicies()

	a.Eligibility = &server.RolloutEligibility{Store: cfg.DB.Rollouts(), Source: repo,
		Refresh: cfg.RolloutRefresh, Logger: cfg.Logger}
	a.Fleet = &server.Fleet{
		Store:              cfg.DB.Devices(),
		Eligibility:        a.Eligibility,
		Observer:           a.RolloutMetrics,
		LastSeenResolution: cfg.LastSeenResolution,
		Catalog:            &server.PublishedPatches{Source: repo},
		EnrollmentSecret:   cfg.EnrollmentSecret,
		SecretFailures:     server.NewFailureBucket(cfg.SecretFailuresPerMinute, cfg.SecretFailureBurst),
		PollInterval:       cfg.PollInterval,
		Now:                cfg.Now,
	}
	apiCfg := cfg.API
	apiCfg.Logger = cfg.Logger
	apiCfg.Checks = []api.Check{
		{Name: "database", Pinger: cfg.DB},
		{Name: "storage", Pinger: cfg.Blobs},
	}
	apiCfg.Repo = repo
	apiCfg.Blobs = cfg.Blobs
	// The device cookies' key is the database's, so that every replica
	// accepts the cookies another issued.
	deviceKey, err := cfg.DB.ServerSecret(ctx, sqlstore.DeviceCookieSecret)
	if err != nil {
		return nil, fmt.Errorf("device cookie key: %w", err)
	}
	a.Users = identity.Users{Store: cfg.DB.Users(), Now: cfg.Now,
		Limiter: identity.NewLoginLimiter(loginFailures, loginWindow), Devices: &identity.DeviceCookies{Key: deviceKey}}
	a.Sessions = identity.Sessions{Store: cfg.DB.Sessions(), Now: cfg.Now}
	a.Tokens = identity.Tokens{Store: cfg.DB.Tokens(), Users: cfg.DB.Users(), Now: cfg.Now, Lifetime: cfg.TokenLifetime}
	a.Audit = cfg.DB.Audit()
	a.Checkpoints = &audit.AuditCheckpoints{Blobs: cfg.Blobs, Signer: cfg.Online, Log: a.Audit, Now: cfg.Now}
	apiCfg.Tokens = a.Tokens
	apiCfg.Users, apiCfg.Audit, apiCfg.Now = a.Users, a.Audit, cfg.Now
	apiCfg.AuditAnchor = a.Checkpoints
	apiCfg.Fleet = a.Fleet
	// A change made through this replica, by an operator or by the
	// policies, reaches its check-ins at once; other replicas see it
	// within RolloutRefresh.
	a.Evaluator.OnChange = a.Eligibility.Invalidate
	a.Rollouts = &rollout.RolloutService{Store: cfg.DB.Rollouts(), Releases: repo, Now: cfg.Now,
		OnChange: a.Eligibility.Invalidate, Approvals: cfg.DB.Approvals(), Audit: a.Audit, MaxOpen: cfg.MaxOpenRollouts}
	apiCfg.Rollouts = a.Rollouts
	apiCfg.RolloutMetrics = a.RolloutMetrics
	// Reports read the rollups only, never the fleet.
	apiCfg.Reports = &server.Reports{Store: cfg.DB.Reports(), Rollouts: cfg.DB.Rollouts(), Now: cfg.Now}
	if !cfg.Web.Disabled {
		pages, err := a.newWeb(cfg.Web, apiCfg.Reports)
		if err != nil {
			return nil, err
		}
		apiCfg.Web = webPages{pages}
	}
	a.API = api.New(apiCfg)
	return a, nil
}

// Run starts the background jobs and returns. They run until ctx ends or
// Close is called. Run an App once.
func (a *App) Run(ctx context.Context) {
	ctx, a.stop = context.WithCancel(ctx)
	a.done = make(chan struct{})
	a.folded = make(chan struct{})
	go a.repositoryLoop(ctx)
	go a.foldLoop(ctx)
}

// foldLoop folds the rollups' delta logs every FoldInterval until ctx
// ends.
func (a *App) foldLoop(ctx context.Context) {
	defer close(a.folded)
	tick := time.NewTicker(a.cfg.FoldInterval)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		if _, err := a.cfg.DB.FoldRollups(ctx); err != nil && ctx.Err() == nil {
			a.log.Error("folding the rollups' delta logs; reports stay exact, they read the unfolded deltas too", slog.Any("error", err))
		}
	}
}

// Close stops the background jobs and waits for them to end. The
// database and the blob store stay open: they are the caller's.
func (a *App) Close() {
	if a.stop == nil {
		return
	}
	a.stop()
	<-a.done
	<-a.folded
}

// repositoryLoop keeps the TUF repository current until ctx ends: it picks
// up other replicas' publishes, finishes an interrupted publish, re-signs
// timestamp and snapshot ahead of expiry, warns (hourly) about offline
// roles close to expiry and, on the one replica that holds PoliciesLease,
// runs the rollout policies and deletes reports past their retention
// (hourly). It gives the lease up when it ends.
func (a *App) repositoryLoop(ctx context.Context) {
	defer close(a.done)
	defer a.releasePolicies()
	tick := time.NewTicker(a.cfg.RefreshInterval)
	defer tick.Stop()
	var lastWarning time.Time
	for {
		a.refreshRepository(ctx)
		a.runPolicies(ctx)
		a.sampleExposure(ctx)
		if time.Since(lastWarning) > time.Hour && a.warnExpiry() {
			lastWarning = time.Now()
		}
		if a.cfg.AfterPass != nil {
			a.cfg.AfterPass()
		}
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
	}
}

// sampleExposure takes the exposure sample of the current bucket, if
// this replica has not yet (server.ExposureSampler).
func (a *App) sampleExposure(ctx context.Context) {
	if _, err := a.sampler.Sample(ctx, a.now()); err != nil && ctx.Err() == nil {
		a.log.Error("taking an exposure sample", slog.Any("error", err))
	}
}

// refreshRepository picks up other replicas' publishes, finishes an
// interrupted publish and re-signs timestamp and snapshot ahead of expiry.
func (a *App) refreshRepository(ctx context.Context) {
	if err := a.Repo.Refresh(ctx); err != nil && ctx.Err() == nil {
		a.log.Error("refreshing the TUF repository", slog.Any("error", err))
	}
	if err := a.Repo.ResumePending(ctx); err != nil && ctx.Err() == nil {
		a.log.Error("resuming a pending publish", slog.Any("error", err))
	}
	if _, err := a.Repo.Resign(ctx); err != nil && ctx.Err() == nil {
		a.log.Error("re-signing timestamp/snapshot", slog.Any("error", err))
	}
}

// Login limits: loginFailures failed logins to one account within
// loginWindow lock it until the oldest ages out.
const (
	loginFailures = 10
	loginWindow   = 15 * time.Minute
)

// pruneSessions deletes dashboard sessions past their idle or absolute
// expiry; a lookup refuses them anyway, this only keeps the table small.
func (a *App) pruneSessions(ctx context.Context) bool {
	n, err := a.Sessions.Prune(ctx)
	if err != nil && ctx.Err() == nil {
		a.log.Error("deleting expired sessions", slog.Any("error", err))
		return false
	}
	if n > 0 {
		a.log.Info("deleted expired sessions", slog.Int64("sessions", n))
	}
	return true
}

// pruneReports deletes reports older than the retention: the server keeps
// no more history than it needs. It reports whether it succeeded, so that
// a failure is retried at the next tick.
func (a *App) pruneReports(ctx context.Context) bool {
	n, err := a.Fleet.PruneReports(ctx, a.cfg.ReportRetention)
	if err != nil && ctx.Err() == nil {
		a.log.Error("deleting old reports", slog.Any("error", err))
		return false
	}
	if n > 0 {
		a.log.Info("deleted reports past retention", slog.Int64("reports", n), slog.Duration("retention", a.cfg.ReportRetention))
	}
	return true
}

// warnExpiry logs a warning per offline-signed role close to expiry and
// reports whether it logged any.
func (a *App) warnExpiry() bool {
	warnings := a.Repo.ExpiryWarnings()
	for _, w := range warnings {
		a.log.Warn("TUF metadata expires soon", slog.String("warning", w))
	}
	return len(warnings) > 0
}
