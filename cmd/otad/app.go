package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/patchfleet/ota/internal/app"
	"github.com/patchfleet/ota/manifests"
	"github.com/patchfleet/ota/manifests/fsstore"
	"github.com/patchfleet/ota/manifests/s3store"
	"github.com/patchfleet/ota/server/api"
	"github.com/patchfleet/ota/server/sqlstore"
	"github.com/patchfleet/ota/signing"
)

// Main is a running otad: the database, the blob store and the HTTP server,
// wired together. Tests start it on 127.0.0.1:0 in t.TempDir().
type Main struct {
	cfg Config
	log *slog.Logger

	DB    *sqlstore.DB
	Blobs manifests.BlobStore
	// App is the repository, fleet and API built on DB and Blobs, with
	// the background jobs that keep them current.
	App *app.App

	ln       net.Listener
	addrFile string // written by Run, removed by Close
	http     *http.Server
	done     chan error
}

// NewMain returns an unopened Main.
func NewMain(cfg Config, log *slog.Logger) *Main {
	return &Main{cfg: cfg, log: log, done: make(chan error, 1)}
}

// Run opens the database (running migrations), the blob store and the
// listener, then serves in the background. Errors name the setting to fix.
func (m *Main) Run(ctx context.Context) error {
	startCtx, cancel := context.WithTimeout(ctx, m.cfg.StartupTimeout)
	defer cancel()

	if err := prepareDataDir(m.cfg.DataDir); err != nil {
		return err
	}
	db, res, err := openDatabase(startCtx, m.cfg, m.log)
	if err != nil {
		return err
	}
	m.DB = db
	if m.Blobs, err = openStorage(startCtx, m.cfg); err != nil {
		return err
	}
	installation, err := db.InstallationID(startCtx)
	if err != nil {
		return fmt.Errorf("read installation id: %w", err)
	}
	online, err := loadOnlineKey(m.cfg, m.log)
	if err != nil {
		return err
	}

	// Listen before building the API: with port 0 (tests, scripts) the
	// offers' default public URL needs the port the kernel chose.
	if m.ln, err = net.Listen("tcp", m.cfg.Listen); err != nil {
		return settingError("listen", err)
	}
	publicURL := m.cfg.PublicURL
	if publicURL == "" {
		// ValidateServe allows no public URL on loopback only, where
		// handsets reach otad at the address it bound.
		publicURL = "http://" + m.ln.Addr().String()
	}
	m.App, err = app.New(startCtx, app.Config{
		DB: db, Blobs: m.Blobs, Online: online, Logger: m.log, Expiry: m.cfg.Expiry,
		EnrollmentSecret:   m.cfg.EnrollmentSecret,
		PollInterval:       m.cfg.PollInterval,
		LastSeenResolution: m.cfg.LastSeenResolution,
		RolloutRefresh:     m.cfg.RolloutRefresh,
		MaxOpenRollouts:    m.cfg.MaxOpenRollouts,
		RefreshInterval:    m.cfg.RefreshInterval,
		ReportRetention:    m.cfg.ReportRetention,
		// The online key signs the audit checkpoints; the blob store
		// keeps them.
		AuditCheckpointInterval: m.cfg.AuditCheckpointInterval,
		FoldInterval:            m.cfg.FoldInterval,

		// Wrong enrollment secrets, not handsets: see server.Fleet.Enroll.
		SecretFailuresPerMinute: m.cfg.SecretFailuresPerMinute,
		SecretFailureBurst:      m.cfg.SecretFailureBurst,
		TokenLifetime:           m.cfg.TokenLifetime,

		// Behind a TLS proxy the request is plain HTTP: an https public
		// URL marks the session cookie Secure anyway.
		Web: app.WebConfig{Banner: m.cfg.Banner, SecureCookie: strings.HasPrefix(publicURL, "https://")},
		API: api.Config{
			MaxBody:         m.cfg.MaxBody,
			Registry:        prometheus.NewRegistry(),
			TargetsRedirect: m.cfg.TargetsRedirect,
			PresignTTL:      m.cfg.PresignTTL,
			MaxArtifactSize: m.cfg.MaxArtifactSize,

			DownloadStallTimeout: m.cfg.DownloadStall,

			PublicURL:         publicURL,
			CheckInsPerMinute: m.cfg.CheckInsPerMinute,
			CheckInBurst:      10,
			ReportsPerMinute:  m.cfg.ReportsPerMinute,
			ReportBurst:       60,

			EnrollmentsPerMinute: m.cfg.EnrollmentsPerMinute,
			EnrollmentBurst:      m.cfg.EnrollmentBurst,
		},
	})
	if err != nil {
		m.ln.Close()
		return err
	}

	if m.cfg.AddrFile != "" {
		if err := writeAddrFile(m.cfg.AddrFile, m.ln.Addr().String()); err != nil {
			m.ln.Close()
			return settingError("addr-file", err)
		}
		m.addrFile = m.cfg.AddrFile
	}
	m.http = &http.Server{
		Handler:           m.App.API,
		ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout:       m.cfg.ReadTimeout,
		WriteTimeout:      m.cfg.WriteTimeout,
		IdleTimeout:       m.cfg.IdleTimeout,
		MaxHeaderBytes:    64 << 10,
		ErrorLog:          newErrorLog(m.log),
	}
	go func() {
		if err := m.http.Serve(m.ln); !errors.Is(err, http.ErrServerClosed) {
			m.done <- err
		}
	}()
	// The background jobs end at Close, not with ctx: a signal ends
	// serving through Close, in order.
	m.App.Run(context.WithoutCancel(ctx))
	dbKind, _ := m.cfg.databaseKind()
	storeKind, _ := m.cfg.storageKind()
	m.log.Info("otad serving",
		slog.String("addr", m.ln.Addr().String()),
		slog.String("database", dbKind),
		slog.String("storage", storeKind),
		slog.Int("schema_version", res.To),
		slog.String("installation_id", installation))
	return nil
}

