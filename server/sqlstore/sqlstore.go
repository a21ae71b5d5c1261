// Package sqlstore keeps the server's state in SQLite (the embedded default)
// or PostgreSQL (production, shared by several otad replicas).
//
// It is the only package that imports gorm: gorm types and row structs stay
// unexported here, and callers see domain types and the server package's
// sentinel errors.
package sqlstore

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	sqlitelib "github.com/glebarez/go-sqlite"
	"github.com/glebarez/sqlite"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/stdlib"
	clk "github.com/patchfleet/ota/clock"
	"gorm.io/driver/postgres"
	"gorm.io/gorm"
	sqlite3 "modernc.org/sqlite/lib"
)

// Dialect names returned by (*DB).Dialect.
const (
	dialectSQLite   = "sqlite"
	dialectPostgres = "postgres"
)

// Pool defaults used when Options leaves them zero.
const (
	// PostgreSQL's default max_connections is 100 and every replica takes
	// its share, so each pool stays small.
	defaultPostgresMaxOpenConns = 10
	// SQLite in WAL mode runs readers concurrently with the one writer;
	// more connections than this only queue on the write lock.
	defaultSQLiteMaxOpenConns = 8

	// pgx waits for the OS TCP timeout (minutes) when the caller's ctx
	// has no deadline and the DSN no connect_timeout; a replica behind a
	// load balancer should rather fail and be restarted.
	defaultPostgresConnectTimeout = 10 * time.Second

	// slowQueryThreshold is when a query is logged as a warning.
	slowQueryThreshold = 200 * time.Millisecond
)

// sqlitePragmas are applied by the driver to every new connection, in
// order, before the pool hands it out. They go in the DSN rather than in a
// one-off Exec because database/sql opens connections on its own and most
// pragmas are per connection.
var sqlitePragmas = []string{
	// Wait up to 10s for a lock instead of failing at once with
	// SQLITE_BUSY: other connections (or otad processes) hold the write
	// lock only briefly. First, so that the switch to WAL below waits too.
	"busy_timeout(10000)",
	// WAL lets readers run while one writer commits, and commits cost one
	// fsync of the log instead of rewriting pages in place. It is a
	// property of the database file, so setting it again is a no-op.
	"journal_mode(WAL)",
	// FULL fsyncs the WAL on every commit. NORMAL (the usual WAL pairing)
	// survives a process kill but may lose the last commits on power
	// loss, and an acknowledged handset report must not be lost.
	"synchronous(FULL)",
	// SQLite does not check foreign key constraints unless asked, per
	// connection.
	"foreign_keys(1)",
	// Deleted rows are overwritten with zeros instead of staying in free
	// space until reused: an erased handset's reports must not remain
	// readable in the file (strings otad.db). Per connection. The WAL
	// keeps older page images until a checkpoint; DeleteDevice truncates
	// it. BenchmarkSecureDelete measures the cost (see the README).
	secureDeletePragma,
}

const secureDeletePragma = "secure_delete(1)"

// Options tunes Open. The zero value is valid.
type Options struct {
	// Logger receives slow-query warnings and migration progress; nil
	// discards them.
	Logger *slog.Logger
	// MaxOpenConns caps the connection pool; zero or less picks a default
	// for the dialect (10 for PostgreSQL, 8 for SQLite).
	MaxOpenConns int
	// Now is the clock of the times the stores write themselves (a
	// revocation, a signature, a draft's state, an erasure) and of gorm's
	// CreatedAt and UpdatedAt (default time.Now): the wiring passes the
	// one its services have.
	Now func() time.Time

	// insecureDelete leaves out SQLite's secure_delete, for the benchmark
	// that measures what it costs.
	insecureDelete bool
}

