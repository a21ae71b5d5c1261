package sqlstore

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"gorm.io/gorm"
)

// Group commit caps. A batch of logical transactions ends with one real
// COMMIT, one fsync of the WAL (synchronous=FULL), when no writer waits
// for the turn, or when either cap is reached. BenchmarkSQLiteGroupCommit
// puts a small write transaction at about 50 µs and a COMMIT with its
// fsync at about 350 µs on the development machine:
//
//   - maxBatchTxs: at 64 transactions a batch the fsync adds about 5 µs,
//     some 10%, to each one; a larger batch would gain little more, and
//     the cap bounds what a failed COMMIT throws away (every caller in
//     the batch answers 5xx and retries) and what one COMMIT writes to
//     the WAL. 64 is also the rollout wave benchmark's default number
//     of concurrent handsets (BenchmarkWave, cmd/otad).
//   - maxBatchDelay: the first member of a batch waits for the COMMIT
//     after the last, so its latency grows with the batch. 64 small
//     transactions take about 3 ms, so 5 ms rarely cuts a batch of them
//     short, but it bounds the wait behind slow members, and how long
//     the SQLite write lock is held at once, which another process on
//     the same file (a second otad, the sqlite3 shell) waits for.
const (
	maxBatchTxs   = 64
	maxBatchDelay = 5 * time.Millisecond
)

// errBatchAborted is what the logical transactions of a batch get when
// the batch's real transaction ended before their changes were
// committed: they were not applied, and the caller may retry.
var errBatchAborted = errors.New("sqlite write batch rolled back")

// writeGate is gorm's connection pool on SQLite: it lets one write at a
// time into the database, in the order the writes arrived, and commits
// the writes that queue up behind each other together (group commit).
//
// SQLite has one writer at a time and makes the others wait in its busy
// handler, which sleeps and polls (up to 100 ms between tries) and is not
// fair: under a steady stream of writes, a connection that has waited
// long polls least often and loses the lock to newcomers again and again,
// until busy_timeout answers SQLITE_BUSY. With 16 concurrent enrollments
// under the race detector, one in a few runs waited the full 10 s. The
// gate queues writers in Go instead, served in order, so SQLite's busy
// handler is left for other processes on the same file.
//
// Writes are every transaction but read-only ones (BEGIN IMMEDIATE takes
// the write lock at once) and every Exec outside a transaction. Queries
// outside a transaction pass ungated, so the stores make no write through
// one: an INSERT ... RETURNING runs its write in rows.Next, after any gate
// a query could hold.
//
// Group commit: each write transaction is a logical transaction, a
// SAVEPOINT on a real transaction (a batch) that the gate keeps open on
// a connection of its own. A logical transaction runs while it holds the
// turn, so the statements of two never interleave. Its Commit releases
// the savepoint and hands the turn to the next writer if one waits and
// the batch is below its caps; otherwise it commits the batch. Either
// way Commit returns only once the real COMMIT is done, with its error:
// acknowledged means durable, and when the COMMIT fails every logical
// commit of the batch fails (nothing acknowledged is lost; the callers
// answer 5xx and handsets retry). A Rollback rolls back to its savepoint
// and returns at once, leaving the rest of the batch alone. A lone write
// commits at once. With synchronous=FULL each COMMIT costs an fsync, so
// without batching SQLite tops out at a few thousand writes a second.
//
// The members of a batch see each other's changes before the COMMIT, as
// if they had run one after the other; nobody outside the batch does,
// and if the COMMIT fails all of them fail. SQLite checks deferred
// foreign keys only at the real COMMIT, where one violation would fail
// the whole batch; the schema has none.
type writeGate struct {
	*sql.DB

	// mu guards the turn: held, and the queue of those waiting for it,
	// served in arrival order. writers counts the writers in the queue
	// (the rest are commits waiting for their batch, see await): a
	// logical transaction that ends hands the batch on only if one
	// waits.
	mu      sync.Mutex
	held    bool
	queue   []*waiter
	writers int

	// batch is the open real transaction, nil between batches, and seq
	// numbers savepoints; both belong to the turn's holder, as do the
	// caps (fields so that tests can lift the time cap).
	batch    *batch
	seq      uint64
	maxTxs   int
	maxDelay time.Duration

	// realCommits and logicalCommits count successful COMMITs of batches
	// and the logical commits they acknowledged, for the tests and the
	// benchmark.
	realCommits    atomic.Int64
	logicalCommits atomic.Int64
	// beforeCommit, when set (tests only, under the turn), runs before
	// each real COMMIT; an error stands for a failed COMMIT.
	beforeCommit func() error
}

