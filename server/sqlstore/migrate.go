package sqlstore

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"gorm.io/gorm"
)

// migrationLockKey is the PostgreSQL advisory lock that serialises
// migrations across replicas. It is fixed (the bytes of "ota/migr") so
// that every otad version takes the same lock; other advisory locks in
// this project must use different keys.
const migrationLockKey int64 = 0x6f74612f6d696772

// Migration is one step of the schema. Its statements run in order, in one
// transaction together with its schema_migrations row, so it is applied
// entirely or not at all. Statements that PostgreSQL refuses inside a
// transaction (CREATE INDEX CONCURRENTLY, ALTER SYSTEM) cannot be part of
// a migration.
type Migration struct {
	// Version numbers migrations 1, 2, 3, ... in the order they apply.
	Version int
	// Name says what the migration does; it appears in errors and logs.
	Name string
	// Common holds the statements for dialects without their own list.
	Common []string
	// Postgres, when non-nil, replaces Common on PostgreSQL; an empty,
	// non-nil list makes the migration a deliberate no-op there.
	Postgres []string
	// SQLite, when non-nil, replaces Common on SQLite, as Postgres does.
	SQLite []string
	// Data, when set, runs after the statements in the same transaction,
	// for a data step that SQL cannot express on both dialects (hashing
	// the audit log's back-fill); like them it runs exactly once.
	Data func(tx *gorm.DB, dialect string) error
}

// statements returns the statements to run on dialect.
func (m Migration) statements(dialect string) []string {
	switch {
	case !m.hasDialectList(dialect):
		return m.Common
	case dialect == dialectPostgres:
		return m.Postgres
	default:
		return m.SQLite
	}
}

// hasDialectList reports whether m has its own (non-nil) list for dialect.
func (m Migration) hasDialectList(dialect string) bool {
	return (dialect == dialectPostgres && m.Postgres != nil) || (dialect == dialectSQLite && m.SQLite != nil)
}

// MigrateResult reports what Migrate did.
type MigrateResult struct {
	// From is the schema version before the call.
	From int
	// To is the schema version after the call.
	To int
	// Applied lists the versions this call applied. Another replica
	// migrating at the same time may have applied the others between
	// From and To.
	Applied []int
}

// SchemaTooNewError is returned by Migrate when the database has been
// migrated by a newer otad: running older code against a newer schema
// could corrupt data, so the older binary refuses to start.
type SchemaTooNewError struct {
	// Database is the schema version found in the database.
	Database int
	// Known is the newest version this binary has a migration for.
	Known int
}

// Error implements error with the message operators act on.
func (e *SchemaTooNewError) Error() string {
	return fmt.Sprintf("database schema is at version %d, this otad knows up to %d: upgrade otad", e.Database, e.Known)
}

// Migrate brings the schema up to date with this binary's migrations. It
// is safe to call from several replicas at once: each migration is applied
// exactly once, and replicas that lose the race find it done.
func (db *DB) Migrate(ctx context.Context) (MigrateResult, error) {
	return migrate(ctx, db, migrations)
}

// SchemaVersion returns the highest applied migration version, or 0 for a
// database that has never been migrated.
func (db *DB) SchemaVersion(ctx context.Context) (int, error) {
	ok, err := db.hasTable(ctx, "schema_migrations")
	if err != nil {
		return 0, fmt.Errorf("schema version: %w", err)
	}
	if !ok {
		return 0, nil
	}
	v, err := schemaVersion(db.gorm.WithContext(ctx))
	if err != nil {
		return 0, fmt.Errorf("schema version: %w", err)
	}
	return v, nil
}

// migrate applies the pending migrations of list. Tests call it with their
// own lists.
func migrate(ctx context.Context, db *DB, list []Migration) (MigrateResult, error) {
	if err := validateMigrations(list, db.dialect); err != nil {
		return MigrateResult{}, fmt.Errorf("migrate: %w", err)
	}
	known := len(list)
	if err := db.inMigrationTx(ctx, func(tx *gorm.DB) error {
		// Concurrent CREATE TABLE IF NOT EXISTS can fail on PostgreSQL
		// with a unique violation on pg_type, so replicas take the
		// migration lock for this too.
		return tx.Exec(`CREATE TABLE IF NOT EXISTS schema_migrations (
	version INTEGER PRIMARY KEY,
	name TEXT NOT NULL,
	applied_at TIMESTAMP NOT NULL
)`).Error
	}); err != nil {
		return MigrateResult{}, fmt.Errorf("migrate: create schema_migrations: %w", err)
	}

	type row struct {
		Version int
		Name    string
	}
	var rows []row
	if err := db.gorm.WithContext(ctx).Raw("SELECT version, name FROM schema_migrations ORDER BY version").Scan(&rows).Error; err != nil {
		return MigrateResult{}, fmt.Errorf("migrate: read schema_migrations: %w", err)
	}
	res := MigrateResult{Applied: []int{}}
	for _, r := range rows {
		res.From = max(res.From, r.Version)
		if r.Version <= known && list[r.Version-1].Name != r.Name {
			// Renaming a migration is harmless; two branches that both
			// added a migration N are not, and this is the only trace.
			db.logger.WarnContext(ctx, "applied migration has a different name in this otad",
				slog.Int("version", r.Version), slog.String("database_name", r.Name), slog.String("otad_name", list[r.Version-1].Name))
		}
	}
	res.To = res.From
	if res.From > known {
		return res, &SchemaTooNewError{Database: res.From, Known: known}
	}

	for _, m := range list[res.From:] {
		start := time.Now()
		applied, err := db.applyMigration(ctx, m, known)
		if err != nil {
			return res, err
		}
		if applied {
			res.Applied = append(res.Applied, m.Version)
			db.logger.InfoContext(ctx, "applied migration",
				slog.Int("version", m.Version), slog.String("name", m.Name),
				slog.String("dialect", db.dialect), slog.Duration("duration", time.Since(start)))
		}
		res.To = m.Version
	}
	return res, nil
}

