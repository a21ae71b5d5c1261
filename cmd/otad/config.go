package main

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/url"
	"path/filepath"
	"strings"
	"time"

	"github.com/patchfleet/ota/internal/app"
	"github.com/patchfleet/ota/manifests"
	"github.com/patchfleet/ota/manifests/s3store"
	"github.com/patchfleet/ota/server"
	"github.com/patchfleet/ota/server/identity"
	"github.com/patchfleet/ota/server/rollout"

	"github.com/patchfleet/ota/internal/envflag"
)

// Config is everything otad reads from flags and the environment.
type Config struct {
	Listen   string
	AddrFile string // "" = none; else gets host:port of the bound listener, written once listening
	DataDir  string

	Database string // "" = SQLite in DataDir
	Storage  string // "" = filesystem store in DataDir

	S3Endpoint  string
	S3Region    string
	S3AccessKey string
	S3SecretKey string

	ReadTimeout     time.Duration
	WriteTimeout    time.Duration
	IdleTimeout     time.Duration
	ShutdownTimeout time.Duration
	StartupTimeout  time.Duration
	MaxBody         int64

	LogLevel  string
	LogFormat string

	// TUF repository.
	OnlineKey           string // path; "" = DATA-DIR/online-key.json, generated on first start
	OnlineKeyPassphrase string // env only
	Expiry              manifests.Expiry
	RefreshInterval     time.Duration
	TargetsRedirect     bool
	PresignTTL          time.Duration
	DownloadStall       time.Duration
	MaxArtifactSize     int64
	// AuditCheckpointInterval and FoldInterval: see app.Config.
	AuditCheckpointInterval time.Duration
	FoldInterval            time.Duration

	// Handset API.
	PublicURL        string
	EnrollmentSecret string
	PollInterval     time.Duration
	// LastSeenResolution and RolloutRefresh: see app.Config.
	LastSeenResolution time.Duration
	RolloutRefresh     time.Duration
	MaxOpenRollouts    int
	ReportRetention    time.Duration
	CheckInsPerMinute  float64
	ReportsPerMinute   float64
	// EnrollmentsPerMinute and EnrollmentBurst are one token bucket for
	// all enrollments (per replica).
	EnrollmentsPerMinute float64
	EnrollmentBurst      int
	// SecretFailuresPerMinute and SecretFailureBurst limit wrong
	// enrollment secrets (per replica): see server.Fleet.Enroll.
	SecretFailuresPerMinute float64
	SecretFailureBurst      int

	// TokenLifetime is how long an API token minted without an expiry
	// works.
	TokenLifetime time.Duration

	// Banner is a warning strip on every dashboard page; only "otad
	// demo" sets it (no flag): a demo must not pass for production.
	Banner string
}

// defaultConfig is what otad runs with when nothing is set: embedded
// SQLite and the filesystem store under ./otad-data, loopback only.
func defaultConfig() Config {
	return Config{
		Listen:          "127.0.0.1:8080",
		DataDir:         "otad-data",
		S3Endpoint:      "https://s3.amazonaws.com",
		ReadTimeout:     60 * time.Second,
		WriteTimeout:    60 * time.Second,
		IdleTimeout:     120 * time.Second,
		ShutdownTimeout: 30 * time.Second,
		StartupTimeout:  15 * time.Second,
		MaxBody:         1 << 20,
		LogLevel:        "info",
		LogFormat:       "json",
		Expiry:          manifests.DefaultExpiry(),
		RefreshInterval: 5 * time.Second,
		TargetsRedirect: true,
		PresignTTL:      5 * time.Minute,
		DownloadStall:   time.Minute,
		MaxArtifactSize: 8 << 30,

		AuditCheckpointInterval: time.Minute,
		FoldInterval:            app.DefaultFoldInterval,

		PollInterval:       time.Hour,
		LastSeenResolution: server.DefaultLastSeenResolution,
		RolloutRefresh:     server.DefaultRolloutRefresh,
		MaxOpenRollouts:    rollout.DefaultMaxOpenRollouts,
		ReportRetention:    90 * 24 * time.Hour,
		CheckInsPerMinute:  6,
		ReportsPerMinute:   120,
		// A handset enrolls once. 600 a minute (36,000 an hour) is far
		// above what a growing fleet needs and 200 times below the flood
		// of issue 7 (2,020 a second); the burst lets a batch of 1,000
		// handsets switched on together enroll at once.
		EnrollmentsPerMinute: 600,
		EnrollmentBurst:      1000,
		// A handset that knows the secret never fails; ten guesses a
		// minute are 5 million a year, nothing against a random secret
		// of 16 bytes, and few enough to see in the logs.
		SecretFailuresPerMinute: 10,
		SecretFailureBurst:      20,
		TokenLifetime:           identity.DefaultTokenLifetime,
	}
}