// waiter is one place in the gate's queue; granted is closed when the
// turn passes to it.
type waiter struct {
	granted chan struct{}
	writer  bool
}

// batch is one real transaction shared by logical ones.
type batch struct {
	conn    *sql.Conn
	began   time.Time
	members int // logical transactions that joined
	pending int // logical commits waiting for the real COMMIT
	// done is closed when the real transaction has ended; err is then
	// nil if it committed.
	done chan struct{}
	err  error
}

func newWriteGate(db *sql.DB) *writeGate {
	return &writeGate{DB: db, maxTxs: maxBatchTxs, maxDelay: maxBatchDelay}
}

// sqliteGate returns db's write gate, nil on PostgreSQL. The gate is the
// ConnPool the SQLite dialector was opened with (openSQLiteRetrying).
func (db *DB) sqliteGate() *writeGate {
	g, _ := db.gorm.ConnPool.(*writeGate)
	return g
}

// wait takes the turn at once if it is free, else queues w for it and
// returns false.
func (g *writeGate) wait(w *waiter) (now bool) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if !g.held {
		g.held = true
		return true
	}
	g.queue = append(g.queue, w)
	if w.writer {
		g.writers++
	}
	return false
}

// leaveQueue takes w out of the queue, or reports false if the turn was
// given to it meanwhile (and w now holds it).
func (g *writeGate) leaveQueue(w *waiter) bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	for i, q := range g.queue {
		if q == w {
			g.queue = append(g.queue[:i], g.queue[i+1:]...)
			if w.writer {
				g.writers--
			}
			return true
		}
	}
	return false
}

// release gives the turn to the first in the queue, or frees it.
func (g *writeGate) release() {
	g.mu.Lock()
	defer g.mu.Unlock()
	if len(g.queue) == 0 {
		g.held = false
		return
	}
	w := g.queue[0]
	g.queue[0] = nil
	g.queue = g.queue[1:]
	if w.writer {
		g.writers--
	}
	close(w.granted)
}

// writerWaits reports whether a writer is queued for the turn.
func (g *writeGate) writerWaits() bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.writers > 0
}

// enter waits for the write turn, or for ctx to end: then the caller
// gets ctx.Err() and joins no batch.
func (g *writeGate) enter(ctx context.Context) error {
	w := &waiter{granted: make(chan struct{}), writer: true}
	if g.wait(w) {
		return nil
	}
	select {
	case <-w.granted:
		return nil
	case <-ctx.Done():
		if !g.leaveQueue(w) {
			// Granted meanwhile: pass it on. If a batch is open, its
			// pending commits are queued or take the turn in await.
			g.release()
		}
		return ctx.Err()
	}
}

// GetDBConn gives gorm's DB() the pool underneath.
func (g *writeGate) GetDBConn() (*sql.DB, error) { return g.DB, nil }

// BeginTx implements gorm.ConnPoolBeginner: a write transaction is a
// logical transaction that holds the turn until it commits or rolls
// back. The isolation level is ignored: SQLite's transactions are
// serializable.
func (g *writeGate) BeginTx(ctx context.Context, opts *sql.TxOptions) (gorm.ConnPool, error) {
	if opts != nil && opts.ReadOnly {
		return g.DB.BeginTx(ctx, opts)
	}
	if err := g.enter(ctx); err != nil {
		return nil, err
	}
	return g.begin(ctx)
}

