package sqlstore

import (
	"bytes"
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"gorm.io/gorm"
)

const postgresDSNEnv = "OTA_TEST_POSTGRES_DSN"

// backend is a database the store suite runs against.
// storeCase is one test of the store suite.
type storeCase struct {
	name string
	fn   func(t *testing.T, b backend)
}

// runStoreSuite runs every case on every backend, in parallel, with a
// backend-named subtest (TestStore/postgres/MigrateConcurrent).
func runStoreSuite(t *testing.T, cases []storeCase) {
	for _, b := range backends {
		t.Run(b.name, func(t *testing.T) {
			t.Parallel()
			if b.name == "postgres" && os.Getenv(postgresDSNEnv) == "" {
				t.Skip(postgresDSNEnv + " not set; run ./scripts/test.sh to run the PostgreSQL tests")
			}
			for _, tc := range cases {
				t.Run(tc.name, func(t *testing.T) {
					t.Parallel()
					tc.fn(t, b)
				})
			}
		})
	}
}

type backend struct {
	name string
	// newDSN returns the DSN of a fresh, empty database that lives until
	// the test ends.
	newDSN func(t testing.TB) string
}

var backends = []backend{
	{name: "sqlite", newDSN: newSQLiteDSN},
	{name: "postgres", newDSN: newPostgresDSN},
}

func newSQLiteDSN(t testing.TB) string {
	t.Helper()
	return "sqlite:" + filepath.Join(t.TempDir(), "data", "ota.db")
}

// newPostgresDSN creates a database with a random name on the server of
// OTA_TEST_POSTGRES_DSN and drops it when the test ends: several test
// packages share that server at once, so no test may use the database in
// the DSN itself.
func newPostgresDSN(t testing.TB) string {
	t.Helper()
	base := os.Getenv(postgresDSNEnv)
	if base == "" {
		t.Skip(postgresDSNEnv + " not set; run ./scripts/test.sh to run the PostgreSQL tests")
	}
	u, err := url.Parse(base)
	if err != nil {
		t.Fatalf("parse %s: %v", postgresDSNEnv, err)
	}
	var b [8]byte
	if _, err := rand.Read(b[:]); err != nil {
		t.Fatal(err)
	}
	name := "ota_sqlstore_" + hex.EncodeToString(b[:])

	admin := func(sql string) {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		db, err := Open(ctx, base, Options{MaxOpenConns: 1})
		if err != nil {
			t.Fatalf("open admin connection: %v", err)
		}
		defer db.Close()
		if err := db.gorm.WithContext(ctx).Exec(sql).Error; err != nil {
			t.Fatalf("%s: %v", sql, err)
		}
	}
	// template0 never has connections, so concurrent CREATE DATABASE
	// calls from other packages cannot fail on a busy template1.
	admin("CREATE DATABASE " + name + " TEMPLATE template0")
	t.Cleanup(func() { admin("DROP DATABASE IF EXISTS " + name + " WITH (FORCE)") })

	u.Path = "/" + name
	return u.String()
}

// mustOpen opens dsn and closes it when the test ends.
func mustOpen(t testing.TB, dsn string) *DB {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	db, err := Open(ctx, dsn, Options{Logger: testLogger(t), MaxOpenConns: 4})
	if err != nil {
		t.Fatalf("open: %v", err)
	}
	t.Cleanup(func() { _ = db.Close() })
	return db
}

func testLogger(t testing.TB) *slog.Logger {
	return slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelInfo}))
}

func mustMigrate(t testing.TB, db *DB, list []Migration) MigrateResult {
	t.Helper()
	res, err := migrate(t.Context(), db, list)
	if err != nil {
		t.Fatalf("migrate: %v", err)
	}
	return res
}

func mustSchemaVersion(t testing.TB, db *DB) int {
	t.Helper()
	v, err := db.SchemaVersion(t.Context())
	if err != nil {
		t.Fatalf("schema version: %v", err)
	}
	return v
}

