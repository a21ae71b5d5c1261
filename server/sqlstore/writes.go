package sqlstore

import (
	"context"
	"database/sql"
	"strconv"
	"strings"
	"sync"

	"gorm.io/gorm"
)

// sqlExec is what the state changes of the handset path (check-ins,
// offers, reports) run their statements on: gorm's transaction on
// SQLite, where the write gate queues and group-commits them, or a
// database/sql transaction of a group commit on PostgreSQL (see
// writeBatcher). Statements are written with ? placeholders either way.
type sqlExec interface {
	exec(query string, args ...any) (int64, error)
	query(query string, args ...any) (*sql.Rows, error)
}

// gormExec runs statements on a gorm handle.
type gormExec struct{ tx *gorm.DB }

func (g gormExec) exec(query string, args ...any) (int64, error) {
	res := g.tx.Exec(query, args...)
	return res.RowsAffected, res.Error
}

func (g gormExec) query(query string, args ...any) (*sql.Rows, error) {
	return g.tx.Raw(query, args...).Rows()
}

// txExec runs statements on a database/sql transaction of PostgreSQL (or
// on the pool, for a lone one-statement write), without gorm: on the hot
// path gorm's statement building and callbacks cost about a quarter of
// otad's CPU. Its context is the batch's.
type txExec struct {
	ctx context.Context
	tx  interface {
		ExecContext(ctx context.Context, query string, args ...any) (sql.Result, error)
		QueryContext(ctx context.Context, query string, args ...any) (*sql.Rows, error)
	}
}

func (t txExec) exec(query string, args ...any) (int64, error) {
	res, err := t.tx.ExecContext(t.ctx, dollarParams(query), args...)
	if err != nil {
		return 0, err
	}
	return res.RowsAffected()
}

func (t txExec) query(query string, args ...any) (*sql.Rows, error) {
	return t.tx.QueryContext(t.ctx, dollarParams(query), args...)
}

// dollarQueries caches dollarParams: the handset path's statements are a
// few dozen texts.
var dollarQueries sync.Map

// dollarParams rewrites a statement's ? placeholders as PostgreSQL's $1,
// $2, ..., as gorm does, skipping quoted text.
func dollarParams(query string) string {
	if q, ok := dollarQueries.Load(query); ok {
		return q.(string)
	}
	var b strings.Builder
	n := 0
	quoted := false
	for _, r := range query {
		switch {
		case r == '\'':
			quoted = !quoted
		case r == '?' && !quoted:
			n++
			b.WriteString("$" + strconv.Itoa(n))
			continue
		}
		b.WriteRune(r)
	}
	q := b.String()
	dollarQueries.Store(query, q)
	return q
}

// write runs fn as one atomic write: on PostgreSQL in a group commit
// with the writes of other handsets that arrive meanwhile (one
// transaction, one WAL flush; see writeBatcher), on SQLite in a gorm
// transaction (which the write gate group-commits). single says that fn
// runs one statement, which on PostgreSQL then needs no transaction of
// its own when it finds no others to join. fn may run more than once (a
// batch that fails is run again one write at a time): it must set what
// it returns afresh on each run. It returns when the write is durable
// or failed.
func (db *DB) write(ctx context.Context, single bool, fn func(x sqlExec) error) error {
	if db.writes != nil {
		return db.writes.do(ctx, single, fn)
	}
	return db.gorm.WithContext(ctx).Transaction(func(tx *gorm.DB) error {
		return fn(gormExec{tx})
	})
}
