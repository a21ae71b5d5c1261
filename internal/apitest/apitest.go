// Package apitest starts a complete otad application (SQLite, filesystem
// store, TUF repository, admin API) on a loopback httptest server, for
// tests of clients: otactl, the handset simulator and TUF clients.
package apitest

import (
	"context"
	"log/slog"
	"net/http/httptest"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/patchfleet/ota/internal/app"
	"github.com/patchfleet/ota/manifests"
	"github.com/patchfleet/ota/manifests/fsstore"
	"github.com/patchfleet/ota/server"
	"github.com/patchfleet/ota/server/api"
	"github.com/patchfleet/ota/server/identity"
	"github.com/patchfleet/ota/server/sqlstore"
	"github.com/patchfleet/ota/signing"
	"github.com/patchfleet/ota/web"
)

// Env is a running server.
type Env struct {
	URL   string // base URL, no trailing slash
	Token string // a release-engineer admin token
	Repo  *manifests.Repository
	Blobs manifests.BlobStore
	DB    *sqlstore.DB
	API   *api.Server
	// Online is the server's timestamp/snapshot key.
	Online signing.Signer
	Fleet  *server.Fleet
	// App is the wiring behind the server, background jobs included.
	App *app.App

	// approver is ApproverToken's token, made once.
	approverOnce sync.Once
	approver     string
	approverErr  error
}

// Options tune Start.
type Options struct {
	Expiry manifests.Expiry
	Now    func() time.Time
	Blobs  manifests.BlobStore // default: a filesystem store in t.TempDir()
	// Logger receives the server's logs; by default errors go to stderr,
	// so that a failed request in CI shows why it failed.
	Logger *slog.Logger
	// TargetsRedirect answers artifact downloads with presigned URLs
	// when Blobs can presign.
	TargetsRedirect bool
	// DB and Online, when set, are shared with another Env: two replicas
	// of one deployment.
	DB     *sqlstore.DB
	Online *signing.PrivateKey
	// EnrollmentSecret and the per-device rate limits of the handset
	// API; zero rates disable limiting.
	EnrollmentSecret                    string
	CheckInsPerMinute, ReportsPerMinute float64
	// RefreshInterval is how often the background jobs (refresh, resume,
	// re-sign, report pruning) run after their first pass at Start.
	// Default one hour, not otad's seconds: a test that moves Now past
	// half the timestamp's life then calls Repo.Resign itself finds the
	// timestamp still to re-sign.
	RefreshInterval time.Duration
	// LiveEvery is how often open dashboard pages refresh (default
	// web.DefaultLiveEvery); browser tests shorten it.
	LiveEvery time.Duration
	// ReportRetention is how long reports are kept (default
	// app.DefaultReportRetention).
	ReportRetention time.Duration
}

// Start runs a server, wired by package app as otad wires it and with
// its background jobs running, until the test ends. Every request and
// answer is checked against the OpenAPI document.
func Start(tb testing.TB, opts Options) *Env {
	tb.Helper()
	env, err := start(tb.TempDir(), opts, tb.Cleanup, func(a *api.Server) { checkContract(tb, a) })
	if err != nil {
		tb.Fatal(err)
	}
	return env
}

// Serve is Start for code without a testing.TB, such as runnable
// examples: it returns the running Env and stop, which stops the server
// and removes its files. Nothing checks the API contract.
func Serve(opts Options) (env *Env, stop func(), err error) {
	dir, err := os.MkdirTemp("", "apitest-")
	if err != nil {
		return nil, nil, err
	}
	var cleanups []func()
	stop = func() {
		for i := len(cleanups) - 1; i >= 0; i-- {
			cleanups[i]()
		}
		os.RemoveAll(dir)
	}
	env, err = start(dir, opts, func(f func()) { cleanups = append(cleanups, f) }, func(*api.Server) {})
	if err != nil {
		stop()
		return nil, nil, err
	}
	return env, stop, nil
}

// start is Start and Serve: files in dir, cleanups registered with
// cleanup (run last-registered first), check called on the API before
// it serves.
func start(dir string, opts Options, cleanup func(func()), check func(*api.Server)) (*Env, error) {
	ctx := context.Background()
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelError}))
	}
	db := opts.DB
	var err error
	if db == nil {
		if db, err = sqlstore.Open(ctx, "sqlite:"+filepath.Join(dir, "otad.db"), sqlstore.Options{Logger: opts.Logger, Now: opts.Now}); err != nil {
			return nil, err
		}
		cleanup(func() { db.Close() })
	}
	if _, err := db.Migrate(ctx); err != nil {
		return nil, err
	}
	blobs := opts.Blobs
	if blobs == nil {
		if blobs, err = fsstore.New(filepath.Join(dir, "blobs")); err != nil {
			return nil, err
		}
	}
	key := opts.Online
	if key == nil {
		if key, err = signing.Generate(signing.AlgEd25519); err != nil {
			return nil, err
		}
	}
	refresh := opts.RefreshInterval
	if refresh <= 0 {
		refresh = time.Hour
	}
	firstPass := make(chan struct{})
	var once sync.Once
	passed := func() { once.Do(func() { close(firstPass) }) }
	a, err := app.New(ctx, app.Config{DB: db, Blobs: blobs, Online: key.Signer(), Logger: opts.Logger,
		Now: opts.Now, Expiry: opts.Expiry, EnrollmentSecret: opts.EnrollmentSecret, PollInterval: time.Hour,
		RefreshInterval: refresh, ReportRetention: opts.ReportRetention, AfterPass: passed, Web: app.WebConfig{LiveEvery: opts.LiveEvery},
		API: api.Config{TargetsRedirect: opts.TargetsRedirect,
			CheckInsPerMinute: opts.CheckInsPerMinute, CheckInBurst: 10, ReportsPerMinute: opts.ReportsPerMinute, ReportBurst: 60}})
	if err != nil {
		return nil, err
	}
	_, secret, err := a.Tokens.Create(ctx, "test-engineer", identity.RoleReleaseEngineer)
	if err != nil {
		return nil, err
	}
	check(a.API)
	srv := httptest.NewServer(a.API)
	cleanup(srv.Close)
	// The background jobs stop before the server and the database close
	// (cleanups run last-registered first).
	a.Run(ctx)
	cleanup(a.Close)
	// Start returns after the jobs' first pass, so that it does not race
	// with what the test does next (a ceremony, a clock moved past
	// half the timestamp's life).
	<-firstPass
	return &Env{URL: srv.URL, Token: secret, Repo: a.Repo, Blobs: blobs, DB: db, API: a.API, Online: key.Signer(), Fleet: a.Fleet, App: a}, nil
}

// SessionCookie is the dashboard's session cookie, for tests of the
// API's package that send a page request without importing the pages.
const SessionCookie = web.CookieName