func mustHaveTable(t testing.TB, db *DB, table string, want bool) {
	t.Helper()
	got, err := db.hasTable(t.Context(), table)
	if err != nil {
		t.Fatalf("has table %s: %v", table, err)
	}
	if got != want {
		t.Errorf("table %s exists: got %v, want %v", table, got, want)
	}
}

// appliedVersions returns the versions recorded in schema_migrations,
// duplicates included (there should be none: version is the key).
func appliedVersions(t testing.TB, db *DB) []int {
	t.Helper()
	var vs []int
	if err := db.gorm.WithContext(t.Context()).Raw("SELECT version FROM schema_migrations ORDER BY version").Scan(&vs).Error; err != nil {
		t.Fatalf("read schema_migrations: %v", err)
	}
	return vs
}

func checkResult(t testing.TB, got, want MigrateResult) {
	t.Helper()
	if got.From != want.From || got.To != want.To || !slices.Equal(got.Applied, want.Applied) {
		t.Errorf("migrate result: got %+v, want %+v", got, want)
	}
}

// testMigrations returns n simple migrations, each creating table tN.
func testMigrations(n int) []Migration {
	var list []Migration
	for v := 1; v <= n; v++ {
		list = append(list, Migration{
			Version: v,
			Name:    fmt.Sprintf("create_t%d", v),
			Common:  []string{fmt.Sprintf("CREATE TABLE t%d (id INTEGER PRIMARY KEY)", v)},
		})
	}
	return list
}

// TestStore runs the store suite against SQLite and, when
// OTA_TEST_POSTGRES_DSN is set, PostgreSQL: TestStore/sqlite/...,
// TestStore/postgres/....
func TestStore(t *testing.T) {
	runStoreSuite(t, []storeCase{
		{"Dialect", testDialect},
		{"MigrateFresh", testMigrateFresh},
		{"MigrateTwiceIsNoop", testMigrateTwiceIsNoop},
		{"MigrateFailureRollsBack", testMigrateFailureRollsBack},
		{"MigrateAcrossRestarts", testMigrateAcrossRestarts},
		{"MigrateConcurrent", testMigrateConcurrent},
		{"MigrateRefusesNewerDatabase", testMigrateRefusesNewerDatabase},
		{"MigrateRejectsInvalidList", testMigrateRejectsInvalidList},
		{"MigrateDialectStatements", testMigrateDialectStatements},
		{"InstallationID", testInstallationID},
		{"InstallationIDBeforeMigrate", testInstallationIDBeforeMigrate},
		{"PingAfterClose", testPingAfterClose},
		{"Analyze", testAnalyze},
		{"LoggerHidesParameters", testLoggerHidesParameters},
		{"SQLitePragmas", testSQLitePragmas},
	})

}

func testDialect(t *testing.T, b backend) {
	db := mustOpen(t, b.newDSN(t))
	if got := db.Dialect(); got != b.name {
		t.Errorf("dialect: got %q, want %q", got, b.name)
	}
	if err := db.Ping(t.Context()); err != nil {
		t.Errorf("ping: got %v, want nil", err)
	}
}

func testMigrateFresh(t *testing.T, b backend) {
	db := mustOpen(t, b.newDSN(t))
	if got := mustSchemaVersion(t, db); got != 0 {
		t.Errorf("schema version before migrate: got %d, want 0", got)
	}
	res, err := db.Migrate(t.Context())
	if err != nil {
		t.Fatalf("migrate: %v", err)
	}
	want := MigrateResult{From: 0, To: len(migrations)}
	for _, m := range migrations {
		want.Applied = append(want.Applied, m.Version)
	}
	checkResult(t, res, want)
	if got := mustSchemaVersion(t, db); got != len(migrations) {
		t.Errorf("schema version: got %d, want %d", got, len(migrations))
	}
	// applied_at is the database's clock in UTC.
	var appliedAt time.Time
	if err := db.gorm.WithContext(t.Context()).Raw("SELECT applied_at FROM schema_migrations WHERE version = 1").Scan(&appliedAt).Error; err != nil {
		t.Fatal(err)
	}
	if d := time.Since(appliedAt); d < -time.Minute || d > time.Minute {
		t.Errorf("applied_at: got %v, want within a minute of %v", appliedAt, time.Now().UTC())
	}
}

