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

	"github.com/patchfleet/ota/manifests"
	"github.com/patchfleet/ota/manifests/s3store"

	"github.com/patchfleet/ota/internal/envflag"
)

// Config is everything otad reads from flags and the environment.
type Config struct {
	Listen  string
	DataDir string

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
	MaxArtifactSize     int64

	// Handset API.
	PublicURL         string
	EnrollmentSecret  string
	PollInterval      time.Duration
	ReportRetention   time.Duration
	CheckInsPerMinute float64
	ReportsPerMinute  float64
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
		MaxArtifactSize: 8 << 30,

		PollInterval:      time.Hour,
		ReportRetention:   90 * 24 * time.Hour,
		CheckInsPerMinute: 6,
		ReportsPerMinute:  120,
	}
}

// Primary environment variable of each flag that can fail after parsing;
// envflag.Error names it beside the flag.
var envOf = map[string]string{
	"listen":       "OTAD_LISTEN",
	"data-dir":     "OTAD_DATA_DIR",
	"database":     "OTAD_DATABASE",
	"storage":      "OTAD_STORAGE",
	"s3-endpoint":  "OTAD_S3_ENDPOINT",
	"log-level":    "OTAD_LOG_LEVEL",
	"log-format":   "OTAD_LOG_FORMAT",
	"online-key":   "OTAD_ONLINE_KEY",
	"public-url":   "OTAD_PUBLIC_URL",
	"checkin-rate": "OTAD_CHECKIN_RATE",
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

// registerServe adds the flags of "otad serve".
func (c *Config) registerServe(fs *envflag.FlagSet) {
	c.registerCommon(fs)
	fs.StringEnv(&c.Listen, "listen", c.Listen, "address to serve HTTP on; use :8080 to accept handsets from other hosts", "OTAD_LISTEN")
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
	fs.DurationEnv(&c.ReadTimeout, "read-timeout", c.ReadTimeout, "longest time to read a request, body included", "OTAD_READ_TIMEOUT")
	fs.DurationEnv(&c.WriteTimeout, "write-timeout", c.WriteTimeout, "longest time to write a response", "OTAD_WRITE_TIMEOUT")
	fs.DurationEnv(&c.IdleTimeout, "idle-timeout", c.IdleTimeout, "how long an idle keep-alive connection stays open", "OTAD_IDLE_TIMEOUT")
	fs.DurationEnv(&c.ShutdownTimeout, "shutdown-timeout", c.ShutdownTimeout,
		"on SIGTERM or SIGINT, how long in-flight requests may take to finish", "OTAD_SHUTDOWN_TIMEOUT")
	fs.Int64Env(&c.MaxBody, "max-body", c.MaxBody, "largest request body in bytes for API calls (uploads have their own limit)", "OTAD_MAX_BODY")
	c.registerTUF(fs)
	c.registerHandset(fs)
}

// registerHandset adds the handset API flags.
func (c *Config) registerHandset(fs *envflag.FlagSet) {
	fs.StringEnv(&c.PublicURL, "public-url", c.PublicURL,
		"base URL handsets reach this server at (behind a load balancer or CDN); empty uses each request's host", "OTAD_PUBLIC_URL")
	fs.StringEnv(&c.EnrollmentSecret, "enrollment-secret", c.EnrollmentSecret,
		"fleet enrollment secret handsets must present; empty lets any handset enroll (demo). Prefer the environment", "OTAD_ENROLLMENT_SECRET")
	fs.DurationEnv(&c.PollInterval, "poll-interval", c.PollInterval, "mean time between handset check-ins (answers are jittered by ±10%)", "OTAD_POLL_INTERVAL")
	fs.DurationEnv(&c.ReportRetention, "report-retention", c.ReportRetention, "how long install reports are kept before a background job deletes them", "OTAD_REPORT_RETENTION")
	fs.Float64Env(&c.CheckInsPerMinute, "checkin-rate", c.CheckInsPerMinute, "check-ins a device may make per minute (burst 10); 0 disables the limit", "OTAD_CHECKIN_RATE")
	fs.Float64Env(&c.ReportsPerMinute, "report-rate", c.ReportsPerMinute, "reports a device may send per minute (burst 60); 0 disables the limit", "OTAD_REPORT_RATE")
}

// registerTUF adds the repository flags.
func (c *Config) registerTUF(fs *envflag.FlagSet) {
	fs.StringEnv(&c.OnlineKey, "online-key", c.OnlineKey,
		"the server's timestamp/snapshot signing key file; empty means DATA-DIR/online-key.json, generated on first start. Replicas must share one key", "OTAD_ONLINE_KEY")
	fs.DurationEnv(&c.Expiry.Root, "root-expiry", c.Expiry.Root, "validity of root metadata drafted by the server", "OTAD_ROOT_EXPIRY")
	fs.DurationEnv(&c.Expiry.Targets, "targets-expiry", c.Expiry.Targets, "validity of targets metadata drafted by the server", "OTAD_TARGETS_EXPIRY")
	fs.DurationEnv(&c.Expiry.Snapshot, "snapshot-expiry", c.Expiry.Snapshot, "validity of snapshot metadata; re-signed when half is left", "OTAD_SNAPSHOT_EXPIRY")
	fs.DurationEnv(&c.Expiry.Timestamp, "timestamp-expiry", c.Expiry.Timestamp, "validity of timestamp metadata; re-signed when half is left", "OTAD_TIMESTAMP_EXPIRY")
	fs.DurationEnv(&c.RefreshInterval, "refresh-interval", c.RefreshInterval,
		"how often to pick up what other replicas published and check expiries", "OTAD_REFRESH_INTERVAL")
	fs.BoolEnv(&c.TargetsRedirect, "targets-redirect", c.TargetsRedirect,
		"answer artifact downloads with a redirect to a presigned S3 URL instead of streaming them through otad", "OTAD_TARGETS_REDIRECT")
	fs.DurationEnv(&c.PresignTTL, "presign-ttl", c.PresignTTL, "validity of presigned artifact URLs", "OTAD_PRESIGN_TTL")
	fs.Int64Env(&c.MaxArtifactSize, "max-artifact-size", c.MaxArtifactSize, "largest artifact upload in bytes", "OTAD_MAX_ARTIFACT_SIZE")
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
		"refresh-interval": c.RefreshInterval, "presign-ttl": c.PresignTTL,
		"poll-interval": c.PollInterval, "report-retention": c.ReportRetention,
	} {
		if d <= 0 {
			return settingError(name, fmt.Errorf("%v: must be positive", d))
		}
	}
	if c.MaxBody <= 0 {
		return settingError("max-body", fmt.Errorf("%d: must be positive", c.MaxBody))
	}
	if c.MaxArtifactSize <= 0 {
		return settingError("max-artifact-size", fmt.Errorf("%d: must be positive", c.MaxArtifactSize))
	}
	if c.CheckInsPerMinute < 0 || c.ReportsPerMinute < 0 {
		return settingError("checkin-rate", errors.New("rates must not be negative"))
	}
	if c.PublicURL != "" {
		if u, err := url.Parse(c.PublicURL); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			return settingError("public-url", fmt.Errorf("%q: want http(s)://host[:port][/path]", c.PublicURL))
		}
	}
	if c.Expiry.Timestamp > c.Expiry.Snapshot {
		return settingError("timestamp-expiry", fmt.Errorf("%v is longer than --snapshot-expiry %v", c.Expiry.Timestamp, c.Expiry.Snapshot))
	}
	return nil
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