// ExecContext runs a write outside a transaction as a logical
// transaction of its own, so it joins the batch and returns once
// committed. The savepoint matters even for one call: the driver runs
// every statement of a multi-statement string, and a failure in a later
// one must undo the earlier ones.
func (g *writeGate) ExecContext(ctx context.Context, query string, args ...any) (sql.Result, error) {
	if err := g.enter(ctx); err != nil {
		return nil, err
	}
	t, err := g.begin(ctx)
	if err != nil {
		return nil, err
	}
	res, err := t.ExecContext(ctx, query, args...)
	if err != nil {
		_ = t.Rollback()
		return nil, err
	}
	if err := t.Commit(); err != nil {
		return nil, err
	}
	return res, nil
}

// betweenBatches runs fn holding the turn while no real transaction is
// open: after committing the open batch, if any, and before the next one
// begins. It is for statements that cannot run inside a transaction or
// that wait for the write lock, such as PRAGMA wal_checkpoint(TRUNCATE),
// which a continuous stream of batches would otherwise starve. fn runs on
// the pool, not on the gate's connection. On PostgreSQL (no gate) fn just
// runs.
func (db *DB) betweenBatches(ctx context.Context, fn func(context.Context) error) error {
	g := db.sqliteGate()
	if g == nil {
		return fn(ctx)
	}
	if err := g.enter(ctx); err != nil {
		return err
	}
	defer g.release()
	if b := g.batch; b != nil {
		// Left open by a rollback for its pending commits (see leave):
		// commit it for them.
		g.finish(b, true, nil)
	}
	return fn(ctx)
}

// begin starts a logical transaction; the caller holds the turn, which
// the logical transaction then holds until it ends (or begin fails).
func (g *writeGate) begin(ctx context.Context) (t *logicalTx, err error) {
	defer func() {
		if err != nil {
			g.leave(false)
		}
	}()
	b := g.batch
	if b != nil && g.full(b) {
		g.finish(b, true, nil)
		b = nil
	}
	if b == nil {
		// The caller's ctx only picks the connection: the batch, once
		// begun, outlives it.
		conn, err := g.DB.Conn(ctx)
		if err != nil {
			return nil, err
		}
		if _, err := conn.ExecContext(context.Background(), "BEGIN IMMEDIATE"); err != nil {
			discard(conn)
			return nil, err
		}
		b = &batch{conn: conn, began: time.Now(), done: make(chan struct{})}
		g.batch = b
	}
	g.seq++
	t = &logicalTx{g: g, b: b, ctx: ctx, savepoint: "otad_gate_" + strconv.FormatUint(g.seq, 10)}
	b.members++
	if _, err := b.conn.ExecContext(context.Background(), "SAVEPOINT "+t.savepoint); err != nil {
		err = fmt.Errorf("%w: savepoint: %w", errBatchAborted, err)
		g.finish(b, false, err)
		return nil, err
	}
	return t, nil
}

// full reports whether the batch has reached a cap.
func (g *writeGate) full(b *batch) bool {
	return b.members >= g.maxTxs || time.Since(b.began) >= g.maxDelay
}

// leave gives the turn back when a logical transaction ends, after
// deciding what becomes of the batch. With no commit pending it rolls
// the real transaction back (nothing is lost, no fsync is paid) rather
// than keep the write lock for a writer that may yet give up. Otherwise
// it hands the batch on to a waiting writer while the batch is below
// its caps, else ends it with the COMMIT. A rollback does not wait for a
// COMMIT (it returns at once): it leaves the batch open for the pending
// commits, whose callers take the turn in await to commit it.
func (g *writeGate) leave(committing bool) {
	defer g.release()
	b := g.batch
	switch {
	case b == nil:
	case b.pending == 0:
		g.finish(b, false, nil)
	case !g.full(b) && g.writerWaits():
	case committing:
		g.finish(b, true, nil)
	}
}