func testMigrateTwiceIsNoop(t *testing.T, b backend) {
	db := mustOpen(t, b.newDSN(t))
	list := testMigrations(3)
	mustMigrate(t, db, list)
	res := mustMigrate(t, db, list)
	checkResult(t, res, MigrateResult{From: 3, To: 3, Applied: []int{}})
	if got, want := appliedVersions(t, db), []int{1, 2, 3}; !slices.Equal(got, want) {
		t.Errorf("schema_migrations versions: got %v, want %v", got, want)
	}
}

func testMigrateFailureRollsBack(t *testing.T, b backend) {
	db := mustOpen(t, b.newDSN(t))
	list := []Migration{
		testMigrations(1)[0],
		{
			Version: 2,
			Name:    "add_half",
			Common: []string{
				"CREATE TABLE half (id INTEGER PRIMARY KEY)",
				"THIS IS NOT SQL",
			},
		},
	}
	res, err := migrate(t.Context(), db, list)
	if err == nil {
		t.Fatal("migrate: got nil error, want an error from migration 2")
	}
	if got, want := err.Error(), "migration 2 (add_half): statement 2: "; !strings.HasPrefix(got, want) {
		t.Errorf("error: got %q, want prefix %q", got, want)
	}
	checkResult(t, res, MigrateResult{From: 0, To: 1, Applied: []int{1}})
	mustHaveTable(t, db, "t1", true)
	mustHaveTable(t, db, "half", false)
	if got, want := appliedVersions(t, db), []int{1}; !slices.Equal(got, want) {
		t.Errorf("schema_migrations versions: got %v, want %v", got, want)
	}
	if got := mustSchemaVersion(t, db); got != 1 {
		t.Errorf("schema version: got %d, want 1", got)
	}

	// Fixed, the migration applies on the next start.
	list[1].Common = list[1].Common[:1]
	res = mustMigrate(t, db, list)
	checkResult(t, res, MigrateResult{From: 1, To: 2, Applied: []int{2}})
	mustHaveTable(t, db, "half", true)
}

func testMigrateAcrossRestarts(t *testing.T, b backend) {
	dsn := b.newDSN(t)
	steps := []struct {
		known int
		want  MigrateResult
	}{
		{known: 2, want: MigrateResult{From: 0, To: 2, Applied: []int{1, 2}}},
		{known: 2, want: MigrateResult{From: 2, To: 2, Applied: []int{}}},
		{known: 3, want: MigrateResult{From: 2, To: 3, Applied: []int{3}}},
	}
	for i, step := range steps {
		ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
		db, err := Open(ctx, dsn, Options{Logger: testLogger(t)})
		cancel()
		if err != nil {
			t.Fatalf("step %d: open: %v", i, err)
		}
		res := mustMigrate(t, db, testMigrations(step.known))
		checkResult(t, res, step.want)
		if got := mustSchemaVersion(t, db); got != step.known {
			t.Errorf("step %d: schema version: got %d, want %d", i, got, step.known)
		}
		if err := db.Close(); err != nil {
			t.Fatalf("step %d: close: %v", i, err)
		}
	}
}