// DB is an open SQLite or PostgreSQL database. It is safe for concurrent
// use; several DBs (in one or several processes) may share one database.
type DB struct {
	gorm    *gorm.DB
	sql     *sql.DB
	dialect string
	logger  *slog.Logger
	repoMu  chan struct{} // RepoLock on SQLite
	clock   func() time.Time
	// checkIns batches check-in reads on PostgreSQL; nil on SQLite.
	checkIns *readBatcher[string, checkInRows]
	// writes group-commits the handset path's writes on PostgreSQL
	// (DB.write); nil on SQLite, whose write gate does it.
	writes *writeBatcher
	// offers is this replica's allowance of capped offers (offer_budget.go).
	offers *offerBudget
	// foldHook, when set (by tests), is called by FoldRollups after it
	// folded each rollup, inside the fold's transaction.
	foldHook func(table string)
}

// Open connects to the database named by dsn and checks that it answers
// within ctx. It does not migrate: call Migrate.
//
// Accepted forms:
//
//	postgres://user:pass@host:5432/db?sslmode=disable   (also postgresql://)
//	sqlite:/var/lib/otad/ota.db
//	file:/var/lib/otad/ota.db                             (also file:///abs/path)
//	/var/lib/otad/ota.db                                  (any path ending in .db)
//
// SQLite paths take no query parameters: the pragmas that make commits
// durable are fixed by this package. Errors never contain the password.
func Open(ctx context.Context, dsn string, opts Options) (*DB, error) {
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	t, err := parseDSN(dsn)
	if err != nil {
		return nil, err
	}
	opts.Now = clk.Or(opts.Now)
	cfg := &gorm.Config{
		Logger: newGormLogger(log),
		// One statement is atomic already; gorm's implicit transaction
		// around each write would add two round trips and, on SQLite, an
		// extra BEGIN IMMEDIATE lock cycle.
		SkipDefaultTransaction: true,
		// Unique violations come back as gorm.ErrDuplicatedKey on both
		// dialects, which the stores translate into domain errors.
		TranslateError: true,
		// gorm pings with context.Background(); Open pings below with the
		// caller's ctx so a dead server cannot outlive its deadline.
		DisableAutomaticPing: true,
		// Timestamps that gorm fills in (CreatedAt, UpdatedAt) are stored
		// in UTC so that SQLite's text timestamps sort and compare
		// correctly whatever the host's time zone.
		NowFunc: func() time.Time { return opts.Now().UTC() },
	}
	switch t.dialect {
	case dialectPostgres:
		return openPostgres(ctx, dsn, cfg, opts, log)
	default:
		return openSQLite(ctx, t.path, cfg, opts, log)
	}
}

func openPostgres(ctx context.Context, dsn string, cfg *gorm.Config, opts Options, log *slog.Logger) (*DB, error) {
	secrets := dsnSecrets(dsn)
	pgcfg, err := pgx.ParseConfig(dsn)
	if err != nil {
		return nil, fmt.Errorf("parse postgres DSN: %w", redact(err, secrets))
	}
	secrets = append(secrets, pgcfg.Password)
	where := net.JoinHostPort(pgcfg.Host, strconv.Itoa(int(pgcfg.Port))) + "/" + pgcfg.Database
	if strings.HasPrefix(pgcfg.Host, "/") {
		// A Unix socket directory, where a port would only confuse.
		where = pgcfg.Host + "/" + pgcfg.Database
	}
	if pgcfg.ConnectTimeout == 0 {
		pgcfg.ConnectTimeout = defaultPostgresConnectTimeout
	}

	// The pool is built here rather than by the gorm driver from the DSN,
	// so the DSN is parsed once and its password is known for redaction.
	sqlDB := stdlib.OpenDB(*pgcfg)
	maxOpen := opts.MaxOpenConns
	if maxOpen <= 0 {
		maxOpen = defaultPostgresMaxOpenConns
	}
	sqlDB.SetMaxOpenConns(maxOpen)
	sqlDB.SetMaxIdleConns(maxOpen)
	// Recycle connections so that a failover or a new DNS answer is picked
	// up, and idle replicas give their connections back to the server.
	sqlDB.SetConnMaxLifetime(30 * time.Minute)
	sqlDB.SetConnMaxIdleTime(5 * time.Minute)

	g, err := gorm.Open(postgres.New(postgres.Config{Conn: sqlDB}), cfg)
	if err != nil {
		_ = sqlDB.Close()
		return nil, fmt.Errorf("connect to postgres at %s: %w", where, redact(err, secrets))
	}
	if err := sqlDB.PingContext(ctx); err != nil {
		_ = sqlDB.Close()
		return nil, fmt.Errorf("connect to postgres at %s: %w", where, redact(err, secrets))
	}
	db := &DB{gorm: g, sql: sqlDB, dialect: dialectPostgres, logger: log, repoMu: make(chan struct{}, 1),
		offers: newOfferBudget(g), clock: opts.Now}
	db.checkIns = db.checkInBatcher()
	db.writes = newWriteBatcher(sqlDB)
	return db, nil
}