// Primary environment variable of each flag that can fail after parsing;
// envflag.Error names it beside the flag.
var envOf = map[string]string{
	"listen":       "OTAD_LISTEN",
	"addr-file":    "OTAD_ADDR_FILE",
	"data-dir":     "OTAD_DATA_DIR",
	"database":     "OTAD_DATABASE",
	"storage":      "OTAD_STORAGE",
	"s3-endpoint":  "OTAD_S3_ENDPOINT",
	"log-level":    "OTAD_LOG_LEVEL",
	"log-format":   "OTAD_LOG_FORMAT",
	"online-key":   "OTAD_ONLINE_KEY",
	"public-url":   "OTAD_PUBLIC_URL",
	"checkin-rate": "OTAD_CHECKIN_RATE",
	"enroll-rate":  "OTAD_ENROLL_RATE",
	"enroll-burst": "OTAD_ENROLL_BURST",

	"enroll-secret-failure-rate":  "OTAD_ENROLL_SECRET_FAILURE_RATE",
	"enroll-secret-failure-burst": "OTAD_ENROLL_SECRET_FAILURE_BURST",
	"token-lifetime":              "OTAD_TOKEN_LIFETIME",
}

func settingError(flag string, err error) error {
	return &envflag.Error{Flag: flag, Env: envOf[flag], Err: err}
}

// registerCommon adds the flags every subcommand that touches the database
// needs.
func (c *Config) registerCommon(fs *envflag.FlagSet) {
	fs.StringEnv(&c.DataDir, "data-dir", c.DataDir,
		"folder for the embedded SQLite database, the filesystem blob store and local state", "OTAD_DATA_DIR")
	fs.StringEnv(&c.Database, "database", c.Database,
		"database: postgres://user:pass@host:5432/db?sslmode=... for PostgreSQL, or sqlite:PATH; empty means SQLite at DATA-DIR/otad.db", "OTAD_DATABASE")
	fs.StringEnv(&c.LogLevel, "log-level", c.LogLevel, "log level: debug, info, warn or error", "OTAD_LOG_LEVEL")
	fs.StringEnv(&c.LogFormat, "log-format", c.LogFormat, "log format: json or text", "OTAD_LOG_FORMAT")
	fs.DurationEnv(&c.StartupTimeout, "startup-timeout", c.StartupTimeout,
		"how long to wait for the database and storage at start before giving up", "OTAD_STARTUP_TIMEOUT")
}