// testMigrateConcurrent starts 8 "replicas", each with its own pool, that
// migrate the same database at once through a slow migration.
func testMigrateConcurrent(t *testing.T, b backend) {
	const replicas = 8
	// Enough rows to keep the other replicas waiting on the lock, but
	// SQLite under -race runs about 50 times slower, and a waiting SQLite
	// replica gives up after busy_timeout (10s).
	slowRows := 200000
	if b.name == "sqlite" {
		slowRows = 50000
	}
	list := []Migration{
		{Version: 1, Name: "create_a", Common: []string{"CREATE TABLE a (id INTEGER PRIMARY KEY)"}},
		{
			Version: 2,
			Name:    "slow",
			Postgres: []string{
				"CREATE TABLE slow (n INTEGER NOT NULL)",
				"SELECT pg_sleep(0.2)",
				fmt.Sprintf("INSERT INTO slow (n) SELECT generate_series(1, %d)", slowRows),
			},
			SQLite: []string{
				"CREATE TABLE slow (n INTEGER NOT NULL)",
				fmt.Sprintf("INSERT INTO slow (n) WITH RECURSIVE c(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM c WHERE n < %d) SELECT n FROM c", slowRows),
			},
		},
		{Version: 3, Name: "create_c", Common: []string{"CREATE TABLE c (id INTEGER PRIMARY KEY)"}},
	}
	dsn := b.newDSN(t)

	var (
		ready, done sync.WaitGroup
		start       = make(chan struct{})
		results     = make([]MigrateResult, replicas)
		errs        = make([]error, replicas)
		dbs         = make([]*DB, replicas)
	)
	ready.Add(replicas)
	for i := range replicas {
		done.Go(func() {
			ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
			defer cancel()
			db, err := Open(ctx, dsn, Options{Logger: testLogger(t), MaxOpenConns: 2})
			ready.Done()
			if err != nil {
				errs[i] = fmt.Errorf("open: %w", err)
				return
			}
			dbs[i] = db
			<-start
			results[i], errs[i] = migrate(ctx, db, list)
		})
	}
	ready.Wait()
	close(start)
	done.Wait()
	for _, db := range dbs {
		if db != nil {
			t.Cleanup(func() { _ = db.Close() })
		}
	}

	applied := map[int]int{}
	for i := range replicas {
		if errs[i] != nil {
			t.Errorf("replica %d: got error %v, want nil", i, errs[i])
			continue
		}
		if results[i].To != 3 {
			t.Errorf("replica %d: To: got %d, want 3", i, results[i].To)
		}
		for _, v := range results[i].Applied {
			applied[v]++
		}
	}
	for v := 1; v <= 3; v++ {
		if applied[v] != 1 {
			t.Errorf("version %d applied by %d replicas, want 1", v, applied[v])
		}
	}
	if t.Failed() {
		return
	}
	db := dbs[0]
	if got, want := appliedVersions(t, db), []int{1, 2, 3}; !slices.Equal(got, want) {
		t.Errorf("schema_migrations versions: got %v, want %v", got, want)
	}
	var n int
	if err := db.gorm.WithContext(t.Context()).Raw("SELECT COUNT(*) FROM slow").Scan(&n).Error; err != nil {
		t.Fatal(err)
	}
	if n != slowRows {
		t.Errorf("rows in slow: got %d, want %d", n, slowRows)
	}
}

func testMigrateRefusesNewerDatabase(t *testing.T, b backend) {
	db := mustOpen(t, b.newDSN(t))
	mustMigrate(t, db, testMigrations(3))

	res, err := migrate(t.Context(), db, testMigrations(2))
	var tooNew *SchemaTooNewError
	if !errors.As(err, &tooNew) {
		t.Fatalf("migrate: got error %v, want a *SchemaTooNewError", err)
	}
	if got, want := err.Error(), "database schema is at version 3, this otad knows up to 2: upgrade otad"; got != want {
		t.Errorf("error: got %q, want %q", got, want)
	}
	checkResult(t, res, MigrateResult{From: 3, To: 3, Applied: []int{}})
	if got := mustSchemaVersion(t, db); got != 3 {
		t.Errorf("schema version: got %d, want 3", got)
	}
}