// sqliteFileMode is the mode of the database file and of its -wal and
// -shm files: they hold token hashes, sessions, the audit log and the
// fleet, for otad's user alone. SQLite makes the -wal and -shm files
// with the database file's mode, so the database file is made (or set)
// owner-only before SQLite opens it; files from before are set after.
const sqliteFileMode = 0o600

// ownerOnlySQLite creates the database file at path with sqliteFileMode
// unless it exists (an empty file is an empty database to SQLite), and
// sets the mode of it and of its -wal and -shm files, whatever the umask
// and whatever they had. Files that do not exist are left so.
func ownerOnlySQLite(path string) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, sqliteFileMode)
	switch {
	case err == nil:
		if err := f.Close(); err != nil {
			return err
		}
	case !errors.Is(err, os.ErrExist):
		return err
	}
	for _, p := range []string{path, path + "-wal", path + "-shm"} {
		if err := os.Chmod(p, sqliteFileMode); err != nil && !errors.Is(err, os.ErrNotExist) {
			return err
		}
	}
	return nil
}

func openSQLite(ctx context.Context, path string, cfg *gorm.Config, opts Options, log *slog.Logger) (*DB, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, fmt.Errorf("open sqlite database %s: create directory: %w", path, err)
	}
	if err := ownerOnlySQLite(path); err != nil {
		return nil, fmt.Errorf("open sqlite database %s: make it owner-only: %w", path, err)
	}
	q := url.Values{}
	for _, p := range sqlitePragmas {
		if p == secureDeletePragma && opts.insecureDelete {
			continue
		}
		q.Add("_pragma", p)
	}
	// BEGIN IMMEDIATE takes the write lock when a transaction starts, so
	// two read-then-write transactions cannot both read and then deadlock
	// on the upgrade (which SQLite answers with SQLITE_BUSY at once, past
	// busy_timeout). It also serialises concurrent Migrate calls.
	// Read-only transactions (sql.TxOptions{ReadOnly: true}) still use a
	// plain BEGIN. Do not add _time_format: go-sqlite v1.21 stops reading
	// parameters after it and would silently drop _txlock.
	q.Set("_txlock", "immediate")

	// The path is passed as a plain file name (not a file: URI), so the
	// driver strips the query string and SQLite takes the path verbatim.
	sqlDB, g, err := openSQLiteRetrying(ctx, path+"?"+q.Encode(), cfg)
	if err != nil {
		return nil, fmt.Errorf("open sqlite database %s: %w", path, err)
	}
	maxOpen := opts.MaxOpenConns
	if maxOpen <= 0 {
		maxOpen = defaultSQLiteMaxOpenConns
	}
	sqlDB.SetMaxOpenConns(maxOpen)
	sqlDB.SetMaxIdleConns(maxOpen)
	if err := sqlDB.PingContext(ctx); err != nil {
		_ = sqlDB.Close()
		return nil, fmt.Errorf("open sqlite database %s: %w", path, err)
	}
	// A -wal or -shm file that another process made between the two
	// calls, before this database file was owner-only.
	if err := ownerOnlySQLite(path); err != nil {
		_ = sqlDB.Close()
		return nil, fmt.Errorf("open sqlite database %s: make it owner-only: %w", path, err)
	}
	return &DB{gorm: g, sql: sqlDB, dialect: dialectSQLite, logger: log, repoMu: make(chan struct{}, 1),
		offers: newOfferBudget(g), clock: opts.Now}, nil
}