// newErrorLog is http.Server.ErrorLog. net/http logs some connection
// errors there with the client's address ("http: TLS handshake error from
// 203.0.113.7:51234: ...", "http: panic serving 203.0.113.7:51234"); the
// server keeps no client IPs. A failed TLS handshake becomes a line with
// its cause alone (the error's text names the addresses too); any other
// line keeps its text with every IP:port cut out, at warning level.
func newErrorLog(l *slog.Logger) *log.Logger {
	return log.New(errorLogWriter{log: l, other: addrRedactor{slog.NewLogLogger(l.Handler(), slog.LevelWarn).Writer()}}, "", 0)
}

// errorLogWriter is the writer under newErrorLog's logger: it receives
// one line of net/http's per Write.
type errorLogWriter struct {
	log   *slog.Logger
	other io.Writer
}

func (w errorLogWriter) Write(p []byte) (int, error) {
	if bytes.HasPrefix(p, []byte("http: TLS handshake error from ")) {
		w.log.Warn("tls handshake failed", slog.String("cause", api.CauseTLSHandshake))
		return len(p), nil
	}
	return w.other.Write(p)
}

// addrRedactor replaces IP:port pairs in what it writes with "[client]".
type addrRedactor struct{ w io.Writer }

var ipPort = regexp.MustCompile(`(\d{1,3}\.){3}\d{1,3}:\d+|\[[0-9A-Fa-f:.%a-z]+\]:\d+`)

func (r addrRedactor) Write(p []byte) (int, error) {
	if _, err := r.w.Write(ipPort.ReplaceAll(p, []byte("[client]"))); err != nil {
		return 0, err
	}
	return len(p), nil
}

// writeAddrFile writes "host:port\n" to path atomically: a temporary file
// in the same folder renamed over it, so a script polling for the file
// never reads half an address.
func writeAddrFile(path, addr string) error {
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		return fmt.Errorf("%s: %w", path, unwrapPathError(err))
	}
	_, err = f.WriteString(addr + "\n")
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(f.Name(), path)
	}
	if err != nil {
		os.Remove(f.Name())
		return fmt.Errorf("%s: %w", path, unwrapPathError(err))
	}
	return nil
}

// Addr is the address the server listens on (useful with port 0).
func (m *Main) Addr() string { return m.ln.Addr().String() }

// Done receives an error if the HTTP server stops on its own.
func (m *Main) Done() <-chan error { return m.done }

// Close stops accepting connections, lets in-flight requests finish within
// the shutdown timeout, then closes the database.
func (m *Main) Close() error {
	var errs []error
	if m.App != nil {
		m.App.Close()
	}
	served := m.http != nil
	if served {
		ctx, cancel := context.WithTimeout(context.Background(), m.cfg.ShutdownTimeout)
		defer cancel()
		m.log.Info("shutting down: finishing in-flight requests", slog.Duration("timeout", m.cfg.ShutdownTimeout))
		if err := m.http.Shutdown(ctx); err != nil {
			errs = append(errs, fmt.Errorf("http shutdown: %w", err))
		}
	}
	if m.addrFile != "" {
		// The address is no longer served: a script must not find it.
		if err := os.Remove(m.addrFile); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, fmt.Errorf("remove --addr-file: %w", err))
		}
		m.addrFile = ""
	}
	if m.DB != nil {
		if err := m.DB.Close(); err != nil {
			errs = append(errs, fmt.Errorf("close database: %w", err))
		}
	}
	if served && len(errs) == 0 {
		m.log.Info("shutdown complete")
	}
	return errors.Join(errs...)
}