func testMigrateRejectsInvalidList(t *testing.T, b backend) {
	db := mustOpen(t, b.newDSN(t))
	create := []string{"CREATE TABLE x (id INTEGER)"}
	tests := []struct {
		name    string
		list    []Migration
		wantErr string
	}{
		{
			name:    "starts at 2",
			list:    []Migration{{Version: 2, Name: "a", Common: create}},
			wantErr: "migration at index 0 has version 2, want 1",
		},
		{
			name:    "starts at 0",
			list:    []Migration{{Version: 0, Name: "a", Common: create}},
			wantErr: "migration at index 0 has version 0, want 1",
		},
		{
			name:    "duplicate version",
			list:    []Migration{{Version: 1, Name: "a", Common: create}, {Version: 1, Name: "b", Common: create}},
			wantErr: "migration at index 1 has version 1, want 2",
		},
		{
			name:    "decreasing",
			list:    []Migration{{Version: 1, Name: "a", Common: create}, {Version: 3, Name: "c", Common: create}, {Version: 2, Name: "b", Common: create}},
			wantErr: "migration at index 1 has version 3, want 2",
		},
		{
			name:    "gap",
			list:    []Migration{{Version: 1, Name: "a", Common: create}, {Version: 3, Name: "c", Common: create}},
			wantErr: "migration at index 1 has version 3, want 2",
		},
		{
			name:    "empty name",
			list:    []Migration{{Version: 1, Common: create}},
			wantErr: "migration 1 has no name",
		},
		{
			name:    "no statements",
			list:    []Migration{{Version: 1, Name: "a"}},
			wantErr: "migration 1 (a) has no statements for " + b.name,
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := migrate(t.Context(), db, tc.list)
			if err == nil {
				t.Fatalf("migrate: got nil error, want %q", tc.wantErr)
			}
			if !strings.Contains(err.Error(), tc.wantErr) {
				t.Errorf("error: got %q, want it to contain %q", err, tc.wantErr)
			}
		})
	}
	// Refused before touching the database.
	mustHaveTable(t, db, "schema_migrations", false)
	mustHaveTable(t, db, "x", false)
}

func testMigrateDialectStatements(t *testing.T, b backend) {
	db := mustOpen(t, b.newDSN(t))
	list := []Migration{{
		Version:  1,
		Name:     "per_dialect",
		Common:   []string{"CREATE TABLE from_common (id INTEGER)"},
		Postgres: []string{"CREATE TABLE from_postgres (id INTEGER)"},
	}}
	list = append(list, Migration{
		Version:  2,
		Name:     "postgres_only",
		Postgres: []string{"CREATE TABLE postgres_only (id INTEGER)"},
		SQLite:   []string{}, // deliberately nothing on SQLite
	})
	res := mustMigrate(t, db, list)
	checkResult(t, res, MigrateResult{From: 0, To: 2, Applied: []int{1, 2}})
	mustHaveTable(t, db, "from_postgres", b.name == "postgres")
	mustHaveTable(t, db, "from_common", b.name != "postgres")
	mustHaveTable(t, db, "postgres_only", b.name == "postgres")
}

var hex128 = regexp.MustCompile(`^[0-9a-f]{32}$`)

func testInstallationID(t *testing.T, b backend) {
	dsn := b.newDSN(t)
	db1 := mustOpen(t, dsn)
	if _, err := db1.Migrate(t.Context()); err != nil {
		t.Fatalf("migrate: %v", err)
	}
	id1, err := db1.InstallationID(t.Context())
	if err != nil {
		t.Fatalf("installation id: %v", err)
	}
	if !hex128.MatchString(id1) {
		t.Errorf("installation id: got %q, want 32 lowercase hex digits", id1)
	}

	// A second replica on the same database, migrating too.
	db2 := mustOpen(t, dsn)
	if _, err := db2.Migrate(t.Context()); err != nil {
		t.Fatalf("migrate second handle: %v", err)
	}
	if id2, err := db2.InstallationID(t.Context()); err != nil || id2 != id1 {
		t.Errorf("installation id from second handle: got %q, %v, want %q, nil", id2, err, id1)
	}

	// A restart.
	if err := db1.Close(); err != nil {
		t.Fatal(err)
	}
	db3 := mustOpen(t, dsn)
	if id3, err := db3.InstallationID(t.Context()); err != nil || id3 != id1 {
		t.Errorf("installation id after reopen: got %q, %v, want %q, nil", id3, err, id1)
	}

	// Another database gets another id.
	other := mustOpen(t, b.newDSN(t))
	if _, err := other.Migrate(t.Context()); err != nil {
		t.Fatalf("migrate other: %v", err)
	}
	if idOther, err := other.InstallationID(t.Context()); err != nil || idOther == id1 {
		t.Errorf("installation id of another database: got %q, %v, want an id other than %q", idOther, err, id1)
	}

	// The singleton index refuses a second row.
	if err := db3.gorm.WithContext(t.Context()).Exec("INSERT INTO installation (id, created_at) VALUES ('second', CURRENT_TIMESTAMP)").Error; err == nil {
		t.Error("insert second installation row: got nil error, want a unique violation")
	}
}