// registerStorage adds the blob storage flags: otad serve's, and otad
// audit's, which reads and writes the audit checkpoints there.
func (c *Config) registerStorage(fs *envflag.FlagSet) {
	fs.StringEnv(&c.Storage, "storage", c.Storage,
		"blob storage: s3://bucket/prefix for S3-compatible storage, or a folder path (file:///path also accepted); empty means DATA-DIR/blobs", "OTAD_STORAGE")
	fs.StringEnv(&c.S3Endpoint, "s3-endpoint", c.S3Endpoint,
		"S3 endpoint URL; http:// turns TLS off (MinIO on loopback), https:// or a bare host:port keeps it on",
		"OTAD_S3_ENDPOINT", "AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL", "MINIO_ENDPOINT")
	fs.StringEnv(&c.S3Region, "s3-region", c.S3Region, "S3 region (empty lets the client discover it)",
		"OTAD_S3_REGION", "AWS_REGION", "AWS_DEFAULT_REGION", "MINIO_REGION")
	fs.StringEnv(&c.S3AccessKey, "s3-access-key", c.S3AccessKey, "S3 access key id",
		"OTAD_S3_ACCESS_KEY", "AWS_ACCESS_KEY_ID", "MINIO_ACCESS_KEY", "MINIO_ROOT_USER")
	fs.StringEnv(&c.S3SecretKey, "s3-secret-key", c.S3SecretKey, "S3 secret key; prefer the environment, flags show up in ps",
		"OTAD_S3_SECRET_KEY", "AWS_SECRET_ACCESS_KEY", "MINIO_SECRET_KEY", "MINIO_ROOT_PASSWORD")
}

// registerServe adds the flags of "otad serve".
func (c *Config) registerServe(fs *envflag.FlagSet) {
	c.registerCommon(fs)
	fs.StringEnv(&c.Listen, "listen", c.Listen,
		"address to serve HTTP on; port 0 picks a free port (see --addr-file); :8080 accepts handsets from other hosts and needs --public-url", "OTAD_LISTEN")
	fs.StringEnv(&c.AddrFile, "addr-file", c.AddrFile,
		"file to write the bound host:port to once listening (replaced atomically, removed on shutdown); scripts read it with --listen 127.0.0.1:0", "OTAD_ADDR_FILE")
	c.registerStorage(fs)
	fs.DurationEnv(&c.ReadTimeout, "read-timeout", c.ReadTimeout, "longest time to read a request, body included", "OTAD_READ_TIMEOUT")
	fs.DurationEnv(&c.WriteTimeout, "write-timeout", c.WriteTimeout, "longest time to write a response", "OTAD_WRITE_TIMEOUT")
	fs.DurationEnv(&c.IdleTimeout, "idle-timeout", c.IdleTimeout, "how long an idle keep-alive connection stays open", "OTAD_IDLE_TIMEOUT")
	fs.DurationEnv(&c.ShutdownTimeout, "shutdown-timeout", c.ShutdownTimeout,
		"on SIGTERM or SIGINT, how long in-flight requests may take to finish", "OTAD_SHUTDOWN_TIMEOUT")
	fs.Int64Env(&c.MaxBody, "max-body", c.MaxBody, "largest request body in bytes for API calls (uploads have their own limit)", "OTAD_MAX_BODY")
	fs.DurationEnv(&c.TokenLifetime, "token-lifetime", c.TokenLifetime,
		"how long an API token minted in the dashboard or the API without an expiry works (at most 17520h); otad token create has --expires", "OTAD_TOKEN_LIFETIME")
	c.registerTUF(fs)
	c.registerHandset(fs)
}

