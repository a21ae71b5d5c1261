package sqlstore

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"
)

// writeBatcher group-commits the handset path's writes on PostgreSQL:
// writes that arrive while a batch runs wait, and go out together in the
// next, as one transaction on one connection. Each write is still
// acknowledged only once the transaction that holds it has committed;
// what the batch saves is the rest: a BEGIN, a COMMIT and a WAL flush per
// write, and the round trips and CPU they cost both processes (on the
// 2-core benchmark machine PostgreSQL spent most of its wave waiting for
// WAL flushes and running commits). A lone write runs at once, in a
// batch of one.
//
// A batch whose write fails (a statement error aborts a PostgreSQL
// transaction, so the others' work is lost with it) is rolled back and
// its writes run again one transaction each, so that only the failing
// write fails. Writes therefore may run twice; each sets its results
// afresh (see DB.write). Writes of one batch lock their rows until the
// batch commits; two batches that lock the same handset's rows in
// opposite orders deadlock, PostgreSQL aborts one, and its writes run
// again alone.
type writeBatcher struct {
	db          *sql.DB
	maxBatch    int
	maxInFlight int
	// parallelAt is how many writes must wait before another batch
	// starts beside the running ones (up to maxInFlight).
	parallelAt int
	// timeout bounds a batch, which no one caller's context does.
	timeout time.Duration

	mu       sync.Mutex
	inFlight int
	pending  []*batchWrite

	// commits and writes count committed transactions and the writes
	// in them, for tests and the benchmark.
	commits, writes atomic.Int64
}

// Group commit sizes: a batch of 64 small writes (a state-changing
// check-in is one statement, a report two) runs in a few milliseconds;
// a second and third batch start when a quarter batch is waiting, so
// that PostgreSQL's other backend and the other core have work while
// one batch waits on its WAL flush.
const (
	writeBatchSize       = 64
	writeBatchesInFlight = 3
	writeBatchParallelAt = 16
	writeBatchTimeout    = 30 * time.Second
)

func newWriteBatcher(db *sql.DB) *writeBatcher {
	return &writeBatcher{db: db, maxBatch: writeBatchSize, maxInFlight: writeBatchesInFlight,
		parallelAt: writeBatchParallelAt, timeout: writeBatchTimeout}
}

// commitError is a failed COMMIT, whose outcome is unknown.
type commitError struct{ err error }

func (e *commitError) Error() string { return "commit: " + e.err.Error() }
func (e *commitError) Unwrap() error { return e.err }

type batchWrite struct {
	fn     func(sqlExec) error
	single bool       // fn runs one statement
	done   chan error // buffered: delivery never waits on the writer
}

// do runs fn in a batch and returns its outcome once the batch has
// committed or failed. If ctx ends before a batch took the write, the
// write is withdrawn and never runs; once taken, do waits for it.
func (b *writeBatcher) do(ctx context.Context, single bool, fn func(sqlExec) error) error {
	w := &batchWrite{fn: fn, single: single, done: make(chan error, 1)}
	b.mu.Lock()
	b.pending = append(b.pending, w)
	var batch []*batchWrite
	if b.inFlight == 0 || (len(b.pending) >= b.parallelAt && b.inFlight < b.maxInFlight) {
		batch = b.takeLocked()
		b.inFlight++
	}
	b.mu.Unlock()
	if batch != nil {
		b.run(batch)
	}
	select {
	case err := <-w.done:
		return err
	case <-ctx.Done():
	}
	b.mu.Lock()
	for i, p := range b.pending {
		if p == w {
			b.pending = append(b.pending[:i], b.pending[i+1:]...)
			b.mu.Unlock()
			return ctx.Err()
		}
	}
	b.mu.Unlock()
	return <-w.done // taken: the batch's timeout bounds the wait
}

// takeLocked removes up to maxBatch pending writes, oldest first.
func (b *writeBatcher) takeLocked() []*batchWrite {
	n := min(len(b.pending), b.maxBatch)
	batch := make([]*batchWrite, n)
	copy(batch, b.pending)
	rest := copy(b.pending, b.pending[n:])
	clear(b.pending[rest:])
	b.pending = b.pending[:rest]
	return batch
}

// run commits batch and answers its writes, then hands what waited in
// the meantime to a new goroutine, so that the caller who ran it
// returns with its own answer instead of serving others.
func (b *writeBatcher) run(batch []*batchWrite) {
	ctx, cancel := context.WithTimeout(context.Background(), b.timeout)
	err := b.commit(ctx, batch)
	// A failed COMMIT may have committed: the writes are not run again
	// (they would find their changes made, and answer as after a race).
	var commitErr *commitError
	if err != nil && len(batch) > 1 && !errors.As(err, &commitErr) {
		for _, w := range batch {
			w.done <- b.commit(ctx, []*batchWrite{w})
		}
	} else {
		for _, w := range batch {
			w.done <- err
		}
	}
	cancel()

	b.mu.Lock()
	if len(b.pending) == 0 {
		b.inFlight--
		b.mu.Unlock()
		return
	}
	next := b.takeLocked()
	b.mu.Unlock()
	go b.run(next)
}

// commit runs the writes in one transaction and commits it; the first
// failure (a write's error, a panic, the commit) rolls it all back.
func (b *writeBatcher) commit(ctx context.Context, batch []*batchWrite) (err error) {
	if len(batch) == 1 && batch[0].single {
		// One statement is a transaction of its own: no BEGIN and
		// COMMIT round trips for the lone write of a quiet fleet.
		defer func() {
			if p := recover(); p != nil {
				err = fmt.Errorf("write panicked: %v", p)
			}
		}()
		if err := batch[0].fn(txExec{ctx: ctx, tx: b.db}); err != nil {
			return err
		}
		b.commits.Add(1)
		b.writes.Add(1)
		return nil
	}
	tx, err := b.db.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	defer func() {
		if p := recover(); p != nil {
			err = fmt.Errorf("write panicked: %v", p)
		}
		if err != nil {
			tx.Rollback()
		}
	}()
	x := txExec{ctx: ctx, tx: tx}
	for _, w := range batch {
		if err := w.fn(x); err != nil {
			return err
		}
	}
	if err := tx.Commit(); err != nil {
		return &commitError{err}
	}
	b.commits.Add(1)
	b.writes.Add(int64(len(batch)))
	return nil
}