func testInstallationIDBeforeMigrate(t *testing.T, b backend) {
	db := mustOpen(t, b.newDSN(t))
	if id, err := db.InstallationID(t.Context()); err == nil {
		t.Errorf("installation id before migrate: got %q, nil, want an error", id)
	}
}

func testPingAfterClose(t *testing.T, b backend) {
	db := mustOpen(t, b.newDSN(t))
	if err := db.Ping(t.Context()); err != nil {
		t.Fatalf("ping before close: %v", err)
	}
	if err := db.Close(); err != nil {
		t.Fatalf("close: %v", err)
	}
	if err := db.Ping(t.Context()); err == nil {
		t.Error("ping after close: got nil error, want an error")
	}
}

// testLoggerHidesParameters makes every query "slow" and checks that the
// log has the SQL without its parameters, and nothing for a not-found.
func testLoggerHidesParameters(t *testing.T, b backend) {
	db := mustOpen(t, b.newDSN(t))
	var buf syncBuffer
	l := newGormLogger(slog.New(slog.NewTextHandler(&buf, &slog.HandlerOptions{Level: slog.LevelDebug})))
	l.slow = -1
	g := db.gorm.Session(&gorm.Session{Logger: l}).WithContext(t.Context())

	const secret = "device-token-4f1c9a"
	var got string
	if err := g.Raw("SELECT ? AS v", secret).Scan(&got).Error; err != nil {
		t.Fatal(err)
	}
	if got != secret {
		t.Fatalf("select: got %q, want %q", got, secret)
	}
	if err := g.Exec("CREATE TABLE things (id TEXT PRIMARY KEY)").Error; err != nil {
		t.Fatal(err)
	}
	var row struct{ ID string }
	err := g.Table("things").Where("id = ?", secret).First(&row).Error
	if !errors.Is(err, gorm.ErrRecordNotFound) {
		t.Fatalf("first: got %v, want gorm.ErrRecordNotFound", err)
	}
	// A failed query goes to Debug, also without parameters.
	if err := g.Exec("INSERT INTO no_such_table (id) VALUES (?)", secret).Error; err == nil {
		t.Fatal("insert into missing table: got nil error")
	}

	log := buf.String()
	for _, want := range []string{"slow sql query", "SELECT ", "sql query failed", "no_such_table"} {
		if !strings.Contains(log, want) {
			t.Errorf("log: got %q, want it to contain %q", log, want)
		}
	}
	if strings.Contains(log, secret) {
		t.Errorf("log: got %q, want no %q (a parameter)", log, secret)
	}
	if strings.Contains(log, "record not found") {
		t.Errorf("log: got %q, want no record-not-found entry", log)
	}
}

type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// testSQLitePragmas checks that every pooled connection got the pragmas
// that durability and integrity depend on.
func testSQLitePragmas(t *testing.T, b backend) {
	if b.name != "sqlite" {
		t.Skip("pragmas are SQLite only")
	}
	db := mustOpen(t, b.newDSN(t))
	ctx := t.Context()
	// Hold several connections at once so the checks cover more than the
	// first one.
	conns := make([]*sql.Conn, 3)
	for i := range conns {
		c, err := db.sql.Conn(ctx)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		conns[i] = c
	}
	tests := []struct {
		pragma string
		want   string
	}{
		{"journal_mode", "wal"},
		{"synchronous", "2"}, // FULL
		{"foreign_keys", "1"},
		{"busy_timeout", "10000"},
		{"secure_delete", "1"},
	}
	for i, c := range conns {
		for _, tc := range tests {
			var got string
			if err := c.QueryRowContext(ctx, "PRAGMA "+tc.pragma).Scan(&got); err != nil {
				t.Fatalf("conn %d: pragma %s: %v", i, tc.pragma, err)
			}
			if got != tc.want {
				t.Errorf("conn %d: pragma %s: got %q, want %q", i, tc.pragma, got, tc.want)
			}
		}
	}
}