// registerHandset adds the handset API flags.
func (c *Config) registerHandset(fs *envflag.FlagSet) {
	fs.StringEnv(&c.PublicURL, "public-url", c.PublicURL,
		"base URL handsets reach this server at; offers name TUF URLs under it. Required unless --listen is a loopback address, where empty means http://BOUND-ADDRESS", "OTAD_PUBLIC_URL")
	fs.StringEnv(&c.EnrollmentSecret, "enrollment-secret", c.EnrollmentSecret,
		"fleet enrollment secret handsets must present; empty lets any handset enroll (demo). Prefer the environment", "OTAD_ENROLLMENT_SECRET")
	fs.DurationEnv(&c.PollInterval, "poll-interval", c.PollInterval, "mean time between handset check-ins (answers are jittered by ±10%)", "OTAD_POLL_INTERVAL")
	fs.DurationEnv(&c.LastSeenResolution, "last-seen-resolution", c.LastSeenResolution,
		"how stale a handset's stored last_seen may get before a check-in that changes nothing else writes it; every first check-in of a UTC day writes", "OTAD_LAST_SEEN_RESOLUTION")
	fs.DurationEnv(&c.RolloutRefresh, "rollout-refresh", c.RolloutRefresh,
		"how long a replica decides check-ins on its copy of the rollouts before reading them again: how long another replica's pause takes to reach this one's handsets", "OTAD_ROLLOUT_REFRESH")
	fs.IntEnv(&c.MaxOpenRollouts, "max-open-rollouts", c.MaxOpenRollouts,
		"most rollouts not finished (draft, running or paused) at once; a create past it is refused with 409", "OTAD_MAX_OPEN_ROLLOUTS")
	fs.DurationEnv(&c.ReportRetention, "report-retention", c.ReportRetention, "how long install reports are kept before a background job deletes them", "OTAD_REPORT_RETENTION")
	fs.Float64Env(&c.CheckInsPerMinute, "checkin-rate", c.CheckInsPerMinute, "check-ins a device may make per minute (burst 10); 0 disables the limit", "OTAD_CHECKIN_RATE")
	fs.Float64Env(&c.ReportsPerMinute, "report-rate", c.ReportsPerMinute, "reports a device may send per minute (burst 60); 0 disables the limit", "OTAD_REPORT_RATE")
	fs.Float64Env(&c.EnrollmentsPerMinute, "enroll-rate", c.EnrollmentsPerMinute,
		"enrollments per minute over all handsets, per replica (refused ones do not count); 0 disables the limit", "OTAD_ENROLL_RATE")
	fs.IntEnv(&c.EnrollmentBurst, "enroll-burst", c.EnrollmentBurst, "enrollments allowed at once before --enroll-rate applies", "OTAD_ENROLL_BURST")
	fs.Float64Env(&c.SecretFailuresPerMinute, "enroll-secret-failure-rate", c.SecretFailuresPerMinute,
		"wrong enrollment secrets per minute over all handsets, per replica; past them every enrollment waits (429) until the count refills, the right secret too, or the answer would tell a guesser which guess was right; 0 disables the limit",
		"OTAD_ENROLL_SECRET_FAILURE_RATE")
	fs.IntEnv(&c.SecretFailureBurst, "enroll-secret-failure-burst", c.SecretFailureBurst,
		"wrong enrollment secrets allowed at once before --enroll-secret-failure-rate applies", "OTAD_ENROLL_SECRET_FAILURE_BURST")
}

// registerOnlineKey adds --online-key: otad serve's, and otad audit
// checkpoint's, which signs with it.
func (c *Config) registerOnlineKey(fs *envflag.FlagSet) {
	fs.StringEnv(&c.OnlineKey, "online-key", c.OnlineKey,
		"the server's timestamp/snapshot signing key file; empty means DATA-DIR/online-key.json, generated on first start. Replicas must share one key", "OTAD_ONLINE_KEY")
}