// await waits until batch b has ended and returns its error. It also
// queues for the turn: whoever gets the turn while b is open and no
// member runs (every writer gave up waiting, or the last member rolled
// back) commits it, so a batch never outlives its members. The queue is
// served in order, so the writers queued before this caller still join
// b first.
func (g *writeGate) await(b *batch) error {
	w := &waiter{granted: make(chan struct{})}
	if !g.wait(w) {
		select {
		case <-b.done:
			if !g.leaveQueue(w) {
				g.release()
			}
			return b.err
		case <-w.granted:
		}
	}
	if g.batch == b {
		g.finish(b, true, nil)
	}
	// Else b has ended, and another batch may be open: its own pending
	// commits see to it.
	g.release()
	<-b.done
	return b.err
}

// finish ends batch b, whose turn the caller holds: commit (if commit
// and cause is nil) or roll back, give the connection back, and wake
// the pending commits with the outcome, cause if given. The statements
// run on context.Background(): a caller's cancellation must not
// interrupt them, as SQLite's interrupt can roll back the whole
// transaction.
func (g *writeGate) finish(b *batch, commit bool, cause error) {
	// Until the COMMIT has succeeded the batch counts as failed, even
	// if something below panics.
	err := cause
	if err == nil {
		err = errBatchAborted
	}
	defer func() {
		if g.batch == b {
			g.batch = nil
		}
		b.err = err
		close(b.done)
	}()
	if commit && cause == nil {
		var cerr error
		if g.beforeCommit != nil {
			cerr = g.beforeCommit()
		}
		if cerr == nil {
			_, cerr = b.conn.ExecContext(context.Background(), "COMMIT")
		}
		if cerr == nil {
			err = nil
			g.realCommits.Add(1)
			g.logicalCommits.Add(int64(b.pending))
			_ = b.conn.Close()
			return
		}
		err = fmt.Errorf("%w: commit: %w", errBatchAborted, cerr)
	}
	// After a failed COMMIT (SQLITE_BUSY leaves the transaction open) or
	// a statement that ended the transaction, ROLLBACK ends whatever is
	// left. If it fails while a transaction is still open, the
	// connection's state is unknown and it must not go back to the pool.
	if _, rerr := b.conn.ExecContext(context.Background(), "ROLLBACK"); rerr != nil && !notInTx(b.conn) {
		discard(b.conn)
		return
	}
	_ = b.conn.Close()
}

// notInTx reports whether conn is outside a transaction. SQLite's
// autocommit flag is not reachable through database/sql, so it asks with
// a plain BEGIN: it fails inside a transaction and changes nothing; it
// succeeds outside one, and the transaction it began is rolled back.
func notInTx(conn *sql.Conn) bool {
	if _, err := conn.ExecContext(context.Background(), "BEGIN"); err != nil {
		return false
	}
	_, _ = conn.ExecContext(context.Background(), "ROLLBACK")
	return true
}

// discard closes conn without giving it back to the pool.
func discard(conn *sql.Conn) {
	_ = conn.Raw(func(any) error { return driver.ErrBadConn })
	_ = conn.Close()
}

// logicalTx is a write transaction as gorm sees it (a gorm.ConnPool and
// gorm.TxCommitter): a savepoint on its batch's real transaction.
//
// Its statements run on the batch's connection with the caller's
// context values but without its cancellation: the driver interrupts a
// running statement when its context ends, and SQLite may then roll
// back the whole real transaction, the other callers' writes with it.
// Like a sql.Tx, it refuses statements (with the context's error) once
// the caller's context has ended, and a Commit after that rolls back.
// gorm's nested transactions (SAVEPOINT, ROLLBACK TO) are ordinary
// statements on it.
type logicalTx struct {
	g         *writeGate
	b         *batch
	ctx       context.Context // BeginTx's
	savepoint string

	mu   sync.Mutex
	done bool  // Commit or Rollback was called
	err  error // the batch ended under this transaction
}

var _ interface {
	gorm.ConnPool
	gorm.TxCommitter
} = (*logicalTx)(nil)

// usable returns why a statement may not run now, or nil. t.mu is held.
func (t *logicalTx) usable(ctx context.Context) error {
	switch {
	case t.done:
		return sql.ErrTxDone
	case t.err != nil:
		return t.err
	case t.ctx.Err() != nil:
		return t.ctx.Err()
	}
	return ctx.Err()
}