func TestOpenPostgresUnreachable(t *testing.T) {
	// A loopback port that nothing listens on: refused at once.
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closedPort := strconv.Itoa(l.Addr().(*net.TCPAddr).Port)
	l.Close()

	// A server that accepts connections and never answers the startup
	// message: only the ctx deadline can end the wait.
	silent, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var (
		mu    sync.Mutex
		held  []net.Conn
		serve sync.WaitGroup
	)
	serve.Go(func() {
		for {
			c, err := silent.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			held = append(held, c)
			mu.Unlock()
		}
	})
	t.Cleanup(func() {
		silent.Close()
		serve.Wait()
		for _, c := range held {
			c.Close()
		}
	})
	silentAddr := silent.Addr().String()

	tests := []struct {
		name     string
		dsn      string
		timeout  time.Duration
		wantAddr string
		secrets  []string
	}{
		{
			name:     "password in userinfo",
			dsn:      "postgres://ota:Hunter2-Sekrit@127.0.0.1:" + closedPort + "/ota?sslmode=disable",
			timeout:  5 * time.Second,
			wantAddr: "127.0.0.1:" + closedPort + "/ota",
			secrets:  []string{"Hunter2-Sekrit"},
		},
		{
			name:     "percent-encoded password",
			dsn:      "postgresql://ota:p%40ss%2Fw0rd-Sekrit@127.0.0.1:" + closedPort + "/ota",
			timeout:  5 * time.Second,
			wantAddr: "127.0.0.1:" + closedPort + "/ota",
			secrets:  []string{"p@ss/w0rd-Sekrit", "p%40ss%2Fw0rd-Sekrit"},
		},
		{
			name:     "password in query",
			dsn:      "postgres://ota@127.0.0.1:" + closedPort + "/ota?sslmode=disable&password=Query-Sekrit",
			timeout:  5 * time.Second,
			wantAddr: "127.0.0.1:" + closedPort + "/ota",
			secrets:  []string{"Query-Sekrit"},
		},
		{
			name:     "server never answers",
			dsn:      "postgres://ota:Hunter2-Sekrit@" + silentAddr + "/ota?sslmode=disable",
			timeout:  300 * time.Millisecond,
			wantAddr: silentAddr + "/ota",
			secrets:  []string{"Hunter2-Sekrit"},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			ctx, cancel := context.WithTimeout(t.Context(), tc.timeout)
			defer cancel()
			start := time.Now()
			db, err := Open(ctx, tc.dsn, Options{})
			elapsed := time.Since(start)
			if err == nil {
				db.Close()
				t.Fatal("open: got nil error, want a connection error")
			}
			// Slack for the scheduler under -race on a loaded machine;
			// without the deadline, Open would wait for the server.
			if limit := tc.timeout + 2*time.Second; elapsed > limit {
				t.Errorf("open took %v, want at most %v", elapsed, limit)
			}
			msg := err.Error()
			t.Logf("error after %v: %s", elapsed.Round(time.Millisecond), msg)
			if want := "connect to postgres at " + tc.wantAddr + ": "; !strings.HasPrefix(msg, want) {
				t.Errorf("error: got %q, want prefix %q", msg, want)
			}
			for _, s := range tc.secrets {
				if strings.Contains(msg, s) {
					t.Errorf("error: got %q, which contains the password %q", msg, s)
				}
			}
		})
	}
}

func TestOpenSQLiteUnderRegularFile(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "regular")
	if err := os.WriteFile(file, []byte("not a directory"), 0o600); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		path string
	}{
		{"parent is a file", filepath.Join(file, "ota.db")},
		{"ancestor is a file", filepath.Join(file, "data", "ota.db")},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			db, err := Open(t.Context(), "sqlite:"+tc.path, Options{})
			if err == nil {
				db.Close()
				t.Fatal("open: got nil error, want an error")
			}
			for _, want := range []string{"open sqlite database " + tc.path, "not a directory"} {
				if !strings.Contains(err.Error(), want) {
					t.Errorf("error: got %q, want it to contain %q", err, want)
				}
			}
		})
	}
}