// registerTUF adds the repository flags.
func (c *Config) registerTUF(fs *envflag.FlagSet) {
	c.registerOnlineKey(fs)
	fs.DurationEnv(&c.Expiry.Root, "root-expiry", c.Expiry.Root, "validity of root metadata drafted by the server", "OTAD_ROOT_EXPIRY")
	fs.DurationEnv(&c.Expiry.Targets, "targets-expiry", c.Expiry.Targets, "validity of targets metadata drafted by the server", "OTAD_TARGETS_EXPIRY")
	fs.DurationEnv(&c.Expiry.Snapshot, "snapshot-expiry", c.Expiry.Snapshot, "validity of snapshot metadata; re-signed when half is left", "OTAD_SNAPSHOT_EXPIRY")
	fs.DurationEnv(&c.Expiry.Timestamp, "timestamp-expiry", c.Expiry.Timestamp, "validity of timestamp metadata; re-signed when half is left", "OTAD_TIMESTAMP_EXPIRY")
	fs.DurationEnv(&c.RefreshInterval, "refresh-interval", c.RefreshInterval,
		"how often to pick up what other replicas published and check expiries", "OTAD_REFRESH_INTERVAL")
	fs.BoolEnv(&c.TargetsRedirect, "targets-redirect", c.TargetsRedirect,
		"answer artifact downloads with a redirect to a presigned S3 URL instead of streaming them through otad", "OTAD_TARGETS_REDIRECT")
	fs.DurationEnv(&c.PresignTTL, "presign-ttl", c.PresignTTL, "validity of presigned artifact URLs", "OTAD_PRESIGN_TTL")
	fs.DurationEnv(&c.DownloadStall, "download-stall-timeout", c.DownloadStall,
		"close an artifact download the client has taken no bytes of for this long; downloads are not bound by --write-timeout", "OTAD_DOWNLOAD_STALL_TIMEOUT")
	fs.Int64Env(&c.MaxArtifactSize, "max-artifact-size", c.MaxArtifactSize, "largest artifact upload in bytes", "OTAD_MAX_ARTIFACT_SIZE")
	fs.DurationEnv(&c.AuditCheckpointInterval, "audit-checkpoint-interval", c.AuditCheckpointInterval,
		"how often the audit log's new entries are signed with the online key into a checkpoint in the blob store (audit/checkpoints/), which a database administrator cannot rewrite", "OTAD_AUDIT_CHECKPOINT_INTERVAL")
	fs.DurationEnv(&c.FoldInterval, "rollup-fold-interval", c.FoldInterval,
		"how often this replica folds the rollups' delta logs (the changes that check-ins and reports append) into the counters that reports read; reports are exact either way", "OTAD_ROLLUP_FOLD_INTERVAL")
}

// Validate checks what can be checked without touching the network or the
// disk, naming the setting that is wrong.
func (c *Config) Validate() error {
	if c.DataDir == "" {
		return settingError("data-dir", errors.New("must not be empty"))
	}
	if _, err := c.databaseKind(); err != nil {
		return settingError("database", err)
	}
	if _, err := parseLevel(c.LogLevel); err != nil {
		return settingError("log-level", err)
	}
	if c.LogFormat != "json" && c.LogFormat != "text" {
		return settingError("log-format", fmt.Errorf("%q: want json or text", c.LogFormat))
	}
	for name, d := range map[string]time.Duration{"startup-timeout": c.StartupTimeout} {
		if d <= 0 {
			return settingError(name, fmt.Errorf("%v: must be positive", d))
		}
	}
	return nil
}