// check ends the batch if a failed statement took the real transaction
// with it: SQLite rolls the whole transaction back on some errors (disk
// full, I/O error, out of memory), after which the savepoints are gone
// and further statements would commit one by one. t.mu is held.
func (t *logicalTx) check(err error) {
	if err == nil || !notInTx(t.b.conn) {
		return
	}
	t.abort(err)
}

// abort ends the batch under t, failing its pending commits. t.mu is
// held, and so is the turn.
func (t *logicalTx) abort(cause error) {
	t.err = fmt.Errorf("%w: %w", errBatchAborted, cause)
	t.g.finish(t.b, false, t.err)
}

func (t *logicalTx) ExecContext(ctx context.Context, query string, args ...any) (sql.Result, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if err := t.usable(ctx); err != nil {
		return nil, err
	}
	res, err := t.b.conn.ExecContext(context.WithoutCancel(ctx), query, args...)
	t.check(err)
	return res, err
}

func (t *logicalTx) QueryContext(ctx context.Context, query string, args ...any) (*sql.Rows, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if err := t.usable(ctx); err != nil {
		return nil, err
	}
	rows, err := t.b.conn.QueryContext(context.WithoutCancel(ctx), query, args...)
	t.check(err)
	return rows, err
}

// QueryRowContext is QueryContext for one row. database/sql cannot make
// a *sql.Row that carries a given error, so when the transaction is
// unusable the row carries context.Canceled.
func (t *logicalTx) QueryRowContext(ctx context.Context, query string, args ...any) *sql.Row {
	t.mu.Lock()
	defer t.mu.Unlock()
	if err := t.usable(ctx); err != nil {
		cancelled, cancel := context.WithCancel(ctx)
		cancel()
		return t.g.DB.QueryRowContext(cancelled, query, args...)
	}
	row := t.b.conn.QueryRowContext(context.WithoutCancel(ctx), query, args...)
	t.check(row.Err())
	return row
}

func (t *logicalTx) PrepareContext(ctx context.Context, query string) (*sql.Stmt, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if err := t.usable(ctx); err != nil {
		return nil, err
	}
	return t.b.conn.PrepareContext(context.WithoutCancel(ctx), query)
}

// Commit releases the savepoint and returns once the batch's real
// COMMIT is done, with its error. If the caller's context has ended, it
// rolls back instead and returns the context's error, as sql.Tx does.
func (t *logicalTx) Commit() error {
	if queued, err := t.commit(); !queued {
		return err
	}
	return t.g.await(t.b)
}

// commit ends the logical transaction and reports whether its changes
// are queued for the batch's COMMIT.
func (t *logicalTx) commit() (queued bool, err error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.done {
		return false, sql.ErrTxDone
	}
	t.done = true
	if err := t.ctx.Err(); err != nil && t.err == nil {
		_ = t.undo()
		return false, err
	}
	defer func() { t.g.leave(queued) }()
	if t.err != nil {
		return false, t.err
	}
	if _, err := t.b.conn.ExecContext(context.Background(), "RELEASE "+t.savepoint); err != nil {
		t.abort(fmt.Errorf("release savepoint: %w", err))
		return false, t.err
	}
	t.b.pending++
	return true, nil
}

// Rollback undoes this logical transaction alone and returns at once.
// It is what gorm's Transaction calls when fc fails or panics, so it
// always gives the turn back.
func (t *logicalTx) Rollback() error {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.done {
		return sql.ErrTxDone
	}
	t.done = true
	return t.undo()
}

// undo rolls back to the savepoint and releases it, then gives the turn
// back. t.mu is held.
func (t *logicalTx) undo() error {
	defer t.g.leave(false)
	if t.err != nil {
		return t.err
	}
	for _, stmt := range []string{"ROLLBACK TO ", "RELEASE "} {
		if _, err := t.b.conn.ExecContext(context.Background(), stmt+t.savepoint); err != nil {
			t.abort(fmt.Errorf("roll back to savepoint: %w", err))
			return t.err
		}
	}
	return nil
}