func TestParseDSN(t *testing.T) {
	tests := []struct {
		dsn         string
		wantDialect string
		wantPath    string
		wantErr     string
	}{
		{dsn: "postgres://ota:pw@db:5432/ota", wantDialect: "postgres"},
		{dsn: "postgresql://ota@db/ota?sslmode=require", wantDialect: "postgres"},
		{dsn: "sqlite:/var/lib/otad/ota.db", wantDialect: "sqlite", wantPath: "/var/lib/otad/ota.db"},
		{dsn: "sqlite:data/state", wantDialect: "sqlite", wantPath: "data/state"},
		{dsn: "file:data/ota.db", wantDialect: "sqlite", wantPath: "data/ota.db"},
		{dsn: "file:///var/lib/otad/ota.db", wantDialect: "sqlite", wantPath: "/var/lib/otad/ota.db"},
		{dsn: "file://localhost/var/lib/ota%20d/ota.db", wantDialect: "sqlite", wantPath: "/var/lib/ota d/ota.db"},
		{dsn: "/var/lib/otad/ota.db", wantDialect: "sqlite", wantPath: "/var/lib/otad/ota.db"},
		{dsn: "ota.db", wantDialect: "sqlite", wantPath: "ota.db"},
		{dsn: "", wantErr: "unsupported database DSN (no scheme)"},
		{dsn: "/var/lib/otad/ota.sqlite", wantErr: "unsupported database DSN (no scheme)"},
		{dsn: "mysql://root:Sekrit@db/ota.db", wantErr: `unsupported database DSN (scheme "mysql")`},
		{dsn: "sqlite:", wantErr: "empty path"},
		{dsn: "sqlite::memory:", wantErr: "in-memory databases are not supported"},
		{dsn: "file::memory:?cache=shared", wantErr: "in-memory databases are not supported"},
		{dsn: "sqlite:ota.db?_pragma=synchronous(OFF)", wantErr: "query parameters"},
		{dsn: "file:///ota.db?mode=ro", wantErr: "query parameters"},
		{dsn: "file://remote/ota.db", wantErr: `file URI host "remote"`},
	}
	for _, tc := range tests {
		t.Run(tc.dsn, func(t *testing.T) {
			got, err := parseDSN(tc.dsn)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("error: got %v, want it to contain %q", err, tc.wantErr)
				}
				if strings.Contains(err.Error(), "Sekrit") {
					t.Errorf("error: got %q, which contains the password", err)
				}
				return
			}
			if err != nil {
				t.Fatalf("error: got %v, want nil", err)
			}
			if got.dialect != tc.wantDialect || got.path != tc.wantPath {
				t.Errorf("got dialect %q path %q, want dialect %q path %q", got.dialect, got.path, tc.wantDialect, tc.wantPath)
			}
		})
	}
}

// testAnalyze refreshes the planner's statistics of a migrated database;
// on SQLite that fills sqlite_stat1.
func testAnalyze(t *testing.T, b backend) {
	db := mustOpen(t, b.newDSN(t))
	if _, err := db.Migrate(t.Context()); err != nil {
		t.Fatal(err)
	}
	s := db.Devices()
	for i := range 20 {
		mustEnroll(t, s, newDevice(fmt.Sprintf("dev_%d", i), "px-7"), fmt.Sprintf("hash-%d", i))
	}
	if err := db.Analyze(t.Context()); err != nil {
		t.Fatalf("analyze: %v", err)
	}
	if b.name == "sqlite" {
		var n int64
		if err := db.gorm.Raw(`SELECT COUNT(*) FROM sqlite_stat1 WHERE tbl = 'devices'`).Scan(&n).Error; err != nil || n == 0 {
			t.Errorf("after analyze: %d sqlite_stat1 rows for devices (%v), want some", n, err)
		}
	}
}