// ValidateServe adds the checks of "otad serve".
func (c *Config) ValidateServe() error {
	if err := c.Validate(); err != nil {
		return err
	}
	if _, _, err := net.SplitHostPort(c.Listen); err != nil {
		return settingError("listen", fmt.Errorf("%q: want host:port or :port", c.Listen))
	}
	if _, err := c.storageKind(); err != nil {
		return settingError("storage", err)
	}
	if strings.HasPrefix(c.Storage, "s3://") {
		if _, err := c.s3Config(); err != nil {
			return err
		}
	}
	for name, d := range map[string]time.Duration{
		"read-timeout": c.ReadTimeout, "write-timeout": c.WriteTimeout,
		"idle-timeout": c.IdleTimeout, "shutdown-timeout": c.ShutdownTimeout,
		"root-expiry": c.Expiry.Root, "targets-expiry": c.Expiry.Targets,
		"snapshot-expiry": c.Expiry.Snapshot, "timestamp-expiry": c.Expiry.Timestamp,
		"refresh-interval": c.RefreshInterval, "presign-ttl": c.PresignTTL, "download-stall-timeout": c.DownloadStall,
		"poll-interval": c.PollInterval, "report-retention": c.ReportRetention,
		"last-seen-resolution": c.LastSeenResolution, "rollout-refresh": c.RolloutRefresh,
		"audit-checkpoint-interval": c.AuditCheckpointInterval, "rollup-fold-interval": c.FoldInterval,
	} {
		if d <= 0 {
			return settingError(name, fmt.Errorf("%v: must be positive", d))
		}
	}
	if c.MaxBody <= 0 {
		return settingError("max-body", fmt.Errorf("%d: must be positive", c.MaxBody))
	}
	if c.MaxOpenRollouts <= 0 {
		return settingError("max-open-rollouts", fmt.Errorf("%d: must be positive", c.MaxOpenRollouts))
	}
	if c.MaxArtifactSize <= 0 {
		return settingError("max-artifact-size", fmt.Errorf("%d: must be positive", c.MaxArtifactSize))
	}
	if c.CheckInsPerMinute < 0 || c.ReportsPerMinute < 0 {
		return settingError("checkin-rate", errors.New("rates must not be negative"))
	}
	if c.EnrollmentsPerMinute < 0 {
		return settingError("enroll-rate", fmt.Errorf("%v: must not be negative", c.EnrollmentsPerMinute))
	}
	if c.EnrollmentsPerMinute > 0 && c.EnrollmentBurst < 1 {
		return settingError("enroll-burst", fmt.Errorf("%d: must be at least 1", c.EnrollmentBurst))
	}
	if c.SecretFailuresPerMinute < 0 {
		return settingError("enroll-secret-failure-rate", fmt.Errorf("%v: must not be negative", c.SecretFailuresPerMinute))
	}
	if c.SecretFailuresPerMinute > 0 && c.SecretFailureBurst < 1 {
		return settingError("enroll-secret-failure-burst", fmt.Errorf("%d: must be at least 1", c.SecretFailureBurst))
	}
	if c.TokenLifetime <= 0 || c.TokenLifetime > identity.MaxTokenLifetime {
		return settingError("token-lifetime", fmt.Errorf("%v: want a positive duration of at most %v", c.TokenLifetime, identity.MaxTokenLifetime))
	}
	if err := c.validatePublicURL(); err != nil {
		return err
	}
	if c.Expiry.Timestamp > c.Expiry.Snapshot {
		return settingError("timestamp-expiry", fmt.Errorf("%v is longer than --snapshot-expiry %v", c.Expiry.Timestamp, c.Expiry.Snapshot))
	}
	return nil
}

// validatePublicURL checks --public-url, and requires it when --listen
// accepts connections from other hosts: offers must name a URL the
// operator chose, never one taken from a request's Host header.
func (c *Config) validatePublicURL() error {
	if c.PublicURL == "" {
		if host, _, _ := net.SplitHostPort(c.Listen); !isLoopback(host) {
			return settingError("public-url", fmt.Errorf(
				"required when --listen %q accepts connections from other hosts: set it to the URL handsets reach this server at, e.g. https://ota.example.com", c.Listen))
		}
		return nil
	}
	u, err := url.Parse(c.PublicURL)
	switch {
	case err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || u.Opaque != "":
		return settingError("public-url", fmt.Errorf("%q: want an absolute http(s)://host[:port][/path]", c.PublicURL))
	case u.User != nil:
		return settingError("public-url", fmt.Errorf("%q: must not carry user:password (handsets are given this URL)", c.PublicURL))
	case u.RawQuery != "" || u.ForceQuery || u.Fragment != "" || strings.Contains(c.PublicURL, "#"):
		return settingError("public-url", fmt.Errorf("%q: must not have a query or fragment", c.PublicURL))
	}
	return nil
}

