// Package apitest starts a complete otad application (SQLite, filesystem
// store, TUF repository, admin API) on a loopback httptest server, for
// tests of clients: otactl, the handset simulator and TUF clients.
package apitest

import (
	"context"
	"log/slog"
	"net/http/httptest"
	"path/filepath"
	"testing"
	"time"

	"github.com/patchfleet/ota/manifests"
	"github.com/patchfleet/ota/manifests/fsstore"
	"github.com/patchfleet/ota/server"
	"github.com/patchfleet/ota/server/api"
	"github.com/patchfleet/ota/server/sqlstore"
	"github.com/patchfleet/ota/signing"
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
}

// Options tune Start.
type Options struct {
	Expiry manifests.Expiry
	Now    func() time.Time
	Blobs  manifests.BlobStore // default: a filesystem store in t.TempDir()
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
}

// Start runs a server until the test ends.
func Start(tb testing.TB, opts Options) *Env {
	tb.Helper()
	ctx := context.Background()
	dir := tb.TempDir()
	db := opts.DB
	if db == nil {
		var err error
		if db, err = sqlstore.Open(ctx, "sqlite:"+filepath.Join(dir, "otad.db"), sqlstore.Options{Logger: opts.Logger}); err != nil {
			tb.Fatal(err)
		}
		tb.Cleanup(func() { db.Close() })
	}
	if _, err := db.Migrate(ctx); err != nil {
		tb.Fatal(err)
	}
	blobs := opts.Blobs
	var err error
	if blobs == nil {
		if blobs, err = fsstore.New(filepath.Join(dir, "blobs")); err != nil {
			tb.Fatal(err)
		}
	}
	key := opts.Online
	if key == nil {
		if key, err = signing.Generate(signing.AlgEd25519); err != nil {
			tb.Fatal(err)
		}
	}
	repo, err := manifests.New(manifests.Config{Blobs: blobs, Drafts: db.Drafts(), Lock: db.RepoLock(),
		Online: key.Signer(), Expiry: opts.Expiry, Now: opts.Now, Logger: opts.Logger})
	if err != nil {
		tb.Fatal(err)
	}
	if err := repo.Load(ctx); err != nil {
		tb.Fatal(err)
	}
	tokens := server.Tokens{Store: db.Tokens()}
	_, secret, err := tokens.Create(ctx, "test-engineer", server.RoleReleaseEngineer)
	if err != nil {
		tb.Fatal(err)
	}
	fleet := &server.Fleet{Store: db.Devices(), Eligibility: &server.NewestRelease{Source: repo},
		Catalog:          &server.PublishedPatches{Source: repo},
		EnrollmentSecret: opts.EnrollmentSecret, PollInterval: time.Hour, Now: opts.Now}
	a := api.New(api.Config{Logger: opts.Logger, Repo: repo, Blobs: blobs, Tokens: tokens,
		TargetsRedirect: opts.TargetsRedirect, Fleet: fleet,
		CheckInsPerMinute: opts.CheckInsPerMinute, CheckInBurst: 10, ReportsPerMinute: opts.ReportsPerMinute, ReportBurst: 60})
	checkContract(tb, a)
	srv := httptest.NewServer(a)
	tb.Cleanup(srv.Close)
	return &Env{URL: srv.URL, Token: secret, Repo: repo, Blobs: blobs, DB: db, API: a, Online: key.Signer(), Fleet: fleet}
}