// now is the time on the database's clock (Options.Now), in UTC.
func (db *DB) now() time.Time { return clk.Now(db.clock).UTC() }

// openSQLiteRetrying opens the database, trying again while SQLite
// answers SQLITE_BUSY. The first connection applies the pragmas, and when
// several processes open one file at once SQLite can refuse the switch to
// WAL with SQLITE_BUSY without calling the busy handler (it does so to
// avoid deadlocks), so busy_timeout alone does not cover it. Each try
// opens a new pool: gorm.Open closes the pool it was given when it fails.
func openSQLiteRetrying(ctx context.Context, dsn string, cfg *gorm.Config) (*sql.DB, *gorm.DB, error) {
	deadline := time.Now().Add(10 * time.Second)
	for wait := 10 * time.Millisecond; ; wait = min(2*wait, 500*time.Millisecond) {
		sqlDB, err := sql.Open(sqlite.DriverName, dsn)
		if err != nil {
			return nil, nil, err
		}
		g, err := gorm.Open(&sqlite.Dialector{Conn: newWriteGate(sqlDB)}, cfg)
		if err == nil {
			return sqlDB, g, nil
		}
		_ = sqlDB.Close()
		var se *sqlitelib.Error
		if !errors.As(err, &se) || se.Code()&0xff != sqlite3.SQLITE_BUSY || time.Now().After(deadline) {
			return nil, nil, err
		}
		select {
		case <-ctx.Done():
			return nil, nil, fmt.Errorf("%w (while the database was locked: %w)", ctx.Err(), err)
		case <-time.After(wait):
		}
	}
}

// Dialect reports which database DB talks to: "sqlite" or "postgres".
// Callers use it for logs and health output, not to branch on SQL.
func (db *DB) Dialect() string { return db.dialect }

// Ping checks that the database still answers, for health checks.
func (db *DB) Ping(ctx context.Context) error {
	err := db.sql.PingContext(ctx)
	if errors.Is(err, driver.ErrBadConn) {
		// After a server restart the pool may still hold dead connections;
		// database/sql gives up on them with a bare "bad connection". One
		// more try dials anew and says what is really wrong (or succeeds).
		err = db.sql.PingContext(ctx)
	}
	if err != nil {
		return fmt.Errorf("ping %s: %w", db.dialect, err)
	}
	return nil
}

// Analyze refreshes the query planner's statistics of every table
// (ANALYZE). PostgreSQL's autovacuum does it by itself within about a
// minute of a bulk change; a benchmark or a bulk import that queries
// at once calls it, or PostgreSQL plans against empty-table guesses
// (sequential scans where the indexes serve).
func (db *DB) Analyze(ctx context.Context) error {
	if err := db.gorm.WithContext(ctx).Exec("ANALYZE").Error; err != nil {
		return fmt.Errorf("analyze %s: %w", db.dialect, err)
	}
	return nil
}

// Close closes the connection pool. On SQLite the last connection to close
// checkpoints the WAL into the main file.
func (db *DB) Close() error {
	if err := db.sql.Close(); err != nil {
		return fmt.Errorf("close %s: %w", db.dialect, err)
	}
	return nil
}

// InstallationID returns the random id that migration 1 stored in the
// database. Replicas that share a database report the same id, which lets
// operators check that they do.
func (db *DB) InstallationID(ctx context.Context) (string, error) {
	var ids []string
	if err := db.gorm.WithContext(ctx).Raw("SELECT id FROM installation").Scan(&ids).Error; err != nil {
		return "", fmt.Errorf("installation id: %w", err)
	}
	if len(ids) != 1 {
		return "", fmt.Errorf("installation id: got %d rows, want 1 (has the database been migrated?)", len(ids))
	}
	return ids[0], nil
}

// target is what parseDSN makes of a DSN.
type target struct {
	dialect string
	path    string // SQLite only
}