// isLoopback reports whether a --listen host accepts connections from this
// machine only. An empty host or 0.0.0.0 listens on every interface; a
// host name other than localhost may resolve to anything.
func isLoopback(host string) bool {
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// databaseKind returns "sqlite" or "postgres" and the DSN to open.
func (c *Config) databaseKind() (string, error) {
	switch d := c.Database; {
	case d == "":
		return "sqlite", nil
	case strings.HasPrefix(d, "postgres://"), strings.HasPrefix(d, "postgresql://"):
		if _, err := url.Parse(d); err != nil {
			return "", fmt.Errorf("malformed PostgreSQL URL: %w", redactURLError(err))
		}
		return "postgres", nil
	case strings.HasPrefix(d, "sqlite:"):
		if strings.TrimPrefix(d, "sqlite:") == "" {
			return "", errors.New("sqlite: needs a path, e.g. sqlite:/var/lib/otad/otad.db")
		}
		return "sqlite", nil
	default:
		return "", errors.New("want postgres://user:pass@host:5432/db or sqlite:PATH (or empty for SQLite in the data dir)")
	}
}

// databaseDSN is what sqlstore.Open takes.
func (c *Config) databaseDSN() string {
	if c.Database == "" {
		return "sqlite:" + filepath.Join(c.DataDir, "otad.db")
	}
	return c.Database
}

// storageKind returns "fs" or "s3".
func (c *Config) storageKind() (string, error) {
	s := c.Storage
	switch {
	case s == "":
		return "fs", nil
	case strings.HasPrefix(s, "s3://"):
		if _, _, err := s3store.ParseURL(s); err != nil {
			return "", err
		}
		return "s3", nil
	case strings.HasPrefix(s, "file://"):
		u, err := url.Parse(s)
		if err != nil || u.Host != "" || u.Path == "" {
			return "", fmt.Errorf("%q: want file:///absolute/path", s)
		}
		return "fs", nil
	case strings.Contains(s, "://"):
		return "", fmt.Errorf("%q: want s3://bucket/prefix, file:///path or a folder path", s)
	default:
		return "fs", nil
	}
}

// storageDir is the filesystem store's root.
func (c *Config) storageDir() string {
	switch {
	case c.Storage == "":
		return filepath.Join(c.DataDir, "blobs")
	case strings.HasPrefix(c.Storage, "file://"):
		return strings.TrimPrefix(c.Storage, "file://")
	default:
		return c.Storage
	}
}

func (c *Config) s3Config() (s3store.Config, error) {
	bucket, prefix, err := s3store.ParseURL(c.Storage)
	if err != nil {
		return s3store.Config{}, settingError("storage", err)
	}
	endpoint, secure := c.S3Endpoint, true
	if strings.Contains(endpoint, "://") {
		u, err := url.Parse(endpoint)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || (u.Path != "" && u.Path != "/") {
			return s3store.Config{}, settingError("s3-endpoint", fmt.Errorf("%q: want http://host:port, https://host or host:port", endpoint))
		}
		endpoint, secure = u.Host, u.Scheme == "https"
	}
	if endpoint == "" {
		return s3store.Config{}, settingError("s3-endpoint", errors.New("must not be empty with s3:// storage"))
	}
	return s3store.Config{
		Endpoint:  endpoint,
		Secure:    secure,
		Region:    c.S3Region,
		AccessKey: c.S3AccessKey,
		SecretKey: c.S3SecretKey,
		Bucket:    bucket,
		Prefix:    prefix,
	}, nil
}

// redactURLError drops the URL from url.Parse errors: it may hold a password.
func redactURLError(err error) error {
	var ue *url.Error
	if errors.As(err, &ue) {
		return ue.Err
	}
	return err
}

func parseLevel(s string) (slog.Level, error) {
	var l slog.Level
	if err := l.UnmarshalText([]byte(s)); err != nil {
		return 0, fmt.Errorf("%q: want debug, info, warn or error", s)
	}
	return l, nil
}

func (c *Config) logger(w io.Writer) *slog.Logger {
	level, _ := parseLevel(c.LogLevel) // checked by Validate
	opts := &slog.HandlerOptions{Level: level}
	if c.LogFormat == "text" {
		return slog.New(slog.NewTextHandler(w, opts))
	}
	return slog.New(slog.NewJSONHandler(w, opts))
}