// loadOnlineKey reads the online (timestamp/snapshot) key. With no
// --online-key it uses DATA-DIR/online-key.json, generating it on first
// start; an explicitly named file must exist.
func loadOnlineKey(cfg Config, log *slog.Logger) (signing.Signer, error) {
	path := cfg.OnlineKey
	if path == "" {
		path = filepath.Join(cfg.DataDir, "online-key.json")
		if _, err := os.Stat(path); errors.Is(err, os.ErrNotExist) {
			k, err := signing.Generate(signing.AlgEd25519)
			if err != nil {
				return nil, err
			}
			if err := signing.WriteUnencryptedKeyFile(path, k); err != nil {
				return nil, settingError("online-key", err)
			}
			log.Info("generated the online timestamp/snapshot key", slog.String("path", path), slog.String("keyid", k.KeyID()))
		}
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, settingError("online-key", unwrapPathError(err))
	}
	var pass []byte
	if cfg.OnlineKeyPassphrase != "" {
		pass = []byte(cfg.OnlineKeyPassphrase)
	}
	k, err := signing.ParsePrivateKey(data, pass)
	if err != nil {
		return nil, settingError("online-key", fmt.Errorf("%s: %w (an encrypted key needs OTAD_ONLINE_KEY_PASSPHRASE)", path, err))
	}
	return k.Signer(), nil
}

// loadExistingOnlineKey is loadOnlineKey for commands other than serve:
// a missing key is an error, never generated, since a new key would sign
// what no root lists.
func loadExistingOnlineKey(cfg Config, log *slog.Logger) (signing.Signer, error) {
	if cfg.OnlineKey == "" {
		path := filepath.Join(cfg.DataDir, "online-key.json")
		if _, err := os.Stat(path); err != nil {
			return nil, settingError("online-key", fmt.Errorf("%s: %w (otad serve makes it on first start)", path, unwrapPathError(err)))
		}
		cfg.OnlineKey = path
	}
	return loadOnlineKey(cfg, log)
}

// prepareDataDir creates the data folder, owner-only (0700 whatever the
// umask; one that exists is set so too): it holds the database, the
// online key and the blobs. Then it proves the folder is writable, so a
// bad path fails at start with its name rather than on the first write.
func prepareDataDir(dir string) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return settingError("data-dir", fmt.Errorf("cannot create %s: %w", dir, unwrapPathError(err)))
	}
	if err := os.Chmod(dir, 0o700); err != nil {
		return settingError("data-dir", fmt.Errorf("cannot make %s owner-only (0700): %w", dir, unwrapPathError(err)))
	}
	probe, err := os.CreateTemp(dir, ".write-probe-*")
	if err != nil {
		return settingError("data-dir", fmt.Errorf("%s is not writable: %w", dir, unwrapPathError(err)))
	}
	probe.Close()
	return os.Remove(probe.Name())
}

// unwrapPathError keeps the cause ("permission denied") and drops the
// repeated path.
func unwrapPathError(err error) error {
	var pe *os.PathError
	if errors.As(err, &pe) {
		return pe.Err
	}
	return err
}

func openDatabase(ctx context.Context, cfg Config, log *slog.Logger) (*sqlstore.DB, sqlstore.MigrateResult, error) {
	db, err := sqlstore.Open(ctx, cfg.databaseDSN(), sqlstore.Options{Logger: log})
	if err != nil {
		return nil, sqlstore.MigrateResult{}, settingError("database", err)
	}
	res, err := db.Migrate(ctx)
	if err != nil {
		db.Close()
		return nil, res, fmt.Errorf("migrate database: %w", err)
	}
	return db, res, nil
}

func openStorage(ctx context.Context, cfg Config) (manifests.BlobStore, error) {
	kind, err := cfg.storageKind()
	if err != nil {
		return nil, settingError("storage", err)
	}
	if kind == "fs" {
		store, err := fsstore.New(cfg.storageDir())
		if err != nil {
			return nil, settingError("storage", err)
		}
		return store, nil
	}
	s3cfg, err := cfg.s3Config()
	if err != nil {
		return nil, err
	}
	store, err := s3store.New(s3cfg)
	if err != nil {
		return nil, settingError("storage", err)
	}
	if err := store.Ping(ctx); err != nil {
		return nil, settingError("storage", fmt.Errorf("%w (check --s3-endpoint, credentials and that the bucket exists)", err))
	}
	return store, nil
}
