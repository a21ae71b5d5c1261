package sqlstore

import (
	"context"
	"database/sql"
	"sync"

	"gorm.io/gorm"
)

// writeGate is gorm's connection pool on SQLite: it lets one write at a
// time into the database, in the order the writes arrived.
//
// SQLite has one writer at a time and makes the others wait in its busy
// handler, which sleeps and polls (up to 100 ms between tries) and is not
// fair: under a steady stream of writes, a connection that has waited
// long polls least often and loses the lock to newcomers again and again,
// until busy_timeout answers SQLITE_BUSY. With 16 concurrent enrollments
// under the race detector, one in a few runs waited the full 10 s. The
// gate queues writers in Go instead (a channel's waiters are served in
// order), so SQLite's busy handler is left for other processes on the
// same file.
//
// Writes are every transaction but read-only ones (BEGIN IMMEDIATE takes
// the write lock at once) and every Exec outside a transaction. Queries
// outside a transaction pass ungated, so the stores make no write through
// one: an INSERT ... RETURNING runs its write in rows.Next, after any gate
// a query could hold.
type writeGate struct {
	*sql.DB
	turn chan struct{}
}

func newWriteGate(db *sql.DB) *writeGate {
	return &writeGate{DB: db, turn: make(chan struct{}, 1)}
}

// enter waits for the write turn, or for ctx to end.
func (g *writeGate) enter(ctx context.Context) error {
	select {
	case g.turn <- struct{}{}:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (g *writeGate) leave() { <-g.turn }

// GetDBConn gives gorm's DB() the pool underneath.
func (g *writeGate) GetDBConn() (*sql.DB, error) { return g.DB, nil }

// BeginTx implements gorm.ConnPoolBeginner: a write transaction holds the
// turn until it commits or rolls back.
func (g *writeGate) BeginTx(ctx context.Context, opts *sql.TxOptions) (gorm.ConnPool, error) {
	if opts != nil && opts.ReadOnly {
		return g.DB.BeginTx(ctx, opts)
	}
	if err := g.enter(ctx); err != nil {
		return nil, err
	}
	tx, err := g.DB.BeginTx(ctx, opts)
	if err != nil {
		g.leave()
		return nil, err
	}
	return &gatedTx{Tx: tx, leave: sync.OnceFunc(g.leave)}, nil
}

func (g *writeGate) ExecContext(ctx context.Context, query string, args ...any) (sql.Result, error) {
	if err := g.enter(ctx); err != nil {
		return nil, err
	}
	defer g.leave()
	return g.DB.ExecContext(ctx, query, args...)
}

// gatedTx is a write transaction that gives the turn back when it ends.
type gatedTx struct {
	*sql.Tx
	leave func()
}

func (t *gatedTx) Commit() error {
	defer t.leave()
	return t.Tx.Commit()
}

func (t *gatedTx) Rollback() error {
	defer t.leave()
	return t.Tx.Rollback()
}
