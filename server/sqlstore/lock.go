package sqlstore

import (
	"context"
	"database/sql/driver"
	"fmt"
)

// repoLockKey is the PostgreSQL advisory lock that serialises TUF
// repository writes across replicas ("ota/repo"); migrationLockKey is
// another.
const repoLockKey int64 = 0x6f74612f7265706f

// RepoLock serialises repository writes (publishing, re-signing): across
// replicas with a PostgreSQL advisory lock, within one process on SQLite
// (one otad per SQLite file). It implements manifests.Locker.
type RepoLock struct {
	db *DB
	mu chan struct{} // SQLite: a mutex that honours ctx
}

// RepoLock returns the repository lock of db.
func (db *DB) RepoLock() *RepoLock {
	return &RepoLock{db: db, mu: db.repoMu}
}

// Lock blocks until the lock is held or ctx ends.
func (l *RepoLock) Lock(ctx context.Context) (func(), error) {
	if l.db.dialect != dialectPostgres {
		select {
		case l.mu <- struct{}{}:
			return func() { <-l.mu }, nil
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	// A session-level lock lives on one connection: pin it for the
	// duration. If the process dies, PostgreSQL ends the session and
	// releases the lock.
	conn, err := l.db.sql.Conn(ctx)
	if err != nil {
		return nil, fmt.Errorf("repository lock: %w", err)
	}
	if _, err := conn.ExecContext(ctx, "SELECT pg_advisory_lock($1)", repoLockKey); err != nil {
		conn.Close()
		return nil, fmt.Errorf("repository lock: %w", err)
	}
	return func() {
		// Unlock with a fresh context: the caller's may be done, and a
		// lock left held would stall every replica. Closing the
		// connection releases it too if the unlock fails.
		if _, err := conn.ExecContext(context.Background(), "SELECT pg_advisory_unlock($1)", repoLockKey); err != nil {
			// Returning ErrBadConn makes database/sql close the
			// connection instead of pooling a session that may
			// still hold the lock.
			conn.Raw(func(any) error { return driver.ErrBadConn })
		}
		conn.Close()
	}, nil
}
