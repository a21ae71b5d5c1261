package apitest

import (
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/hex"
	"net/url"
	"os"
	"testing"

	_ "github.com/jackc/pgx/v5/stdlib" // the "pgx" database/sql driver, to create test databases

	"github.com/patchfleet/ota/server/sqlstore"
)

// PostgresDSN creates a fresh database on the PostgreSQL that
// scripts/test.sh starts, dropped when the test ends, and returns its DSN;
// without one it skips the test.
func PostgresDSN(tb testing.TB) string {
	tb.Helper()
	dsn := os.Getenv("OTA_TEST_POSTGRES_DSN")
	if dsn == "" {
		tb.Skip("OTA_TEST_POSTGRES_DSN not set; run ./scripts/test.sh to run the PostgreSQL tests")
	}
	admin, err := sql.Open("pgx", dsn)
	if err != nil {
		tb.Fatal(err)
	}
	var b [6]byte
	rand.Read(b[:])
	name := "ota_apitest_" + hex.EncodeToString(b[:])
	if _, err := admin.Exec("CREATE DATABASE " + name); err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() {
		admin.Exec("DROP DATABASE IF EXISTS " + name + " WITH (FORCE)")
		admin.Close()
	})
	u, err := url.Parse(dsn)
	if err != nil {
		tb.Fatal(err)
	}
	u.Path = "/" + name
	return u.String()
}

// OpenPostgres opens a new pool on dsn, closed when the test ends.
func OpenPostgres(tb testing.TB, dsn string) *sqlstore.DB {
	tb.Helper()
	db, err := sqlstore.Open(context.Background(), dsn, sqlstore.Options{})
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { db.Close() })
	return db
}

// OpenPostgresPool is OpenPostgres with a pool of maxConns connections.
func OpenPostgresPool(tb testing.TB, dsn string, maxConns int) *sqlstore.DB {
	tb.Helper()
	db, err := sqlstore.Open(context.Background(), dsn, sqlstore.Options{MaxOpenConns: maxConns})
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { db.Close() })
	return db
}