// applyMigration runs m and records it, unless another replica has done so
// already; it reports whether this call applied it.
func (db *DB) applyMigration(ctx context.Context, m Migration, known int) (bool, error) {
	applied := false
	err := db.inMigrationTx(ctx, func(tx *gorm.DB) error {
		// Re-check under the lock: the version read before may be stale.
		var n int64
		if err := tx.Raw("SELECT COUNT(*) FROM schema_migrations WHERE version = ?", m.Version).Scan(&n).Error; err != nil {
			return fmt.Errorf("check schema_migrations: %w", err)
		}
		if n > 0 {
			return nil
		}
		// A newer otad may have migrated past us meanwhile.
		v, err := schemaVersion(tx)
		if err != nil {
			return fmt.Errorf("check schema_migrations: %w", err)
		}
		if v > known {
			return &SchemaTooNewError{Database: v, Known: known}
		}
		for i, stmt := range m.statements(db.dialect) {
			if err := tx.Exec(stmt).Error; err != nil {
				return fmt.Errorf("statement %d: %w", i+1, err)
			}
		}
		if m.Data != nil {
			if err := m.Data(tx, db.dialect); err != nil {
				return fmt.Errorf("data step: %w", err)
			}
		}
		if err := tx.Exec("INSERT INTO schema_migrations (version, name, applied_at) VALUES (?, ?, "+db.nowUTC()+")", m.Version, m.Name).Error; err != nil {
			return fmt.Errorf("record in schema_migrations: %w", err)
		}
		applied = true
		return nil
	})
	if err != nil {
		var tooNew *SchemaTooNewError
		if errors.As(err, &tooNew) {
			return false, err
		}
		return false, fmt.Errorf("migration %d (%s): %w", m.Version, m.Name, err)
	}
	return applied, nil
}

// inMigrationTx runs fn in a transaction that holds the migration lock
// until it ends, so replicas migrate one at a time.
//
// PostgreSQL: pg_advisory_xact_lock, released at commit or rollback.
// The isolation level is pinned to READ COMMITTED because the re-check
// after the lock must see what the previous holder committed, and under
// REPEATABLE READ the snapshot would date from before the wait.
//
// SQLite: the DSN's _txlock=immediate makes BEGIN take the write lock,
// which already excludes every other writer, in this process or another.
func (db *DB) inMigrationTx(ctx context.Context, fn func(tx *gorm.DB) error) error {
	g := db.gorm.WithContext(ctx)
	if db.dialect != dialectPostgres {
		return g.Transaction(fn)
	}
	return g.Transaction(func(tx *gorm.DB) error {
		if err := tx.Exec("SELECT pg_advisory_xact_lock(?)", migrationLockKey).Error; err != nil {
			return fmt.Errorf("take migration lock: %w", err)
		}
		return fn(tx)
	}, &sql.TxOptions{Isolation: sql.LevelReadCommitted})
}

// nowUTC is the SQL for the database's current time in UTC, so that
// applied_at does not depend on the session time zone or a replica's clock.
func (db *DB) nowUTC() string {
	if db.dialect == dialectPostgres {
		return "(now() AT TIME ZONE 'UTC')"
	}
	return "CURRENT_TIMESTAMP"
}

// hasTable reports whether table exists. Unlike gorm's Migrator().HasTable
// it returns query errors instead of answering false.
func (db *DB) hasTable(ctx context.Context, table string) (bool, error) {
	q := "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name = ?"
	if db.dialect == dialectPostgres {
		q = "SELECT COUNT(*) FROM information_schema.tables WHERE table_schema = current_schema() AND table_name = ?"
	}
	var n int64
	if err := db.gorm.WithContext(ctx).Raw(q, table).Scan(&n).Error; err != nil {
		return false, err
	}
	return n > 0, nil
}

func schemaVersion(g *gorm.DB) (int, error) {
	var v int
	err := g.Raw("SELECT COALESCE(MAX(version), 0) FROM schema_migrations").Scan(&v).Error
	return v, err
}

// validateMigrations refuses a list that cannot be applied as written.
// Versions must be exactly 1, 2, 3, ...: a gap usually means two branches
// were merged badly, and the schema version must identify one schema.
func validateMigrations(list []Migration, dialect string) error {
	for i, m := range list {
		if m.Version != i+1 {
			return fmt.Errorf("invalid migration list: migration at index %d has version %d, want %d (versions must be 1, 2, 3, ...)", i, m.Version, i+1)
		}
		if m.Name == "" {
			return fmt.Errorf("invalid migration list: migration %d has no name", m.Version)
		}
		// An explicitly empty dialect list is a deliberate no-op on that
		// dialect; an empty result otherwise is a forgotten list.
		if len(m.statements(dialect)) == 0 && !m.hasDialectList(dialect) {
			return fmt.Errorf("invalid migration list: migration %d (%s) has no statements for %s", m.Version, m.Name, dialect)
		}
	}
	return nil
}