// parseDSN picks the dialect. Its errors never quote the DSN, which may
// hold a password.
func parseDSN(dsn string) (target, error) {
	switch {
	case strings.HasPrefix(dsn, "postgres://"), strings.HasPrefix(dsn, "postgresql://"):
		return target{dialect: dialectPostgres}, nil
	case strings.HasPrefix(dsn, "sqlite:"):
		return sqliteTarget(strings.TrimPrefix(dsn, "sqlite:"))
	case strings.HasPrefix(dsn, "file:"):
		rest := strings.TrimPrefix(dsn, "file:")
		if strings.HasPrefix(rest, "//") {
			// file:///abs/path or file://localhost/abs/path.
			u, err := url.Parse(dsn)
			if err != nil {
				return target{}, fmt.Errorf("sqlite DSN: %w", err)
			}
			if u.Host != "" && u.Host != "localhost" {
				return target{}, fmt.Errorf("sqlite DSN: file URI host %q: only local files are supported", u.Host)
			}
			if u.RawQuery != "" {
				return target{}, errors.New("sqlite DSN: query parameters are not supported: otad sets the pragmas itself")
			}
			return sqliteTarget(u.Path)
		}
		return sqliteTarget(rest)
	case strings.HasSuffix(dsn, ".db") && !strings.Contains(dsn, "://"):
		return sqliteTarget(dsn)
	}
	scheme := "no scheme"
	if i := strings.Index(dsn, "://"); i > 0 {
		scheme = "scheme " + strconv.Quote(dsn[:i])
	}
	return target{}, fmt.Errorf("unsupported database DSN (%s): want postgres://..., postgresql://..., sqlite:PATH, file:PATH or a path ending in .db", scheme)
}

func sqliteTarget(path string) (target, error) {
	switch {
	case path == "":
		return target{}, errors.New("sqlite DSN: empty path")
	case strings.HasPrefix(path, ":memory:") || strings.HasPrefix(path, "file::memory:"):
		// Every pooled connection would get its own empty database.
		return target{}, errors.New("sqlite DSN: in-memory databases are not supported: use a file, e.g. in a temporary directory")
	case strings.Contains(path, "?"):
		// The driver cuts the name at the first '?', so a query string or
		// a '?' in the file name would be taken for parameters.
		return target{}, errors.New("sqlite DSN: query parameters and '?' in the path are not supported: otad sets the pragmas itself")
	}
	return target{dialect: dialectSQLite, path: path}, nil
}

// dsnSecrets extracts the password from a postgres URL DSN, as written and
// percent-decoded, without relying on a successful parse: it is used to
// scrub errors from a DSN that failed to parse.
func dsnSecrets(dsn string) []string {
	var out []string
	add := func(s string) {
		if s == "" {
			return
		}
		out = append(out, s)
		if d, err := url.PathUnescape(s); err == nil && d != s {
			out = append(out, d)
		}
	}
	rest := dsn
	if i := strings.Index(rest, "://"); i >= 0 {
		rest = rest[i+3:]
	}
	authority, query := rest, ""
	if i := strings.IndexAny(rest, "/?#"); i >= 0 {
		authority = rest[:i]
	}
	if i := strings.Index(rest, "?"); i >= 0 {
		query = rest[i+1:]
	}
	if at := strings.LastIndex(authority, "@"); at >= 0 {
		if _, pw, ok := strings.Cut(authority[:at], ":"); ok {
			add(pw)
		}
	}
	for _, kv := range strings.Split(query, "&") {
		if k, v, ok := strings.Cut(kv, "="); ok && strings.EqualFold(k, "password") {
			add(v)
			if d, err := url.QueryUnescape(v); err == nil {
				add(d)
			}
		}
	}
	return out
}

// redactedError hides secrets in the text of an error while keeping the
// chain intact for errors.Is and errors.As.
type redactedError struct {
	err     error
	secrets []string
}

func (e *redactedError) Error() string {
	s := e.err.Error()
	for _, secret := range e.secrets {
		if secret != "" {
			s = strings.ReplaceAll(s, secret, "xxxxx")
		}
	}
	return s
}

func (e *redactedError) Unwrap() error { return e.err }

func redact(err error, secrets []string) error {
	if err == nil {
		return nil
	}
	return &redactedError{err: err, secrets: secrets}
}
